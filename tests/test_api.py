"""The Python API: `import gridded` stays light, `composite` equals what `gridded run` writes pixel
for pixel, a Plan is a map and a status, and the README's Python example runs as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from click.testing import CliRunner
from odc.geo.geobox import GeoBox

import gridded
from gridded.cli import cli
from gridded.demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME

ROOT = Path(__file__).resolve().parents[1]


def test_importing_gridded_loads_no_numba_rasterio_or_dask():
    code = ("import sys, gridded; heavy = [m for m in ('numba', 'rasterio', 'dask', 'distributed', 'xarray', "
            "'pystac', 'odc.geo') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_command_line_loads_no_numba_rasterio_dask_or_odc_geo_before_a_command_runs():
    # `gridded --help` stays instant, and dask reads its logging settings only once the CLI set them
    code = ("import sys, gridded.cli; heavy = [m for m in ('numba', 'rasterio', 'dask', 'odc.geo', 'pystac') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_public_name_resolves_and_the_api_functions_survive_their_modules_import():
    for name in gridded.__all__:
        assert getattr(gridded, name) is not None, name
    import importlib

    for module in ("gridded.plan", "gridded.run"):  # binding no attribute over the functions
        assert importlib.import_module(module).__name__ == module

    assert callable(gridded.plan) and gridded.plan.__name__ == "plan_for"
    assert gridded.run.__name__ == "run_plan"
    assert issubclass(gridded.ConfigError, gridded.GriddedError)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gridded.nope  # noqa: B018


def cogs_of(out: Path) -> dict[tuple[str, str, str], tuple[np.ndarray, rasterio.coords.BoundingBox]]:
    """(item's period start, asset, cell) -> (array, bounds) of every COG a run wrote."""
    found = {}
    for path in out.rglob("*.stac-item.json"):
        item = json.loads(path.read_text())
        start = item["properties"]["start_datetime"][:10]
        for key, asset in item["assets"].items():
            if "thumbnail" in asset.get("roles", []):
                continue
            with rasterio.open(asset["href"]) as src:
                found[(start, key, path.name)] = (src.read(1), src.bounds)
    return found


def run_demo(out: Path, demo_catalog: Path, *extra: str) -> None:
    args = ["run", "--source", str(demo_catalog), "--extent", DEMO_EXTENT, "--time", DEMO_TIME,
            "--grid", str(DEMO_GRID), "--tiles-per-worker", "3", "--output", str(out), *extra]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("statistic, period, bands, indices", [
    ("median", "P1M", ["blue", "red", "nir"], []),
    ("geomedian", "P3M", ["red", "nir"], []),
    ("median", "P1M", [], ["ndvi"]),  # an index alone: red and nir read, only the NDVI made
])
def test_composite_equals_the_cogs_gridded_run_writes_pixel_for_pixel(tmp_path, demo_catalog, statistic, period,
                                                                       bands, indices):
    flags = [*(["--bands", ",".join(bands)] if bands else []), *(f for i in indices for f in ("--band-index", i))]
    run_demo(tmp_path / "run", demo_catalog, "--statistic", statistic, "--period", period, *flags)
    seen = []
    ds = gridded.composite(str(demo_catalog), extent=DEMO_EXTENT, grid=str(DEMO_GRID), time=DEMO_TIME,
                           bands=bands or None, indices=indices or None, statistic=statistic, period=period,
                           progress=lambda done, total: seen.append((done, total)))
    assert list(ds.data_vars) == [*bands, *indices, "count", "observed"]
    assert ds.odc.geobox.crs.epsg == 32755 and ds.attrs["gridded:statistic"] == statistic
    computed = ds.compute()
    cogs = cogs_of(tmp_path / "run")
    assert len(cogs) == (18 if period == "P1M" else 6) * (len(bands) + len(indices) + 2)  # and count, observed
    for (start, asset, _), (array, bounds) in cogs.items():
        part = computed[asset].sel(time=np.datetime64(start), x=slice(bounds.left, bounds.right),
                                   y=slice(bounds.top, bounds.bottom))
        np.testing.assert_array_equal(part.values, array)
    assert seen[-1] == (len(ds.time) * 6, len(ds.time) * 6) and len(seen) == len(ds.time) * 6


def test_composite_takes_items_and_a_geobox_of_ones_own(demo_catalog):
    on_grid = gridded.composite(str(demo_catalog), extent=DEMO_EXTENT, grid=str(DEMO_GRID), time="2024-02",
                                bands="red").compute()
    items = [pystac.Item.from_file(p) for p in sorted(demo_catalog.parent.rglob("*_L2A.json"))]
    grid_box = on_grid.odc.geobox
    # a window on the same pixels, offset from the cells and chunked across them
    window = GeoBox((300, 420), grid_box.affine * grid_box.affine.translation(50, 70), grid_box.crs)
    own = gridded.composite(items, geobox=window, time="2024-02", bands=["red"], chunks=128)
    assert own.red.data.chunksize == (1, 128, 128)
    expected = on_grid.red.isel(y=slice(70, 370), x=slice(50, 470))
    np.testing.assert_array_equal(own.red.compute().values, expected.values)


def test_composite_of_layouts_implying_different_masks_records_the_mask_as_inferred(demo_catalog):
    items = []
    for n, path in enumerate(sorted(demo_catalog.parent.rglob("*_L2A.json"))):
        item = pystac.Item.from_file(path)
        item.make_asset_hrefs_absolute()
        if n % 2:  # the same classes under another asset key: another layout, another rule
            item.assets["SCL"] = item.assets.pop("scl")
        items.append(item)
    ds = gridded.composite(items, extent=DEMO_EXTENT, grid=str(DEMO_GRID), time="2024-01", bands=["red"])
    assert ds.attrs["gridded:mask"] == "infer"  # as Pipeline.parameters records it


@pytest.mark.parametrize("kwargs, message", [
    ({"extent": DEMO_EXTENT}, "give extent= and grid="),
    ({"extent": DEMO_EXTENT, "grid": str(DEMO_GRID), "time": "2023-01"}, "no item meets the extent and time"),
    ({"extent": DEMO_EXTENT, "grid": str(DEMO_GRID), "chunks": 64}, "chunks= is for a geobox="),
    ({"extent": "1,2,3", "grid": str(DEMO_GRID)}, "--extent"),
])
def test_composite_refuses_bad_input_with_one_line(demo_catalog, kwargs, message):
    kwargs = {"time": "2024-01", "bands": ["red"], **kwargs}
    with pytest.raises(gridded.ConfigError, match=re.escape(message)) as err:
        gridded.composite(str(demo_catalog), **kwargs)
    assert "\n" not in str(err.value)


def test_a_plan_is_a_map_and_a_status(tmp_path, demo_catalog):
    selection = gridded.select(str(demo_catalog), extent=DEMO_EXTENT, grid=str(DEMO_GRID), time=DEMO_TIME,
                               bands=["red"], tiles_per_worker=4)
    plan = gridded.plan(selection)
    features = plan.__geo_interface__["features"]
    assert len(features) == len(plan.tasks) == 18
    assert {f["properties"]["batch"] for f in features} == {0, 1}
    frame = plan.to_geodataframe()
    assert len(frame) == 18 and frame.crs.to_epsg() == 4326
    lon, lat = frame.geometry.union_all().centroid.coords[0]
    assert 147 < lon < 149 and -37 < lat < -35
    out = str(tmp_path / "out")
    done = gridded.process_batch(plan.batches[1], plan.pipeline, out)
    status = plan.status(out)
    assert sorted(set(status.values())) == ["done", "to-do"]
    assert sum(s == "done" for s in status.values()) == len(done) == 6


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readmes_python_example_runs_as_written(tmp_path):
    # as a notebook runs it: code typed into the interpreter (a spawned worker process has no
    # script file to import again, which a script without `if __name__ == "__main__"` would need)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", readme_python_example()], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(" done") == 18
    with rasterio.open(tmp_path / "ndvi-2024-01.tif") as src:
        ndvi = src.read(1)
        assert src.crs.to_epsg() == 32755 and src.dtypes[0] == "float32"
    assert np.nanmin(ndvi) > -1 and 0 < np.nanmax(ndvi) <= 1
    assert (tmp_path / "demo-output" / "catalog.json").is_file()
