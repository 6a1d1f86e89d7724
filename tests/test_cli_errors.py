"""Bad input through the real command line, and the retryable failure.

The contract (DESIGN.md, "Command-line contract"): a user mistake gets one line on stderr,
`gridded: error: ...`, naming the problem and the fix; exit status 2; no traceback; nothing
written (no output files, no cells artifact). A source that fails to read while computing
is retryable: exit status 1, a summary naming each failed tile, the scene and the asset, the
other tiles done, and no half-written task.

Most cases run in-process through click's CliRunner (an uncaught exception there is turned
back into the traceback the real entry point would print); those marked `sub` run the
installed `gridded` console script as a subprocess, so the real entry point is exercised.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest
from click.testing import CliRunner
from shapely.geometry import shape

from gridded.cli import cli
from gridded.demo import DEMO_EXTENT, DEMO_GRID

PREFIX = "gridded: error: "
JAN = "2024-01-01/2024-01-31"  # one month of the demo: 6 tasks, enough for every case here
TEMP_MARK = ".gridded-tmp-"
# a message names the fix when it tells the user what to do (a verb) or what is valid
FIX = r"\b(use|give|pass|set|choose|fix|swap|regenerate|raise|check|run|split)\b"


# ---------------------------------------------------------------------------------------------
# running the CLI


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:  # shown by pytest when an assertion fails
        return f"exit {self.code}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


def _entry_point() -> list[str]:
    """The installed console script beside this interpreter, else `python -m gridded.cli`."""
    script = Path(sys.executable).with_name("gridded")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "gridded.cli"]


def run_subprocess(argv: list[str], timeout: float = 180) -> Outcome:
    proc = subprocess.run([*_entry_point(), *argv], capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def run_in_process(argv: list[str]) -> Outcome:
    result = CliRunner().invoke(cli, argv, prog_name="gridded")
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # what the real entry point would have printed
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return Outcome(result.exit_code, result.stdout, stderr)


def invoke(argv: list[str], *, sub: bool) -> Outcome:
    return run_subprocess(argv) if sub else run_in_process(argv)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and mtime: what "nothing written" compares."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


# ---------------------------------------------------------------------------------------------
# the cases


class Env:
    """Paths and flags a case builds its command line from (all under the test's tmp_path)."""

    def __init__(self, tmp: Path, demo_args: list[str], artifact: Path):
        self.tmp = tmp
        self.out = tmp / "out"
        self.cells = tmp / "cells.pickle"
        self.artifact = artifact
        self.base = dict(zip(demo_args[::2], demo_args[1::2]))
        self.base["--time"] = JAN

    def sel(self, **over) -> list[str]:
        """The demo selection flags with some replaced (extent=..., tiles_per_worker=...) or added."""
        flags = dict(self.base)
        for key, value in over.items():
            flags["--" + key.replace("_", "-")] = value
        return [x for k, v in flags.items() if v is not None for x in (k, str(v))]

    def file(self, name: str, content: str | bytes) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    def regular_file(self) -> Path:
        """A regular file that a path component below it cannot be created under."""
        return Path(self.file("file.txt", "not a directory\n"))

    def directory(self, name: str) -> str:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def tampered_artifact(self) -> str:
        data = bytearray(self.artifact.read_bytes())
        data[-10] ^= 0xFF  # inside the last batch's pickle: its SHA-256 no longer matches
        return self.file("tampered.pickle", bytes(data))


@dataclass(frozen=True)
class Case:
    argv: Callable[[Env], list[str]]
    names: tuple[str, ...] = ()  # what the message must contain: the flag, the bad value, the path
    fix: str = FIX  # what the message must match: the fix
    usage: str | None = None  # a click usage error: the option it must name (message from click)
    sub: bool = False  # run the installed entry point in a subprocess


def run_cmd(e: Env, **over) -> list[str]:
    return ["run", *e.sel(**over), "--output", str(e.out)]


GRID_OK = "crs: EPSG:32755\nresolution: 10\ntile_size: 2560\n"

CASES = [
    # --- extent
    pytest.param(Case(lambda e: run_cmd(e, extent="200,0,210,1"), ("--extent", "200,0,210,1"),
                      fix=r"-180\.\.180", sub=True), id="extent-out-of-range"),
    pytest.param(Case(lambda e: run_cmd(e, extent="148.1,-91,148.2,-36"), ("--extent",), fix=r"-90\.\.90"),
                 id="extent-latitude-out-of-range"),
    pytest.param(Case(lambda e: run_cmd(e, extent="abc"), ("--extent", "abc")), id="extent-unparsable"),
    pytest.param(Case(lambda e: run_cmd(e, extent="148.1,-36.1,148.2"), ("--extent",)), id="extent-three-numbers"),
    pytest.param(Case(lambda e: run_cmd(e, extent="148.2,-36.1,148.1,-36.0"), ("--extent", "min")),
                 id="extent-min-above-max"),
    pytest.param(Case(lambda e: run_cmd(e, extent="148.1,-36.1,148.1,-36.0"), ("--extent",)), id="extent-empty"),
    pytest.param(Case(lambda e: run_cmd(e, extent="1e400,-36.1,148.1,-36.0"), ("--extent",), fix="finite"),
                 id="extent-infinite"),
    pytest.param(Case(lambda e: run_cmd(e, extent=str(e.tmp / "missing.geojson")), ("--extent", "missing.geojson")),
                 id="extent-geojson-missing"),
    # --- time
    pytest.param(Case(lambda e: run_cmd(e, time="notadate"), ("--time", "notadate")), id="time-unparsable"),
    pytest.param(Case(lambda e: run_cmd(e, time="2024-13-01/2024-14-01"), ("--time", "2024-13-01")),
                 id="time-month-13"),
    pytest.param(Case(lambda e: run_cmd(e, time="2024-03-31/2024-01-01"), ("--time", "start"), sub=True),
                 id="time-reversed"),
    pytest.param(Case(lambda e: run_cmd(e, time="2024-01-01/"), ("--time",)), id="time-open-end"),
    pytest.param(Case(lambda e: run_cmd(e, time="last:P5M"), ("--time", "P5M")), id="time-last-bad-period"),
    # --- counts
    pytest.param(Case(lambda e: run_cmd(e, tiles_per_worker="0"), ("--tiles-per-worker", "0"), fix="at least 1"),
                 id="tiles-per-worker-0"),
    pytest.param(Case(lambda e: run_cmd(e) + ["--workers", "0"], ("--workers", "0"), fix="at least 1"),
                 id="workers-0"),
    pytest.param(Case(lambda e: run_cmd(e, tiles_per_worker="abc"), usage="--tiles-per-worker"),
                 id="tiles-per-worker-not-int"),
    # --- source
    pytest.param(Case(lambda e: run_cmd(e, source=str(e.tmp / "nowhere" / "catalog.json")),
                      ("--source", "nowhere"), sub=True), id="catalog-missing"),
    pytest.param(Case(lambda e: run_cmd(e, source=str(e.tmp / "nowhere")), ("--source", "nowhere")),
                 id="catalog-missing-directory"),
    pytest.param(Case(lambda e: run_cmd(e, source=e.file("catalog.json", "garbage{\n")), ("--source", "not JSON"),
                      sub=True), id="catalog-not-json"),
    pytest.param(Case(lambda e: run_cmd(e, source=e.file("bin.json", b"\xff\xfe\x00garbage")), ("--source",)),
                 id="catalog-not-utf8"),
    pytest.param(Case(lambda e: run_cmd(e, source=e.file("other.json", '{"a": 1}')), ("--source", "STAC")),
                 id="json-not-stac"),
    pytest.param(Case(lambda e: run_cmd(e, source=e.file("list.json", "[1, 2]")), ("--source", "STAC")),
                 id="json-list-not-stac"),
    pytest.param(Case(lambda e: run_cmd(e, source=e.file("fake.json", '{"type": "Catalog", "id": "x"}')),
                      ("--source",)), id="json-stac-type-but-invalid"),
    pytest.param(Case(lambda e: run_cmd(e, source=e.file("fc.json", '{"type": "FeatureCollection", '
                                                                    '"features": [{"a": 1}]}')),
                      ("--source",)), id="json-featurecollection-of-junk"),
    # --- grid
    pytest.param(Case(lambda e: run_cmd(e, grid=str(e.tmp / "missing-grid.yaml")), ("--grid", "missing-grid.yaml")),
                 id="grid-file-missing"),
    pytest.param(Case(lambda e: run_cmd(e, grid=e.file("neg.yaml", GRID_OK.replace("10\n", "-10\n", 1))),
                      ("neg.yaml", "resolution")), id="grid-negative-resolution"),
    pytest.param(Case(lambda e: run_cmd(e, grid=e.file("odd.yaml", GRID_OK.replace("2560", "2565"))),
                      ("odd.yaml", "tile_size")), id="grid-tile-not-whole-pixels"),
    pytest.param(Case(lambda e: run_cmd(e, grid=e.file("inf.yaml", GRID_OK.replace("2560", ".inf"))),
                      ("inf.yaml", "tile_size")), id="grid-infinite-tile-size"),
    pytest.param(Case(lambda e: run_cmd(e, grid=e.file("bad.yaml", "crs: [EPSG\n")), ("bad.yaml", "YAML")),
                 id="grid-not-yaml"),
    pytest.param(Case(lambda e: run_cmd(e, grid=e.file("crs.yaml", GRID_OK.replace("EPSG:32755", "EPSG:999999"))),
                      ("crs.yaml", "crs")), id="grid-unknown-crs"),
    pytest.param(Case(lambda e: run_cmd(e, grid="no-such-grid"), ("--grid", "no-such-grid")),
                 id="grid-unknown-builtin"),
    pytest.param(Case(lambda e: run_cmd(e, grid="utm99s-10m"), ("--grid", "utm99s-10m"), fix=r"1\.\.60"),
                 id="grid-utm-zone-99"),
    # --- recipe
    pytest.param(Case(lambda e: run_cmd(e, bands="red,bogus"), ("bogus", "--bands"), sub=True), id="band-unknown"),
    pytest.param(Case(lambda e: run_cmd(e, bands="red,count"), ("count",)), id="band-reserved-count"),
    pytest.param(Case(lambda e: run_cmd(e, bands="red,smad", statistic="geomad"), ("smad", "geomad")),
                 id="band-named-as-a-geomad-output"),
    pytest.param(Case(lambda e: run_cmd(e, statistic="mode"), ("--statistic", "mode", "unknown statistic"), sub=True),
                 id="statistic-unknown"),
    pytest.param(Case(lambda e: run_cmd(e, period="monthly"), ("--period", "monthly")), id="period-unparsable"),
    pytest.param(Case(lambda e: run_cmd(e, mask="bogus"), ("--mask", "bogus")), id="mask-unparsable"),
    pytest.param(Case(lambda e: run_cmd(e, pipeline="no-such-pipeline"), ("--pipeline", "no-such-pipeline")),
                 id="pipeline-unknown"),
    pytest.param(Case(lambda e: run_cmd(e, pipeline=str(e.tmp / "missing.yaml")), ("--pipeline", "missing.yaml")),
                 id="pipeline-file-missing"),
    pytest.param(Case(lambda e: run_cmd(e, pipeline=e.file("p.yaml", "bands: [red]\nfoo: 1\n")), ("p.yaml", "foo"),
                      fix="allowed"), id="pipeline-unknown-key"),
    pytest.param(Case(lambda e: run_cmd(e, pipeline=e.file("p.yaml", "bands: 5\n")), ("p.yaml", "bands")),
                 id="pipeline-bands-not-a-list"),
    pytest.param(Case(lambda e: run_cmd(e, pipeline=e.file("p.yaml", "bands: [red]\nnodata: abc\n")),
                      ("p.yaml", "nodata")), id="pipeline-nodata-not-a-number"),
    pytest.param(Case(lambda e: run_cmd(e, pipeline=e.file("p.yaml", "bands: [red]\nstatistic: geomedian\n"
                                                                      "max_iterations: many\n")),
                      ("p.yaml", "max_iterations")), id="pipeline-max-iterations-not-a-number"),
    # --- output
    pytest.param(Case(lambda e: ["run", *e.sel(), "--output", str(e.regular_file() / "out")],
                      ("--output", "file.txt"), sub=True), id="output-under-a-regular-file"),
    pytest.param(Case(lambda e: ["run", *e.sel(), "--output", str(e.regular_file())], ("--output", "file.txt")),
                 id="output-is-a-regular-file"),
    pytest.param(Case(lambda e: run_cmd(e) + ["--scheduler", "notanaddress"], ("--scheduler",)),
                 id="scheduler-malformed"),
    pytest.param(Case(lambda e: ["plan", *e.sel(), "--png", str(e.regular_file() / "map.png")],
                      ("--png", "file.txt")), id="plan-png-unwritable"),
    # --- tiles generate: the artifact path
    pytest.param(Case(lambda e: ["tiles", "generate", *e.sel(bands="red,bogus"), "--cells", str(e.cells)],
                      ("bogus",)), id="generate-unknown-band"),
    pytest.param(Case(lambda e: ["tiles", "generate", *e.sel(tiles_per_worker="0"), "--cells", str(e.cells)],
                      ("--tiles-per-worker",), fix="at least 1"), id="generate-tiles-per-worker-0"),
    pytest.param(Case(lambda e: ["tiles", "generate", *e.sel(), "--cells", str(e.regular_file() / "cells.pickle")],
                      ("--cells", "file.txt")), id="generate-cells-under-a-regular-file"),
    pytest.param(Case(lambda e: ["tiles", "generate", *e.sel(), "--cells", e.directory("adir")],
                      ("--cells", "adir")),
                 id="generate-cells-is-a-directory"),
    # --- tiles process: the artifact
    pytest.param(Case(lambda e: ["tiles", "process", "--cells", str(e.tmp / "none.pickle"), "--batch", "0",
                                 "--output", str(e.out)], ("none.pickle",), sub=True), id="process-cells-missing"),
    pytest.param(Case(lambda e: ["tiles", "process", "--cells", str(e.regular_file()), "--batch", "0",
                                 "--output", str(e.out)], ("file.txt", "artifact")), id="process-cells-not-artifact"),
    pytest.param(Case(lambda e: ["tiles", "process", "--cells", e.file("random.bin", os.urandom(4096)),
                                 "--batch", "0", "--output", str(e.out)], ("random.bin",)),
                 id="process-cells-random-bytes"),
    pytest.param(Case(lambda e: ["tiles", "process", "--cells", e.tampered_artifact(), "--batch", "2",
                                 "--output", str(e.out)], ("tampered.pickle", "SHA-256")),
                 id="process-cells-tampered"),
    pytest.param(Case(lambda e: ["tiles", "process", "--cells", str(e.artifact), "--batch", "99",
                                 "--output", str(e.out)], ("--batch", "99"), fix=r"batches: \d+\.\.\d+"),
                 id="process-batch-not-in-artifact"),
    pytest.param(Case(lambda e: ["tiles", "process", "--cells", str(e.artifact), "--batch", "0",
                                 "--output", str(e.regular_file() / "out")], ("--output", "file.txt")),
                 id="process-output-under-a-regular-file"),
]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, demo_catalog) -> Path:
    """A valid cells artifact of the demo's January (3 batches), read-only for the cases."""
    path = tmp_path_factory.mktemp("artifact") / "cells.pickle"
    argv = ["-q", "tiles", "generate", "--source", str(demo_catalog), "--extent", DEMO_EXTENT, "--time", JAN,
            "--grid", str(DEMO_GRID), "--bands", "blue,green,red,nir", "--tiles-per-worker", "2",
            "--cells", str(path)]
    outcome = run_in_process(argv)
    assert outcome.code == 0, outcome
    assert outcome.stdout == "3\n", outcome  # the batch count; the ids are 0..2
    return path


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(case: Case, tmp_path, demo_args, artifact):
    env = Env(tmp_path, demo_args, artifact)
    argv = case.argv(env)
    artifact_before = artifact.read_bytes()
    before = snapshot(tmp_path)

    outcome = invoke(argv, sub=case.sub)

    assert "Traceback" not in outcome.text, outcome
    assert outcome.code == 2, outcome
    assert outcome.stdout == "", outcome  # no batch ids, no table, no summary of a refused run
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    if case.usage:  # click's own usage error: its message, exit 2
        assert any(line.startswith("Error:") and case.usage in line for line in lines), outcome
    else:
        errors = [line for line in lines if line.startswith(PREFIX)]
        assert len(errors) == 1 and lines[-1] == errors[0], outcome  # one line, and the last said
        message = errors[0][len(PREFIX):]
        for name in case.names:
            assert name in message, f"the message does not name {name!r}: {message}"
        assert re.search(case.fix, message), f"the message names no fix (/{case.fix}/): {message}"

    assert snapshot(tmp_path) == before, "a refused command wrote files"
    assert not env.cells.exists(), "a refused command created the cells artifact"
    assert not env.out.exists() or not any(env.out.iterdir()), f"a refused command wrote under {env.out}"
    assert artifact.read_bytes() == artifact_before


