"""Row blocks of a tile on threads: how every reducer runs its kernel.

The kernels (compute/_jit.py) are numba, compiled on first use and cached on disk. They read the
stacks as loaded, skipping the sentinel, so there is no float copy of a stack with NaN, and each
sorts or iterates over the few clear values of one pixel at a time in small buffers. A kernel is
serial and `nogil` over a block of rows; a reducer runs the row blocks on several threads (the
calling thread and helpers from one pool per process). Numba's own `parallel=True` is not used on
purpose: its default threading layer (workqueue) aborts the process when parallel functions are
entered from several threads at once, which is what Dask's worker threads do when they reduce
several tiles together.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..cluster import available_cpus

# Row blocks per thread: a few, so that threads finishing early (a cloudy block is cheap for the
# geomedian) take another block instead of waiting.
BLOCKS_PER_THREAD = 4

_pool_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None


def _helper_pool() -> ThreadPoolExecutor:
    """The process's pool of helper threads (made anew in a forked child, whose copy has no threads)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(max_workers=available_cpus(), thread_name_prefix="gridded-kernel"))
        return _pool[1]


def run_in_row_blocks(work: Callable[[int, int], None], ny: int, threads: int | None = None) -> None:
    """Call `work(r0, r1)` over row blocks covering `range(ny)`, on up to `threads` threads.

    The calling thread takes blocks too, so a reducer makes progress even when the helper pool is
    busy with other callers' blocks (several Dask threads reducing at once share the pool)."""
    threads = available_cpus() if threads is None else max(1, int(threads))
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
