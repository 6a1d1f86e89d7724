"""Per-pixel reducers over a period's clear observations: a registry, one signature.

A reducer takes, per band, a stack `(time, y, x)` in the source dtype in which every unclear or
missing value already equals that band's nodata sentinel, and returns per band a float64 `(y, x)`
array with NaN where no observation is clear.

The kernels are numba, compiled on first use (importing this module stays cheap) and cached on
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
from functools import cache
from typing import Callable

import numpy as np

# Row blocks per thread: a few, so that threads finishing early (a cloudy block is cheap for the
# geomedian) take another block instead of waiting.
BLOCKS_PER_THREAD = 4
# Weiszfeld: a point this close to the estimate (relative to the estimate's norm) counts as the
# estimate sitting on it, and the iteration takes Vardi and Zhang's step rather than dividing by ~0
COINCIDENT = 1e-12
# Weiszfeld: every this many iterations, test whether the data point nearest the estimate is the
# optimum (the iteration converges on such a point only sublinearly)
CHECK_EVERY = 8
# Pixels of a row a kernel copies out of the (time, y, x) stacks at once: the layers of a stack
# lie a power of two apart in memory, so reading one pixel's time series at a time would evict
# each cache line before the neighbouring pixel came to use it
SPAN = 64
# The geomedian pads each pixel's observations to a multiple of this (float64 SIMD lanes), so its
# elementwise loops run over whole vectors without a remainder or a branch
LANES = 8


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


def _sentinel(dtype: np.dtype, nodata) -> tuple[object, bool]:
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


def _is_float(dtype) -> bool:
    return np.issubdtype(dtype, np.floating)


def _band_tuple(stacks: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """The stacks as C-contiguous arrays of one dtype (numba takes a tuple of like arrays);
    bands of differing dtypes are cast to their common type (that copy is the only one)."""
    arrays = [np.ascontiguousarray(s) for s in stacks.values()]
    common = np.result_type(*arrays)
    return tuple(a if a.dtype == common else a.astype(common) for a in arrays)


def _sentinels(stacks: dict[str, np.ndarray], nodata: dict[str, float], dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per band (sentinel as float64, whether it marks anything), for the multi-band kernels."""
    pairs = [_sentinel(dtype, nodata[b]) for b in stacks]
    return (np.array([float(v) for v, _ in pairs], dtype=np.float64),
            np.array([use for _, use in pairs], dtype=np.bool_))


# --- median ----------------------------------------------------------------------------------


