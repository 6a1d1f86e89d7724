"""Synthetic Sentinel-2 L2A STAC items over continental Africa, as newline-delimited JSON, for plan.py.

One item per MGRS tile and acquisition. The tiles are those of the real MGRS lattice: in every UTM
zone from 28 to 39, 100 km squares with 109.8 km footprints (Sentinel-2's 9.8 km overlap), named
as MGRS names them (zone, latitude band, 100 km square letters: 33NTG), kept where the square's
centre lies in the bbox -18..52 E, -35..38 N and inside a coarse outline of Africa (and Madagascar)
written below. A tile is seen every 5 days (its first day set by its longitude, as its relative
orbit would), the platforms sentinel-2a and sentinel-2b alternating, at about 10:30 local solar
time.

Items are written in passes over the tiles, date by date, until the size asked for: a small size
covers the continent from 1 January onwards (1e4 items: 2,838 tiles seen 3 or 4 times, 1-20
January), a full pass is the whole of 2024 (73 or 74 items a tile, 207,762 items). Sizes beyond one
pass stay in 2024: pass p shifts every tile's acquisitions by p days, as if seen from p more
relative orbits (at most 5 passes, one item a tile a day: 1,038,708 items, so 1e6 is all 2024);
beyond that, the passes go on in 2023, 2022 and earlier, as an archive would.

Items are about 5 KB each (five assets with eo:bands, raster:bands and proj:* fields, links):
1e6 items make a 5 GB file, written as generated, never held in memory. The same size gives the
same file (a seeded generator).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

BBOX_LONLAT = (-18.0, -35.0, 52.0, 38.0)
COLLECTION = "sentinel-2-l2a"
HOST = "https://sentinel-cogs.example.invalid/sentinel-s2-l2a-cogs"
STAC_HOST = "https://stac.example.invalid/v1"
REVISIT_DAYS = 5
YEAR = 2024
TILE_STEP_M = 100_000
TILE_SIZE_M = 109_800

# A coarse outline of mainland Africa (lon, lat), clockwise from the Strait of Gibraltar, and of
# Madagascar: good to a tile or two, which is all a land test for 110 km tiles needs.
AFRICA_LONLAT = (
    (-5.9, 35.8), (-9.7, 30.6), (-13.2, 27.6), (-17.1, 21.0), (-16.5, 16.0), (-17.5, 14.7),
    (-16.8, 12.4), (-15.0, 10.8), (-13.3, 8.5), (-11.4, 6.9), (-7.5, 4.4), (-2.0, 4.8),
    (1.5, 6.2), (3.4, 6.4), (6.0, 4.3), (9.7, 4.0), (9.3, 1.0), (8.7, -0.6), (12.3, -6.0),
    (13.3, -9.0), (11.8, -17.2), (14.5, -22.9), (16.5, -28.6), (18.4, -34.2), (20.0, -34.8),
    (25.6, -34.0), (30.9, -30.0), (32.9, -26.0), (35.5, -24.0), (34.8, -19.8), (40.6, -14.6),
    (40.4, -10.5), (39.3, -6.8), (39.7, -4.0), (41.6, -1.7), (45.3, 2.0), (48.5, 5.3),
    (51.3, 11.8), (45.0, 10.4), (43.2, 11.6), (39.7, 15.6), (37.2, 19.6), (35.6, 23.9),
    (32.6, 29.9), (32.3, 31.3), (29.9, 31.2), (25.2, 31.6), (20.1, 32.1), (19.0, 30.3),
    (15.1, 32.4), (10.9, 33.8), (11.0, 37.1), (8.6, 36.9), (3.0, 36.8), (-1.9, 35.1),
)
MADAGASCAR_LONLAT = (
    (49.3, -12.0), (50.5, -15.5), (47.1, -24.9), (45.2, -25.5), (43.3, -22.0), (44.4, -16.2), (47.9, -13.6),
)
LAND_LONLAT = (AFRICA_LONLAT, MADAGASCAR_LONLAT)

# asset key -> (band name, title, centre wavelength um, FWHM um, gsd m)
REFLECTANCE = {
    "blue": ("B02", "Blue (band 2) - 10m", 0.49, 0.098),
    "green": ("B03", "Green (band 3) - 10m", 0.56, 0.045),
    "red": ("B04", "Red (band 4) - 10m", 0.665, 0.038),
    "nir": ("B08", "NIR 1 (band 8) - 10m", 0.842, 0.145),
}
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.1.0/schema.json",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Tile:
    """One MGRS tile: its name, UTM zone and EPSG code, upper-left corner and lon/lat footprint."""

    name: str  # 33NTG
    zone: int
    band: str
    square: str
    epsg: int
    ul_xy: tuple[float, float]
    footprint_lonlat: tuple[tuple[float, float], ...]  # closed ring, counter-clockwise
    centre_lonlat: tuple[float, float]


def on_land(lon: float, lat: float) -> bool:
    """Whether a point lies inside the coarse outline of Africa or Madagascar (even-odd rule)."""
    return any(_inside(lon, lat, ring) for ring in LAND_LONLAT)


def _inside(x: float, y: float, ring) -> bool:
    inside = False
    for (x1, y1), (x2, y2) in zip(ring, (*ring[1:], ring[0])):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def mgrs_name(zone: int, lat: float, easting: float, northing: float) -> tuple[str, str]:
    """MGRS latitude band and 100 km square letters (the AA scheme of WGS 84) of a UTM position;
    `northing` counts from the equator, negative south of it."""
    band = "CDEFGHJKLMNPQRSTUVWX"[int((lat + 80) // 8)]
    column = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")[(zone - 1) % 3][int(easting // TILE_STEP_M) - 1]
    rows = "ABCDEFGHJKLMNPQRSTUV"
    north = northing + (10_000_000 if northing < 0 else 0)
    row = rows[(int(north // TILE_STEP_M) + (5 if zone % 2 == 0 else 0)) % 20]
    return band, column + row


def africa_tiles() -> list[Tile]:
    """The MGRS tiles whose centre lies on land in the bbox, west to east, south to north."""
    from pyproj import Transformer

    minx, miny, maxx, maxy = BBOX_LONLAT
    tiles = []
    for zone in range(int((minx + 180) // 6) + 1, int((maxx + 180) // 6) + 2):
        to_lonlat = Transformer.from_crs(32600 + zone, 4326, always_xy=True)
        zone_west = -180 + 6 * (zone - 1)
        y_south = math.floor(-35 * 111_000 / TILE_STEP_M) * TILE_STEP_M - TILE_STEP_M
        for y0 in range(y_south, 4_300_000, TILE_STEP_M):
            for x0 in range(TILE_STEP_M, 900_000, TILE_STEP_M):
                half = TILE_SIZE_M / 2
                lon, lat = to_lonlat.transform(x0 + half, y0 + half)
                if not (zone_west <= lon < zone_west + 6 and minx <= lon <= maxx and miny <= lat <= maxy):
                    continue
                if not on_land(lon, lat):
                    continue
                band, square = mgrs_name(zone, lat, x0 + half, y0 + half)
                corners = [(x0, y0), (x0 + TILE_SIZE_M, y0), (x0 + TILE_SIZE_M, y0 + TILE_SIZE_M),
                           (x0, y0 + TILE_SIZE_M), (x0, y0)]
                ring = tuple((round(a, 6), round(b, 6)) for a, b in (to_lonlat.transform(x, y) for x, y in corners))
                south = lat < 0
                tiles.append(Tile(name=f"{zone}{band}{square}", zone=zone, band=band, square=square,
                                  epsg=(32700 if south else 32600) + zone,
                                  ul_xy=(float(x0), float(y0 + TILE_SIZE_M + (10_000_000 if south else 0))),
                                  footprint_lonlat=ring, centre_lonlat=(lon, lat)))
    return tiles


def acquisitions(tiles: list[Tile], n_items: int) -> Iterator[tuple[Tile, datetime, str]]:
    """(tile, acquisition time, platform) for the first `n_items` items, in passes (see the module
    docstring): date by date over every tile, 2024 first."""
    emitted = 0
    year = YEAR
    while True:
        days = (datetime(year + 1, 1, 1) - datetime(year, 1, 1)).days
        for shift in range(REVISIT_DAYS):
            for revisit in range(-(-days // REVISIT_DAYS)):
                for tile in tiles:
                    lon, lat = tile.centre_lonlat
                    phase = int((lon + 180) / 2.3) % REVISIT_DAYS  # neighbouring orbits, other days
                    day = revisit * REVISIT_DAYS + (phase + shift) % REVISIT_DAYS
                    if day >= days:
                        continue
                    # descending node at 10:30 local solar time; the satellite flies north to south
                    hours = 10.5 - lon / 15 - (lat + 35) / 73 * 0.004
                    when = datetime(year, 1, 1, tzinfo=UTC) + timedelta(days=day, hours=hours)
                    yield tile, when, "sentinel-2a" if (day // REVISIT_DAYS) % 2 == 0 else "sentinel-2b"
                    emitted += 1
                    if emitted >= n_items:
                        return
        year -= 1


def item_for(tile: Tile, when: datetime, platform: str, rng: random.Random) -> dict:
    """One Sentinel-2 L2A item as Earth Search publishes them (fewer assets)."""
    day = when.strftime("%Y%m%d")
    letter = "A" if platform.endswith("a") else "B"
    item_id = f"S2{letter}_{tile.name}_{day}_0_L2A"
    base = f"{HOST}/{tile.zone}/{tile.band}/{tile.square}/{when.year}/{when.month}/{item_id}"
    cloud = round(100 * rng.betavariate(0.45, 0.9), 6)
    lons = [p[0] for p in tile.footprint_lonlat]
    lats = [p[1] for p in tile.footprint_lonlat]
    x0, y0 = tile.ul_xy
    created = (when + timedelta(hours=5, minutes=rng.randrange(60))).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def raster(res: int, data_type: str, bits: int, **extra) -> list[dict]:
        return [{"nodata": 0, "data_type": data_type, "bits_per_sample": bits, "spatial_resolution": res, **extra}]

    assets = {}
    for key, (name, title, wavelength, fwhm) in REFLECTANCE.items():
        assets[key] = {
            "href": f"{base}/{name}.tif", "type": COG_TYPE, "title": title,
            "eo:bands": [{"name": name, "common_name": key, "description": title.split(" - ")[0],
                          "center_wavelength": wavelength, "full_width_half_max": fwhm}],
            "gsd": 10, "proj:shape": [10980, 10980], "proj:transform": [10, 0, x0, 0, -10, y0],
            "raster:bands": raster(10, "uint16", 15, scale=0.0001, offset=-0.1, unit="1"),
            "roles": ["data", "reflectance"],
        }
    assets["scl"] = {
        "href": f"{base}/SCL.tif", "type": COG_TYPE, "title": "Scene classification map (SCL)",
        "proj:shape": [5490, 5490], "proj:transform": [20, 0, x0, 0, -20, y0],
        "raster:bands": raster(20, "uint8", 8, unit="1"), "roles": ["data"],
    }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": EXTENSIONS,
        "id": item_id,
        "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in tile.footprint_lonlat]]},
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "properties": {
            "datetime": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "created": created, "updated": created,
            "platform": platform, "constellation": "sentinel-2", "instruments": ["msi"],
            "eo:cloud_cover": cloud,
            "s2:nodata_pixel_percentage": round(rng.random() * 20, 6),
            "s2:processing_baseline": "05.10",
            "s2:product_type": "S2MSI2A",
            "s2:product_uri": f"S2{letter}_MSIL2A_{day}T{when:%H%M%S}_N0510_R{rng.randrange(1, 144):03d}_"
                              f"T{tile.name}_{day}T{when.hour + 2:02d}{when:%M%S}.SAFE",
            "s2:datatake_id": f"GS2{letter}_{day}T{when:%H%M%S}_0{rng.randrange(10000, 99999)}_N05.10",
            "s2:mgrs_tile": tile.name,
            "mgrs:utm_zone": tile.zone, "mgrs:latitude_band": tile.band, "mgrs:grid_square": tile.square,
            "grid:code": f"MGRS-{tile.name}",
            "proj:code": f"EPSG:{tile.epsg}", "proj:epsg": tile.epsg,
            "view:sun_azimuth": round(120 + 40 * rng.random(), 6),
            "view:sun_elevation": round(35 + 30 * rng.random(), 6),
            "processing:software": {"sentinel2-to-stac": "0.1.1"},
        },
        "links": [
            {"rel": "self", "type": "application/geo+json",
             "href": f"{STAC_HOST}/collections/{COLLECTION}/items/{item_id}"},
            {"rel": "parent", "type": "application/json", "href": f"{STAC_HOST}/collections/{COLLECTION}"},
            {"rel": "collection", "type": "application/json", "href": f"{STAC_HOST}/collections/{COLLECTION}"},
            {"rel": "root", "type": "application/json", "href": f"{STAC_HOST}/"},
            {"rel": "thumbnail", "href": f"{base}/thumbnail.jpg"},
        ],
        "assets": assets,
        "collection": COLLECTION,
    }


def write_items(path: Path, n_items: int, *, seed: int = 2024, start: int = 0) -> dict:
    """Write `n_items` items to `path` as ndjson, one at a time; returns what was written: the count,
    bytes, tiles, and how many items fall in 2024. With `start`, the items from the start-th on (one
    part of a larger index, written a part at a time: the parts of a size together are its items,
    each part seeded of its own)."""
    tiles = africa_tiles()
    rng = random.Random(seed + start)
    n, in_year = 0, 0
    tmp = path.with_suffix(path.suffix + ".part")
    with tmp.open("w") as f:
        for tile, when, platform in itertools.islice(acquisitions(tiles, start + n_items), start, None):
            f.write(json.dumps(item_for(tile, when, platform, rng), separators=(",", ":")))
            f.write("\n")
            n += 1
            in_year += when.year == YEAR
    tmp.rename(path)
    return {"items": n, "bytes": path.stat().st_size, "tiles": len(tiles), "items_in_2024": in_year}
