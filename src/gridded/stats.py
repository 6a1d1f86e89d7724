"""Per-pixel reducers over a period's clear observations: a registry, one signature.

A reducer takes, per band, a stack `(time, y, x)` in the source dtype in which every
unclear or missing value already equals that band's nodata sentinel, and returns per band a
float64 `(y, x)` array with NaN where no observation is clear. Kernels are numba, compiled on
first use (so importing this module stays cheap), and run `nogil` so Dask threads overlap.
"""

from __future__ import annotations

from functools import cache
from typing import Callable

import numpy as np


@cache
def _median_kernel():
    import numba

    @numba.njit(nogil=True, cache=True)
    def median_rows(stack, nodata, is_float, out):
        # insertion sort of the few clear values of each pixel: far cheaper than a partition
        # of a NaN-padded float copy, and exactly numpy's rule (mean of the two middle values)
        t, ny, nx = stack.shape
        buf = np.empty(t, dtype=np.float64)
        for y in range(ny):
            for x in range(nx):
                k = 0
                for j in range(t):
                    v = stack[j, y, x]
                    if v == nodata or (is_float and v != v):
                        continue
                    fv = np.float64(v)
                    i = k
                    while i > 0 and buf[i - 1] > fv:
                        buf[i] = buf[i - 1]
                        i -= 1
                    buf[i] = fv
                    k += 1
                if k == 0:
                    out[y, x] = np.nan
                elif k % 2 == 1:
                    out[y, x] = buf[k // 2]
                else:
                    out[y, x] = (buf[k // 2 - 1] + buf[k // 2]) / 2.0
        return out

    return median_rows


@cache
def _geomedian_kernel():
    import numba

    @numba.njit(nogil=True, cache=True)
    def geomedian_rows(stack, nodata, max_iter, tol, out, iters):
        # Weiszfeld iterations (Roberts et al. 2017) over observations clear in every band
        nb, t, ny, nx = stack.shape
        pts = np.empty((t, nb), dtype=np.float64)
        for y in range(ny):
            for x in range(nx):
                k = 0
                for j in range(t):
                    ok = True
                    for b in range(nb):
                        v = stack[b, j, y, x]
                        if v == nodata[b] or v != v:
                            ok = False
                            break
                    if ok:
                        for b in range(nb):
                            pts[k, b] = np.float64(stack[b, j, y, x])
                        k += 1
                if k == 0:
                    for b in range(nb):
                        out[b, y, x] = np.nan
                    continue
                est = np.zeros(nb)
                for i in range(k):
                    for b in range(nb):
                        est[b] += pts[i, b]
                for b in range(nb):
                    est[b] /= k
                n_iter = 0
                for it in range(max_iter):
                    n_iter = it + 1
                    num = np.zeros(nb)
                    den = 0.0
                    hit = False
                    for i in range(k):
                        d = 0.0
                        for b in range(nb):
                            diff = pts[i, b] - est[b]
                            d += diff * diff
                        d = np.sqrt(d)
                        if d < 1e-12:
                            hit = True
                            continue
                        w = 1.0 / d
                        den += w
                        for b in range(nb):
                            num[b] += pts[i, b] * w
                    if den == 0.0:
                        break
                    change = 0.0
                    norm = 0.0
                    for b in range(nb):
                        new = num[b] / den
                        change += (new - est[b]) ** 2
                        norm += new * new
                        est[b] = new
                    if np.sqrt(change) <= tol * max(np.sqrt(norm), 1.0):
                        break
                    if hit and k <= 2:
                        break
                for b in range(nb):
                    out[b, y, x] = est[b]
                iters[y, x] = n_iter
        return out

    return geomedian_rows


def _is_float(dtype) -> bool:
    return np.issubdtype(dtype, np.floating)


def reduce_median(stacks: dict[str, np.ndarray], nodata: dict[str, float], **_) -> dict[str, np.ndarray]:
    """Per band: numpy.nanmedian over the clear values (mean of the two middle for an even count)."""
    kernel = _median_kernel()
    result = {}
    for band, stack in stacks.items():
        out = np.empty(stack.shape[1:], dtype=np.float64)
        sentinel = nodata[band] if nodata[band] is not None else np.nan
        result[band] = kernel(stack, stack.dtype.type(sentinel) if not np.isnan(sentinel) else np.nan,
                              _is_float(stack.dtype), out)
    return result


def reduce_geomedian(stacks: dict[str, np.ndarray], nodata: dict[str, float], *, max_iterations: int = 1000,
                     tolerance: float = 1e-7, **_) -> dict[str, np.ndarray]:
    """Multi-band geometric median over observations clear in every band (Weiszfeld)."""
    bands = list(stacks)
    cube = np.stack([stacks[b].astype(np.float64, copy=False) for b in bands])
    sentinels = np.array([np.nan if nodata[b] is None else nodata[b] for b in bands], dtype=np.float64)
    out = np.empty((len(bands),) + cube.shape[2:], dtype=np.float64)
    iters = np.zeros(cube.shape[2:], dtype=np.int32)
    _geomedian_kernel()(cube, sentinels, max_iterations, tolerance, out, iters)
    return {b: out[i] for i, b in enumerate(bands)}


Reducer = Callable[..., dict[str, np.ndarray]]

STATISTICS: dict[str, Reducer] = {
    "median": reduce_median,
    "geomedian": reduce_geomedian,
}


def clear_count(stacks: dict[str, np.ndarray], nodata: dict[str, float]) -> np.ndarray:
    """Number of observations clear in every band, as uint16."""
    valid = None
    for band, stack in stacks.items():
        ok = stack != nodata[band] if nodata[band] is not None else np.ones(stack.shape, bool)
        if _is_float(stack.dtype):
            ok &= ~np.isnan(stack)
        valid = ok if valid is None else valid & ok
    return valid.sum(axis=0, dtype=np.uint16)


def to_output(values: np.ndarray, dtype: np.dtype, nodata: float | None) -> np.ndarray:
    """Float results -> the output dtype: rounded half to even (numpy.rint), nodata where NaN."""
    dtype = np.dtype(dtype)
    missing = np.isnan(values)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        filled = np.clip(np.rint(np.where(missing, 0, values)), info.min, info.max).astype(dtype)
        filled[missing] = nodata if nodata is not None else 0
        return filled
    out = values.astype(dtype)
    if nodata is not None:
        out[missing] = nodata
    return out
