"""The outputs in the tools users already have: stackstac, odc-stac, GDAL's STACIT, STAC schemas,
pictures (thumbnails, the plan map, the quicklook) and the live status."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pystac
import pytest
import rasterio
from click.testing import CliRunner
from providers import serve_stac_api
from stac_schemas import errors

from gridded.cli import cli
from gridded.demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME

BANDS = ["blue", "green", "red", "nir"]
RUN = ["--extent", DEMO_EXTENT, "--time", DEMO_TIME, "--grid", str(DEMO_GRID), "--pipeline", "s2-monthly-median",
       "--tiles-per-worker", "2"]


def cli_ok(*args):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def output(tmp_path_factory, demo_catalog) -> Path:
    out = tmp_path_factory.mktemp("outputs") / "out"
    cli_ok("run", "--source", str(demo_catalog), *RUN, "--output", str(out))
    return out


def item_files(out: Path) -> list[Path]:
    return sorted(out.rglob("*.stac-item.json"))


def cog(path: str) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_items_collection_and_catalog_validate_against_the_schemas_they_declare(output):
    docs = [json.loads(p.read_text()) for p in item_files(output)]
    docs += [json.loads((output / name).read_text()) for name in ("collection.json", "catalog.json")]
    for doc in docs:
        assert errors(doc) == [], doc["id"]
    item = docs[0]
    assert "https://stac-extensions.github.io/projection/v1.2.0/schema.json" in item["stac_extensions"]
    assert item["properties"]["proj:epsg"] == 32755 and item["properties"]["proj:code"] == "EPSG:32755"
    # the validator is not a rubber stamp: proj:epsg is not allowed by projection v2.0.0
    wrong = json.loads(json.dumps(item))
    wrong["stac_extensions"][0] = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
    assert errors(wrong)
    del wrong["properties"]["proj:epsg"]
    assert errors(wrong) == []


def test_items_describe_their_bands_and_how_to_read_them(output, demo_catalog):
    source = json.loads(next(demo_catalog.parent.rglob("*_L2A.json")).read_text())
    for path in item_files(output)[:3]:
        item = json.loads(path.read_text())
        assert item["id"] == item["id"].lower()
        assert item["properties"]["datetime"] == item["properties"]["start_datetime"]
        assert {link["rel"] for link in item["links"]} >= {"self", "root", "parent", "collection", "derived_from"}
        assert all(link.get("title") for link in item["links"])
        for band in BANDS:
            asset = item["assets"][band]
            assert asset["href"].startswith("file:///")
            assert asset["eo:bands"][0]["common_name"] == band
            assert asset["eo:bands"][0]["name"] == source["assets"][band]["eo:bands"][0]["name"]
            values = cog(asset["href"])
            valid = values[values != 0]
            stats = asset["raster:bands"][0]["statistics"]
            assert stats["minimum"] == valid.min() and stats["maximum"] == valid.max()
            assert stats["mean"] == pytest.approx(valid.mean()) and stats["valid_percent"] == pytest.approx(
                100 * valid.size / values.size, abs=1e-3)
            with rasterio.open(asset["href"]) as src:  # what QGIS shows
                assert src.descriptions[0] == f"{band} (median of clear observations)" and src.nodata == 0
        thumb = item["assets"]["thumbnail"]
        assert thumb["roles"] == ["thumbnail"] and thumb["type"] == "image/png"
        with rasterio.open(thumb["href"]) as png:
            assert png.driver == "PNG" and max(png.shape) == 256 and png.count == 4
            alpha = png.read(4)
        count = cog(item["assets"]["count"]["href"])
        # transparent exactly where the composite has no value (nearest-neighbour thumbnail of it)
        rows = np.minimum(((np.arange(alpha.shape[0]) + 0.5) * count.shape[0] / alpha.shape[0]).astype(int),
                          count.shape[0] - 1)
        cols = np.minimum(((np.arange(alpha.shape[1]) + 0.5) * count.shape[1] / alpha.shape[1]).astype(int),
                          count.shape[1] - 1)
        red = cog(item["assets"]["red"]["href"])[np.ix_(rows, cols)]
        np.testing.assert_array_equal(alpha == 0, red == 0)


def test_the_collection_describes_the_product(output):
    collection = json.loads((output / "collection.json").read_text())
    assert set(collection["item_assets"]) == {*BANDS, "count", "observed", "thumbnail"}
    summaries = collection["summaries"]
    assert summaries["gridded:statistic"] == ["median"] and summaries["gridded:period"] == ["P1M"]
    assert summaries["platform"] == ["sentinel-2a", "sentinel-2b"] and summaries["gsd"] == [10.0]
    assert [b["common_name"] for b in summaries["eo:bands"]] == BANDS
    assert collection["providers"][0]["roles"] == ["processor"] and collection["license"] == "other"
    interval = collection["extent"]["temporal"]["interval"][0]
    assert interval[0].startswith("2024-01-01") and interval[1].startswith("2024-03-31")


def period_starts() -> list[np.datetime64]:
    return [np.datetime64(f"2024-0{m}-01T00:00:00") for m in (1, 2, 3)]


def assert_equal_to_the_cogs(data, item_docs: list[dict], band: str) -> None:
    """Each item's COG pixels equal the loader's array at that time and place."""
    for doc in item_docs:
        left, bottom, right, top = doc["properties"]["proj:bbox"]
        when = np.datetime64(doc["properties"]["start_datetime"][:19])
        at = data.sel(time=when)  # pixel edges (stackstac) or centres (odc-stac): [left, right) x (bottom, top]
        part = at.isel(x=np.flatnonzero((at.x.values >= left) & (at.x.values < right)),
                       y=np.flatnonzero((at.y.values <= top) & (at.y.values > bottom)))
        expected = cog(doc["assets"][band]["href"]).astype(np.float64)
        got = np.asarray(part.values, dtype=np.float64).squeeze()
        got = np.where(np.isnan(got), 0, got)
        np.testing.assert_array_equal(got, expected)


def test_stackstac_and_odc_stac_load_items_searched_with_pystac_client(output, tmp_path, monkeypatch):
    import odc.stac
    import pystac_client
    import stackstac

    docs = [json.loads(p.read_text()) for p in item_files(output)]
    collection = json.loads((output / "collection.json").read_text())
    collection["links"] = [link for link in collection["links"] if link["rel"] != "item"]  # the API serves them
    monkeypatch.chdir(tmp_path)  # nothing depends on where the outputs were written from
    with serve_stac_api(docs, [collection], tmp_path) as api:
        search = pystac_client.Client.open(api).search(collections=[collection["id"]], limit=5)
        found = list(search.items_as_dicts())
        items = list(search.items())
    assert len(found) == len(items) == 18
    # stackstac reads proj:epsg only; pystac (>= 1.12) rewrites it to proj:code when it makes Items
    # of a projection extension before v2.0.0, so stackstac gets the search's own dicts
    stacked = stackstac.stack(found)  # no arguments: CRS, resolution and times from the items
    assert sorted(set(stacked.time.values)) == period_starts()
    assert_equal_to_the_cogs(stacked.sel(band="red").groupby("time").first(), docs, "red")
    loaded = odc.stac.load(items, bands=["red", "count"])
    assert list(loaded.time.values) == period_starts()
    assert_equal_to_the_cogs(loaded.red, docs, "red")
    assert_equal_to_the_cogs(loaded["count"], docs, "count")


def test_stackstac_takes_the_item_files_as_they_are(output, tmp_path, monkeypatch):
    import stackstac

    monkeypatch.chdir(tmp_path)
    docs = [json.loads(p.read_text()) for p in item_files(output)]
    stacked = stackstac.stack(docs)
    assert sorted(set(stacked.time.values)) == period_starts() and stacked.attrs["crs"] == "epsg:32755"
    assert_equal_to_the_cogs(stacked.sel(band="nir").groupby("time").first(), docs, "nir")


def test_odc_stac_loads_items_read_from_files_elsewhere(output, tmp_path, monkeypatch):
    import odc.stac

    docs = [json.loads(p.read_text()) for p in item_files(output)]
    monkeypatch.chdir(tmp_path)
    items = [pystac.Item.from_file(str(p)) for p in item_files(output)]
    loaded = odc.stac.load(items, bands=["nir"])
    assert list(loaded.time.values) == period_starts()
    assert_equal_to_the_cogs(loaded.nir, docs, "nir")


def test_gdal_stacit_mosaics_a_period(output, tmp_path):
    docs = [json.loads(p.read_text()) for p in item_files(output) if "2024-02--p1m" in p.name]
    collection = tmp_path / "february.json"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": docs}))
    with rasterio.open(f'STACIT:"{collection}":asset=red') as mosaic:
        values, transform = mosaic.read(1), mosaic.transform
        assert mosaic.crs.to_epsg() == 32755 and mosaic.res == (10.0, 10.0)
    for doc in docs:
        left, _, _, top = doc["properties"]["proj:bbox"]
        row, col = round((transform.f - top) / 10), round((left - transform.c) / 10)
        np.testing.assert_array_equal(values[row:row + 256, col:col + 256], cog(doc["assets"]["red"]["href"]))


def test_a_relative_catalog_is_a_self_contained_copy(output, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    cli_ok("catalog", "--output", str(copy), "--relative")
    shutil.move(copy, tmp_path / "moved")
    catalog = pystac.Catalog.from_file(str(tmp_path / "moved" / "catalog.json"))
    items = list(catalog.get_items(recursive=True))
    assert len(items) == 18
    for item in items:
        for asset in item.assets.values():
            assert asset.href.startswith("./")
            assert Path(asset.get_absolute_href()).is_file() and "moved" in asset.get_absolute_href()


def test_plan_geojson_and_status_say_what_a_partial_run_left(demo_catalog, tmp_path):
    out = tmp_path / "out"
    cells = tmp_path / "cells.pickle"
    select = ["--source", str(demo_catalog), *RUN]
    assert cli_ok("tiles", "generate", *select, "--cells", str(cells)).stdout == "3\n"  # batches 0..2
    cli_ok("run", *select, "--output", str(out), "--dry-run")
    cli_ok("tiles", "process", "--cells", str(cells), "--batch", "1", "--output", str(out))
    geojson = tmp_path / "cells.geojson"
    cli_ok("plan", *select, "--output", str(out), "--geojson", str(geojson))
    features = json.loads(geojson.read_text())["features"]
    assert len(features) == 18  # one per cell and period; every cell of the extent has data
    done = {(f["properties"]["x"], f["properties"]["y"]) for f in features if f["properties"]["state"] == "done"}
    assert len(done) == 2 and {f["properties"]["batch"] for f in features
                               if f["properties"]["state"] == "done"} == {1}
    assert all(Path(urlparse(f["properties"]["item_href"]).path).is_file()
               for f in features if f["properties"]["state"] == "done")
    assert {f["properties"]["state"] for f in features} == {"done", "to-do"}
    assert all(f["properties"]["observations"] > 0 for f in features)


def test_a_run_keeps_its_status_and_gridded_status_reads_it_back(output):
    status = json.loads((output / "status.geojson").read_text())
    assert len(status["features"]) == 18 and {f["properties"]["state"] for f in status["features"]} == {"done"}
    result = cli_ok("status", "--output", str(output))
    assert result.stdout.startswith("to-do 0  done 18")


def test_the_plan_map_has_a_legend_labels_a_graticule_and_a_title(demo_catalog):
    from gridded import plan, select
    from gridded.maps import plan_figure

    figure = plan_figure(plan(select(str(demo_catalog), extent=DEMO_EXTENT, time=DEMO_TIME, grid=str(DEMO_GRID),
                                     bands="red")))
    axes = figure.axes[0]
    legend = [t.get_text() for t in axes.get_legend().get_texts()]
    assert legend == ["to-do", "extent", "scene footprints"]
    labels = {t.get_text() for t in axes.texts}
    assert {"x234\ny2343", "x236\ny2344"} <= labels and len(labels) == 6
    assert "6 cells" in axes.get_title() and "demo-utm55s-2560m" in axes.get_title()
    assert axes.xaxis.get_gridlines()[0].get_visible() and "longitude" in axes.get_xlabel()
    # every distinct scene footprint (a tile's revisits share one) outlined, and the extent
    import pystac

    outlines = {json.dumps(item.geometry, sort_keys=True)
                for item in pystac.Catalog.from_file(str(demo_catalog)).get_items(recursive=True)}
    assert len(outlines) >= 2 and len(axes.lines) == len(outlines) + 1


def test_quicklook_mosaics_a_period_with_a_scale_bar(output, tmp_path):
    from gridded.io.storage import open_storage
    from gridded.maps import quicklook_figure

    figure, n = quicklook_figure(open_storage(str(output)), period="2024-02--P1M")
    axes = figure.axes[0]
    assert n == 6 and len(axes.images) == 6 and "2024-02--P1M" in axes.get_title()
    assert any(t.get_text().endswith("km") for t in axes.texts)  # the scale bar's label
    png = tmp_path / "look.png"
    cli_ok("quicklook", "--output", str(output), "--png", str(png))
    with rasterio.open(png) as src:
        assert src.driver == "PNG" and src.width > 300
    assert os.path.getsize(png) > 1000
