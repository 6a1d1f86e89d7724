"""`gridded run`: plan, then fan the batches out to local worker processes, with progress."""

from __future__ import annotations

import json
import multiprocessing
import signal
import queue as queue_mod
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from .artifact import read_batch, write_artifact
from .catalog import write_catalog
from .errors import ConfigError, Interrupted
from .grid import Grid
from .pipeline import Pipeline
from .plan import Batch, Plan, make_plan
from .process import CellResult, process_batch
from .source import TimeRange, items_for_query, read_items
from .storage import open_storage

REPORT_NAME = "run-report.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """What to compute, normalised from the command line: the same for run, plan and tiles generate."""

    source: str | None
    extent: object  # odc.geo Geometry in EPSG:4326
    time: TimeRange
    grid: Grid
    pipeline: Pipeline
    tiles_per_worker: int = 1
    collection: str | None = None
    index: str | None = None  # plan from this index instead of reading the source
    allow_roots: tuple[str, ...] = ()  # more local folders asset hrefs may point into


def plan_for(selection: Selection) -> Plan:
    """Read the source (or query the index), pick the items for the extent and time, plan cells x periods."""
    if selection.index:
        from .index import open_index

        index = open_index(selection.index)
        try:
            candidates = index.search(bbox=selection.extent.boundingbox, start=selection.time.start,
                                      end=selection.time.end, collection=selection.collection)
        finally:
            index.close()
    else:
        candidates = read_items(selection.source)
    items = items_for_query(candidates, selection.extent, selection.time, selection.collection)
    return make_plan(pipeline=selection.pipeline, grid=selection.grid, extent=selection.extent,
                     time=selection.time, items=items, tiles_per_worker=selection.tiles_per_worker,
                     local_roots=local_roots(selection))


def local_roots(selection: Selection) -> tuple[Path, ...] | None:
    """Where local asset files may be: under a local catalog's folder (and --allow-root folders);
    nowhere for a remote catalog unless allowed; anywhere for an index the user built."""
    if selection.index:
        return None
    extra = tuple(Path(r).resolve() for r in selection.allow_roots)
    parsed = urlparse(selection.source)
    if parsed.scheme in ("s3", "http", "https"):
        return extra
    path = Path(parsed.path if parsed.scheme == "file" else selection.source).resolve()
    return (path if path.is_dir() else path.parent,) + extra


class Progress:
    """Tasks done / total, rate and ETA on stderr: one rewritten line on a terminal, else a line per 5%."""

    def __init__(self, total: int, stream=sys.stderr, quiet: bool = False):
        self.total, self.stream, self.quiet = total, stream, quiet
        self.done = 0
        self.results: list[CellResult] = []
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self.started = time.monotonic()
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self._last_step = -1

    def update(self, result: CellResult) -> None:
        self.results.append(result)
        self.done += 1
        self.counts[result.status] = self.counts.get(result.status, 0) + 1
        if self.quiet:
            return
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        line = (f"tasks {self.done}/{self.total}  done {self.counts['done']} skipped {self.counts['skipped']} "
                f"failed {self.counts['failed']}  {rate:.2f}/s  ETA {eta:.0f}s")
        step = int(20 * self.done / max(self.total, 1))
        if self.tty:
            self.stream.write("\r" + line + ("\n" if self.done == self.total else ""))
        elif step != self._last_step or self.done == self.total:
            self.stream.write(line + "\n")
        self._last_step = step
        self.stream.flush()


def _run_batch(artifact: str, batch_id: int, output: str, overwrite: bool, workers: int, results_q) -> None:
    """In a worker process: read one batch from the artifact (as `tiles process` does) and run it,
    sending each task's result as soon as it is known."""
    _, pipeline, _, batch = read_batch(artifact, batch_id)
    process_batch(batch, pipeline, output, overwrite=overwrite, workers_on_machine=workers, on_result=results_q.put)


def run_plan(plan: Plan, output: str, *, workers: int = 1, overwrite: bool = False, quiet: bool = False,
             scheduler: str | None = None) -> list[CellResult]:
    """Execute every batch of a plan into `output`; then the catalog and the run report.

    On SIGTERM (or Ctrl-C) the workers are stopped, what finished is reported, and Interrupted
    is raised: every committed cell stays committed, a rerun resumes the rest."""
    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    storage = open_storage(output)
    storage.check_writable()
    progress = Progress(len(plan.tasks), quiet=quiet)
    todo = plan if overwrite else _without_current(plan, storage, progress)
    results: list[CellResult] = list(progress.results)
    workers = min(workers, max(1, len(todo.batches)))
    try:
        with interruptible(progress, len(plan.tasks), in_process=workers == 1 or bool(scheduler)):
            if workers == 1 or scheduler:
                for batch in todo.batches:
                    results += process_batch(batch, plan.pipeline, output, overwrite=overwrite,
                                             scheduler=scheduler, on_result=progress.update)
            elif todo.batches:
                results = _run_in_processes(todo, output, workers, overwrite, progress)
    except Interrupted:
        write_report(storage, plan, progress.results)
        raise
    storage.sweep()
    write_catalog(storage, collection_id=plan.pipeline.name)
    write_report(storage, plan, results)
    return results


