"""load.py: windows read into their layers and masked there, against a numpy reading of the same
files (every source pixel repeated onto the 10 m grid, then masked and mosaicked by hand)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from scenes import S2, X0, observation, scene, task_for

from gridded.load import load_task
from gridded.masks import MaskRule


def on_grid(path, col, row, shape, fill, k=1):
    """A file's pixels under the cell, each source pixel repeated k x k, `fill` outside the file."""
    with rasterio.open(path) as src:
        fine = src.read(1).repeat(k, 0).repeat(k, 1)
    out = np.full(shape, np.array(fill).astype(fine.dtype), dtype=fine.dtype)
    for y in range(shape[0]):
        for x in range(shape[1]):
            fy, fx = row + y, col + x
            if 0 <= fy < fine.shape[0] and 0 <= fx < fine.shape[1]:
                out[y, x] = fine[fy, fx]
    return out


def expected_layers(task, rule, *, col, row):
    """Per band, per same-day group: the first scene where clear and not nodata, later scenes of
    the day filling what is still missing; 0 (the sentinel) elsewhere."""
    groups = {}
    for obs in task.observations:
        groups.setdefault((obs.platform, obs.solar_day), []).append(obs)
    layers = {b: [] for b in ("red", "nir")}
    for members in groups.values():
        for band in layers:
            layer = np.zeros(task.shape_yx, dtype=np.uint16)
            for obs in members:
                values = on_grid(obs.href(band), col, row, task.shape_yx, 0)
                clear = rule.clear(on_grid(obs.href("scl"), col, row, task.shape_yx, rule.fill_value, k=2))
                take = (layer == 0) & clear & (values != 0)
                layer[take] = values[take]
            layers[band].append(layer)
    return {b: np.stack(v) for b, v in layers.items()}


@pytest.mark.parametrize("col, row", [(0, 0), (1, 3), (-5, -7), (21, 17), (-3, 20)])
def test_load_masks_at_the_mask_resolution_with_any_offset(tmp_path, col, row):
    # odd offsets put a cell's first pixel in the second half of a 20 m mask pixel; negative ones
    # and those past the far edge leave part of the cell outside every source
    rng = np.random.default_rng(abs(1000 + col * 31 + row))
    observations = [
        observation("a", scene(tmp_path, "a", rng), 3),
        observation("b", scene(tmp_path, "b", rng), 5),
        observation("c", scene(tmp_path, "c", rng), 5),  # same day as b: a mosaic
    ]
    task = task_for(observations, col=col, row=row)
    stacks = load_task(task, ("red", "nir"), S2, None)
    want = expected_layers(task, S2, col=col, row=row)
    assert stacks.sentinel == {"red": 0, "nir": 0}
    for band in ("red", "nir"):
        assert stacks.bands[band].shape == (2,) + task.shape_yx
        np.testing.assert_array_equal(stacks.bands[band], want[band], err_msg=band)
    assert (stacks.bands["red"] == 0).any() and (stacks.bands["red"] != 0).any()


@pytest.mark.parametrize("rule", [MaskRule(asset="scl", kind="bits", values=(0, 3)),
                                  MaskRule(asset="scl", kind="classes", values=(-1, 3, 300))])
@pytest.mark.parametrize("mask_dtype", [np.int16, np.uint16, np.int32])
def test_load_applies_rules_to_wide_and_signed_masks(tmp_path, rule, mask_dtype):
    # 16-bit masks go through a lookup table (a negative class indexes it from the end), wider
    # ones through the rule itself: the same result
    rng = np.random.default_rng(3)
    hrefs = scene(tmp_path, "a", rng, mask_dtype=mask_dtype)
    with rasterio.open(hrefs[2][1], "r+") as dst:  # negative and large classes too
        scl = dst.read(1)
        scl[::3, ::5] = -1 if np.dtype(mask_dtype).kind == "i" else 300
        dst.write(scl, 1)
    task = task_for([observation("a", hrefs, 3)], col=1, row=1)
    stacks = load_task(task, ("red", "nir"), rule, None)
    want = expected_layers(task, rule, col=1, row=1)
    np.testing.assert_array_equal(stacks.bands["red"], want["red"])


def test_load_without_mask_keeps_every_value_but_nodata(tmp_path):
    rng = np.random.default_rng(5)
    task = task_for([observation("a", scene(tmp_path, "a", rng), 3)], col=2, row=2)
    stacks = load_task(task, ("red",), None, None)
    np.testing.assert_array_equal(stacks.bands["red"][0], on_grid(task.observations[0].href("red"), 2, 2,
                                                                  task.shape_yx, 0))


NDVI_EXPR = "(nir - red) / (nir + red)"


@pytest.mark.parametrize("statistic, rank", [("median,p10,mean", None), ("best", "ndvi"), ("geomedian", None),
                                             ("first", None)])
