"""A task's stacks: every observation's band windows read into their layers, the clear rule
applied there, same-day scenes mosaicked."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial

import numpy as np
from odc.geo.geobox import GeoBox

from .compute.arrays import as_dtype, reencode
from .compute.masking import mask_into
from .errors import SourceError
from .io.rasters import (
    Coarse,
    open_ahead,
    read_mask_window,
    read_window,
    remote_reads,
    source_grid,
    zoom_factor,
)
from .io.s3 import is_remote
from .masks import MaskRule
from .plan import Task


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
    assert mask is not None  # a coarse mask read is made from a rule
    table = mask.lookup(coarse.values.dtype)
    values = coarse.values
    if table is None:
        values, table = mask.clear(values).view(np.uint8), np.array([False, True])
    return values, coarse.k, coarse.row_offset, coarse.col_offset, table


def load_task(task: Task, bands: tuple[str, ...], mask: MaskRule | None, out_nodata: float | None, *,
              encodings: dict[str, tuple[float, float]] | None = None, skip_bad_sources: bool = False,
              window: tuple[slice, slice] | None = None) -> Stacks:
    """Read every observation of a task, mask unclear pixels to the sentinel, mosaic same-day groups.

    Each band window is read straight into its layer of the stack and masked there in one pass
    with the clear rule (no per-scene masks or masked copies); a same-day group's later scenes
    fill only what the earlier left unclear. Each observation is masked by its own clear rule (or
    `mask` when it has none) and its band values are brought to `encodings` (per band the
    (scale, offset) to store them in) when they are stored otherwise. With `skip_bad_sources`, an
    observation that cannot be read (after its retries) is left out and named in `Stacks.skipped`;
    without, it fails the task.

    From object stores every file of the task is read at once (the worker's remote read threads):
    the first observation's bands, while every other file's header arrives, then all the windows.
    `window`: (rows, columns) of the cell to load, as data_window finds them (else the whole cell)."""
    geobox = task.geobox if window is None else task.geobox[window]
    skipped: dict[str, SourceError] = {}
    remote = any(is_remote(href) for obs in task.observations for _, href in obs.hrefs)
    reader = _Reader(task, geobox, bands, mask, encodings or {}, remote)

    # the first readable observation fixes each band's dtype and sentinel
    first_index, first, first_mask = None, None, None
    first_fill = partial(_sentinel, out_nodata=out_nodata)  # past a file's edge: its sentinel, as later ones'
    for i, obs in enumerate(task.observations):
        try:
            reads, first_mask = reader.bands(obs, lambda b: first_fill, [None] * len(bands)), reader.mask(obs)
            if i == 0:  # the other files' headers are fetched while the first observation is read
                reader.open_others()
            first, first_index = reads.result(), i
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

    # every other read starts now (remote) or when its turn comes (local: decoding is CPU work, and
    # the worker's Dask threads, one per CPU, each on its own task, keep every CPU busy already).
    # A group's first scene is read into its layers; its later ones into arrays of their own
    pending: dict[int, tuple] = {}
    for g, members in enumerate(groups.values()):
        for n, i in enumerate(members):
            obs = task.observations[i]
            if obs.item_id in skipped:
                continue
            outs = [stacks[b][g] for b in bands] if n == 0 else [None] * len(bands)
            if i == first_index:
                pending[i] = (_done(first), first_mask)
            else:
                pending[i] = (reader.bands(obs, sentinels.get, outs), reader.mask(obs))

    def load_group(g: int, members: list[int]) -> None:
        layers = [stacks[b][g] for b in bands]
        empty = True  # no scene of the group has been put into its layers yet
        for i in members:
            obs = task.observations[i]
            if obs.item_id in skipped:
                continue
            try:
                reads_job, mask_job = pending.pop(i)
                reads = reads_job.result()
                coarse = mask_job.result()
            except SourceError as err:
                if not skip_bad_sources:
                    raise
                skipped[obs.item_id] = err
                continue
            rule = obs.mask or mask
            observed[g] |= _has_values(reads, [sentinels[b] for b in bands])  # before masking: valid, clear or not
            mask_into(layers, [r[0] for r in reads], empty, _clear_rule(coarse, rule, geobox),
                      [sentinels[b] for b in bands], [r[1] for r in reads])
            empty = False
        if empty:  # every scene of the group was left out: nothing in it is clear
            for b, layer in zip(bands, layers):
                layer[...] = as_dtype(sentinels[b], layer.dtype)

    for g, members in enumerate(groups.values()):
        load_group(g, members)
    return Stacks(bands=stacks, sentinel=sentinels, source_dtype=dtypes, source_nodata=src_nodata,
                  skipped=tuple(sorted((item, str(err)) for item, err in skipped.items())),
                  observed=observed.sum(axis=0, dtype=np.uint16),
                  layer_times=tuple(task.observations[members[0]].time for members in groups.values()))


def data_window(task: Task, bands: tuple[str, ...], mask: MaskRule | None) -> tuple[slice, slice] | None:
    """The rows and columns of a task's cell that any of its source files covers (a pixel past
    every one of them has no observation), when that is less than the cell and known without a
    request: every file on local disk or read earlier in the batch (source_grid), each read by
    windows, not warped (its pixels k x k of the cell's on the same grid lines: a window of the
    cell then reads exactly what the whole cell's read has there, where a warp's approximations
    depend on the area warped). None otherwise: the whole cell is loaded."""
    cell = task.geobox
    ny, nx = task.shape_yx
    y0, y1, x0, x1 = ny, 0, nx, 0
    seen = set()
    for obs in task.observations:
        rule = obs.mask or mask
        for key, href in obs.hrefs:
            if key not in bands and (rule is None or key != rule.asset):
                continue
            try:
                grid = source_grid(href, what=f"item {obs.item_id} asset {key}")
            except SourceError:  # load_task fails the task for it, or leaves it out
                return None
            if grid is None:
                return None
            if grid in seen:
                continue
            seen.add(grid)
            k = zoom_factor(grid.transform, grid.crs, cell)
            if k is None:
                return None
            (h, w), a, d = grid.shape, grid.transform, cell.affine
            col0, row0 = round((a.c - d.c) / d.a), round((a.f - d.f) / d.e)  # its corner, in cell pixels
            rows = slice(max(row0, 0), min(row0 + h * k, ny))
            cols = slice(max(col0, 0), min(col0 + w * k, nx))
            if (rows.start, rows.stop, cols.start, cols.stop) == (0, ny, 0, nx):
                return None  # one file covers the whole cell
            if rows.stop > rows.start and cols.stop > cols.start:
                y0, y1 = min(y0, rows.start), max(y1, rows.stop)
                x0, x1 = min(x0, cols.start), max(x1, cols.stop)
    if y0 >= y1 or x0 >= x1 or (y0, y1, x0, x1) == (0, ny, 0, nx):
        return None  # nothing covered (nothing to save), or all of it together
    return slice(y0, y1), slice(x0, x1)


class _Reader:
    """A task's reads as futures: started at once on the worker's remote read threads, or for local
    files run on the task's own thread when their result is asked for, in the order asked."""

    def __init__(self, task: Task, geobox: GeoBox, bands, mask: MaskRule | None, encodings, remote: bool):
        self.task, self.keys, self.default_mask, self.encodings, self.remote = task, bands, mask, encodings, remote
        self.geobox = geobox
        self.headers: dict[str, Future] = {}
        self.started = next(_TASKS_STARTED)  # the reads' priority: earlier tasks first
        self.stage = _FIRST

    def open_others(self) -> None:
        """Start fetching the header of every file of the observations after the first: they
        arrive while the first observation is read (remote files only)."""
        if self.remote:
            files = [f for f in dict.fromkeys(href for obs in self.task.observations[1:] for _, href in obs.hrefs)
                     if is_remote(f)]
            self.headers = dict(zip(files, open_ahead(files, what="a source header",
                                                      priority=(self.started, _HEADERS))))
        self.stage = _WINDOWS

    def _run(self, fn) -> Future:
        if self.remote:
            return remote_reads().submit(fn, priority=(self.started, self.stage))
        return _Lazy(fn)

    def _after_header(self, href: str, fn):
        header = self.headers.get(href)
        if header is not None:
            header.result()  # opened already, or on its way: its dataset is in the pool for this read
        return fn()

    def bands(self, obs, fill, outs) -> Future:
        """[(values, nodata) per band]: the windows read (at once when remote), brought to the
        target encodings."""
        def one(b, out):
            values, nodata = self._after_header(obs.href(b), lambda: read_window(
                obs.href(b), self.geobox, fill=fill(b), what=f"item {obs.item_id} asset {b}", out=out))
            target = self.encodings.get(b)
            if target is not None and obs.encoding(b) != target:
                reencode(values, nodata, obs.encoding(b), target)
            return values, nodata

        jobs = [self._run(lambda b=b, out=out: one(b, out)) for b, out in zip(self.keys, outs)]
        return _Lazy(lambda: [job.result() for job in jobs])

    def mask(self, obs) -> Future:
        """The observation's mask window (None without a clear rule), once for all its bands."""
        rule = obs.mask or self.default_mask
        if rule is None:
            return _done(None)
        href = obs.href(rule.asset)
        return self._run(lambda: self._after_header(href, lambda: read_mask_window(
            href, self.geobox, fill=rule.fill_value, what=f"item {obs.item_id} mask asset {rule.asset}")))


