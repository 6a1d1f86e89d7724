"""One batch: load, mask, reduce, write each task, under the worker's own Dask LocalCluster."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from .cluster import freeze_heap, local_client, tune_allocator, worker_resources
from .compute.arrays import as_dtype
from .compute.statistics import warm_kernels
from .errors import GriddedError
from .io.access import SourceAccess
from .io.storage import Storage, open_storage
from .items import item_name
from .load import Stacks
from .masks import MaskRule
from .pipeline import Pipeline
from .plan import Batch, Task
from .reduce import Reduced, reduce_task
from .write import commit_outputs

log = logging.getLogger(__name__)

TaskState = Literal["done", "changed", "to-do"]
BadSource = Literal["fail", "skip"]  # what a source that cannot be read does to its tasks
BAD_SOURCE_CHOICES = ("fail", "skip")


@dataclass(frozen=True, slots=True, kw_only=True)
class CellResult:
    """What became of one (cell, period): done, skipped or failed (with the reason)."""

    key: tuple[int, int]
    period: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    observations: int = 0
    retryable: bool = False  # a failure that running the task again may not meet (throttling, a 5xx, a kill)
    skipped_inputs: tuple[tuple[str, str], ...] = ()  # (item id, why) of unreadable inputs left out
    started: str = ""  # when it started (UTC, ISO 8601), on the clock of the machine that ran it
    worker: str = ""  # the Dask worker that ran it, on an external cluster (--scheduler)


def item_state(storage: Storage, name: str, fingerprint: str) -> TaskState:
    """to-do (no item), done (the item records the same input fingerprint) or changed: one read."""
    try:
        body = storage.get_if_exists(name)
    except GriddedError as err:
        if err.retryable:
            raise
        return "changed"  # there, but unreadable: replaced
    if body is None:
        return "to-do"
    try:
        existing = json.loads(body)
    except ValueError:
        return "changed"
    return "done" if existing.get("properties", {}).get("gridded:fingerprint") == fingerprint else "changed"


def is_current(storage: Storage, name: str, fingerprint: str) -> bool:
    """True when the item exists and records the same input fingerprint."""
    return item_state(storage, name, fingerprint) == "done"


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskArrays:
    """A task's results in memory: per asset (bands, count, extras) its array and nodata, and what
    the item records of how they were made."""

    arrays: dict[str, np.ndarray]
    nodata: dict[str, float | int | None]
    properties: dict
    skipped: tuple[tuple[str, str], ...] = ()  # (item id, why) of the inputs left out


def compute_task(task: Task, pipeline: Pipeline, *, on_bad_source: BadSource = "fail") -> TaskArrays:
    """Read, mask and reduce one task: what `gridded run` writes for it, as arrays (the same for
    `gridded.composite`). Raises GriddedError for a source that cannot be read, unless
    `on_bad_source` is "skip": then the task is made of the others, and its properties name the
    inputs left out and why."""
    from .load import data_window, load_task

    mask = pipeline.mask if isinstance(pipeline.mask, MaskRule) else None
    window = data_window(task, pipeline.bands, mask)
    stacks = load_task(task, pipeline.bands, mask, pipeline.nodata,
                       encodings={b: pipeline.encoding(b) for b in pipeline.bands},
                       skip_bad_sources=on_bad_source == "skip", window=window)
    reduced = reduce_task(stacks, pipeline, task.period.start)
    if window is not None:  # the rest of the cell is what a pixel with no observation gets
        reduced = _in_cell(reduced, window, task.shape_yx, reduce_task(_unobserved(stacks), pipeline,
                                                                           task.period.start))
    properties = dict(reduced.properties)
    if stacks.skipped:
        properties["gridded:skipped_inputs"] = [{"id": item, "reason": why} for item, why in stacks.skipped]
    return TaskArrays(arrays=reduced.arrays, nodata=reduced.nodata, properties=properties, skipped=stacks.skipped)


def _unobserved(stacks: Stacks) -> Stacks:
    """One pixel with the stacks' layers and nothing in them: what reduce_task makes of a pixel
    no source covers."""
    bands = {b: np.full((len(s), 1, 1), as_dtype(stacks.sentinel[b], s.dtype), dtype=s.dtype)
             for b, s in stacks.bands.items()}
    return replace(stacks, bands=bands, observed=np.zeros((1, 1), dtype=np.uint16))


def _in_cell(reduced: Reduced, window: tuple[slice, slice], shape: tuple[int, int], outside: Reduced) -> Reduced:
    """The arrays of a window of the cell put into the cell's, the rest as `outside`'s one pixel."""
    arrays = {}
    for key, values in reduced.arrays.items():
        full = np.full(shape, outside.arrays[key][0, 0], dtype=values.dtype)
        full[window] = values
        arrays[key] = full
    return replace(reduced, arrays=arrays)


def task_states(tasks: list[Task], pipeline: Pipeline,
                storage: Storage) -> dict[tuple[tuple[int, int], str], TaskState]:
    """Per (cell, period label): done (its item is current), changed (an item for other inputs or
    parameters) or to-do (no item). Looked up 16 at a time: on S3 each is a GET."""
    from concurrent.futures import ThreadPoolExecutor

    def state(task: Task) -> TaskState:
        return item_state(storage, item_name(pipeline, task), task.fingerprint(pipeline))

    with ThreadPoolExecutor(max_workers=16) as pool:  # GET latency on S3, not CPU
        return dict(zip(((t.key, t.period.label) for t in tasks), pool.map(state, tasks)))


def process_task(task: Task, pipeline: Pipeline, output: str, overwrite: bool = False,
                 on_bad_source: BadSource = "fail", state: TaskState | None = None) -> CellResult:
    """Compute and commit one task, or skip it when its item is current. Never raises for the cell.
    `state`: the item's, as the caller has just looked it up (task_states), so it is not looked up
    again; an item another writer commits meanwhile is still met by the create-only commit."""
    from .io.rasters import configure_gdal

    started = time.monotonic()
    common: dict[str, Any] = dict(key=task.key, period=task.period.label, observations=len(task.observations),
                                  started=datetime.now(UTC).isoformat())
    try:
        configure_gdal(s3=any(href.startswith("s3://") for obs in task.observations for _, href in obs.hrefs))
        storage = open_storage(output)
        fingerprint = task.fingerprint(pipeline)
        name = item_name(pipeline, task)
        if state is None:
            state = item_state(storage, name, fingerprint)
        exists = state != "to-do"
        if state == "done" and not overwrite:
            return CellResult(status="skipped", reason="up to date", **common)
        result = compute_task(task, pipeline, on_bad_source=on_bad_source)
        if result.skipped:  # recorded so that no later run takes this item for current: it retries them
            fingerprint = hashlib.sha256(json.dumps([fingerprint, result.skipped]).encode()).hexdigest()
        commit_outputs(storage, pipeline=pipeline, task=task, arrays=result.arrays, nodata=result.nodata,
                       fingerprint=fingerprint, replace=exists, extra=result.properties)
        return CellResult(status="done", seconds=time.monotonic() - started, skipped_inputs=result.skipped, **common)
    except GriddedError as err:
        return CellResult(status="failed", reason=str(err), retryable=err.retryable,
                          seconds=time.monotonic() - started, **common)
    except MemoryError:
        return CellResult(status="failed", reason="out of memory; use smaller tiles or more memory per worker",
                          retryable=True, seconds=time.monotonic() - started, **common)
    except Exception as err:  # a bug or an unexpected library failure: fail the cell, keep the cause
        log.exception("cell %s %s failed", task.key, task.period.label)
        return CellResult(status="failed", reason=f"{err.__class__.__name__}: {err}", retryable=True,
                          seconds=time.monotonic() - started, **common)


def process_batch(batch: Batch, pipeline: Pipeline, output: str, *, overwrite: bool = False,
                  on_bad_source: BadSource = "fail", access: SourceAccess | None = None,
                  workers_on_machine: int = 1, scheduler: str | None = None,
                  on_result: Callable[[CellResult], None] | None = None,
                  states: dict[tuple[tuple[int, int], str], TaskState] | None = None) -> list[CellResult]:
    """Every task of a batch on a Dask cluster: this worker's own LocalCluster, or `scheduler`'s
    workers (see gridded.fanout: placed by memory, reads and writes on the workers). `states`: the
    tasks' items as task_states has just found them (not looked up again).

    >>> from gridded import plan, select
    >>> todo = plan(select(demo_catalog, extent=DEMO_EXTENT, time="2024-02", grid=str(DEMO_GRID), bands="nir",
    ...                    tiles_per_worker=2))
    >>> [(r.key, r.status) for r in process_batch(todo.batches[0], todo.pipeline, str(tmp / "batch"))]
    [((234, 2343), 'done'), ((235, 2343), 'done')]
    """
    if scheduler:
        from .fanout import run_on_cluster

        results = run_on_cluster(list(batch.tasks), pipeline, output, scheduler=scheduler, overwrite=overwrite,
                                 on_bad_source=on_bad_source, access=access, on_result=on_result).results
        return sorted(results, key=lambda r: (r.key[1], r.key[0], r.period))
    from distributed import as_completed

    from .io.rasters import pooled_sources

    tune_allocator()
    # the tasks run in this process: load numba's code while Dask starts and the first reads run
    for statistic in pipeline.statistics:
        warm_kernels(statistic, len(pipeline.bands))
    client = local_client(*worker_resources(workers_on_machine))
    freeze_heap()
    # period by period: the cells of one period read the same scenes, which stay open between them
    tasks = sorted(batch.tasks, key=lambda t: (t.period.label, t.key[1], t.key[0]))
    results = []
    with pooled_sources(), (access or SourceAccess()).exported():
        futures = [client.submit(process_task, t, pipeline, output, overwrite, on_bad_source,
                                 (states or {}).get((t.key, t.period.label)), pure=False) for t in tasks]
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            if on_result:
                on_result(result)
        # released now, not whenever the scheduler hears of it: a cluster closed at exit with
        # results still held warns that the worker's removal lost them
        client.cancel(futures)
    return sorted(results, key=lambda r: (r.key[1], r.key[0], r.period))
