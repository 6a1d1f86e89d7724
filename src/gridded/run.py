"""The local executor: a plan's batches on this machine (in this process, or one spawned process
per batch), each result reported through a callback as it comes; then the catalog and the report."""

from __future__ import annotations

import json
import multiprocessing
import queue as queue_mod
import signal
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

from . import __version__
from .artifact import read_batch, write_artifact
from .catalog import write_catalog
from .errors import BAD_INPUT_EXIT, TRANSIENT_EXIT, ConfigError, Interrupted, SchedulerLost
from .io.storage import open_storage
from .plan import Batch, Plan
from .process import BadSource, CellResult, process_batch, task_states
from .status import StatusWriter, write_plan, write_status
from .write import COMMITS_STOPPED

REPORT_NAME = "run-report.json"
RUNS_DIR = "runs"  # every run's report, kept


class Tally:
    """A run's results as they come, each passed on to the caller's callback."""

    def __init__(self, on_result: Callable[[CellResult], None] | None = None):
        self.results: list[CellResult] = []
        self.on_result = on_result

    def add(self, result: CellResult) -> None:
        self.results.append(result)
        if self.on_result is not None:
            self.on_result(result)

    @property
    def done(self) -> int:
        return sum(r.status == "done" for r in self.results)


def _run_batch(artifact: str, batch_id: int, output: str, overwrite: bool, on_bad_source: BadSource, workers: int,
               results_q) -> None:
    """In a worker process: read one batch from the artifact (as `tiles process` does) and run it,
    sending each task's result as soon as it is known."""
    read = read_batch(artifact, batch_id)
    process_batch(read.batch, read.pipeline, output, overwrite=overwrite, on_bad_source=on_bad_source,
                  workers_on_machine=workers, access=read.access, on_result=results_q.put)


def run_plan(plan: Plan, output: str, *, workers: int = 1, overwrite: bool = False, on_bad_source: BadSource = "fail",
             scheduler: str | None = None, on_result: Callable[[CellResult], None] | None = None,
             command: list[str] | None = None, on_status: Callable[[dict], None] | None = None) -> list[CellResult]:
    """Execute every batch of a plan into `output`; then the catalog and the run report. Each
    task's result goes to `on_result` as soon as it is known (skipped ones first).

    >>> from gridded import plan, select
    >>> todo = plan(select(demo_catalog, extent=DEMO_EXTENT, time="2024-01", grid=str(DEMO_GRID), bands="red"))
    >>> [r.status for r in run_plan(todo, str(tmp / "run"))]
    ['done', 'done', 'done', 'done', 'done', 'done']
    >>> {r.status for r in run_plan(todo, str(tmp / "run"))}  # a rerun: every item is current
    {'skipped'}

    On SIGTERM (or Ctrl-C) the workers are stopped, the catalog and the report are written for
    what finished, and Interrupted is raised: every committed cell stays committed (and listed),
    a rerun resumes the rest. With `scheduler` (a Dask scheduler's address) the tasks of every
    batch go to that cluster's workers at once, placed by their memory (gridded.fanout); the
    report then says which worker ran each task, and which workers were lost; when the scheduler
    itself is lost, the catalog and the report are written for what finished and SchedulerLost
    (exit 1) is raised. `command` is what the report records as the command line. While it
    runs, OUT/status.geojson is kept current (see gridded.status), each version also passed to
    `on_status`."""
    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    storage = open_storage(output)
    storage.check_writable()
    started = datetime.now(UTC)
    write_plan(storage, plan)  # what `gridded status` compares the output with, during the run and after
    tally = Tally(on_result)
    states = None if overwrite else task_states(plan.tasks, plan.pipeline, storage)
    todo = plan if states is None else _without_current(plan, states, tally)
    results: list[CellResult] = list(tally.results)
    workers = min(workers, max(1, len(todo.batches)))
    cluster = None
    try:
        with interruptible(tally, len(plan.tasks), in_process=workers == 1 or bool(scheduler)), \
                StatusWriter(storage, on_status=on_status):
            if scheduler and todo.batches:  # every batch's tasks at once over the cluster's workers
                from .fanout import run_on_cluster
                from .sizing import sample_bytes_of

                cluster = run_on_cluster(todo.tasks, plan.pipeline, output, scheduler=scheduler, overwrite=overwrite,
                                         on_bad_source=on_bad_source, access=plan.access,
                                         sample_bytes=sample_bytes_of(plan), on_result=tally.add)
                results += cluster.results
            elif workers == 1:
                for batch in todo.batches:
                    results += process_batch(batch, plan.pipeline, output, overwrite=overwrite,
                                             on_bad_source=on_bad_source, access=plan.access, on_result=tally.add,
                                             states=states)
            elif todo.batches:
                results = _run_in_processes(todo, output, workers, overwrite, on_bad_source, tally)
    except Interrupted:
        write_catalog(storage, collection_id=plan.pipeline.name, license=plan.pipeline.license)
        write_report(storage, plan, tally.results, started=started, command=command, outcome="interrupted")
        raise
    except SchedulerLost as err:
        write_catalog(storage, collection_id=plan.pipeline.name, license=plan.pipeline.license)
        write_report(storage, plan, tally.results, started=started, command=command, outcome="scheduler lost",
                     cluster=err.cluster)
        raise
    storage.sweep()
    write_catalog(storage, collection_id=plan.pipeline.name, license=plan.pipeline.license)
    write_report(storage, plan, results, started=started, command=command,
                 cluster=cluster.summary() if cluster else None)
    status = write_status(storage)
    if on_status:
        on_status(status)
    return results


