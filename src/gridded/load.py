"""Read the windows a cell needs from source COGs, apply the clear rule, mosaic same-day scenes."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import numpy as np
import rasterio
from odc.geo.geobox import GeoBox
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from .errors import SourceError
from .masks import MaskRule
from .plan import Task
from .s3 import gdal_path

log = logging.getLogger(__name__)

# GDAL reads with these unless the user's environment says otherwise: no directory listing
# on open (a HEAD storm on object stores), retries on transient HTTP errors, and a block cache
# of 32 MB (a window is decoded once, into its layer: caching what was read buys nothing, and
# GDAL's default of 5 % of the machine's memory would keep the blocks of every open source)
GDAL_DEFAULTS = {
    "GDAL_CACHEMAX": "32",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
}
READ_ATTEMPTS = 4
RETRY_DELAY_S = 0.5
MAX_SOURCE_PIXELS = 1 << 34  # a header claiming more is corrupt or hostile
_GAVE_UP: dict[str, str] = {}  # remote files this process gave up on, and why
READ_THREADS = 4
SOURCE_POOL_SIZE = 256  # open source datasets a batch keeps for its next tasks


def configure_gdal(s3: bool = True) -> None:
    """Set GDAL's defaults in this process (every worker calls it) and, for reads from S3, its
    endpoint settings (which cost a boto3 client the first time: skipped when nothing is on S3)."""
    for key, value in GDAL_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if s3:
        from .s3 import gdal_s3_env

        # derived from boto3's endpoint, which is authoritative: set, not defaulted
        os.environ.update(gdal_s3_env())


@dataclass(frozen=True, slots=True, kw_only=True)
class Stacks:
    """Per band, a (time, y, x) stack where unclear values are the band's sentinel."""

    bands: dict[str, np.ndarray]
    sentinel: dict[str, float | None]
    source_dtype: dict[str, np.dtype]
    source_nodata: dict[str, float | None]


def _zoom_factor(src, geobox: GeoBox) -> int | None:
    """k when each source pixel is exactly k x k target pixels on the same grid lines, else None."""
    a, d = src.transform, geobox.affine
    if src.crs is None or src.crs != rasterio.crs.CRS.from_user_input(str(geobox.crs)):
        return None
    if (a.b, a.d, d.b, d.d) != (0, 0, 0, 0) or d.a <= 0 or d.e >= 0:
        return None
    k = round(a.a / d.a)
    if k < 1 or abs(a.a - k * d.a) > 1e-9 * a.a or abs(a.e - k * d.e) > 1e-9 * abs(a.e):
        return None
    col, row = (d.c - a.c) / d.a, (d.f - a.f) / d.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return k


def _source_offset(src, geobox: GeoBox) -> tuple[int, int]:
    """The geobox's first row and column, counted in geobox pixels on the source's grid lines."""
    d, a = geobox.affine, src.transform
    return round((d.f - a.f) / d.e), round((d.c - a.c) / d.a)


def _read_zoomed(src, geobox: GeoBox, k: int, out: np.ndarray, fill) -> None:
    """The source pixels under the geobox into out (k x k target pixels per source pixel), `fill`
    where the source has none: one windowed read straight into out when k is 1, else of the
    coarse window, repeated k times."""
    ny, nx = out.shape
    row0, col0 = _source_offset(src, geobox)
    r_lo, r_hi = max(0, -row0), min(ny, src.height * k - row0)
    c_lo, c_hi = max(0, -col0), min(nx, src.width * k - col0)
    if (r_lo, r_hi, c_lo, c_hi) != (0, ny, 0, nx):
        out[...] = fill
    if r_lo >= r_hi or c_lo >= c_hi:
        return
    sr0, sr1 = (row0 + r_lo) // k, (row0 + r_hi - 1) // k + 1
    sc0, sc1 = (col0 + c_lo) // k, (col0 + c_hi - 1) // k + 1
    window = Window(sc0, sr0, sc1 - sc0, sr1 - sr0)
    target = out[r_lo:r_hi, c_lo:c_hi]
    if k == 1:
        src.read(1, window=window, out=target)
        return
    fine = src.read(1, window=window).repeat(k, axis=0).repeat(k, axis=1)
    fr, fc = row0 + r_lo - sr0 * k, col0 + c_lo - sc0 * k
    target[...] = fine[fr:fr + target.shape[0], fc:fc + target.shape[1]]


