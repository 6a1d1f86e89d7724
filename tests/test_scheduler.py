"""`--scheduler`: the same batches on an existing Dask distributed cluster, identical outputs."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from expected import check_pixels

from gridded.cli import cli
from gridded.demo import DEMO_EXTENT, DEMO_GRID


@pytest.fixture(scope="module")
def dask_cluster():
    """A real scheduler and a worker process on loopback, as an existing cluster would be."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                           dashboard_address=":0")
    yield cluster.scheduler_address
    cluster.close()


def test_run_and_tiles_process_on_an_existing_cluster(dask_cluster, demo_catalog, tmp_path):
    assert dask_cluster.startswith("tcp://127.0.0.1:")
    select = ["--source", str(demo_catalog), "--extent", DEMO_EXTENT, "--time", "2024-03", "--grid",
              str(DEMO_GRID), "--bands", "red,green", "--tiles-per-worker", "3"]
    result = CliRunner().invoke(cli, ["run", *select, "--output", str(tmp_path / "a"), "--scheduler", dask_cluster])
    assert result.exit_code == 0, result.output
    assert check_pixels(tmp_path / "a", demo_catalog, bands=["red", "green"])["tasks"] == 6
    cells = tmp_path / "cells.pickle"
    assert CliRunner().invoke(cli, ["-q", "tiles", "generate", *select, "--cells", str(cells)]).exit_code == 0
    for batch in ("0", "1"):
        result = CliRunner().invoke(cli, ["tiles", "process", "--cells", str(cells), "--batch", batch,
                                          "--output", str(tmp_path / "b"), "--scheduler", dask_cluster])
        assert result.exit_code == 0, result.output
    assert check_pixels(tmp_path / "b", demo_catalog, bands=["red", "green"])["tasks"] == 6


def test_an_unreachable_scheduler_is_one_line_exit_1(demo_catalog, tmp_path):
    result = CliRunner().invoke(cli, ["run", "--source", str(demo_catalog), "--extent", DEMO_EXTENT, "--time",
                                      "2024-03", "--grid", str(DEMO_GRID), "--bands", "red",
                                      "--output", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:9"])
    assert result.exit_code == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("gridded: error: --scheduler tcp://127.0.0.1:9: cannot connect")
