"""Kills, crashes, races and hostile input: nothing lost, nothing half-written, nothing read that
should not be."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import rasterio
from expected import check_pixels, output_items

from gridded.demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME
from gridded.io.storage import TEMP_MARK

SELECT = ["--extent", DEMO_EXTENT, "--time", DEMO_TIME, "--grid", str(DEMO_GRID),
          "--bands", "blue,green,red,nir"]


def gridded(*args: str, env: dict | None = None) -> subprocess.Popen:
    """The real CLI in its own process group (so a test can kill the whole group)."""
    return subprocess.Popen([sys.executable, "-m", "gridded.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def assert_consistent(out: Path) -> None:
    """Every item has all its COGs and every file under a final name is whole (temporary names may
    remain after a kill: the next run sweeps them)."""
    for name, item in output_items(out).items():
        folder = next(out.rglob(name)).parent
        for asset in item["assets"].values():
            path = folder / Path(asset["href"]).name
            assert path.is_file(), f"{name} lacks {path.name}"
    for tif in (p for p in out.rglob("*.tif") if TEMP_MARK not in p.name):
        with rasterio.open(tif) as src:
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            src.read(1)


def catalogued_items(out: Path) -> list[str]:
    """The item files the output's collection.json links to."""
    collection = json.loads((out / "collection.json").read_text())
    return sorted(link["href"].removeprefix("./") for link in collection["links"] if link["rel"] == "item")


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if TEMP_MARK in p.name]


