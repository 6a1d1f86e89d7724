"""What asking for more statistics costs end to end: `gridded run` on the benchmark year (bench.py's
synthetic Sentinel-2 L2A year, 36 dates, read from local COGs) with one statistic and with several,
with one band and with an NDVI beside its bands; the runs alternate, rounds repeated, medians kept.

    python benchmarks/statistics_run.py                 # 1024² px, 3 rounds: about 3 minutes on 2 CPUs
    python benchmarks/statistics_run.py --size 2048 --repeats 2 --markdown stats-run.md

Each run is `gridded -q run` in a process of its own (wall from outside, peak RSS from wait4) into a
fresh output folder, one worker, the grid's cells in one batch, as bench.py runs gridded. After the
runs the script checks what must hold whatever the timings: the multi-statistic run's median assets
are byte-for-byte the pixels of the median-only run's, and its p10 <= median <= p90 wherever all
three have a value. It also encodes the multi-statistic run's extra COGs again alone, one thread,
with gridded's writer: the part of the ratio no reduction can remove while the outputs are
DESIGN.md's COGs (ZSTD with a predictor, two overview levels).

Issue 18's targets: median,p10,p90,mean <= 1.4x a median-only run; an NDVI median (`--band-index
ndvi` without --bands: red and nir read, the NDVI alone written) <= 1.2x a one-band median. Also
printed: the NDVI product against a red and nir median, and an NDVI beside its bands against them.
"""

from __future__ import annotations

import argparse
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

from bench import TILE_PX, prepare  # noqa: E402

BANDS4 = "blue,green,red,nir"
RUNS = {  # label -> the flags beyond the selection
    "median, 4 bands": ["--bands", BANDS4, "--statistic", "median"],
    "median,p10,p90,mean, 4 bands": ["--bands", BANDS4, "--statistic", "median,p10,p90,mean"],
    "median, red": ["--bands", "red", "--statistic", "median"],
    "median, red and nir": ["--bands", "red,nir", "--statistic", "median"],
    "median, red, nir and NDVI": ["--bands", "red,nir", "--band-index", "ndvi", "--statistic", "median"],
    "median, NDVI (red and nir read)": ["--band-index", "ndvi", "--statistic", "median"],
}
RATIOS = (  # (what, numerator, denominator, target)
    ("median,p10,p90,mean / median", "median,p10,p90,mean, 4 bands", "median, 4 bands", 1.4),
    ("NDVI median / one-band median", "median, NDVI (red and nir read)", "median, red", 1.2),
    ("NDVI median / red and nir median", "median, NDVI (red and nir read)", "median, red and nir", None),
    ("red, nir and NDVI / red and nir median", "median, red, nir and NDVI", "median, red and nir", None),
)


def run_once(layout: dict, flags: list[str], out: Path) -> dict:
    ny, nx = layout["shape_yx"]
    cells = -(-ny // TILE_PX) * -(-nx // TILE_PX)
    cmd = ["gridded", "-q", "run", "--source", layout["catalog"], "--extent", layout["extent"],
           "--time", layout["time"], "--grid", layout["grid"], "--period", "P1M", "--tiles-per-worker", str(cells),
           "--workers", "1", "--output", str(out), *flags]
    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace").strip()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {err.splitlines()[-1] if err else status}")
    return {"wall_s": wall, "peak_mb": usage.ru_maxrss / 1024}


def check_outputs(single: Path, multi: Path) -> str:
    """The multi-statistic run's medians equal the median-only run's; p10 <= median <= p90."""
    import numpy as np
    import rasterio

    checked = 0
    for median_path in sorted(single.rglob("*_red.tif")) or sorted(single.rglob("*red*.tif")):
        if "_red_" in median_path.name:
            continue
        twin = multi / median_path.relative_to(single)
        with rasterio.open(median_path) as a, rasterio.open(twin) as b:
            assert np.array_equal(a.read(), b.read()), f"{twin} differs from {median_path}"
            nodata = a.nodata
        p10 = twin.with_name(twin.name.replace("_red.tif", "_red_p10.tif"))
        p90 = twin.with_name(twin.name.replace("_red.tif", "_red_p90.tif"))
        with rasterio.open(twin) as m, rasterio.open(p10) as lo, rasterio.open(p90) as hi:
            med, low, high = (r.read(1).astype(float) for r in (m, lo, hi))
            ok = (med != nodata) & (low != lo.nodata) & (high != hi.nodata)
            assert ok.any() and (low[ok] <= med[ok]).all() and (med[ok] <= high[ok]).all()
        checked += 1
    assert checked, f"no red median COGs under {single}"
    return f"{checked} red median COGs equal between the runs; p10 <= median <= p90 in each"


