"""gridded against what users run today, on one synthetic Sentinel-2 year: one table.

    python benchmarks/bench.py                      # sizes 1024 and 2048 px, 2 rounds (~9 min on 2 CPUs)
    python benchmarks/bench.py --sizes 1024 --repeats 2 --data /tmp/gridded-bench

End to end (each run in its own process; wall time, CPU time and peak RSS of that process):
  gridded      `gridded run` of the s2-monthly-median pipeline (monthly medians + count, COGs, items)
  odc-stac     the script users write today: odc.stac.load(...), .where(clear), .resample(time="1MS")
               .median() under Dask's threaded scheduler, COGs written with odc-geo
  numpy        rasterio reads, np.nanmedian per month, COGs written with rasterio (one thread)
  decode floor every band and mask file of the year read once, on as many threads as CPUs
  io floor     the decode floor plus writing as many COGs as the run, of the same sizes and settings
               (each month's first date as its "composite"): the least a run can spend on I/O
Kernels (on the year's masked uint16 stacks, 36 dates x 4 bands, in their own processes):
  median       gridded's kernel vs numpy.nanmedian and bottleneck.nanmedian (on float32 + NaN copies)
  geomedian    gridded's vs odc-algo's (geomad), both stopping at a step of at most 0.1 DN (odc-algo's
               own default for integer data, `geomedian_with_mads`), objective gap against the optimum

Runs are interleaved (every contender once per round, the order rotated each round), so load from
other processes on the machine falls on all of them alike; the table gives the median over rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import object_store  # noqa: E402
import synthetic  # noqa: E402

BANDS = list(synthetic.BANDS)
TILE_PX = 1024  # the benchmark grid's tiles: 10,240 m, one Dask chunk of the odc-stac script
GEOMEDIAN_STEP_DN = 0.1  # odc-algo's default stopping step for integer data (eps = 0.1 x scale)
GEOMEDIAN_SAMPLE = 4000  # pixels on which the objective gap is measured
COG = dict(driver="COG", BLOCKSIZE=512, COMPRESS="DEFLATE", LEVEL=6, PREDICTOR="YES", OVERVIEW_RESAMPLING="NEAREST")


# --- data ------------------------------------------------------------------------------------


def prepare(data: Path, size: int, n_dates: int) -> dict:
    """The synthetic year at `size` px (written once, then reused), with a grid of TILE_PX tiles."""
    root = data / f"s{size}-t{n_dates}"
    layout_path = root / "layout.json"
    if not layout_path.exists():
        print(f"writing the synthetic year: {size} x {size} px, {n_dates} dates -> {root}", file=sys.stderr)
        synthetic.write_catalog(root, size, n_dates=n_dates)
    layout = json.loads(layout_path.read_text())
    grid = root / "grid-bench.yaml"
    grid.write_text(f"crs: {synthetic.CRS}\nresolution: {synthetic.RESOLUTION_M}\n"
                    f"tile_size: {TILE_PX * synthetic.RESOLUTION_M}\norigin: [0, 0]\n")
    layout["grid"] = str(grid)
    layout["root"] = str(root)
    return layout


def tiles_layout(layout: dict, tile_px: int, aligned: bool) -> dict:
    """The year on a grid of `tile_px` cells: on the scene's edges (aligned), or moved by half a cell
    so that no cell lines up with the scenes (offset: one more cell a side, the outer ones partly
    outside the scene)."""
    root = Path(layout["root"])
    res = layout["resolution_m"]
    shift = 0 if aligned else tile_px // 2
    grid = root / f"grid-bench-{tile_px}-{'aligned' if aligned else 'offset'}.yaml"
    grid.write_text(f"crs: {synthetic.CRS}\nresolution: {res}\ntile_size: {tile_px * res}\n"
                    f"origin: [{shift * res}, {shift * res}]\n")
    return {**layout, "grid": str(grid), "tile_px": tile_px, "cells": tiles_layout_cells(layout, tile_px, aligned)}


def stacks_for(layout: dict) -> dict[str, np.ndarray]:
    """The year's (time, y, x) uint16 stacks with every unclear value set to 0, as gridded loads
    them (cached as .npy beside the catalog)."""
    import rasterio

    root = Path(layout["root"])
    paths = {b: root / f"stack_{b}.npy" for b in BANDS}
    if not all(p.exists() for p in paths.values()):
        scenes = layout["scenes"]
        ny, nx = layout["shape_yx"]
        out = {b: np.empty((len(scenes), ny, nx), dtype=np.uint16) for b in BANDS}
        for i, scene in enumerate(scenes):
            with rasterio.open(scene["assets"]["scl"]) as src:
                scl = src.read(1)
            bad = np.isin(np.repeat(np.repeat(scl, 2, 0), 2, 1), synthetic.SCL_EXCLUDED)
            for b in BANDS:
                with rasterio.open(scene["assets"][b]) as src:
                    v = src.read(1)
                v[bad] = 0
                out[b][i] = v
        for b in BANDS:
            np.save(paths[b], out[b])
    return {b: np.load(paths[b], mmap_mode="r") for b in BANDS}


def scenes_by_month(layout: dict) -> dict[str, list[dict]]:
    """The year's scenes grouped by calendar month ("2024-01"), in date order."""
    months: dict[str, list[dict]] = {}
    for scene in layout["scenes"]:
        months.setdefault(scene["datetime"][:7], []).append(scene)
    return months


def sample_pixels(shape_yx, n: int, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, shape_yx[0], n), rng.integers(0, shape_yx[1], n)