def _without_current(plan: Plan, storage, progress: Progress) -> Plan:
    """The plan less the tasks whose items are current (reported as skipped here), so an all-done
    rerun starts no worker at all: what makes scheduled reprocessing cheap."""
    from concurrent.futures import ThreadPoolExecutor

    from .process import is_current
    from .write import item_name

    tasks = plan.tasks

    def current(task) -> bool:
        return is_current(storage, item_name(plan.pipeline, task), task.fingerprint(plan.pipeline))

    with ThreadPoolExecutor(max_workers=16) as pool:  # HEAD/GET latency on S3, not CPU
        flags = dict(zip(((t.key, t.period.label) for t in tasks), pool.map(current, tasks)))
    batches = []
    for batch in plan.batches:
        left = tuple(t for t in batch.tasks if not flags[(t.key, t.period.label)])
        for t in batch.tasks:
            if flags[(t.key, t.period.label)]:
                progress.update(CellResult(key=t.key, period=t.period.label, status="skipped", reason="up to date",
                                           observations=len(t.observations)))
        if left:
            batches.append(Batch(id=batch.id, tasks=left))
    return replace(plan, batches=tuple(batches))


@contextmanager
def interruptible(progress: Progress, total: int, *, in_process: bool):
    """SIGTERM (as Kubernetes sends) or Ctrl-C becomes Interrupted, naming what is kept."""
    def on_term(signum, frame):
        raise Interrupted(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except (Interrupted, KeyboardInterrupt) as err:
        stop = Interrupted(f"interrupted; {progress.counts['done']} tasks done and kept, "
                           f"{total - progress.done} left: rerun to resume")
        stop.hard_exit = in_process
        raise stop from err
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_in_processes(plan: Plan, output: str, workers: int, overwrite: bool, progress: Progress) -> list[CellResult]:
    """One spawned process per batch, at most `workers` at once. A process that dies (killed, out
    of memory) fails only its batch's unfinished tasks; the other batches go on."""
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="gridded-run-") as tmp:
        artifact = str(Path(tmp) / "cells.pickle")
        write_artifact(plan, artifact)
        results_q = ctx.Queue()
        pending = list(plan.batches)
        running: dict[int, multiprocessing.Process] = {}
        died: dict[int, int] = {}
        try:
            while pending or running:
                while pending and len(running) < workers:
                    batch = pending.pop(0)
                    proc = ctx.Process(target=_run_batch, name=f"gridded-batch-{batch.id}",
                                       args=(artifact, batch.id, output, overwrite, workers, results_q))
                    proc.start()
                    running[batch.id] = proc
                _drain(results_q, progress, timeout_s=0.2)
                for batch_id, proc in list(running.items()):
                    if not proc.is_alive():
                        proc.join()
                        del running[batch_id]
                        if proc.exitcode != 0:
                            died[batch_id] = proc.exitcode
            _drain(results_q, progress, timeout_s=0.5)
        except BaseException:
            _stop(running.values())
            raise
    finished = {(r.key, r.period) for r in progress.results}
    results = list(progress.results)
    for batch in plan.batches:
        for task in batch.tasks:
            if (task.key, task.period.label) not in finished:
                code = died.get(batch.id)
                why = (f"worker process died ({_describe_exit(code)}); maybe out of memory: "
                       f"use smaller tiles, fewer --workers, or more memory") if code else "worker gave no result"
                failed = CellResult(key=task.key, period=task.period.label, status="failed", reason=why)
                results.append(failed)
                progress.update(failed)
    return results


def _drain(results_q, progress: Progress, *, timeout_s: float) -> None:
    try:
        progress.update(results_q.get(timeout=timeout_s))
        while True:
            progress.update(results_q.get_nowait())
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


def write_report(storage, plan: Plan, results: list[CellResult]) -> None:
    """run-report.json at the output root: every task's status, machine-readable."""
    report = {
        "pipeline": plan.pipeline.name,
        "finished": datetime.now(timezone.utc).isoformat(),
        "counts": {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")},
        "tasks": [asdict(r) | {"key": list(r.key)} for r in results],
    }
    storage.put_bytes(REPORT_NAME, json.dumps(report, indent=1).encode())


def summary_table(results: list[CellResult], elapsed_s: float, output: str) -> str:
    """The end-of-run table: counts per status, then each failed task with its reason."""
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    cells = {s: len({r.key for r in results if r.status == s}) for s in counts}
    lines = [f"{'status':<8} {'tasks':>6} {'cells':>6}"]
    lines += [f"{s:<8} {counts[s]:>6} {cells[s]:>6}" for s in counts]
    lines.append(f"{'total':<8} {len(results):>6} {len({r.key for r in results}):>6}")
    rate = len(results) / elapsed_s if elapsed_s > 0 else 0.0
    lines.append(f"elapsed {elapsed_s:.1f} s ({rate:.2f} tasks/s); outputs in {output}")
    for r in results:
        if r.status == "failed":
            lines.append(f"FAILED x{r.key[0]} y{r.key[1]} {r.period}: {r.reason}")
    return "\n".join(lines)