def test_a_cell_partly_past_its_scenes_is_computed_over_their_part_alone_and_equals_the_whole(
        tmp_path, monkeypatch, statistic, rank):
    # two scenes side by side (the second 30 px right of the first), cells at odd offsets across
    # and past their edges: the cell is reduced over the window the scenes cover and the rest of
    # it is what a pixel with no observation gets, to the bit as when the whole cell is reduced
    from gridded import load
    from gridded.io.rasters import pooled_sources
    from gridded.masks import MASK_RULES
    from gridded.pipeline import Pipeline
    from gridded.process import compute_task

    rng = np.random.default_rng(11)
    observations = [observation("a", scene(tmp_path, "a", rng), 3), observation("b", scene(tmp_path, "b", rng), 5),
                    observation("c", scene(tmp_path, "c", rng, x0=X0 + 300), 7)]
    pipeline = Pipeline(name="p", bands=("red", "nir"), statistic=statistic,
                        mask=MASK_RULES["s2"], indices=() if statistic == "geomedian" else (("ndvi", NDVI_EXPR),),
                        rank=rank)
    windows = []
    found = load.data_window
    monkeypatch.setattr(load, "data_window", lambda *a: windows.append(found(*a)) or windows[-1])
    for col, row in [(-7, -5), (25, 21), (61, 3), (-3, 17), (0, 0)]:
        task = task_for(observations, col=col, row=row)
        with pooled_sources():
            confined = compute_task(task, pipeline)
        with monkeypatch.context() as whole:
            whole.setattr(load, "data_window", lambda *a: None)
            with pooled_sources():
                everything = compute_task(task, pipeline)
        assert list(confined.arrays) == list(everything.arrays)
        for key, values in everything.arrays.items():
            assert confined.arrays[key].dtype == values.dtype and confined.arrays[key].shape == task.shape_yx
            np.testing.assert_array_equal(confined.arrays[key], values, err_msg=f"{col},{row} {key}")
        assert confined.nodata == everything.nodata and confined.properties == everything.properties
    rows, cols = windows[0]  # (-7, -5): the scenes cover the cell from its 8th column and 6th row
    assert (rows.start, cols.start, rows.stop, cols.stop) == (4, 6, 30, 34)
    assert windows[4] is None  # (0, 0): the first scene covers all of it
    assert sum(w is not None for w in windows) == 4


def test_no_window_without_a_batch_or_for_a_band_without_nodata(tmp_path):
    from gridded import load
    from gridded.io.rasters import pooled_sources

    rng = np.random.default_rng(3)
    hrefs = scene(tmp_path, "a", rng)
    task = task_for([observation("a", hrefs, 3)], col=-7, row=-5)
    assert load.data_window(task, ("red", "nir"), S2) is None  # outside a batch: no pool to keep headers in
    with pooled_sources():
        assert load.data_window(task, ("red", "nir"), S2) is not None
    with rasterio.open(hrefs[0][1], "r+") as dst:
        dst.nodata = None
    with pooled_sources():
        assert load.data_window(task, ("red", "nir"), S2) is None


@pytest.mark.parametrize("res, shape", [(10, (40, 48)), (20, (20, 24)), (60, (7, 9))])
@pytest.mark.parametrize("col, row", [(-7, -5), (25, 21), (61, 3), (0, 0), (-40, 2), (3, -31)])
def test_the_cover_by_arithmetic_is_odc_geos_overlap(res, shape, col, row):
    from affine import Affine
    from odc.geo.geobox import GeoBox
    from odc.geo.overlap import compute_reproject_roi
    from rasterio.crs import CRS as RasterioCRS

    from gridded.io.rasters import SourceGrid
    from gridded.load import _covered

    task = task_for([], col=col, row=row)
    grid = SourceGrid(shape, Affine(res, 0, X0, 0, -res, 6_000_000.0), RasterioCRS.from_user_input("EPSG:32755"), 0)
    rows, cols = _covered(grid, task)
    want_rows, want_cols = compute_reproject_roi(GeoBox(shape, grid.transform, "EPSG:32755"), task.geobox).roi_dst
    if want_rows.stop > want_rows.start and want_cols.stop > want_cols.start:
        assert (rows, cols) == (want_rows, want_cols)
    else:  # no overlap: an empty range either way
        assert rows.stop <= rows.start or cols.stop <= cols.start
    other = SourceGrid(shape, grid.transform, RasterioCRS.from_user_input("EPSG:32756"), 0)
    assert _covered(other, task) is None  # another CRS: odc-geo's general overlap


def test_a_cell_partly_past_a_scene_in_another_crs_equals_the_whole(tmp_path, monkeypatch):
    # a scene in the next UTM zone (warped, nearest neighbour): the window odc-geo's overlap
    # finds, with a pixel to spare, holds every pixel the warp fills
    from rasterio.transform import from_origin
    from rasterio.warp import transform as warp_points

    from gridded import load
    from gridded.io.rasters import pooled_sources
    from gridded.pipeline import Pipeline
    from gridded.process import compute_task

    rng = np.random.default_rng(5)
    (x,), (y,) = warp_points("EPSG:32755", "EPSG:32756", [X0 + 150], [6_000_000.0 - 100])
    hrefs = []
    for band in ("red", "nir"):
        values = rng.integers(1, 4000, (25, 27)).astype(np.uint16)
        path = tmp_path / f"z56_{band}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=27, height=25, count=1, dtype="uint16", crs="EPSG:32756",
                           transform=from_origin(x, y, 9.7, 9.7), nodata=0) as dst:
            dst.write(values, 1)
        hrefs.append((band, str(path)))
    task = task_for([observation("z", hrefs, 3)], col=0, row=0, shape=(40, 44))
    pipeline = Pipeline(name="p", bands=("red", "nir"), statistic="median,p90", mask=None)
    windows = []
    found = load.data_window
    monkeypatch.setattr(load, "data_window", lambda *a: windows.append(found(*a)) or windows[-1])
    with pooled_sources():
        confined = compute_task(task, pipeline)
    monkeypatch.setattr(load, "data_window", lambda *a: None)
    with pooled_sources():
        everything = compute_task(task, pipeline)
    rows, cols = windows[0]
    assert rows.start > 0 and cols.start > 0  # the scene starts inside the cell
    assert everything.arrays["count"].sum() > 100  # and puts values into it
    for key, values in everything.arrays.items():
        np.testing.assert_array_equal(confined.arrays[key], values, err_msg=key)
