"""A plan's tasks on an existing Dask cluster (`--scheduler`): the tasks of every batch at once,
each placed on a worker that has the memory it needs, read, computed and written there (only a
small result comes back), and re-run elsewhere when its worker is lost.

Placement: a worker takes at most as many of our tasks as it has threads, and only as many as its
memory holds: the bytes its MEMORY resource declares (`dask worker --resources MEMORY=8e9`; then
Dask holds it to that too), else the part of its memory_limit below Dask's pause threshold that
its process does not already use. A task is pinned to its worker with `allow_other_workers`, so
that when the worker is lost Dask reschedules the task on another; the scheduler's remove-worker
events say which of ours were on it, for the log and the run report.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace

from . import __version__
from .errors import ClusterError, ConfigError, SchedulerLost
from .io.access import SourceAccess
from .pipeline import Pipeline
from .plan import Task
from .process import BadSource, CellResult
from .sizing import describe_bytes, task_memory_bytes

log = logging.getLogger(__name__)

MEMORY_RESOURCE = "MEMORY"  # the worker resource, in bytes, that Dask users declare memory with
POLL_S = 2.0  # how often the workers are looked at again while results are awaited
WORKER_WAIT_S = 60.0  # how long a run waits for a worker that can take its tasks
# what a worker's process holds once it has run a task (Python, numpy, numba's kernels, GDAL),
# when its current memory is less: a fresh worker has imported none of it yet
WORKER_BASE_BYTES = 320 << 20
CONNECT_TIMEOUT = "20s"


def connect(scheduler: str):
    """A client of the scheduler at `scheduler`; ClusterError (exit 1) when it cannot be reached."""
    from distributed import Client

    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as err:
        raise ClusterError(f"--scheduler {scheduler}: cannot connect ({err.__class__.__name__}); "
                           f"check the address and that the scheduler is running") from err


@dataclass(slots=True, kw_only=True)
class Room:
    """One worker's share of this run: its threads, the bytes our tasks may hold there at once,
    and what of ours runs there now."""

    address: str
    threads: int
    budget_bytes: float  # math.inf for a worker without a memory limit
    memory_limit: int = 0
    declared: bool = False  # its budget is a declared MEMORY resource, which Dask enforces as well
    running: int = 0
    held_bytes: int = 0

    def fits(self, need: int) -> bool:
        return self.running < self.threads and self.held_bytes + need <= self.budget_bytes

    def take(self, need: int) -> None:
        self.running += 1
        self.held_bytes += need

    def give(self, need: int) -> None:
        self.running -= 1
        self.held_bytes -= need


def choose_room(rooms, need: int) -> Room | None:
    """The worker to place a task of `need` bytes on now: of those it fits, the one with the most
    free threads, then the most free bytes; None when it fits none."""
    fitting = [r for r in rooms if r.fits(need)]
    if not fitting:
        return None
    return max(fitting, key=lambda r: (r.threads - r.running, r.budget_bytes - r.held_bytes))


def room_of(address: str, info: dict, pause_fraction: float) -> Room:
    """A worker's room from what the scheduler says of it (`Client.scheduler_info()["workers"][address]`)."""
    resources = info.get("resources") or {}
    limit = int(info.get("memory_limit") or 0)
    threads = max(1, int(info.get("nthreads") or 1))
    if MEMORY_RESOURCE in resources:
        return Room(address=address, threads=threads, budget_bytes=float(resources[MEMORY_RESOURCE]),
                    memory_limit=limit, declared=True)
    if not limit:
        return Room(address=address, threads=threads, budget_bytes=math.inf)
    used = max(int((info.get("metrics") or {}).get("memory") or 0), WORKER_BASE_BYTES)
    return Room(address=address, threads=threads, budget_bytes=pause_fraction * limit - used, memory_limit=limit)


