"""`--scheduler`: a plan's tasks on an existing Dask cluster (a `dask scheduler` and `dask worker`
processes on loopback, started here): every batch at once, placed by memory, read and written on
the workers, and surviving a worker killed mid-run; the outputs identical to a local run's."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from click.testing import CliRunner
from dask_processes import started_cluster
from expected import check_pixels, output_items

from gridded import plan, select
from gridded.cli import cli
from gridded.demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME
from gridded.fanout import WORKER_BASE_BYTES, Room, choose_room, pause_fraction, room_of
from gridded.sizing import sample_bytes_of, task_memory_bytes

BANDS = ["blue", "green", "red", "nir"]


def demo_run(demo_catalog, output: Path, scheduler: str, *extra: str) -> list[str]:
    return ["run", "--source", str(demo_catalog), "--extent", DEMO_EXTENT, "--time", DEMO_TIME, "--grid",
            str(DEMO_GRID), "--bands", ",".join(BANDS), "--output", str(output), "--scheduler", scheduler, *extra]


@pytest.fixture(scope="module")
def three_workers(tmp_path_factory):
    """A scheduler and three single-threaded workers of 1 GiB each: (address, worker name -> address)."""
    cluster, names = started_cluster(tmp_path_factory.mktemp("dask-logs"), [{}, {}, {}])
    yield cluster.address, names
    cluster.close()


def report_of(output: Path) -> dict:
    return json.loads((output / "run-report.json").read_text())


def interval(task: dict) -> tuple[datetime, datetime]:
    start = datetime.fromisoformat(task["started"])
    return start, start + timedelta(seconds=task["seconds"])


def batch_of(demo_catalog, tiles_per_worker: int) -> dict[tuple, int]:
    todo = plan(select(str(demo_catalog), extent=DEMO_EXTENT, time=DEMO_TIME, grid=str(DEMO_GRID), bands=BANDS,
                       tiles_per_worker=tiles_per_worker))
    return {(t.key, t.period.label): b.id for b in todo.batches for t in b.tasks}


def test_the_tasks_of_every_batch_run_at_once_on_all_workers(three_workers, demo_catalog, tmp_path):
    scheduler, names = three_workers
    result = CliRunner().invoke(cli, demo_run(demo_catalog, tmp_path / "out", scheduler, "--tiles-per-worker", "1"))
    assert result.exit_code == 0, result.output
    assert check_pixels(tmp_path / "out", demo_catalog)["tasks"] == 18
    report = report_of(tmp_path / "out")
    batches = batch_of(demo_catalog, 1)
    assert len(set(batches.values())) == 6
    tasks = report["tasks"]
    assert {t["status"] for t in tasks} == {"done"} and len(tasks) == 18
    assert {t["worker"] for t in tasks} == set(names.values())  # every worker took some
    assert sorted(report["cluster"]["workers"]) == sorted(names.values())
    assert report["cluster"]["lost_workers"] == [] and report["cluster"]["rescheduled_tasks"] == []
    # tasks of different batches ran at the same time on different workers (one batch after
    # another, no two batches would ever overlap)
    def batch(task: dict) -> int:
        return batches[(tuple(task["key"]), task["period"])]

    overlapping = [(a, b) for a in tasks for b in tasks if batch(a) != batch(b) and a["worker"] != b["worker"]
                   and interval(a)[0] < interval(b)[1] and interval(b)[0] < interval(a)[1]]
    assert overlapping
    # a single-threaded worker never ran two tasks at once
    for worker in names.values():
        spans = sorted(interval(t) for t in tasks if t["worker"] == worker)
        assert all(earlier[1] <= later[0] for earlier, later in pairwise(spans)), worker


def test_tiles_process_on_the_cluster(three_workers, demo_catalog, tmp_path):
    scheduler, _ = three_workers
    select_args = ["--source", str(demo_catalog), "--extent", DEMO_EXTENT, "--time", "2024-03", "--grid",
                   str(DEMO_GRID), "--bands", "red,green", "--tiles-per-worker", "3"]
    cells = tmp_path / "cells.pickle"
    assert CliRunner().invoke(cli, ["-q", "tiles", "generate", *select_args, "--cells", str(cells)]).exit_code == 0
    for batch in ("0", "1"):
        result = CliRunner().invoke(cli, ["tiles", "process", "--cells", str(cells), "--batch", batch,
                                          "--output", str(tmp_path / "b"), "--scheduler", scheduler])
        assert result.exit_code == 0, result.output
    assert check_pixels(tmp_path / "b", demo_catalog, bands=["red", "green"])["tasks"] == 6


def test_no_worker_can_hold_the_largest_task_is_one_line_exit_2(three_workers, demo_catalog, tmp_path):
    scheduler, _ = three_workers
    grid = tmp_path / "big.yaml"  # 4,096 px square cells: a year of them needs some GiB, the workers have 1
    grid.write_text("crs: EPSG:32755\nresolution: 10\ntile_size: 40960\n")
    args = demo_run(demo_catalog, tmp_path / "out", scheduler)
    args[args.index("--grid") + 1] = str(grid)
    result = CliRunner().invoke(cli, [*args, "--period", "P1Y"])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("gridded: error: the largest task (cell x"), line
    assert "4096x4096 px" in line and "more than any worker of " + scheduler in line and "--memory-limit" in line
    assert not output_items(tmp_path / "out")


def test_workers_rooms_come_from_their_memory_limit_and_threads(three_workers):
    from distributed import Client

    scheduler, names = three_workers
    with Client(scheduler) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    for address in names.values():
        room = room_of(address, workers[address], pause_fraction())
        used = max(workers[address]["metrics"]["memory"], WORKER_BASE_BYTES)
        assert room.threads == 1 and not room.declared
        assert room.budget_bytes == pytest.approx(0.8 * (1 << 30) - used)
    declared = room_of("tcp://x:1", {"nthreads": 4, "memory_limit": 1 << 30, "resources": {"MEMORY": 5e9}}, 0.8)
    assert declared.declared and declared.budget_bytes == 5e9 and declared.threads == 4
    unlimited = room_of("tcp://x:2", {"nthreads": 2, "memory_limit": 0}, 0.8)
    assert unlimited.budget_bytes == math.inf


def test_tasks_are_placed_where_their_memory_fits():
    small = Room(address="small", threads=2, budget_bytes=150)  # holds one task of 100 at a time
    large = Room(address="large", threads=2, budget_bytes=400)  # two at a time: its threads bound it
    placed = []
    for _ in range(5):
        room = choose_room([small, large], 100)
        if room is None:
            break
        room.take(100)
        placed.append(room.address)
    assert sorted(placed) == ["large", "large", "small"]
    assert choose_room([small, large], 500) is None  # fits no worker, even idle
    large.give(100)
    large.give(100)
    assert choose_room([small, large], 300) is large


def test_a_declared_memory_resource_bounds_the_tasks_on_a_worker(demo_catalog, tmp_path):
    todo = plan(select(str(demo_catalog), extent=DEMO_EXTENT, time=DEMO_TIME, grid=str(DEMO_GRID), bands=BANDS))
    needs = [task_memory_bytes(t, todo.pipeline, sample_bytes_of(todo)) for t in todo.tasks]
    assert 2 * min(needs) > max(needs)
    one_at_a_time = (max(needs) + 2 * min(needs)) // 2  # any task fits, no two together
    cluster, names = started_cluster(tmp_path / "logs", [
        {"nthreads": 2, "memory_limit": "2GiB", "resources": f"MEMORY={one_at_a_time}"},
        {"nthreads": 2, "memory_limit": "2GiB", "resources": f"MEMORY={4 * max(needs)}"}])
    try:
        result = CliRunner().invoke(cli, demo_run(demo_catalog, tmp_path / "out", cluster.address))
    finally:
        cluster.close()
    assert result.exit_code == 0, result.output
    assert check_pixels(tmp_path / "out", demo_catalog)["tasks"] == 18
    tasks = report_of(tmp_path / "out")["tasks"]
    for name, concurrent in (("w0", False), ("w1", True)):
        spans = sorted(interval(t) for t in tasks if t["worker"] == names[name])
        assert spans, name
        overlaps = any(later[0] < earlier[1] for earlier, later in pairwise(spans))
        assert overlaps == concurrent, name


def test_a_worker_killed_mid_run(demo_catalog, tmp_path, caplog):
    """SIGKILL one of three workers while it runs a task: its tasks re-run on the others, every
    output is there once with the pixels of a local run, and the run says what it lost."""
    from distributed import Client

    cluster, names = started_cluster(tmp_path / "logs", [{}, {}, {}])
    out = tmp_path / "out"
    killed: dict[str, str] = {}

    def kill_one_mid_run() -> None:
        with Client(cluster.address) as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if output_items(out):  # some tasks are committed, others not yet
                    busy = {w: keys for w, keys in client.processing().items()
                            if any(str(k).startswith("gridded-") for k in keys)}
                    victim = next((n for n, a in sorted(names.items()) if a in busy), None)
                    if victim:
                        cluster.kill(victim)
                        killed[victim] = names[victim]
                        return
                time.sleep(0.05)

    killer = threading.Thread(target=kill_one_mid_run)
    try:
        killer.start()
        with caplog.at_level(logging.WARNING, logger="gridded.fanout"):
            result = CliRunner().invoke(cli, demo_run(demo_catalog, out, cluster.address, "--tiles-per-worker", "1"))
        killer.join()
    finally:
        cluster.close()
    assert killed, "no worker was killed mid-run"
    assert result.exit_code == 0, result.output
    (address,) = killed.values()
    # every output once, with the pixels of the independent computation, no temporary left
    assert check_pixels(out, demo_catalog)["tasks"] == 18
    assert len(list(out.rglob("*.stac-item.json"))) == 18
    assert len(list(out.rglob("*.tif"))) == 18 * len(output_items(out)[next(iter(output_items(out)))]["assets"]) - 18
    assert not list(out.rglob(".gridded-tmp-*"))
    report = report_of(out)
    assert report["counts"] == {"done": 18, "skipped": 0, "failed": 0}
    assert sorted((tuple(t["key"]), t["period"]) for t in report["tasks"]) == sorted(batch_of(demo_catalog, 1))
    lost = report["cluster"]["lost_workers"]
    assert [w["worker"] for w in lost] == [address] and lost[0]["tasks"] >= 1
    rescheduled = report["cluster"]["rescheduled_tasks"]
    assert len(rescheduled) == lost[0]["tasks"] and {r["from"] for r in rescheduled} == {address}
    rerun = {(tuple(r["cell"]), r["period"]) for r in rescheduled}
    assert all(t["worker"] != address for t in report["tasks"] if (tuple(t["key"]), t["period"]) in rerun)
    assert any(f"worker {address} lost mid-run" in r.getMessage() for r in caplog.records), caplog.text


def test_the_scheduler_lost_mid_run_is_one_line_exit_1_and_a_rerun_resumes(demo_catalog, tmp_path):
    """SIGKILL the scheduler once some tasks are committed: one line, exit 1 (retryable), the
    catalog and the report written for what finished, and a rerun computes only the rest."""
    cluster, _ = started_cluster(tmp_path / "logs", [{}, {}])
    out = tmp_path / "out"
    killed = threading.Event()

    def kill_scheduler_mid_run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not output_items(out):
            time.sleep(0.05)
        cluster.kill_scheduler()
        killed.set()

    killer = threading.Thread(target=kill_scheduler_mid_run)
    try:
        killer.start()
        started = time.monotonic()
        result = CliRunner().invoke(cli, demo_run(demo_catalog, out, cluster.address, "--tiles-per-worker", "1"))
        took_s = time.monotonic() - started
        killer.join()
    finally:
        cluster.close()
    assert killed.is_set()
    assert result.exit_code == 1, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"gridded: error: --scheduler {cluster.address}: lost the scheduler mid-run ("), line
    assert line.endswith("what was committed is kept: rerun when it is back to resume"), line
    assert "Traceback" not in result.stderr, result.stderr
    assert took_s < 60  # noticed at once, not after a connect timeout per request
    report = report_of(out)
    assert report["outcome"] == "scheduler lost" and report["counts"]["done"] < 18
    assert report["cluster"]["scheduler"] == cluster.address
    assert json.loads((out / "catalog.json").read_text())["id"]
    # a rerun (here on this machine) resumes: what was committed is not computed again
    committed = set(output_items(out))
    rerun = CliRunner().invoke(cli, demo_run(demo_catalog, out, cluster.address)[:-2])
    assert rerun.exit_code == 0, rerun.output
    assert check_pixels(out, demo_catalog)["tasks"] == 18
    statuses = {(tuple(t["key"]), t["period"]): t["status"] for t in report_of(out)["tasks"]}
    assert sum(s == "skipped" for s in statuses.values()) >= len(committed) > 0
    assert sum(s == "done" for s in statuses.values()) == 18 - sum(s == "skipped" for s in statuses.values())


def test_an_unreachable_scheduler_is_one_line_exit_1(demo_catalog, tmp_path):
    result = CliRunner().invoke(cli, ["run", "--source", str(demo_catalog), "--extent", DEMO_EXTENT, "--time",
                                      "2024-03", "--grid", str(DEMO_GRID), "--bands", "red",
                                      "--output", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:9"])
    assert result.exit_code == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("gridded: error: --scheduler tcp://127.0.0.1:9: cannot connect")


def test_a_worker_that_does_not_see_the_output_says_so(tmp_path):
    from gridded.fanout import output_seen
    from gridded.io.storage import open_storage

    open_storage(str(tmp_path / "out")).put_bytes("probe", b"token")
    assert output_seen(str(tmp_path / "out"), "probe", b"token") == ("", False)
    assert output_seen(str(tmp_path / "out"), "probe", b"other") == ("sees another output under that name", False)
    problem, retryable = output_seen(str(tmp_path / "elsewhere"), "probe", b"token")
    assert problem.startswith("cannot read it (") and "not found" in problem and not retryable
