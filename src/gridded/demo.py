"""A synthetic Sentinel-2 L2A-like static STAC catalog: no network, known values.

Four 10 m bands (blue, green, red, nir) and a 20 m `scl`, every five days over three months,
two platforms, with clouds, shadows, cirrus, an always-cloudy patch in February, swath edges
(nodata) and days split over two granules (one observation once mosaicked).
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pystac
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin

from ._data import data_dir

CRS = "EPSG:32755"
BANDS = {"blue": ("B02", 490), "green": ("B03", 560), "red": ("B04", 665), "nir": ("B08", 842)}
ORIGIN_XY = (601_200.0, 6_001_800.0)  # top-left; a multiple of 20 m, not of the 2,560 m tiles
SHAPE_YX = (360, 480)  # 10 m pixels
DEMO_GRID = data_dir("grids") / "demo-utm55s-2560m.yaml"
DEMO_TIME = "2024-01-01/2024-03-31"
COLLECTION = "sentinel-2-l2a-demo"


def _extent_lonlat() -> str:
    to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    x0, y0 = ORIGIN_XY
    x1, y1 = x0 + SHAPE_YX[1] * 10, y0 - SHAPE_YX[0] * 10
    lons, lats = to_ll.transform([x0, x1, x0, x1], [y0, y0, y1, y1])
    return f"{min(lons):.6f},{min(lats):.6f},{max(lons):.6f},{max(lats):.6f}"


DEMO_EXTENT = _extent_lonlat()


def _write_cog(path: Path, array: np.ndarray, res: float, nodata) -> None:
    ny, nx = array.shape
    with rasterio.open(
        path, "w", driver="COG", width=nx, height=ny, count=1, dtype=array.dtype.name, crs=CRS,
        transform=from_origin(ORIGIN_XY[0], ORIGIN_XY[1], res, res), nodata=nodata,
        BLOCKSIZE=256, COMPRESS="DEFLATE", PREDICTOR="YES",
    ) as dst:
        dst.write(array, 1)


def _blobs(rng, shape_yx, n, radius) -> np.ndarray:
    yy, xx = np.mgrid[0:shape_yx[0], 0:shape_yx[1]]
    out = np.zeros(shape_yx, bool)
    for _ in range(n):
        cy, cx = rng.uniform(0, shape_yx[0]), rng.uniform(0, shape_yx[1])
        ry, rx = rng.uniform(0.4, 1.0, 2) * radius
        out |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return out


def scene_arrays(rng, index: int, when: datetime, shape_yx=SHAPE_YX):
    """(bands at 10 m, scl at 20 m) for one date: surface, clouds, shadows, swath edge."""
    ny, nx = shape_yx
    sy, sx = ny // 2, nx // 2
    scl = np.full((sy, sx), 4, np.uint8)  # vegetation
    scl[: sy // 3, : sx // 4] = 5  # bare soil
    scl[sy - 8:, sx // 2: sx // 2 + 30] = 6  # water
    cloud = _blobs(rng, (sy, sx), 3, 22)
    scl[cloud] = 9
    scl[_blobs(rng, (sy, sx), 2, 12) & ~cloud] = 8
    scl[_blobs(rng, (sy, sx), 1, 15) & ~cloud] = 10
    shadow = np.roll(cloud, (6, 9), axis=(0, 1)) & ~cloud
    scl[shadow] = 3
    if when.month == 2:  # an always-cloudy patch all February
        scl[20:40, 30:60] = 9
    scl[rng.random((sy, sx)) < 0.002] = 1  # saturated pixels
    yy, xx = np.mgrid[0:ny, 0:nx]
    swath = np.zeros((ny, nx), bool)
    if index % 5 == 4:  # a swath edge crossing the scene diagonally
        swath = xx + 1.3 * yy > nx * 0.9 + 40 * (index % 3)
    scl_nodata = swath[1::2, 1::2]
    scl[scl_nodata] = 0
    up = np.repeat(np.repeat(scl, 2, 0), 2, 1)
    bands = {}
    season = 1.0 + 0.15 * np.sin(when.timetuple().tm_yday / 58.0)
    for b, name in enumerate(BANDS):  # the common name
        base = 300 + 300 * b + 8 * xx / nx * 100 + 5 * yy / ny * 100
        values = base * season + rng.normal(0, 40, (ny, nx))
        values = np.where(np.isin(up, (8, 9, 10)), 6000 + rng.normal(0, 300, (ny, nx)), values)
        values = np.where(up == 3, values * 0.3, values)
        values = np.clip(np.rint(values), 1, 10000).astype(np.uint16)
        values[swath] = 0
        bands[name] = values
    return bands, scl


def s2_item(item_id: str, ring_lonlat, when: datetime, platform: str, scl: np.ndarray, *, crs: str,
            updated: str) -> pystac.Item:
    """A Sentinel-2 L2A-like item without assets: footprint, platform, projection and the cloud
    cover its scene classes give (the demo's and the benchmark's synthetic catalogs)."""
    lons, lats = zip(*ring_lonlat)
    return pystac.Item(
        id=item_id, geometry={"type": "Polygon", "coordinates": [[list(p) for p in ring_lonlat]]},
        bbox=[min(lons), min(lats), max(lons), max(lats)], datetime=when,
        properties={"platform": platform, "constellation": "sentinel-2", "instruments": ["msi"],
                    "proj:code": crs, "eo:cloud_cover": round(float(np.isin(scl, (8, 9, 10)).mean() * 100), 2),
                    "updated": updated},
        stac_extensions=["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                         "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
                         "https://stac-extensions.github.io/raster/v1.1.0/schema.json"],
    )


def _item(root: Path, item_id: str, when: datetime, platform: str, bands, scl, keep_cols=None) -> pystac.Item:
    folder = root / COLLECTION / item_id
    folder.mkdir(parents=True, exist_ok=True)
    if keep_cols is not None:  # one granule of a split day: the rest of the scene is nodata
        lo, hi = keep_cols
        bands = {k: v.copy() for k, v in bands.items()}
        scl = scl.copy()
        for v in bands.values():
            v[:, :lo] = 0
            v[:, hi:] = 0
        scl[:, : lo // 2] = 0
        scl[:, hi // 2:] = 0
    to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    x0, y0 = ORIGIN_XY
    cols = keep_cols or (0, SHAPE_YX[1])
    xa, xb = x0 + cols[0] * 10, x0 + cols[1] * 10
    yb = y0 - SHAPE_YX[0] * 10
    ring = [to_ll.transform(x, y) for x, y in [(xa, y0), (xb, y0), (xb, yb), (xa, yb), (xa, y0)]]
    item = s2_item(item_id, ring, when, platform, scl, crs=CRS, updated="2024-04-01T00:00:00Z")
    for key, values in bands.items():
        path = folder / f"{key}.tif"
        _write_cog(path, values, 10, 0)
        name, wavelength = BANDS[key]
        item.add_asset(key, pystac.Asset(
            href=str(path), media_type=pystac.MediaType.COG, roles=["data"],
            extra_fields={"eo:bands": [{"name": name, "common_name": key, "center_wavelength": wavelength / 1000}],
                          "raster:bands": [{"nodata": 0, "data_type": "uint16", "spatial_resolution": 10}]}))
    path = folder / "scl.tif"
    _write_cog(path, scl, 20, 0)
    item.add_asset("scl", pystac.Asset(
        href=str(path), media_type=pystac.MediaType.COG, roles=["data"],
        extra_fields={"raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}]}))
    return item


def write_demo_catalog(root: Path | str, *, seed: int = 20240101, start: datetime | None = None,
                       n_dates: int = 18, step_days: int = 5) -> Path:
    """Write the synthetic catalog under `root` (replacing it) and return its catalog.json path."""
    root = Path(root).resolve()  # asset hrefs are made relative to item files: both must be absolute first
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    start = start or datetime(2024, 1, 2, 0, 5, 31, tzinfo=UTC)
    collection = pystac.Collection(
        id=COLLECTION, description="Synthetic Sentinel-2 L2A-like scenes written by `gridded demo`",
        extent=pystac.Extent(pystac.SpatialExtent([[0.0, 0.0, 0.0, 0.0]]), pystac.TemporalExtent([[start, start]])),
        license="CC0-1.0",
    )
    for i in range(n_dates):
        when = start + timedelta(days=step_days * i)
        platform = "sentinel-2a" if i % 2 == 0 else "sentinel-2b"
        bands, scl = scene_arrays(rng, i, when)
        stamp = when.strftime("%Y%m%d")
        code = "S2A" if platform.endswith("a") else "S2B"
        if i % 7 == 3:  # the scene comes as two overlapping granules of the same pass
            collection.add_item(_item(root, f"{code}_55HFA_{stamp}_0_L2A", when, platform, bands, scl, (0, 300)))
            collection.add_item(_item(root, f"{code}_55HGA_{stamp}_0_L2A", when + timedelta(seconds=4),
                                      platform, bands, scl, (240, SHAPE_YX[1])))
        else:
            collection.add_item(_item(root, f"{code}_55HFA_{stamp}_0_L2A", when, platform, bands, scl))
    collection.update_extent_from_items()
    catalog = pystac.Catalog(id="gridded-demo", description="gridded demo source catalog")
    catalog.add_child(collection)
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"
