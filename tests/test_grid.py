"""grid.py: grid files -> Grid, extents -> geometry, extent -> cells (checked with pyproj + shapely)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from odc.geo.gridspec import GridSpec
from pyproj import CRS, Transformer
from shapely.geometry import Polygon, box

from gridded.errors import ConfigError
from gridded.extent import parse_extent
from gridded.grid import Grid, cells_for_extent, load_grid

VALID_GRID = "crs: EPSG:3577\nresolution: 30\ntile_size: 96000\norigin: [0, 0]\n"


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def cell_bounds(grid: Grid, key: tuple[int, int]) -> tuple[float, float, float, float]:
    """The cell (ix, iy) as the design keys it: [origin + i * tile, origin + (i + 1) * tile] on each axis."""
    (ox, oy), (tx, ty) = grid.origin, grid.tile_size
    ix, iy = key
    return (ox + ix * tx, oy + iy * ty, ox + (ix + 1) * tx, oy + (iy + 1) * ty)


def dense_lonlat_ring(minx, miny, maxx, maxy, crs: str, n: int = 200) -> Polygon:
    """A lon/lat bbox in another CRS, its edges followed closely (parallels and meridians are curves there)."""
    to_crs = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    lons = np.concatenate([np.linspace(minx, maxx, n), np.full(n, maxx), np.linspace(maxx, minx, n), np.full(n, minx)])
    lats = np.concatenate([np.full(n, miny), np.linspace(miny, maxy, n), np.full(n, maxy), np.linspace(maxy, miny, n)])
    xs, ys = to_crs.transform(lons, lats)
    return Polygon(np.c_[xs, ys])


# --- grids -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, epsg, resolution, tile",
    [
        ("au-albers-30m", 3577, 30, 96000),
        ("africa-10m", 6933, 10, 96000),
        ("utm55s-10m", 32755, 10, 20480),
        ("utm33n-10m", 32633, 10, 20480),
    ],
)
def test_builtin_grids_load(name, epsg, resolution, tile):
    grid = load_grid(name)
    assert CRS.from_user_input(grid.crs).to_epsg() == epsg
    assert grid.resolution == resolution
    assert grid.tile_size == (tile, tile)
    assert grid.origin == (0, 0)
    assert grid.tile_shape_px == (tile // resolution, tile // resolution)


@pytest.mark.parametrize("name", ["utm0s-10m", "utm61n-10m", "no-such-grid"])
def test_unknown_builtin_grid_is_config_error(name):
    with pytest.raises(ConfigError, match=name):
        load_grid(name)


def test_grid_yaml_file_loads(tmp_path):
    path = write(tmp_path, "albers.yaml",
                 "crs: EPSG:3577\nresolution: 30\ntile_size: [96000, 48000]\norigin: [15, -15]\n")
    grid = load_grid(str(path))
    assert CRS.from_user_input(grid.crs).to_epsg() == 3577
    assert grid.resolution == 30
    assert grid.tile_size == (96000, 48000)
    assert grid.origin == (15, -15)
    assert grid.tile_shape_px == (1600, 3200)  # (ny, nx)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("crs: EPSG:3577\nresolution: -30\ntile_size: 96000\n", r"resolution must be positive, got -30"),
        ("crs: EPSG:3577\nresolution: 0\ntile_size: 96000\n", r"resolution must be positive"),
        ("crs: EPSG:3577\nresolution: 30\ntile_size: 1000\n", r"tile_size 1000.* not a whole number of 30"),
        ("crs: EPSG:3577\nresolution: 30\ntile_size: [96000, 1000]\n", r"tile_size 1000.* not a whole number"),
        ("crs: EPSG:3577\nresolution: 30\ntile_size: -96000\n", r"tile_size must be positive"),
        ("crs: EPSG:3577\ntile_size: 96000\n", r"missing resolution"),
        ("resolution: 30\ntile_size: 96000\n", r"missing crs"),
        ("crs: EPSG:3577\nresolution: 30\n", r"missing tile_size"),
        (VALID_GRID + "tilesize: 96000\n", r"unknown key\(s\) tilesize"),
        ("crs: EPSG:3577\nresolution: [30\ntile_size: 96000\n", r"not valid YAML"),
        ("crs: EPSG:3577\n  resolution: 30\n: : :\n", r"not valid YAML"),
        ("just some words\n", r"a grid is a mapping"),
        ("", r"a grid is a mapping"),
        ("crs: EPSG:999999\nresolution: 30\ntile_size: 96000\n", r"crs 'EPSG:999999' is not a CRS"),
        ("crs: EPSG:3577\nresolution: thirty\ntile_size: 96000\n", r"must be numbers"),
        ("crs: EPSG:3577\nresolution: 30\ntile_size: 96000\norigin: [1, 2, 3]\n", r"origin must be \[x, y\]"),
        ("crs: EPSG:3577\nresolution: 30\ntile_size: .inf\n", r"tile_size"),
        ("crs: EPSG:3577\nresolution: .nan\ntile_size: 96000\n", r"resolution"),
    ],
)
def test_bad_grid_file_names_file_and_problem(tmp_path, text, problem):
    path = write(tmp_path, "bad-grid.yaml", text)
    with pytest.raises(ConfigError, match=problem) as err:
        load_grid(str(path))
    assert "bad-grid.yaml" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_grid_file_is_config_error(tmp_path):
    missing = tmp_path / "nowhere" / "grid.yaml"
    with pytest.raises(ConfigError, match="file not found") as err:
        load_grid(str(missing))
    assert str(missing) in str(err.value)


# --- extents ---------------------------------------------------------------------------------


def test_bbox_extent():
    geom = parse_extent(" 146.9,-36.1,147.1,-35.9 ")
    assert geom.crs.epsg == 4326
    assert geom.geom.equals(box(146.9, -36.1, 147.1, -35.9))


SQUARE = {"type": "Polygon", "coordinates": [[[146, -36], [147, -36], [147, -35], [146, -35], [146, -36]]]}
OTHER = {"type": "Polygon", "coordinates": [[[148, -36], [149, -36], [149, -35], [148, -35], [148, -36]]]}


@pytest.mark.parametrize(
    "doc, expected",
    [
        (SQUARE, shapely.geometry.shape(SQUARE)),
        ({"type": "Feature", "properties": {}, "geometry": SQUARE}, shapely.geometry.shape(SQUARE)),
        (
            {"type": "FeatureCollection", "features": [
                {"type": "Feature", "properties": {}, "geometry": SQUARE},
                {"type": "Feature", "properties": {}, "geometry": OTHER},
            ]},
            shapely.MultiPolygon([shapely.geometry.shape(SQUARE), shapely.geometry.shape(OTHER)]),
        ),
    ],
    ids=["geometry", "feature", "feature-collection"],
)
@pytest.mark.parametrize("suffix", [".geojson", ".json"])
def test_geojson_extent(tmp_path, doc, expected, suffix):
    path = write(tmp_path, f"area{suffix}", json.dumps(doc))
    geom = parse_extent(str(path))
    assert geom.crs.epsg == 4326
    assert geom.geom.equals(expected)


WKT = "POLYGON ((146 -36, 147 -36, 147 -35, 146 -35, 146 -36))"


def test_wkt_text_extent():
    geom = parse_extent(WKT)
    assert geom.crs.epsg == 4326
    assert geom.geom.equals(box(146, -36, 147, -35))


def test_wkt_file_extent(tmp_path):
    path = write(tmp_path, "area.wkt", WKT + "\n")
    assert parse_extent(str(path)).geom.equals(box(146, -36, 147, -35))


@pytest.mark.parametrize(
    "text, problem",
    [
        ("-181,0,0,1", "out of range"),
        ("0,-91,1,0", "out of range"),
        ("0,0,181,1", "out of range"),
        ("147,-35,146,-34", "min must be less than max"),
        ("146,-35,147,-36", "min must be less than max"),
        ("146,-35,146,-34", "min must be less than max"),
        ("146,-35,147", "not a bbox"),
        ("146,-35,147,-34,1", "not a bbox"),
        ("a,b,c,d", "not a bbox"),
        ("1e,2,3,4", "not four numbers"),
        ("", "not a bbox"),
        ("   ", "not a bbox"),
        ("POLYGON ((146 -36, 147", "not valid WKT"),
        ("POLYGON EMPTY", "empty"),
        ("POLYGON ((146 -36, 247 -36, 247 -35, 146 -36))", "lon/lat"),
    ],
)
def test_bad_extent_is_config_error(text, problem):
    with pytest.raises(ConfigError, match=problem) as err:
        parse_extent(text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name, body, problem",
    [
        ("area.geojson", "{not json", "not GeoJSON"),
        ("area.geojson", "null", "not GeoJSON"),
        ("area.geojson", json.dumps({"type": "FeatureCollection", "features": []}), "empty"),
        ("area.geojson", json.dumps({"type": "Point", "coordinates": [500, 0]}), "lon/lat"),
        ("area.wkt", "LINESTRING (0 0,", "not valid WKT"),
        ("area.wkt", "", "not valid WKT|empty"),
    ],
)
def test_bad_extent_file_is_config_error(tmp_path, name, body, problem):
    path = write(tmp_path, name, body)
    with pytest.raises(ConfigError, match=problem) as err:
        parse_extent(str(path))
    assert name in str(err.value)


def test_missing_extent_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        parse_extent(str(tmp_path / "missing.geojson"))


# --- extent -> cells -------------------------------------------------------------------------

# A grid in lon/lat itself: the extent needs no reprojection, so which cells a shape meets is exact.
GEO_GRID = Grid(name="geo-1deg", crs="EPSG:4326", resolution=0.25, tile_size=(1.0, 1.0))


def test_cells_follow_an_l_shaped_geometry_not_its_bbox():
    # the L's bbox (0.2..2.8 both ways) touches the 3x3 cells 0..2; the L itself only the bottom row and left column
    l_shape = "POLYGON ((0.2 0.2, 2.8 0.2, 2.8 0.8, 0.8 0.8, 0.8 2.8, 0.2 2.8, 0.2 0.2))"
    cells = cells_for_extent(GEO_GRID, parse_extent(l_shape))
    keys = [k for k, _ in cells]
    assert sorted(keys) == sorted([(0, 0), (1, 0), (2, 0), (0, 1), (0, 2)])
    assert len(set(keys)) == len(keys)
    for key, gbox in cells:
        assert gbox.extent.boundingbox.bbox == pytest.approx(cell_bounds(GEO_GRID, key))
        assert gbox.shape == (4, 4)


def test_cells_follow_a_thin_diagonal_triangle_in_utm():
    # a sliver (400 m wide at its base, tapering to a point) across a 6x6-cell block of the 20.48 km
    # UTM 55S grid along y = x + 6 km, so it passes no cell corner closer than 4 km; its bbox is the block
    grid = load_grid("utm55s-10m")
    tile = 20480.0
    x0, y0 = 24 * tile, 290 * tile
    sliver = Polygon([(x0 + 1000, y0 + 7000), (x0 + 6 * tile - 7000, y0 + 6 * tile - 1000), (x0 + 1000, y0 + 7400)])
    # vertices every 200 m, so straight lon/lat edges and their UTM images agree to well under a metre
    sliver = shapely.segmentize(sliver, 200)
    to_ll = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    wkt = Polygon([to_ll.transform(x, y) for x, y in sliver.exterior.coords]).wkt
    cells = {k for k, _ in cells_for_extent(grid, parse_extent(wkt))}

    # independent expectation: cell squares against the sliver in UTM
    block = {(ix, iy) for ix in range(24, 30) for iy in range(290, 296)}
    crossed = {k for k in block if box(*cell_bounds(grid, k)).intersection(sliver).area > 1e4}
    missed = {k for k in block if box(*cell_bounds(grid, k)).distance(sliver) > 100}
    assert crossed | missed == block
    assert len(crossed) >= 6 and len(missed) >= 20  # most of the bbox holds no part of the sliver
    assert cells == crossed


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    grid=st.sampled_from([
        load_grid("utm55s-10m"),
        load_grid("au-albers-30m"),
        Grid(name="albers-3840m", crs="EPSG:3577", resolution=30, tile_size=(3840, 3840), origin=(15, -15)),
    ]),
    lon=st.floats(144.0, 149.5),
    lat=st.floats(-40.0, -20.0),
    width=st.floats(0.0005, 0.1),
    height=st.floats(0.0005, 0.1),
)
def test_cells_cover_a_bbox_and_all_meet_it(grid, lon, lat, width, height):
    bbox = (lon, lat, lon + width, lat + height)
    cells = cells_for_extent(grid, parse_extent(",".join(repr(v) for v in bbox)))
    region = dense_lonlat_ring(*bbox, grid.crs)
    keys = [k for k, _ in cells]
    assert cells and len(set(keys)) == len(keys)
    boxes = []
    for key, gbox in cells:
        bounds = cell_bounds(grid, key)
        assert gbox.extent.boundingbox.bbox == pytest.approx(bounds)
        assert box(*bounds).intersects(region), f"cell {key} does not meet the bbox"
        boxes.append(box(*bounds))
    uncovered = region.difference(shapely.union_all(boxes))
    assert uncovered.area < 1e-6 * region.area, f"bbox not covered: {uncovered.bounds}"


def test_cells_cover_curved_edges_of_a_large_bbox():
    # in UTM 55S the parallel -40 bows north of the chord between its ends at 145 and 149 E
    grid = load_grid("utm55s-10m")
    cells = {k for k, _ in cells_for_extent(grid, parse_extent("145,-41,149,-40"))}
    x, y = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True).transform(147.0, -40.001)
    inside_key = (math.floor(x / grid.tile_size[0]), math.floor(y / grid.tile_size[1]))
    assert inside_key in cells


WHOLE_GLOBE = "-180,-90,180,90"


@pytest.mark.parametrize(
    "grid, message",
    [
        # too many cells
        (Grid(name="ease-10m-2560m", crs="EPSG:6933", resolution=10, tile_size=(2560, 2560)), r"[\d,]{7,} cells"),
        # few large cells, but 5e12 pixels
        (load_grid("africa-10m"), r"55,\d{3} cells \(5\.\de\+12 pixels\)"),
        # a UTM zone cannot draw the globe: refused before projecting
        (load_grid("utm55s-10m"), r"beyond where EPSG:32755 .* is meant to be used"),
    ],
    ids=["ease-10m-small-tiles", "africa-10m", "utm55s-10m"],
)
def test_whole_globe_at_10m_is_refused_before_enumerating(grid, message, monkeypatch):
    def no_enumeration(*args, **kwargs):
        raise AssertionError("cells were enumerated before the size check")

    monkeypatch.setattr(GridSpec, "tiles", no_enumeration)
    with pytest.raises(ConfigError, match=message) as err:
        cells_for_extent(grid, parse_extent(WHOLE_GLOBE))
    assert "\n" not in str(err.value)


def test_the_bbox_of_continental_africa_at_10m_is_allowed():
    """The largest job in practice must stay under the limits, and gives every cell of the bbox:
    EASE-Grid 2.0 is cylindrical, so the bbox is a rectangle of whole cells in it."""
    from pyproj import Transformer

    cells = cells_for_extent(load_grid("africa-10m"), parse_extent("-18,-35,52,38"))
    (x0, x1), (y0, y1) = Transformer.from_crs(4326, 6933, always_xy=True).transform([-18, 52], [-35, 38])
    n_x = math.floor(x1 / 96000) - math.floor(x0 / 96000) + 1
    n_y = math.floor(y1 / 96000) - math.floor(y0 / 96000) + 1
    assert len(cells) == len({key for key, _ in cells}) == n_x * n_y > 6000


@pytest.mark.parametrize("name, extent, epsg, resolution", [
    ("auto", "146.9,-36.1,147.1,-35.9", 32755, 10),
    ("utm-10m", "-74.1,40.6,-73.9,40.8", 32618, 10),
    ("utm-30m", "-105.5,39.5,-105.0,40.0", 32613, 30),
    ("auto", "2.2,48.8,2.4,48.9", 32631, 10),
])
def test_auto_grids_take_the_utm_zone_of_the_extents_centre(name, extent, epsg, resolution):
    grid = load_grid(name, extent=parse_extent(extent))
    assert CRS.from_user_input(grid.crs).to_epsg() == epsg and grid.resolution == resolution
    assert grid.tile_shape_px == (2048, 2048) and grid.name.endswith(f"-{resolution}m")
    assert cells_for_extent(grid, parse_extent(extent))


def test_an_auto_grid_without_an_extent_is_one_line():
    with pytest.raises(ConfigError, match=r"name the zone, e\.g\. --grid utm55s-10m"):
        load_grid("auto")


@pytest.mark.parametrize("name, epsg, resolution, tile, extent", [
    ("conus-albers-30m", 5070, 30, 150_000, "-105.5,39.5,-105.0,40.0"),
    ("europe-laea-10m", 3035, 10, 100_000, "2.2,48.8,2.4,48.9"),
])
def test_the_continental_grids_cover_their_continents(name, epsg, resolution, tile, extent):
    grid = load_grid(name)
    assert CRS.from_user_input(grid.crs).to_epsg() == epsg and grid.resolution == resolution
    assert grid.tile_size == (tile, tile)
    cells = cells_for_extent(grid, parse_extent(extent))
    assert 1 <= len(cells) <= 4
    if name == "conus-albers-30m":  # on the Landsat ARD lattice: tile edges 150 km from its corner
        left = cells[0][1].boundingbox.left
        assert (left - -2565585) % 150_000 == 0
