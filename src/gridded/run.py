"""`gridded run`: plan, then fan the batches out to local worker processes, with progress."""

from __future__ import annotations

import json
import multiprocessing
import queue as queue_mod
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

from .artifact import read_batch, write_artifact
from .catalog import write_catalog
from .errors import ConfigError
from .grid import Grid
from .pipeline import Pipeline
from .plan import Plan, make_plan
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
                     time=selection.time, items=items, tiles_per_worker=selection.tiles_per_worker)


class Progress:
    """Tasks done / total, rate and ETA on stderr: one rewritten line on a terminal, else a line per 5%."""

    def __init__(self, total: int, stream=sys.stderr, quiet: bool = False):
        self.total, self.stream, self.quiet = total, stream, quiet
        self.done = 0
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self.started = time.monotonic()
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self._last_step = -1

    def update(self, result: CellResult) -> None:
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


@cache
def _configure_worker() -> None:
    from .load import configure_gdal

    configure_gdal()


def _run_batch(artifact: str, batch_id: int, output: str, overwrite: bool, workers: int, results_q) -> list[CellResult]:
    """In a worker process: read one batch from the artifact (as `tiles process` does) and run it."""
    _configure_worker()
    _, pipeline, _, batch = read_batch(artifact, batch_id)
    return process_batch(batch, pipeline, output, overwrite=overwrite, workers_on_machine=workers,
                         on_result=results_q.put)


def run_plan(plan: Plan, output: str, *, workers: int = 1, overwrite: bool = False, quiet: bool = False,
             scheduler: str | None = None) -> list[CellResult]:
    """Execute every batch of a plan into `output`; then the catalog and the run report."""
    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    storage = open_storage(output)
    storage.check_writable()
    progress = Progress(len(plan.tasks), quiet=quiet)
    results: list[CellResult] = []
    workers = min(workers, max(1, len(plan.batches)))
    if workers == 1 or scheduler:
        for batch in plan.batches:
            results += process_batch(batch, plan.pipeline, output, overwrite=overwrite, scheduler=scheduler,
                                     on_result=progress.update)
    else:
        results = _run_in_processes(plan, output, workers, overwrite, progress)
    write_catalog(storage, collection_id=plan.pipeline.name)
    write_report(storage, plan, results)
    return results


def _run_in_processes(plan: Plan, output: str, workers: int, overwrite: bool, progress: Progress) -> list[CellResult]:
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="gridded-run-") as tmp, ctx.Manager() as manager:
        artifact = str(Path(tmp) / "cells.pickle")
        write_artifact(plan, artifact)
        results_q = manager.Queue()
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(_run_batch, artifact, b.id, output, overwrite, workers, results_q)
                       for b in plan.batches]
            pending = set(futures)
            while pending:
                try:
                    progress.update(results_q.get(timeout=0.2))
                except queue_mod.Empty:
                    pass
                pending = {f for f in pending if not f.done()}
            while True:
                try:
                    progress.update(results_q.get_nowait())
                except queue_mod.Empty:
                    break
            results = []
            for batch, future in zip(plan.batches, futures):
                try:
                    results += future.result()
                except Exception as err:  # the worker process died: every cell of its batch failed
                    results += [CellResult(key=t.key, period=t.period.label, status="failed",
                                           reason=f"worker died: {err.__class__.__name__}: {err}")
                                for t in batch.tasks]
    return results


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
