"""What every reducer's kernels share: row blocks of a tile on threads, the stacks as numba takes
them with their nodata sentinels, and how float results become the output dtype.

The kernels are numba, compiled on first use (importing these modules stays cheap) and cached on
disk. They read the stacks as loaded, skipping the sentinel, so there is no float copy of a stack
with NaN, and each sorts or iterates over the few clear values of one pixel at a time in small
buffers. A kernel is serial and `nogil` over a block of rows; a reducer runs the row blocks on
several threads (the calling thread and helpers from one pool per process). Numba's own
`parallel=True` is not used on purpose: its default threading layer (workqueue) aborts the process
when parallel functions are entered from several threads at once, which is what Dask's worker
threads do when they reduce several tiles together.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

# Row blocks per thread: a few, so that threads finishing early (a cloudy block is cheap for the
# geomedian) take another block instead of waiting.
BLOCKS_PER_THREAD = 4
# Pixels of a row a kernel copies out of the (time, y, x) stacks at once: the layers of a stack
# lie a power of two apart in memory, so reading one pixel's time series at a time would evict
# each cache line before the neighbouring pixel came to use it. The kernels compile it in as a
# constant, and numba's cache looks only at the kernel's own file: after changing it, delete the
# package's __pycache__/*.nbi files
SPAN = 64


def kernel_threads() -> int:
    """Threads a reducer uses by default: the CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


_pool_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None


def _helper_pool() -> ThreadPoolExecutor:
    """The process's pool of helper threads (made anew in a forked child, whose copy has no threads)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(max_workers=kernel_threads(), thread_name_prefix="gridded-kernel"))
        return _pool[1]


def run_in_row_blocks(work: Callable[[int, int], None], ny: int, threads: int | None = None) -> None:
    """Call `work(r0, r1)` over row blocks covering `range(ny)`, on up to `threads` threads.

    The calling thread takes blocks too, so a reducer makes progress even when the helper pool is
    busy with other callers' blocks (several Dask threads reducing at once share the pool)."""
    threads = kernel_threads() if threads is None else max(1, int(threads))
    size = max(1, -(-ny // (threads * BLOCKS_PER_THREAD)))
    blocks = [(r, min(r + size, ny)) for r in range(0, ny, size)]
    if threads == 1 or len(blocks) <= 1:
        for r0, r1 in blocks:
            work(r0, r1)
        return
    todo = iter(blocks)
    lock = threading.Lock()
    failed = threading.Event()

    def drain() -> None:
        while not failed.is_set():
            with lock:
                block = next(todo, None)
            if block is None:
                return
            try:
                work(*block)
            except BaseException:
                failed.set()
                raise

    pool = _helper_pool()
    helpers = [pool.submit(drain) for _ in range(min(threads, len(blocks)) - 1)]
    try:
        drain()
    finally:
        errors = [h.exception() for h in helpers]  # waits for every helper
    for err in errors:
        if err is not None:
            raise err


def sentinel_for(dtype: np.dtype, nodata) -> tuple[object, bool]:
    """(the sentinel as `dtype` holds it, whether a value can equal it): a NaN, absent or
    unrepresentable sentinel marks nothing (NaN in a float stack is always missing)."""
    dtype = np.dtype(dtype)
    if nodata is None or (isinstance(nodata, (float, np.floating)) and np.isnan(nodata)):
        return dtype.type(0), False
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if float(nodata) != int(nodata) or not info.min <= int(nodata) <= info.max:
            return dtype.type(0), False
        return dtype.type(int(nodata)), True
    if np.issubdtype(dtype, np.floating):
        return dtype.type(nodata), True
    return dtype.type(nodata), True


def is_float_dtype(dtype) -> bool:
    return np.issubdtype(dtype, np.floating)


def band_tuple(stacks: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """The stacks as C-contiguous arrays of one dtype (numba takes a tuple of like arrays);
    bands of differing dtypes are cast to their common type (that copy is the only one)."""
    arrays = [np.ascontiguousarray(s) for s in stacks.values()]
    common = np.result_type(*arrays)
    return tuple(a if a.dtype == common else a.astype(common) for a in arrays)


def sentinels_for(stacks: dict[str, np.ndarray], nodata: dict[str, float], dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per band (sentinel as float64, whether it marks anything), for the multi-band kernels."""
    pairs = [sentinel_for(dtype, nodata[b]) for b in stacks]
    return (np.array([float(v) for v, _ in pairs], dtype=np.float64),
            np.array([use for _, use in pairs], dtype=np.bool_))


def output_rule(dtype: np.dtype, nodata: float | None) -> tuple[float, bool, float, float]:
    """How a float result is stored as `dtype`: (the value where there is none, whether it is
    rounded half to even, and the range it is clipped to)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        # the range as floats that convert back exactly: float(2**63 - 1) is 2**63, out of int64
        high = float(info.max)
        if high > info.max:
            high = float(np.nextafter(high, 0.0))
        return float(nodata if nodata is not None else 0), True, float(info.min), high
    return (np.nan if nodata is None else float(nodata)), False, -np.inf, np.inf


def to_output(values: np.ndarray, dtype: np.dtype, nodata: float | None, *, out: np.ndarray | None = None) -> np.ndarray:
    """Float results -> the output dtype: rounded half to even (numpy.rint), nodata where NaN."""
    dtype = np.dtype(dtype)
    missing = np.isnan(values)
    fill, rounded, lo, hi = output_rule(dtype, nodata)
    if rounded:
        converted = np.clip(np.rint(np.where(missing, 0, values)), lo, hi)
    else:
        converted = values
    if out is None:
        out = np.empty(values.shape, dtype=dtype)
    np.copyto(out, converted, casting="unsafe")
    if nodata is not None or rounded:
        out[missing] = fill
    return out
