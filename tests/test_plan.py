"""Planning: the demo catalog and hand-made items -> tasks per cell and period, in batches; what the
items decide of the recipe (mask, encodings); which asset is a band; the input fingerprint."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pystac
import pytest
from pyproj import Transformer
from shapely.geometry import Point, box, shape

from gridded import select
from gridded.errors import ConfigError
from gridded.extent import parse_extent
from gridded.grid import Grid
from gridded.masks import MaskRule
from gridded.period import Period, TimeRange, periods_for
from gridded.pipeline import INFER, Pipeline
from gridded.finder import ObservationFinder
from gridded.plan import Observation, Task, make_plan
from gridded.source import read_items

CRS = "EPSG:32755"
TILE_M = 2560
GRID = Grid(name="test-2560m", crs=CRS, resolution=10, tile_size=(TILE_M, TILE_M))
TO_LONLAT = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
TO_UTM = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
JANUARY = TimeRange(start=datetime(2024, 1, 1, tzinfo=UTC), end=datetime(2024, 1, 31, 23, 59, 59, tzinfo=UTC))
S2_SCL = MaskRule(asset="scl", kind="classes", values=(0, 1, 3, 8, 9, 10))
LANDSAT_QA = MaskRule(asset="qa_pixel", kind="bits", values=(0, 1, 2, 3, 4))

# the demo's source rectangle (gridded.demo: origin 601,200 / 6,001,800, 480 x 360 pixels of 10 m)
DEMO_X0, DEMO_Y1 = 601_200.0, 6_001_800.0
DEMO_X1, DEMO_Y0 = DEMO_X0 + 4800, DEMO_Y1 - 3600
DEMO_CELLS = {(ix, iy) for ix in range(math.floor(DEMO_X0 / TILE_M), math.floor(DEMO_X1 / TILE_M) + 1)
              for iy in range(math.floor(DEMO_Y0 / TILE_M), math.floor(DEMO_Y1 / TILE_M) + 1)}


def cell_box(ix: int, iy: int) -> tuple[float, float, float, float]:
    """A cell of the 2,560 m grid from the origin, in UTM: (x0, y0, x1, y1)."""
    return ix * TILE_M, iy * TILE_M, (ix + 1) * TILE_M, (iy + 1) * TILE_M


def ring_lonlat(x0: float, y0: float, x1: float, y1: float, per_edge: int = 25) -> list[list[float]]:
    """A UTM rectangle in lon/lat, its edges densified (straight in UTM, curved in lon/lat)."""
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    points = []
    for (xa, ya), (xb, yb) in itertools.pairwise(corners):
        for t in np.linspace(0.0, 1.0, per_edge, endpoint=False):
            points.append(list(TO_LONLAT.transform(xa + t * (xb - xa), ya + t * (yb - ya))))
    return points + [points[0]]


def extent_of(x0: float, y0: float, x1: float, y1: float):
    lons, lats = TO_LONLAT.transform([x0, x1, x0, x1], [y0, y0, y1, y1])
    return parse_extent(f"{min(lons)},{min(lats)},{max(lons)},{max(lats)}")


def band_asset(name: str, common_name: str | None = None, **extra) -> dict:
    entry = {"name": name, **({"common_name": common_name} if common_name else {})}
    return {"eo:bands": [entry], **extra}


def make_item(item_id: str, when: datetime, utm_box, assets: dict[str, dict], **properties) -> pystac.Item:
    """An item with a footprint from a UTM rectangle and assets {key: extra fields (roles: ...)}."""
    ring = ring_lonlat(*utm_box)
    lons, lats = zip(*ring)
    item = pystac.Item(id=item_id, geometry={"type": "Polygon", "coordinates": [ring]},
                       bbox=[min(lons), min(lats), max(lons), max(lats)], datetime=when,
                       properties={"platform": "sentinel-2a", "updated": "2024-02-01T00:00:00Z", **properties})
    for key, fields in assets.items():
        fields = dict(fields)
        roles = fields.pop("roles", ["data"])
        item.add_asset(key, pystac.Asset(href=f"/data/{item_id}/{key}.tif", media_type=pystac.MediaType.COG,
                                         roles=roles, extra_fields=fields))
    return item


RED_ONLY = {"red": band_asset("B04", "red")}


def jan(day: int, hour: int = 0, second: int = 0) -> datetime:
    return datetime(2024, 1, day, hour, 0, second, tzinfo=UTC)


# --- on the demo catalog ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(demo_catalog):
    """(selection, items) of the demo over its whole time."""
    from gridded.demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME

    selection = select(str(demo_catalog), extent=DEMO_EXTENT, time=DEMO_TIME, grid=str(DEMO_GRID),
                       bands="red,nir", tiles_per_worker=2)
    return selection, read_items(str(demo_catalog))


def demo_plan(demo, tiles_per_worker: int = 2):
    selection, items = demo
    return make_plan(pipeline=selection.pipeline, grid=selection.grid, extent=selection.extent, time=selection.time,
                     items=items, tiles_per_worker=tiles_per_worker)


@pytest.mark.parametrize("tiles_per_worker", [1, 2, 4, 5, 6, 10])
def test_make_plan_batches_whole_cells_by_tiles_per_worker(demo, tiles_per_worker):
    plan = demo_plan(demo, tiles_per_worker)
    assert len(DEMO_CELLS) == 6
    assert len(plan.batches) == math.ceil(len(DEMO_CELLS) / tiles_per_worker)
    assert [b.id for b in plan.batches] == list(range(len(plan.batches)))
    cells = [cell for batch in plan.batches for cell in batch.cells]
    assert sorted(cells) == sorted(DEMO_CELLS)  # each cell in one batch only
    for batch in plan.batches:
        assert len(batch.cells) <= tiles_per_worker
        # every period of a cell travels with it
        assert sorted((t.key, t.period.label) for t in batch.tasks) == sorted(
            (cell, f"2024-{m:02d}--P1M") for cell in batch.cells for m in (1, 2, 3))
    assert len(plan.tasks) == 18 and plan.empty_cells == ()


def test_tiles_per_worker_below_one_is_refused(demo):
    with pytest.raises(ConfigError, match="--tiles-per-worker 0: must be at least 1"):
        demo_plan(demo, 0)


def test_each_task_reads_the_items_covering_its_cell_in_time_order(demo, demo_catalog):
    plan = demo_plan(demo)
    _, items = demo
    footprints = {}  # back in UTM, where the cells are rectangles
    for item in items:
        ring = shape(item.geometry).exterior.coords
        xs, ys = TO_UTM.transform(*zip(*ring))
        footprints[item.id] = (shape({"type": "Polygon", "coordinates": [list(zip(xs, ys))]}), item.datetime)
    for task in plan.tasks:
        cell = box(*cell_box(*task.key))
        start, end = task.period.start, task.period.end
        expected = sorted((when, item_id) for item_id, (fp, when) in footprints.items()
                          if fp.intersection(cell).area > 50 and start <= when <= end)  # > half a 10 m pixel
        assert [o.item_id for o in task.observations] == [item_id for _, item_id in expected], task.key
    times = [o.time for task in plan.tasks for o in task.observations]
    assert all(t.tzinfo is UTC for t in times)


def test_same_day_granules_both_stay_observations(demo):
    """The demo's 17 January pass comes as two granules: both are read (they are mosaicked at load)."""
    plan = demo_plan(demo)
    task = next(t for t in plan.tasks if t.key == (235, 2343) and t.period.label == "2024-01--P1M")
    ids = [o.item_id for o in task.observations]
    assert "S2B_55HFA_20240117_0_L2A" in ids and "S2B_55HGA_20240117_0_L2A" in ids
    pair = [o for o in task.observations if "20240117" in o.item_id]
    assert len(pair) == 2 and pair[0].solar_day == pair[1].solar_day == "2024-01-17"
    assert pair[0].platform == pair[1].platform == "sentinel-2b"
    # a cell west of the second granule reads the first only
    west = next(t for t in plan.tasks if t.key == (234, 2343) and t.period.label == "2024-01--P1M")
    assert [o.item_id for o in west.observations if "20240117" in o.item_id] == ["S2B_55HFA_20240117_0_L2A"]


