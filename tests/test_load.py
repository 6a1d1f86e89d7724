"""load.py: windows read into their layers and masked there, against a numpy reading of the same
files (every source pixel repeated onto the 10 m grid, then masked and mosaicked by hand)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from scenes import S2, X0, observation, scene, task_for, write_tif

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
    assert (rows.start, cols.start, rows.stop, cols.stop) == (5, 7, 30, 34)
    assert windows[4] is None  # (0, 0): the first scene covers all of it
    assert sum(w is not None for w in windows) == 4


def test_no_window_without_a_batch(tmp_path):
    from gridded import load
    from gridded.io.rasters import pooled_sources

    rng = np.random.default_rng(3)
    hrefs = scene(tmp_path, "a", rng)
    task = task_for([observation("a", hrefs, 3)], col=-7, row=-5)
    assert load.data_window(task, ("red", "nir"), S2) is None  # outside a batch: no pool to keep headers in
    with pooled_sources():
        assert load.data_window(task, ("red", "nir"), S2) is not None


@pytest.mark.parametrize("out_nodata", [None, 0])
def test_a_file_without_nodata_has_no_value_past_its_edge_in_its_first_observation_too(tmp_path, monkeypatch,
                                                                                       out_nodata):
    # the first observation's read used to fill past the file's edge with 0, a clear value
    from gridded import load
    from gridded.io.rasters import pooled_sources
    from gridded.pipeline import Pipeline
    from gridded.process import compute_task

    rng = np.random.default_rng(1)
    observations = []
    for i, day in enumerate((3, 5)):
        write_tif(tmp_path / f"s{i}_red.tif", rng.integers(100, 4000, (40, 48)).astype(np.uint16), 10, nodata=None,
                  x0=X0 + 100 * i)  # the second scene 10 px right of the first
        observations.append(observation(f"s{i}", [("red", str(tmp_path / f"s{i}_red.tif"))], day))
    task = task_for(observations, col=-15, row=0)  # the first scene from column 15, the second from 25
    pipeline = Pipeline(name="p", bands=("red",), mask=None, nodata=out_nodata)
    for windowed in (True, False):
        if not windowed:
            monkeypatch.setattr(load, "data_window", lambda *a: None)
        with pooled_sources():
            result = compute_task(task, pipeline)
        count, observed = result.arrays["count"], result.arrays["observed"]
        np.testing.assert_array_equal(count[:, :15], 0)
        np.testing.assert_array_equal(count[:, 15:25], 1)
        np.testing.assert_array_equal(count[:, 25:], 2)
        np.testing.assert_array_equal(observed, count)
        with rasterio.open(tmp_path / "s0_red.tif") as src:
            first = src.read(1)
        np.testing.assert_array_equal(result.arrays["red"][:, 15:25], first[:30, :10])  # its own values alone
        assert (result.arrays["red"][:, :15] == result.nodata["red"]).all()


@pytest.mark.parametrize("res, shape", [(10, (40, 48)), (20, (20, 24)), (60, (7, 9))])
@pytest.mark.parametrize("col, row", [(-7, -5), (25, 21), (61, 3), (0, 0), (-40, 2), (3, -31)])
def test_the_window_is_the_cells_pixels_a_source_on_its_grid_lines_covers(tmp_path, res, shape, col, row):
    from gridded import load
    from gridded.io.rasters import pooled_sources

    rng = np.random.default_rng(2)
    values = rng.integers(1, 4000, shape).astype(np.uint16)
    write_tif(tmp_path / "red.tif", values, res)
    task = task_for([observation("a", [("red", str(tmp_path / "red.tif"))], 3)], col=col, row=row)
    k = res // 10
    r, c = np.indices(task.shape_yx)  # cell pixel (r, c) is the scene's 10 m pixel (r + row, c + col)
    cell = (r + row >= 0) & (r + row < shape[0] * k) & (c + col >= 0) & (c + col < shape[1] * k)
    with pooled_sources():
        window = load.data_window(task, ("red",), None)
    if cell.all() or not cell.any():
        assert window is None
    else:
        rows, cols = np.nonzero(cell)
        assert window == (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))


def test_a_scene_in_another_crs_or_off_the_cells_grid_lines_is_read_for_the_whole_cell(tmp_path):
    # a warp's approximations depend on the area warped: such a source is never read by window
    from rasterio.transform import from_origin
    from rasterio.warp import transform as warp_points

    from gridded import load
    from gridded.io.rasters import pooled_sources

    rng = np.random.default_rng(5)
    (x,), (y,) = warp_points("EPSG:32755", "EPSG:32756", [X0 + 150], [6_000_000.0 - 100])
    for name, crs, transform in [("zone56", "EPSG:32756", from_origin(x, y, 9.7, 9.7)),
                                 ("offgrid", "EPSG:32755", from_origin(X0 + 153, 6_000_000.0 - 100, 10, 10)),
                                 ("15m", "EPSG:32755", from_origin(X0 + 150, 6_000_000.0 - 100, 15, 15))]:
        path = tmp_path / f"{name}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=27, height=25, count=1, dtype="uint16", crs=crs,
                           transform=transform, nodata=0) as dst:
            dst.write(rng.integers(1, 4000, (25, 27)).astype(np.uint16), 1)
        task = task_for([observation(name, [("red", str(path))], 3)], col=0, row=0, shape=(40, 44))
        with pooled_sources():
            assert load.data_window(task, ("red",), None) is None, name
    aligned = tmp_path / "aligned.tif"  # the same place on the cell's grid lines: a window
    write_tif(aligned, rng.integers(1, 4000, (25, 27)).astype(np.uint16), 10, x0=X0 + 150, y0=6_000_000.0 - 100)
    task = task_for([observation("aligned", [("red", str(aligned))], 3)], col=0, row=0, shape=(40, 44))
    with pooled_sources():
        assert load.data_window(task, ("red",), None) == (slice(10, 35), slice(15, 42))
