"""The kernels of the statistics beside the medians, against plain numpy, on one in-memory stack.

    PYTHONPATH=src python benchmarks/stats_kernels.py            # about a minute on 2 CPUs
    PYTHONPATH=src python benchmarks/stats_kernels.py --full-numpy   # numpy.nanpercentile on every row (+2 x 35 s)

A (36, 1024, 1024) uint16 stack, values 1..10,000, about 30 % of observations masked (nodata 0).
Each contender is timed as the best of --repeats runs after one warm-up (numba's compile or cache
load is not timed). gridded runs on one thread (the fair comparison with numpy, which is serial)
and on every CPU. Every result is checked against the others before its time is printed.

- percentiles: gridded's one sort for p10, p50, p90 together, and p90 alone; numpy.nanpercentile
  over a float64 copy with NaN (copy included: it is what a numpy user runs; its per-pixel Python
  loop costs the same for every pixel, so by default it runs on 128 rows and the time is scaled to
  the whole stack); and the "bottleneck-style" alternative: a float32 copy with NaN (exact for
  uint16), sorted or partitioned along time (NaN goes last), then per pixel the virtual index from
  its count of clear values, the two neighbours by take_along_axis and numpy's _lerp: the fastest
  plain numpy we could write (the faster of its sort and partition variants is shown).
- mean, min, max: against one plain numpy pass over the same uint16 stack (np.where with the
  sentinel, a uint32 sum and a count; a min or max over the values with the sentinel made the
  dtype's extreme).
- std, first, last, best, medoid: gridded alone, for scale.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from gridded.compute.mosaic import best_layer, first_layer, medoid_layer
from gridded.compute.percentile import percentiles_of_stack
from gridded.compute.summary import extreme_of_stack, mean_of_stack, std_of_stack

SENTINEL = 0
QS = (10.0, 50.0, 90.0)


def make_stack(t: int, ny: int, nx: int, masked: float, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    stack = rng.integers(1, 10_001, (t, ny, nx), dtype=np.uint16)
    stack[rng.random(stack.shape) < masked] = SENTINEL
    return stack


def best_of(repeats: int, run) -> tuple[float, object]:
    result = run()  # warm-up: numba loads or compiles here, numpy pages its buffers in
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), result


# --- the numpy contenders ---------------------------------------------------------------------------


def numpy_nanpercentile(stack: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    values = np.where(stack == SENTINEL, np.nan, stack.astype(np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(values, qs, axis=0)


def lerp_as_numpy(a: np.ndarray, b: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    diff = b - a
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def bottleneck_style(stack: np.ndarray, qs: tuple[float, ...], partition: bool) -> np.ndarray:
    """numpy's linear percentiles from a float32 copy with NaN sorted (or partitioned) to the end."""
    values = np.where(stack == SENTINEL, np.float32(np.nan), stack.astype(np.float32))
    count = (stack != SENTINEL).sum(axis=0, dtype=np.int64)
    n1 = (count - 1).astype(np.float64)
    index = [n1 * (q / 100) for q in qs]
    below = [np.floor(i) for i in index]
    if partition:  # only the ranks some pixel needs
        ranks = np.unique(np.concatenate([np.clip(b, 0, None).ravel() for b in below]
                                         + [np.clip(b + 1, 0, None).ravel() for b in below])).astype(np.int64)
        ranks = ranks[ranks < stack.shape[0]]
        values.partition(ranks, axis=0)
    else:
        values.sort(axis=0)
    result = np.empty((len(qs), *stack.shape[1:]))
    for k, (i, lo) in enumerate(zip(index, below)):
        top = i >= n1  # numpy takes the last value twice, with gamma the index + 1
        j = np.where(top, n1, lo).clip(0).astype(np.int64)
        a = np.take_along_axis(values, j[None], axis=0)[0].astype(np.float64)
        b = np.take_along_axis(values, np.where(top, j, j + 1).clip(0, stack.shape[0] - 1)[None], axis=0)[0]
        gamma = np.where(top, i + 1, i - lo)
        result[k] = np.where(count > 0, lerp_as_numpy(a, b.astype(np.float64), gamma), np.nan)
    return result


def numpy_mean(stack: np.ndarray) -> np.ndarray:
    valid = stack != SENTINEL
    total = np.where(valid, stack, 0).sum(axis=0, dtype=np.uint32)
    count = valid.sum(axis=0, dtype=np.uint16)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def numpy_extreme(stack: np.ndarray, largest: bool) -> np.ndarray:
    valid = stack != SENTINEL
    if largest:
        best = np.where(valid, stack, 0).max(axis=0)
    else:
        best = np.where(valid, stack, np.iinfo(stack.dtype).max).min(axis=0)
    return np.where(valid.any(axis=0), best, np.nan)


