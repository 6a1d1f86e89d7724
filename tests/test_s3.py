"""S3 end to end against a real S3-protocol server on loopback: sources, artifact, outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from expected import check_pixels

from conftest import CANARY_KEY_ID, CANARY_SECRET, demo_on_s3, download_tree
from gridded.cli import cli
from gridded.demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME


def selection(source: str) -> list[str]:
    return ["--source", source, "--extent", DEMO_EXTENT, "--time", DEMO_TIME, "--grid", str(DEMO_GRID),
            "--pipeline", "s2-monthly-median", "--tiles-per-worker", "2"]


@pytest.fixture(scope="module")
def s3_source(s3_server, demo_catalog):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server)
    return demo_on_s3(client, demo_catalog, "imagery")


def gridded_cli(*args: str) -> subprocess.CompletedProcess:
    """The real entry point in a new process: only the environment carries the endpoint and keys."""
    return subprocess.run([sys.executable, "-m", "gridded.cli", *args], capture_output=True, text=True, timeout=600)


def objects(s3, bucket: str, prefix: str) -> dict[str, tuple[str, object]]:
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = (obj["ETag"], obj["LastModified"])
    return found


def test_run_from_s3_to_s3_is_pixel_exact(s3, s3_source, demo_catalog, tmp_path):
    s3.create_bucket(Bucket="products")
    out = "s3://products/s2-median"
    proc = gridded_cli("run", *selection(s3_source), "--output", out, "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    keys = download_tree(s3, "products", "s2-median", tmp_path / "out")
    assert sum(k.endswith(".tif") for k in keys) == 18 * 6
    assert sum(k.endswith(".stac-item.json") for k in keys) == 18
    assert {"s2-median/catalog.json", "s2-median/collection.json"} <= set(keys)
    assert check_pixels(tmp_path / "out", demo_catalog)["tasks"] == 18
    # the outputs are COGs that GDAL reads in place through /vsis3/ (configured by the test itself)
    host = s3.meta.endpoint_url.split("://", 1)[1]
    name = "x235/y2343/2024-01--P1M/s2-monthly-median_x235_y2343_2024-01--p1m_red.tif"
    with rasterio.Env(AWS_S3_ENDPOINT=host, AWS_HTTPS="NO", AWS_VIRTUAL_HOSTING="FALSE"), rasterio.open(
            f"/vsis3/products/s2-median/{name}") as src:
        local = tmp_path / "out" / name
        with rasterio.open(local) as ref:
            np.testing.assert_array_equal(src.read(1), ref.read(1))
    assert s3.list_multipart_uploads(Bucket="products").get("Uploads", []) == []
    # derived_from links point at the s3:// source items
    item = json.loads((tmp_path / "out" / keys[[k.endswith(".stac-item.json") for k in keys].index(True)]
                       .split("s2-median/", 1)[1]).read_text())
    assert all(link["href"].startswith("s3://imagery/stac/") for link in item["links"] if link["rel"] == "derived_from")
    # no credential in anything written or printed
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            body = path.read_bytes()
            assert CANARY_SECRET.encode() not in body and CANARY_KEY_ID.encode() not in body
    assert CANARY_SECRET not in proc.stdout + proc.stderr and CANARY_KEY_ID not in proc.stdout + proc.stderr

    # a rerun skips everything and PUTs no new data object
    before = objects(s3, "products", "s2-median/")
    proc = gridded_cli("run", *selection(s3_source), "--output", out)
    assert proc.returncode == 0, proc.stderr
    after = objects(s3, "products", "s2-median/")
    new_runs = set(after) - set(before)  # the rerun's report, kept beside the first run's
    assert len(new_runs) == 1 and next(iter(new_runs)).startswith("s2-median/runs/")
    changed = {k for k in before if after[k] != before[k]}
    assert changed <= {"s2-median/run-report.json"}
    report = json.loads(s3.get_object(Bucket="products", Key="s2-median/run-report.json")["Body"].read())
    assert report["counts"] == {"done": 0, "skipped": 18, "failed": 0}


def test_cells_artifact_on_s3(s3, s3_source, demo_catalog, tmp_path):
    s3.create_bucket(Bucket="runs")
    s3.create_bucket(Bucket="products2")
    cells = "s3://runs/r1/cells.pickle"
    proc = gridded_cli("-q", "tiles", "generate", *selection(s3_source), "--cells", cells)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "3\n"  # batches 0..2
    for batch in (0, 1, 2):
        result = CliRunner().invoke(cli, ["-q", "tiles", "process", "--cells", cells, "--batch", str(batch),
                                          "--output", "s3://products2/x"])
        assert result.exit_code == 0, result.output
    download_tree(s3, "products2", "x", tmp_path / "out")
    assert check_pixels(tmp_path / "out", demo_catalog)["tasks"] == 18
    body = s3.get_object(Bucket="runs", Key="r1/cells.pickle")["Body"].read()
    assert CANARY_SECRET.encode() not in body and CANARY_KEY_ID.encode() not in body
    assert s3.list_multipart_uploads(Bucket="products2").get("Uploads", []) == []


@pytest.mark.parametrize("args, message", [
    (["--output", "s3://no-such-bucket/x"], "bucket does not exist; check the bucket name"),
    (["--source", "s3://imagery/stac/nope.json"], "no such object; check the key"),
    (["--source", "s3://no-such-source-bucket/catalog.json"], "bucket does not exist"),
])
def test_bad_s3_locations_are_one_line_exit_2(s3, s3_source, args, message):
    s3.create_bucket(Bucket="products3")
    argv = ["run", *selection(s3_source), "--output", "s3://products3/y"]
    for flag, value in zip(args[::2], args[1::2]):
        argv[argv.index(flag) + 1] = value
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("gridded: error: ") and message in lines[-1]
    assert "Traceback" not in result.output
    assert objects(s3, "products3", "") == {}


def test_no_credentials_is_one_line_exit_2(s3_source, tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    proc = subprocess.run([sys.executable, "-m", "gridded.cli", "plan", *selection(s3_source)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert "no AWS credentials" in proc.stderr and "Traceback" not in proc.stderr