# a task's reads in this order: its first observation, the other files' headers, their windows
_FIRST, _HEADERS, _WINDOWS = range(3)
_TASKS_STARTED = itertools.count()


class _Lazy(Future):
    """A future whose work runs on the thread that first asks for its result."""

    def __init__(self, fn):
        super().__init__()
        self._fn = fn
        self._lock = threading.Lock()

    def result(self, timeout=None):
        with self._lock:
            if not self.done():
                try:
                    self.set_result(self._fn())
                except BaseException as err:
                    self.set_exception(err)
        return super().result(timeout)


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def _has_values(reads, sentinels) -> np.ndarray:
    """Where a scene has a value in every band: not the file's nodata, not NaN, not the fill put
    where the file has no pixel."""
    valid: np.ndarray | None = None
    for (values, nodata), sentinel in zip(reads, sentinels):
        ok = values == values if np.issubdtype(values.dtype, np.floating) else np.ones(values.shape, dtype=bool)
        for missing in (nodata, sentinel):
            if missing is not None and not np.isnan(missing):
                ok &= values != as_dtype(missing, values.dtype)
        valid = ok if valid is None else valid & ok
    assert valid is not None  # a scene has at least one band
    return valid


def _sentinel(dtype: np.dtype, src_nodata, out_nodata):
    if src_nodata is not None and not (np.issubdtype(dtype, np.integer) and np.isnan(src_nodata)):
        return src_nodata
    if np.issubdtype(dtype, np.floating):
        return np.nan
    if out_nodata is not None:
        return out_nodata
    return np.iinfo(dtype).max
