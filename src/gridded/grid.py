"""Grid files -> odc-geo GridSpec; an extent's geometry -> the cells it touches."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import shapely
import shapely.geometry
from odc.geo import XY
from odc.geo.geobox import GeoBox
from odc.geo.geom import BoundingBox, Geometry
from odc.geo.gridspec import GridSpec

from ._data import load_recipe_yaml
from .errors import ConfigError

UTM_NAME = re.compile(r"^utm(?P<zone>\d{1,2})(?P<hemi>[ns])-(?P<res>10|20|30|60)m$")
# the UTM zone of the extent's centre, at 10 m (`auto`, `utm-10m`) or another resolution
AUTO_UTM = re.compile(r"^(auto|utm-(?P<res>10|20|30|60)m)$")
UTM_TILE_PX = 2048  # pixels a side of a UTM grid's cells (20,480 m at 10 m)
# a plan larger than these is a typo (the whole globe at 10 m is 5e12 pixels), not a job; the
# bbox of continental Africa at 10 m, the largest job in practice, is about 6e11 pixels
MAX_CELLS = 1_000_000
MAX_PIXELS = 1_000_000_000_000
# how far past its CRS's area of use a grid may be asked to reach: 10 degrees, or east-west a
# quarter of the area's width when that is less (1.5 degrees beside a 6-degree UTM zone, where
# Sentinel-2's own tiles end; the next zone's grid is the one to use beyond that)
AREA_OF_USE_MARGIN_DEG = 10.0
AREA_OF_USE_MARGIN_OF_WIDTH = 0.25
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



def load_grid(name_or_path: str, *, extent: Geometry | None = None) -> Grid:
    """A built-in grid name, `utmNNs-10m` (zone, hemisphere, 10/20/30/60 m), `auto` or `utm-30m`
    (the UTM zone of the extent's centre), or a YAML file -> Grid."""
    auto = AUTO_UTM.match(name_or_path)
    if auto:
        if extent is None:
            raise ConfigError(f"--grid {name_or_path}: picks the UTM zone of the extent, which is not known here; "
                              f"name the zone, e.g. --grid utm55s-10m")
        name_or_path = f"{utm_zone_of(extent)}-{auto['res'] or 10}m"
    m = UTM_NAME.match(name_or_path)
    if m:
        zone = int(m["zone"])
        if not 1 <= zone <= 60:
            raise ConfigError(f"--grid {name_or_path}: UTM zone must be 1..60, got {zone}")
        epsg = (32600 if m["hemi"] == "n" else 32700) + zone
        resolution = int(m["res"])
        tile = UTM_TILE_PX * resolution
        return Grid(name=name_or_path, crs=f"EPSG:{epsg}", resolution=resolution, tile_size=(tile, tile))
    path, doc = load_recipe_yaml("grids", name_or_path, flag="--grid")
    return grid_from_mapping(doc, where=str(path))


def utm_zone_of(extent: Geometry) -> str:
    """`utmNNh`: the UTM zone and hemisphere of a lon/lat geometry's centre."""
    lon, lat = extent.geom.centroid.coords[0]
    zone = min(60, int((lon + 180) // 6) + 1)
    return f"utm{zone}{'n' if lat >= 0 else 's'}"


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


def _check_area_of_use(grid: Grid, extent: Geometry) -> None:
    """Refuse an extent far outside where the grid's CRS is meant to be used (e.g. the globe in UTM)."""
    from pyproj import CRS

    area = CRS.from_user_input(grid.crs).area_of_use
    if area is None:
        return
    minx, miny, maxx, maxy = extent.boundingbox
    east_west = min(AREA_OF_USE_MARGIN_DEG, AREA_OF_USE_MARGIN_OF_WIDTH * (area.east - area.west))
    beyond_ew = max(area.west - minx, maxx - area.east)
    if area.west > area.east:  # an area of use across the antimeridian: don't second-guess it
        beyond_ew, east_west = 0.0, AREA_OF_USE_MARGIN_DEG
    beyond_ns = max(area.south - miny, maxy - area.north)
    if beyond_ew > east_west or beyond_ns > AREA_OF_USE_MARGIN_DEG:
        beyond = max(beyond_ew, beyond_ns)
        raise ConfigError(
            f"--extent reaches {beyond:.1f} degrees beyond where {grid.crs} (grid {grid.name}) is meant to be used "
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


OUTLINE_POINTS_PER_SIDE = 32  # a cell's edges follow the projection's curves in lon/lat: this many steps a side


@lru_cache(maxsize=64)
def _to_lonlat(crs: str):
    from pyproj import Transformer

    return Transformer.from_crs(crs, "EPSG:4326", always_xy=True)


def outline_lonlat(geobox: GeoBox) -> shapely.Polygon:
    """A cell's outline in lon/lat: its four edges in OUTLINE_POINTS_PER_SIDE steps each, projected in
    one call (a 96 km cell needs tens of points, not the thousands a densify at pixel steps makes)."""
    ny, nx = geobox.shape
    a, _, c, _, e, f = tuple(geobox.affine)[:6]
    t = np.linspace(0.0, 1.0, OUTLINE_POINTS_PER_SIDE, endpoint=False)
    cols = np.concatenate([t * nx, np.full_like(t, nx), (1 - t) * nx, np.zeros_like(t), [0.0]])
    rows = np.concatenate([np.zeros_like(t), t * ny, np.full_like(t, ny), (1 - t) * ny, [0.0]])
    lon, lat = _to_lonlat(str(geobox.crs)).transform(c + a * cols, f + e * rows)
    return shapely.Polygon(np.column_stack([lon, lat]))


def outlines_lonlat(geoboxes: list[GeoBox]) -> np.ndarray:
    """The lon/lat outlines (as outline_lonlat makes them) of cells of one CRS, in one projection
    call: an array of shapely polygons."""
    if not geoboxes:
        return np.array([], dtype=object)
    t = np.linspace(0.0, 1.0, OUTLINE_POINTS_PER_SIDE, endpoint=False)
    unit_cols = np.concatenate([t, np.ones_like(t), 1 - t, np.zeros_like(t), [0.0]])
    unit_rows = np.concatenate([np.zeros_like(t), t, np.ones_like(t), 1 - t, [0.0]])
    a, c, e, f, nx, ny = (np.array(v, dtype=float) for v in zip(*(
        (g.affine.a, g.affine.c, g.affine.e, g.affine.f, g.shape[1], g.shape[0]) for g in geoboxes)))
    xs = c[:, None] + (a * nx)[:, None] * unit_cols[None, :]
    ys = f[:, None] + (e * ny)[:, None] * unit_rows[None, :]
    lon, lat = _to_lonlat(str(geoboxes[0].crs)).transform(xs, ys)
    return shapely.polygons(np.stack([lon, lat], axis=-1))


@lru_cache(maxsize=4096)
def cell_outline_lonlat(geobox: GeoBox) -> tuple[dict, tuple[float, float, float, float]]:
    """A cell's outline in lon/lat as GeoJSON, and its bbox: the same for every period of the cell,
    so made once per cell."""
    outline = outline_lonlat(geobox)
    return shapely.geometry.mapping(outline), tuple(outline.bounds)