# --- contenders, each run as `bench.py --child NAME ...` in a process of its own ------------------


def child_gridded(layout: dict, out: str, info: Path) -> None:
    """`gridded run`, in this process (so its RSS is this process's) and through the command's own
    entry point, which leaves the process as soon as the run is done: this child's report is
    written by an exit handler. `out` is a folder or an s3:// prefix."""
    import atexit

    from gridded.cli import main

    def report() -> None:
        if out.startswith("s3://"):
            bucket, _, prefix = out[5:].partition("/")
            run = json.loads(object_store.client(os.environ["AWS_ENDPOINT_URL"]).get_object(
                Bucket=bucket, Key=f"{prefix}/run-report.json")["Body"].read())
        else:
            run = json.loads((Path(out) / "run-report.json").read_text())
        failed = [t["reason"] for t in run["tasks"] if t["status"] == "failed"]
        result = {"peak_mb": _peak_rss_mb()} if not failed else {"error": f"{len(failed)} tasks failed: {failed[0]}"}
        info.write_text(json.dumps(result))

    ny, nx = layout["shape_yx"]
    cells = layout.get("cells") or -(-ny // TILE_PX) * -(-nx // TILE_PX)
    sys.argv = ["gridded", "-q", "run", "--source", layout["catalog"], "--extent", layout["extent"],
                "--time", layout["time"], "--grid", layout["grid"], "--pipeline", "s2-monthly-median",
                "--tiles-per-worker", str(cells), "--workers", "1", "--output", out]
    atexit.register(report)
    main()


def child_odc_stac(layout: dict, out: str) -> dict:
    """What a user writes today with odc-stac + xarray + Dask: load, mask, resample, median, COGs
    (into a folder, or for an s3:// `out` made in memory and PUT with boto3)."""
    import dask
    import odc.stac
    import pystac
    from odc.geo.cog import write_cog
    from odc.geo.geobox import GeoBox

    if out.startswith("s3://"):
        odc.stac.configure_rio(cloud_defaults=True)  # what odc-stac's docs ask for cloud reads
        bucket, _, prefix = out[5:].partition("/")
        s3 = object_store.client(os.environ["AWS_ENDPOINT_URL"])

        def save(layer, name: str) -> None:
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=bytes(write_cog(layer, ":mem:", nodata=0)))
    else:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)

        def save(layer, name: str) -> None:
            write_cog(layer, folder / name, overwrite=True, nodata=0)

    items = list(pystac.Catalog.from_file(layout["catalog"]).get_items(recursive=True))
    ny, nx = layout["shape_yx"]
    x0, y0 = layout["origin_xy"]
    res = layout["resolution_m"]
    geobox = GeoBox.from_bbox((x0, y0 - ny * res, x0 + nx * res, y0), crs=layout["crs"], resolution=res)
    ds = odc.stac.load(items, bands=BANDS + ["scl"], geobox=geobox, chunks={"x": TILE_PX, "y": TILE_PX},
                       groupby="solar_day", resampling="nearest")
    clear = ~ds.scl.isin(list(synthetic.SCL_EXCLUDED))
    refl = ds[BANDS]
    refl = refl.where(clear & (refl != 0))
    median = refl.resample(time="1MS").median()
    count = clear.resample(time="1MS").sum()
    with dask.config.set(scheduler="threads"):
        median, count = dask.compute(median, count)
    for i, when in enumerate(median.time.values):
        month = str(when)[:7]
        for band in BANDS:
            save(median[band].isel(time=i).round().fillna(0).astype("uint16"), f"{month}_{band}.tif")
        save(count.isel(time=i).astype("uint16"), f"{month}_count.tif")
    return {}


def child_numpy(layout: dict, out: Path) -> dict:
    """Plain numpy: per month, read every scene whole, NaN where unclear, np.nanmedian, one thread."""
    import warnings

    import rasterio
    from rasterio.transform import from_origin

    out.mkdir(parents=True, exist_ok=True)
    ny, nx = layout["shape_yx"]
    x0, y0 = layout["origin_xy"]
    transform = from_origin(x0, y0, layout["resolution_m"], layout["resolution_m"])
    for month, scenes in scenes_by_month(layout).items():
        values = np.full((len(BANDS), len(scenes), ny, nx), np.nan, dtype=np.float32)
        for i, scene in enumerate(scenes):
            with rasterio.open(scene["assets"]["scl"]) as src:
                scl = src.read(1)
            clear = ~np.isin(np.repeat(np.repeat(scl, 2, 0), 2, 1), synthetic.SCL_EXCLUDED)
            for b, band in enumerate(BANDS):
                with rasterio.open(scene["assets"][band]) as src:
                    v = src.read(1)
                ok = clear & (v != 0)
                values[b, i][ok] = v[ok]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            medians = np.nanmedian(values, axis=1)
        count = np.isfinite(values).all(axis=0).sum(axis=0).astype(np.uint16)
        layers = {band: np.where(np.isnan(medians[b]), 0, np.rint(medians[b])).astype(np.uint16)
                  for b, band in enumerate(BANDS)}
        layers["count"] = count
        for name, layer in layers.items():
            with rasterio.open(out / f"{month}_{name}.tif", "w", width=nx, height=ny, count=1, dtype="uint16",
                               crs=layout["crs"], transform=transform, nodata=0, **COG) as dst:
                dst.write(layer, 1)
    return {}