def test_the_inferred_mask_is_made_concrete_and_bands_read_lists_the_assets(demo, demo_catalog):
    plan = demo_plan(demo)
    assert plan.pipeline.mask == S2_SCL
    n_items = len(list(Path(demo_catalog).parent.rglob("*_L2A.json")))
    assert n_items == 21 == plan.n_items
    assert plan.bands_read == (("nir", "nir", "uint16", 1.0, 0.0, n_items), ("red", "red", "uint16", 1.0, 0.0, n_items))
    assert all(o.mask == S2_SCL for t in plan.tasks for o in t.observations)
    assert {band for task in plan.tasks for o in task.observations for band, _ in o.hrefs} == {"red", "nir", "scl"}


def test_geo_interface_is_one_feature_per_task(demo):
    plan = demo_plan(demo)
    features = plan.__geo_interface__["features"]
    assert plan.__geo_interface__["type"] == "FeatureCollection"
    assert len(features) == len(plan.tasks) == 18
    batch_of = {(t.key, t.period.label): b.id for b in plan.batches for t in b.tasks}
    seen = set()
    for feature, task in zip(features, plan.tasks):
        props = feature["properties"]
        assert (props["x"], props["y"]) == task.key and props["cell"] == f"x{task.key[0]} y{task.key[1]}"
        assert props["period"] == task.period.label
        assert props["observations"] == len(task.observations) > 0
        assert props["batch"] == batch_of[(task.key, task.period.label)]
        x0, y0, x1, y1 = cell_box(*task.key)
        outline = shape(feature["geometry"])
        assert outline.contains(Point(TO_LONLAT.transform((x0 + x1) / 2, (y0 + y1) / 2)))
        assert not outline.contains(Point(TO_LONLAT.transform(x1 + 100, y1 + 100)))
        seen.add((task.key, task.period.label))
    assert len(seen) == 18


