"""Grid files -> odc-geo GridSpec; an extent (bbox, GeoJSON, WKT) -> the cells it touches."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import shapely
import shapely.wkt
from odc.geo import XY
from odc.geo.geobox import GeoBox
from odc.geo.geom import BoundingBox, Geometry
from odc.geo.gridspec import GridSpec
from shapely.geometry import box, shape

from .errors import ConfigError
from .resources import load_recipe_yaml

UTM_NAME = re.compile(r"^utm(?P<zone>\d{1,2})(?P<hemi>[ns])-10m$")
UTM_TILE_M = 20480
# a plan larger than these is a typo (the whole globe at 10 m is 5e12 pixels), not a job; the
# bbox of continental Africa at 10 m, the largest job in practice, is about 6e11 pixels
MAX_CELLS = 1_000_000
MAX_PIXELS = 1_000_000_000_000
AREA_OF_USE_MARGIN_DEG = 10.0  # how far past its CRS's area of use a grid may be asked to reach
EDGE_STEP_DEG = 0.05  # lon/lat edges are curves in a projected CRS: points along them before projecting


@dataclass(frozen=True, slots=True, kw_only=True)
class Grid:
    """A tiling of a CRS: square-or-not tiles of whole pixels from an origin."""

    name: str
    crs: str
    resolution: float
    tile_size: tuple[float, float]  # (x, y) in CRS units
    origin: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self):
        where = self.name
        if not (self.resolution > 0 and math.isfinite(self.resolution)):
            raise ConfigError(
                f"{where}: resolution must be positive, got {self.resolution}; set e.g. resolution: 10"
            )
        for size in self.tile_size:
            if not (size > 0 and math.isfinite(size)):
                raise ConfigError(f"{where}: tile_size must be positive, got {size}; set e.g. tile_size: 96000")
            pixels = size / self.resolution
            if abs(pixels - round(pixels)) > 1e-6:
                raise ConfigError(
                    f"{where}: tile_size {size} is not a whole number of {self.resolution} pixels; "
                    f"use a multiple of the resolution"
                )

    @property
    def tile_shape_px(self) -> tuple[int, int]:
        """(ny, nx) pixels per tile."""
        return (round(self.tile_size[1] / self.resolution), round(self.tile_size[0] / self.resolution))

    @property
    def gridspec(self) -> GridSpec:
        ny, nx = self.tile_shape_px
        return GridSpec(self.crs, (ny, nx), self.resolution, origin=XY(*self.origin))

    def geobox(self, key: tuple[int, int]) -> GeoBox:
        return self.gridspec.tile_geobox(key)



def load_grid(name_or_path: str) -> Grid:
    """A built-in grid name, a `utmNNs-10m` name or a YAML file -> Grid."""
    m = UTM_NAME.match(name_or_path)
    if m:
        zone = int(m["zone"])
        if not 1 <= zone <= 60:
            raise ConfigError(f"--grid {name_or_path}: UTM zone must be 1..60, got {zone}")
        epsg = (32600 if m["hemi"] == "n" else 32700) + zone
        return Grid(name=name_or_path, crs=f"EPSG:{epsg}", resolution=10, tile_size=(UTM_TILE_M, UTM_TILE_M))
    path, doc = load_recipe_yaml("grids", name_or_path, flag="--grid")
    return grid_from_mapping(doc, where=str(path))


def grid_from_mapping(doc, *, where: str) -> Grid:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: a grid is a mapping with crs, resolution, tile_size")
    unknown = set(doc) - {"crs", "resolution", "tile_size", "origin", "name"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: crs, resolution, tile_size, origin")
    for key in ("crs", "resolution", "tile_size"):
        if key not in doc:
            raise ConfigError(f"{where}: missing {key}; a grid needs crs, resolution and tile_size")
    crs = str(doc["crs"])
    try:
        from pyproj import CRS

        CRS.from_user_input(crs)
    except Exception as err:
        raise ConfigError(f"{where}: crs {crs!r} is not a CRS; use e.g. crs: EPSG:32755") from err
    try:
        resolution = float(doc["resolution"])
        tile = doc["tile_size"]
        tile_size = (float(tile[0]), float(tile[1])) if isinstance(tile, (list, tuple)) else (float(tile), float(tile))
        origin = tuple(float(v) for v in doc.get("origin", (0, 0)))
    except (TypeError, ValueError, IndexError) as err:
        raise ConfigError(f"{where}: resolution, tile_size and origin must be numbers ({err})") from err
    if len(origin) != 2 or not all(math.isfinite(v) for v in origin):
        raise ConfigError(f"{where}: origin must be [x, y], got {doc.get('origin')}")
    return Grid(name=str(doc.get("name", where)), crs=crs, resolution=resolution, tile_size=tile_size, origin=origin)


def parse_extent(text: str) -> Geometry:
    """A lon/lat bbox `minx,miny,maxx,maxy`, a GeoJSON file, or WKT (text or file) -> EPSG:4326 geometry."""
    text = text.strip()
    if re.fullmatch(r"[-+0-9.eE\s]+(,[-+0-9.eE\s]+){3}", text):
        return _bbox_extent(text)
    path = Path(text)
    if path.suffix.lower() in {".json", ".geojson", ".wkt"} or (len(text) < 4096 and path.is_file()):
        if not path.is_file():
            raise ConfigError(f"--extent {text}: file not found; give a GeoJSON file, WKT or minx,miny,maxx,maxy")
        body = path.read_text()
        if path.suffix.lower() == ".wkt":
            return _wkt_extent(body, where=text)
        return _geojson_extent(body, where=text)
    if re.match(r"^\s*(MULTI)?(POLYGON|POINT|LINESTRING)|^\s*GEOMETRYCOLLECTION", text, re.I):
        return _wkt_extent(text, where="--extent")
    raise ConfigError(
        f"--extent {text!r}: not a bbox, GeoJSON file or WKT; use minx,miny,maxx,maxy in degrees, "
        f"e.g. 146.9,-36.1,147.1,-35.9"
    )


def _bbox_extent(text: str) -> Geometry:
    try:
        minx, miny, maxx, maxy = (float(v) for v in text.split(","))
    except ValueError as err:
        raise ConfigError(f"--extent {text}: not four numbers; use minx,miny,maxx,maxy") from err
    if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
        raise ConfigError(f"--extent {text}: coordinates must be finite numbers")
    if not (-180 <= minx <= 180 and -180 <= maxx <= 180 and -90 <= miny <= 90 and -90 <= maxy <= 90):
        raise ConfigError(
            f"--extent {text}: out of range; longitudes are -180..180 and latitudes -90..90 (order minx,miny,maxx,maxy)"
        )
    if minx >= maxx or miny >= maxy:
        raise ConfigError(f"--extent {text}: min must be less than max; use minx,miny,maxx,maxy")
    return Geometry(box(minx, miny, maxx, maxy), crs="EPSG:4326")


def _geojson_extent(body: str, *, where: str) -> Geometry:
    try:
        doc = json.loads(body)
        if doc.get("type") == "FeatureCollection":
            geoms = [shape(f["geometry"]) for f in doc["features"]]
        elif doc.get("type") == "Feature":
            geoms = [shape(doc["geometry"])]
        else:
            geoms = [shape(doc)]
        geom = shapely.union_all(geoms)
    except Exception as err:
        raise ConfigError(f"--extent {where}: not a GeoJSON geometry, Feature or FeatureCollection ({err})") from err
    return _checked_lonlat(geom, where)


def _wkt_extent(body: str, *, where: str) -> Geometry:
    try:
        geom = shapely.wkt.loads(body)
    except Exception as err:
        raise ConfigError(f"{where}: not valid WKT ({err})") from err
    return _checked_lonlat(geom, where)


def _checked_lonlat(geom, where: str) -> Geometry:
    if geom.is_empty:
        raise ConfigError(f"--extent {where}: the geometry is empty")
    minx, miny, maxx, maxy = geom.bounds
    if not (-180 <= minx and maxx <= 180 and -90 <= miny and maxy <= 90):
        raise ConfigError(f"--extent {where}: coordinates must be lon/lat degrees (EPSG:4326)")
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    return Geometry(geom, crs="EPSG:4326")


def _check_area_of_use(grid: Grid, extent: Geometry) -> None:
    """Refuse an extent far outside where the grid's CRS is meant to be used (e.g. the globe in UTM)."""
    from pyproj import CRS

    area = CRS.from_user_input(grid.crs).area_of_use
    if area is None:
        return
    minx, miny, maxx, maxy = extent.boundingbox
    beyond = max(area.west - minx, maxx - area.east, area.south - miny, maxy - area.north)
    if area.west > area.east:  # an area of use across the antimeridian: don't second-guess it
        beyond = max(area.south - miny, maxy - area.north)
    if beyond > AREA_OF_USE_MARGIN_DEG:
        raise ConfigError(
            f"--extent reaches {beyond:.0f} degrees beyond where {grid.crs} (grid {grid.name}) is meant to be used "
            f"({area.west:g},{area.south:g},{area.east:g},{area.north:g}); use a grid for that area or a smaller extent"
        )