def wait_for_items(out: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len([p for p in out.rglob("*.stac-item.json") if TEMP_MARK not in p.name]) < n:
        assert proc.poll() is None, f"finished before {n} items: {proc.communicate()}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)


def test_sigkill_of_the_whole_group_then_rerun_resumes_pixel_exact(demo_catalog, tmp_path):
    run = ["run", "--source", str(demo_catalog), *SELECT, "--tiles-per-worker", "1", "--workers", "2"]
    out = tmp_path / "out"
    proc = gridded(*run, "--output", str(out))
    wait_for_items(out, 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert_consistent(out)
    assert len(output_items(out)) < 18
    code, _, err = finish(gridded(*run, "--output", str(out)))
    assert code == 0, err
    assert check_pixels(out, demo_catalog)["tasks"] == 18
    assert temp_files(out) == []
    assert_consistent(out)
    # an all-skip rerun costs a small fraction of a full run
    started = time.monotonic()
    code, _, err = finish(gridded(*run, "--output", str(tmp_path / "fresh")))
    full_s = time.monotonic() - started
    assert code == 0, err
    started = time.monotonic()
    code, _, err = finish(gridded(*run, "--output", str(out)))
    rerun_s = time.monotonic() - started
    assert code == 0
    assert json.loads((out / "run-report.json").read_text())["counts"] == {"done": 0, "skipped": 18, "failed": 0}
    assert rerun_s < 0.6 * full_s, (rerun_s, full_s)


@pytest.fixture(scope="module")
def one_cell_artifact(demo_catalog, tmp_path_factory):
    cells = tmp_path_factory.mktemp("cells") / "cells.pickle"
    code, out, err = finish(gridded("-q", "tiles", "generate", "--source", str(demo_catalog), *SELECT,
                                    "--tiles-per-worker", "1", "--cells", str(cells)))
    assert code == 0, err
    assert out == "6\n"  # batches 0..5
    return cells


@pytest.mark.parametrize("phase", ["cog-written", "cogs-committed", "item-committed"])
def test_a_crash_at_each_write_phase_leaves_nothing_half_written(phase, one_cell_artifact, demo_catalog, tmp_path):
    out = tmp_path / "out"
    args = ["-q", "tiles", "process", "--cells", str(one_cell_artifact), "--batch", "4", "--output", str(out)]
    code, _, err = finish(gridded(*args, env={"GRIDDED_CRASH_AT": phase}))
    assert code == 137, err
    assert_consistent(out)
    if phase == "item-committed":
        assert len(output_items(out)) >= 1
    else:
        assert output_items(out) == {}
    code, _, err = finish(gridded(*args))
    assert code == 0, err
    assert temp_files(out) == []
    assert_consistent(out)
    assert check_pixels(out, demo_catalog)["tasks"] == 3  # one cell, three months


def test_two_processors_on_one_batch_leave_one_valid_item_per_cell(one_cell_artifact, demo_catalog, tmp_path):
    out = tmp_path / "out"
    args = ["-q", "tiles", "process", "--cells", str(one_cell_artifact), "--batch", "1", "--output", str(out)]
    first, second = gridded(*args), gridded(*args)
    for proc in (first, second):
        code, _, err = finish(proc)
        assert code == 0, err
    items = output_items(out)
    assert len(items) == 3
    assert len(list(out.rglob("*.tif"))) == 3 * 6  # bands, count, observed
    assert temp_files(out) == []
    assert check_pixels(out, demo_catalog)["tasks"] == 3


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_stops_the_run_and_its_workers_and_keeps_what_finished(workers, demo_catalog, tmp_path):
    out = tmp_path / "out"
    run = ["run", "--source", str(demo_catalog), *SELECT, "--tiles-per-worker", "1", "--workers", workers]
    proc = gridded(*run, "--output", str(out))
    wait_for_items(out, 2, proc)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children or workers == "1"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc, timeout=60)
    assert code == 143, err
    assert time.monotonic() - started < 30
    assert "rerun to resume" in err.strip().splitlines()[-1]
    assert "Traceback" not in err
    time.sleep(0.5)
    assert [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE] == []
    assert_consistent(out)
    # the catalog lists exactly what is committed, and the report says the run was interrupted
    committed = sorted(str(p.relative_to(out)) for p in out.rglob("*.stac-item.json") if TEMP_MARK not in p.name)
    assert 2 <= len(committed) < 18
    assert catalogued_items(out) == committed
    report = json.loads((out / "run-report.json").read_text())
    assert report["outcome"] == "interrupted" and report["counts"]["done"] <= len(committed)
    code, _, err = finish(gridded(*run, "--output", str(out)))
    assert code == 0, err
    assert check_pixels(out, demo_catalog)["tasks"] == 18
    assert temp_files(out) == []


# --- hostile input -----------------------------------------------------------------------------

def _first_item(catalog: Path) -> Path:
    return sorted((catalog.parent / "sentinel-2-l2a-demo").glob("*/*_L2A.json"))[0]


def test_an_href_outside_the_catalog_is_refused(catalog_copy, tmp_path):
    item_path = _first_item(catalog_copy)
    item = json.loads(item_path.read_text())
    item["assets"]["red"]["href"] = "file:///etc/passwd"
    item_path.write_text(json.dumps(item))
    proc = gridded("run", "--source", str(catalog_copy), *SELECT, "--output", str(tmp_path / "out"))
    code, _, err = finish(proc)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("gridded: error: ") and item["id"] in line and "/etc/passwd" in line
    assert "allowed roots" in line
    assert not (tmp_path / "out").exists()


def test_a_vrt_named_tif_and_an_absurd_header_are_refused(catalog_copy, tmp_path):
    items = sorted((catalog_copy.parent / "sentinel-2-l2a-demo").glob("*/*_L2A.json"))
    vrt_item, huge_item = json.loads(items[0].read_text()), json.loads(items[7].read_text())
    vrt_target = items[0].parent / "red.tif"
    vrt_target.write_text(
        '<VRTDataset rasterXSize="480" rasterYSize="360"><VRTRasterBand dataType="UInt16" band="1">'
        '<SimpleSource><SourceFilename relativeToVRT="0">/etc/hostname</SourceFilename></SimpleSource>'
        '</VRTRasterBand></VRTDataset>')
    huge = items[7].parent / "red.tif"
    with rasterio.open(huge, "w", driver="GTiff", width=200_000, height=200_000, count=1, dtype="uint16",
                       crs="EPSG:32755", transform=rasterio.transform.from_origin(601200, 6001800, 10, 10),
                       tiled=True, SPARSE_OK=True):
        pass
    assert huge.stat().st_size < 10_000_000
    out = tmp_path / "out"
    code, stdout, err = finish(gridded("run", "--source", str(catalog_copy), *SELECT, "--output", str(out)))
    assert code == 2, err  # hostile files are bad input: no retry would read them
    failed = [line for line in stdout.splitlines() if line.startswith("FAILED")]
    assert any(vrt_item["id"] in line and "red" in line for line in failed)
    assert any(huge_item["id"] in line and "refusing" in line for line in failed)
    for item in output_items(out).values():
        assert vrt_item["id"] not in item["properties"]["gridded:inputs"]
        assert huge_item["id"] not in item["properties"]["gridded:inputs"]
    assert_consistent(out)


def test_ids_with_path_separators_never_write_outside_the_output(catalog_copy, tmp_path):
    item_path = _first_item(catalog_copy)
    item = json.loads(item_path.read_text())
    item["id"] = "../../../../escaped/../x"
    item_path.write_text(json.dumps(item))
    out = tmp_path / "deep" / "out"
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    code, _, err = finish(gridded("run", "--source", str(catalog_copy), *SELECT, "--output", str(out)))
    assert code == 0, err
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - before - {p for p in out.rglob("*")}
    assert written == set()
    assert any("../../../../escaped/../x" in i["properties"]["gridded:inputs"] for i in output_items(out).values())


def test_a_worker_killed_by_the_kernel_fails_only_its_batch(demo_catalog, tmp_path):
    """As the OOM killer would: SIGKILL one worker process; the others finish, the run exits 1
    naming the lost tasks, and a rerun completes them."""
    out = tmp_path / "out"
    run = ["run", "--source", str(demo_catalog), *SELECT, "--tiles-per-worker", "1", "--workers", "2"]
    proc = gridded(*run, "--output", str(out))
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline:
        for child in psutil.Process(proc.pid).children():
            if "multiprocessing" in " ".join(child.cmdline()) and "resource_tracker" not in " ".join(child.cmdline()):
                victim = child
                break
        time.sleep(0.05)
    assert victim is not None
    victim.kill()
    code, stdout, err = finish(proc)
    assert code == 1, err
    failed = [line for line in stdout.splitlines() if line.startswith("FAILED")]
    assert failed and all("worker process died (killed by SIGKILL)" in line for line in failed)
    report = json.loads((out / "run-report.json").read_text())
    assert report["counts"]["done"] + report["counts"]["failed"] == 18 and report["counts"]["done"] >= 12
    assert_consistent(out)
    code, _, err = finish(gridded(*run, "--output", str(out)))
    assert code == 0, err
    assert check_pixels(out, demo_catalog)["tasks"] == 18


def test_no_credential_in_anything_written_with_debug_logging(s3, demo_catalog, tmp_path):
    from conftest import CANARY_KEY_ID, CANARY_SECRET, demo_on_s3, download_tree

    source = demo_on_s3(s3, demo_catalog, "canary-src")
    s3.create_bucket(Bucket="canary-out")
    select = ["--source", source, "--extent", DEMO_EXTENT, "--time", "2024-02",
              "--grid", str(DEMO_GRID), "--bands", "red", "--tiles-per-worker", "3"]
    cells = "s3://canary-out/runs/cells.pickle"
    outputs = []
    for args in (["-vv", "run", *select, "--output", "s3://canary-out/a", "--workers", "2"],
                 ["-vv", "tiles", "generate", *select, "--cells", cells],
                 ["-vv", "tiles", "process", "--cells", cells, "--batch", "0", "--output", "s3://canary-out/b"],
                 ["-vv", "stac", "ingest", "s3://canary-src/stac/catalog.json", "--index",
                  f"sqlite:///{tmp_path / 'i.db'}"]):
        code, out, err = finish(gridded(*args))
        assert code == 0, err[-2000:]
        assert "DEBUG" in err  # debug logging really was on
        outputs.append(out + err)
    download_tree(s3, "canary-out", "a", tmp_path / "a")
    download_tree(s3, "canary-out", "b", tmp_path / "b")
    download_tree(s3, "canary-out", "runs", tmp_path / "runs")
    blobs = [text.encode() for text in outputs]
    blobs += [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    for blob in blobs:
        assert CANARY_SECRET.encode() not in blob and CANARY_KEY_ID.encode() not in blob