def _without_current(plan: Plan, states: dict, tally: Tally) -> Plan:
    """The plan less the tasks whose items are current (reported as skipped here), so an all-done
    rerun starts no worker at all: what makes scheduled reprocessing cheap."""
    batches = []
    for batch in plan.batches:
        left = tuple(t for t in batch.tasks if states[(t.key, t.period.label)] != "done")
        for t in batch.tasks:
            if states[(t.key, t.period.label)] == "done":
                tally.add(CellResult(key=t.key, period=t.period.label, status="skipped", reason="up to date",
                                     observations=len(t.observations)))
        if left:
            batches.append(Batch(id=batch.id, tasks=left))
    return replace(plan, batches=tuple(batches))


@contextmanager
def interruptible(tally: Tally, total: int, *, in_process: bool):
    """SIGTERM (as Kubernetes sends) or Ctrl-C becomes Interrupted, naming what is kept."""
    def on_term(signum, frame):
        raise Interrupted(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    COMMITS_STOPPED.clear()  # an earlier run interrupted in this process (a notebook's) is over
    try:
        yield
    except (Interrupted, KeyboardInterrupt) as err:
        COMMITS_STOPPED.set()
        stop = Interrupted(f"interrupted; {tally.done} tasks done and kept, "
                           f"{total - len(tally.results)} left: rerun to resume")
        stop.hard_exit = in_process
        raise stop from err
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_in_processes(plan: Plan, output: str, workers: int, overwrite: bool, on_bad_source: BadSource,
                      tally: Tally) -> list[CellResult]:
    """One spawned process per batch, at most `workers` at once. A process that dies (killed, out
    of memory) fails only its batch's unfinished tasks; the other batches go on."""
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="gridded-run-") as tmp:
        artifact = str(Path(tmp) / "cells.pickle")
        write_artifact(plan, artifact)
        results_q = ctx.Queue()
        pending = list(plan.batches)
        running: dict[int, multiprocessing.context.SpawnProcess] = {}
        died: dict[int, int | None] = {}  # exit codes (None only while a process runs)
        try:
            while pending or running:
                while pending and len(running) < workers:
                    batch = pending.pop(0)
                    proc = ctx.Process(target=_run_batch, name=f"gridded-batch-{batch.id}",
                                       args=(artifact, batch.id, output, overwrite, on_bad_source, workers, results_q))
                    proc.start()
                    running[batch.id] = proc
                _drain(results_q, tally, timeout_s=0.2)
                for batch_id, proc in list(running.items()):
                    if not proc.is_alive():
                        proc.join()
                        del running[batch_id]
                        if proc.exitcode != 0:
                            died[batch_id] = proc.exitcode
            _drain(results_q, tally, timeout_s=0.5)
        except BaseException:
            _stop(running.values())
            raise
    finished = {(r.key, r.period) for r in tally.results}
    results = list(tally.results)
    for batch in plan.batches:
        for task in batch.tasks:
            if (task.key, task.period.label) not in finished:
                code = died.get(batch.id)
                why = (f"worker process died ({_describe_exit(code)}); maybe out of memory: "
                       f"use smaller tiles, fewer --workers, or more memory") if code else "worker gave no result"
                failed = CellResult(key=task.key, period=task.period.label, status="failed", reason=why,
                                    retryable=True)
                results.append(failed)
                tally.add(failed)
    return results


def _drain(results_q, tally: Tally, *, timeout_s: float) -> None:
    try:
        tally.add(results_q.get(timeout=timeout_s))
        while True:
            tally.add(results_q.get_nowait())
    except queue_mod.Empty:
        pass


def _stop(procs, grace_s: float = 10.0) -> None:
    """SIGTERM the workers, then SIGKILL what is still there after the grace period."""
    procs = list(procs)
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def exit_code_for(results: list[CellResult]) -> int:
    """0 when no task failed; 1 when one failed for a reason a retry may not meet again (a workflow
    engine retries the step); 2 when every failure is one no retry can fix (a corrupt or refused
    source), so that it is not retried in vain."""
    failed = [r for r in results if r.status == "failed"]
    if not failed:
        return 0
    return TRANSIENT_EXIT if any(r.retryable for r in failed) else BAD_INPUT_EXIT


def write_report(storage, plan: Plan, results: list[CellResult], *, started: datetime,
                 command: list[str] | None = None, outcome: str = "completed", cluster: dict | None = None) -> dict:
    """run-report.json at the output root (and a copy kept under runs/, named by the start time):
    what ran, when, how fast, every task's status (and where it ran), the inputs left out as
    unreadable, and on a cluster (`cluster`, see ClusterRun.summary) its workers, those lost and
    the tasks that re-ran because of it."""
    finished = datetime.now(UTC)
    elapsed_s = (finished - started).total_seconds()
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    report = {
        "gridded_version": __version__,
        "command": command,
        "pipeline": plan.pipeline.name,
        "outcome": outcome,
        "started": started.isoformat(),
        "finished": finished.isoformat(),
        "elapsed_s": round(elapsed_s, 3),
        "tasks_per_s": round(counts["done"] / elapsed_s, 4) if elapsed_s > 0 else None,
        "counts": counts,
        "skipped_inputs": [{"cell": list(r.key), "period": r.period, "id": item, "reason": why}
                           for r in results for item, why in r.skipped_inputs],
        "tasks": [asdict(r) | {"key": list(r.key)} for r in results],
    }
    if cluster is not None:
        report["cluster"] = cluster
    body = json.dumps(report, indent=1).encode()
    storage.put_bytes(f"{RUNS_DIR}/{started.strftime('%Y%m%dT%H%M%S.%fZ')}.json", body)
    storage.put_bytes(REPORT_NAME, body)
    return report