def item_doc_at(out: Path, pipeline: Pipeline, task: Task, fingerprint: str) -> None:
    x, y = task.key
    label = task.period.label
    path = out / f"x{x}/y{y}/{label}/{pipeline.name}_x{x}_y{y}_{label.lower()}.stac-item.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "Feature", "properties": {"gridded:fingerprint": fingerprint}}))


def test_plan_status_tells_done_changed_and_to_do(demo, tmp_path):
    plan = demo_plan(demo)
    out = tmp_path / "out"
    assert set(plan.status(str(out)).values()) == {"to-do"}
    first, second = plan.tasks[0], plan.tasks[4]
    item_doc_at(out, plan.pipeline, first, first.fingerprint(plan.pipeline))
    item_doc_at(out, plan.pipeline, second, "0" * 64)  # made from other inputs
    status = plan.status(str(out))
    assert len(status) == 18
    assert status[(first.key, first.period.label)] == "done"
    assert status[(second.key, second.period.label)] == "changed"
    assert sum(v == "to-do" for v in status.values()) == 16


# --- on hand-made items ------------------------------------------------------------------------------


def plan_of(items, pipeline=None, *, cells=((300, 2300), (301, 2300)), tiles_per_worker=4):
    pipeline = pipeline or Pipeline(name="t", bands=("red",), mask=None)
    x0, y0, _, _ = cell_box(*cells[0])
    _, _, x1, y1 = cell_box(*cells[-1])
    return make_plan(pipeline=pipeline, grid=GRID, extent=extent_of(x0 + 200, y0 + 200, x1 - 200, y1 - 200),
                     time=JANUARY, items=items, tiles_per_worker=tiles_per_worker)