@dataclass(frozen=True, slots=True)
class Coarse:
    """A raster on a grid k times coarser than the geobox's, on the same lines: geobox pixel
    (y, x) lies in values[(y + row_offset) // k, (x + col_offset) // k]."""

    values: np.ndarray
    k: int = 1
    row_offset: int = 0
    col_offset: int = 0


def _read_coarse(src, geobox: GeoBox, k: int, fill) -> Coarse:
    """The source pixels under the geobox at the source's own resolution, `fill` where it has none."""
    ny, nx = geobox.shape
    row0, col0 = _source_offset(src, geobox)
    r0, r_off = divmod(row0, k)
    c0, c_off = divmod(col0, k)
    rows, cols = (r_off + ny - 1) // k + 1, (c_off + nx - 1) // k + 1
    values = np.empty((rows, cols), dtype=src.dtypes[0])
    sr0, sr1 = max(r0, 0), min(r0 + rows, src.height)
    sc0, sc1 = max(c0, 0), min(c0 + cols, src.width)
    if (sr0, sr1, sc0, sc1) != (r0, r0 + rows, c0, c0 + cols):
        values[...] = _as(fill, values.dtype)
    if sr0 < sr1 and sc0 < sc1:
        src.read(1, window=Window(sc0, sr0, sc1 - sc0, sr1 - sr0), out=values[sr0 - r0:sr1 - r0, sc0 - c0:sc1 - c0])
    return Coarse(values, k, r_off, c_off)


def read_window(href: str, geobox: GeoBox, *, fill, what: str, out: np.ndarray | None = None):
    """(array on the geobox, the file's nodata): source pixels exactly when the grids align
    (same or k-times coarser pixels on the same lines), else a nearest-neighbour warp; `fill`
    where the source has none. Read into `out` when given and of the file's dtype.

    A remote read is retried a few times: GDAL retries HTTP errors itself but never a body cut
    short. Refusals (403, 404) are not retried."""
    return _retrying(href, what, lambda src: _band_from(src, geobox, fill, out))


def read_mask_window(href: str, geobox: GeoBox, *, fill, what: str) -> Coarse:
    """A mask asset under the geobox, at its own resolution when the grids align (a 20 m SCL
    under a 10 m cell is read as is, not repeated), else warped onto the geobox."""
    return _retrying(href, what, lambda src: _mask_from(src, geobox, fill))


def _band_from(src, geobox: GeoBox, fill, out: np.ndarray | None):
    nodata = src.nodata
    value = fill if fill is not None else (nodata if nodata is not None else 0)
    dtype = np.dtype(src.dtypes[0])
    target = out if out is not None and out.dtype == dtype else np.empty(geobox.shape, dtype=dtype)
    k = _zoom_factor(src, geobox)
    if k is not None:
        _read_zoomed(src, geobox, k, target, _as(value, dtype))
        return target, nodata
    return _warp(src, geobox, value, target), nodata


def _mask_from(src, geobox: GeoBox, fill) -> Coarse:
    k = _zoom_factor(src, geobox)
    if k is not None:
        return _read_coarse(src, geobox, k, fill)
    return Coarse(_warp(src, geobox, fill, np.empty(geobox.shape, dtype=src.dtypes[0])))


def _warp(src, geobox: GeoBox, value, out: np.ndarray) -> np.ndarray:
    ny, nx = geobox.shape
    options = {"src_nodata": src.nodata} if src.nodata is not None else {}
    with WarpedVRT(src, crs=str(geobox.crs), transform=geobox.affine, width=nx, height=ny,
                   resampling=Resampling.nearest, nodata=value, **options) as vrt:
        return vrt.read(1, out=out)


