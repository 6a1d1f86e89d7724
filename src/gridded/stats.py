"""Per-pixel reducers over a period's clear observations: a registry, one signature; the median
and the clear-observation count (the geometric median is in geomedian.py, what the kernels share
in kernels.py).

A reducer takes, per band, a stack `(time, y, x)` in the source dtype in which every unclear or
missing value already equals that band's nodata sentinel, and returns per band a float64 `(y, x)`
array with NaN where no observation is clear (or writes the output dtype into `out`).
"""

from __future__ import annotations

import threading
from functools import cache
from typing import Callable

import numpy as np

from .errors import ConfigError
from .geomedian import MADS, reduce_geomad, reduce_geomedian
from .kernels import SPAN, band_tuple, is_float_dtype, output_rule, run_in_row_blocks, sentinel_for, sentinels_for

# --- median ----------------------------------------------------------------------------------

MAX_OBSERVATIONS = 65_535  # per pixel and period: the median kernel counts them in uint16


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

    # One function, no helpers: a kernel that calls other numba functions through its closure is
    # never found in numba's cache (the closure pickles differently in every process).
    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def median_rows(stack, sentinel, use_sentinel, unsigned, last, pairs, r0, r1, out, fill, rounded, low, high):
        # SPAN pixels at a time. Their missing values become `last` (the dtype's largest value),
        # then one sorting network sorts every pixel's series at once, each compare-exchange a
        # SIMD min/max across the pixels. A real value equal to `last` sorts among the missing
        # ones, which is harmless: the first k keys are the k clear values in order, whatever the
        # ties. The median is numpy's: the middle key, or the mean of the two middle ones, stored
        # as `out` holds it (float64 with NaN, or the output dtype, rounded and clipped as
        # to_output would, with `fill`). Rows are taken as slices, so that LLVM sees unit strides
        # and non-negative indices, and every test is bitwise: the loops vectorise.
        t, _, nx = stack.shape
        keys = np.empty((t, SPAN), dtype=stack.dtype)
        count = np.empty(SPAN, dtype=np.uint16)  # observations per period: at most 65,535
        lower = np.empty(SPAN, dtype=stack.dtype)
        upper = np.empty(SPAN, dtype=stack.dtype)
        rank_lo = np.empty(SPAN, dtype=np.uint16)
        rank_hi = np.empty(SPAN, dtype=np.uint16)
        for y in range(r0, r1):
            for x0 in range(0, nx, SPAN):
                width = min(SPAN, nx - x0)
                count[:] = 0
                for j in range(t):
                    values = stack[j, y, x0:x0 + width]
                    row = keys[j]
                    for c in range(width):
                        v = values[c]
                        clear = ((not use_sentinel) | (v != sentinel)) & (v == v)
                        row[c] = v if clear else last
                        count[c] += clear
                    for c in range(width, SPAN):
                        row[c] = last
                for p in range(pairs.shape[0]):
                    a = keys[pairs[p, 0]]
                    b = keys[pairs[p, 1]]
                    for c in range(SPAN):
                        lo = a[c]
                        hi = b[c]
                        a[c] = min(lo, hi)
                        b[c] = max(lo, hi)
                # the keys of ranks (k - 1) // 2 and k // 2 (one and the same for an odd k)
                for c in range(SPAN):
                    k = count[c]
                    rank_lo[c] = (k - (k > 0)) >> 1
                    rank_hi[c] = k >> 1
                    lower[c] = keys[0, c]
                    upper[c] = keys[0, c]
                if unsigned:
                    # in a sorted column of unsigned keys the key of rank r is the largest of those
                    # of rank <= r: a running max over the keys zeroed above the rank (no gather)
                    for j in range(1, t):
                        row = keys[j]
                        rank = np.uint16(j)
                        for c in range(SPAN):
                            v = row[c]
                            lower[c] = max(lower[c], v * lower.dtype.type(rank <= rank_lo[c]))
                            upper[c] = max(upper[c], v * upper.dtype.type(rank <= rank_hi[c]))
                else:
                    for c in range(SPAN):
                        lower[c] = keys[rank_lo[c], c]
                        upper[c] = keys[rank_hi[c], c]
                target = out[y, x0:x0 + width]
                for c in range(width):
                    m = (np.float64(lower[c]) + np.float64(upper[c])) / 2.0
                    if rounded:  # an integer output: to_output's rounding and clipping, done here
                        m = min(max(np.rint(m), low), high)
                    # NaN only from +inf and -inf together: no value, as to_output has it
                    target[c] = m if (count[c] > 0) & (m == m) else fill

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
    fill, rounded, lo, hi = output_rule(out.dtype, out_nodata)
    if stack.shape[0] == 0:
        out[...] = fill
        return out
    if stack.shape[0] > MAX_OBSERVATIONS:
        raise ConfigError(f"{stack.shape[0]} observations of one pixel in one period, more than the median's "
                          f"{MAX_OBSERVATIONS}; use a shorter --period")
    sentinel, use = sentinel_for(stack.dtype, nodata)
    last = stack.dtype.type(np.inf) if is_float_dtype(stack.dtype) else np.iinfo(stack.dtype).max
    pairs = sorting_network(stack.shape[0])
    kernel = _median_kernel()
    unsigned = np.issubdtype(stack.dtype, np.unsignedinteger)
    run_in_row_blocks(lambda r0, r1: kernel(stack, sentinel, use, unsigned, last, pairs, r0, r1, out,
                                            fill, rounded, lo, hi), stack.shape[1], threads)
    return out


