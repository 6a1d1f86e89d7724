"""Where a task's CPU goes, on grids aligned with the scenes and offset by half a cell: `gridded run`
on bench.py's synthetic year (local disk, one worker), with the CPU time of each stage summed over
the run's tasks, and what the offset grid's extra COGs and thumbnails alone cost.

    python benchmarks/task_costs.py                       # 512 px cells, 2 rounds: about a minute
    python benchmarks/task_costs.py --tiles 256,512,1024 --repeats 3

Each run is a process of its own (`python task_costs.py --child ...`) that wraps gridded's stage
functions to add up the CPU time of the thread that runs them (time.thread_time: a stage's own CPU
whatever else the machine runs, not its wall time): the read (data_window and load_task on the
task's thread; the reads its pool threads make count under "rest"), the reduction, the COGs
(write_cog), the thumbnail (its stretch and its PNG), the item (band statistics and build_item).
"rest" is the run's CPU less those: the reader threads, masking inside the reads, Dask's
scheduling, GIL contention, the plan and the catalog.

The offset grid has more tasks over the same pixels: its cells partly past the scenes are read and
reduced over the part they cover, but each writes whole-cell COGs (DESIGN.md: one COG per band per
cell and period) and a thumbnail. "floor from output files": the aligned run's wall plus the
offset run's extra COG and thumbnail CPU spread over the CPUs, over the aligned wall: the offset /
aligned ratio that those files alone impose (issue 17 asks 1.3x).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

STAGES = {  # stage -> (module, function) pairs whose thread CPU it sums
    "read": (("gridded.load", "data_window"), ("gridded.load", "load_task")),
    "reduce": (("gridded.process", "reduce_task"), ("gridded.process", "_in_cell")),
    "COGs": (("gridded.write", "write_cog"),),
    "thumbnail": (("gridded.write", "thumbnail_rgba"), ("gridded.write", "write_png")),
    "item": (("gridded.write", "band_statistics"), ("gridded.write", "build_item")),
}
COUNTED = ("gridded.process", "compute_task")  # one call per task computed


def child(argv: list[str]) -> None:
    """Run `gridded run` here with the stages wrapped; print a JSON line of the sums."""
    import importlib
    import threading
    from collections import Counter, defaultdict

    cpu: dict[str, float] = defaultdict(float)
    calls: Counter = Counter()
    lock = threading.Lock()

    def wrap(stage: str, module: str, name: str) -> None:
        mod = importlib.import_module(module)
        inner = getattr(mod, name)

        def timed(*args, **kwargs):
            start = time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                spent = time.thread_time() - start
                with lock:
                    cpu[stage] += spent
                    calls[f"{module}.{name}"] += 1
        setattr(mod, name, timed)

    for stage, functions in STAGES.items():
        for module, name in functions:
            wrap(stage, module, name)
    wrap("compute", *COUNTED)  # counted for its calls only
    run_module = importlib.import_module("gridded.run")
    run_plan = run_module.run_plan

    def measured_run_plan(*args, **kwargs):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        results = run_plan(*args, **kwargs)
        print(json.dumps({"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0,
                          "tasks": calls[".".join(COUNTED)], "cogs": calls["gridded.write.write_cog"],
                          "stages": {s: cpu[s] for s in STAGES}}), flush=True)
        return results
    run_module.run_plan = measured_run_plan
    from gridded.cli import main

    sys.argv = ["gridded", "-q", "run", *argv]
    main()


def run_once(layout: dict, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--source", layout["catalog"], "--extent", layout["extent"],
           "--time", layout["time"], "--grid", layout["grid"], "--period", "P1M",
           "--tiles-per-worker", str(layout["cells"]), "--workers", "1", "--output", str(out),
           "--bands", "blue,green,red,nir", "--statistic", "median"]
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(lines[-1])


def median_run(runs: list[dict]) -> dict:
    """Per field, the median over the rounds."""
    med = statistics.median
    return {"wall_s": med(r["wall_s"] for r in runs), "cpu_s": med(r["cpu_s"] for r in runs),
            "tasks": runs[0]["tasks"], "cogs": runs[0]["cogs"],
            "stages": {s: med(r["stages"][s] for r in runs) for s in STAGES}}


def table(measured: dict[tuple[int, bool], dict], cpus: int) -> list[str]:
    head = " | ".join(f"{s} s" for s in STAGES)
    lines = [f"| grid | tasks | COGs | wall s | CPU s | {head} | rest s | ms per COG | offset / aligned "
             f"| floor from output files |",
             "| --- | ---: | ---: | ---: | ---: | " + "---: | " * len(STAGES) + "---: | ---: | ---: | ---: |"]
    for (px, aligned), m in sorted(measured.items(), key=lambda kv: (kv[0][0], not kv[0][1])):
        rest = m["cpu_s"] - sum(m["stages"].values())
        ratio = floor = ""
        base = measured.get((px, True))
        if not aligned and base:
            ratio = f"{m['wall_s'] / base['wall_s']:.2f}x"
            extra = sum(m["stages"][s] - base["stages"][s] for s in ("COGs", "thumbnail"))
            floor = f"{(base['wall_s'] + extra / cpus) / base['wall_s']:.2f}x"
        stages = " | ".join(f"{m['stages'][s]:.2f}" for s in STAGES)
        label = f"{px} px, {'aligned' if aligned else 'offset by half a cell'}"
        lines.append(f"| {label} | {m['tasks']} | {m['cogs']} | {m['wall_s']:.2f} | {m['cpu_s']:.2f} | {stages} | "
                     f"{rest:.2f} | {1000 * m['stages']['COGs'] / max(m['cogs'], 1):.1f} | {ratio} | {floor} |")
    return lines


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
        return
    from bench import prepare, tiles_layout

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", default="512", help="cell sizes in px, comma-separated (default 512)")
    parser.add_argument("--repeats", type=int, default=2, help="alternated rounds; medians kept (default 2)")
    parser.add_argument("--size", type=int, default=1024, help="the synthetic year's side in px (default 1024)")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "gridded-bench")
    args = parser.parse_args()
    layout = prepare(args.data, args.size, 36)
    grids = [(int(px), aligned) for px in args.tiles.split(",") for aligned in (True, False)]
    layouts = {g: tiles_layout(layout, *g) for g in grids}
    runs: dict[tuple[int, bool], list[dict]] = {g: [] for g in grids}
    with tempfile.TemporaryDirectory(prefix="gridded-task-costs-") as scratch:
        for round_ in range(args.repeats):
            order = grids if round_ % 2 == 0 else grids[::-1]
            for g in order:
                runs[g].append(run_once(layouts[g], Path(scratch) / f"{g[0]}-{g[1]}"))
                print(f"round {round_ + 1}: {g[0]} px {'aligned' if g[1] else 'offset'}: "
                      f"{runs[g][-1]['wall_s']:.2f} s", file=sys.stderr)
    cpus = os.cpu_count() or 1
    load = os.getloadavg()[0]
    print(f"gridded run, the {args.size}² px year, one worker, stage CPU summed over the tasks, median of "
          f"{args.repeats} rounds ({cpus} CPUs, load average {load:.1f} at the end)\n")
    print("\n".join(table({g: median_run(r) for g, r in runs.items()}, cpus)))


if __name__ == "__main__":
    main()
