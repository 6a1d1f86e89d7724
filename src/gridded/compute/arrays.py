"""The stacks as the kernels take them, with their nodata sentinels, and how float results become
the output dtype."""

from __future__ import annotations

import numpy as np


def sentinel_for(dtype: np.dtype, nodata) -> tuple[np.generic, bool]:
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


def sentinels_for(stacks: dict[str, np.ndarray], nodata: dict[str, float | None],
                  dtype) -> tuple[np.ndarray, np.ndarray]:
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


def to_output(values: np.ndarray, dtype: np.dtype, nodata: float | None, *,
              out: np.ndarray | None = None) -> np.ndarray:
    """Float results -> the output dtype: rounded half to even (numpy.rint), nodata where NaN."""
    dtype = np.dtype(dtype)
    missing = np.isnan(values)
    fill, rounded, lo, hi = output_rule(dtype, nodata)
    converted = np.clip(np.rint(np.where(missing, 0, values)), lo, hi) if rounded else values
    if out is None:
        out = np.empty(values.shape, dtype=dtype)
    np.copyto(out, converted, casting="unsafe")
    if nodata is not None or rounded:
        out[missing] = fill
    return out


def as_dtype(value, dtype):
    """`value` as `dtype` holds it (wrapped or truncated as numpy casts)."""
    return np.array(value).astype(dtype)


def reencode(values: np.ndarray, nodata, source: tuple[float, float], target: tuple[float, float]) -> np.ndarray:
    """Values stored as `source` (scale, offset) re-stored as `target`, in place: the same physical
    value, rounded half to even and clipped to the dtype for integers. Nodata stays nodata, and a
    value that would land on nodata or past its side of the range takes the nearest other value
    (Sentinel-2's DN 500 stored without the offset becomes 1, not the nodata 0)."""
    (s1, o1), (s2, o2) = source, target
    valid = np.ones(values.shape, dtype=bool) if nodata is None or np.isnan(nodata) else values != nodata
    if np.issubdtype(values.dtype, np.floating):
        valid &= ~np.isnan(values)
    converted = (values.astype(np.float64) * s1 + (o1 - o2)) / s2
    if np.issubdtype(values.dtype, np.integer):
        info = np.iinfo(values.dtype)
        low, high = float(info.min), float(info.max)
        if nodata is not None and not np.isnan(nodata):
            if nodata <= low:
                low = float(nodata) + 1
            elif nodata >= high:
                high = float(nodata) - 1
        converted = np.clip(np.rint(converted), low, high)
    np.copyto(values, converted.astype(values.dtype), where=valid)
    return values
