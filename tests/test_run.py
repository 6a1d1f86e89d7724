"""`gridded run` end to end on the demo catalog: pixels against numpy, COGs, items, catalog, reruns."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pystac
import pytest
import rasterio
from click.testing import CliRunner
from expected import (
    BANDS,
    _dt,
    catalog_items,
    check_pixels,
    check_pixels_band,
    expected_composite,
    output_items,
    report_counts,
)

from gridded.cli import cli
from gridded.demo import ORIGIN_XY


def run_cli(args, expect=0):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == expect, result.output + result.stderr
    return result


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, demo_catalog):
    out = tmp_path_factory.mktemp("run") / "out"
    from gridded.demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME

    args = ["run", "--source", str(demo_catalog), "--extent", DEMO_EXTENT, "--time", DEMO_TIME,
            "--grid", str(DEMO_GRID), "--pipeline", "s2-monthly-median", "--tiles-per-worker", "2",
            "--output", str(out)]
    result = run_cli(args)
    return out, args, result


def test_run_medians_equal_numpy(demo_run, demo_catalog):
    out, _, result = demo_run
    stats = check_pixels(out, demo_catalog)
    assert stats["tasks"] == 18  # 6 cells x 3 months
    # the hard cases really occur in the data, so the equality above covered them
    assert stats["outside"] > 10_000  # tiles straddle the source edge
    assert stats["no_clear"] > 500  # the always-cloudy February patch, cloud overlaps
    assert stats["even"] > 10_000  # even numbers of clear observations
    assert "done" in result.output and "18" in result.output


def test_even_counts_round_half_to_even(demo_run, demo_catalog):
    """Some even-count medians fall on .5 and must be rounded as numpy.rint does."""
    out, _, _ = demo_run
    items = catalog_items(demo_catalog)
    item = output_items(out)["s2-monthly-median_x235_y2343_2024-01--p1m.stac-item.json"]
    with rasterio.open(next(out.rglob("s2-monthly-median_x235_y2343_2024-01--p1m_red.tif"))) as src:
        got, transform, shape = src.read(1), src.transform, src.shape
    start, end = _dt(item["properties"]["start_datetime"]), _dt(item["properties"]["end_datetime"])
    medians, count, _ = expected_composite(items, ["red"], transform, shape, start, end)
    assert ((count % 2 == 0) & (count > 0)).any()
    np.testing.assert_array_equal(got, medians["red"])


def test_outputs_are_cogs_on_the_source_grid(demo_run):
    out, _, _ = demo_run
    tifs = sorted(out.rglob("*.tif"))
    assert len(tifs) == 18 * 6  # four bands, count, observed
    for tif in tifs:
        with rasterio.open(tif) as src:
            assert src.driver == "GTiff"
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert src.profile["tiled"] and src.block_shapes[0] == (512, 512)
            assert src.compression.name.lower() in ("deflate", "zstd")
            assert src.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") in ("2", "3")
            assert src.overviews(1)
            assert src.nodata == 0
            assert src.crs.to_epsg() == 32755
            t = src.transform
            assert (t.a, t.e) == (10, -10)
            # on the source pixel grid: no resampling
            assert (t.c - ORIGIN_XY[0]) % 10 == 0 and (t.f - ORIGIN_XY[1]) % 10 == 0
            assert t.c % 2560 == 0 and t.f % 2560 == 0  # and on the tile grid


def test_items_carry_the_contract_fields(demo_run, demo_catalog):
    out, _, _ = demo_run
    items = output_items(out)
    assert len(items) == 18
    source_ids = {it["id"] for it in catalog_items(demo_catalog)}
    for name, item in items.items():
        props = item["properties"]
        assert set(item["assets"]) == set(BANDS) | {"count", "observed", "thumbnail"}
        assert props["start_datetime"] < props["end_datetime"]
        assert props["proj:code"] == "EPSG:32755" and props["proj:shape"] == [256, 256]
        assert len(props["proj:transform"]) == 6
        for key, asset in item["assets"].items():
            if key == "thumbnail":
                continue
            band = asset["raster:bands"][0]
            assert band["data_type"] == "uint16" and band["nodata"] == 0
            assert (out / Path(name).parent).exists()
        inputs = props["gridded:inputs"]
        assert inputs and set(inputs) <= source_ids
        derived = [link for link in item["links"] if link["rel"] == "derived_from"]
        assert len(derived) == len(inputs)
        assert props["gridded:pipeline"]["name"] == "s2-monthly-median"
        assert props["gridded:version"] and props["gridded:fingerprint"]
        assert item["collection"] == "s2-monthly-median"


def test_output_is_a_valid_static_catalog(demo_run):
    out, _, _ = demo_run
    root = pystac.read_file(str(out / "catalog.json"))
    items = list(root.get_items(recursive=True))
    assert len(items) == 18
    for item in items:
        for asset in item.assets.values():
            assert Path(urlparse(asset.get_absolute_href()).path).is_file()
    collection = pystac.read_file(str(out / "collection.json"))
    assert collection.extent.temporal.intervals[0][0].month == 1
    report = json.loads((out / "run-report.json").read_text())
    assert report["counts"] == {"done": 18, "skipped": 0, "failed": 0}


def test_rerun_skips_and_overwrite_recomputes(demo_run):
    out, args, _ = demo_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.tif")}
    run_cli(args)
    assert report_counts(out) == {"done": 0, "skipped": 18, "failed": 0}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.tif")} == before
    run_cli(args + ["--overwrite"])
    assert report_counts(out) == {"done": 18, "skipped": 0, "failed": 0}
    assert not list(out.rglob("*.gridded-tmp-*"))


def test_late_scene_recomputes_only_its_month(tmp_path, catalog_copy):
    from gridded.demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME

    out = tmp_path / "out"
    args = ["run", "--source", str(catalog_copy), "--extent", DEMO_EXTENT, "--time", DEMO_TIME,
            "--grid", str(DEMO_GRID), "--bands", "red", "--tiles-per-worker", "3", "--output", str(out)]
    run_cli(args)
    # a late scene arrives in February: a copy of a February item under a new id and date
    collection = pystac.read_file(str(catalog_copy.parent / "sentinel-2-l2a-demo" / "collection.json"))
    feb = next(i for i in collection.get_items() if i.datetime.month == 2)
    late = feb.clone()
    late.id = feb.id.replace("_0_L2A", "_1_L2A")
    late.datetime = feb.datetime.replace(day=28)
    late.assets = {k: a.clone() for k, a in feb.assets.items()}
    for k, a in late.assets.items():
        a.href = feb.assets[k].get_absolute_href()
    collection.add_item(late)
    collection.normalize_hrefs(str(catalog_copy.parent / "sentinel-2-l2a-demo"))
    collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    run_cli(args)
    report = json.loads((out / "run-report.json").read_text())
    done = {(tuple(t["key"]), t["period"]) for t in report["tasks"] if t["status"] == "done"}
    skipped = {t["period"] for t in report["tasks"] if t["status"] == "skipped"}
    assert done and {p for _, p in done} == {"2024-02--P1M"}
    assert skipped == {"2024-01--P1M", "2024-03--P1M"}
    stats = check_pixels_band(out, catalog_copy, "red")
    assert stats == 18


def test_tiles_generate_then_process_each_batch(tmp_path, demo_args, demo_catalog):
    cells = tmp_path / "cells.pickle"
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["-q", "tiles", "generate", *demo_args, "--cells", str(cells)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "3\n"  # 6 cells, 2 per batch: batches 0..2
    for batch in range(3):
        run_cli(["-q", "tiles", "process", "--cells", str(cells), "--batch", str(batch), "--output", str(out)])
    stats = check_pixels(out, demo_catalog)
    assert stats["tasks"] == 18
    assert not (out / "catalog.json").exists()  # each batch writes its COGs and items only
    run_cli(["-q", "catalog", "--output", str(out)])  # the catalog once, at the end, as the workflow does
    assert len(list(pystac.read_file(str(out / "catalog.json")).get_items(recursive=True))) == 18


def test_demo_command_with_two_workers(tmp_path, monkeypatch):
    """What the README's first command runs: the demo, in its default relative folder, through
    two worker processes."""
    monkeypatch.chdir(tmp_path)
    result = run_cli(["demo", "--workers", "2"])
    demo = tmp_path / "gridded-demo"
    out = demo / "output"
    assert report_counts(out) == {"done": 18, "skipped": 0, "failed": 0}
    assert "gridded-demo/output/catalog.json" in result.output
    assert check_pixels(out, demo / "catalog" / "catalog.json")["tasks"] == 18


def test_a_run_on_its_own_output_takes_each_cells_own_items_only(demo_run, tmp_path):
    # the output items of neighbouring cells share edges with each cell: touching is not covering,
    # so each cell's inputs are its own three monthly items, and a change next door changes nothing
    out, _, _ = demo_run
    from gridded.demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME

    result = run_cli(["plan", "--source", str(out / "catalog.json"), "--extent", DEMO_EXTENT, "--time", DEMO_TIME,
                      "--grid", str(DEMO_GRID), "--bands", "red", "--mask", "none", "--period", "P3M", "--json"])
    rows = json.loads(result.stdout)
    assert len(rows) == 6 and all(r["observations"] == 3 for r in rows), rows
