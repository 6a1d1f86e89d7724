"""The product sets users ask for in one run: several statistics from one read, band indices before
reducing, a best-pixel mosaic with its dates, and the observed count: against numpy over the
source files (tests/expected.py reads them), and against single-statistic runs."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from expected import _dt, catalog_items, expected_layers, output_items

from gridded.cli import cli
from gridded.demo import DEMO_EXTENT, DEMO_GRID

SELECT = ["--extent", DEMO_EXTENT, "--time", "2024-02", "--grid", str(DEMO_GRID), "--tiles-per-worker", "6"]


def run(out: Path, catalog: Path, *args: str, expect: int = 0):
    result = CliRunner().invoke(cli, ["run", "--source", str(catalog), *SELECT, *args, "--output", str(out)])
    assert result.exit_code == expect, result.output
    return result


def assets_of(out: Path) -> dict[tuple[str, str], np.ndarray]:
    """(item file, asset key) -> the COG's pixels, for every COG of a run."""
    found = {}
    for name, item in output_items(out).items():
        for key, asset in item["assets"].items():
            if asset["type"].startswith("image/tiff"):
                with rasterio.open(asset["href"]) as src:
                    found[(name, key)] = src.read(1)
    return found


def layers_of(catalog: Path, out: Path, bands, clear_fn=None):
    """Per output item: (item, its grid, the per-observation float layers of the bands, NaN where unclear)."""
    items = catalog_items(catalog)
    for name, item in output_items(out).items():
        props = item["properties"]
        with rasterio.open(item["assets"]["count"]["href"]) as src:
            transform, shape = src.transform, src.shape
        layers = expected_layers(items, bands, transform, shape, _dt(props["start_datetime"]),
                                 _dt(props["end_datetime"]), clear_fn=clear_fn)
        yield name, item, {b: np.stack(layers[b]) for b in bands}


def cog(item: dict, key: str) -> np.ndarray:
    with rasterio.open(item["assets"][key]["href"]) as src:
        return src.read(1)


def rounded(values: np.ndarray, nodata=0) -> np.ndarray:
    return np.where(np.isnan(values), nodata, np.rint(np.nan_to_num(values))).astype(np.uint16)


@pytest.fixture(scope="module")
def several(tmp_path_factory, demo_catalog):
    out = tmp_path_factory.mktemp("several") / "out"
    run(out, demo_catalog, "--bands", "red,nir", "--statistic", "median,p10,p90,mean,best",
        "--band-index", "ndvi", "--rank", "ndvi")
    return out


def test_several_statistics_in_one_run_equal_each_run_alone(several, demo_catalog, tmp_path):
    together = assets_of(several)
    names = {name for name, _ in together}
    assert len(names) == 6  # one item per cell and period, whatever the statistics
    for statistic in ("median", "p10", "p90", "mean"):
        alone = tmp_path / statistic
        run(alone, demo_catalog, "--bands", "red,nir", "--statistic", statistic)
        single = assets_of(alone)
        suffix = "" if statistic == "median" else f"_{statistic}"
        for (name, key), values in single.items():
            if key in ("count", "observed"):
                continue
            np.testing.assert_array_equal(together[(name, key + suffix)], values, err_msg=f"{name} {key}{suffix}")


