"""A picture of a task's composite: a 256-pixel PNG, true colour from red, green and blue when the
product has them (else the first band in grey), each stretched between its 2nd and 98th
percentiles, transparent where there is no value."""

from __future__ import annotations

import numpy as np

THUMBNAIL_PX = 256
STRETCH_PERCENTILES = (2, 98)
# zlib level 1: a third less time than the default 6 for a sixth more bytes (82 KB for 71 on a
# 256 px composite); a thumbnail is made for every task, read by people now and then
PNG_ZLEVEL = 1


def thumbnail_bands(bands: tuple[str, ...]) -> tuple[str, ...]:
    """The bands a thumbnail shows: red, green, blue when all are there, else the first."""
    rgb = ("red", "green", "blue")
    return rgb if all(b in bands for b in rgb) else bands[:1]


def resample_nearest(array: np.ndarray, size_px: int = THUMBNAIL_PX) -> np.ndarray:
    """The array with its longer side `size_px`, nearest neighbour (values, not blends)."""
    ny, nx = array.shape
    scale = size_px / max(ny, nx)
    oy, ox = max(1, round(ny * scale)), max(1, round(nx * scale))
    rows = np.minimum((np.arange(oy) + 0.5) / scale, ny - 1).astype(int)
    cols = np.minimum((np.arange(ox) + 0.5) / scale, nx - 1).astype(int)
    return array[np.ix_(rows, cols)]


def thumbnail_rgba(arrays: dict[str, np.ndarray], nodata: dict[str, float | None], bands: tuple[str, ...],
                   size_px: int = THUMBNAIL_PX) -> np.ndarray:
    """(4, y, x) uint8: the shown bands stretched to 0..255 (grey repeats one band), alpha 0 where any
    shown band has no value."""
    shown = thumbnail_bands(bands)
    small = {b: resample_nearest(arrays[b], size_px) for b in shown}
    valid = np.ones(next(iter(small.values())).shape, dtype=bool)
    for b, values in small.items():
        fill = nodata.get(b)
        if fill is not None and not (isinstance(fill, float) and np.isnan(fill)):
            valid &= values != fill
        if np.issubdtype(values.dtype, np.floating):
            valid &= np.isfinite(values)
    channels = []
    for b in shown:
        values = small[b].astype(np.float64)
        if valid.any():
            low, high = np.percentile(values[valid], STRETCH_PERCENTILES)
        else:
            low, high = 0.0, 1.0
        span = high - low if high > low else 1.0
        values = np.where(valid, values, low)  # an index's NaN: no value, as nodata is
        channels.append(np.clip((values - low) / span * 255.0, 0, 255).astype(np.uint8))
    if len(channels) == 1:
        channels *= 3
    alpha = np.where(valid, 255, 0).astype(np.uint8)
    return np.stack([*(np.where(valid, c, 0) for c in channels), alpha])


def write_png(path, rgba: np.ndarray) -> None:
    """An RGBA array as a PNG file, through GDAL's PNG driver."""
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy

    from .io.rasters import gdal_env

    _quiet_no_georeference()
    count, ny, nx = rgba.shape
    with gdal_env(), MemoryFile() as memfile, memfile.open(driver="MEM", width=nx, height=ny, count=count,
                                                           dtype="uint8") as mem:
        mem.write(rgba)
        copy(mem, str(path), driver="PNG", ZLEVEL=PNG_ZLEVEL)


def _quiet_no_georeference() -> None:
    """A picture, not a map, has no georeference to lose: rasterio's warning that the thumbnail's
    in-memory image has none is filtered for the process (added again should a `catch_warnings`
    block elsewhere have dropped it, never removed and re-added, which would open a moment without
    it). `catch_warnings` around each write would not do: it is not thread-safe, and a worker
    writes thumbnails on several threads, one restoring the filters while another writes."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    if not any(f[0] == "ignore" and f[2] is NotGeoreferencedWarning for f in warnings.filters):
        warnings.filterwarnings("ignore", message="Dataset has no geotransform", category=NotGeoreferencedWarning)