def pause_fraction() -> float:
    """The fraction of its memory_limit at which a Dask worker stops starting tasks (0.8 by default)."""
    import dask

    for key in ("distributed.worker.memory.pause", "distributed.worker.memory.terminate"):
        value = dask.config.get(key, default=False)
        if value:
            return float(value)
    return 1.0


@dataclass(slots=True, kw_only=True)
class ClusterRun:
    """What a run on a cluster did: every task's result, and the workers lost on the way."""

    scheduler: str
    results: list[CellResult] = field(default_factory=list)
    workers: set[str] = field(default_factory=set)  # every worker that had room for this run
    lost: dict[str, int] = field(default_factory=dict)  # worker -> how many of our tasks it held
    rescheduled: list[tuple[tuple[int, int], str, str]] = field(default_factory=list)  # (cell, period, from)
    largest_task_bytes: int = 0

    def summary(self) -> dict:
        """The run report's `cluster` section."""
        return {
            "scheduler": self.scheduler,
            "workers": sorted(self.workers),
            "largest_task_bytes": self.largest_task_bytes,
            "lost_workers": [{"worker": w, "tasks": n} for w, n in sorted(self.lost.items())],
            "rescheduled_tasks": [{"cell": list(k), "period": p, "from": w} for k, p, w in self.rescheduled],
        }


def run_on_cluster(tasks: list[Task], pipeline: Pipeline, output: str, *, scheduler: str, overwrite: bool = False,
                   on_bad_source: BadSource = "fail", access: SourceAccess | None = None,
                   sample_bytes: dict[str, int] | None = None,
                   on_result: Callable[[CellResult], None] | None = None) -> ClusterRun:
    """Every task on the cluster of `scheduler`, each result to `on_result` as it comes.

    Raises ClusterError (exit 1) when the scheduler cannot be reached or no worker joins it, and
    ConfigError (exit 2) when no worker could ever hold the largest task, or a worker runs another
    gridded. A task lost with its worker runs again on another; its outputs are committed as a
    local run's are (files whole, the item create-only), so a second attempt finds or replaces
    the first's and nothing is written twice."""
    output = _absolute(output)  # a relative path is the caller's, not relative to a worker's directory
    client = connect(scheduler)
    try:
        fanout = _Fanout(client, ClusterRun(scheduler=scheduler), on_result)
        fanout.prepare()
        fanout.check_output_seen(output)
        needs = [(t, task_memory_bytes(t, pipeline, sample_bytes)) for t in tasks]
        fanout.check_largest(needs, pipeline)
        fanout.run(needs, (pipeline, output, overwrite, on_bad_source, access or SourceAccess()))
        return fanout.outcome
    finally:
        _close(client)


def _close(client) -> None:
    """Close the client; once the scheduler is lost, without the traceback distributed logs for the
    reconnection that closing cancels (the run has said what it lost)."""
    logger = logging.getLogger("distributed.client")
    level = logger.level
    if client.status != "running":
        logger.setLevel(logging.CRITICAL)
    try:
        client.close()
    finally:
        logger.setLevel(level)