def child_floor(layout: dict, out: Path) -> dict:
    """The decode floor: every band and mask file read whole, once, on as many threads as CPUs."""
    from concurrent.futures import ThreadPoolExecutor

    import rasterio

    paths = [scene["assets"][key] for scene in layout["scenes"] for key in BANDS + ["scl"]]

    def read(path: str) -> int:
        with rasterio.open(path) as src:
            return int(src.read(1).sum(dtype=np.uint64) > 0)

    with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
        list(pool.map(read, paths))
    return {}


def child_io_floor(layout: dict, out: Path) -> dict:
    """Decode + encode floor: every input file read whole once, as the decode floor does, and as many
    COGs as the run writes, of the same sizes, with gridded's COG settings (per cell and month: the
    month's first date's 4 band windows, its clear flags as `count` and the month's observations with
    a value as `observed`), on as many threads as CPUs.
    No masking, no statistic, no items: what a run must at least spend on its inputs and outputs."""
    from concurrent.futures import ThreadPoolExecutor

    import rasterio
    from odc.geo.geobox import GeoBox

    from gridded.io.cog import write_cog

    ny, nx = layout["shape_yx"]
    x0, y0 = layout["origin_xy"]
    res = layout["resolution_m"]
    out.mkdir(parents=True, exist_ok=True)

    def month_job(month: str, scenes: list[dict]) -> None:
        first = None
        observed = np.zeros((ny, nx), dtype=np.uint16)
        for scene in scenes:
            arrays = {}
            for key in BANDS + ["scl"]:
                with rasterio.open(scene["assets"][key]) as src:
                    arrays[key] = src.read(1)
            first = first or arrays
            observed += arrays[BANDS[0]] != 0
        clear = ~np.isin(first["scl"], synthetic.SCL_EXCLUDED)
        count = clear.repeat(2, axis=0).repeat(2, axis=1).astype(np.uint16)
        for r in range(0, ny, TILE_PX):
            for c in range(0, nx, TILE_PX):
                geobox = GeoBox.from_bbox((x0 + c * res, y0 - (r + TILE_PX) * res, x0 + (c + TILE_PX) * res,
                                           y0 - r * res), crs=layout["crs"], resolution=res)
                window = (slice(r, r + TILE_PX), slice(c, c + TILE_PX))
                for key in BANDS:
                    write_cog(out / f"{month}_{r}_{c}_{key}.tif", np.ascontiguousarray(first[key][window]), geobox, 0)
                write_cog(out / f"{month}_{r}_{c}_count.tif", np.ascontiguousarray(count[window]), geobox, 0)
                write_cog(out / f"{month}_{r}_{c}_observed.tif", np.ascontiguousarray(observed[window]), geobox, 0)

    with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
        list(pool.map(lambda kv: month_job(*kv), scenes_by_month(layout).items()))
    return {}


def _kernel_inputs(layout: dict, rows: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    stacks = {b: np.array(s[:, :rows]) for b, s in stacks_for(layout).items()}  # in memory, not the mmap
    return stacks, {b: 0 for b in BANDS}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _timed(fn) -> dict:
    with open("/proc/self/clear_refs", "w") as f:  # restart VmHWM here: loading the inputs peaked higher
        f.write("5")
    before = _rss_mb()
    cpu0 = time.process_time()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    return {"kernel_s": seconds, "kernel_cpu_s": cpu, "kernel_extra_mb": max(0.0, _peak_rss_mb() - before),
            "result": result}


def child_median_kernel(layout: dict, out: Path, rows: int, which: str) -> dict:
    import warnings

    stacks, nodata = _kernel_inputs(layout, rows)
    if which == "gridded":
        from gridded.compute.median import reduce_median

        reduce_median({b: s[:, :2] for b, s in stacks.items()}, nodata)  # compiled (or loaded from cache)
        run = lambda: reduce_median(stacks, nodata)  # noqa: E731
    else:
        import bottleneck

        nanmedian = bottleneck.nanmedian if which == "bottleneck" else np.nanmedian

        def run():
            result = {}
            for b, s in stacks.items():
                values = s.astype(np.float32)
                values[s == 0] = np.nan
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    result[b] = nanmedian(values, axis=0)
            return result

    timed = _timed(run)
    ys, xs = sample_pixels(stacks[BANDS[0]].shape[1:], GEOMEDIAN_SAMPLE)
    result = timed.pop("result")
    np.save(out, np.stack([np.asarray(result[b], dtype=np.float64)[ys, xs] for b in BANDS]))
    return timed


def child_geomedian_kernel(layout: dict, out: Path, rows: int, which: str) -> dict:
    stacks, nodata = _kernel_inputs(layout, rows)
    if which == "gridded":
        from gridded.compute.geomedian import reduce_geomedian

        tolerance = geomedian_tolerance(stacks)
        reduce_geomedian({b: s[:, :2] for b, s in stacks.items()}, nodata)
        run = lambda: reduce_geomedian(stacks, nodata, tolerance=tolerance)  # noqa: E731
    else:
        from geomad import nangeomedian_pcm
        from odc.algo._masking import to_float_np

        scale = 1e-4  # odc-stats' reflectance scale for Sentinel-2 L2A

        def run():
            # what odc-algo's int_geomedian_np / geomedian_with_mads do: a float32 (y, x, band, time)
            # copy scaled to reflectance, then geomad's Weiszfeld on all CPUs
            t, ny, nx = stacks[BANDS[0]].shape
            cube = np.empty((ny, nx, len(BANDS), t), dtype=np.float32)
            for i, b in enumerate(BANDS):
                for j in range(t):
                    cube[:, :, i, j] = to_float_np(stacks[b][j], nodata=0, scale=scale, offset=0, dtype="float32")
            gm = nangeomedian_pcm(cube, maxiters=1000, eps=GEOMEDIAN_STEP_DN * scale,
                                  num_threads=len(os.sched_getaffinity(0)), nocheck=True)
            return {b: gm[:, :, i].astype(np.float64) / scale for i, b in enumerate(BANDS)}

    timed = _timed(run)
    ys, xs = sample_pixels(stacks[BANDS[0]].shape[1:], GEOMEDIAN_SAMPLE)
    result = timed.pop("result")
    np.save(out, np.stack([result[b][ys, xs] for b in BANDS]))
    return timed


def geomedian_tolerance(stacks: dict[str, np.ndarray]) -> float:
    """gridded's tolerance is relative to the estimate's norm: GEOMEDIAN_STEP_DN over the largest norm
    any point has makes its stopping step at most GEOMEDIAN_STEP_DN DN everywhere, as odc-algo's."""
    norm2 = sum(float(np.max(s)) ** 2 for s in stacks.values())
    return GEOMEDIAN_STEP_DN / np.sqrt(norm2)


CHILDREN = {
    "numpy": child_numpy, "floor": child_floor, "io-floor": child_io_floor,
}


def child_main(args) -> None:
    layout = json.loads(Path(args.layout).read_text())
    out = Path(args.out)
    if args.child in ("gridded", "s3:gridded") or args.child.startswith("tiles:"):
        child_gridded(layout, args.out, Path(args.info))  # does not return
    if args.child == "s3:odc-stac":
        info = child_odc_stac(layout, args.out)
    elif args.child == "odc-stac":
        info = child_odc_stac(layout, str(out))
    elif args.child in CHILDREN:
        info = CHILDREN[args.child](layout, out)
    else:
        kind, which = args.child.split(":")
        fn = child_median_kernel if kind == "median" else child_geomedian_kernel
        info = fn(layout, out, args.rows, which)
    info["peak_mb"] = _peak_rss_mb()
    Path(args.info).write_text(json.dumps(info))


def _peak_rss_mb() -> float:
    """This process's peak RSS since its exec (VmHWM). Not getrusage's ru_maxrss: Linux carries the
    parent's peak over into a child across fork and exec, so that would report the driver's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# --- the driver ------------------------------------------------------------------------------


def measure(cmd: list[str], env: dict) -> dict:
    """Run `cmd`; wall time and CPU time (user + sys) of that process and of any it waited for
    (its peak RSS comes from the child itself: see _peak_rss_mb)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}


