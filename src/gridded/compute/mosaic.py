"""Mosaics of one observation per pixel: every band from the one layer chosen among those clear in
every band, the first, the last, the best by a rank, or the medoid, and which layer that was."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .arrays import band_tuple, is_float_dtype, output_rule, sentinels_for
from .blocks import run_in_row_blocks

# the extra asset of a mosaic: the layer (time index in the stacks) each pixel was taken from,
# int32, -1 where no observation is clear in every band
LAYER = "layer"


def _bands(stacks: dict[str, np.ndarray], nodata: dict[str, float | None]):
    arrays = band_tuple(stacks)
    sentinels, use = sentinels_for(stacks, nodata, arrays[0].dtype)
    if arrays[0].dtype == np.bool_:
        arrays = tuple(a.view(np.uint8) for a in arrays)
    return arrays, sentinels, use


def _layer_by(kernel, stacks: dict[str, np.ndarray], nodata: dict[str, float | None], threads: int | None,
              *args) -> np.ndarray:
    arrays, sentinels, use = _bands(stacks, nodata)
    t, ny, nx = arrays[0].shape
    layer = np.full((ny, nx), -1, dtype=np.int32)
    if t > 0:
        run_in_row_blocks(lambda r0, r1: kernel(arrays, sentinels, use, *args, r0, r1, layer), ny, threads)
    return layer


def first_layer(stacks: dict[str, np.ndarray], nodata: dict[str, float | None], *, latest: bool = False,
                threads: int | None = None) -> np.ndarray:
    """(y, x) int32: the earliest layer clear in every band (the latest with `latest`), -1 where none."""
    from ._jit import first_rows

    return _layer_by(first_rows, stacks, nodata, threads, bool(latest))


def best_layer(stacks: dict[str, np.ndarray], nodata: dict[str, float | None], rank: np.ndarray, *,
               maximize: bool = True, threads: int | None = None) -> np.ndarray:
    """(y, x) int32: of the layers clear in every band and with a rank (not NaN), the one of the
    largest rank (the smallest unless `maximize`), the earliest on a tie; -1 where none."""
    from ._jit import best_rows

    shape = next(iter(stacks.values())).shape
    rank = np.ascontiguousarray(rank, dtype=np.float32)
    if rank.shape != shape:
        raise ValueError(f"rank has shape {rank.shape}, not the stacks' (time, y, x) {shape}")
    return _layer_by(best_rows, stacks, nodata, threads, rank, bool(maximize))


def medoid_layer(stacks: dict[str, np.ndarray], nodata: dict[str, float | None], *,
                 threads: int | None = None) -> np.ndarray:
    """(y, x) int32: the observation clear in every band whose sum of Euclidean distances (over the
    bands, in the data's units) to the other clear observations is least, as hdmedians' medoid; the
    earliest on a tie; -1 where none. Costs k^2 x bands per pixel of k clear observations."""
    from ._jit import medoid_rows

    is_float = is_float_dtype(np.result_type(*stacks.values()))  # the dtype band_tuple gives them
    return _layer_by(medoid_rows, stacks, nodata, threads, is_float)


def values_at_layer(stacks: dict[str, np.ndarray], layer: np.ndarray, *, threads: int | None = None,
                    out: dict[str, np.ndarray] | None = None,
                    out_nodata: dict[str, float | None] | None = None) -> dict[str, np.ndarray]:
    """Per band, its value at each pixel's `layer`: float64 with NaN where the layer is -1, or, given
    `out`, written into it as to_output would convert them (for the bands `out` has only)."""
    if out is None:
        return {band: _value_at_layer(stack, layer, np.empty(layer.shape), np.nan, threads)
                for band, stack in stacks.items()}
    return {band: _value_at_layer(stacks[band], layer, out[band], (out_nodata or {}).get(band), threads)
            for band in out}


def _value_at_layer(stack: np.ndarray, layer: np.ndarray, out: np.ndarray, out_nodata: float | None,
                    threads: int | None) -> np.ndarray:
    from ._jit import take_rows

    stack = np.ascontiguousarray(stack)
    if stack.dtype == np.bool_:
        stack = stack.view(np.uint8)
    fill, rounded, lo, hi = output_rule(out.dtype, out_nodata)
    if stack.shape[0] == 0:
        out[...] = fill
        return out
    run_in_row_blocks(lambda r0, r1: take_rows(stack, layer, r0, r1, out, fill, rounded, lo, hi), layer.shape[0],
                      threads)
    return out


def _mosaic(stacks, layer, threads, out, out_nodata) -> dict[str, np.ndarray]:
    result = values_at_layer(stacks, layer, threads=threads, out=out, out_nodata=out_nodata)
    result[LAYER] = layer
    return result


def reduce_first(stacks: dict[str, np.ndarray], nodata: dict[str, float | None], *, threads: int | None = None,
                 out: dict[str, np.ndarray] | None = None, out_nodata: dict[str, float | None] | None = None,
                 **_) -> dict[str, np.ndarray]:
    """Every band from each pixel's earliest observation clear in every band, and `layer`."""
    return _mosaic(stacks, first_layer(stacks, nodata, threads=threads), threads, out, out_nodata)


def reduce_last(stacks: dict[str, np.ndarray], nodata: dict[str, float | None], *, threads: int | None = None,
                out: dict[str, np.ndarray] | None = None, out_nodata: dict[str, float | None] | None = None,
                **_) -> dict[str, np.ndarray]:
    """Every band from each pixel's latest observation clear in every band, and `layer`."""
    return _mosaic(stacks, first_layer(stacks, nodata, latest=True, threads=threads), threads, out, out_nodata)


def reduce_best(stacks: dict[str, np.ndarray], nodata: dict[str, float | None], *, rank: np.ndarray | None = None,
                maximize: bool = True, threads: int | None = None, out: dict[str, np.ndarray] | None = None,
                out_nodata: dict[str, float | None] | None = None, **_) -> dict[str, np.ndarray]:
    """Every band from each pixel's observation of the best `rank` ((time, y, x) float32, NaN where
    not usable) among those clear in every band, and `layer`."""
    if rank is None:
        raise ConfigError("--statistic best: no rank to choose observations by; "
                          "give the pipeline a rank (a band or an index such as NDVI)")
    return _mosaic(stacks, best_layer(stacks, nodata, rank, maximize=maximize, threads=threads), threads, out,
                   out_nodata)


def reduce_medoid(stacks: dict[str, np.ndarray], nodata: dict[str, float | None], *, threads: int | None = None,
                  out: dict[str, np.ndarray] | None = None, out_nodata: dict[str, float | None] | None = None,
                  **_) -> dict[str, np.ndarray]:
    """Every band from each pixel's medoid observation (see medoid_layer), and `layer`."""
    return _mosaic(stacks, medoid_layer(stacks, nodata, threads=threads), threads, out, out_nodata)
