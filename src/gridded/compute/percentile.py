"""Per-pixel percentiles of the clear observations: numpy.nanpercentile ("linear" or "nearest"),
with numpy's own arithmetic, so that results agree to the bit and so after rounding. Every
percentile asked for comes from one sort of each pixel's series (the median's sorting network)."""

from __future__ import annotations

from decimal import Decimal

import numpy as np

from ..errors import ConfigError
from .arrays import is_float_dtype, output_rule, sentinel_for
from .blocks import run_in_row_blocks
from .median import MAX_OBSERVATIONS, sorting_network

METHODS = ("linear", "nearest")


def percentile_name(q: float) -> str:
    """The statistic's name of percentile `q`: p90, p2.5, p0, p100 (no exponent, no trailing zeros)."""
    return "p" + format(Decimal(repr(float(q))).normalize(), "f")


def _check(qs: tuple[float, ...], method: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"percentile method {method!r}: unknown; use one of {', '.join(METHODS)}")
    for q in qs:
        if not 0 <= q <= 100:
            raise ConfigError(f"percentile {q:g}: outside 0-100; use 0 to 100, e.g. 90")


def percentiles_of_stack(stack: np.ndarray, nodata, qs: tuple[float, ...], *, method: str = "linear",
                         threads: int | None = None, out: np.ndarray | None = None,
                         out_nodata: float | None = None) -> np.ndarray:
    """numpy.nanpercentile(values, q, method=method) over time of the values that are not `nodata`
    (nor NaN), for every q of `qs` from one sort: (len(qs), y, x) float64 with NaN where none is
    clear, or, given `out` of that shape, written into it as `to_output(result, out.dtype,
    out_nodata)` would. As numpy, "linear" gives NaN where an infinity is interpolated."""
    qs = tuple(float(q) for q in qs)
    _check(qs, method)
    stack = np.ascontiguousarray(stack)
    if stack.dtype == np.bool_:
        stack = stack.view(np.uint8)
    t, ny, nx = stack.shape
    if out is None:
        out = np.empty((len(qs), ny, nx), dtype=np.float64)
        out_nodata = np.nan
    if out.shape != (len(qs), ny, nx):
        raise ValueError(f"out has shape {out.shape}, not (percentiles, y, x) = {(len(qs), ny, nx)}")
    fill, rounded, lo, hi = output_rule(out.dtype, out_nodata)
    if t == 0:
        out[...] = fill
        return out
    if t > MAX_OBSERVATIONS:
        raise ConfigError(f"{t} observations of one pixel in one period, more than the percentiles' "
                          f"{MAX_OBSERVATIONS}; use a shorter --period")
    sentinel, use = sentinel_for(stack.dtype, nodata)
    last = stack.dtype.type(np.inf) if is_float_dtype(stack.dtype) else np.iinfo(stack.dtype).max
    pairs = sorting_network(t)
    fractions = np.array([q / 100 for q in qs], dtype=np.float64)  # as numpy.nanpercentile divides
    nearest = method == "nearest"
    from ._jit import percentile_rows as kernel

    unsigned = np.issubdtype(stack.dtype, np.unsignedinteger)
    run_in_row_blocks(lambda r0, r1: kernel(stack, sentinel, use, unsigned, last, pairs, fractions, nearest, r0, r1,
                                            out, fill, rounded, lo, hi), ny, threads)
    return out


def reduce_percentiles(stacks: dict[str, np.ndarray], nodata: dict[str, float | None], *, qs: tuple[float, ...],
                       method: str = "linear", threads: int | None = None,
                       out: dict[str, dict[str, np.ndarray]] | None = None,
                       out_nodata: dict[str, float | None] | None = None,
                       names: tuple[str, ...] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{name: {band: result}} for every q of `qs`, each band sorted once for all of them, a q's
    name percentile_name(q) or its entry of `names`; `out` (optional) as {name: {band: array of
    the output dtype}}."""
    names = tuple(percentile_name(q) for q in qs) if names is None else names
    if len(names) != len(qs):
        raise ValueError(f"percentiles {qs} named {names}: one name per percentile")
    results: dict[str, dict[str, np.ndarray]] = {name: {} for name in names}
    for band, stack in stacks.items():
        if out is None:
            layers = percentiles_of_stack(stack, nodata[band], qs, method=method, threads=threads)
        else:
            dtypes = {out[name][band].dtype for name in names}
            if len(dtypes) > 1:
                raise ValueError(f"band {band}: the percentiles' outputs differ in dtype ({sorted(map(str, dtypes))})")
            layers = np.empty((len(qs), *stack.shape[1:]), dtype=dtypes.pop())
            percentiles_of_stack(stack, nodata[band], qs, method=method, threads=threads, out=layers,
                                 out_nodata=None if out_nodata is None else out_nodata[band])
        for i, name in enumerate(names):
            if out is None:
                results[name][band] = layers[i]
            else:
                np.copyto(out[name][band], layers[i], casting="unsafe")
                results[name][band] = out[name][band]
    return results


def reduce_percentile(stacks: dict[str, np.ndarray], nodata: dict[str, float | None], *, q: float,
                      method: str = "linear", threads: int | None = None, out: dict[str, np.ndarray] | None = None,
                      out_nodata: dict[str, float | None] | None = None, **_) -> dict[str, np.ndarray]:
    """Per band: numpy.nanpercentile(values, q, method=method) over the clear values."""
    result = {}
    for band, stack in stacks.items():
        target = None if out is None else out[band][None]
        layers = percentiles_of_stack(stack, nodata[band], (q,), method=method, threads=threads, out=target,
                                      out_nodata=None if out_nodata is None else out_nodata[band])
        result[band] = layers[0] if out is None else out[band]
    return result
