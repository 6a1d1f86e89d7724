"""A task's stacks: every observation's band windows read into their layers, the clear rule
applied there, same-day scenes mosaicked."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import numpy as np
from odc.geo.geobox import GeoBox

from .masks import MaskRule
from .plan import Task
from .s3 import is_remote
from .windows import Coarse, as_dtype, read_mask_window, read_window

# Same-day groups of a task read at once from object stores or HTTP, where a read waits on the
# network. Local files are read one group after another: decoding them is CPU work, and the
# worker's Dask threads (one per CPU, each on its own task) already keep every CPU busy.
REMOTE_READ_THREADS = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Stacks:
    """Per band, a (time, y, x) stack where unclear values are the band's sentinel."""

    bands: dict[str, np.ndarray]
    sentinel: dict[str, float | None]
    source_dtype: dict[str, np.dtype]
    source_nodata: dict[str, float | None]


@cache
def _mask_kernel():
    import numba

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def mask_into(layers, values, in_place, first, coarse, k, r_off, c_off, lut, sentinels, use_sentinel, nodatas,
                  use_nodata, clear):
        # Per row: the clear rule looked up once for every pixel (a coarse mask pixel covers k x k),
        # then per band, as the first observation of the layer, the value where clear and not the
        # file's nodata, else the sentinel; or, as a later scene of the same day, the value where
        # the layer still has the sentinel (a mosaic: the earlier scene stands where it is clear).
        ny, nx = layers[0].shape
        last = -1
        for y in range(ny):
            r = (y + r_off) // k
            if r != last:  # a new row of mask pixels: look each up once, spread it over its k columns
                last = r
                x = 0
                for ci in range(coarse.shape[1]):
                    ok = lut[coarse[r, ci]]
                    for _ in range(min(k - c_off if ci == 0 else k, nx - x)):
                        clear[x] = ok
                        x += 1
            for b in range(len(layers)):
                layer = layers[b]
                vals = values[b]
                s = sentinels[b]
                nd = nodatas[b]
                test_nd = use_nodata[b]
                test_s = use_sentinel[b]
                if first and in_place[b]:  # the scene was read into its layer: one array, so no
                    for x in range(nx):    # aliasing check stops LLVM vectorising the branch-free loop
                        v = layer[y, x]
                        ok = clear[x] & ((not test_nd) | (v != nd)) & (v == v)
                        layer[y, x] = v if ok else s
                elif first:
                    for x in range(nx):
                        v = vals[y, x]
                        ok = clear[x] & ((not test_nd) | (v != nd)) & (v == v)
                        layer[y, x] = v if ok else s
                else:
                    for x in range(nx):
                        v = vals[y, x]
                        cur = layer[y, x]
                        hole = (test_s & (cur == s)) | (cur != cur)
                        if hole & clear[x] & ((not test_nd) | (v != nd)) & (v == v):
                            layer[y, x] = v

    return mask_into


_NO_MASK = (np.zeros((1, 1), dtype=np.uint8), np.ones(1, dtype=np.bool_))


def _clear_rule(coarse: Coarse | None, mask: MaskRule | None, geobox: GeoBox):
    """(mask values, k, offsets, lookup table) for the kernel: the clear rule as a table over
    the mask's values, or its result as 0/1 for masks of wider types; everything clear without a mask."""
    if coarse is None:
        return _NO_MASK[0], max(geobox.shape) + 1, 0, 0, _NO_MASK[1]
    table = mask.lookup(coarse.values.dtype)
    values = coarse.values
    if table is None:
        values, table = mask.clear(values).view(np.uint8), np.array([False, True])
    return values, coarse.k, coarse.row_offset, coarse.col_offset, table


def _mask_into(layers: list[np.ndarray], values: list[np.ndarray], first: bool, rule, sentinels: list, nodatas: list):
    """Apply the clear rule to a scene's bands into their layers (one kernel call per dtype)."""
    kernel = _mask_kernel()
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


def load_task(task: Task, bands: tuple[str, ...], mask: MaskRule | None, out_nodata: float | None) -> Stacks:
    """Read every observation of a task, mask unclear pixels to the sentinel, mosaic same-day groups.

    Each band window is read straight into its layer of the stack and masked there in one pass
    with the clear rule (no per-scene masks or masked copies); a same-day group's later scenes
    fill only what the earlier left unclear."""
    geobox = task.geobox
    obs0 = task.observations[0]
    # the first observation fixes each band's dtype and sentinel; then each same-day group is read,
    # its scenes in order (several groups at once for remote sources)
    first = {b: read_window(obs0.href(b), geobox, fill=None, what=f"item {obs0.item_id} asset {b}") for b in bands}
    dtypes = {b: first[b][0].dtype for b in bands}
    src_nodata = {b: first[b][1] for b in bands}
    sentinels = {b: _sentinel(dtypes[b], src_nodata[b], out_nodata) for b in bands}
    groups: dict[tuple[str, str], list[int]] = {}
    for i, obs in enumerate(task.observations):
        groups.setdefault((obs.platform, obs.solar_day), []).append(i)
    stacks = {b: np.empty((len(groups),) + tuple(geobox.shape), dtype=dtypes[b]) for b in bands}

    def load_group(g: int, members: list[int]) -> None:
        layers = [stacks[b][g] for b in bands]
        for n, i in enumerate(members):
            obs = task.observations[i]
            if i == 0:
                reads = [first[b] for b in bands]
            else:
                reads = [read_window(obs.href(b), geobox, fill=sentinels[b], what=f"item {obs.item_id} asset {b}",
                                     out=layers[j] if n == 0 else None) for j, b in enumerate(bands)]
            coarse = None
            if mask is not None:
                coarse = read_mask_window(obs.href(mask.asset), geobox, fill=mask.fill_value,
                                          what=f"item {obs.item_id} mask asset {mask.asset}")
            _mask_into(layers, [r[0] for r in reads], n == 0, _clear_rule(coarse, mask, geobox),
                       [sentinels[b] for b in bands], [r[1] for r in reads])

    if not any(is_remote(href) for obs in task.observations for _, href in obs.hrefs):
        for g, members in enumerate(groups.values()):
            load_group(g, members)
    else:
        with ThreadPoolExecutor(max_workers=REMOTE_READ_THREADS) as pool:
            for job in [pool.submit(load_group, g, members) for g, members in enumerate(groups.values())]:
                job.result()
    return Stacks(bands=stacks, sentinel=sentinels, source_dtype=dtypes, source_nodata=src_nodata)


def _sentinel(dtype: np.dtype, src_nodata, out_nodata):
    if src_nodata is not None and not (np.issubdtype(dtype, np.integer) and np.isnan(src_nodata)):
        return src_nodata
    if np.issubdtype(dtype, np.floating):
        return np.nan
    if out_nodata is not None:
        return out_nodata
    return np.iinfo(dtype).max