# --- the table ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--observations", type=int, default=36)
    parser.add_argument("--masked", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-numpy", action="store_true", help="numpy.nanpercentile on every row, not 128")
    args = parser.parse_args()
    stack = make_stack(args.observations, args.size, args.size, args.masked)
    print(f"stack {stack.shape} uint16, {np.mean(stack == SENTINEL):.1%} masked; best of {args.repeats}")
    rows: list[tuple[str, str, float, float | None]] = []

    def add(task: str, contender: str, seconds: float, reference: float | None = None) -> None:
        rows.append((task, contender, seconds, None if reference is None else seconds / reference))

    # percentiles
    one_cpu, three = best_of(args.repeats, lambda: percentiles_of_stack(stack, SENTINEL, QS, threads=1))
    all_cpus, again = best_of(args.repeats, lambda: percentiles_of_stack(stack, SENTINEL, QS))
    np.testing.assert_array_equal(again, three)
    alone, p90 = best_of(args.repeats, lambda: percentiles_of_stack(stack, SENTINEL, (90.0,), threads=1))
    np.testing.assert_array_equal(p90[0], three[2])
    rows_np = args.size if args.full_numpy else min(128, args.size)
    sliced, want = best_of(1, lambda: numpy_nanpercentile(stack[:, :rows_np], QS))
    np.testing.assert_array_equal(three[:, :rows_np], want)
    scale = args.size / rows_np
    sliced90, want90 = best_of(1, lambda: numpy_nanpercentile(stack[:, :rows_np], (90.0,)))
    np.testing.assert_array_equal(p90[:, :rows_np], want90)
    alternatives = {}
    for partition in (False, True):
        alternatives[partition] = best_of(args.repeats, lambda p=partition: bottleneck_style(stack, QS, p))
        np.testing.assert_array_equal(alternatives[partition][1], three)
    partition = min(alternatives, key=lambda p: alternatives[p][0])
    alt90, got90 = best_of(args.repeats, lambda: bottleneck_style(stack, (90.0,), partition))
    np.testing.assert_array_equal(got90, p90)
    how = "partition" if partition else "sort"
    label = "numpy.nanpercentile" + ("" if rows_np == args.size else f" ({rows_np} rows x {scale:g})")
    add("p10,p50,p90", "gridded, 1 thread", one_cpu, one_cpu)
    add("p10,p50,p90", "gridded, every CPU", all_cpus, one_cpu)
    add("p10,p50,p90", label, sliced * scale, one_cpu)
    add("p10,p50,p90", f"bottleneck-style ({how}; sort {alternatives[False][0]:.2f} s, "
        f"partition {alternatives[True][0]:.2f} s)", alternatives[partition][0], one_cpu)
    add("p90", "gridded, 1 thread", alone, alone)
    add("p90", label, sliced90 * scale, alone)
    add("p90", f"bottleneck-style ({how})", alt90, alone)

    # mean, min, max
    for task, ours, theirs in (
        ("mean", lambda: mean_of_stack(stack, SENTINEL, threads=1), lambda: numpy_mean(stack)),
        ("min", lambda: extreme_of_stack(stack, SENTINEL, largest=False, threads=1),
         lambda: numpy_extreme(stack, False)),
        ("max", lambda: extreme_of_stack(stack, SENTINEL, largest=True, threads=1),
         lambda: numpy_extreme(stack, True)),
    ):
        mine, got = best_of(args.repeats, ours)
        plain, want = best_of(args.repeats, theirs)
        np.testing.assert_array_equal(got, want)
        add(task, "gridded, 1 thread", mine, mine)
        add(task, "plain numpy pass on the uint16 stack", plain, mine)

    # gridded alone, for scale
    nodata = {"red": SENTINEL, "nir": SENTINEL}
    bands = {"red": stack, "nir": stack[::-1].copy()}
    rank = np.random.default_rng(1).random(stack.shape, dtype=np.float32)
    for task, run in (("std", lambda: std_of_stack(stack, SENTINEL, threads=1)),
                      ("first (2 bands)", lambda: first_layer(bands, nodata, threads=1)),
                      ("last (2 bands)", lambda: first_layer(bands, nodata, latest=True, threads=1)),
                      ("best (2 bands)", lambda: best_layer(bands, nodata, rank, threads=1)),
                      ("medoid (2 bands)", lambda: medoid_layer(bands, nodata, threads=1))):
        seconds, _ = best_of(1 if "medoid" in task else args.repeats, run)
        add(task, "gridded, 1 thread", seconds)

    print(f"\n| {'task':<16} | {'contender':<62} | {'wall s':>7} | {'x gridded 1 thread':>18} |")
    print(f"|{'-' * 18}|{'-' * 64}|{'-' * 9}|{'-' * 20}|")
    for task, contender, seconds, ratio in rows:
        shown = "" if ratio is None else f"{ratio:.2f}"
        print(f"| {task:<16} | {contender:<62} | {seconds:7.3f} | {shown:>18} |")
    print("\nevery contender's results checked equal to gridded's (to the bit)")


if __name__ == "__main__":
    main()