def reduce_median(stacks: dict[str, np.ndarray], nodata: dict[str, float], *, threads: int | None = None,
                  out: dict[str, np.ndarray] | None = None, out_nodata: dict[str, float | None] | None = None,
                  **_) -> dict[str, np.ndarray]:
    """Per band: numpy.nanmedian over the clear values (mean of the two middle for an even count)."""
    return {band: median_of_stack(stack, nodata[band], threads=threads, out=None if out is None else out[band],
                                  out_nodata=None if out_nodata is None else out_nodata[band])
            for band, stack in stacks.items()}


# --- registry and outputs --------------------------------------------------------------------


# A reducer: (stacks, sentinels, *, threads=None, out=None, out_nodata=None, **options) -> per band
# (y, x): float64 with NaN where no observation is clear, or, given `out` (per band an array of
# the output dtype), the results written into it as to_output would convert them; plus, for the
# statistics in EXTRA_ASSETS, those further float64 layers.
Reducer = Callable[..., dict[str, np.ndarray]]

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
    def count_rows(bands, sentinels, use_sentinel, r0, r1, out):
        # per row: for each observation, "clear in every band" built band by band over the whole
        # row (bitwise, so each pass is a straight SIMD loop), then added to the row's counts
        t, _, nx = bands[0].shape
        clear = np.empty(nx, dtype=np.bool_)
        for y in range(r0, r1):
            for x in range(nx):
                out[y, x] = 0
            for j in range(t):
                for x in range(nx):
                    clear[x] = True
                for b in range(len(bands)):
                    row = bands[b][j, y]
                    s = row.dtype.type(sentinels[b])
                    ignore = not use_sentinel[b]
                    for x in range(nx):
                        v = row[x]
                        clear[x] &= (ignore | (v != s)) & (v == v)
                for x in range(nx):
                    out[y, x] += clear[x]

    return count_rows


def clear_count(stacks: dict[str, np.ndarray], nodata: dict[str, float], *, threads: int | None = None) -> np.ndarray:
    """Number of observations clear in every band, as uint16."""
    arrays = band_tuple(stacks)
    sentinels, use = sentinels_for(stacks, nodata, arrays[0].dtype)
    if arrays[0].dtype == np.bool_:
        arrays = tuple(a.view(np.uint8) for a in arrays)
    out = np.empty(arrays[0].shape[1:], dtype=np.uint16)
    kernel = _count_kernel()
    run_in_row_blocks(lambda r0, r1: kernel(arrays, sentinels, use, r0, r1, out), out.shape[0], threads)
    return out
