"""Read the windows a cell needs from source COGs, apply the clear rule, mosaic same-day scenes."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import rasterio
from odc.geo.geobox import GeoBox
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from .errors import SourceError
from .masks import MaskRule
from .plan import Observation, Task
from .s3 import gdal_path

log = logging.getLogger(__name__)

# GDAL reads with these unless the user's environment says otherwise: no directory listing
# on open (a HEAD storm on object stores), and retries on transient HTTP errors.
GDAL_DEFAULTS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
}
READ_ATTEMPTS = 4
RETRY_DELAY_S = 0.5
MAX_SOURCE_PIXELS = 1 << 34
_GAVE_UP: dict[str, str] = {}  # remote files this process gave up on, and why  # a header claiming more is corrupt or hostile
READ_THREADS = 4


def configure_gdal() -> None:
    """Set GDAL's defaults and its S3 endpoint settings in this process (every worker calls it)."""
    from .s3 import gdal_s3_env

    for key, value in GDAL_DEFAULTS.items():
        os.environ.setdefault(key, value)
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


def _read_zoomed(src, geobox: GeoBox, k: int, out: np.ndarray) -> None:
    """Copy the source pixels under the geobox into out (k x k target pixels per source pixel):
    one windowed read straight into out when k is 1, else of the coarse window, repeated k times."""
    ny, nx = out.shape
    d, a = geobox.affine, src.transform
    col0 = round((d.c - a.c) / d.a)  # the geobox's first column and row, in target pixels of the source grid
    row0 = round((d.f - a.f) / d.e)
    r_lo, r_hi = max(0, -row0), min(ny, src.height * k - row0)
    c_lo, c_hi = max(0, -col0), min(nx, src.width * k - col0)
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


def read_window(href: str, geobox: GeoBox, *, fill, what: str) -> tuple[np.ndarray, float | None]:
    """(array on the geobox, the file's nodata): source pixels exactly when the grids align
    (same or k-times coarser pixels on the same lines), else a nearest-neighbour warp.

    A remote read is retried a few times: GDAL retries HTTP errors itself but never a body cut
    short. Refusals (403, 404) are not retried."""
    remote = "://" in href and not href.startswith("file:")
    attempts = READ_ATTEMPTS if remote else 1
    path = gdal_path(href)
    if path in _GAVE_UP:  # failed every attempt for an earlier cell: fail this one without a retry storm
        raise SourceError(f"{what}: {_GAVE_UP[path]}")
    for attempt in range(1, attempts + 1):
        try:
            if attempt == 1:
                return _read_window_once(path, geobox, fill=fill, what=what)
            # GDAL keeps what it fetched of a file, a body cut short included: read past its cache
            with rasterio.Env(CPL_VSIL_CURL_NON_CACHED=path):
                return _read_window_once(path, geobox, fill=fill, what=what)
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


def _read_window_once(href: str, geobox: GeoBox, *, fill, what: str) -> tuple[np.ndarray, float | None]:
    ny, nx = geobox.shape
    try:
        with rasterio.open(href, driver="GTiff") as src:
            if src.width * src.height > MAX_SOURCE_PIXELS:
                raise SourceError(f"{what}: header claims {src.width}x{src.height} pixels; refusing to read it")
            nodata = src.nodata
            value = fill if fill is not None else (nodata if nodata is not None else 0)
            k = _zoom_factor(src, geobox)
            if k is not None:
                out = np.full((ny, nx), value, dtype=src.dtypes[0])
                _read_zoomed(src, geobox, k, out)
                return out, nodata
            options = {"src_nodata": nodata} if nodata is not None else {}
            with WarpedVRT(src, crs=str(geobox.crs), transform=geobox.affine, width=nx, height=ny,
                           resampling=Resampling.nearest, nodata=value, **options) as vrt:
                return vrt.read(1), nodata
    except rasterio.errors.RasterioError as err:
        raise SourceError(f"{what}: cannot be read ({str(err).splitlines()[0]})") from err


