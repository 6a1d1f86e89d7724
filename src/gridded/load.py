"""A task's stacks: every observation's band windows read into their layers, the clear rule
applied there, same-day scenes mosaicked."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from odc.geo.geobox import GeoBox

from .compute.arrays import as_dtype, reencode
from .compute.masking import mask_into
from .errors import SourceError
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
    skipped: tuple[tuple[str, str], ...] = ()  # (item id, why) of inputs left out as unreadable
    observed: np.ndarray | None = None  # (y, x) uint16: observations with a value in every band, clear or not
    layer_times: tuple = ()  # per layer of the stacks (a same-day group), the time of its first scene


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


def load_task(task: Task, bands: tuple[str, ...], mask: MaskRule | None, out_nodata: float | None, *,
              encodings: dict[str, tuple[float, float]] | None = None, skip_bad_sources: bool = False) -> Stacks:
    """Read every observation of a task, mask unclear pixels to the sentinel, mosaic same-day groups.

    Each band window is read straight into its layer of the stack and masked there in one pass
    with the clear rule (no per-scene masks or masked copies); a same-day group's later scenes
    fill only what the earlier left unclear. Each observation is masked by its own clear rule (or
    `mask` when it has none) and its band values are brought to `encodings` (per band the
    (scale, offset) to store them in) when they are stored otherwise. With `skip_bad_sources`, an
    observation that cannot be read (after its retries) is left out and named in `Stacks.skipped`;
    without, it fails the task."""
    geobox = task.geobox
    skipped: dict[str, SourceError] = {}

    def read_bands(obs, fill, outs):
        reads = [read_window(obs.href(b), geobox, fill=fill(b), what=f"item {obs.item_id} asset {b}", out=out)
                 for b, out in zip(bands, outs)]
        for b, (values, nodata) in zip(bands, reads):
            target = (encodings or {}).get(b)
            if target is not None and obs.encoding(b) != target:
                reencode(values, nodata, obs.encoding(b), target)
        return reads

    # the first readable observation fixes each band's dtype and sentinel; then each same-day group
    # is read, its scenes in order (several groups at once for remote sources)
    first_index, first = None, None
    for i, obs in enumerate(task.observations):
        try:
            first, first_index = read_bands(obs, lambda b: None, [None] * len(bands)), i
            break
        except SourceError as err:
            if not skip_bad_sources:
                raise
            skipped[obs.item_id] = err
    if first is None:
        raise SourceError(f"no input of the task could be read ({len(skipped)} left out; the first: "
                          f"{next(iter(skipped.values()))})", retryable=any(e.retryable for e in skipped.values()))
    dtypes = {b: r[0].dtype for b, r in zip(bands, first)}
    src_nodata = {b: r[1] for b, r in zip(bands, first)}
    sentinels = {b: _sentinel(dtypes[b], src_nodata[b], out_nodata) for b in bands}
    groups: dict[tuple[str, str], list[int]] = {}
    for i, obs in enumerate(task.observations):
        groups.setdefault((obs.platform, obs.solar_day), []).append(i)
    stacks = {b: np.empty((len(groups),) + tuple(geobox.shape), dtype=dtypes[b]) for b in bands}
    observed = np.zeros((len(groups),) + tuple(geobox.shape), dtype=bool)

    def load_group(g: int, members: list[int]) -> None:
        layers = [stacks[b][g] for b in bands]
        empty = True  # no scene of the group has been put into its layers yet
        for i in members:
            obs = task.observations[i]
            if obs.item_id in skipped:
                continue
            try:
                if i == first_index:
                    reads = first
                else:
                    reads = read_bands(obs, lambda b: sentinels[b], layers if empty else [None] * len(bands))
                rule = obs.mask or mask
                coarse = None
                if rule is not None:
                    coarse = read_mask_window(obs.href(rule.asset), geobox, fill=rule.fill_value,
                                              what=f"item {obs.item_id} mask asset {rule.asset}")
            except SourceError as err:
                if not skip_bad_sources:
                    raise
                skipped[obs.item_id] = err
                continue
            observed[g] |= _has_values(reads, [sentinels[b] for b in bands])  # before masking: valid, clear or not
            mask_into(layers, [r[0] for r in reads], empty, _clear_rule(coarse, rule, geobox),
                      [sentinels[b] for b in bands], [r[1] for r in reads])
            empty = False
        if empty:  # every scene of the group was left out: nothing in it is clear
            for b, layer in zip(bands, layers):
                layer[...] = as_dtype(sentinels[b], layer.dtype)

    if not any(is_remote(href) for obs in task.observations for _, href in obs.hrefs):
        for g, members in enumerate(groups.values()):
            load_group(g, members)
    else:
        with ThreadPoolExecutor(max_workers=REMOTE_READ_THREADS) as pool:
            for job in [pool.submit(load_group, g, members) for g, members in enumerate(groups.values())]:
                job.result()
    return Stacks(bands=stacks, sentinel=sentinels, source_dtype=dtypes, source_nodata=src_nodata,
                  skipped=tuple(sorted((item, str(err)) for item, err in skipped.items())),
                  observed=observed.sum(axis=0, dtype=np.uint16),
                  layer_times=tuple(task.observations[members[0]].time for members in groups.values()))


def _has_values(reads, sentinels) -> np.ndarray:
    """Where a scene has a value in every band: not the file's nodata, not NaN, not the fill put
    where the file has no pixel."""
    valid = None
    for (values, nodata), sentinel in zip(reads, sentinels):
        ok = values == values if np.issubdtype(values.dtype, np.floating) else np.ones(values.shape, dtype=bool)
        for missing in (nodata, sentinel):
            if missing is not None and not np.isnan(missing):
                ok &= values != as_dtype(missing, values.dtype)
        valid = ok if valid is None else valid & ok
    return valid


def _sentinel(dtype: np.dtype, src_nodata, out_nodata):
    if src_nodata is not None and not (np.issubdtype(dtype, np.integer) and np.isnan(src_nodata)):
        return src_nodata
    if np.issubdtype(dtype, np.floating):
        return np.nan
    if out_nodata is not None:
        return out_nodata
    return np.iinfo(dtype).max
