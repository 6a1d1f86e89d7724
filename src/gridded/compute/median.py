"""The per-pixel median over a period's clear observations: numpy.nanmedian, rounded as the
output dtype holds it, in one sorting network per span of pixels."""

from __future__ import annotations

from functools import cache

import numpy as np

from ..errors import ConfigError
from .arrays import is_float_dtype, output_rule, sentinel_for
from .blocks import run_in_row_blocks

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
    from ._jit import median_rows as kernel

    unsigned = np.issubdtype(stack.dtype, np.unsignedinteger)
    run_in_row_blocks(lambda r0, r1: kernel(stack, sentinel, use, unsigned, last, pairs, r0, r1, out,
                                            fill, rounded, lo, hi), stack.shape[1], threads)
    return out


def reduce_median(stacks: dict[str, np.ndarray], nodata: dict[str, float | None], *, threads: int | None = None,
                  out: dict[str, np.ndarray] | None = None, out_nodata: dict[str, float | None] | None = None,
                  **_) -> dict[str, np.ndarray]:
    """Per band: numpy.nanmedian over the clear values (mean of the two middle for an even count)."""
    return {band: median_of_stack(stack, nodata[band], threads=threads, out=None if out is None else out[band],
                                  out_nodata=None if out_nodata is None else out_nodata[band])
            for band, stack in stacks.items()}