def _read_observation(obs: Observation, geobox: GeoBox, bands: tuple[str, ...], mask: MaskRule | None,
                      sentinels: dict[str, float | None]):
    arrays, nodatas = {}, {}
    for band in bands:
        arrays[band], nodatas[band] = read_window(
            obs.href(band), geobox, fill=sentinels.get(band), what=f"item {obs.item_id} asset {band}"
        )
    clear = None
    if mask is not None:
        mask_arr, _ = read_window(obs.href(mask.asset), geobox, fill=mask.fill_value,
                                  what=f"item {obs.item_id} mask asset {mask.asset}")
        clear = mask.clear(mask_arr)
    return arrays, nodatas, clear


def load_task(task: Task, bands: tuple[str, ...], mask: MaskRule | None, out_nodata: float | None) -> Stacks:
    """Read every observation of a task, mask unclear pixels to the sentinel, mosaic same-day groups."""
    geobox = task.geobox
    # the first observation fixes each band's dtype and sentinel; the rest are read in parallel
    first = _read_observation(task.observations[0], geobox, bands, mask, {})
    dtypes = {b: first[0][b].dtype for b in bands}
    src_nodata = dict(first[1])
    sentinels = {b: _sentinel(dtypes[b], src_nodata[b], out_nodata) for b in bands}
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        rest = list(pool.map(lambda o: _read_observation(o, geobox, bands, mask, sentinels), task.observations[1:]))
    groups: dict[tuple[str, str], list[int]] = {}
    for i, obs in enumerate(task.observations):
        groups.setdefault((obs.platform, obs.solar_day), []).append(i)
    reads = [first] + rest
    unclear = [None if r[2] is None else ~r[2] for r in reads]  # once per observation, not per band
    stacks = {}
    for band in bands:
        stack = np.empty((len(groups),) + tuple(geobox.shape), dtype=dtypes[band])
        sentinel = sentinels[band]
        fill = _as(sentinel, dtypes[band])
        for g, members in enumerate(groups.values()):
            layer = stack[g]
            for n, i in enumerate(members):
                values, nodata, bad = reads[i][0][band], reads[i][1][band], unclear[i]
                if not _is_sentinel(nodata, sentinel, values.dtype):  # else a missing value is the sentinel already
                    missing = _missing(values, nodata)
                    bad = missing if bad is None else missing | bad
                if n == 0:  # in place: no masked copy of each band of each observation
                    np.copyto(layer, values, casting="unsafe")
                    if bad is not None:
                        np.copyto(layer, fill, where=bad)
                else:  # mosaic: keep what earlier scenes of the day gave, fill the rest
                    hole = _missing(layer, sentinel)
                    if bad is not None:
                        hole &= ~bad
                    np.copyto(layer, values, where=hole, casting="unsafe")
        stacks[band] = stack
    return Stacks(bands=stacks, sentinel=sentinels, source_dtype=dtypes, source_nodata=src_nodata)


def _sentinel(dtype: np.dtype, src_nodata, out_nodata):
    if src_nodata is not None and not (np.issubdtype(dtype, np.integer) and np.isnan(src_nodata)):
        return src_nodata
    if np.issubdtype(dtype, np.floating):
        return np.nan
    if out_nodata is not None:
        return out_nodata
    return np.iinfo(dtype).max


def _is_sentinel(nodata, sentinel, dtype) -> bool:
    """True when an integer band's nodata value is its sentinel (so its missing values need no masking)."""
    return (nodata is not None and np.issubdtype(dtype, np.integer) and not np.isnan(nodata)
            and not np.isnan(sentinel) and nodata == sentinel)


def _as(value, dtype):
    return np.array(value).astype(dtype)


def _missing(values: np.ndarray, nodata) -> np.ndarray:
    if nodata is None:
        return np.zeros(values.shape, dtype=bool)
    if np.issubdtype(values.dtype, np.floating):
        return np.isnan(values) | (values == nodata) if not np.isnan(nodata) else np.isnan(values)
    if isinstance(nodata, float) and np.isnan(nodata):
        return np.zeros(values.shape, dtype=bool)
    return values == _as(nodata, values.dtype)
