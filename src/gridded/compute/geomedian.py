"""The geometric median (Roberts et al. 2017) and the median absolute deviations from it:
Weiszfeld's iteration per pixel over the observations clear in every band, with Vardi and
Zhang's step where the estimate sits on data points."""

from __future__ import annotations

import numpy as np

from .arrays import band_tuple, is_float_dtype, sentinels_for, to_output
from .blocks import run_in_row_blocks

# --- geomedian -------------------------------------------------------------------------------


def geomedian_with_iterations(stacks: dict[str, np.ndarray], nodata: dict[str, float | None], *,
                              max_iterations: int = 1000, tolerance: float = 1e-7,
                              threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """((band, y, x) float64 geometric median, (y, x) int32 iterations taken) over the observations
    clear in every band; NaN and 0 iterations where none is. Iterations stop once a step is at most
    `tolerance` x the estimate's norm (or x 1 if the norm is smaller), or after `max_iterations`."""
    from ._jit import geomedian_rows as kernel  # imports numba: only once a kernel is asked for

    arrays = band_tuple(stacks)
    sentinels, use = sentinels_for(stacks, nodata, arrays[0].dtype)
    _, ny, nx = arrays[0].shape
    out = np.empty((len(arrays), ny, nx), dtype=np.float64)
    iters = np.zeros((ny, nx), dtype=np.int32)
    is_float = is_float_dtype(arrays[0].dtype)
    run_in_row_blocks(lambda r0, r1: kernel(arrays, sentinels, use, is_float, r0, r1, int(max_iterations),
                                            float(tolerance), out, iters), ny, threads)
    return out, iters


def reduce_geomedian(stacks: dict[str, np.ndarray], nodata: dict[str, float | None], *, max_iterations: int = 1000,
                     tolerance: float = 1e-7, threads: int | None = None, out: dict[str, np.ndarray] | None = None,
                     out_nodata: dict[str, float | None] | None = None, **_) -> dict[str, np.ndarray]:
    """Multi-band geometric median over observations clear in every band (Weiszfeld)."""
    values, _iterations = geomedian_with_iterations(stacks, nodata, max_iterations=max_iterations,
                                                    tolerance=tolerance, threads=threads)
    return _band_results(stacks, values, out, out_nodata)


def _band_results(stacks: dict[str, np.ndarray], values: np.ndarray, out: dict[str, np.ndarray] | None,
                  out_nodata: dict[str, float | None] | None) -> dict[str, np.ndarray]:
    """Per band, its layer of the (band, y, x) float results, or that layer written into `out` as
    to_output converts it."""
    if out is None:
        return {b: values[i] for i, b in enumerate(stacks)}
    return {b: to_output(values[i], out[b].dtype, (out_nodata or {}).get(b), out=out[b]) for i, b in enumerate(stacks)}


# --- median absolute deviations from the geomedian -------------------------------------------


MADS = ("smad", "emad", "bcmad")


def geomedian_mads(stacks: dict[str, np.ndarray], nodata: dict[str, float | None], geomedian: dict[str, np.ndarray], *,
                   threads: int | None = None) -> dict[str, np.ndarray]:
    """The median absolute deviations from the geomedian (odc-stats' `smad`, `emad`, `bcmad`): per pixel,
    float64, NaN where no observation is clear in every band, the median over those observations of
    the spectral (cosine) distance 1 - x.g / (|x| |g|), the Euclidean distance |x - g| (in the data's
    units, not rescaled to reflectance) and the Bray-Curtis dissimilarity sum|x - g| / sum|x + g|."""
    from ._jit import mads_rows as kernel

    arrays = band_tuple(stacks)
    sentinels, use = sentinels_for(stacks, nodata, arrays[0].dtype)
    gm = np.ascontiguousarray(np.stack([np.asarray(geomedian[b], dtype=np.float64) for b in stacks]))
    _, ny, nx = arrays[0].shape
    out = np.empty((len(MADS), ny, nx), dtype=np.float64)
    is_float = is_float_dtype(arrays[0].dtype)
    run_in_row_blocks(lambda r0, r1: kernel(arrays, sentinels, use, is_float, gm, r0, r1, out), ny, threads)
    return {name: out[i] for i, name in enumerate(MADS)}


def reduce_geomad(stacks: dict[str, np.ndarray], nodata: dict[str, float | None], *, max_iterations: int = 1000,
                  tolerance: float = 1e-7, threads: int | None = None, out: dict[str, np.ndarray] | None = None,
                  out_nodata: dict[str, float | None] | None = None, **_) -> dict[str, np.ndarray]:
    """The geometric median per band, as reduce_geomedian, and the median absolute deviations from
    it (`smad`, `emad`, `bcmad`: float64, NaN where no observation is clear), taken from the
    unrounded geomedian, as odc-stats' geomad gives them."""
    values, _iterations = geomedian_with_iterations(stacks, nodata, max_iterations=max_iterations,
                                                    tolerance=tolerance, threads=threads)
    result = _band_results(stacks, values, out, out_nodata)
    result.update(geomedian_mads(stacks, nodata, {b: values[i] for i, b in enumerate(stacks)}, threads=threads))
    return result