def _monthly_mosaics(layout: dict, out: Path) -> dict[tuple[str, str], np.ndarray]:
    """{(YYYY-MM, band): the whole scene} from a contender's COGs: gridded's tiles (period folders)
    or the scripts' `YYYY-MM_band.tif`, each placed by its transform."""
    import rasterio

    ny, nx = layout["shape_yx"]
    x0, y0 = layout["origin_xy"]
    res = layout["resolution_m"]
    mosaics: dict[tuple[str, str], np.ndarray] = {}
    for tif in out.rglob("*.tif"):
        head, band = tif.stem.rsplit("_", 1)
        month = head[:7] if head[:4].isdigit() else tif.parent.name[:7]
        layer = mosaics.setdefault((month, band), np.zeros((ny, nx), dtype=np.uint16))
        with rasterio.open(tif) as src:
            t = src.transform
            r0, c0 = round((y0 - t.f) / res), round((t.c - x0) / res)
            data = src.read(1)
        # a cell of an offset grid reaches past the scene's edges: only its part over the scene
        dr, dc = max(0, -r0), max(0, -c0)
        h, w = min(data.shape[0], ny - r0) - dr, min(data.shape[1], nx - c0) - dc
        if h > 0 and w > 0:
            layer[r0 + dr:r0 + dr + h, c0 + dc:c0 + dc + w] = data[dr:dr + h, dc:dc + w]
    return mosaics


def median_tifs_equal(layout: dict, out: Path, numpy_out: Path) -> str:
    """Whether a contender's monthly medians equal plain numpy's, pixel for pixel, every band and month."""
    mine, reference = _monthly_mosaics(layout, out), _monthly_mosaics(layout, numpy_out)
    keys = [k for k in reference if k[1] != "count"]
    if not keys or any(k not in mine for k in keys):
        return "missing outputs"
    differing = sum(int((mine[k] != reference[k]).sum()) for k in keys)
    total = sum(reference[k].size for k in keys)
    return "= numpy" if differing == 0 else f"{differing} of {total} px differ from numpy"