class _Fanout:
    """The loop of one run: place what fits, collect what is done, follow the workers."""

    def __init__(self, client, outcome: ClusterRun, on_result):
        self.client, self.outcome, self.on_result = client, outcome, on_result
        self.rooms: dict[str, Room] = {}
        self.inflight: dict = {}  # future -> (task, bytes, address it was placed on)
        self.by_key: dict[str, Task] = {}
        self.rerun: set[str] = set()  # keys of ours that were on a lost worker
        self.lock = threading.Lock()  # the events arrive on the client's own thread
        self.pause = pause_fraction()
        self.seen_at = time.monotonic()  # when a worker was last seen
        self.total = 0  # tasks in this run
        self.refreshed = 0.0

    def prepare(self) -> None:
        """Wait for a worker, refuse workers running another gridded, and take the cluster's measure."""
        scheduler = self.outcome.scheduler
        try:
            self.client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError as err:
            raise ClusterError(f"--scheduler {scheduler}: no worker joined in {WORKER_WAIT_S:.0f} s; "
                               f"start some with `dask worker {scheduler}`") from err
        versions = self.client.get_versions(packages=["gridded"])["workers"]
        for address, found in sorted(versions.items()):
            theirs = found.get("packages", {}).get("gridded")
            if theirs != __version__:
                have = f"gridded {theirs}" if theirs else "no gridded"
                raise ConfigError(f"--scheduler {scheduler}: worker {address} has {have}, this is gridded "
                                  f"{__version__}; install the same gridded on every worker")
        self.refresh()

    def check_output_seen(self, output: str) -> None:
        """Refuse an output the workers do not see as this process does (a local directory on
        another machine, credentials missing there): their commits would go elsewhere, or nowhere."""
        from .io.storage import open_storage, temp_name

        storage = open_storage(output)
        probe, token = temp_name("worker-probe"), uuid.uuid4().hex.encode()
        storage.put_bytes(probe, token)
        try:
            seen = self.client.run(output_seen, output, probe, token)
        finally:
            storage.delete(probe)
        for address, (problem, retryable) in sorted(seen.items()):
            if problem:
                error = ClusterError if retryable else ConfigError
                raise error(f"--output {output}: worker {address} {problem}; use s3:// or a directory every "
                            f"worker mounts at the same path")

    def check_largest(self, needs: list[tuple[Task, int]], pipeline: Pipeline) -> None:
        if not needs:
            return
        task, need = max(needs, key=lambda tn: tn[1])
        self.outcome.largest_task_bytes = need
        best = max(self.rooms.values(), key=lambda r: r.budget_bytes)
        if need <= best.budget_bytes:
            return
        what = (f"{task.shape_yx[1]}x{task.shape_yx[0]} px, {task.n_layers} observations, "
                f"{len(pipeline.bands)} bands")
        room = (f"its MEMORY resource is {describe_bytes(best.budget_bytes)}" if best.declared else
                f"~{describe_bytes(max(best.budget_bytes, 0))} free below the pause threshold of its "
                f"memory_limit {describe_bytes(best.memory_limit)}")
        raise ConfigError(f"the largest task (cell x{task.key[0]} y{task.key[1]} {task.period.label}: {what}) "
                          f"needs ~{describe_bytes(need)}, more than any worker of {self.outcome.scheduler} can "
                          f"hold (the largest, {best.address}: {room}); start workers with a larger "
                          f"--memory-limit, or use a grid with smaller tiles")

    def run(self, needs: list[tuple[Task, int]], args: tuple) -> None:
        pending = deque(needs)
        self.total = len(needs)
        self.client.subscribe_topic("all", self.on_event)  # dropped with the client
        try:
            while pending or self.inflight:
                self.place(pending, args)
                if not self.inflight:
                    self.wait_for_room(pending)
                    continue
                done = self.wait_some()
                self.check_connected()
                for future in done:
                    self.collect(future)
                if time.monotonic() - self.refreshed >= POLL_S:
                    self.refresh()
                    self.give_up_without_workers(pending)
        except SchedulerLost:
            raise
        except BaseException:
            # stopped (SIGTERM, Ctrl-C): what has not started is not started; what runs commits
            if self.client.status == "running":
                self.client.cancel(list(self.inflight))
            raise
        self.report_losses()

    def check_connected(self) -> None:
        """SchedulerLost once the client has lost the scheduler: with it went every future of the
        run (the client cancels them all), so no result of this run can be had any more."""
        if self.client.status != "running":
            raise self.lost()

    def lost(self) -> SchedulerLost:
        done = sum(r.status != "failed" for r in self.outcome.results)
        return SchedulerLost(f"--scheduler {self.outcome.scheduler}: lost the scheduler mid-run ({done} of "
                             f"{self.total} tasks reported); what was committed is kept: rerun when it is back "
                             f"to resume", cluster=self.outcome.summary())

    def place(self, pending: deque, args: tuple) -> None:
        """Submit tasks, in plan order, while the next one fits a worker: the roomiest first."""
        while pending:
            task, need = pending[0]
            room = choose_room(self.rooms.values(), need)
            if room is None:
                return
            pending.popleft()
            key = f"gridded-x{task.key[0]}-y{task.key[1]}-{task.period.label}-{uuid.uuid4().hex[:8]}"
            future = self.client.submit(run_task, task, *args, key=key, workers=[room.address],
                                        allow_other_workers=True, pure=False,
                                        resources={MEMORY_RESOURCE: need} if room.declared else None)
            room.take(need)
            self.inflight[future] = (task, need, room.address)
            self.by_key[key] = task

    def wait_some(self) -> list:
        from distributed import wait

        try:
            return list(wait(list(self.inflight), timeout=POLL_S, return_when="FIRST_COMPLETED").done)
        except TimeoutError:
            return []
        except CancelledError:  # by the scheduler, or with the connection to it: theirs to collect
            return [f for f in self.inflight if f.done()]

    def collect(self, future) -> None:
        task, need, address = self.inflight.pop(future)
        room = self.rooms.get(address)
        if room is not None:
            room.give(need)
        result = self.result_of(future, task, need)
        with self.lock:
            rerun = future.key in self.rerun
        if rerun and result.status == "skipped":  # its first attempt committed it, then the worker was lost
            result = replace(result, status="done", reason="committed by an attempt on a lost worker")
        self.outcome.results.append(result)
        if self.on_result:
            self.on_result(result)

    def result_of(self, future, task: Task, need: int) -> CellResult:
        from distributed import KilledWorker

        common = dict(key=task.key, period=task.period.label, observations=len(task.observations), retryable=True)
        try:
            return future.result()
        except CancelledError as err:
            if getattr(err, "reason", None) == "scheduler-connection-lost":  # even if reconnected since
                raise self.lost() from err
            return CellResult(status="failed", reason=f"cancelled on the cluster of {self.outcome.scheduler} "
                                                      f"(lost or restarted); rerun to resume", **common)
        except KilledWorker as err:
            return CellResult(status="failed", reason=f"every worker that ran it was lost ({err}); maybe out of "
                                                      f"memory (estimated ~{describe_bytes(need)}): give workers "
                                                      f"more --memory-limit or use smaller tiles", **common)
        except Exception as err:  # cancelled by the scheduler, or the worker could not run it at all
            return CellResult(status="failed", reason=f"on the cluster: {err.__class__.__name__}: {err}", **common)

    def refresh(self) -> None:
        """Take in the workers as the scheduler sees them now: rooms for new ones, none for the gone."""
        self.check_connected()  # asked while reconnecting, the scheduler would keep us for a connect timeout
        self.refreshed = time.monotonic()
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        for address in list(self.rooms):
            if address not in workers:
                del self.rooms[address]  # its tasks are rescheduled by Dask; on_event says which
        for address, info in workers.items():
            if address not in self.rooms:
                self.rooms[address] = room_of(address, info, self.pause)
                self.outcome.workers.add(address)
        if self.rooms:
            self.seen_at = self.refreshed

    def wait_for_room(self, pending: deque) -> None:
        """Nothing runs and the next task fits no worker: wait for one that can hold it, or fail the
        tasks no worker can (a retry, on a cluster that has such workers again, can run them)."""
        task, need = pending[0]
        deadline = time.monotonic() + WORKER_WAIT_S
        while time.monotonic() < deadline:
            time.sleep(POLL_S)
            self.refresh()
            if any(r.fits(need) for r in self.rooms.values()):
                return
        while pending:
            task, need = pending.popleft()
            self.fail(task, f"no worker of {self.outcome.scheduler} could hold it (~{describe_bytes(need)}) "
                            f"for {WORKER_WAIT_S:.0f} s; rerun when the cluster has such workers")

    def give_up_without_workers(self, pending: deque) -> None:
        """The cluster has had no worker for WORKER_WAIT_S: fail what is left instead of waiting on."""
        if self.rooms or time.monotonic() - self.seen_at < WORKER_WAIT_S:
            return
        self.client.cancel(list(self.inflight))
        self.abandon(pending, f"the cluster of {self.outcome.scheduler} has had no worker for {WORKER_WAIT_S:.0f} s; "
                              f"rerun when it has")

    def abandon(self, pending: deque, reason: str) -> None:
        """Fail every task in flight or still to place, for `reason` (all retryable)."""
        left = [task for task, _, _ in self.inflight.values()] + [task for task, _ in pending]
        self.inflight.clear()
        pending.clear()
        for task in left:
            self.fail(task, reason)

    def fail(self, task: Task, reason: str) -> None:
        result = CellResult(key=task.key, period=task.period.label, status="failed", reason=reason,
                            observations=len(task.observations), retryable=True)
        self.outcome.results.append(result)
        if self.on_result:
            self.on_result(result)

    def on_event(self, event) -> None:
        """A scheduler event (on the client's thread): a worker removed with tasks of ours on it."""
        _, msg = event
        if not isinstance(msg, dict) or msg.get("action") != "remove-worker":
            return
        keys = set(msg.get("processing-tasks", ())) | set(msg.get("lost-computed-tasks", ()))
        with self.lock:
            ours = sorted(k for k in keys if k in self.by_key)
            self.outcome.lost[msg["worker"]] = len(ours)
            self.rerun.update(ours)
            for key in ours:
                task = self.by_key[key]
                self.outcome.rescheduled.append((task.key, task.period.label, msg["worker"]))
        how = "retired" if msg.get("expected") else "lost"
        log.warning("worker %s %s mid-run; Dask re-runs the %d task(s) of this run it held on other workers",
                    msg["worker"], how, len(ours))

    def report_losses(self) -> None:
        if self.outcome.lost:
            log.warning("%d worker(s) left the cluster during the run; %d task(s) re-ran on others",
                        len(self.outcome.lost), len(self.outcome.rescheduled))


