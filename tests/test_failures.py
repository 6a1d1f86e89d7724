"""Failures as a pod meets them: a realistic mix of S3 faults survived with identical outputs, a
store that throttles every other request, exit codes that say whether retrying can help, and a
corrupt source failed by name or left out on request."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from expected import check_pixels, output_items
from fault_proxy import FaultProxy, OncePerKey

from conftest import demo_on_s3, download_tree
from gridded.demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME

SELECT = ["--extent", DEMO_EXTENT, "--time", DEMO_TIME, "--grid", str(DEMO_GRID), "--bands", "red,nir"]


def gridded_cli(*args: str, endpoint: str | None = None, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    if endpoint:
        environment["AWS_ENDPOINT_URL"] = endpoint
    for key in ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING"):  # gridded derives these
        environment.pop(key, None)
    environment.update(GDAL_HTTP_RETRY_DELAY="0.1", GDAL_HTTP_MAX_RETRY="2")  # quicker than gridded's defaults
    return subprocess.run([sys.executable, "-m", "gridded.cli", *args], capture_output=True, text=True,
                          env=environment, timeout=900)


@pytest.fixture(scope="module")
def client(s3_server):
    return boto3.client("s3", endpoint_url=s3_server)


@pytest.fixture(scope="module")
def source_on_s3(client, demo_catalog):
    return demo_on_s3(client, demo_catalog, "mix-imagery")


def test_the_fault_mix_is_survived_s3_to_s3_with_identical_outputs(s3_server, client, source_on_s3, demo_catalog,
                                                                   tmp_path):
    client.create_bucket(Bucket="mix-out")
    policy = OncePerKey("mix-imagery")
    with FaultProxy(s3_server) as proxy:
        proxy.policy = policy
        proc = gridded_cli("-v", "run", "--source", source_on_s3, *SELECT, "--tiles-per-worker", "2",
                           "--workers", "2", "--output", "s3://mix-out/x", endpoint=proxy.url)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    kinds = policy.kinds()
    # every fault happened, for every key it applies to: 21 items x 3 assets (red, nir, scl) cut short;
    # 18 items each first refused, then written but answered 500; the first listing closed
    assert kinds["cut"] == 21 * 3, kinds
    assert kinds["put-then-500"] == 18, kinds
    # an item's state is one GET (absent: 404), not a HEAD and a GET: the first GET of each item refused too
    assert kinds["list"] >= 1 and kinds["head"] >= 1 and kinds["get"] >= 21 * 4 + 18 and kinds["put"] >= 18 * 3 + 2
    assert "retry 1 of" in proc.stderr  # each retry is logged at -v with the key and the cause
    download_tree(client, "mix-out", "x", tmp_path / "out")
    assert check_pixels(tmp_path / "out", demo_catalog, bands=["red", "nir"])["tasks"] == 18
    report = json.loads((tmp_path / "out" / "run-report.json").read_text())
    assert report["counts"] == {"done": 18, "skipped": 0, "failed": 0}
    assert client.list_multipart_uploads(Bucket="mix-out").get("Uploads", []) == []


def test_a_store_that_throttles_every_other_request_still_serves_a_whole_run(s3_server, client, source_on_s3,
                                                                             demo_catalog, tmp_path):
    client.create_bucket(Bucket="every-other")
    turns: dict[tuple, int] = {}

    # every other request of each kind, key and range: with many requests in flight a global
    # count would refuse one request's retries at random, not every other one
    def every_other(method, path, headers):
        key = (method, path, headers.get("Range"))
        turns[key] = turns.get(key, 0) + 1
        return "503" if turns[key] % 2 else None

    with FaultProxy(s3_server) as proxy:
        proxy.policy = every_other
        proc = gridded_cli("run", "--source", source_on_s3, *SELECT, "--tiles-per-worker", "3",
                           "--output", "s3://every-other/x", endpoint=proxy.url)
        requests = proxy.requests
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert requests > 300, requests  # "a few hundred requests", half of them refused
    download_tree(client, "every-other", "x", tmp_path / "out")
    assert check_pixels(tmp_path / "out", demo_catalog, bands=["red", "nir"])["tasks"] == 18


def test_an_unreachable_endpoint_is_transient_exit_1_for_plan_run_and_tiles_process(tmp_path):
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens
    for args in (["plan", "--source", "s3://nowhere/catalog.json", *SELECT],
                 ["run", "--source", "s3://nowhere/catalog.json", *SELECT, "--output", str(tmp_path / "out")],
                 ["tiles", "process", "--cells", "s3://nowhere/cells.pickle", "--batch", "0",
                  "--output", str(tmp_path / "out")]):
        proc = gridded_cli(*args, endpoint=dead, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y")
        assert proc.returncode == 1, (args, proc.stderr[-2000:])
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith("gridded: error: ") and "cannot reach the S3 endpoint" in line, line
        assert "Traceback" not in proc.stderr


def test_bad_input_exits_2_through_run_and_tiles_process(tmp_path, demo_catalog):
    cases = [
        (["run", "--source", str(tmp_path / "missing.json"), *SELECT, "--output", str(tmp_path / "o")],
         "no such catalog"),
        (["tiles", "process", "--cells", str(tmp_path / "missing.pickle"), "--batch", "0", "--output",
          str(tmp_path / "o")], "not found"),
        (["run", "--source", str(demo_catalog), *SELECT, "--on-bad-source", "maybe", "--output", str(tmp_path / "o")],
         "--on-bad-source"),
    ]
    for args, words in cases:
        proc = gridded_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def corrupt_one_scene(catalog: Path) -> tuple[str, Path, bytes]:
    """Replace the red COG of one January scene with bytes that are no TIFF; returns its item id, path and bytes."""
    item_path = sorted((catalog.parent / "sentinel-2-l2a-demo").glob("S2B_55HFA_20240107*/*_L2A.json"))[0]
    item = json.loads(item_path.read_text())
    red = (item_path.parent / item["assets"]["red"]["href"]).resolve()
    original = red.read_bytes()
    red.write_bytes(b"this is not a GeoTIFF\n" * 200)
    return item["id"], red, original


def test_a_corrupt_source_fails_its_cells_by_name_or_is_left_out_and_retried_later(catalog_copy, demo_catalog,
                                                                                   tmp_path):
    scene, red, original = corrupt_one_scene(catalog_copy)
    select = ["--source", str(catalog_copy), *SELECT, "--time", "2024-01", "--tiles-per-worker", "6"]

    failing = gridded_cli("run", *select, "--output", str(tmp_path / "fail"))
    assert failing.returncode == 2, failing.stderr[-2000:]  # bad input: retrying cannot help
    failed = [line for line in failing.stdout.splitlines() if line.startswith("FAILED")]
    assert failed and all(scene in line and "red" in line and "not recognized" in line for line in failed)

    out = tmp_path / "skip"
    skipping = gridded_cli("run", *select, "--on-bad-source", "skip", "--output", str(out))
    assert skipping.returncode == 0, skipping.stderr[-2000:]
    items = output_items(out)
    assert len(items) == 6
    marked = {name for name, item in items.items()
              if [s["id"] for s in item["properties"].get("gridded:skipped_inputs", [])] == [scene]}
    assert len(marked) == len(failed)  # the cells that failed above, now made of the other scenes
    for name in marked:
        assert "not recognized" in items[name]["properties"]["gridded:skipped_inputs"][0]["reason"]
    report = json.loads((out / "run-report.json").read_text())
    assert {s["id"] for s in report["skipped_inputs"]} == {scene} and len(report["skipped_inputs"]) == len(marked)

    rerun_while_broken = gridded_cli("run", *select, "--on-bad-source", "skip", "--output", str(out))
    assert json.loads((out / "run-report.json").read_text())["counts"]["done"] == len(marked), rerun_while_broken

    red.write_bytes(original)  # the source reads again: a rerun recomputes those cells, and only those
    repaired = gridded_cli("run", *select, "--on-bad-source", "skip", "--output", str(out))
    assert repaired.returncode == 0
    report = json.loads((out / "run-report.json").read_text())
    assert report["counts"] == {"done": len(marked), "skipped": 6 - len(marked), "failed": 0}
    assert report["skipped_inputs"] == []
    assert not any("gridded:skipped_inputs" in item["properties"] for item in output_items(out).values())
    shutil.copytree(out, tmp_path / "checked")
    assert check_pixels(tmp_path / "checked", demo_catalog, bands=["red", "nir"])["tasks"] == 6
