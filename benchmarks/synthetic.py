"""A synthetic Sentinel-2 L2A-like year as a static STAC catalog of real COGs, for the benchmark.

Four 10 m bands (blue, green, red, nir, uint16, nodata 0) and a 20 m `scl` (uint8), one date every
ten days (two platforms alternating). The surface is a patchwork of parcels (crops with a seasonal
cycle and their own phase, forest, grass, bare soil, water) with sensor noise, so the COGs compress
about as real scenes do; each date has its own cloud cover (clear, broken or overcast) with cloud
cores and edges, thin cirrus, shadows cast at an offset, a few saturated pixels, and some dates a
swath edge (nodata). The scene origin lies on 5,120 m tile boundaries of a UTM grid, so a grid with
512-pixel tiles covers it exactly.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

CRS = "EPSG:32755"
EPSG = 32755
RESOLUTION_M = 10
TILE_PX = 512
ORIGIN_XY = (118 * TILE_PX * RESOLUTION_M, 1172 * TILE_PX * RESOLUTION_M)  # top-left, on tile boundaries
BANDS = {"blue": ("B02", 0.490), "green": ("B03", 0.560), "red": ("B04", 0.665), "nir": ("B08", 0.842)}
SCL_EXCLUDED = (0, 1, 3, 8, 9, 10)
START = datetime(2024, 1, 3, 0, 12, 41, tzinfo=UTC)
TIME = "2024-01-01/2024-12-31"
COLLECTION = "sentinel-2-l2a-bench"
# reflectance x 10,000 of the pure covers, per band (blue, green, red, nir)
SOIL = np.array([1100, 1400, 1700, 2400], dtype=np.float32)
LEAF = np.array([250, 550, 280, 4200], dtype=np.float32)
WATER = np.array([650, 700, 450, 180], dtype=np.float32)
CLOUD = np.array([6500, 6700, 6900, 7300], dtype=np.float32)


def smooth_field(rng, shape_yx, cells: int) -> np.ndarray:
    """A smooth random field in [0, 1): uniform noise on a coarse grid, bilinear to `shape_yx`."""
    ny, nx = shape_yx
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    ay = _bilinear_weights(ny, cells + 1)
    ax = _bilinear_weights(nx, cells + 1)
    field = ay @ coarse @ ax.T
    lo, hi = field.min(), field.max()
    return (field - lo) / max(hi - lo, 1e-6) * 0.999


def _bilinear_weights(n: int, m: int) -> np.ndarray:
    pos = np.linspace(0, m - 1, n, dtype=np.float32)
    lo = np.minimum(pos.astype(int), m - 2)
    frac = pos - lo
    w = np.zeros((n, m), dtype=np.float32)
    w[np.arange(n), lo] = 1 - frac
    w[np.arange(n), lo + 1] += frac
    return w


def landscape(rng, shape_yx) -> dict[str, np.ndarray]:
    """Parcels (about 40 pixels across) with a cover class, brightness and a seasonal phase each."""
    ny, nx = shape_yx
    parcel = 40
    py, px = -(-ny // parcel), -(-nx // parcel)
    cover = rng.choice(5, size=(py, px), p=[0.45, 0.2, 0.2, 0.1, 0.05])  # crop, forest, grass, soil, water
    phase = rng.uniform(0, 2 * np.pi, (py, px)).astype(np.float32)
    bright = rng.uniform(0.8, 1.2, (py, px)).astype(np.float32)

    def up(a):
        return np.repeat(np.repeat(a, parcel, 0), parcel, 1)[:ny, :nx]

    texture = 0.9 + 0.2 * smooth_field(rng, shape_yx, max(4, nx // 64))
    return {"cover": up(cover), "phase": up(phase), "bright": up(bright) * texture}


def surface(land: dict[str, np.ndarray], day_of_year: int) -> np.ndarray:
    """(4, y, x) float32 clear-sky reflectance x 10,000 on a day of the year."""
    season = np.float32(2 * np.pi * day_of_year / 365.0)
    cover, phase = land["cover"], land["phase"]
    green = np.select(
        [cover == 0, cover == 1, cover == 2, cover == 3],
        [0.5 + 0.45 * np.sin(season + phase), np.float32(0.85), 0.55 + 0.2 * np.sin(season), np.float32(0.05)],
        np.float32(0.0),
    ).astype(np.float32)
    mix = SOIL[:, None, None] * (1 - green) + LEAF[:, None, None] * green
    mix = np.where(cover == 4, WATER[:, None, None], mix)
    return mix * land["bright"]


def scene(rng, land, index: int, when: datetime, shape_yx) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(bands at 10 m as uint16, scl at 20 m as uint8) for one date."""
    ny, nx = shape_yx
    sy, sx = ny // 2, nx // 2
    kind = rng.random()
    cover = rng.uniform(0, 0.08) if kind < 0.4 else rng.uniform(0.1, 0.6) if kind < 0.8 else rng.uniform(0.6, 0.97)
    field = smooth_field(rng, (sy, sx), max(3, sx // 40))
    level = np.quantile(field, 1 - cover)
    core = field >= level
    edge = (field >= level - 0.04) & ~core  # cloud edge and thin cirrus
    cirrus = edge & (smooth_field(rng, (sy, sx), 6) > 0.5)
    shift = (rng.integers(4, 14), rng.integers(6, 20))
    shadow = np.roll(core, shift, axis=(0, 1)) & ~core & ~edge
    scl = np.where(land["cover"][::2, ::2] == 4, 6, np.where(land["cover"][::2, ::2] == 3, 5, 4)).astype(np.uint8)
    scl[shadow] = 3
    scl[cirrus] = 10
    scl[edge & ~cirrus] = 8
    scl[core] = 9
    scl[rng.random((sy, sx)) < 0.0005] = 1
    swath = np.zeros((sy, sx), dtype=bool)
    if index % 6 == 5:
        yy, xx = np.mgrid[0:sy, 0:sx]
        swath = xx + 0.8 * yy > sx * (0.7 + 0.1 * (index % 4))
        scl[swath] = 0

    def up(a):
        return np.repeat(np.repeat(a, 2, 0), 2, 1)

    values = surface(land, when.timetuple().tm_yday)
    values += rng.normal(0, 35, values.shape).astype(np.float32)
    u_core, u_edge, u_shadow = up(core), up(edge), up(shadow)
    thickness = up(np.clip((field - level) * 8, 0, 1)).astype(np.float32)
    values = np.where(u_core, CLOUD[:, None, None] * (0.7 + 0.3 * thickness) + values * 0.1, values)
    values = np.where(u_edge, values + 900, values)
    values = np.where(u_shadow, values * 0.35, values)
    out = np.clip(np.rint(values), 1, 10000).astype(np.uint16)
    out[:, up(swath)] = 0
    return {name: out[b] for b, name in enumerate(BANDS)}, scl


def _write_cog(path: Path, array: np.ndarray, res: float, nodata) -> None:
    import rasterio
    from rasterio.transform import from_origin

    ny, nx = array.shape
    with rasterio.open(
        path, "w", driver="COG", width=nx, height=ny, count=1, dtype=array.dtype.name, crs=CRS,
        transform=from_origin(ORIGIN_XY[0], ORIGIN_XY[1], res, res), nodata=nodata,
        BLOCKSIZE=512, COMPRESS="DEFLATE", PREDICTOR="YES", LEVEL=6, OVERVIEW_RESAMPLING="NEAREST",
    ) as dst:
        dst.write(array, 1)


def footprint_lonlat(shape_yx, inset_m: float = 0.0) -> list[tuple[float, float]]:
    """The scene's outline in lon/lat (densified), optionally inset by `inset_m` metres."""
    from pyproj import Transformer

    to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    x0, y0 = ORIGIN_XY
    x1, y1 = x0 + shape_yx[1] * RESOLUTION_M, y0 - shape_yx[0] * RESOLUTION_M
    x0, y0, x1, y1 = x0 + inset_m, y0 - inset_m, x1 - inset_m, y1 + inset_m
    t = np.linspace(0, 1, 17)
    xs = np.concatenate([x0 + (x1 - x0) * t, np.full(17, x1), x1 - (x1 - x0) * t, np.full(17, x0)])
    ys = np.concatenate([np.full(17, y0), y0 - (y0 - y1) * t, np.full(17, y1), y1 + (y0 - y1) * t])
    lons, lats = to_ll.transform(xs, ys)
    ring = list(zip(lons.tolist(), lats.tolist()))
    return ring + [ring[0]]


def write_catalog(root: Path, size_px: int, n_dates: int = 36, step_days: int = 10, seed: int = 7) -> dict:
    """Write the year under `root` (replacing it): COGs, a static STAC catalog, a grid and an extent file.

    Returns a dict with the paths (`catalog`, `grid`, `extent`), `time`, `shape_yx` and the items'
    asset paths, also saved as `root/layout.json`."""
    import pystac

    from gridded.demo import s2_item

    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    shape_yx = (size_px, size_px)
    land = landscape(rng, shape_yx)
    ring = footprint_lonlat(shape_yx)
    lons, lats = zip(*ring)
    bbox = [min(lons), min(lats), max(lons), max(lats)]
    collection = pystac.Collection(
        id=COLLECTION, description="A synthetic Sentinel-2 L2A-like year for gridded's benchmark",
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[START, START]])),
        license="CC0-1.0",
    )
    x0, y0 = ORIGIN_XY
    scenes = []
    for i in range(n_dates):
        when = START + timedelta(days=step_days * i)
        platform = "sentinel-2a" if i % 2 == 0 else "sentinel-2b"
        bands, scl = scene(rng, land, i, when, shape_yx)
        item_id = f"S2{'A' if i % 2 == 0 else 'B'}_55HFB_{when:%Y%m%d}_0_L2A"
        folder = root / "catalog" / COLLECTION / item_id
        folder.mkdir(parents=True)
        item = s2_item(item_id, ring, when, platform, scl, crs=CRS, updated="2025-01-15T00:00:00Z")
        paths = {}
        for key, values in bands.items():
            path = folder / f"{key}.tif"
            _write_cog(path, values, RESOLUTION_M, 0)
            name, wavelength = BANDS[key]
            item.add_asset(key, pystac.Asset(
                href=str(path), media_type=pystac.MediaType.COG, roles=["data"],
                extra_fields={
                    "eo:bands": [{"name": name, "common_name": key, "center_wavelength": wavelength}],
                    "raster:bands": [{"nodata": 0, "data_type": "uint16", "spatial_resolution": RESOLUTION_M}],
                    "proj:shape": list(shape_yx), "proj:transform": [RESOLUTION_M, 0, x0, 0, -RESOLUTION_M, y0],
                }))
            paths[key] = str(path)
        path = folder / "scl.tif"
        _write_cog(path, scl, 2 * RESOLUTION_M, 0)
        item.add_asset("scl", pystac.Asset(
            href=str(path), media_type=pystac.MediaType.COG, roles=["data"],
            extra_fields={
                "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 2 * RESOLUTION_M}],
                "proj:shape": [size_px // 2, size_px // 2],
                "proj:transform": [2 * RESOLUTION_M, 0, x0, 0, -2 * RESOLUTION_M, y0],
            }))
        paths["scl"] = str(path)
        collection.add_item(item)
        scenes.append({"id": item_id, "datetime": when.isoformat(), "platform": platform, "assets": paths})
    collection.update_extent_from_items()
    catalog = pystac.Catalog(id="gridded-bench", description="gridded benchmark source catalog")
    catalog.add_child(collection)
    catalog.normalize_hrefs(str(root / "catalog"))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    grid = root / "grid.yaml"
    grid.write_text(f"crs: {CRS}\nresolution: {RESOLUTION_M}\ntile_size: {TILE_PX * RESOLUTION_M}\norigin: [0, 0]\n")
    extent = root / "extent.geojson"
    inner = footprint_lonlat(shape_yx, inset_m=3 * RESOLUTION_M)  # only the cells under the scene
    extent.write_text(json.dumps({"type": "Polygon", "coordinates": [[list(p) for p in inner]]}))
    layout = {"catalog": str(root / "catalog" / "catalog.json"), "grid": str(grid), "extent": str(extent),
              "time": TIME, "shape_yx": list(shape_yx), "origin_xy": list(ORIGIN_XY), "crs": CRS,
              "resolution_m": RESOLUTION_M, "scenes": scenes}
    (root / "layout.json").write_text(json.dumps(layout, indent=1))
    return layout