@cache
def sorting_network(n: int) -> np.ndarray:
    """Batcher's odd-even merge sort for n keys as (m, 2) compare-exchange pairs (i < j)."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


@cache
def _median_kernel():
    import numba

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def median_rows(stack, sentinel, use_sentinel, is_float, last, pairs, r0, r1, out, fill, rounded, low, high):
        # SPAN pixels at a time: their missing values become `last` (the dtype's largest value),
        # then one sorting network sorts every pixel's series at once, each compare-exchange a
        # SIMD min/max across the pixels. A real value equal to `last` sorts among the missing
        # ones, which is harmless: the first k keys are the k clear values in order, whatever the
        # ties. The median is numpy's: the middle one, or the mean of the two middle ones. It is
        # stored as `out` holds it (float64 with NaN, or the output dtype, rounded, with `fill`).
        t, _, nx = stack.shape
        keys = np.empty((t, SPAN), dtype=stack.dtype)
        count = np.empty(SPAN, dtype=np.int64)
        for y in range(r0, r1):
            for x0 in range(0, nx, SPAN):
                width = min(SPAN, nx - x0)
                for c in range(SPAN):
                    count[c] = 0
                for j in range(t):
                    for c in range(width):
                        v = stack[j, y, x0 + c]
                        missing = (use_sentinel and v == sentinel) or (is_float and v != v)
                        keys[j, c] = last if missing else v
                        count[c] += 0 if missing else 1
                    for c in range(width, SPAN):
                        keys[j, c] = last
                for p in range(pairs.shape[0]):
                    a = pairs[p, 0]
                    b = pairs[p, 1]
                    for c in range(SPAN):
                        lo = keys[a, c]
                        hi = keys[b, c]
                        keys[a, c] = min(lo, hi)
                        keys[b, c] = max(lo, hi)
                for c in range(width):
                    k = count[c]
                    if k == 0:
                        out[y, x0 + c] = fill
                        continue
                    if k % 2 == 1:
                        m = np.float64(keys[k // 2, c])
                    else:
                        m = (np.float64(keys[k // 2 - 1, c]) + np.float64(keys[k // 2, c])) / 2.0
                    if rounded:  # an integer output: to_output's rounding and clipping, done here
                        m = min(max(np.rint(m), low), high)
                    out[y, x0 + c] = m

    return median_rows


def median_of_stack(stack: np.ndarray, nodata, *, threads: int | None = None, out: np.ndarray | None = None,
                    out_nodata: float | None = None) -> np.ndarray:
    """numpy.nanmedian over time of the values that are not `nodata` (nor NaN): float64 (y, x) with
    NaN where none is, or, given `out`, written into it as `to_output(median, out.dtype, out_nodata)`
    would (so the float image and its conversion are never made)."""
    stack = np.ascontiguousarray(stack)
    if stack.dtype == np.bool_:
        stack = stack.view(np.uint8)
    if out is None:
        out = np.empty(stack.shape[1:], dtype=np.float64)
        out_nodata = np.nan
    fill, rounded, lo, hi = _output_rule(out.dtype, out_nodata)
    if stack.shape[0] == 0:
        out[...] = fill
        return out
    sentinel, use = _sentinel(stack.dtype, nodata)
    is_float = _is_float(stack.dtype)
    last = stack.dtype.type(np.inf) if is_float else np.iinfo(stack.dtype).max
    pairs = sorting_network(stack.shape[0])
    kernel = _median_kernel()
    run_in_row_blocks(lambda r0, r1: kernel(stack, sentinel, use, is_float, last, pairs, r0, r1, out,
                                            fill, rounded, lo, hi), stack.shape[1], threads)
    return out


def reduce_median(stacks: dict[str, np.ndarray], nodata: dict[str, float], *, threads: int | None = None,
                  out: dict[str, np.ndarray] | None = None, out_nodata: dict[str, float | None] | None = None,
                  **_) -> dict[str, np.ndarray]:
    """Per band: numpy.nanmedian over the clear values (mean of the two middle for an even count)."""
    return {band: median_of_stack(stack, nodata[band], threads=threads, out=None if out is None else out[band],
                                  out_nodata=None if out_nodata is None else out_nodata[band])
            for band, stack in stacks.items()}


# --- geomedian -------------------------------------------------------------------------------


@cache
def _chunk_helpers():
    """The gather and clear test that the geomedian and MAD kernels share."""
    import numba

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def gather(bands, y, x0, x1, chunk):
        # a span of one row, transposed to (band, pixel, time): each pixel's series contiguous
        for b in range(len(bands)):
            band = bands[b]
            for j in range(band.shape[0]):
                for x in range(x0, x1):
                    chunk[b, x - x0, j] = band[j, y, x]

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def clear_at(chunk, c, j, sentinels, use_sentinel, is_float):
        # observation j of pixel c is clear in every band
        for b in range(chunk.shape[0]):
            v = chunk[b, c, j]
            if (use_sentinel[b] and v == sentinels[b]) or (is_float and v != v):
                return False
        return True

    return gather, clear_at


@cache
def _geomedian_kernel():
    import numba
    gather, clear_at = _chunk_helpers()

    # no `reassoc`: LLVM would vectorise the sums over observations, but their rounding then varied
    # between builds of the kernel for other dtypes and between threads, and a pixel's result must
    # not depend on those; no `nnan`, so NaN tests stay exact. numpy's error model, so that a
    # division is not a branch (which stops LLVM vectorising the elementwise loops)
    fast = {"contract", "arcp", "nsz"}

    @numba.njit(nogil=True, cache=True, fastmath=fast, error_model="numpy")
    def data_point_is_optimal(pts, k, m, w):
        # Vardi and Zhang: x_m minimises the sum of distances iff the unit vectors from it to the
        # other points add up to a vector no longer than the number of points at x_m
        nb = pts.shape[0]
        for i in range(k):
            w[i] = 0.0
        for b in range(nb):
            e = pts[b, m]
            for i in range(k):
                d = pts[b, i] - e
                w[i] += d * d
        eta = 0
        for i in range(k):
            if w[i] > 0.0:
                w[i] = 1.0 / np.sqrt(w[i])
            else:
                eta += 1
        r2 = 0.0
        for b in range(nb):
            e = pts[b, m]
            s = 0.0
            for i in range(k):
                s += (pts[b, i] - e) * w[i]
            r2 += s * s
        return r2 <= eta * eta

    @numba.njit(nogil=True, cache=True, fastmath=fast, error_model="numpy")
    def weiszfeld(pts, valid, k, kp, est, d2, w, num, max_iter, tol):
        # Weiszfeld's iteration from est over the points pts[:, :k], with Vardi and Zhang's step
        # where the estimate sits on data points. Columns k..kp of pts are padding with valid 0,
        # so that the loops run over whole SIMD vectors without a branch. Returns the iterations.
        nb = pts.shape[0]
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            norm2 = 0.0
            for b in range(nb):
                norm2 += est[b] * est[b]
            near2 = COINCIDENT * COINCIDENT * max(norm2, 1.0)
            for i in range(kp):
                d2[i] = 0.0
            for b in range(nb):
                e = est[b]
                for i in range(kp):
                    d = pts[b, i] - e
                    d2[i] += d * d
            for i in range(kp):
                far = 1.0 if d2[i] > near2 else 0.0
                w[i] = valid[i] * far / np.sqrt(max(d2[i], near2))
            den = 0.0
            eta = 0.0
            for i in range(kp):
                den += w[i]
                eta += valid[i] if d2[i] <= near2 else 0.0
            if den == 0.0:  # every clear observation is where the estimate is
                break
            r2 = 0.0
            for b in range(nb):
                s = 0.0
                for i in range(kp):
                    s += pts[b, i] * w[i]
                num[b] = s / den
                rb = s - den * est[b]  # the pull of the other points: sum of w_i (x_i - y)
                r2 += rb * rb
            keep = 0.0
            if eta > 0.0:  # on eta data points: move only as far as the others' pull exceeds them
                r = np.sqrt(r2)
                keep = min(1.0, eta / r) if r > 0.0 else 1.0
            step2 = 0.0
            new2 = 0.0
            for b in range(nb):
                new = (1.0 - keep) * num[b] + keep * est[b]
                step2 += (new - est[b]) ** 2
                new2 += new * new
                est[b] = new
            if step2 <= tol * tol * max(new2, 1.0):
                break
            if n_iter % CHECK_EVERY == 0:
                closest = 0
                for i in range(1, k):
                    if d2[i] < d2[closest]:
                        closest = i
                if data_point_is_optimal(pts, k, closest, w):
                    for b in range(nb):
                        est[b] = pts[b, closest]
                    break
        return n_iter

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def geomedian_rows(bands, sentinels, use_sentinel, is_float, r0, r1, max_iter, tol, out, iters):
        # Roberts et al. (2017): over the observations clear in every band, from their mean
        nb = len(bands)
        t, _, nx = bands[0].shape
        width = LANES * max(1, (t + LANES - 1) // LANES)
        chunk = np.empty((nb, SPAN, max(t, 1)))
        pts = np.zeros((nb, width))
        valid = np.zeros(width)
        d2 = np.empty(width)
        w = np.empty(width)
        est = np.empty(nb)
        num = np.empty(nb)
        for y in range(r0, r1):
            for x0 in range(0, nx, SPAN):
                x1 = min(x0 + SPAN, nx)
                gather(bands, y, x0, x1, chunk)
                for x in range(x0, x1):
                    c = x - x0
                    k = 0
                    for j in range(t):
                        if clear_at(chunk, c, j, sentinels, use_sentinel, is_float):
                            for b in range(nb):
                                pts[b, k] = chunk[b, c, j]
                            k += 1
                    if k == 0:
                        for b in range(nb):
                            out[b, y, x] = np.nan
                        iters[y, x] = 0
                        continue
                    kp = LANES * ((k + LANES - 1) // LANES)
                    for i in range(kp):
                        valid[i] = 1.0 if i < k else 0.0
                    for b in range(nb):
                        total = 0.0
                        for i in range(k):
                            total += pts[b, i]
                        est[b] = total / k
                        for i in range(k, kp):
                            pts[b, i] = 0.0
                    n_iter = 0
                    if k == 1:  # the one clear observation, exactly
                        for b in range(nb):
                            est[b] = pts[b, 0]
                    else:
                        n_iter = weiszfeld(pts, valid, k, kp, est, d2, w, num, max_iter, tol)
                    for b in range(nb):
                        out[b, y, x] = est[b]
                    iters[y, x] = n_iter

    return geomedian_rows


def geomedian_with_iterations(stacks: dict[str, np.ndarray], nodata: dict[str, float], *,
                              max_iterations: int = 1000, tolerance: float = 1e-7,
                              threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """((band, y, x) float64 geometric median, (y, x) int32 iterations taken) over the observations
    clear in every band; NaN and 0 iterations where none is. Iterations stop once a step is at most
    `tolerance` x the estimate's norm (or x 1 if the norm is smaller), or after `max_iterations`."""
    arrays = _band_tuple(stacks)
    sentinels, use = _sentinels(stacks, nodata, arrays[0].dtype)
    t, ny, nx = arrays[0].shape
    out = np.empty((len(arrays), ny, nx), dtype=np.float64)
    iters = np.zeros((ny, nx), dtype=np.int32)
    is_float = _is_float(arrays[0].dtype)
    kernel = _geomedian_kernel()
    run_in_row_blocks(lambda r0, r1: kernel(arrays, sentinels, use, is_float, r0, r1, int(max_iterations),
                                            float(tolerance), out, iters), ny, threads)
    return out, iters


