"""Per band, the mean, minimum, maximum and standard deviation of the clear observations: numpy's
nanmean, nanmin, nanmax and nanstd (ddof 0), read from the stack as loaded (no float copy) in one
pass over it (two for the deviation, over each row while it is in cache), written straight into
the output dtype."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .arrays import is_float_dtype, output_rule, sentinel_for
from .blocks import run_in_row_blocks


def _run(kernel: Callable, stack: np.ndarray, nodata, threads: int | None, out: np.ndarray | None,
         out_nodata: float | None, *args) -> np.ndarray:
    """Run `kernel(stack, sentinel, use_sentinel, *args, r0, r1, out, fill, rounded, low, high)` over
    row blocks into `out` (a new float64 array with NaN where none is clear if not given)."""
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
    sentinel, use = sentinel_for(stack.dtype, nodata)
    run_in_row_blocks(lambda r0, r1: kernel(stack, sentinel, use, *args, r0, r1, out, fill, rounded, lo, hi),
                      stack.shape[1], threads)
    return out


def mean_of_stack(stack: np.ndarray, nodata, *, threads: int | None = None, out: np.ndarray | None = None,
                  out_nodata: float | None = None) -> np.ndarray:
    """numpy.nanmean over time of the values that are not `nodata` (nor NaN): float64 (y, x) with NaN
    where none is, or, given `out`, written into it as `to_output(mean, out.dtype, out_nodata)` would."""
    from ._jit import mean_rows

    return _run(mean_rows, stack, nodata, threads, out, out_nodata)


def std_of_stack(stack: np.ndarray, nodata, *, threads: int | None = None, out: np.ndarray | None = None,
                 out_nodata: float | None = None) -> np.ndarray:
    """numpy.nanstd (population, ddof 0) over time of the clear values, as mean_of_stack gives the mean."""
    from ._jit import std_rows

    return _run(std_rows, stack, nodata, threads, out, out_nodata)


def extreme_of_stack(stack: np.ndarray, nodata, *, largest: bool, threads: int | None = None,
                     out: np.ndarray | None = None, out_nodata: float | None = None) -> np.ndarray:
    """numpy.nanmin (numpy.nanmax with `largest`) over time of the clear values, as mean_of_stack gives
    the mean; exact, as the comparisons run in the stack's dtype."""
    from ._jit import extreme_rows

    stack = np.ascontiguousarray(stack)
    if stack.dtype == np.bool_:
        stack = stack.view(np.uint8)
    if is_float_dtype(stack.dtype):
        start = stack.dtype.type(-np.inf if largest else np.inf)
    else:
        info = np.iinfo(stack.dtype)
        start = stack.dtype.type(info.min if largest else info.max)
    return _run(extreme_rows, stack, nodata, threads, out, out_nodata, bool(largest), start)


def _per_band(of_stack: Callable, stacks: dict[str, np.ndarray], nodata: dict[str, float | None], threads: int | None,
              out: dict[str, np.ndarray] | None, out_nodata: dict[str, float | None] | None,
              **options) -> dict[str, np.ndarray]:
    return {band: of_stack(stack, nodata[band], threads=threads, out=None if out is None else out[band],
                           out_nodata=None if out_nodata is None else out_nodata[band], **options)
            for band, stack in stacks.items()}


def reduce_mean(stacks: dict[str, np.ndarray], nodata: dict[str, float | None], *, threads: int | None = None,
                out: dict[str, np.ndarray] | None = None, out_nodata: dict[str, float | None] | None = None,
                **_) -> dict[str, np.ndarray]:
    """Per band: numpy.nanmean over the clear values."""
    return _per_band(mean_of_stack, stacks, nodata, threads, out, out_nodata)


def reduce_min(stacks: dict[str, np.ndarray], nodata: dict[str, float | None], *, threads: int | None = None,
               out: dict[str, np.ndarray] | None = None, out_nodata: dict[str, float | None] | None = None,
               **_) -> dict[str, np.ndarray]:
    """Per band: numpy.nanmin over the clear values."""
    return _per_band(extreme_of_stack, stacks, nodata, threads, out, out_nodata, largest=False)


def reduce_max(stacks: dict[str, np.ndarray], nodata: dict[str, float | None], *, threads: int | None = None,
               out: dict[str, np.ndarray] | None = None, out_nodata: dict[str, float | None] | None = None,
               **_) -> dict[str, np.ndarray]:
    """Per band: numpy.nanmax over the clear values."""
    return _per_band(extreme_of_stack, stacks, nodata, threads, out, out_nodata, largest=True)


def reduce_std(stacks: dict[str, np.ndarray], nodata: dict[str, float | None], *, threads: int | None = None,
               out: dict[str, np.ndarray] | None = None, out_nodata: dict[str, float | None] | None = None,
               **_) -> dict[str, np.ndarray]:
    """Per band: numpy.nanstd (population, ddof 0) over the clear values."""
    return _per_band(std_of_stack, stacks, nodata, threads, out, out_nodata)