def objective_gaps(layout: dict, rows: int, results: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """Per contender (sum of objectives / sum of the best known, worst pixel's ratio) - 1, over the sample:
    the best known is the least of an independent numpy Weiszfeld (Vardi-Zhang steps, 500 iterations
    from the coordinate-wise median), gridded's kernel run to a step of 1e-13 relative, and every
    contender's answer."""
    import warnings

    stacks = {b: s[:, :rows] for b, s in stacks_for(layout).items()}
    ys, xs = sample_pixels(stacks[BANDS[0]].shape[1:], GEOMEDIAN_SAMPLE)
    points = np.stack([np.asarray(stacks[b][:, ys, xs], dtype=np.float64) for b in BANDS], axis=-1)  # (T, P, B)
    points = points.transpose(1, 0, 2)  # (P, T, B)
    valid = (points != 0).all(axis=2)
    some = valid.any(axis=1)
    points, valid = points[some], valid[some]

    def objective(at):
        return np.where(valid, np.linalg.norm(points - at[:, None, :], axis=2), 0.0).sum(axis=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        y = np.nanmedian(np.where(valid[..., None], points, np.nan), axis=1)
        for _ in range(500):
            diff = points - y[:, None, :]
            d = np.linalg.norm(diff, axis=2)
            on = valid & (d < 1e-9)
            w = np.where(valid & ~on, 1.0 / np.where(d > 0, d, 1.0), 0.0)
            wsum = w.sum(axis=1)
            target = (w[..., None] * points).sum(axis=1) / wsum[:, None]
            r = np.linalg.norm((w[..., None] * diff).sum(axis=1), axis=1)
            gamma = np.where(on.any(axis=1), np.minimum(1.0, on.sum(axis=1) / np.maximum(r, 1e-300)), 0.0)[:, None]
            step = (1 - gamma) * target + gamma * y
            y = np.where((wsum > 0)[:, None] & np.isfinite(step), step, y)
    best = objective(y)
    from gridded.compute.geomedian import geomedian_with_iterations

    sample = {b: np.ascontiguousarray(stacks[b][:, ys, xs][:, None, :]) for b in BANDS}
    tight, _ = geomedian_with_iterations(sample, {b: 0 for b in BANDS}, max_iterations=100_000, tolerance=1e-13)
    best = np.minimum(best, objective(tight[:, 0, :].T[some]))
    answers = {name: res.T[some] for name, res in results.items()}
    for ans in answers.values():
        best = np.minimum(best, objective(ans))
    gaps = {}
    for name, ans in answers.items():
        mine = objective(ans)
        positive = best > 0
        gaps[name] = (mine.sum() / best.sum() - 1, float(np.max(mine[positive] / best[positive] - 1)))
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024,2048", help="scene sizes in pixels (square), comma-separated")
    parser.add_argument("--dates", type=int, default=36)
    parser.add_argument("--repeats", type=int, default=2, help="rounds; each runs every contender once")
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "gridded-bench"),
                        help="where the synthetic years are written (kept and reused)")
    parser.add_argument("--kernel-rows", default="512,1024",
                        help="rows of the first size's 1024-px-wide stacks for the two kernel sizes")
    parser.add_argument("--skip", default="", help="contenders to leave out, comma-separated: e2e, kernels, "
                        "median, geomedian, or a name (odc-stac, numpy, floor, io-floor, median:bottleneck, ...)")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=SRC",
                        help="also run `gridded run` with the package from another source tree (SRC on "
                             "PYTHONPATH, e.g. a checkout with proposed changes: SRC=/path/to/checkout/src)")
    parser.add_argument("--gridded-python", metavar="PYTHON",
                        help="the Python that runs `gridded run` (default: this one). An environment with gridded "
                             "alone (`python -m venv v && v/bin/pip install -e .`) times it as users install it: "
                             "the bench extras bring SciPy (for odc-algo), which numba imports on its first kernel")
    parser.add_argument("--object-store", action="store_true",
                        help="also run gridded (and each variant) and the odc-stac script on the year served by an "
                             "S3-protocol server (moto, loopback) behind a proxy adding --latency-ms to every request")
    parser.add_argument("--latency-ms", type=float, default=40.0, help="the proxy's delay per request (default 40)")
    parser.add_argument("--small-tiles", default="",
                        help="also run gridded on grids of these cell sizes in px (e.g. 256,512,1024), aligned with "
                             "the scenes and offset by half a cell, for the per-task fixed cost")
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--keep", action="store_true", help="keep the runs' outputs and the object store's request "
                        "logs (requests-*.tsv) in the scratch folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--layout", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--info", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return

    started = time.perf_counter()
    data = Path(args.data)
    sizes = [int(s) for s in args.sizes.split(",")]
    layouts = {size: prepare(data, size, args.dates) for size in sizes}
    skip = set(filter(None, args.skip.split(",")))
    kernel_layout = layouts[sizes[0]]
    stacks_for(kernel_layout)  # written once before any timing
    kernel_rows = [min(int(r), sizes[0]) for r in args.kernel_rows.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="gridded-bench-run-", dir=data))
    print(f"scratch: {scratch}", file=sys.stderr)
    env = dict(os.environ, PYTHONWARNINGS="ignore")

    variants = dict(v.split("=", 1) for v in args.variant)
    store = contextlib.ExitStack()
    proxy = direct = None
    if args.object_store:
        proxy, direct = store.enter_context(object_store.object_store(args.latency_ms / 1000))
        env.update(object_store.KEYS)
    runs: list[tuple[str, object, list[str], Path, dict]] = []  # (contender, size, command, output, env)
    for size, layout in layouts.items():
        layout_file = Path(layout["root"]) / "layout-bench.json"
        layout_file.write_text(json.dumps(layout))
        names = ["gridded", *variants, "odc-stac", "numpy", "floor", "io-floor"]
        if args.object_store:
            s3_layout = object_store.upload_year(layout, direct)
            layout["least_requests"] = object_store.least_requests(layout)
            s3_layout_file = Path(layout["root"]) / "layout-bench-s3.json"
            s3_layout_file.write_text(json.dumps(s3_layout))
            names[1 + len(variants):1 + len(variants)] = [f"s3:{n}" for n in ("gridded", *variants, "odc-stac")]
        for name in names:
            base_name = name.removeprefix("s3:")
            if skip & {name, "e2e"} or (name.startswith("s3:") and skip & {"s3"}):
                continue
            out = scratch / f"{name.replace(':', '-')}-{size}"
            child = "gridded" if base_name in variants else base_name
            extra = {"PYTHONPATH": str(Path(variants[base_name]).resolve())} if base_name in variants else {}
            python = args.gridded_python if base_name == "gridded" and args.gridded_python else sys.executable
            where, target = layout_file, str(out)
            if name.startswith("s3:"):
                child = f"s3:{child}"
                where, target = s3_layout_file, f"s3://{object_store.OUTPUT_BUCKET}/{out.name}"
                extra.update(object_store.environment(proxy.url))
            runs.append((name, size, [python, __file__, "--child", child, "--layout", str(where),
                                      "--out", target], out, extra))
        for tile_px, aligned in small_tiles(args):
            name = tiles_name(tile_px, aligned)
            if name == "gridded" or skip & {name, "tiles"}:  # the first is the `gridded` row
                continue
            tiles_file = Path(layout["root"]) / f"layout-bench-{name.replace(':', '-')}.json"
            tiles_file.write_text(json.dumps(tiles_layout(layout, tile_px, aligned)))
            out = scratch / f"{name.replace(':', '-')}-{size}"
            python = args.gridded_python or sys.executable
            runs.append((name, size, [python, __file__, "--child", name, "--layout", str(tiles_file),
                                      "--out", str(out)], out, {}))
    kernel_layout_file = Path(kernel_layout["root"]) / "layout-bench.json"
    for rows in kernel_rows:
        for kind, contenders in (("median", ("gridded", "numpy", "bottleneck")),
                                 ("geomedian", ("gridded", "odc-algo"))):
            for which in contenders:
                name = f"{kind}:{which}"
                if skip & {name, kind, "kernels"}:
                    continue
                out = scratch / f"{kind}-{which}-{rows}.npy"
                runs.append((name, rows, [sys.executable, __file__, "--child", name, "--layout",
                                          str(kernel_layout_file), "--out", str(out), "--rows", str(rows)], out, {}))

    measured: dict[tuple[str, object], list[dict]] = {}
    for rnd in range(args.repeats):
        order = runs[rnd % len(runs):] + runs[:rnd % len(runs)]
        for name, size, cmd, out, extra in order:
            if out.exists() and out.is_dir():
                shutil.rmtree(out)
            info = scratch / "info.json"
            cmd = cmd + ["--info", str(info)]
            info.unlink(missing_ok=True)
            if name.startswith("s3:"):
                object_store.clear(direct, object_store.OUTPUT_BUCKET, out.name)
                proxy.reset()
                store_cpu = object_store.store_cpu_s(proxy)
            m = measure(cmd, {**env, **extra})
            if name.startswith("s3:"):
                m["store_cpu_s"] = object_store.store_cpu_s(proxy) - store_cpu
            m.update(json.loads(info.read_text()))
            if "error" in m:
                raise RuntimeError(f"{name} {size}: {m['error']}")
            requests = ""
            if name.startswith("s3:"):
                m.update(proxy.counts())
                (scratch / f"requests-{out.name}-{rnd + 1}.tsv").write_text(
                    "".join(f"{t:.3f}\t{k}\t{p}\t{r or ''}\t{(e or t) - t:.3f}\n" for t, k, p, r, e in proxy.log))
                m["objects"] = object_store.download(direct, object_store.OUTPUT_BUCKET, out.name, out)
                requests = (f", {m['requests']} requests ({m['max_in_flight']} at most in flight), "
                            f"store {m['store_cpu_s']:.2f} s CPU")
            measured.setdefault((name, size), []).append(m)
            print(f"round {rnd + 1}/{args.repeats} {name:<20} {size!s:>5}: {m['wall_s']:7.2f} s wall, "
                  f"{m['cpu_s']:7.2f} s CPU, {m['peak_mb']:7.0f} MB{requests}", file=sys.stderr)
    store.close()

    checks = {}
    for size in sizes:
        numpy_out = scratch / f"numpy-{size}"
        tiles = [tiles_name(px, aligned) for px, aligned in small_tiles(args)]
        for name in ("gridded", *variants, "odc-stac", *(f"s3:{n}" for n in ("gridded", *variants, "odc-stac")),
                     *tiles):
            if (name, size) in measured and ("numpy", size) in measured:
                checks[(name, size)] = "medians " + median_tifs_equal(
                    layouts[size], scratch / f"{name.replace(':', '-')}-{size}", numpy_out)
    for rows in kernel_rows:
        ref = scratch / f"median-gridded-{rows}.npy"
        for which in ("numpy", "bottleneck"):
            other = scratch / f"median-{which}-{rows}.npy"
            if ref.exists() and other.exists():
                same = np.array_equal(np.load(ref), np.load(other), equal_nan=True)
                checks[(f"median:{which}", rows)] = "equal" if same else "differs"
        results = {w: np.load(scratch / f"geomedian-{w}-{rows}.npy") for w in ("gridded", "odc-algo")
                   if (scratch / f"geomedian-{w}-{rows}.npy").exists()}
        if results:
            for which, (total, worst) in objective_gaps(kernel_layout, rows, results).items():
                checks[(f"geomedian:{which}", rows)] = f"gap {100 * total:.5f} % (worst px {100 * worst:.4f} %)"

    table = render(measured, checks, layouts, kernel_layout, kernel_rows, args)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"bench.py took {time.perf_counter() - started:.0f} s", file=sys.stderr)