def output_seen(output: str, probe: str, token: bytes) -> tuple[str, bool]:
    """On a worker: ("", False) when it reads the client's probe in `output`, else (what it sees
    instead, whether that may pass)."""
    from .errors import GriddedError
    from .io.storage import open_storage

    try:
        if open_storage(output).get_bytes(probe) == token:
            return "", False
        return "sees another output under that name", False
    except GriddedError as err:
        return f"cannot read it ({err})", err.retryable


def _absolute(output: str) -> str:
    from pathlib import Path
    from urllib.parse import urlparse

    scheme = urlparse(output).scheme
    return str(Path(output).absolute()) if scheme == "" or len(scheme) == 1 else output


def run_task(task: Task, pipeline: Pipeline, output: str, overwrite: bool, on_bad_source: BadSource,
             access: SourceAccess) -> CellResult:
    """On a worker: read, compute and commit one task (process_task), with the plan's source access;
    the worker's address goes back in the small result, never pixels."""
    from distributed import get_worker

    from .cluster import tune_allocator
    from .process import process_task

    tune_allocator()
    with _exported(access):
        result = process_task(task, pipeline, output, overwrite, on_bad_source)
    return replace(result, worker=get_worker().address)


_access_lock = threading.Lock()
_access_users: dict[SourceAccess, tuple[int, ExitStack]] = {}


@contextmanager
def _exported(access: SourceAccess):
    """access.exported(), entered by the first of a worker's threads to need it and left by the
    last: a thread leaving must not take the environment from another still reading. (Two runs
    with different access on one worker at once would still share one environment.)"""
    with _access_lock:
        users, stack = _access_users.get(access, (0, None))
        if stack is None:
            stack = ExitStack()
            stack.enter_context(access.exported())
        _access_users[access] = (users + 1, stack)
    try:
        yield
    finally:
        with _access_lock:
            users, stack = _access_users.pop(access)
            if users > 1:
                _access_users[access] = (users - 1, stack)
            else:
                stack.close()