def test_unwritable_output_is_refused_before_planning(tmp_path, demo_args):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory\n")
    outcome = run_in_process(["run", *demo_args, "--output", str(blocker / "out")])
    assert outcome.code == 2, outcome
    assert outcome.stderr.strip().startswith(PREFIX) and len(outcome.stderr.strip().splitlines()) == 1, outcome


# ---------------------------------------------------------------------------------------------
# the happy path of the two workflow steps: stdout is for the workflow engine only


def test_tiles_generate_prints_only_batch_ids_then_process_runs_one(tmp_path, demo_args):
    args = [*Env(tmp_path, demo_args, Path()).sel()]
    cells, out = tmp_path / "cells.pickle", tmp_path / "out"

    # the tasks per batch, from a dry run (which must write nothing)
    dry = run_in_process(["run", *args, "--output", str(out), "--dry-run"])
    assert dry.code == 0, dry
    assert not out.exists()
    rows = json.loads(dry.stdout)
    by_batch: dict[int, set] = {}
    for row in rows:
        by_batch.setdefault(row["batch"], set()).add((tuple(row["cell"]), row["period"]))

    # -v: INFO logs exist, and must go to stderr with the plan summary
    gen = run_subprocess(["-v", "tiles", "generate", *args, "--cells", str(cells)])
    assert gen.code == 0, gen
    assert "Traceback" not in gen.text, gen
    assert gen.stdout.strip().isdigit() and gen.stdout.endswith("\n"), gen  # one number and nothing else
    ids = list(range(int(gen.stdout)))  # batch ids are 0..N-1
    assert ids and sorted(ids) == sorted(by_batch), gen
    assert gen.stderr.strip(), "the plan summary and logs belong on stderr"
    assert cells.is_file()

    first = ids[0]
    proc = run_subprocess(["tiles", "process", "--cells", str(cells), "--batch", str(first), "--output", str(out)])
    assert proc.code == 0, proc
    assert "Traceback" not in proc.text, proc
    assert set(output_items(out)) == by_batch[first], "tiles process wrote other tasks than its batch's"
    assert not [p for p in out.rglob("*") if TEMP_MARK in p.name]


