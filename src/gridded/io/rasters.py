"""Windows of source COGs on a cell's grid: the source's own pixels when the grids align (kept
at their resolution, or repeated onto the cell's), a nearest-neighbour warp otherwise; retries of
remote reads, and the pool of open files a batch shares."""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from ..compute.arrays import as_dtype
from ..errors import SourceError
from .access import redact, signer
from .s3 import backoff_s, gdal_path, is_remote

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
MAX_SOURCE_PIXELS = 1 << 34  # a header claiming more is corrupt or hostile
SOURCE_POOL_SIZE = 256  # open source datasets a batch keeps for its next tasks
# Remote reads a worker keeps outstanding, whatever its CPUs: each waits a round trip to the
# object store (tens of ms) far more than it decodes, so their number is sized for latency. A
# read holds its window's decoded pixels only, which its task has allocated anyway
REMOTE_READS_IN_FLIGHT = 32


def configure_gdal(s3: bool = True) -> None:
    """Set GDAL's defaults in this process (every worker calls it) and, for reads from S3, its
    endpoint settings (which cost a boto3 client the first time: skipped when nothing is on S3)."""
    for key, value in GDAL_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if s3:
        from .s3 import gdal_s3_env

        # derived from boto3's endpoint, which is authoritative: set, not defaulted
        os.environ.update(gdal_s3_env())


def gdal_env(**options) -> rasterio.Env:
    """The rasterio Env every GDAL call of gridded's runs in: without a session of its own, so
    that GDAL finds credentials itself (AWS_* variables, profiles, instance and web-identity
    roles), as it does for every /vsis3/ path. Outside an Env, rasterio makes a boto3 session for
    each call when AWS keys are in the environment: 8-14 ms holding the GIL per open and per COG,
    the larger part of a small task's fixed cost."""
    from rasterio.session import DummySession

    return rasterio.Env.from_defaults(session=DummySession(), **options)


def _zoom_factor(src, geobox: GeoBox) -> int | None:
    """k when each source pixel is exactly k x k target pixels on the same grid lines, else None."""
    return zoom_factor(src.transform, src.crs, geobox)


def zoom_factor(transform, crs, geobox: GeoBox) -> int | None:
    """_zoom_factor of a source file's transform and CRS (as its header says) under the geobox."""
    a, d = transform, geobox.affine
    if crs is None or crs != rasterio.crs.CRS.from_user_input(str(geobox.crs)):
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
        values[...] = as_dtype(fill, values.dtype)
    if sr0 < sr1 and sc0 < sc1:
        src.read(1, window=Window(sc0, sr0, sc1 - sc0, sr1 - sr0), out=values[sr0 - r0:sr1 - r0, sc0 - c0:sc1 - c0])
    return Coarse(values, k, r_off, c_off)


def read_window(href: str, geobox: GeoBox, *, fill, what: str, out: np.ndarray | None = None):
    """(array on the geobox, the file's nodata): source pixels exactly when the grids align
    (same or k-times coarser pixels on the same lines), else a nearest-neighbour warp; `fill`
    where the source has none (or `fill(dtype, nodata)` of the file's, given a function). Read
    into `out` when given and of the file's dtype.

    A remote read is retried a few times: GDAL retries HTTP errors itself but never a body cut
    short. Refusals (403, 404) are not retried."""
    return _retrying(href, what, lambda src: _band_from(src, geobox, fill, out))


def read_mask_window(href: str, geobox: GeoBox, *, fill, what: str) -> Coarse:
    """A mask asset under the geobox, at its own resolution when the grids align (a 20 m SCL
    under a 10 m cell is read as is, not repeated), else warped onto the geobox."""
    return _retrying(href, what, lambda src: _mask_from(src, geobox, fill))


def band_info(href: str, *, what: str) -> tuple[np.dtype, float | None]:
    """(dtype, nodata) of a source file's first band, from its header alone."""
    return _retrying(href, what, lambda src: (np.dtype(src.dtypes[0]), src.nodata))


