"""The clear rule applied to a scene's bands in their layers of the stacks, and the count of
observations clear in every band."""

from __future__ import annotations

import numpy as np

from .arrays import as_dtype, band_tuple, sentinels_for
from .blocks import run_in_row_blocks


def mask_into(layers: list[np.ndarray], values: list[np.ndarray], first: bool, rule, sentinels: list, nodatas: list):
    """Apply the clear rule to a scene's bands into their layers (one kernel call per dtype):
    `rule` is (mask values, k, row offset, column offset, lookup table over the mask's values)."""
    from ._jit import mask_into as kernel

    coarse, k, r_off, c_off, table = rule
    groups: dict[tuple, list[int]] = {}
    for b, (layer, vals) in enumerate(zip(layers, values)):
        groups.setdefault((layer.dtype, vals.dtype), []).append(b)
    clear = np.empty(layers[0].shape[1], dtype=np.bool_)
    for (ltype, vtype), members in groups.items():
        sent = [sentinels[b] for b in members]
        nd = [nodatas[b] for b in members]
        use_nd = np.array([v is not None and not np.isnan(v) for v in nd])
        kernel(tuple(layers[b] for b in members), tuple(values[b] for b in members),
               np.array([values[b] is layers[b] for b in members]), first, coarse, k, r_off,
               c_off, table, np.array([as_dtype(v, ltype) for v in sent], dtype=ltype),
               np.array([not np.isnan(v) for v in sent]),
               np.array([as_dtype(v, vtype) if u else 0 for v, u in zip(nd, use_nd)], dtype=vtype), use_nd, clear)


def clear_count(stacks: dict[str, np.ndarray], nodata: dict[str, float | None], *,
                threads: int | None = None) -> np.ndarray:
    """Number of observations clear in every band, as uint16."""
    arrays = band_tuple(stacks)
    sentinels, use = sentinels_for(stacks, nodata, arrays[0].dtype)
    if arrays[0].dtype == np.bool_:
        arrays = tuple(a.view(np.uint8) for a in arrays)
    out = np.empty(arrays[0].shape[1:], dtype=np.uint16)
    from ._jit import count_rows as kernel

    run_in_row_blocks(lambda r0, r1: kernel(arrays, sentinels, use, r0, r1, out), arrays[0].shape[1], threads)
    return out
