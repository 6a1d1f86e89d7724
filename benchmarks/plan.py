"""Ingest and planning at continental scale: `gridded stac ingest`, `gridded plan` and `gridded tiles
generate` over synthetic Sentinel-2 L2A indexes of Africa, SQLite and PostgreSQL; one table per backend.

    python benchmarks/plan.py                                  # 1e4, 1e5, 1e6 items; sqlite and postgresql
    python benchmarks/plan.py --sizes 1e4 --backends sqlite    # a minute or two
    python benchmarks/plan.py --sizes 1e5 --keep /data/plan-bench --timeout 1200

Per size, one ndjson file of synthetic items (synthetic_index.py: one item per MGRS tile over
land and revisit, 2024 first; about 5 KB a line, streamed to the file), then per backend a fresh
index (a new SQLite file; a new database in a PostgreSQL server this script starts on a free
loopback port and stops at the end) and, each command in a process of its own, timed from outside:

  ingest         gridded stac ingest FILE --index DSN
  plan Kenya     gridded plan --index DSN --collection sentinel-2-l2a --extent 33.9,-4.7,41.9,5.0
                 --time 2024 --period P1M --grid africa-10m --bands red,nir --tiles-per-worker 1 --json
  plan Africa    the same with --extent -18,-35,52,38
  tiles generate the Africa selection with --cells FILE (a local artifact) instead of --json

Peak MB is the peak memory of the command's process tree: psutil finds the process and its
children every 50 ms and their proportional set sizes are summed (PSS, from /proc/PID/smaps_rollup:
a page shared by n processes counts 1/n in each, so what forked workers share with their parent
counts once; summed RSS would count it once per process), and each process's own high-water mark
(VmHWM, which catches peaks between polls) is read at each poll; the peak is the larger of the two. A
PostgreSQL server's own memory is not counted (it is not gridded's process). A command that fails
or runs past --timeout (its process group is killed) is reported as such, with its last stderr line,
and the run goes on.

Generated files live in a temporary folder removed at the end, or in --keep DIR (kept, and an
ndjson file already there is reused). The PostgreSQL server runs with its default settings
(fsync on) from a folder of its own in the system's temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager, suppress
from datetime import datetime
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import synthetic_index  # noqa: E402

EXTENTS = {"Kenya": "33.9,-4.7,41.9,5.0", "Africa": "-18,-35,52,38"}
SELECTION = ["--collection", synthetic_index.COLLECTION, "--time", "2024", "--period", "P1M",
             "--grid", "africa-10m", "--bands", "red,nir", "--tiles-per-worker", "1"]
BACKENDS = ("sqlite", "postgresql")
POLL_S = 0.05
# bytes on disk per item, for the free-space check: the ndjson line and each backend's index
NDJSON_BYTES, INDEX_BYTES = 5_000, {"sqlite": 2_600, "postgresql": 8_000}
DISK_MARGIN = 1.3
# above this many items, the items are written and ingested a part of this many at a time (one
# ingest command per part into the same index, each part's file removed once ingested): a file
# of 10^7 items (50 GB) and its index do not fit the disk together
PART_ITEMS = 10**6
# the targets: (what, backend, size it applies to or None for any, key, op, value, unit)
TARGETS = (
    ("ingest rate", "sqlite", None, "ingest_rate", ">=", 10_000, "items/s"),
    ("ingest rate", "postgresql", None, "ingest_rate", ">=", 5_000, "items/s"),
    ("ingest peak", None, None, "ingest_mb", "<=", 300, "MB"),
    ("plan Africa wall", "sqlite", 10**6, "plan_Africa_s", "<=", 10, "s"),
    ("plan Africa wall", "postgresql", 10**6, "plan_Africa_s", "<=", 15, "s"),
    ("plan Africa peak", "sqlite", 10**6, "plan_Africa_mb", "<=", 500, "MB"),
    ("plan Africa wall", None, 10**7, "plan_Africa_s", "<=", 60, "s"),
    ("plan Africa peak", "sqlite", 10**7, "plan_Africa_mb", "<=", 500, "MB"),
    ("tiles generate wall for 1e5 cells", None, None, "tiles_s_per_1e5_cells", "<=", 30, "s"),
    ("artifact read of one batch", None, None, "batch_read_ms", "<=", 50, "ms"),
)


# --- one command, measured ---------------------------------------------------------------------


def measure(cmd: list[str], *, out: Path, err: Path, timeout_s: float) -> dict:
    """Run `cmd` (stdout to `out`, stderr to `err`): wall s, CPU s (user + sys), peak MB of its process
    tree, exit code, whether it timed out, and its last stderr line."""
    with out.open("wb") as stdout, err.open("wb") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, start_new_session=True)
        peak_b, timed_out, usage, status = 0, False, None, 0
        try:
            root = psutil.Process(proc.pid)
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid == proc.pid:
                    break
                peak_b = max(peak_b, _tree_memory(root))
                if time.perf_counter() - start > timeout_s:
                    timed_out = True
                    os.killpg(proc.pid, signal.SIGKILL)  # the group this command leads: it and its children
                    _, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(POLL_S)
        except BaseException:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [ln.strip() for ln in err.read_text(errors="replace").splitlines() if ln.strip()]
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime if usage else None,
            "peak_mb": peak_b / 2**20, "rc": proc.returncode, "timed_out": timed_out,
            "last_stderr": lines[-1][:300] if lines else "", "ok": proc.returncode == 0 and not timed_out}


def _tree_memory(root: psutil.Process) -> int:
    """The larger of the tree's summed PSS now and any one process's own high-water mark so far."""
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    return max(sum(_proc_kb(p.pid, "smaps_rollup", "Pss:") for p in procs),
               max(_proc_kb(p.pid, "status", "VmHWM:") for p in procs)) * 1024


def _proc_kb(pid: int, name: str, field: str) -> int:
    """A kB figure of /proc/PID/NAME (0 for a process gone meanwhile)."""
    try:
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- the PostgreSQL server ---------------------------------------------------------------------


def _pg_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


@contextmanager
def postgres_server():
    """A throwaway PostgreSQL server on a free loopback port (as tests/conftest.py's `pg_dsn` starts
    one: initdb in a temporary folder, as the postgres user when run as root); yields its base DSN
    (no database), stopped and removed on exit."""
    bindir = _pg_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
    data = Path(tempfile.mkdtemp(prefix="gridded-plan-pg-"))
    as_user = []
    if os.geteuid() == 0:  # initdb refuses root: the server runs as the postgres system user
        shutil.chown(data, user="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        for cmd in ([str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "gridded", "--no-sync",
                     "-E", "UTF8"],
                    [str(bindir / "pg_ctl"), "-D", str(data / "db"), "-w", "-l", str(data / "log"),
                     "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"]):
            done = subprocess.run([*as_user, *cmd], capture_output=True, text=True)
            if done.returncode != 0:
                log = (data / "log").read_text(errors="replace") if (data / "log").exists() else ""
                raise RuntimeError(f"{Path(cmd[0]).name} failed: {(done.stderr + log).strip().splitlines()[-1:]}")
        yield f"postgresql://gridded@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def fresh_database(base_dsn: str, name: str) -> str:
    """A new, empty database `name` in the server (dropped first if there); its DSN."""
    import psycopg

    with psycopg.connect(f"{base_dsn}/postgres", autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}"')
        db.execute(f'CREATE DATABASE "{name}"')
    return f"{base_dsn}/{name}"


def drop_database(base_dsn: str, name: str) -> None:
    import psycopg

    with psycopg.connect(f"{base_dsn}/postgres", autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}"')


# --- one size on one backend -------------------------------------------------------------------


def items_file(workdir: Path, n: int) -> tuple[Path, dict]:
    """The ndjson of `n` items (written, or reused from an earlier --keep run) and what it holds."""
    path = workdir / f"items-{n}.ndjson"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("items") == n and meta.get("bytes") == path.stat().st_size:
            say(f"{label(n)}: reusing {path}")
            return path, meta
    say(f"{label(n)}: writing {n:,} items to {path}")
    started = time.perf_counter()
    meta = synthetic_index.write_items(path, n)
    meta["seconds"] = time.perf_counter() - started
    meta_path.write_text(json.dumps(meta))
    say(f"{label(n)}: {meta['bytes'] / 2**20:,.0f} MB ({meta['bytes'] / n:,.0f} B an item), {meta['tiles']} tiles, "
        f"{meta['items_in_2024']:,} items in 2024, in {meta['seconds']:.0f} s")
    return path, meta


def parted_meta(n: int) -> dict:
    """What the parts of `n` items hold, as items_file tells of a file (the bytes estimated)."""
    first = 2 * 10**6  # more than 2024 holds (1,038,708): the year's items come first
    in_year = sum(1 for _, when, _ in synthetic_index.acquisitions(synthetic_index.africa_tiles(), min(n, first))
                  if when.year == synthetic_index.YEAR)
    return {"items": n, "bytes": n * NDJSON_BYTES, "tiles": len(synthetic_index.africa_tiles()),
            "items_in_2024": in_year, "parts": -(-n // PART_ITEMS)}


def bench_one(gridded: list[str], ndjson: Path, n: int, dsn: str, scratch: Path, timeout_s: float) -> dict:
    """Ingest, plan Kenya, plan Africa and tiles generate on one fresh index: the row's figures."""
    row: dict = {"items": n}
    tag = f"{label(n)} {dsn.split(':', 1)[0]}"

    def run(name: str, args: list[str]) -> dict:
        m = measure([*gridded, *args], out=scratch / f"{name}.out", err=scratch / f"{name}.err", timeout_s=timeout_s)
        m["command"] = " ".join(["gridded", *args])
        row[name] = m
        state = "ok" if m["ok"] else ("timed out" if m["timed_out"] else f"failed ({m['rc']})")
        say(f"{tag}: {name:<15} {m['wall_s']:8.2f} s {m['peak_mb']:8.0f} MB  {state}"
            + ("" if m["ok"] else f": {m['last_stderr']}"))
        return m

    if n <= PART_ITEMS:
        m = run("ingest", ["stac", "ingest", str(ndjson), "--index", dsn])
    else:
        m = row["ingest"] = ingest_in_parts(gridded, ndjson.parent, n, dsn, scratch, timeout_s, tag)
    if m["ok"]:
        row["ingest_rate"] = n / m["wall_s"]
        row["ingest_mb"] = m["peak_mb"]
    else:
        row["skipped"] = "ingest did not finish: planning skipped"
        return row
    for where, extent in EXTENTS.items():
        m = run(f"plan {where}", ["plan", "--index", dsn, "--extent", extent, *SELECTION, "--json"])
        if m["ok"]:
            row[f"plan_{where}_s"], row[f"plan_{where}_mb"] = m["wall_s"], m["peak_mb"]
            row[f"plan_{where}_tasks"] = _count_tasks(scratch / f"plan {where}.out")
            row[f"plan_{where}_summary"] = _summary(scratch / f"plan {where}.err")
    cells = scratch / "cells.artifact"
    m = run("tiles generate", ["tiles", "generate", "--index", dsn, "--extent", EXTENTS["Africa"], *SELECTION,
                               "--cells", str(cells)])
    if m["ok"]:
        summary = _summary(scratch / "tiles generate.err")
        row.update(tiles_s=m["wall_s"], tiles_mb=m["peak_mb"], artifact_mb=cells.stat().st_size / 2**20,
                   tiles_summary=summary)
        read_ms = _batch_read_ms(cells, summary.get("batches"))
        if read_ms is not None:
            row["batch_read_ms"] = read_ms
    cells.unlink(missing_ok=True)
    if n <= FINE_GRID_MAX_ITEMS:
        # 10^5 cells: Africa on a grid of 19.2 km cells (the index's density is a revisit of ~10 days
        # at 10^5 items; at 10^6 every tile has ~350 scenes a year, ten times any real revisit)
        grid = scratch / "africa-19km.yaml"
        grid.write_text(FINE_GRID)
        fine = [*SELECTION[:SELECTION.index("--grid")], "--grid", str(grid), *SELECTION[SELECTION.index("--grid") + 2:]]
        m = run("tiles generate 1e5", ["tiles", "generate", "--index", dsn, "--extent", EXTENTS["Africa"], *fine,
                                       "--cells", str(cells)])
        if m["ok"]:
            summary = _summary(scratch / "tiles generate 1e5.err")
            row.update(tiles_fine_s=m["wall_s"], tiles_fine_mb=m["peak_mb"], tiles_fine_summary=summary,
                       tiles_fine_artifact_mb=cells.stat().st_size / 2**20,
                       tiles_fine_read_ms=_batch_read_ms(cells, summary.get("batches")))
            if summary.get("cells_with_data"):
                row["tiles_s_per_1e5_cells"] = m["wall_s"] * 1e5 / summary["cells_with_data"]
        cells.unlink(missing_ok=True)
    return row


