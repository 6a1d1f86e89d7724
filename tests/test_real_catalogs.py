"""Real catalogs as users have them: Earth Search and Planetary Computer items, their metadata as
published (tests/data/providers), with local pixels of the real size, CRS and transform
(tests/providers.py), served by a real STAC API (rustac serve) or as static catalogs; composites
against numpy over the pixels written, in stored and physical units."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from providers import (
    ES_24MUV_2025,
    ES_32TMT_0305_V0214,
    ES_32TMT_0705_V0214,
    ES_C1_24MUV_2025,
    ES_LANDSAT_LC08,
    PC_32TMT_0705_V0212,
    load_collection,
    load_item,
    materialize,
    serve_stac_api,
    window_lonlat,
    write_static_catalog,
    written,
)

from gridded.cli import cli

S2_CLEAR = np.array([c not in (0, 1, 3, 8, 9, 10) for c in range(256)])


def gridded_cli(*args: str, expect: int = 0):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == expect, result.output
    return result


def extent_of(item: dict, key: str) -> str:
    minx, miny, maxx, maxy = window_lonlat(item, key, written(item, key).window)
    inset = 0.1 * (maxx - minx)  # well inside the data window
    return f"{minx + inset},{miny + inset},{maxx - inset},{maxy - inset}"


def items_out(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.rglob("*.stac-item.json"))]


def read(href: str):
    with rasterio.open(urlparse(href).path if href.startswith("file:") else href) as src:
        return src.read(1), src.transform, src.shape, src.scales[0], src.offsets[0]


def on_grid(w, transform, shape) -> np.ndarray:
    """What a materialized asset holds under an output grid of the same resolution (0 outside its window)."""
    out = np.zeros(shape, dtype=w.array.dtype)
    col0 = round((transform.c - w.transform.c) / w.transform.a) - w.window[1].start
    row0 = round((transform.f - w.transform.f) / w.transform.e) - w.window[0].start
    rows, cols = w.array.shape[-2:]
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row0 + shape[0], rows), min(col0 + shape[1], cols)
    if r1 > r0 and c1 > c0:
        out[r0 - row0:r1 - row0, c0 - col0:c1 - col0] = w.array[r0:r1, c0:c1]
    return out


def scl_on(w_scl, transform, shape) -> np.ndarray:
    """The 20 m SCL under a 10 m output grid (each SCL pixel over 2 x 2)."""
    from dataclasses import replace

    fine = replace(w_scl, array=np.repeat(np.repeat(w_scl.array, 2, 0), 2, 1),
                   window=(slice(w_scl.window[0].start * 2, w_scl.window[0].stop * 2),
                           slice(w_scl.window[1].start * 2, w_scl.window[1].stop * 2)),
                   transform=w_scl.transform * w_scl.transform.scale(0.5))
    return on_grid(fine, transform, shape)


@pytest.fixture(scope="module")
def earth_search(tmp_path_factory):
    """Two Earth Search Sentinel-2 L2A dates of tile 32TMT (baseline 02.14), with red, nir and scl."""
    folder = tmp_path_factory.mktemp("es")
    rng = np.random.default_rng(32)
    window = (slice(256, 768), slice(3584, 4096))  # inside both dates' swaths
    items = [materialize(load_item(name), folder, ["red", "nir", "scl"], window=window, rng=rng)
             for name in (ES_32TMT_0305_V0214, ES_32TMT_0705_V0214)]
    for item in items:  # absolute URLs: an API serves them, and a bare path would resolve against its address
        for asset in item["assets"].values():
            if asset["href"].startswith("/"):
                asset["href"] = Path(asset["href"]).as_uri()
    return items


def expected_median(items, band, transform, shape) -> np.ndarray:
    layers = []
    for item in items:
        values = on_grid(written(item, band), transform, shape).astype(float)
        clear = S2_CLEAR[scl_on(written(item, "scl"), transform, shape)] & (values != 0)
        layers.append(np.where(clear, values, np.nan))
    with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(np.stack(layers), axis=0)
    return np.where(np.isnan(median), 0, np.rint(np.nan_to_num(median))).astype(np.uint16)


def check_medians(out: Path, items: list[dict], bands=("red", "nir"), scale=1e-4, offset=0.0) -> int:
    n = 0
    for doc in items_out(out):
        for band in bands:
            values, transform, shape, cog_scale, cog_offset = read(doc["assets"][band]["href"])
            want = expected_median(items, band, transform, shape)
            np.testing.assert_array_equal(values, want, err_msg=f"{doc['id']} {band}")
            declared = doc["assets"][band]["raster:bands"][0]
            assert (declared["scale"], declared.get("offset", 0.0)) == (scale, offset)
            assert (cog_scale, cog_offset) == (scale, offset)  # what GDAL and QGIS apply
            physical = values * declared["scale"] + declared.get("offset", 0.0)
            np.testing.assert_allclose(physical[want > 0], want[want > 0] * 1e-4 + offset + 0.0, rtol=1e-12)
            n += int((want > 0).sum())
    return n


def test_a_stac_api_search_gives_medians_equal_to_numpy_in_stored_and_physical_units(earth_search, tmp_path):
    collection = load_collection("earthsearch", "sentinel-2-l2a")
    extent = extent_of(earth_search[0], "red")
    with serve_stac_api(earth_search, [collection], tmp_path) as api:
        result = gridded_cli("run", "--source", api, "--collection", "sentinel-2-l2a", "--extent", extent,
                             "--time", "2020", "--period", "P1Y", "--grid", "auto", "--bands", "red,nir",
                             "--allow-root", str(tmp_path.parent), "--output", str(tmp_path / "out"))
    assert "band red: asset red (uint16, value x 0.0001 +0), 2 items" in result.stderr
    docs = items_out(tmp_path / "out")
    assert docs and all(d["properties"]["proj:epsg"] == 32632 for d in docs)  # auto: the extent's UTM zone
    assert all(len(d["properties"]["gridded:inputs"]) == 2 for d in docs)
    assert check_medians(tmp_path / "out", earth_search) > 10_000


def test_a_static_catalog_of_the_same_items_gives_the_same_composites(earth_search, tmp_path):
    catalog = write_static_catalog(earth_search, tmp_path / "catalog",
                                   [load_collection("earthsearch", "sentinel-2-l2a")])
    gridded_cli("run", "--source", str(catalog), "--extent", extent_of(earth_search[0], "red"), "--time", "2020",
                "--period", "P1Y", "--grid", "auto", "--bands", "red,nir", "--allow-root", str(tmp_path.parent),
                "--output", str(tmp_path / "out"))
    assert check_medians(tmp_path / "out", earth_search) > 10_000


def test_one_band_stored_two_ways_in_one_task_is_brought_to_one_encoding(tmp_path):
    # one acquisition in Earth Search's two collections: sentinel-2-l2a took the +1000 off
    # (earthsearch:boa_offset_applied), sentinel-2-c1-l2a kept it (offset -0.1 declared): a same-day
    # mosaic of them must not mix the encodings
    rng = np.random.default_rng(24)
    l2a = materialize(load_item(ES_24MUV_2025), tmp_path, ["red", "scl"], rng=rng)
    red = written(l2a, "red").array
    c1 = materialize(load_item(ES_C1_24MUV_2025), tmp_path, ["red", "scl"], rng=rng,
                     values={"red": np.where(red > 0, red + 1000, 0)})
    catalog = write_static_catalog([l2a, c1], tmp_path / "catalog", [
        load_collection("earthsearch", "sentinel-2-l2a"), load_collection("earthsearch", "sentinel-2-c1-l2a")])
    select = ["--source", str(catalog), "--extent", extent_of(l2a, "red"), "--time", "2025-07", "--grid", "auto",
              "--bands", "red", "--mask", "scl:0,1,3,8,9,10", "--allow-root", str(tmp_path)]
    for harmonize, offset in ((True, 0.0), (False, None)):
        out = tmp_path / f"out-{harmonize}"
        args = ["--pipeline", "s2-monthly-median"] if harmonize else []
        gridded_cli("run", *select, *args, "--output", str(out))
        for doc in items_out(out):
            values, transform, shape, scale, cog_offset = read(doc["assets"]["red"]["href"])
            first = on_grid(written(l2a, "red"), transform, shape)
            clear = (S2_CLEAR[scl_on(written(l2a, "scl"), transform, shape)]
                     | S2_CLEAR[scl_on(written(c1, "scl"), transform, shape)]) & (first > 0)
            assert len(doc["properties"]["gridded:inputs"]) == 2
            physical = values.astype(float) * scale + cog_offset
            np.testing.assert_allclose(physical[clear], first[clear] * 1e-4, atol=1e-9)
            assert (values[~clear] == 0).all()
            if offset is not None:  # harmonized: stored in the earlier encoding, DN / 10000
                assert (scale, cog_offset) == (1e-4, offset)
                np.testing.assert_array_equal(values[clear], first[clear])
                assert doc["properties"]["gridded:pipeline"]["harmonize"] is True


def test_a_multi_band_visual_asset_is_never_read_for_a_band_and_an_ambiguous_name_is_an_error(tmp_path):
    item = load_item(PC_32TMT_0705_V0212)
    item["assets"] = {"visual": item["assets"]["visual"], **{k: v for k, v in item["assets"].items() if k != "visual"}}
    local = materialize(item, tmp_path, ["B04", "SCL", "visual"], rng=np.random.default_rng(5))
    catalog = write_static_catalog([local], tmp_path / "catalog",
                                   [load_collection("planetarycomputer", "sentinel-2-l2a")])
    select = ["--source", str(catalog), "--extent", extent_of(local, "B04"), "--time", "2020-07", "--grid", "auto",
              "--allow-root", str(tmp_path)]
    result = gridded_cli("plan", *select, "--bands", "red")
    # Planetary Computer declares no raster:bands: the type comes from the file, the encoding from the baseline
    assert "band red: asset B04 (type from the file, value x 0.0001 +0), 1 items" in result.stderr
    assert "mask SCL:0,1,3,8,9,10" in result.stderr
    gridded_cli("run", *select, "--bands", "red", "--output", str(tmp_path / "out"))
    for doc in items_out(tmp_path / "out"):
        values, transform, shape, _, _ = read(doc["assets"]["red"]["href"])
        b04 = on_grid(written(local, "B04"), transform, shape)
        clear = S2_CLEAR[scl_on(written(local, "SCL"), transform, shape)] & (b04 > 0)
        np.testing.assert_array_equal(values[clear], b04[clear])  # not band 1 of the true-colour image
        assert doc["assets"]["red"]["eo:bands"][0]["name"] == "B04"
    result = gridded_cli("plan", *select, "--bands", "rededge", expect=2)
    # Planetary Computer calls B8A (narrow NIR) rededge too
    assert "band 'rededge' matches 4 assets (B05, B06, B07, B8A); name one of them in --bands" in result.stderr


def test_a_catalog_mixing_sensors_masks_each_item_by_its_own_rule(tmp_path):
    s2 = materialize(load_item(ES_32TMT_0305_V0214), tmp_path, ["red", "scl"], rng=np.random.default_rng(1))
    landsat = materialize(load_item(ES_LANDSAT_LC08), tmp_path, ["red", "qa_pixel"], rng=np.random.default_rng(2))
    catalog = write_static_catalog([s2, landsat], tmp_path / "catalog", [
        load_collection("earthsearch", "sentinel-2-l2a"), load_collection("earthsearch", "landsat-c2-l2")])
    for item, key, mask in ((s2, "red", "scl"), (landsat, "red", "qa_pixel")):
        out = tmp_path / f"out-{mask}"
        result = gridded_cli("run", "--source", str(catalog), "--extent", extent_of(item, key), "--time",
                             "2020-01-01/2023-12-31", "--period", "P1Y", "--grid", "utm-30m" if mask == "qa_pixel"
                             else "auto", "--bands", "red", "--allow-root", str(tmp_path), "--output", str(out))
        assert "mask " in result.stderr and "no mask asset" not in result.output
        docs = items_out(out)
        assert docs and {i for d in docs for i in d["properties"]["gridded:inputs"]} == {item["id"]}
    # both sensors at once: the mask is each item's own
    from gridded import plan, select

    both = plan(select(str(catalog), extent=extent_of(s2, "red"), time="2020-01-01/2023-12-31", grid="africa-30m",
                       bands="red", allow_roots=[str(tmp_path)], period="P1Y"))
    assert both.pipeline.mask.asset == "scl"  # one sensor in this extent: its rule made concrete
