"""Transient S3 faults survived, persistent ones named: a fault-injecting proxy on loopback in
front of the S3-protocol server, with boto3 and GDAL both going through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from expected import check_pixels
from fault_proxy import FaultProxy, Rule

from conftest import demo_on_s3, download_tree
from gridded.demo import DEMO_EXTENT, DEMO_GRID


def run_through(proxy: FaultProxy, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url}
    for key in ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING"):  # gridded derives these
        env.pop(key, None)
    env.update(GDAL_HTTP_RETRY_DELAY="0.1", GDAL_HTTP_MAX_RETRY="2")  # quicker than gridded's defaults
    return subprocess.run([sys.executable, "-m", "gridded.cli", *args], capture_output=True, text=True,
                          env=env, timeout=900)


@pytest.fixture(scope="module")
def faulty(s3_server, demo_catalog):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server)
    demo_on_s3(client, demo_catalog, "faulty-imagery")
    with FaultProxy(s3_server) as proxy:
        yield proxy, client


SELECT = ["--source", "s3://faulty-imagery/stac/catalog.json", "--extent", DEMO_EXTENT, "--time", "2024-01",
          "--grid", str(DEMO_GRID), "--bands", "red,nir", "--tiles-per-worker", "3"]


def test_transient_faults_leave_outputs_identical_to_a_clean_run(faulty, demo_catalog, tmp_path):
    proxy, s3 = faulty
    s3.create_bucket(Bucket="faulty-out")
    proxy.rules = [
        Rule("GET", "/faulty-imagery/stac/catalog.json", "503"),
        Rule("GET", "/faulty-imagery/stac/sentinel-2-l2a-demo/collection.json", "reset"),
        Rule("GET", "_L2A.json", "truncate", skip=2),
        Rule("GET", "/red.tif", "503", times=2, skip=3),
        Rule("GET", "/nir.tif", "500", skip=1),
        Rule("GET", "/scl.tif", "truncate", skip=4),
        Rule("GET", "/scl.tif", "reset", skip=9),
        Rule("PUT", "_red.tif", "503", skip=1),
        Rule("PUT", "_count.tif", "reset", skip=2),
        Rule("PUT", ".stac-item.json", "lost", skip=1),  # committed, but the answer never came
        Rule("PUT", ".stac-item.json", "500", skip=3),
    ]
    proc = run_through(proxy, "run", *SELECT, "--output", "s3://faulty-out/x", "--workers", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]
    kinds = {fault for _, _, fault in proxy.injected}
    assert kinds == {"503", "500", "reset", "truncate", "lost"}, proxy.injected
    download_tree(s3, "faulty-out", "x", tmp_path / "out")
    assert check_pixels(tmp_path / "out", demo_catalog, bands=["red", "nir"])["tasks"] == 6
    assert s3.list_multipart_uploads(Bucket="faulty-out").get("Uploads", []) == []
    report = json.loads((tmp_path / "out" / "run-report.json").read_text())
    assert report["counts"] == {"done": 6, "skipped": 0, "failed": 0}


def test_a_persistent_fault_fails_its_cells_by_name_without_a_retry_storm(faulty, demo_catalog, tmp_path):
    proxy, s3 = faulty
    s3.create_bucket(Bucket="faulty-out2")
    bad = "S2B_55HFA_20240107_0_L2A"
    proxy.injected.clear()
    proxy.rules = [Rule("GET", f"/{bad}/red.tif", "503", times=-1)]
    proc = run_through(proxy, "run", *SELECT, "--output", "s3://faulty-out2/x")
    assert proc.returncode == 1, proc.stderr[-2000:]
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    assert failed and all(bad in line and "red" in line for line in failed)
    download_tree(s3, "faulty-out2", "x", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "run-report.json").read_text())
    assert report["counts"]["failed"] == len(failed)
    assert report["counts"]["done"] == 6 - len(failed)
    # bounded, not one storm per cell: per batch (2; a batch gives up on the file for the rest of
    # its tasks), at most the reads in flight when it gives up (2 threads) x 4 attempts x
    # (1 + 2 GDAL retries) x 2 requests per open; then later cells of the batch fail at once
    assert len(proxy.injected) <= 2 * 2 * 4 * 3 * 2


def test_access_denied_is_one_line_exit_2_and_not_retried(faulty, tmp_path):
    proxy, _ = faulty
    proxy.injected.clear()
    proxy.rules = [Rule("GET", "/faulty-imagery/stac/catalog.json", "403", times=-1)]
    proc = run_through(proxy, "plan", *SELECT)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("gridded: error: ") and "s3://faulty-imagery/stac/catalog.json" in line
    assert "access denied" in line and "Traceback" not in proc.stderr
    assert len(proxy.injected) == 1