def cells_for_extent(grid: Grid, extent: Geometry) -> list[tuple[tuple[int, int], GeoBox]]:
    """The grid cells whose area intersects the extent's geometry (not only its bbox), sorted by key."""
    gs = grid.gridspec
    _check_area_of_use(grid, extent)
    region = extent.segmented(EDGE_STEP_DEG).to_crs(grid.crs)
    left, bottom, right, top = region.boundingbox
    if not all(math.isfinite(v) for v in (left, bottom, right, top)):
        raise ConfigError(f"--extent cannot be drawn in {grid.crs} (grid {grid.name}); use a smaller extent")
    tile_x, tile_y = grid.tile_size
    n_x = math.floor((right - grid.origin[0]) / tile_x) - math.floor((left - grid.origin[0]) / tile_x) + 1
    n_y = math.floor((top - grid.origin[1]) / tile_y) - math.floor((bottom - grid.origin[1]) / tile_y) + 1
    ny, nx = grid.tile_shape_px
    pixels = n_x * n_y * nx * ny
    if n_x * n_y > MAX_CELLS or pixels > MAX_PIXELS:
        raise ConfigError(
            f"--extent covers about {n_x * n_y:,} cells ({pixels:.1e} pixels) of grid {grid.name} "
            f"(limits {MAX_CELLS:,} cells, {MAX_PIXELS:.0e} pixels); split the extent or use a coarser grid"
        )
    cells = [
        (key, gbox)
        for key, gbox in gs.tiles(BoundingBox(left, bottom, right, top, grid.crs))
        if gbox.extent.intersects(region)
    ]
    return sorted(cells, key=lambda kv: (kv[0][1], kv[0][0]))