def _band_from(src, geobox: GeoBox, fill, out: np.ndarray | None):
    nodata = src.nodata
    dtype = np.dtype(src.dtypes[0])
    if callable(fill):  # the fill as the file's dtype and nodata make it
        fill = fill(dtype, nodata)
    value = fill if fill is not None else (nodata if nodata is not None else 0)
    target = out if out is not None and out.dtype == dtype else np.empty(geobox.shape, dtype=dtype)
    k = _zoom_factor(src, geobox)
    if k is not None:
        _read_zoomed(src, geobox, k, target, as_dtype(value, dtype))
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
    remote = is_remote(href)
    attempts = READ_ATTEMPTS if remote else 1
    key = gdal_path(href)  # unsigned: a signed href changes with its token
    sign = signer()
    signed = sign(href) if sign else href
    path = gdal_path(signed)
    pool = _POOL
    if pool is not None and key in pool.gave_up:  # failed every attempt for an earlier task of the batch:
        raise SourceError(f"{what}: {pool.gave_up[key]}")  # fail this one without a retry storm
    if pool is not None and key not in pool.grids:
        read = _noting_grid(pool, key, read)
    not_a_raster: list[bool] = []
    for attempt in range(1, attempts + 1):
        if attempt == 2 and sign:  # the token may have expired: sign again, with a new one
            path = gdal_path(sign(href, refresh=signed))
        try:
            if attempt == 1:
                return _read_once(path, what, read, remote=remote)
            # GDAL keeps what it fetched of a file, a body cut short included: read past its cache
            with gdal_env(CPL_VSIL_CURL_NON_CACHED=path):
                return _read_once(path, what, read, remote=remote, reuse=False)
        except SourceError as err:
            not_a_raster.append(getattr(err, "not_a_raster", False))
            if attempt == attempts or not err.retryable:
                if remote and pool is not None:
                    pool.gave_up[key] = str(err).split(": ", 1)[-1]
                if all(not_a_raster):  # every attempt read bytes that are no raster: the file's, not a glitch
                    raise SourceError(str(err), retryable=False) from err
                raise
            delay = backoff_s(attempt)
            log.info("%s: read failed (%s), retry %d of %d in %.2f s", what, err, attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _noting_grid(pool: SourcePool, key: str, read):
    def noted(src):
        pool.grids[key] = SourceGrid(tuple(src.shape), src.transform, src.crs)
        return read(src)
    return noted


@dataclass(frozen=True, slots=True)
class SourceGrid:
    """A source file's pixel grid, as its header says."""

    shape: tuple[int, int]
    transform: Affine
    crs: rasterio.crs.CRS | None


def source_grid(href: str, *, what: str) -> SourceGrid | None:
    """The grid of a source file a batch has read already or that is on local disk (opened for its
    header, then kept in the batch's pool for the read), else None: never a request of its own.
    None outside a batch (no pool to keep it in)."""
    pool = _POOL
    if pool is None:
        return None
    key = gdal_path(href)
    grid = pool.grids.get(key)
    if grid is None and not is_remote(href):
        _retrying(href, what, lambda src: None)
        grid = pool.grids.get(key)
    return grid


# GDAL's error numbers (CPLE_*) that say a read cannot succeed however often it is tried: the
# object or bucket is not there, access is refused, or (for a local file) the bytes are not a
# raster GDAL reads. A remote file "not recognized" may be an error page read as its content (a
# 503's body): it is tried again, and only refused when every attempt says so
CPLE_OPEN_FAILED, CPLE_NOT_SUPPORTED = 4, 6
CPLE_REFUSED = frozenset({12, 13, 14, 15, 16})
CPLE_NOT_A_RASTER = frozenset({CPLE_OPEN_FAILED, CPLE_NOT_SUPPORTED})


def _gdal_causes(err: BaseException) -> list[BaseException]:
    """The error and the GDAL errors behind it, outermost first."""
    chain: list[BaseException] = []
    cause: BaseException | None = err
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


def source_error(err: rasterio.errors.RasterioError, what: str, *, remote: bool) -> SourceError:
    """A failed GDAL read -> one line with GDAL's own innermost message (not rasterio's "See previous
    exception for details"), retryable when it may be transient: any failure of a remote read
    (throttling, a 5xx, a body cut short) but those GDAL's error number says are final."""
    causes = _gdal_causes(err)
    messages = [str(c).strip().splitlines()[0] for c in causes if str(c).strip()]
    message = redact(messages[-1]) if messages else err.__class__.__name__  # a signed href's token left out
    numbers = {getattr(c, "errno", None) for c in causes}
    retryable = remote and not (numbers & CPLE_REFUSED)
    failure = SourceError(f"{what}: cannot be read ({message})", retryable=retryable)
    failure.not_a_raster = bool(numbers & CPLE_NOT_A_RASTER)  # type: ignore[attr-defined]
    return failure


def _read_once(path: str, what: str, read, *, remote: bool, reuse: bool = True):
    try:
        with gdal_env(), _source(path, reuse=reuse) as src:
            if src.width * src.height > MAX_SOURCE_PIXELS:
                raise SourceError(f"{what}: header claims {src.width}x{src.height} pixels; refusing to read it")
            return read(src)
    except rasterio.errors.RasterioError as err:
        raise source_error(err, what, remote=remote) from err


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
        self.gave_up: dict[str, str] = {}  # remote files this batch gave up on, and why
        self.grids: dict[str, SourceGrid] = {}  # every file this batch has read, its grid

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


class ReadThreads:
    """A process's threads for remote reads, shared by its tasks (so that a worker's outstanding
    requests stay bounded however many tasks it runs), taking reads by priority: the task that
    started first has its reads done first, so that tasks finish reading one after another and
    each one's decoding and encoding overlaps the others' reads, rather than all finishing at once."""

    def __init__(self, threads: int):
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        for n in range(threads):
            threading.Thread(target=self._work, name=f"gridded-read_{n}", daemon=True).start()

    def submit(self, fn, *, priority: tuple = ()) -> Future:
        """fn() on a read thread, before every read of a greater `priority`; in order among equals."""
        future: Future = Future()
        self._queue.put((priority, next(self._order), future, fn))
        return future

    def _work(self) -> None:
        while True:
            _, _, future, fn = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as err:  # the reader's to raise, where it asks for the result
                future.set_exception(err)
            del future, fn


_READERS: dict[int, ReadThreads] = {}
_READERS_LOCK = threading.Lock()


def remote_reads() -> ReadThreads:
    """This process's ReadThreads (REMOTE_READS_IN_FLIGHT of them)."""
    pid = os.getpid()  # a forked worker starts its own: the parent's threads are not in the child
    with _READERS_LOCK:
        if pid not in _READERS:
            _READERS.clear()
            _READERS[pid] = ReadThreads(REMOTE_READS_IN_FLIGHT)
        return _READERS[pid]


def open_ahead(hrefs, *, what: str, priority: tuple = ()) -> list[Future]:
    """Start opening remote files on the read threads, so that their headers arrive while other
    reads run: each is kept open in the batch's pool for the read that follows (nothing is opened
    without a pool, where it would be read twice). Failures are left to that read to report."""
    if _POOL is None:
        return []

    sign = signer()

    def header(href: str) -> None:
        with suppress(SourceError):  # tried once, recording nothing: the read that follows has the retries
            _read_once(gdal_path(sign(href)) if sign else gdal_path(href), what, lambda src: None, remote=True)

    return [remote_reads().submit(lambda href=href: header(href), priority=priority) for href in hrefs
            if is_remote(href)]


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
