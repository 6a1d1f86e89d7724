"""Product recipes: the built-in ones as written, YAML normalised once, the fingerprint's input
stable, and every bad value refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gridded._data import data_dir
from gridded.errors import ConfigError
from gridded.masks import MaskRule
from gridded.pipeline import INFER, Pipeline, indices_of, load_pipeline

S2_SCL = MaskRule(asset="scl", kind="classes", values=(0, 1, 3, 8, 9, 10))
LANDSAT_QA = MaskRule(asset="qa_pixel", kind="bits", values=(0, 1, 2, 3, 4))
NDVI = "(nir - red) / (nir + red)"

BUILT_IN = {
    "ls-monthly-median": dict(bands=("blue", "green", "red", "nir08", "swir16", "swir22"), statistic="median",
                              period="P1M", mask=LANDSAT_QA, collection="landsat-c2-l2", grid="utm-30m",
                              harmonize=False),
    "s2-annual-geomad": dict(bands=("blue", "green", "red", "nir"), statistic="geomad", period="P1Y", mask=S2_SCL,
                             collection="sentinel-2-l2a", grid=None, harmonize=True),
    "s2-annual-geomedian": dict(bands=("blue", "green", "red", "nir"), statistic="geomedian", period="P1Y",
                                mask=S2_SCL, collection="sentinel-2-l2a", grid=None, harmonize=True),
    "s2-monthly-median": dict(bands=("blue", "green", "red", "nir"), statistic="median", period="P1M", mask=S2_SCL,
                              collection="sentinel-2-l2a", grid=None, harmonize=True),
}


def recipe(tmp_path: Path, text: str, name: str = "recipe") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def one_line_error(call) -> str:
    with pytest.raises(ConfigError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message and message
    assert caught.value.exit_code == 2
    return message


def test_the_built_in_recipes_are_the_ones_tested_here():
    assert sorted(p.stem for p in data_dir("pipelines").glob("*.yaml")) == sorted(BUILT_IN)


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_built_in_recipe_loads_as_written(name):
    pipeline = load_pipeline(name)
    expected = BUILT_IN[name]
    assert pipeline.name == name
    assert pipeline.bands == expected["bands"]
    assert pipeline.statistic == expected["statistic"]
    assert pipeline.statistics == (expected["statistic"],)
    assert pipeline.period == expected["period"]
    assert pipeline.mask == expected["mask"]
    assert pipeline.collection == expected["collection"]
    assert pipeline.grid == expected["grid"]
    assert pipeline.harmonize is expected["harmonize"]
    assert (pipeline.dtype, pipeline.nodata) == ("uint16", 0)
    assert (pipeline.encodings, pipeline.descriptions, pipeline.indices) == ((), (), ())


def test_a_recipe_file_loads_and_is_named_after_the_file_by_default(tmp_path):
    pipeline = load_pipeline(str(recipe(tmp_path, "bands: red,nir\nstatistic: mean\nperiod: P3M\n", "my-product")))
    assert (pipeline.name, pipeline.bands, pipeline.statistic, pipeline.period) == (
        "my-product", ("red", "nir"), "mean", "P3M")
    assert pipeline.mask == INFER and pipeline.harmonize is False


def test_unknown_recipe_keys_are_refused_by_name(tmp_path):
    path = recipe(tmp_path, "bands: [red]\nbandz: [nir]\ncolour: blue\nencodings: {}\n")
    message = one_line_error(lambda: load_pipeline(str(path)))
    assert message.startswith(f"{path}: unknown key(s) bandz, colour, encodings;")
    assert "allowed:" in message and "statistic" in message.split("allowed:")[1]


@pytest.mark.parametrize("text, wanted", [
    ("- red\n- nir\n", "a pipeline is a mapping"),
    ("bands: {red: 1}\n", "bands must be a list of band names"),
    ("bands: [red]\nperiod: monthly\n", "--period monthly: not an ISO 8601 period"),
    ("bands: [red]\nstatistic: [median, nope]\n", "--statistic nope: unknown statistic"),
    ("bands: [red]\nstatistic: [\n", "not valid YAML"),
])
def test_a_bad_recipe_is_one_line_naming_the_file(tmp_path, text, wanted):
    path = recipe(tmp_path, text)
    message = one_line_error(lambda: load_pipeline(str(path)))
    assert str(path) in message and wanted in message


@pytest.mark.parametrize("text, value", [
    ("bands: [red]\nmask: cloudy\n", "cloudy"),
    ("bands: [red, nir]\nindices: {nope: null}\n", "nope"),
])
def test_a_bad_mask_or_index_in_a_recipe_names_the_file(tmp_path, text, value):
    path = recipe(tmp_path, text)
    message = one_line_error(lambda: load_pipeline(str(path)))
    assert str(path) in message and value in message


def test_an_unknown_built_in_name_lists_the_built_ins():
    message = one_line_error(lambda: load_pipeline("s2-daily-median"))
    assert message.startswith("--pipeline s2-daily-median: no such built-in name")
    assert all(name in message for name in BUILT_IN)


def test_a_yaml_list_of_statistics_becomes_one_string(tmp_path):
    pipeline = load_pipeline(str(recipe(tmp_path, "bands: [red]\nstatistic: [median, p10]\n")))
    assert pipeline.statistic == "median,p10"
    assert pipeline.statistics == ("median", "p10")


@pytest.mark.parametrize("given, canonical", [
    ("p90.0", "p90"),
    ("p2.50", "p2.5"),
    (" median , p10.0 ", "median,p10"),
    ("p0,p100.000", "p0,p100"),
    ("geomedian", "geomedian"),
])
def test_statistics_are_canonicalised(given, canonical):
    assert Pipeline(name="x", bands=("red",), statistic=given).statistic == canonical


def test_a_statistic_named_twice_in_two_spellings_is_refused():
    message = one_line_error(lambda: Pipeline(name="x", bands=("red",), statistic="p90,p90.0"))
    assert "named twice" in message


def test_indices_of_a_mapping_a_list_and_name_equals_expression():
    bands = ("red", "nir")
    assert indices_of({"ndvi": None}, bands) == (("ndvi", NDVI),)
    assert indices_of({"diff": "nir - red"}, bands) == (("diff", "nir - red"),)
    assert indices_of(["ndvi", "diff = nir - red"], bands) == (("ndvi", NDVI), ("diff", "nir - red"))
    assert indices_of(("ratio=nir / red",), bands) == (("ratio", "nir / red"),)
    # a built-in's common names as another sensor's assets name the bands: Landsat's nir08
    assert indices_of(["ndvi"], ("red", "nir08")) == (("ndvi", "(nir08 - red) / (nir08 + red)"),)


@pytest.mark.parametrize("spec, bands, wanted", [
    ("ndvi", ("red", "nir"), "indices must be a mapping"),
    (["ndvi", "ndvi=nir"], ("red", "nir"), "an index named twice"),
    ({"nope": None}, ("red", "nir"), "--band-index nope: not a built-in index"),
    ({"ndvi": None}, ("red",), "names band(s) nir, which are not read"),
    ({"red": "nir"}, ("red", "nir"), "red is also a band name"),
    ({"NDVI": "nir"}, ("red", "nir"), "an index name is lower-case"),
    ({"x": "nir +"}, ("red", "nir"), "ends too soon"),
])
def test_bad_indices_are_one_line(spec, bands, wanted):
    assert wanted in one_line_error(lambda: indices_of(spec, bands))


def test_recipe_indices_are_resolved(tmp_path):
    pipeline = load_pipeline(str(recipe(tmp_path, "bands: [red, nir]\nindices: {ndvi: null, d: nir - red}\n")))
    assert pipeline.indices == (("ndvi", NDVI), ("d", "nir - red"))
    assert pipeline.layers == ("red", "nir", "ndvi", "d")


def test_indices_without_bands_read_the_bands_they_name_and_reduce_only_themselves(tmp_path):
    from gridded.selection import recipe_for

    pipeline = load_pipeline(str(recipe(tmp_path, "indices: {ndvi: null, d: swir16 - nir}\n")))
    assert (pipeline.bands, pipeline.index_only) == (("nir", "red", "swir16"), True)
    assert (pipeline.reduced_bands, pipeline.layers) == ((), ("ndvi", "d"))
    assert pipeline.parameters()["index_only"] is True
    flags = recipe_for(None, indices=["nbr"])
    assert (flags.bands, flags.layers) == (("nir", "swir22"), ("nbr",))
    # bands given over an index-only recipe: they are read and written again, and checked against the indices
    assert recipe_for(pipeline, bands="red,nir,swir16").layers == ("red", "nir", "swir16", "ndvi", "d")
    assert "names band(s) swir16, which are not read" in one_line_error(lambda: recipe_for(pipeline, bands="red,nir"))
    # indices given over it: the bands follow the new indices
    assert recipe_for(pipeline, indices=["ndwi"]).bands == ("green", "nir")
    # a recipe with bands keeps them: an index is checked against them
    banded = load_pipeline(str(recipe(tmp_path, "bands: [red, nir]\n")))
    assert "names band(s) swir22" in one_line_error(lambda: recipe_for(banded, indices=["nbr"]))
    assert "index_only without indices" in one_line_error(lambda: Pipeline(name="x", bands=("red",), index_only=True))
    assert "index_only" not in Pipeline(name="x", bands=("red",)).parameters()  # fingerprints as before
    # an index is over bands, not over another index; nor named like a band it reads
    assert "names the index ndvi; an expression is over bands only" in one_line_error(
        lambda: recipe_for(None, indices=["ndvi", "x=ndvi * 2"]))
    assert "red is also a band name (read for the indices)" in one_line_error(
        lambda: recipe_for(None, indices=["red=nir - red"]))
    # a recipe saying index_only: false with no bands writes the bands its indices read
    both = load_pipeline(str(recipe(tmp_path, "indices: {ndvi: null}\nindex_only: false\n")))
    assert both.layers == ("nir", "red", "ndvi")
    # a band read only for the indices may still rank the observations of a mosaic
    assert Pipeline(name="x", bands=("nir", "red"), indices=(("ndvi", NDVI),), index_only=True, statistic="best",
                    rank="-red").layers == ("ndvi",)
    # a recipe may list the bands and still write only its indices
    listed = load_pipeline(str(recipe(tmp_path, "bands: [blue, red, nir]\nindices: {evi: null}\nindex_only: true\n")))
    assert (listed.bands, listed.layers) == (("blue", "red", "nir"), ("evi",))
    assert "must be true or false" in one_line_error(
        lambda: load_pipeline(str(recipe(tmp_path, "bands: [red, nir]\nindices: {ndvi: null}\nindex_only: sure\n"))))


PLAIN = {"name": "x", "bands": ["red"], "statistic": "median", "period": "P1M", "mask": "infer", "dtype": None,
         "nodata": None}


def test_the_parameters_of_a_plain_recipe_are_exactly_these():
    """The input fingerprint of every existing output depends on this dict: a change here makes
    every rerun recompute everything."""
    assert Pipeline(name="x", bands=("red",)).parameters() == PLAIN
    # what a result does not depend on leaves it alone: licence, collection, grid, descriptions,
    # geomedian options of a median, identity encodings
    assert Pipeline(name="x", bands=("red",), license="CC-BY-4.0", collection="c", grid="g", max_iterations=5,
                    tolerance=0.01, percentile_method="nearest", encodings=(("red", 1.0, 0.0),),
                    descriptions=(("red", json.dumps({"name": "B04"})),)).parameters() == PLAIN


@pytest.mark.parametrize("changes, added", [
    (dict(harmonize=True), {"harmonize": True}),
    (dict(encodings=(("red", 1e-4, -0.1),)), {"encodings": {"red": [1e-4, -0.1]}}),
    (dict(bands=("red", "nir"), indices=(("ndvi", NDVI),)), {"bands": ["red", "nir"], "indices": {"ndvi": NDVI}}),
    (dict(statistic="geomedian"), {"statistic": "geomedian", "max_iterations": 1000, "tolerance": 1e-7}),
    (dict(statistic="p10"), {"statistic": "p10"}),  # numpy's default method: not recorded
    (dict(statistic="p10", percentile_method="nearest"), {"statistic": "p10", "percentile_method": "nearest"}),
    (dict(statistic="median,p90"), {"statistic": "median,p90"}),
    (dict(statistic="best", rank="-red"), {"statistic": "best", "rank": "-red"}),
    (dict(mask=S2_SCL), {"mask": "scl:0,1,3,8,9,10"}),
    (dict(mask=None), {"mask": "none"}),
    (dict(dtype="float32", nodata=-1), {"dtype": "float32", "nodata": -1}),
])
def test_what_a_result_depends_on_changes_the_parameters(changes, added):
    assert Pipeline(**{"name": "x", "bands": ("red",), **changes}).parameters() == {**PLAIN, **added}


def test_encoding_and_description_defaults():
    plain = Pipeline(name="x", bands=("red", "nir"))
    assert plain.encoding("red") == (1.0, 0.0)
    assert plain.description("red") == {}
    resolved = Pipeline(name="x", bands=("red", "nir"), encodings=(("red", 1e-4, -0.1),),
                        descriptions=(("nir", json.dumps({"name": "B08", "common_name": "nir"})),))
    assert resolved.encoding("red") == (1e-4, -0.1)
    assert resolved.encoding("nir") == (1.0, 0.0)
    assert resolved.description("nir") == {"name": "B08", "common_name": "nir"}
    assert resolved.description("red") == {}


@pytest.mark.parametrize("changes, wanted", [
    (dict(name=""), "pipeline name ''"),
    (dict(name="my product"), "pipeline name 'my product'"),
    (dict(name="-lead"), "pipeline name '-lead'"),
    (dict(bands=()), "no bands"),
    (dict(bands=("re d",)), "band name 're d'"),
    (dict(bands=("..",)), "band name '..'"),
    (dict(bands=("red", "count")), "'count' is reserved"),
    (dict(bands=("red", "smad"), statistic="geomad"), "band name 'smad' is the name of a --statistic geomad output"),
    (dict(statistic="nope"), "--statistic nope: unknown statistic"),
    (dict(statistic="p101"), "percentile outside 0-100"),
    (dict(statistic=""), "no statistic"),
    (dict(statistic="best"), "--statistic best needs what to rank by"),
    (dict(statistic="best", rank="ndvi"), "--rank ndvi: not a band or index read"),
    (dict(statistic="geomedian", bands=("red", "nir"), indices=(("ndvi", NDVI),)),
     "--statistic geomedian with --band-index"),
    (dict(period="1M"), "--period 1M: not an ISO 8601 period"),
    (dict(period="P0M"), "--period P0M"),
    (dict(period="monthly"), "--period monthly"),
    (dict(mask="s2"), "bad mask 's2'"),
    (dict(nodata="zero"), "nodata must be a number, got 'zero'"),
    (dict(dtype="notatype"), "dtype 'notatype' is not a numpy dtype"),
    (dict(tolerance=0), "tolerance must be a number in (0, 1), got 0"),
    (dict(tolerance=1), "got 1;"),
    (dict(tolerance="small"), "got 'small'"),
    (dict(tolerance=True), "got True"),
    (dict(max_iterations=0), "max_iterations must be a positive integer, got 0"),
    (dict(max_iterations=2.5), "got 2.5"),
    (dict(max_iterations="many"), "got 'many'"),
    (dict(harmonize="yes"), "harmonize must be true or false, got 'yes'"),
    (dict(harmonize=1), "harmonize must be true or false, got 1"),
    (dict(percentile_method="midpoint"), "percentile_method 'midpoint'"),
])
def test_every_invalid_value_is_a_one_line_config_error(changes, wanted):
    fields = {"name": "x", "bands": ("red",), **changes}
    assert wanted in one_line_error(lambda: Pipeline(**fields))


@pytest.mark.parametrize("changes", [dict(nodata=True), dict(max_iterations=True), dict(nodata=False)])
def test_a_boolean_is_not_a_number(changes):
    one_line_error(lambda: Pipeline(name="x", bands=("red",), **changes))


def test_a_period_that_cannot_be_calendar_aligned_is_refused_with_the_recipe():
    one_line_error(lambda: Pipeline(name="x", bands=("red",), period="P5M"))
