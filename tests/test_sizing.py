"""A task's memory estimate against what the task really allocates, and `gridded plan` saying it."""

from __future__ import annotations

import re
import tracemalloc
from dataclasses import replace

import pytest
from click.testing import CliRunner

from gridded import plan, select
from gridded.cli import cli
from gridded.demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME
from gridded.plan import plan_stream
from gridded.process import process_task
from gridded.sizing import describe_bytes, largest_task, sample_bytes_of, task_memory_bytes


@pytest.mark.parametrize("recipe", [
    {"bands": "blue,green,red,nir"},
    {"bands": "red,nir", "statistic": "median,p10,p90", "indices": "ndvi"},
    {"bands": "blue,green,red,nir", "statistic": "geomedian", "period": "P3M"},
    {"bands": "red,nir", "statistic": "best", "rank": "nir", "period": "P3M"},
], ids=["median", "percentiles+ndvi", "geomedian-P3M", "best-P3M"])
def test_the_estimate_bounds_what_a_task_allocates(recipe, demo_catalog, tmp_path):
    todo = plan(select(str(demo_catalog), extent=DEMO_EXTENT, time=DEMO_TIME, grid=str(DEMO_GRID), **recipe))
    task = max(todo.tasks, key=lambda t: t.n_layers)
    estimate = task_memory_bytes(task, todo.pipeline, sample_bytes_of(todo))
    assert process_task(task, todo.pipeline, str(tmp_path / "warm")).status == "done"  # numba's kernels loaded
    tracemalloc.start()  # numpy reports its arrays to tracemalloc; GDAL's own buffers are not seen
    try:
        assert process_task(task, todo.pipeline, str(tmp_path / "out")).status == "done"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= estimate <= 2 * peak, (describe_bytes(peak), describe_bytes(estimate))


def test_the_estimate_grows_with_pixels_observations_and_sample_size(demo_catalog):
    todo = plan(select(str(demo_catalog), extent=DEMO_EXTENT, time=DEMO_TIME, grid=str(DEMO_GRID),
                       bands="blue,green,red,nir"))
    task, pipeline = todo.tasks[0], todo.pipeline
    uint16 = dict.fromkeys(pipeline.bands, 2)

    def with_layers(n: int, shape_yx=task.shape_yx):
        one = task.observations[0]
        days = tuple(replace(one, solar_day=f"2024-01-{d:02d}") for d in range(1, n + 1))
        return replace(task, shape_yx=shape_yx, observations=days)

    base = task_memory_bytes(with_layers(6), pipeline, uint16)
    assert task_memory_bytes(with_layers(12), pipeline, uint16) > base
    assert task_memory_bytes(with_layers(6, (512, 512)), pipeline, uint16) > 3.9 * base
    assert task_memory_bytes(with_layers(6), pipeline, dict.fromkeys(pipeline.bands, 4)) > base
    # items that declare no data type are taken as float32: the estimate errs high
    assert task_memory_bytes(with_layers(6), pipeline) == task_memory_bytes(
        with_layers(6), pipeline, dict.fromkeys(pipeline.bands, 4))
    # two scenes of a platform on one solar day are one observation
    doubled = replace(task, observations=with_layers(6).observations * 2)
    assert task_memory_bytes(doubled, pipeline, uint16) == base
    # a 9,600 px square monthly Sentinel-2 task of 4 bands and 12 observations needs several GiB
    assert 4 << 30 < task_memory_bytes(with_layers(12, (9600, 9600)), pipeline, uint16) < 16 << 30


def layers(task) -> int:
    """Its observations once same-day scenes of a platform are one (as load.py mosaics them)."""
    return len({(o.platform, o.solar_day) for o in task.observations})


SELECTION = dict(extent=DEMO_EXTENT, time=DEMO_TIME, grid=str(DEMO_GRID), bands="red,nir", period="P3M")


@pytest.mark.parametrize("listing", [[], ["--output", "OUT"]], ids=["streamed", "planned-whole"])
def test_gridded_plan_says_what_the_largest_task_needs(listing, demo_catalog, tmp_path):
    """Both ways `gridded plan` lists (rows streamed with observations counted, not made; or the
    whole Plan, to compare with an output) name the same largest task and estimate."""
    listing = [str(tmp_path / "out") if a == "OUT" else a for a in listing]
    args = [f"--{k.replace('_', '-')}={v}" for k, v in SELECTION.items()]
    result = CliRunner().invoke(cli, ["plan", "--source", str(demo_catalog), *args, *listing])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("largest task needs")]
    assert len(lines) == 1, result.stderr
    todo = plan(select(str(demo_catalog), **SELECTION))
    task = max(todo.tasks, key=layers)  # the first of the most layers: every demo cell has the same shape
    need = task_memory_bytes(task, todo.pipeline, {"red": 2, "nir": 2})  # the demo items declare uint16
    found = re.match(r"largest task needs ~(.+) of memory \(cell x(\d+) y(\d+) (\S+): 256x256 px, (\d+) observations, "
                     r"2 bands\)$", lines[0])
    assert found, lines[0]
    assert found.groups() == (describe_bytes(need), str(task.key[0]), str(task.key[1]), task.period.label,
                              str(layers(task)))
    # same-day scenes count as one: by its scenes, another task would be the largest
    assert max(todo.tasks, key=lambda t: len(t.observations)).key != task.key


def test_the_largest_task_of_a_stream_is_the_plans(demo_catalog):
    """A PlanStream's largest task, whether its rows were counted or its batches made, is the Plan's."""
    selection = select(str(demo_catalog), **SELECTION)
    whole = largest_task(plan(select(str(demo_catalog), **SELECTION)))
    with plan_stream(selection) as stream:
        rows = list(stream.rows())
        assert rows and largest_task(stream) == whole
    with plan_stream(selection) as stream:
        assert list(stream) and largest_task(stream) == whole
    assert whole[0] is not None and whole[1] > 0


def test_planning_an_index_does_not_import_numba(demo_catalog):
    """The plan's memory estimate asks whether an index is fused without the kernels: importing
    numba costs the planning process ~0.4 s before any worker starts."""
    import subprocess
    import sys

    args = ["plan", "--source", str(demo_catalog), "--extent", DEMO_EXTENT, "--time", DEMO_TIME,
            "--grid", str(DEMO_GRID), "--bands", "red,nir", "--band-index", "ndvi", "--statistic", "median,p90"]
    code = ("import sys\nfrom gridded.cli import cli\ntry:\n    cli(sys.argv[1:], standalone_mode=False)\n"
            "finally:\n    print('numba', 'imported' if 'numba' in sys.modules else 'not imported', file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "largest task needs" in done.stderr and done.stderr.strip().endswith("numba not imported"), done.stderr
