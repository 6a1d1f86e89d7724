"""One batch: load, mask, reduce, write each task, under the worker's own Dask LocalCluster."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from functools import cache
from typing import Callable

import numpy as np

from .errors import ClusterError, GriddedError
from .pipeline import Pipeline
from .plan import Batch, Task
from .stats import EXTRA_ASSETS, ITERATIVE, STATISTICS, clear_count, warm_kernels
from .storage import Storage, open_storage
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
    from .load import load_task
    from .windows import configure_gdal

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
        reduced = STATISTICS[pipeline.statistic](stacks.bands, stacks.sentinel, out=arrays, out_nodata=nodata,
                                                 max_iterations=pipeline.max_iterations, tolerance=pipeline.tolerance)
        arrays[COUNT_ASSET] = clear_count(stacks.bands, stacks.sentinel)
        nodata[COUNT_ASSET] = COUNT_NODATA
        for name in EXTRA_ASSETS.get(pipeline.statistic, ()):
            arrays[name], nodata[name] = reduced[name].astype(np.float32), float("nan")
        extra = {}
        if pipeline.statistic in ITERATIVE:
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


def worker_resources(workers_on_machine: int = 1) -> tuple[int, int]:
    """(threads, memory bytes) this worker may use: its share of the CPUs and memory it can see."""
    import psutil

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpus()
    if quota:
        cpus = min(cpus, quota)
    memory = psutil.virtual_memory().total
    cg_mem = _cgroup_memory()
    if cg_mem:
        memory = min(memory, cg_mem)
    share = max(1, workers_on_machine)
    return max(1, cpus // share), memory // share


def _cgroup_cpus() -> int | None:
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        return None if quota == "max" else max(1, int(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def _cgroup_memory() -> int | None:
    try:
        value = open("/sys/fs/cgroup/memory.max").read().strip()
        return None if value == "max" else int(value)
    except (OSError, ValueError):
        return None


def process_batch(batch: Batch, pipeline: Pipeline, output: str, *, overwrite: bool = False,
                  workers_on_machine: int = 1, scheduler: str | None = None,
                  on_result: Callable[[CellResult], None] | None = None) -> list[CellResult]:
    """Every task of a batch on a Dask cluster: this worker's own LocalCluster, or `scheduler`."""
    from distributed import Client, as_completed

    from .windows import pooled_sources

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
        client = _local_client(*worker_resources(workers_on_machine))
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


# glibc's mallopt parameters, and the values a worker sets: every tile allocates and frees the same
# few-megabyte arrays (stacks, GDAL's decoded blocks, COG buffers), which glibc would otherwise hand
# back to the kernel and fault in afresh each time (up to a sixth of a worker's CPU time, in the kernel)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest
TRIM_THRESHOLD_BYTES = 256 << 20


@cache
def tune_allocator() -> bool:
    """Keep freed memory of up to 32 MB blocks in the process for reuse (glibc only; else nothing)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                    and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


@cache
def _local_client(threads: int, memory: int):
    """This process's own LocalCluster, started once and kept for its later batches."""
    import dask
    from distributed import Client, LocalCluster

    # threads, not processes: the kernels release the GIL and so do GDAL's reads. Without the
    # worker's statistical profiler unless DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED asks for it:
    # it samples every thread's stack a hundred times a second, holding the GIL the tasks need
    asked = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED" in os.environ
    profile = asked and bool(dask.config.get("distributed.worker.profile.enabled"))
    with dask.config.set({"distributed.worker.profile.enabled": profile}):
        cluster = LocalCluster(n_workers=1, threads_per_worker=threads, processes=False,
                               memory_limit=memory, dashboard_address=":0")
    return Client(cluster)