def test_percentiles_and_mean_equal_numpy_over_the_clear_observations(several, demo_catalog):
    for name, item, layers in layers_of(demo_catalog, several, ["red", "nir"]):
        for band in ("red", "nir"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                p10 = np.nanpercentile(layers[band], 10, axis=0, method="linear")
                p90 = np.nanpercentile(layers[band], 90, axis=0, method="linear")
                mean = np.nanmean(layers[band], axis=0)
            np.testing.assert_array_equal(cog(item, f"{band}_p10"), rounded(p10), err_msg=f"{name} {band} p10")
            np.testing.assert_array_equal(cog(item, f"{band}_p90"), rounded(p90), err_msg=f"{name} {band} p90")
            np.testing.assert_array_equal(cog(item, f"{band}_mean"), rounded(mean), err_msg=f"{name} {band} mean")


def ndvi_layers(layers) -> np.ndarray:
    red, nir = layers["red"].astype(np.float32), layers["nir"].astype(np.float32)
    with np.errstate(all="ignore"):
        return ((nir - red) / (nir + red)).astype(np.float32)


def test_an_index_is_reduced_like_a_band_in_float32_with_nan_nodata(several, demo_catalog):
    for name, item, layers in layers_of(demo_catalog, several, ["red", "nir"]):
        ndvi = ndvi_layers(layers)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(ndvi, axis=0)
        got = cog(item, "ndvi")
        assert got.dtype == np.float32 and item["assets"]["ndvi"]["raster:bands"][0]["nodata"] == "nan"
        np.testing.assert_allclose(got, median, rtol=1e-6, equal_nan=True, err_msg=name)


def test_an_index_without_bands_reads_what_it_names_and_writes_the_index_alone(several, demo_catalog, tmp_path):
    out = tmp_path / "ndvi"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # an index's NaN in the thumbnail warns of nothing
        result = run(out, demo_catalog, "--band-index", "ndvi", "--statistic", "median,best", "--rank", "ndvi")
    assert "median,best of ndvi" in result.stderr
    together = assets_of(several)
    alone = assets_of(out)
    assert {key for _, key in alone} == {"ndvi", "ndvi_best", "date_best", "count", "observed"}
    assert len({name for name, _ in alone}) == 6
    for (name, key), values in alone.items():  # the same pixels as beside the bands
        np.testing.assert_array_equal(values, together[(name, key)], err_msg=f"{name} {key}")
    item = next(iter(output_items(out).values()))
    params = item["properties"]["gridded:pipeline"]
    assert (params["bands"], params["index_only"]) == (["nir", "red"], True)
    assert "eo:bands" not in item["assets"]["ndvi"]
    with rasterio.open(item["assets"]["thumbnail"]["href"]) as src:
        assert src.count == 4 and src.read(4).any()  # the index, in grey


def test_best_takes_every_band_of_the_greenest_observation_and_says_when(several, demo_catalog):
    for name, item, layers in layers_of(demo_catalog, several, ["red", "nir"]):
        ndvi = np.where(np.isnan(layers["red"]) | np.isnan(layers["nir"]), np.nan, ndvi_layers(layers))
        usable = ~np.isnan(ndvi)
        chosen = np.argmax(np.where(usable, ndvi, -np.inf), axis=0)  # the first of equal maxima
        none = ~usable.any(axis=0)
        for band in ("red", "nir"):
            want = np.take_along_axis(layers[band], chosen[None], axis=0)[0]
            want = np.where(none, 0, want)
            np.testing.assert_array_equal(cog(item, f"{band}_best"), rounded(want), err_msg=f"{name} {band}")
        # the date asset: days from the period's start to the chosen observation's (solar) day
        items = {it["id"]: it for it in catalog_items(demo_catalog)}
        start = _dt(item["properties"]["start_datetime"])
        times = sorted({_dt(items[i]["properties"]["datetime"]).date() for i in item["properties"]["gridded:inputs"]})
        days = np.array([(t - start.date()).days for t in times])
        date = cog(item, "date_best")
        assert date.dtype == np.int16
        np.testing.assert_array_equal(date[~none], days[chosen[~none]], err_msg=name)
        assert (date[none] == -1).all()


def test_observed_counts_observations_with_a_value_clear_or_not(several, demo_catalog):
    for name, item, layers in layers_of(demo_catalog, several, ["red", "nir"],
                                        clear_fn=lambda m: np.ones(m.shape, bool)):
        observed = (~np.isnan(layers["red"]) & ~np.isnan(layers["nir"])).sum(axis=0)
        np.testing.assert_array_equal(cog(item, "observed"), observed, err_msg=name)
        assert (cog(item, "count") <= cog(item, "observed")).all()


def test_the_items_name_what_each_asset_is(several):
    item = next(iter(output_items(several).values()))
    assets = item["assets"]
    assert assets["red_p90"]["title"] == "red (p90 of clear observations)"
    assert assets["ndvi_mean"]["title"] == "ndvi (mean of clear observations)"
    assert assets["date_best"]["title"].startswith("date of the best observation")
    assert assets["red_p10"]["eo:bands"][0]["common_name"] == "red"
    assert item["properties"]["gridded:pipeline"]["statistic"] == "median,p10,p90,mean,best"
    assert item["properties"]["gridded:pipeline"]["indices"] == {"ndvi": "(nir - red) / (nir + red)"}


@pytest.mark.parametrize("args, words", [
    (["--statistic", "p101"], "percentile outside 0-100"),
    (["--statistic", "mode"], "unknown statistic"),
    (["--statistic", "median,median"], "named twice"),
    (["--statistic", "best"], "needs what to rank by"),
    (["--statistic", "best", "--rank", "swir22"], "not a band or index read"),
    (["--band-index", "x=__import__('os')"], "unexpected \"'\" at position"),
    (["--band-index", "x=nir.real"], "unexpected '.' at position 4"),
    (["--band-index", "x=eval(nir)"], "function 'eval' is not allowed at position 1"),
    (["--band-index", "x=exec(nir)"], "function 'exec' is not allowed"),
    (["--band-index", "x=(nir - red"], "expected ')'"),
    (["--band-index", "x=nir red"], "unexpected 'red' at position 5"),
    (["--band-index", "x=(swir22 - nir)"], "names band(s) swir22, which are not read"),
    (["--band-index", "nbr"], "names band(s) swir22, which are not read"),
    (["--band-index", "greenness"], "not a built-in index"),
    (["--band-index", "ndvi", "--statistic", "geomedian"], "the geometric median is of the bands only"),
])
def test_bad_statistics_and_hostile_expressions_are_one_line_exit_2_before_any_read(demo_catalog, tmp_path, args,
                                                                                     words):
    result = CliRunner().invoke(cli, ["run", "--source", str(demo_catalog), *SELECT, "--bands", "red,nir", *args,
                                      "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("gridded: error: ") and words in line, line
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # nothing read, nothing written


def test_an_expression_is_never_evaluated_as_python():
    from gridded.compute.indices import evaluate, parse_expression

    tree = parse_expression("clip((nir - red) / (nir + red), 0, 1) * 2 - abs(-red) / 0")
    values = {"nir": np.array([3.0, 1.0], np.float32), "red": np.array([1.0, 1.0], np.float32)}
    result = evaluate(tree, values)
    assert result.dtype == np.float32 and np.isnan(result).all()  # a division by zero is NaN
    assert re.fullmatch(r"Node\(kind='-'.*", repr(tree), re.S)
    assert json.dumps(evaluate(parse_expression("(nir - red) / (nir + red)"), values).tolist()) == "[0.5, 0.0]"
