"""A task's stacks: every observation's band windows read into their layers, the clear rule
applied there, same-day scenes mosaicked."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from odc.geo.geobox import GeoBox

from .compute.masking import mask_into
from .io.rasters import Coarse, read_mask_window, read_window
from .io.s3 import is_remote
from .masks import MaskRule
from .plan import Task

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
            mask_into(layers, [r[0] for r in reads], n == 0, _clear_rule(coarse, mask, geobox),
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