def ingest_in_parts(gridded: list[str], workdir: Path, n: int, dsn: str, scratch: Path, timeout_s: float,
                    tag: str) -> dict:
    """Ingest `n` items a part of PART_ITEMS at a time, each part written to a file, ingested by a
    command of its own into the one index and removed: the parts' walls and CPU summed, the peak the
    largest; writing the files is not timed."""
    total: dict = {"wall_s": 0.0, "cpu_s": 0.0, "peak_mb": 0.0, "rc": 0, "timed_out": False, "last_stderr": "",
                   "ok": True, "parts": []}
    for k, start in enumerate(range(0, n, PART_ITEMS)):
        part = workdir / f"items-{n}-part{k}.ndjson"
        synthetic_index.write_items(part, min(PART_ITEMS, n - start), start=start)
        try:
            m = measure([*gridded, "stac", "ingest", str(part), "--index", dsn], out=scratch / f"ingest-{k}.out",
                        err=scratch / f"ingest-{k}.err", timeout_s=timeout_s)
        finally:
            part.unlink(missing_ok=True)
        say(f"{tag}: ingest part {k + 1}/{-(-n // PART_ITEMS)} {m['wall_s']:8.2f} s {m['peak_mb']:8.0f} MB "
            f"({min(PART_ITEMS, n - start) / m['wall_s']:,.0f} items/s)")
        total["parts"].append(m["wall_s"])
        total["wall_s"] += m["wall_s"]
        total["cpu_s"] += m["cpu_s"] or 0.0
        total["peak_mb"] = max(total["peak_mb"], m["peak_mb"])
        if not m["ok"]:
            total.update(rc=m["rc"], timed_out=m["timed_out"], last_stderr=m["last_stderr"], ok=False)
            break
    total["command"] = f"gridded stac ingest PART --index {dsn} (in parts of {PART_ITEMS:,})"
    return total