# ---------------------------------------------------------------------------------------------
# the retryable failure: one unreadable source COG


def output_items(out: Path) -> dict[tuple, tuple[Path, dict]]:
    """(cell, period) -> (path, item) for every committed item under an output root."""
    found = {}
    for path in out.rglob("*.stac-item.json"):
        item = json.loads(path.read_text())
        props = item["properties"]
        found[(tuple(props["gridded:cell"]), props["gridded:period"])] = (path, item)
    return found


def _smallest_january_item(catalog: Path) -> tuple[str, Path]:
    """(id, item JSON path) of the January item with the smallest footprint: a granule that
    covers some cells only, so that others can finish."""
    best = None
    for path in catalog.parent.rglob("*.json"):
        doc = json.loads(path.read_text())
        if doc.get("type") != "Feature" or not doc["properties"].get("datetime", "").startswith("2024-01"):
            continue
        area = shape(doc["geometry"]).area
        if best is None or area < best[0]:
            best = (area, doc["id"], path)
    assert best is not None
    return best[1], best[2]


CELL = re.compile(r"\bx(-?\d+)\W{0,3}y(-?\d+)\b")


def test_unreadable_source_cog_fails_its_tiles_only_exit_2(tmp_path, catalog_copy, demo_args):
    # a corrupt file is bad input: the run ends with 2, so that no workflow retries it in vain
    args = Env(tmp_path, demo_args, Path()).sel(source=str(catalog_copy))
    out = tmp_path / "out"

    dry = run_in_process(["run", *args, "--output", str(out), "--dry-run"])
    assert dry.code == 0, dry
    planned = {(tuple(r["cell"]), r["period"]) for r in json.loads(dry.stdout)}
    periods = {p for _, p in planned}

    scene, item_path = _smallest_january_item(catalog_copy)
    href = json.loads(item_path.read_text())["assets"]["red"]["href"]
    red = (item_path.parent / href).resolve()
    assert catalog_copy.parent.resolve() in red.parents, f"{red} is not in the private copy; refusing to damage it"
    red.write_bytes(b"this is not a GeoTIFF\n" * 200)

    outcome = run_subprocess(["run", *args, "--workers", "2", "--output", str(out)])

    assert outcome.code == 2, outcome
    assert "Traceback" not in outcome.text, outcome
    # GDAL's own words, not rasterio's "See previous exception for details"
    assert "not recognized as being in a supported file format" in outcome.text, outcome
    # the summary names each failed tile, the scene and the asset
    failed = set()
    for line in outcome.text.splitlines():
        if "FAILED" not in line.upper() or scene not in line:
            continue
        cell = CELL.search(line)
        period = [p for p in periods if p in line]
        assert cell and len(period) == 1, f"a failure line that names no tile: {line}"
        assert re.search(r"\bred\b", line), f"a failure line that names no asset: {line}"
        failed.add(((int(cell[1]), int(cell[2])), period[0]))
    assert failed, f"no failure line names {scene}:\n{outcome}"
    assert failed < planned, "every task failed: the broken scene should touch some cells only"

    items = output_items(out)
    # the other tasks are done; the failed ones have no item (no item = not done)
    assert set(items) == planned - failed, outcome
    for key, (path, item) in items.items():
        assert scene not in item["properties"]["gridded:inputs"], f"{key} says it used the unreadable scene"
        for name, asset in item["assets"].items():
            assert Path(urlparse(asset["href"]).path).is_file(), f"{path.name}: asset {name} missing"
    # nothing half-written: no asset of a failed task, no temporary file
    for (x, y), period in failed:
        leftovers = [p for p in out.rglob("*") if p.is_file() and f"x{x}" in p.parts and f"y{y}" in p.parts
                     and period in p.parts]
        assert not leftovers, f"files of failed task x{x} y{y} {period}: {leftovers}"
    assert not [p for p in out.rglob("*") if TEMP_MARK in p.name], "temporary files left under the output"


def test_ctrl_c_in_a_command_is_one_line_exit_143_nothing_written(tmp_path, demo_args, monkeypatch):
    import gridded.artifact

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gridded.artifact, "write_artifact", interrupted)
    result = CliRunner().invoke(cli, ["tiles", "generate", *demo_args, "--cells", str(tmp_path / "cells.pickle")])
    assert result.exit_code == 143, result.output
    assert result.output.strip().splitlines()[-1] == "gridded: error: interrupted (Ctrl-C) in `tiles`; rerun it"
    assert "Traceback" not in result.output and not (tmp_path / "cells.pickle").exists()