def reduce_geomedian(stacks: dict[str, np.ndarray], nodata: dict[str, float], *, max_iterations: int = 1000,
                     tolerance: float = 1e-7, threads: int | None = None, out: dict[str, np.ndarray] | None = None,
                     out_nodata: dict[str, float | None] | None = None, **_) -> dict[str, np.ndarray]:
    """Multi-band geometric median over observations clear in every band (Weiszfeld)."""
    values, _ = geomedian_with_iterations(stacks, nodata, max_iterations=max_iterations, tolerance=tolerance,
                                          threads=threads)
    if out is None:
        return {b: values[i] for i, b in enumerate(stacks)}
    return {b: to_output(values[i], out[b].dtype, (out_nodata or {}).get(b), out=out[b]) for i, b in enumerate(stacks)}


# --- median absolute deviations from the geomedian -------------------------------------------


MADS = ("smad", "emad", "bcmad")


@cache
def _mads_kernel():
    import numba
    gather, clear_at = _chunk_helpers()

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def _median(buf, k):
        for i in range(1, k):  # insertion sort: k is a period's count of clear observations
            v = buf[i]
            j = i
            while j > 0 and buf[j - 1] > v:
                buf[j] = buf[j - 1]
                j -= 1
            buf[j] = v
        if k % 2 == 1:
            return buf[k // 2]
        return (buf[k // 2 - 1] + buf[k // 2]) / 2.0

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def mads_rows(bands, sentinels, use_sentinel, is_float, gm, r0, r1, out):
        nb = len(bands)
        t, _, nx = bands[0].shape
        chunk = np.empty((nb, SPAN, max(t, 1)))
        spectral = np.empty(max(t, 1))
        euclid = np.empty(max(t, 1))
        bray = np.empty(max(t, 1))
        for y in range(r0, r1):
            for x0 in range(0, nx, SPAN):
                x1 = min(x0 + SPAN, nx)
                gather(bands, y, x0, x1, chunk)
                for x in range(x0, x1):
                    c = x - x0
                    gnorm2 = 0.0
                    for b in range(nb):
                        gnorm2 += gm[b, y, x] * gm[b, y, x]
                    k = 0
                    for j in range(t):
                        if not clear_at(chunk, c, j, sentinels, use_sentinel, is_float):
                            continue
                        dot = 0.0
                        norm2 = 0.0
                        d2 = 0.0
                        diff = 0.0
                        total = 0.0
                        for b in range(nb):
                            v = chunk[b, c, j]
                            g = gm[b, y, x]
                            dot += v * g
                            norm2 += v * v
                            d2 += (v - g) ** 2
                            diff += abs(v - g)
                            total += abs(v + g)
                        denom = np.sqrt(norm2 * gnorm2)
                        spectral[k] = 1.0 - dot / denom if denom > 0.0 else 0.0
                        euclid[k] = np.sqrt(d2)
                        bray[k] = diff / total if total > 0.0 else 0.0
                        k += 1
                    if k == 0 or gnorm2 != gnorm2:
                        out[0, y, x] = np.nan
                        out[1, y, x] = np.nan
                        out[2, y, x] = np.nan
                        continue
                    out[0, y, x] = _median(spectral, k)
                    out[1, y, x] = _median(euclid, k)
                    out[2, y, x] = _median(bray, k)

    return mads_rows


def geomedian_mads(stacks: dict[str, np.ndarray], nodata: dict[str, float], geomedian: dict[str, np.ndarray], *,
                   threads: int | None = None) -> dict[str, np.ndarray]:
    """The median absolute deviations from the geomedian (odc-stats' `smad`, `emad`, `bcmad`): per pixel,
    float64, NaN where no observation is clear in every band, the median over those observations of
    the spectral (cosine) distance 1 - x.g / (|x| |g|), the Euclidean distance |x - g| (in the data's
    units, not rescaled to reflectance) and the Bray-Curtis dissimilarity sum|x - g| / sum|x + g|."""
    arrays = _band_tuple(stacks)
    sentinels, use = _sentinels(stacks, nodata, arrays[0].dtype)
    gm = np.ascontiguousarray(np.stack([np.asarray(geomedian[b], dtype=np.float64) for b in stacks]))
    t, ny, nx = arrays[0].shape
    out = np.empty((len(MADS), ny, nx), dtype=np.float64)
    is_float = _is_float(arrays[0].dtype)
    kernel = _mads_kernel()
    run_in_row_blocks(lambda r0, r1: kernel(arrays, sentinels, use, is_float, gm, r0, r1, out), ny, threads)
    return {name: out[i] for i, name in enumerate(MADS)}


# --- registry and outputs --------------------------------------------------------------------


# A reducer: (stacks, sentinels, *, threads=None, out=None, out_nodata=None, **options) -> per band
# (y, x): float64 with NaN where no observation is clear, or, given `out` (per band an array of
# the output dtype), the results written into it as to_output would convert them; plus, for the
# statistics in EXTRA_ASSETS, those further float64 layers.
Reducer = Callable[..., dict[str, np.ndarray]]

def reduce_geomad(stacks: dict[str, np.ndarray], nodata: dict[str, float], *, max_iterations: int = 1000,
                  tolerance: float = 1e-7, threads: int | None = None, out: dict[str, np.ndarray] | None = None,
                  out_nodata: dict[str, float | None] | None = None, **_) -> dict[str, np.ndarray]:
    """The geometric median per band, as reduce_geomedian, and the median absolute deviations from
    it (`smad`, `emad`, `bcmad`: float64, NaN where no observation is clear), taken from the
    unrounded geomedian, as odc-stats' geomad gives them."""
    values, _ = geomedian_with_iterations(stacks, nodata, max_iterations=max_iterations, tolerance=tolerance,
                                          threads=threads)
    geomedian = {b: values[i] for i, b in enumerate(stacks)}
    result = dict(geomedian) if out is None else {
        b: to_output(values[i], out[b].dtype, (out_nodata or {}).get(b), out=out[b]) for i, b in enumerate(stacks)}
    result.update(geomedian_mads(stacks, nodata, geomedian, threads=threads))
    return result


STATISTICS: dict[str, Reducer] = {
    "median": reduce_median,
    "geomedian": reduce_geomedian,
    "geomad": reduce_geomad,
}
# what a statistic adds to the bands it reduces: float assets, NaN where no observation is clear
EXTRA_ASSETS: dict[str, tuple[str, ...]] = {"geomad": MADS}
ITERATIVE = ("geomedian", "geomad")  # statistics with a tolerance and an iteration cap


def warm_kernels(statistic: str, n_bands: int = 1) -> threading.Thread:
    """Load the kernels a task of `n_bands` uint16 bands uses (from numba's cache, or compile them)
    on a background thread: about half a second a worker process otherwise spends in its first
    tile's reduction, which this overlaps with the first tiles' reads. Returns the (daemon) thread."""
    def warm() -> None:
        names = [f"b{i}" for i in range(max(1, n_bands))]
        tiny = {b: np.zeros((2, 1, 1), dtype=np.uint16) for b in names}
        zeros = {b: 0 for b in names}
        out = {b: np.empty((1, 1), dtype=np.uint16) for b in names}
        STATISTICS[statistic](tiny, zeros, threads=1, out=out, out_nodata=zeros)
        clear_count(tiny, zeros, threads=1)

    thread = threading.Thread(target=warm, name="gridded-warm-kernels", daemon=True)
    thread.start()
    return thread


@cache
def _count_kernel():
    import numba

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def count_rows(bands, sentinels, use_sentinel, is_float, r0, r1, out):
        nb = len(bands)
        t, _, nx = bands[0].shape
        for y in range(r0, r1):
            for x in range(nx):
                out[y, x] = 0
            for j in range(t):
                for x in range(nx):
                    clear = True
                    for b in range(nb):
                        v = bands[b][j, y, x]
                        if (use_sentinel[b] and v == sentinels[b]) or (is_float and v != v):
                            clear = False
                    if clear:
                        out[y, x] += 1

    return count_rows


def clear_count(stacks: dict[str, np.ndarray], nodata: dict[str, float], *, threads: int | None = None) -> np.ndarray:
    """Number of observations clear in every band, as uint16."""
    arrays = _band_tuple(stacks)
    sentinels, use = _sentinels(stacks, nodata, arrays[0].dtype)
    if arrays[0].dtype == np.bool_:
        arrays = tuple(a.view(np.uint8) for a in arrays)
    out = np.empty(arrays[0].shape[1:], dtype=np.uint16)
    kernel = _count_kernel()
    is_float = _is_float(arrays[0].dtype)
    run_in_row_blocks(lambda r0, r1: kernel(arrays, sentinels, use, is_float, r0, r1, out), out.shape[0], threads)
    return out


def _output_rule(dtype: np.dtype, nodata: float | None) -> tuple[float, bool, float, float]:
    """How a float result is stored as `dtype`: (the value where there is none, whether it is
    rounded half to even, and the range it is clipped to)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(nodata if nodata is not None else 0), True, float(info.min), float(info.max)
    return (np.nan if nodata is None else float(nodata)), False, -np.inf, np.inf


def to_output(values: np.ndarray, dtype: np.dtype, nodata: float | None, *, out: np.ndarray | None = None) -> np.ndarray:
    """Float results -> the output dtype: rounded half to even (numpy.rint), nodata where NaN."""
    dtype = np.dtype(dtype)
    missing = np.isnan(values)
    fill, rounded, lo, hi = _output_rule(dtype, nodata)
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