def check_index_only(beside: Path, alone: Path) -> str:
    """The NDVI product's COGs are the NDVI made beside red and nir, pixel for pixel, and alone."""
    import numpy as np
    import rasterio

    made = sorted(p.relative_to(alone) for p in alone.rglob("*.tif"))
    ndvi = [p for p in made if p.name.endswith("_ndvi.tif")]
    assert ndvi and not any(p.name.endswith(("_red.tif", "_nir.tif")) for p in made), f"{alone}: {made[:4]}"
    for path in ndvi:
        with rasterio.open(beside / path) as a, rasterio.open(alone / path) as b:
            assert np.array_equal(a.read(), b.read(), equal_nan=True), f"{alone / path} differs from {beside / path}"
    return f"{len(ndvi)} NDVI COGs of the NDVI product equal those made beside red and nir, and no band COG beside them"


def extra_encode(single: Path, multi: Path) -> dict:
    """What the multi-statistic run's extra COGs (those the median-only run does not write) cost to
    encode alone: each read back and written again with gridded's own writer and settings, one after
    another on this thread (CPU time), into a scratch folder."""
    import rasterio
    from odc.geo.geobox import GeoBox

    from gridded.io.cog import write_cog

    extra = sorted(p for p in multi.rglob("*.tif") if not (single / p.relative_to(multi)).exists())
    cpu = 0.0
    with tempfile.TemporaryDirectory(prefix="gridded-encode-") as tmp:
        for i, path in enumerate(extra):
            with rasterio.open(path) as src:
                array = src.read(1)
                geobox = GeoBox(array.shape, src.transform, src.crs)
                args = dict(encoding=(src.scales[0], src.offsets[0]), description=src.descriptions[0])
                nodata = src.nodata
            start = time.thread_time()
            write_cog(Path(tmp) / f"{i}.tif", array, geobox, nodata, **args)
            cpu += time.thread_time() - start
    return {"cogs": len(extra), "cpu_s": cpu}


def folder(label: str) -> str:
    return label.replace(" ", "_").replace(",", "-").replace("(", "").replace(")", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--dates", type=int, default=36)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "gridded-bench"))
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    layout = prepare(Path(args.data), args.size, args.dates)
    scratch = Path(tempfile.mkdtemp(prefix="gridded-stats-run-"))
    results: dict[str, list[dict]] = {label: [] for label in RUNS}
    try:
        run_once(layout, RUNS["median, red"], scratch / "warm")  # numba's cache and the OS's file cache
        for round_ in range(args.repeats):
            for label, flags in RUNS.items():
                results[label].append(run_once(layout, flags, scratch / folder(label)))
                print(f"round {round_ + 1}: {label}: {results[label][-1]['wall_s']:.2f} s", file=sys.stderr)
        verdict = check_outputs(scratch / "median-_4_bands", scratch / "median-p10-p90-mean-_4_bands")
        encode = extra_encode(scratch / "median-_4_bands", scratch / "median-p10-p90-mean-_4_bands")
        verdict += "\n\n" + check_index_only(scratch / folder("median, red, nir and NDVI"),
                                             scratch / folder("median, NDVI (red and nir read)"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    wall = {label: statistics.median(r["wall_s"] for r in rs) for label, rs in results.items()}
    peak = {label: max(r["peak_mb"] for r in rs) for label, rs in results.items()}
    lines = [f"gridded run, the benchmark year at {args.size}² px, {args.dates} dates, one worker, "
             f"median of {args.repeats} rounds (load average {os.getloadavg()[0]:.1f} at the end)", "",
             "| run | wall s | peak MB |", "| --- | ---: | ---: |"]
    lines += [f"| {label} | {wall[label]:.2f} | {peak[label]:,.0f} |" for label in RUNS]
    lines += ["", "| ratio | measured | target |", "| --- | ---: | --- |"]
    for what, num, den, target in RATIOS:
        ratio = wall[num] / wall[den]
        verdict_text = "" if target is None else f"<= {target}x: {'met' if ratio <= target else 'missed'}"
        lines.append(f"| {what} | {ratio:.2f}x | {verdict_text} |")
    cpus = len(os.sched_getaffinity(0))
    single, multi = wall["median, 4 bands"], wall["median,p10,p90,mean, 4 bands"]
    lines += ["", f"The multi-statistic run's {encode['cogs']} COGs beyond the median-only run's take "
              f"{encode['cpu_s']:.2f} CPU-s to encode alone ({1000 * encode['cpu_s'] / max(encode['cogs'], 1):.1f} ms "
              f"each, gridded's writer, one thread): {encode['cpu_s'] / cpus:.2f} s on {cpus} CPUs; without them "
              f"the run would take about {(multi - encode['cpu_s'] / cpus) / single:.2f}x the median-only run.",
              "", verdict]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")


if __name__ == "__main__":
    main()