def test_an_item_only_touching_a_cell_is_not_its_input():
    """An item exactly on cell (300, 2300), as that cell's own output item is: cell (301, 2300)
    shares its east edge, and must not read it."""
    west = make_item("west", jan(5), cell_box(300, 2300), RED_ONLY)
    strip = make_item("strip", jan(6), (301 * TILE_M, 2300 * TILE_M, 301 * TILE_M + 20, 2301 * TILE_M), RED_ONLY)
    plan = plan_of([west, strip])
    inputs = {t.key: [o.item_id for o in t.observations] for t in plan.tasks}
    assert inputs == {(300, 2300): ["west"], (301, 2300): ["strip"]}  # a 2-pixel strip is an input
    plan = plan_of([west])
    assert {t.key for t in plan.tasks} == {(300, 2300)}
    assert (301, 2300) in plan.empty_cells


def test_observations_are_in_time_order_whatever_the_item_order():
    whole = cell_box(300, 2300)
    items = [make_item(f"i{day}", jan(day), whole, RED_ONLY) for day in (20, 3, 11, 28, 7)]
    items.append(make_item("a-same-time", jan(11), whole, RED_ONLY))  # a tie: by id
    (task,) = plan_of(items, cells=((300, 2300),)).tasks
    assert [o.item_id for o in task.observations] == ["i3", "i7", "a-same-time", "i11", "i20", "i28"]
    assert [o.time for o in task.observations] == sorted(o.time for o in task.observations)


def test_the_finder_orders_observations_by_time_whatever_the_item_order():
    items = [make_item(f"i{day}", jan(day), cell_box(300, 2300), RED_ONLY) for day in (20, 3, 28, 7)]
    finder = ObservationFinder(items, Pipeline(name="t", bands=("red",), mask=None), None)
    (task,) = finder.tasks_for((300, 2300), GRID.geobox((300, 2300)), periods_for(JANUARY, "P1M"))
    assert [o.item_id for o in task.observations] == ["i3", "i7", "i20", "i28"]


def test_scenes_of_the_same_day_keep_both_observations():
    west = make_item("pass-a", jan(9, 0, 0), (300 * TILE_M, 2300 * TILE_M, 300 * TILE_M + 1800, 2301 * TILE_M),
                     RED_ONLY)
    east = make_item("pass-b", jan(9, 0, 4), (300 * TILE_M + 1200, 2300 * TILE_M, 301 * TILE_M, 2301 * TILE_M),
                     RED_ONLY)
    (task,) = plan_of([east, west], cells=((300, 2300),)).tasks
    assert [o.item_id for o in task.observations] == ["pass-a", "pass-b"]
    assert task.observations[0].solar_day == task.observations[1].solar_day


def finder_for(items, pipeline):
    return ObservationFinder(items, pipeline, None)


def test_a_mask_shared_by_every_item_is_made_concrete_and_a_mixed_one_stays_inferred():
    whole = cell_box(300, 2300)
    s2 = make_item("s2", jan(3), whole, {**RED_ONLY, "scl": {}})
    landsat = make_item("ls", jan(4), whole, {"red": band_asset("SR_B4", "red"), "qa_pixel": {}},
                        platform="landsat-9")
    bare = make_item("bare", jan(5), whole, RED_ONLY)
    pipeline = Pipeline(name="t", bands=("red",))
    assert pipeline.mask == INFER
    assert finder_for([s2, s2.clone()], pipeline).resolve(pipeline).mask == S2_SCL
    assert finder_for([landsat], pipeline).resolve(pipeline).mask == LANDSAT_QA
    mixed = finder_for([s2, landsat], pipeline)
    assert mixed.resolve(pipeline).mask == INFER
    assert [o.mask for o in mixed.observations] == [S2_SCL, LANDSAT_QA]  # each item its own rule
    assert [dict(o.hrefs) for o in mixed.observations] == [
        {"red": "/data/s2/red.tif", "scl": "/data/s2/scl.tif"},
        {"red": "/data/ls/red.tif", "qa_pixel": "/data/ls/qa_pixel.tif"}]
    assert finder_for([bare], pipeline).resolve(pipeline).mask is None