FINE_GRID_MAX_ITEMS = 10**5
FINE_GRID = "crs: EPSG:6933\nresolution: 10\ntile_size: 19200\norigin: [0, 0]\n"  # africa-10m's, 19.2 km cells


def _batch_read_ms(cells: Path, n_batches: int | None) -> float | None:
    """The slowest of reading the first, middle and last batch, each in a fresh process as a pod
    would (gridded's import excluded: the read itself, four ranged reads and the unpickling)."""
    if not n_batches:
        return None
    code = ("import sys, time; from gridded.artifact import read_batch; t = time.perf_counter(); "
            "read_batch(sys.argv[1], int(sys.argv[2])); print((time.perf_counter() - t) * 1e3)")
    times = []
    for batch in sorted({0, n_batches // 2, n_batches - 1}):
        out = subprocess.run([sys.executable, "-c", code, str(cells), str(batch)], capture_output=True, text=True)
        if out.returncode != 0:
            return None
        times.append(float(out.stdout.strip()))
    return max(times)


def _count_tasks(path: Path) -> int | None:
    try:
        return len(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


SUMMARY_PATTERNS = {
    "source_items": r"(\d+) source items",
    "cells_in_extent": r"(\d+) cells meet the extent",
    "cells_with_data": r"(\d+) with data",
    "tasks": r"(\d+) tasks \(",
    "observations": r"\((\d+) observations\)",
    "batches": r"in (\d+) batches",
}


def _summary(stderr: Path) -> dict:
    """The counts of the plan summary a command prints on stderr."""
    text = stderr.read_text(errors="replace")
    found = {}
    for key, pattern in SUMMARY_PATTERNS.items():
        m = re.search(pattern, text)
        if m:
            found[key] = int(m.group(1))
    return found


# --- the tables --------------------------------------------------------------------------------


def render(backend: str, rows: list[dict], note: str = "") -> str:
    """One markdown table for a backend (rows: sizes), the failures under it, then the targets."""
    head = ("| items | ingest items/s | ingest peak MB | plan Kenya s | plan Kenya MB | Kenya tasks | plan Africa s | "
            "plan Africa MB | Africa tasks | tiles generate s | tiles generate MB | artifact MB | cells (with data) |")
    lines = [f"### {backend}" + (f" ({note})" if note else ""), "", head, "| --- |" + " ---: |" * (head.count("|") - 2)]
    problems = []
    for row in rows:
        if "not_run" in row:
            lines.append(f"| {label(row['items'])} | not run: {row['not_run']} |" + " |" * (head.count("|") - 3))
            continue
        cells = [label(row["items"])]
        cells += [_num(row, "ingest", "ingest_rate", "{:,.0f}", True), _num(row, "ingest", "ingest_mb", "{:,.0f}")]
        for where in EXTENTS:
            name = f"plan {where}"
            cells += [_num(row, name, f"plan_{where}_s", "{:.2f}", True),
                      _num(row, name, f"plan_{where}_mb", "{:,.0f}"), _num(row, name, f"plan_{where}_tasks", "{:,}")]
        tiles = row.get("tiles_summary", {})
        cells += [_num(row, "tiles generate", "tiles_s", "{:.2f}", True),
                  _num(row, "tiles generate", "tiles_mb", "{:,.0f}"),
                  _num(row, "tiles generate", "artifact_mb", "{:,.1f}"),
                  f"{tiles['cells_in_extent']:,} ({tiles['cells_with_data']:,})" if "cells_with_data" in tiles else ""]
        lines.append("| " + " | ".join(cells) + " |")
        for name in ("ingest", *(f"plan {w}" for w in EXTENTS), "tiles generate", "tiles generate 1e5"):
            m = row.get(name)
            if m and not m["ok"]:
                what = f"timed out after {m['wall_s']:.0f} s" if m["timed_out"] else f"exit {m['rc']}"
                problems.append(f"- {label(row['items'])} {name}: {what} (peak {m['peak_mb']:,.0f} MB): "
                                f"`{m['command']}`; last stderr line: `{m['last_stderr'] or '(none)'}`")
        if row.get("skipped"):
            problems.append(f"- {label(row['items'])}: {row['skipped']}")
    fine = [r for r in rows if "tiles_fine_s" in r]
    if fine:
        lines += ["", "tiles generate at 10^5 cells (Africa on 19.2 km cells, one cell a batch):", "",
                  "| items | cells in extent (with data) | tasks | observations | wall s | peak MB | artifact MB | "
                  "slowest one-batch read ms |", "| --- |" + " ---: |" * 7]
        for r in fine:
            t = r["tiles_fine_summary"]
            lines.append(f"| {label(r['items'])} | {t.get('cells_in_extent', 0):,} ({t.get('cells_with_data', 0):,}) | "
                         f"{t.get('tasks', 0):,} | {t.get('observations', 0):,} | {r['tiles_fine_s']:.2f} | "
                         f"{r['tiles_fine_mb']:,.0f} | {r['tiles_fine_artifact_mb']:,.1f} | "
                         f"{r.get('tiles_fine_read_ms') or float('nan'):.1f} |")
    if problems:
        lines += ["", "Failed or timed out:", *problems]
    lines += ["", "Against the issue's targets:", "",
              "| target | wanted | measured | verdict |", "| --- | --- | --- | --- |"]
    for what, target_backend, size, key, op, value, unit in TARGETS:
        if target_backend not in (None, backend):
            continue
        measured = [(r["items"], r[key]) for r in rows if key in r and (size is None or r["items"] == size)]
        wanted = f"{op} {value:,} {unit}" + (f" at {label(size)} items" if size else "")
        if not measured:
            largest = max((r for r in rows if key in r), key=lambda r: r["items"], default=None)
            seen = f"not measured at {label(size)}" if size else "not measured"
            if largest and size:
                seen += f" (at {label(largest['items'])}: {_figure(largest[key], unit)} {unit})"
            lines.append(f"| {what} | {wanted} | {seen} | |")
            continue
        met = all((v >= value) if op == ">=" else (v <= value) for _, v in measured)
        text = ", ".join(f"{label(n)}: {_figure(v, unit)}" for n, v in measured) + f" {unit}"
        if key == "tiles_s_per_1e5_cells":
            text += ", scaled from " + ", ".join(
                f"{r['tiles_fine_s']:.1f} s for {r['tiles_fine_summary']['cells_with_data']:,} cells with data "
                f"({r['tiles_fine_summary'].get('tasks', '?')} tasks) on 19.2 km cells" for r in rows if key in r)
        lines.append(f"| {what} | {wanted} | {text} | {'met' if met else 'missed'} |")
    return "\n".join(lines)


def _figure(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:,.1f}"
    return f"{value:,.2f}" if unit == "s" and value < 100 else f"{value:,.0f}"


def _num(row: dict, name: str, key: str, fmt: str, first: bool = False) -> str:
    """A figure of the row, or (in a command's first column) why there is none."""
    if key in row and row[key] is not None:
        return fmt.format(row[key])
    m = row.get(name)
    if not first:
        return "-" if m is None or not m["ok"] else ""
    if m is None:
        return "skipped" if row.get("skipped") else ""
    return "timeout" if m["timed_out"] else ("failed" if not m["ok"] else "")


def label(n: int) -> str:
    """1e4 for 10,000; the plain number when it is not a power of ten."""
    exp = len(str(n)) - 1
    return f"1e{exp}" if n == 10**exp else f"{n:,}"


def parse_size(text: str) -> int:
    value = float(text)
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"--sizes {text}: give whole numbers of items, e.g. 1e4,1e5")
    return int(value)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the driver --------------------------------------------------------------------------------


def disk_shortfall(workdir: Path, n: int, backends: list[str], have_file: bool) -> str | None:
    """Why `n` items would not fit on the disks (the ndjson and SQLite under `workdir`, PostgreSQL
    under the system's temporary folder), or None."""
    needs: dict[str, float] = {}
    local = str(workdir)
    needs[local] = 0 if have_file else min(n, PART_ITEMS) * NDJSON_BYTES * DISK_MARGIN
    if "sqlite" in backends:
        needs[local] += n * INDEX_BYTES["sqlite"] * DISK_MARGIN
    if "postgresql" in backends:
        needs.setdefault(tempfile.gettempdir(), 0)
        needs[tempfile.gettempdir()] += n * INDEX_BYTES["postgresql"] * DISK_MARGIN
    by_device: dict[int, tuple[str, float]] = {}
    for path, need in needs.items():
        dev = os.stat(path).st_dev
        where, total = by_device.get(dev, (path, 0))
        by_device[dev] = (where, total + need)
    for where, need in by_device.values():
        free = shutil.disk_usage(where).free
        if need > free:
            return f"needs about {need / 1e9:,.0f} GB on {where}, {free / 1e9:,.0f} GB free"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1e4,1e5,1e6", help="numbers of items, comma-separated (1e7 if the disk "
                        "has room: about 5 KB an item for the file and as much again per backend)")
    parser.add_argument("--backends", default="sqlite,postgresql", help="sqlite, postgresql or both")
    parser.add_argument("--keep", metavar="DIR", help="keep the generated files (items, SQLite indexes, outputs) "
                        "in DIR, and reuse item files found there")
    parser.add_argument("--timeout", type=float, default=600, help="seconds any one command may take (default 600)")
    parser.add_argument("--gridded-python", default=sys.executable,
                        help="the Python whose gridded runs (`PYTHON -m gridded.cli`; default: this one)")
    parser.add_argument("--markdown", help="also write the tables to this file")
    args = parser.parse_args()
    sizes = sorted({parse_size(s) for s in args.sizes.split(",") if s.strip()})
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        parser.error(f"--backends {args.backends}: unknown {', '.join(sorted(unknown))}; use sqlite,postgresql")

    started = time.perf_counter()
    workdir = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="gridded-plan-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    gridded = [args.gridded_python, "-m", "gridded.cli"]
    rows: dict[str, list[dict]] = {b: [] for b in backends}
    notes: dict[str, str] = {}
    try:
        with ExitStack() as stack:
            pg_dsn = None
            if "postgresql" in backends:
                try:
                    pg_dsn = stack.enter_context(postgres_server())
                except RuntimeError as err:
                    say(f"postgresql: {err}")
                    notes["postgresql"] = f"server not started: {err}"
            for n in sizes:
                have = (workdir / f"items-{n}.ndjson").exists()
                short = disk_shortfall(workdir, n, backends, have)
                if short:
                    say(f"{label(n)}: skipped, {short}")
                    for b in backends:
                        rows[b].append({"items": n, "not_run": short})
                    continue
                if n <= PART_ITEMS:
                    ndjson, meta = items_file(workdir, n)
                else:  # written a part at a time by the ingest (bench_one)
                    ndjson, meta = workdir / f"items-{n}.ndjson", parted_meta(n)
                for backend in backends:
                    scratch = workdir / f"{backend}-{n}"
                    scratch.mkdir(exist_ok=True)
                    if backend == "sqlite":
                        db = scratch / "index.db"
                        db.unlink(missing_ok=True)
                        dsn = f"sqlite:///{db}"
                    elif pg_dsn is None:
                        rows[backend].append({"items": n, "not_run": notes["postgresql"]})
                        continue
                    else:
                        dsn = fresh_database(pg_dsn, f"gridded_{n}")
                    row = bench_one(gridded, ndjson, n, dsn, scratch, args.timeout)
                    row["file"] = meta
                    rows[backend].append(row)
                    if not args.keep:
                        shutil.rmtree(scratch, ignore_errors=True)
                    if backend == "postgresql" and not args.keep:
                        drop_database(pg_dsn, dsn.rsplit("/", 1)[1])
                if not args.keep:
                    ndjson.unlink(missing_ok=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    tables = [header(sizes, rows)] + [render(b, rows[b], notes.get(b, "")) for b in backends]
    text = "\n\n".join(tables)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.keep:
        (workdir / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    say(f"plan.py took {time.perf_counter() - started:.0f} s" + (f"; files kept in {workdir}" if args.keep else ""))


def header(sizes: list[int], rows: dict[str, list[dict]]) -> str:
    """What was run, where: the machine, the items, the commands."""
    import platform

    metas = {r["items"]: r["file"] for rs in rows.values() for r in rs if "file" in r}
    files = "; ".join(f"{label(n)}: {m['bytes'] / 2**20:,.0f} MB" + (f" in {m['parts']} parts" if "parts" in m else "")
                      + f", {m['items_in_2024']:,} in 2024" for n, m in sorted(metas.items()))
    tiles = next(iter(metas.values()))["tiles"] if metas else "?"
    return (f"gridded plan benchmark, {datetime.now():%Y-%m-%d %H:%M}: {platform.machine()}, "
            f"{len(os.sched_getaffinity(0))} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
            f"synthetic Sentinel-2 L2A items over {tiles} MGRS tiles of Africa ({files}).\n"
            f"plan: `--collection {synthetic_index.COLLECTION} --time 2024 --period P1M --grid africa-10m "
            f"--bands red,nir --tiles-per-worker 1 --json`, Kenya `{EXTENTS['Kenya']}`, Africa `{EXTENTS['Africa']}`; "
            f"tiles generate: the Africa selection with `--cells FILE`. Wall s of the whole command (interpreter "
            f"start included); peak MB of its process tree (PSS summed every {POLL_S * 1000:.0f} ms, "
            f"or one process's VmHWM if larger). Tasks: rows of plan --json; cells: in the extent (with data).")


if __name__ == "__main__":
    main()