def render(measured, checks, layouts, kernel_layout, kernel_rows, args) -> str:
    def med(name, size, key):
        values = [m[key] for m in measured.get((name, size), []) if key in m]
        return statistics.median(values) if values else None

    import platform

    cpus = len(os.sched_getaffinity(0))
    lines = [
        f"gridded benchmark, {datetime.now():%Y-%m-%d}: {platform.machine()}, {cpus} CPUs, "
        f"median of {args.repeats} interleaved rounds; {args.dates} dates, 4 bands uint16 + SCL at half resolution",
        "",
        "| what | size | wall s | CPU s | peak MB | vs gridded | check |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    variants = dict(v.split("=", 1) for v in args.variant)
    labels = {
        "gridded": "`gridded run` monthly median (12 months x 4 bands + count, COGs + items)",
        **{v: f"`gridded run`, {v}" for v in variants},
        "odc-stac": "odc-stac + xarray + dask script, same outputs (odc-geo COGs)",
        "numpy": "plain numpy: rasterio reads, np.nanmedian, rasterio COGs",
        "floor": "decode floor: every input file read once, all CPUs",
        "io-floor": "decode + encode floor: inputs read once, as many COGs written (no statistic), all CPUs",
    }
    for size in layouts:
        cells_obs = size * size * args.dates
        base = med("gridded", size, "wall_s")
        for name in ("gridded", *variants, "odc-stac", "numpy", "floor", "io-floor"):
            wall = med(name, size, "wall_s")
            if wall is None:
                continue
            rel = f"{wall / base:.2f}x" if base and name != "gridded" else ""
            check = checks.get((name, size), "")
            if name == "gridded" or name in variants:
                check = f"{check}; {1e9 * wall / cells_obs:.1f} ns per px x date".lstrip("; ")
            lines.append(f"| {labels[name]} | {size}² px | {wall:.2f} | {med(name, size, 'cpu_s'):.2f} | "
                         f"{med(name, size, 'peak_mb'):.0f} | {rel} | {check} |")
    t = len(kernel_layout["scenes"])
    nx = kernel_layout["shape_yx"][1]
    klabels = {
        "median:gridded": "median kernel: gridded (uint16, sentinel 0, all CPUs)",
        "median:numpy": "median kernel: numpy.nanmedian (float32 + NaN copy)",
        "median:bottleneck": "median kernel: bottleneck.nanmedian (float32 + NaN copy)",
        "geomedian:gridded": f"geomedian kernel: gridded (step <= {GEOMEDIAN_STEP_DN} DN, all CPUs)",
        "geomedian:odc-algo": f"geomedian kernel: odc-algo / geomad (eps = {GEOMEDIAN_STEP_DN} DN, all CPUs)",
    }
    for rows in kernel_rows:
        for kind in ("median", "geomedian"):
            base = med(f"{kind}:gridded", rows, "kernel_s")
            for which in (("gridded", "numpy", "bottleneck") if kind == "median" else ("gridded", "odc-algo")):
                name = f"{kind}:{which}"
                secs = med(name, rows, "kernel_s")
                if secs is None:
                    continue
                rel = f"{secs / base:.1f}x" if base and which != "gridded" else ""
                check = checks.get((name, rows), "")
                if which == "gridded":
                    per = f"{1e9 * secs / (rows * nx * t):.2f} ns per px x date"
                    check = f"{check}; {per}" if check else per
                lines.append(f"| {klabels[name]} | {rows}x{nx} px x {t} | {secs:.2f} "
                             f"| {med(name, rows, 'kernel_cpu_s'):.2f} | +{med(name, rows, 'kernel_extra_mb'):.0f} "
                             f"| {rel} | {check} |")
    if args.object_store:
        lines += object_store_table(measured, checks, layouts, variants, args)
    if args.small_tiles:
        lines += small_tiles_table(measured, checks, layouts, args)
    lines.append("")
    lines.append("wall s / CPU s / peak MB: end to end, the whole process (interpreter start included); kernels, "
                 "the call alone and the memory it added. `vs gridded`: time over gridded's (higher is slower).")
    if args.gridded_python:
        lines.append(f"`gridded run` ran under {args.gridded_python}, an environment of its own; everything else "
                     f"under {sys.executable}.")
    return "\n".join(lines)


def small_tiles(args) -> list[tuple[int, bool]]:
    """(cell px, aligned) of the small-tiles rows, from --small-tiles."""
    return [(int(px), aligned) for px in filter(None, args.small_tiles.split(",")) for aligned in (True, False)]


def tiles_name(tile_px: int, aligned: bool) -> str:
    return "gridded" if tile_px == TILE_PX and aligned else f"tiles:{tile_px}:{'aligned' if aligned else 'offset'}"


def small_tiles_table(measured, checks, layouts, args) -> list[str]:
    """The small-tiles rows: the same run on grids of smaller cells, aligned with the scenes or not,
    and what each task costs beyond the pixels: the CPU time a run spends over the 1024 px aligned
    run's (the same pixels read, reduced and written), per task it has more."""
    def med(name, size, key):
        values = [m[key] for m in measured.get((name, size), []) if key in m]
        return statistics.median(values) if values else None

    months = 12
    lines = ["", "Small tiles: the same year and run on grids of smaller cells, on the scenes' edges (aligned) "
             "or moved by half a cell (offset: one more cell a side); local disk.", "",
             "| grid | size | cells | tasks | wall s | CPU s | peak MB | vs aligned | CPU ms per task "
             "| fixed cost per extra task | check |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for size, layout in layouts.items():
        ref_cpu = med("gridded", size, "cpu_s")
        ref_tasks = tiles_layout_cells(layout, TILE_PX, True) * months
        for tile_px, aligned in small_tiles(args):
            name = tiles_name(tile_px, aligned)
            wall = med(name, size, "wall_s")
            if wall is None:
                continue
            cells = tiles_layout_cells(layout, tile_px, aligned)
            tasks = cells * months
            cpu = med(name, size, "cpu_s")
            aligned_wall = med(tiles_name(tile_px, True), size, "wall_s")
            rel = f"{wall / aligned_wall:.2f}x" if aligned_wall and not aligned else ""
            fixed = f"{1000 * (cpu - ref_cpu) / (tasks - ref_tasks):.1f} ms" if tasks > ref_tasks and ref_cpu else ""
            label = f"{tile_px} px, {'aligned' if aligned else 'offset by half a cell'}"
            lines.append(f"| {label} | {size}² px | {cells} | {tasks} | {wall:.2f} | {cpu:.2f} | "
                         f"{med(name, size, 'peak_mb'):.0f} | {rel} | {1000 * cpu / tasks:.1f} | {fixed} | "
                         f"{checks.get((name, size), '')} |")
    lines += ["", "fixed cost per extra task: (CPU s of the run - CPU s of the 1024 px aligned run) / (its tasks - "
              "that run's); an offset grid's outer cells also write COGs over nodata past the scene's edges."]
    return lines


def tiles_layout_cells(layout: dict, tile_px: int, aligned: bool) -> int:
    ny, nx = layout["shape_yx"]
    shift = 0 if aligned else tile_px // 2
    return -(-(ny + shift) // tile_px) * -(-(nx + shift) // tile_px)


KINDS = ("GET range", "GET whole", "HEAD", "LIST", "PUT", "POST", "DELETE")


def object_store_table(measured, checks, layouts, variants, args) -> list[str]:
    """The object-store rows: through the latency proxy, with the requests each run sent and the
    least it could have sent (the GETs that read the year, one PUT per object it left), against
    gridded on local disk in the same rounds."""
    def med(name, size, key):
        values = [m[key] for m in measured.get((name, size), []) if key in m]
        return statistics.median(values) if values else None

    def kind(name, size, k):
        values = [m["by_kind"].get(k, 0) for m in measured.get((name, size), []) if "by_kind" in m]
        return statistics.median(values) if values else 0

    lines = ["", f"Object store: the year on moto's S3 server behind a proxy adding {args.latency_ms:g} ms to every "
             "request, read (and written) through s3:// hrefs; medians over the rounds.", "",
             "| what | size | wall s | CPU s | store CPU s | peak MB | requests | least needed | vs least "
             "| GET range / whole, HEAD, LIST, PUT | max in flight | MB read | vs gridded S3 | check |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
    labels = {"s3:gridded": "`gridded run`, S3 in and out", "s3:odc-stac": "odc-stac script, S3 in and out",
              **{f"s3:{v}": f"`gridded run` {v}, S3 in and out" for v in variants},
              "gridded": "`gridded run`, local disk", **{v: f"`gridded run` {v}, local disk" for v in variants}}
    for size in layouts:
        least = layouts[size].get("least_requests", {})
        base = med("s3:gridded", size, "wall_s")
        for name in ("s3:gridded", *(f"s3:{v}" for v in variants), "s3:odc-stac", "gridded", *variants):
            wall = med(name, size, "wall_s")
            if wall is None:
                continue
            rel = f"{wall / base:.2f}x" if base and name != "s3:gridded" else ""
            if name.startswith("s3:"):
                kinds = " / ".join(f"{kind(name, size, k):.0f}" for k in KINDS[:2]) + ", " + \
                    ", ".join(f"{kind(name, size, k):.0f}" for k in KINDS[2:5])
                needed = least.get("runs", 0) + med(name, size, "objects")
                requests = med(name, size, "requests")
                io = (f"{requests:.0f} | {needed:.0f} | {requests / needed:.2f}x | {kinds} | "
                      f"{med(name, size, 'max_in_flight'):.0f} | {med(name, size, 'mb_down'):.0f}")
            else:
                io = " |  |  |  |  | "
            store = med(name, size, "store_cpu_s")
            lines.append(f"| {labels[name]} | {size}² px | {wall:.2f} | {med(name, size, 'cpu_s'):.2f} | "
                         f"{'' if store is None else f'{store:.2f}'} | {med(name, size, 'peak_mb'):.0f} | {io} | "
                         f"{rel} | {checks.get((name, size), '')} |")
    lines += ["", "least needed: one GET per source file's header and per run of adjacent tiles it reads "
              + ", ".join(f"({least['files']} files, {least['runs']} GETs; {least['tiles']} with a GET per tile, "
                          f"as issue 17 counts, at {size}² px)" for size, least in
                          ((s, layouts[s]["least_requests"]) for s in layouts if "least_requests" in layouts[s]))
              + ", and one PUT per object the run leaves. store CPU s: moto's and the proxy's, on the same CPUs as "
              "the run (a real object store's is not). `vs gridded S3`: that row's wall time over gridded's "
              "S3 run's (higher is slower)."]
    return lines

if __name__ == "__main__":
    main()