def s2_item(item_id: str, when: datetime, baseline: str) -> pystac.Item:
    """Sentinel-2 L2A as Planetary Computer has it: B04 with no raster:bands (no scale, no offset)."""
    return make_item(item_id, when, cell_box(300, 2300), {"B04": band_asset("B04", "red")},
                     **{"s2:processing_baseline": baseline})


def test_sentinel2_encodings_follow_the_processing_baseline():
    pipeline = Pipeline(name="t", bands=("red",), mask=None)
    finder = finder_for([s2_item("new", jan(3), "05.00")], pipeline)
    ((band, key, data_type, scale, offset, n),) = finder.bands_read()
    assert (band, key, data_type, n) == ("red", "B04", None, 1)
    assert (scale, offset) == pytest.approx((1e-4, -0.1))
    (encoding,) = finder.resolve(pipeline).encodings
    assert encoding[0] == "red" and encoding[1:] == pytest.approx((1e-4, -0.1))
    harmonized = Pipeline(name="t", bands=("red",), mask=None, harmonize=True)
    (encoding,) = finder_for([s2_item("new", jan(3), "05.00")], harmonized).resolve(harmonized).encodings
    assert encoding[0] == "red" and encoding[1:] == pytest.approx((1e-4, 0.0))
    old = finder_for([s2_item("old", jan(3), "03.01")], pipeline)
    assert old.observations[0].encoding("red") == pytest.approx((1e-4, 0.0))


@pytest.mark.parametrize("baselines, expected_offset", [
    (("03.01", "05.00"), -0.1),  # a tie: the later
    (("05.00", "03.01"), 0.0),
    (("03.01", "05.00", "05.00"), -0.1),
    (("05.00", "03.01", "03.01"), 0.0),  # the most
])
def test_without_harmonize_the_outputs_take_the_encoding_most_observations_have(baselines, expected_offset):
    pipeline = Pipeline(name="t", bands=("red",), mask=None)
    items = [s2_item(f"s{i}", jan(3 + i), b) for i, b in enumerate(baselines)]
    (encoding,) = finder_for(items, pipeline).resolve(pipeline).encodings
    assert encoding[1:] == pytest.approx((1e-4, expected_offset))


def test_a_band_matching_several_assets_is_one_line_naming_them():
    rededge = {key: band_asset(key, "rededge") for key in ("B05", "B06", "B07")}
    item = make_item("S2_X", jan(3), cell_box(300, 2300), {**RED_ONLY, **rededge})
    with pytest.raises(ConfigError) as caught:
        plan_of([item], Pipeline(name="t", bands=("rededge",), mask=None))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("item S2_X: band 'rededge' matches 3 assets (B05, B06, B07)")
    (task,) = plan_of([item], Pipeline(name="t", bands=("B06",), mask=None), cells=((300, 2300),)).tasks
    assert task.observations[0].hrefs == (("B06", "/data/S2_X/B06.tif"),)  # named by key: that one


@pytest.mark.parametrize("visual", [
    {"eo:bands": [{"name": n, "common_name": n} for n in ("red", "green", "blue")], "roles": ["visual"]},
    {"eo:bands": [{"name": "red", "common_name": "red"}], "roles": ["visual"]},
    {"eo:bands": [{"name": n, "common_name": n} for n in ("red", "green", "blue")], "roles": ["data"]},
    {"eo:bands": [{"name": "TCI", "common_name": "red"}], "roles": ["overview"]},
])
def test_a_visual_asset_listed_first_is_never_the_red_band(visual):
    item = make_item("S2_V", jan(3), cell_box(300, 2300), {"visual": visual, "B04": band_asset("B04", "red")})
    plan = plan_of([item], cells=((300, 2300),))
    (task,) = plan.tasks
    assert task.observations[0].hrefs == (("red", "/data/S2_V/B04.tif"),)
    assert [row[:2] for row in plan.bands_read] == [("red", "B04")]


