"""Small synthetic scenes for the load and window tests: two 10 m bands and a 20 m SCL as tiled
GeoTIFFs on a UTM grid, their observations, and a task for a cell at any offset from them."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import rasterio
from rasterio.transform import from_origin

from gridded.masks import MASK_RULES
from gridded.period import Period
from gridded.plan import Observation, Task

CRS = "EPSG:32755"
X0, Y0 = 500_000.0, 6_000_000.0  # the sources' top-left corner
S2 = MASK_RULES["s2"]


def write_tif(path, array, res, *, nodata=0, x0=X0, y0=Y0):
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[1], height=array.shape[0], count=1,
                       dtype=array.dtype, crs=CRS, transform=from_origin(x0, y0, res, res), nodata=nodata,
                       tiled=True, blockxsize=16, blockysize=16) as dst:
        dst.write(array, 1)


def scene(tmp_path, name, rng, *, shape=(40, 48), mask_dtype=np.uint8, x0=X0):
    """A band pair at 10 m and a mask at 20 m (classes 0..11), nodata 0 in the bands."""
    hrefs = []
    for band in ("red", "nir"):
        values = rng.integers(1, 4000, shape).astype(np.uint16)
        values[rng.random(shape) < 0.1] = 0
        write_tif(tmp_path / f"{name}_{band}.tif", values, 10, x0=x0)
        hrefs.append((band, str(tmp_path / f"{name}_{band}.tif")))
    scl = rng.integers(0, 12, (shape[0] // 2, shape[1] // 2)).astype(mask_dtype)
    write_tif(tmp_path / f"{name}_scl.tif", scl, 20, nodata=None, x0=x0)
    hrefs.append(("scl", str(tmp_path / f"{name}_scl.tif")))
    return hrefs


def observation(name, hrefs, day, platform="s2a"):
    when = datetime(2024, 1, day, 0, 30, tzinfo=UTC)
    return Observation(item_id=name, time=when, platform=platform, updated="", solar_day=f"2024-01-{day:02d}",
                       hrefs=tuple(hrefs))


def task_for(observations, *, col, row, shape=(30, 34)):
    """A cell whose first pixel is `col`, `row` 10 m pixels right of and below the sources' corner
    (negative: outside them), so odd offsets fall inside a 20 m mask pixel."""
    period = Period(start=datetime(2024, 1, 1, tzinfo=UTC), end=datetime(2024, 1, 31, tzinfo=UTC),
                    label="2024-01--P1M")
    return Task(key=(0, 0), crs=CRS, transform=(10.0, 0.0, X0 + 10 * col, 0.0, -10.0, Y0 - 10 * row),
                shape_yx=shape, period=period, observations=tuple(observations))
