"""One batch: load, mask, reduce, write each task, under the worker's own Dask LocalCluster."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .cluster import local_client, tune_allocator, worker_resources
from .compute.masking import clear_count
from .compute.statistics import STATISTICS, warm_kernels
from .errors import ClusterError, GriddedError
from .io.storage import Storage, open_storage
from .pipeline import Pipeline
from .plan import Batch, Task
from .write import COUNT_ASSET, COUNT_NODATA, commit_outputs, item_name

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class CellResult:
    """What became of one (cell, period): done, skipped or failed (with the reason)."""

    key: tuple[int, int]
    period: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    observations: int = 0


def is_current(storage: Storage, name: str, fingerprint: str) -> bool:
    """True when the item exists and records the same input fingerprint."""
    if not storage.exists(name):
        return False
    try:
        existing = json.loads(storage.get_bytes(name))
    except (ValueError, GriddedError):
        return False
    return existing.get("properties", {}).get("gridded:fingerprint") == fingerprint


def process_task(task: Task, pipeline: Pipeline, output: str, overwrite: bool = False) -> CellResult:
    """Compute and commit one task, or skip it when its item is current. Never raises for the cell."""
    from .io.rasters import configure_gdal
    from .load import load_task

    started = time.monotonic()
    common = dict(key=task.key, period=task.period.label, observations=len(task.observations))
    try:
        configure_gdal(s3=any(href.startswith("s3://") for obs in task.observations for _, href in obs.hrefs))
        storage = open_storage(output)
        fingerprint = task.fingerprint(pipeline)
        name = item_name(pipeline, task)
        exists = storage.exists(name)
        if exists and not overwrite and is_current(storage, name, fingerprint):
            return CellResult(status="skipped", reason="up to date", **common)
        stacks = load_task(task, pipeline.bands, pipeline.mask, pipeline.nodata)
        arrays, nodata = {}, {}
        for band in pipeline.bands:
            dtype = np.dtype(pipeline.dtype) if pipeline.dtype else stacks.source_dtype[band]
            nodata[band] = _output_nodata(pipeline.nodata, stacks.source_nodata[band], dtype)
            arrays[band] = np.empty(task.geobox.shape, dtype=dtype)
        statistic = STATISTICS[pipeline.statistic]
        reduced = statistic.reduce(stacks.bands, stacks.sentinel, out=arrays, out_nodata=nodata,
                                   max_iterations=pipeline.max_iterations, tolerance=pipeline.tolerance)
        arrays[COUNT_ASSET] = clear_count(stacks.bands, stacks.sentinel)
        nodata[COUNT_ASSET] = COUNT_NODATA
        for name in statistic.extra_assets:
            arrays[name], nodata[name] = reduced[name].astype(np.float32), float("nan")
        extra = {}
        if statistic.iterative:
            extra = {"gridded:geomedian": {"tolerance": pipeline.tolerance, "max_iterations": pipeline.max_iterations}}
        commit_outputs(storage, pipeline=pipeline, task=task, arrays=arrays, nodata=nodata,
                       fingerprint=fingerprint, replace=exists, extra=extra)
        return CellResult(status="done", seconds=time.monotonic() - started, **common)
    except GriddedError as err:
        return CellResult(status="failed", reason=str(err), seconds=time.monotonic() - started, **common)
    except MemoryError:
        return CellResult(status="failed", reason="out of memory; use smaller tiles or more memory per worker",
                          seconds=time.monotonic() - started, **common)
    except Exception as err:  # a bug or an unexpected library failure: fail the cell, keep the cause
        log.exception("cell %s %s failed", task.key, task.period.label)
        return CellResult(status="failed", reason=f"{err.__class__.__name__}: {err}",
                          seconds=time.monotonic() - started, **common)


def _output_nodata(pipeline_nodata, source_nodata, dtype: np.dtype):
    if pipeline_nodata is not None:
        value = pipeline_nodata
    elif source_nodata is not None:
        value = source_nodata
    else:
        value = np.nan if np.issubdtype(dtype, np.floating) else 0
    if np.issubdtype(dtype, np.integer):
        return int(value)
    return float(value)


def process_batch(batch: Batch, pipeline: Pipeline, output: str, *, overwrite: bool = False,
                  workers_on_machine: int = 1, scheduler: str | None = None,
                  on_result: Callable[[CellResult], None] | None = None) -> list[CellResult]:
    """Every task of a batch on a Dask cluster: this worker's own LocalCluster, or `scheduler`."""
    from distributed import Client, as_completed

    from .io.rasters import pooled_sources

    results = []
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise ClusterError(f"--scheduler {scheduler}: cannot connect ({err.__class__.__name__}); "
                               f"check the address and that the scheduler is running") from err
    else:
        tune_allocator()
        # the tasks run in this process: load numba's code while Dask starts and the first reads run
        warm_kernels(pipeline.statistic, len(pipeline.bands))
        client = local_client(*worker_resources(workers_on_machine))
    # period by period: the cells of one period read the same scenes, which stay open between them
    tasks = sorted(batch.tasks, key=lambda t: (t.period.label, t.key[1], t.key[0]))
    try:
        with pooled_sources():
            futures = [client.submit(process_task, t, pipeline, output, overwrite, pure=False) for t in tasks]
            for future in as_completed(futures):
                result = future.result()
                results.append(result)
                if on_result:
                    on_result(result)
            # released now, not whenever the scheduler hears of it: a cluster closed at exit with
            # results still held warns that the worker's removal lost them
            client.cancel(futures)
    finally:
        if scheduler:
            client.close()
    return sorted(results, key=lambda r: (r.key[1], r.key[0], r.period))