def test_an_unknown_band_names_the_item_and_its_assets():
    item = make_item("S2_U", jan(3), cell_box(300, 2300), RED_ONLY)
    with pytest.raises(ConfigError) as caught:
        plan_of([item], Pipeline(name="t", bands=("red", "swir16"), mask=None))
    assert str(caught.value).startswith("item S2_U: no asset for band 'swir16' (assets: red);")


# --- the input fingerprint --------------------------------------------------------------------------


def observation(item_id: str, updated: str, day: int) -> Observation:
    return Observation(item_id=item_id, time=jan(day), platform="sentinel-2a", updated=updated,
                       solar_day=f"2024-01-{day:02d}", hrefs=(("red", f"/data/{item_id}/red.tif"),))


def task_of(observations, key=(300, 2300), x0=300 * TILE_M) -> Task:
    period = Period(start=JANUARY.start, end=JANUARY.end, label="2024-01--P1M")
    return Task(key=key, crs=CRS, transform=(10.0, 0.0, float(x0), 0.0, -10.0, 2301.0 * TILE_M), shape_yx=(256, 256),
                period=period, observations=tuple(observations))


def test_the_fingerprint_is_the_sha256_of_the_inputs_parameters_cell_and_period():
    pipeline = Pipeline(name="x", bands=("red",))
    task = task_of([observation("b", "2024-02-01", 5), observation("a", "2024-02-02", 9)])
    doc = {"inputs": [["a", "2024-02-02"], ["b", "2024-02-01"]],
           "pipeline": {"name": "x", "bands": ["red"], "statistic": "median", "period": "P1M", "mask": "infer",
                        "dtype": None, "nodata": None},
           "cell": [300, 2300],
           "grid": [CRS, [10.0, 0.0, float(300 * TILE_M), 0.0, -10.0, 2301.0 * TILE_M], [256, 256]],
           "period": ["2024-01-01T00:00:00+00:00", "2024-01-31T23:59:59+00:00"]}
    assert task.fingerprint(pipeline) == hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def test_the_fingerprint_changes_with_what_the_result_depends_on():
    pipeline = Pipeline(name="x", bands=("red",))
    base = task_of([observation("a", "2024-02-01", 5)])
    same = task_of([observation("a", "2024-02-01", 5)])
    assert base.fingerprint(pipeline) == same.fingerprint(pipeline)
    others = [
        task_of([observation("a", "2024-03-01", 5)]).fingerprint(pipeline),  # the item was reprocessed
        task_of([observation("a", "2024-02-01", 5), observation("b", "", 6)]).fingerprint(pipeline),
        task_of([observation("a", "2024-02-01", 5)], key=(301, 2300)).fingerprint(pipeline),
        base.fingerprint(Pipeline(name="x", bands=("red",), harmonize=True)),
        base.fingerprint(Pipeline(name="x", bands=("red",), encodings=(("red", 1e-4, -0.1),))),
    ]
    assert base.fingerprint(pipeline) not in others and len(set(others)) == len(others)


def test_the_fingerprint_changes_with_the_cells_geometry():
    pipeline = Pipeline(name="x", bands=("red",))
    obs = [observation("a", "2024-02-01", 5)]
    shifted = task_of(obs, x0=300 * TILE_M + 5000)
    assert task_of(obs).fingerprint(pipeline) != shifted.fingerprint(pipeline)


def test_an_item_outside_the_period_is_not_an_input():
    whole = cell_box(300, 2300)
    items = [make_item("dec", datetime(2023, 12, 31, 23, 59, tzinfo=UTC), whole, RED_ONLY),
             make_item("jan", jan(15), whole, RED_ONLY),
             make_item("feb", datetime(2024, 1, 31, 23, 59, 59, tzinfo=UTC) + timedelta(seconds=1), whole, RED_ONLY)]
    (task,) = plan_of(items, cells=((300, 2300),)).tasks
    assert [o.item_id for o in task.observations] == ["jan"]