def _retrying(href: str, what: str, read):
    remote = "://" in href and not href.startswith("file:")
    attempts = READ_ATTEMPTS if remote else 1
    path = gdal_path(href)
    if path in _GAVE_UP:  # failed every attempt for an earlier cell: fail this one without a retry storm
        raise SourceError(f"{what}: {_GAVE_UP[path]}")
    for attempt in range(1, attempts + 1):
        try:
            if attempt == 1:
                return _read_once(path, what, read)
            # GDAL keeps what it fetched of a file, a body cut short included: read past its cache
            with rasterio.Env(CPL_VSIL_CURL_NON_CACHED=path):
                return _read_once(path, what, read, reuse=False)
        except SourceError as err:
            if attempt == attempts or not _retryable(err):
                if remote:
                    _GAVE_UP[path] = str(err).split(": ", 1)[-1]
                raise
            log.info("%s: read failed (%s), retry %d of %d", what, err, attempt, attempts - 1)
            time.sleep(RETRY_DELAY_S * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _retryable(err: SourceError) -> bool:
    text = str(err)
    return not any(s in text for s in ("403", "404", "Access Denied", "does not exist", "not recognized", "refusing"))


def _read_once(path: str, what: str, read, *, reuse: bool = True):
    try:
        with _source(path, reuse=reuse) as src:
            if src.width * src.height > MAX_SOURCE_PIXELS:
                raise SourceError(f"{what}: header claims {src.width}x{src.height} pixels; refusing to read it")
            return read(src)
    except rasterio.errors.RasterioError as err:
        raise SourceError(f"{what}: cannot be read ({str(err).splitlines()[0]})") from err


class SourcePool:
    """Source files a batch keeps open between its tasks: the cells of a batch share scenes, and
    opening a file again costs its header again (a request on object stores, and half a
    millisecond holding the GIL even on local disk). A dataset serves one read at a time: a read
    takes an idle one or opens another, and gives it back unless the read failed. At most
    `size` stay open, the least recently used closed first."""

    def __init__(self, size: int = SOURCE_POOL_SIZE):
        self.size = size
        self._idle: OrderedDict[str, list] = OrderedDict()
        self._count = 0
        self._lock = threading.Lock()

    def take(self, path: str):
        with self._lock:
            handles = self._idle.get(path)
            if not handles:
                return None
            self._count -= 1
            src = handles.pop()
            if not handles:
                del self._idle[path]
            return src

    def give(self, path: str, src) -> None:
        evicted = []
        with self._lock:
            self._idle.setdefault(path, []).append(src)
            self._idle.move_to_end(path)
            self._count += 1
            while self._count > self.size:
                oldest, handles = next(iter(self._idle.items()))
                evicted.append(handles.pop(0))
                self._count -= 1
                if not handles:
                    del self._idle[oldest]
        for old in evicted:
            old.close()

    def close(self) -> None:
        with self._lock:
            handles = [src for group in self._idle.values() for src in group]
            self._idle.clear()
            self._count = 0
        for src in handles:
            src.close()


_POOL: SourcePool | None = None


@contextmanager
def pooled_sources(size: int = SOURCE_POOL_SIZE):
    """Within this block, reads in this process share a SourcePool; it is closed at the end."""
    global _POOL
    pool, previous = SourcePool(size), _POOL
    _POOL = pool
    try:
        yield pool
    finally:
        _POOL = previous
        pool.close()


@contextmanager
def _source(path: str, *, reuse: bool):
    pool = _POOL if reuse else None
    src = pool.take(path) if pool is not None else None
    if src is None:
        src = rasterio.open(path, driver="GTiff")
    ok = False
    try:
        yield src
        ok = True
    finally:
        if ok and pool is not None:
            pool.give(path, src)
        else:
            src.close()


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
               c_off, table, np.array([_as(v, ltype) for v in sent], dtype=ltype),
               np.array([not np.isnan(v) for v in sent]),
               np.array([_as(v, vtype) if u else 0 for v, u in zip(nd, use_nd)], dtype=vtype), use_nd, clear)


def load_task(task: Task, bands: tuple[str, ...], mask: MaskRule | None, out_nodata: float | None) -> Stacks:
    """Read every observation of a task, mask unclear pixels to the sentinel, mosaic same-day groups.

    Each band window is read straight into its layer of the stack and masked there in one pass
    with the clear rule (no per-scene masks or masked copies); a same-day group's later scenes
    fill only what the earlier left unclear."""
    geobox = task.geobox
    obs0 = task.observations[0]
    # the first observation fixes each band's dtype and sentinel; then every same-day group is read
    # in parallel, its scenes in order
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

    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
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


def _as(value, dtype):
    return np.array(value).astype(dtype)
