"""stats.py: reducers against plain numpy (np.nanmedian) and a short Weiszfeld loop written here."""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import click
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gridded.compute.arrays import to_output
from gridded.compute.blocks import run_in_row_blocks
from gridded.compute.geomedian import MADS, geomedian_mads, geomedian_with_iterations, reduce_geomedian
from gridded.compute.masking import clear_count
from gridded.compute.median import median_of_stack, reduce_median, sorting_network
from gridded.compute.statistics import STATISTICS, warm_kernels

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def nanmedian_of_clear(stack: np.ndarray, sentinel) -> np.ndarray:
    """np.nanmedian over time of the values that are not the sentinel (nor NaN), in float64."""
    values = stack.astype(np.float64)
    if sentinel is not None and not np.isnan(sentinel):
        values[stack == sentinel] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        return np.nanmedian(values, axis=0)


@st.composite
def masked_stacks(draw, dtype=np.uint16, max_value=65535, bands=("red",)):
    """Per band a (time, y, x) stack with random holes set to that band's nodata sentinel."""
    shape = (draw(st.integers(1, 12)), draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stacks, nodata = {}, {}
    for band in bands:
        sentinel = draw(st.sampled_from([0, max_value]))
        # a narrow value range now and then, so ties and even counts with equal middles happen
        top = draw(st.sampled_from([3, 40, max_value]))
        values = draw(hnp.arrays(dtype, shape, elements=st.integers(0, top)))
        holes = draw(hnp.arrays(np.bool_, shape))
        values[holes] = sentinel
        stacks[band], nodata[band] = values, sentinel
    return stacks, nodata


# --- median ----------------------------------------------------------------------------------


@SETTINGS
@given(masked_stacks(bands=("red", "nir")))
def test_median_is_nanmedian_of_clear_values(data):
    stacks, nodata = data
    result = reduce_median(stacks, nodata)
    assert set(result) == {"red", "nir"}
    for band, stack in stacks.items():
        assert result[band].dtype == np.float64 and result[band].shape == stack.shape[1:]
        np.testing.assert_array_equal(result[band], nanmedian_of_clear(stack, nodata[band]))


@SETTINGS
@given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 5), st.integers(1, 5)),
               elements=st.floats(-1e6, 1e6, width=32) | st.just(np.float32("nan"))),
    st.sampled_from([float("nan"), -9999.0, None]),
)
def test_median_of_float_stack_with_nan_or_sentinel(stack, sentinel):
    if sentinel == -9999.0:
        stack[::3] = np.float32(-9999.0)  # some observations are wholly the sentinel
    result = reduce_median({"b": stack}, {"b": sentinel})["b"]
    np.testing.assert_array_equal(result, nanmedian_of_clear(stack, sentinel))


def test_median_small_cases_by_hand():
    # pixels: odd count, even count, all masked, one clear value, ties; 0 is nodata
    stack = np.array([
        [3, 1, 0, 0, 5],
        [1, 2, 0, 7, 5],
        [2, 3, 0, 0, 9],
        [0, 10, 0, 0, 5],
    ], dtype=np.uint16)[:, None, :]
    result = reduce_median({"b": stack}, {"b": 0})["b"][0]
    np.testing.assert_array_equal(result, [2.0, 2.5, np.nan, 7.0, 5.0])


def test_median_without_nodata_uses_every_value():
    stack = np.array([0, 4, 65535, 1], dtype=np.uint16).reshape(4, 1, 1)
    assert reduce_median({"b": stack}, {"b": None})["b"][0, 0] == 2.5


# --- to_output -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, dtype, nodata, expected",
    [
        ([0.5, 1.5, 2.5, 3.5, 4.4, 4.6, np.nan, 70000.0, -3.2, 65534.5, 65535.4], "uint16", 0,
         [0, 2, 2, 4, 4, 5, 0, 65535, 0, 65534, 65535]),
        ([1.5, 2.5, np.nan], "uint16", 65535, [2, 2, 65535]),
        ([2.5, -2.5, -3.5, 40000.0, -40000.0, np.nan], "int16", -32768, [2, -2, -4, 32767, -32768, -32768]),
        ([254.5, 255.5, 300.0, np.nan], "uint8", None, [254, 255, 255, 0]),
        ([0.25, np.nan, 1e6], "float32", -9999.0, [0.25, -9999.0, 1e6]),
        # the 64-bit maxima are not floats: clipped to the largest float below them, not wrapped
        ([1e30, -1e30, 5.0], "int64", 0, [2**63 - 1024, -2**63, 5]),
        ([1e30, -1e30, 5.0], "uint64", 0, [2**64 - 2048, 0, 5]),
    ],
)
def test_to_output_rounds_half_to_even_clips_and_fills(values, dtype, nodata, expected):
    out = to_output(np.array(values, dtype=np.float64), np.dtype(dtype), nodata)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, np.array(expected, dtype=dtype))


def test_to_output_float_with_nan_nodata_keeps_nan():
    out = to_output(np.array([[1.25, np.nan]]), np.float32, float("nan"))
    assert out.dtype == np.float32 and out[0, 0] == np.float32(1.25) and np.isnan(out[0, 1])


@SETTINGS
@given(hnp.arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e5, 1e5) | st.just(np.nan)))
def test_to_output_uint16_matches_rint(values):
    out = to_output(values, np.uint16, 0)
    for v, o in zip(values.tolist(), out.tolist()):
        if np.isnan(v):
            assert o == 0
        else:
            # round half to even, by hand: nearest integer, the even one on a tie
            lo = np.floor(v)
            nearest = lo + 1 if (v - lo > 0.5 or (v - lo == 0.5 and lo % 2 == 1)) else lo
            assert o == min(max(int(nearest), 0), 65535)


@SETTINGS
@given(masked_stacks(bands=("red", "nir")), st.sampled_from([("uint16", 0), ("uint16", 65535), ("int16", -32768),
                                                              ("uint8", None), ("float32", -9999.0),
                                                              ("float32", None)]))
def test_reducers_write_into_out_as_to_output_converts(data, output):
    # the fused path (results written straight into the output dtype) equals the float results
    # converted by to_output: rounding half to even, clipping (uint8), nodata where none is clear
    stacks, nodata = data
    dtype, out_nodata = output
    shape = stacks["red"].shape[1:]
    rank = np.random.default_rng(0).random(stacks["red"].shape).astype(np.float32)  # for `best`
    for name, statistic in STATISTICS.items():
        reducer = partial(statistic.reduce, rank=rank) if statistic.ranked else statistic.reduce
        floats = reducer(stacks, nodata)
        out = {b: np.empty(shape, dtype=dtype) for b in stacks}
        got = reducer(stacks, nodata, out=out, out_nodata={b: out_nodata for b in stacks})
        for band in stacks:
            assert got[band] is out[band], name
            np.testing.assert_array_equal(got[band], to_output(floats[band], np.dtype(dtype), out_nodata),
                                          err_msg=f"{name} {band} {dtype}")


# --- clear_count -----------------------------------------------------------------------------


@SETTINGS
@given(masked_stacks(bands=("red", "green", "nir")))
def test_clear_count_counts_observations_clear_in_every_band(data):
    stacks, nodata = data
    t, ny, nx = stacks["red"].shape
    expected = np.zeros((ny, nx), dtype=np.int64)
    for j in range(t):
        for y in range(ny):
            for x in range(nx):
                expected[y, x] += all(int(stacks[b][j, y, x]) != nodata[b] for b in stacks)
    count = clear_count(stacks, nodata)
    assert np.issubdtype(count.dtype, np.integer)
    np.testing.assert_array_equal(count, expected)


def test_clear_count_of_float_bands_skips_nan():
    a = np.array([1.0, np.nan, 3.0, -1.0], dtype=np.float32).reshape(4, 1, 1)
    b = np.array([1.0, 2.0, np.nan, 5.0], dtype=np.float32).reshape(4, 1, 1)
    assert clear_count({"a": a, "b": b}, {"a": -1.0, "b": float("nan")})[0, 0] == 1


# --- geomedian -------------------------------------------------------------------------------


def objective(points: np.ndarray, valid: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Sum over the clear points of each pixel of the Euclidean distance to `at`: (P, T, B), (P, T), (P, B) -> (P,)."""
    d = np.linalg.norm(points - at[:, None, :], axis=2)
    return np.where(valid, d, 0.0).sum(axis=1)


def reference_geomedian(points: np.ndarray, valid: np.ndarray, iterations: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(best objective, coordinate-wise median) per pixel: Weiszfeld with Vardi-Zhang's step at data points,
    and the best of its result, every data point and the coordinate-wise median."""
    masked = np.where(valid[..., None], points, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(masked, axis=1)
    y = np.nan_to_num(median)
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(iterations):
            diff = points - y[:, None, :]
            d = np.linalg.norm(diff, axis=2)
            on = valid & (d < 1e-9)
            w = np.where(valid & ~on, 1.0 / np.where(d > 0, d, 1.0), 0.0)
            wsum = w.sum(axis=1)
            target = (w[..., None] * points).sum(axis=1) / wsum[:, None]
            r = np.linalg.norm((w[..., None] * diff).sum(axis=1), axis=1)
            eta = on.sum(axis=1)
            gamma = np.where(eta > 0, np.minimum(1.0, eta / r), 0.0)[:, None]
            step = (1 - gamma) * target + gamma * y
            y = np.where((wsum > 0)[:, None] & np.isfinite(step), step, y)
    best = objective(points, valid, y)
    best = np.minimum(best, objective(points, valid, np.nan_to_num(median)))
    for j in range(points.shape[1]):
        at_point = objective(points, valid, points[:, j, :])
        best = np.where(valid[:, j], np.minimum(best, at_point), best)
    return best, median


def as_points(stacks: dict, nodata: dict) -> tuple[np.ndarray, np.ndarray]:
    """Stacks -> (pixels, time, bands) float points and which observations are clear in every band."""
    bands = list(stacks)
    cube = np.stack([stacks[b].astype(np.float64) for b in bands], axis=-1)  # (T, y, x, B)
    t, ny, nx, nb = cube.shape
    valid = np.ones((t, ny, nx), dtype=bool)
    for b in bands:
        if nodata[b] is not None:
            valid &= stacks[b] != nodata[b]
        valid &= ~np.isnan(stacks[b].astype(np.float64))
    points = cube.transpose(1, 2, 0, 3).reshape(ny * nx, t, nb)
    return points, valid.transpose(1, 2, 0).reshape(ny * nx, t)


def check_geomedian(stacks: dict, nodata: dict) -> None:
    result = reduce_geomedian(stacks, nodata)
    bands = list(stacks)
    assert list(result) == bands
    points, valid = as_points(stacks, nodata)
    got = np.stack([result[b] for b in bands], axis=-1).reshape(points.shape[0], len(bands))
    n_clear = valid.sum(axis=1)

    none = n_clear == 0
    assert np.isnan(got[none]).all()
    assert np.isfinite(got[~none]).all()

    one = n_clear == 1
    if one.any():
        only = points[one][valid[one]]  # the single clear observation of each such pixel
        np.testing.assert_array_equal(got[one], only)

    two = n_clear == 2
    if two.any():
        pairs = points[two][valid[two]].reshape(-1, 2, len(bands))
        span = np.linalg.norm(pairs[:, 0] - pairs[:, 1], axis=1)
        via = np.linalg.norm(got[two] - pairs[:, 0], axis=1) + np.linalg.norm(got[two] - pairs[:, 1], axis=1)
        np.testing.assert_allclose(via, span, rtol=1e-9, atol=1e-9)  # on the segment: objective is the distance

    some = ~none
    mine = objective(points[some], valid[some], got[some])
    best, median = reference_geomedian(points[some], valid[some])
    assert np.all(mine <= best * 1.002 + 1e-9), np.max(mine / np.maximum(best, 1e-12))
    # Weiszfeld stops once a step is below tolerance (1e-7) x |estimate|; where the optimum is a repeated
    # data point with the pull of the others about equal to its multiplicity, convergence is sublinear and
    # the stopping point lies measurably (1e-5 relative seen) short of it: allow 1e-4, and a few steps
    slack = n_clear[some] * 10 * 1e-7 * np.maximum(np.linalg.norm(median, axis=1), 1.0)
    assert np.all(mine <= objective(points[some], valid[some], median) * (1 + 1e-4) + slack)


@settings(max_examples=40, deadline=None, derandomize=True)  # numeric tolerances: the same examples every run
@given(masked_stacks(max_value=10000, bands=("blue", "red", "nir")))
def test_geomedian_against_weiszfeld_reference(data):
    stacks, nodata = data
    check_geomedian(stacks, nodata)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(masked_stacks(max_value=10000, bands=("red", "nir")))
def test_geomedian_two_bands(data):
    check_geomedian(*data)


def test_geomedian_by_hand():
    # pixel 0: none clear; 1: one clear; 2: two clear; 3: four corners of a square plus its centre
    nodata = {"a": 0, "b": 0}
    a = np.zeros((5, 1, 4), dtype=np.uint16)
    b = np.zeros((5, 1, 4), dtype=np.uint16)
    a[:, 0, 1], b[:, 0, 1] = [0, 7, 0, 9, 0], [3, 11, 4, 0, 0]  # only observation 1 clear in both bands
    a[:2, 0, 2], b[:2, 0, 2] = [10, 40], [100, 20]
    a[:, 0, 3], b[:, 0, 3] = [10, 30, 10, 30, 20], [10, 10, 30, 30, 20]
    result = reduce_geomedian({"a": a, "b": b}, nodata)
    got = np.stack([result["a"][0], result["b"][0]], axis=-1)
    assert np.isnan(got[0]).all()
    np.testing.assert_array_equal(got[1], [7, 11])
    assert np.linalg.norm(got[2] - [10, 100]) + np.linalg.norm(got[2] - [40, 20]) == pytest.approx(np.hypot(30, 80))
    np.testing.assert_allclose(got[3], [20, 20], atol=1e-6)


def test_geomedian_is_not_the_coordinate_wise_median():
    # three points of a triangle far from axis-aligned: the geometric median is the Fermat point
    a = np.array([0, 1000, 0], dtype=np.float32).reshape(3, 1, 1) + 1
    b = np.array([0, 0, 1000], dtype=np.float32).reshape(3, 1, 1) + 1
    result = reduce_geomedian({"a": a, "b": b}, {"a": None, "b": None})
    got = np.array([result["a"][0, 0], result["b"][0, 0]]) - 1
    # Fermat point of a right isosceles triangle with legs 1000 at the origin: on the diagonal, at
    # 1000 / (3 + sqrt(3)) along each axis (each side seen under 120 degrees)
    fermat = 1000 / (3 + np.sqrt(3))
    np.testing.assert_allclose(got, [fermat, fermat], rtol=1e-4)


# --- registry --------------------------------------------------------------------------------


def test_statistics_registry_is_the_cli_choice():
    from gridded.cli import cli, run

    (option,) = [p for p in run.params if p.name == "statistic"]
    # free text (several statistics, percentiles pNN), checked by the registry: its help names them all
    assert set(STATISTICS) == {"median", "geomedian", "geomad", "mean", "min", "max", "std", "first", "last", "best",
                               "medoid"}
    assert all(name in option.help for name in STATISTICS) and "pNN" in option.help

    def commands(group):
        for command in group.commands.values():
            yield command
            if isinstance(command, click.Group):
                yield from commands(command)

    for command in commands(cli):
        for param in command.params:
            if param.name == "statistic":
                assert param.help == option.help, command.name


@pytest.mark.parametrize("name", sorted(STATISTICS))
def test_every_reducer_has_the_one_signature(name):
    stack = np.array([[[5, 0]], [[7, 3]], [[9, 0]]], dtype=np.uint16)
    options = {"rank": np.array([[[0, 0]], [[1, 0]], [[0, 0]]], dtype=np.float32)}  # taken by `best` alone
    result = STATISTICS[name].reduce({"red": stack, "nir": stack + 1}, {"red": 0, "nir": 1}, **options)
    assert set(result) == {"red", "nir", *STATISTICS[name].extra_assets}
    assert result["red"].shape == (1, 2) and result["red"].dtype == np.float64
    # pixel 0: three collinear observations, so the medians, the mean, the medoid and the best by rank
    # give the middle one; pixel 1: one clear
    middle = {"min": 5, "first": 5, "max": 9, "last": 9, "std": np.sqrt(8 / 3)}.get(name, 7)
    one = 0 if name == "std" else 3
    np.testing.assert_allclose(result["red"][0], [middle, one], atol=1e-6)
    np.testing.assert_allclose(result["nir"][0], [middle + (name != "std"), one + (name != "std")], atol=1e-6)


# --- the fast paths: sorting networks, row blocks on threads, long series ---------------------


@pytest.mark.parametrize("n", range(1, 15))
def test_sorting_network_sorts_every_zero_one_input(n):
    # the 0-1 principle: a comparator network that sorts every 0/1 sequence sorts everything
    pairs = sorting_network(n)
    assert (pairs[:, 0] < pairs[:, 1]).all() and pairs.max(initial=0) < max(n, 1)
    inputs = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1).T.copy()  # (n, 2**n)
    for i, j in pairs:
        lo, hi = np.minimum(inputs[i], inputs[j]), np.maximum(inputs[i], inputs[j])
        inputs[i], inputs[j] = lo, hi
    assert (np.diff(inputs, axis=0) >= 0).all()


@pytest.mark.parametrize("n", [15, 31, 32, 33, 36, 64, 73, 130])
def test_sorting_network_sorts_long_series(n):
    values = np.random.default_rng(n).integers(0, 7, (n, 500))
    for i, j in sorting_network(n):
        lo, hi = np.minimum(values[i], values[j]), np.maximum(values[i], values[j])
        values[i], values[j] = lo, hi
    assert (np.diff(values, axis=0) >= 0).all()


@pytest.mark.parametrize("dtype, sentinel", [(np.uint16, 0), (np.uint16, 65535), (np.int16, -32768), (np.uint8, 255),
                                             (np.uint32, 0), (np.int32, 0), (np.float32, -9999.0),
                                             (np.float64, float("nan"))])
@pytest.mark.parametrize("t", [1, 2, 3, 36, 70, 300])  # 300: ranks past what a uint8 holds
def test_median_of_long_and_short_series_is_nanmedian(dtype, sentinel, t):
    rng = np.random.default_rng(t)
    # values that reach the dtype's largest value too: it is also what missing values sort as
    top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1e6
    stack = rng.choice(np.array([1, 2, 3, 50, top], dtype=dtype), size=(t, 9, 70))
    stack[rng.random(stack.shape) < 0.4] = sentinel
    stack[:, 0, :5] = sentinel  # all masked
    stack[:, 1, :5] = sentinel
    stack[0, 1, :5] = 7  # one clear observation
    if t > 1:
        stack[:, 2, :5] = sentinel
        stack[:2, 2, :5] = [[3], [8]]  # two clear: their mean
    got = median_of_stack(stack, sentinel, threads=2)
    np.testing.assert_array_equal(got, nanmedian_of_clear(stack, sentinel))
    assert np.isnan(got[0, :5]).all() and (got[1, :5] == 7).all()
    if t > 1:
        assert (got[2, :5] == 5.5).all()


@pytest.mark.parametrize("dtype, nodata", [(np.int16, -1), (np.uint16, 0), (np.float32, -9999.0), (np.float32, None)])
def test_median_of_plus_and_minus_infinity_is_no_value_in_any_output(dtype, nodata):
    # numpy's median of +inf and -inf is NaN: stored as nodata, as to_output stores NaN
    stack = np.array([[np.inf, 1.0], [-np.inf, 3.0]], dtype=np.float32).reshape(2, 1, 2)
    out = np.empty((1, 2), dtype=dtype)
    median_of_stack(stack, None, out=out, out_nodata=nodata)
    expected = to_output(np.array([[np.nan, 2.0]]), dtype, nodata)
    np.testing.assert_array_equal(out, expected)


def test_median_with_a_sentinel_the_dtype_cannot_hold_uses_every_value():
    stack = np.array([0, 4, 65535, 1], dtype=np.uint16).reshape(4, 1, 1)
    assert reduce_median({"b": stack}, {"b": -9999})["b"][0, 0] == 2.5
    assert reduce_median({"b": stack}, {"b": 0.5})["b"][0, 0] == 2.5


def test_median_of_more_observations_than_it_counts_is_refused_with_the_fix():
    from gridded.errors import ConfigError

    with pytest.raises(ConfigError, match=r"65536 observations .* use a shorter --period"):
        median_of_stack(np.ones((65_536, 1, 2), dtype=np.uint16), 0)


def test_median_of_an_empty_series_is_nan():
    assert np.isnan(median_of_stack(np.zeros((0, 2, 3), dtype=np.uint16), 0)).all()


@pytest.mark.parametrize("ny", [1, 2, 7, 64, 130])
@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_row_blocks_cover_every_row_once(ny, threads):
    seen = np.zeros(ny, dtype=int)
    lock = __import__("threading").Lock()

    def work(r0, r1):
        with lock:
            seen[r0:r1] += 1

    run_in_row_blocks(work, ny, threads)
    assert (seen == 1).all()


def test_row_blocks_raise_a_block_failure():
    def work(r0, r1):
        if r0 > 0:
            raise ValueError(f"block at row {r0}")

    with pytest.raises(ValueError, match="block at row"):
        run_in_row_blocks(work, 64, threads=4)


def realistic_stacks(t=36, ny=40, nx=70, seed=3):
    """uint16 (time, y, x) bands: a seasonal surface with noise, bright clouds and holes (sentinel 0)."""
    rng = np.random.default_rng(seed)
    season = 1 + 0.3 * np.sin(np.linspace(0, 2 * np.pi, t))[:, None, None]
    stacks = {}
    holes = rng.random((t, ny, nx)) < 0.45
    cloud = rng.random((t, ny, nx)) < 0.1
    for b, base in enumerate((500, 800, 700, 3000)):
        v = base * season ** (1 if b == 3 else -1) + rng.normal(0, 40, (t, ny, nx))
        v = np.where(cloud, 6000 + rng.normal(0, 300, (t, ny, nx)), v)
        v = np.clip(np.rint(v), 1, 10000).astype(np.uint16)
        v[holes] = 0
        stacks[("blue", "green", "red", "nir")[b]] = v
    for s in stacks.values():  # pixels with none, one and two clear observations
        s[:, 0, :3] = 0
        s[1:, 1, :3] = 0
        s[2:, 2, :3] = 0
    return stacks, {b: 0 for b in stacks}


def test_reducers_give_the_same_from_many_threads_at_once():
    """Dask runs several tasks' reductions at once in one process: every thread must get exactly the
    serial answer (numba's own parallel layer would abort the process here)."""
    from concurrent.futures import ThreadPoolExecutor

    cases = [realistic_stacks(t=t, seed=s) for t, s in ((36, 1), (12, 2), (5, 3), (36, 4))]
    expected = [(reduce_median(*c, threads=1), reduce_geomedian(*c, threads=1)) for c in cases]

    def run(i):
        stacks, nodata = cases[i % len(cases)]
        return reduce_median(stacks, nodata, threads=3), reduce_geomedian(stacks, nodata, threads=3)

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(run, range(12)))
    for i, (median, geomedian) in enumerate(results):
        want_median, want_geomedian = expected[i % len(cases)]
        for band in median:
            np.testing.assert_array_equal(median[band], want_median[band])
            np.testing.assert_array_equal(geomedian[band], want_geomedian[band])


def test_geomedian_of_a_long_series_is_within_the_target_of_the_optimum():
    stacks, nodata = realistic_stacks()
    result, iterations = geomedian_with_iterations(stacks, nodata, threads=2)
    bands = list(stacks)
    points, valid = as_points(stacks, nodata)
    got = result.reshape(len(bands), -1).T
    n_clear = valid.sum(axis=1)
    assert np.isnan(got[n_clear == 0]).all() and (iterations.ravel()[n_clear == 0] == 0).all()
    np.testing.assert_array_equal(got[n_clear == 1], points[n_clear == 1][valid[n_clear == 1]])
    some = n_clear > 0
    mine = objective(points[some], valid[some], got[some])
    best, _ = reference_geomedian(points[some], valid[some])
    assert np.all(mine <= best * 1.002 + 1e-9)
    assert mine.sum() <= best.sum() * (1 + 1e-6)
    assert (iterations <= 1000).all() and iterations.max() > 1


def test_geomedian_respects_the_iteration_cap_and_tolerance():
    stacks, nodata = realistic_stacks(seed=5)
    _, capped = geomedian_with_iterations(stacks, nodata, max_iterations=3)
    assert capped.max() == 3
    _, loose = geomedian_with_iterations(stacks, nodata, tolerance=1e-3)
    _, tight = geomedian_with_iterations(stacks, nodata, tolerance=1e-9)
    assert loose.sum() < tight.sum()


def test_geomedian_of_mixed_dtypes_and_float_bands_with_nan():
    stacks, nodata = realistic_stacks(t=8, ny=6, nx=9)
    as_float = {b: np.where(s == 0, np.nan, s).astype(np.float32) for b, s in stacks.items()}
    want = reduce_geomedian(stacks, nodata)
    got = reduce_geomedian(as_float, {b: None for b in stacks})
    mixed = dict(stacks, nir=stacks["nir"].astype(np.int32))
    got_mixed = reduce_geomedian(mixed, nodata)
    for b in stacks:
        np.testing.assert_allclose(got[b], want[b], rtol=1e-9)
        np.testing.assert_array_equal(got_mixed[b], want[b])


def test_geomedian_lands_exactly_on_an_optimal_data_point():
    # five copies of one point and two far away: the repeated point is the geometric median, which
    # plain Weiszfeld only approaches; the data-point test lands on it
    a = np.array([100, 100, 100, 100, 100, 900, 120], dtype=np.uint16).reshape(7, 1, 1)
    b = np.array([200, 200, 200, 200, 200, 250, 990], dtype=np.uint16).reshape(7, 1, 1)
    result = reduce_geomedian({"a": a, "b": b}, {"a": 0, "b": 0})
    assert (result["a"][0, 0], result["b"][0, 0]) == (100.0, 200.0)


def test_mads_against_numpy():
    stacks, nodata = realistic_stacks(t=20, ny=5, nx=8)
    gm = reduce_geomedian(stacks, nodata)
    mads = geomedian_mads(stacks, nodata, gm)
    assert set(mads) == set(MADS)
    points, valid = as_points(stacks, nodata)
    g = np.stack([gm[b] for b in stacks], axis=-1).reshape(-1, len(stacks))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        norms = np.linalg.norm(points, axis=-1) * np.linalg.norm(g, axis=-1)[:, None]
        cosine = 1 - (points * g[:, None]).sum(-1) / norms
        euclid = np.linalg.norm(points - g[:, None], axis=-1)
        bray = np.abs(points - g[:, None]).sum(-1) / np.abs(points + g[:, None]).sum(-1)
        for name, dist in (("smad", cosine), ("emad", euclid), ("bcmad", bray)):
            want = np.nanmedian(np.where(valid, dist, np.nan), axis=1)
            np.testing.assert_allclose(mads[name].ravel(), want, rtol=1e-9, atol=1e-12, err_msg=name)


def test_warm_kernels_loads_in_the_background():
    for name in STATISTICS:
        thread = warm_kernels(name)
        thread.join(timeout=120)
        assert not thread.is_alive()



WARM_AND_REPORT = """
import json, sys
import numpy as np
from gridded.compute._jit import count_rows, geomedian_rows, mads_rows, mask_into, median_rows
from gridded.compute.statistics import warm_kernels
for name in ("median", "geomad"):
    warm_kernels(name, 4).join()
mask = mask_into
layers = tuple(np.zeros((4, 4), np.uint16) for _ in range(4))
mask(layers, layers, np.ones(4, bool), True, np.zeros((2, 2), np.uint8), 2, 0, 0, np.ones(256, bool),
     np.zeros(4, np.uint16), np.ones(4, bool), np.zeros(4, np.uint16), np.ones(4, bool), np.empty(4, bool))
kernels = {"median": median_rows, "count": count_rows, "geomedian": geomedian_rows,
           "mads": mads_rows, "mask": mask}
json.dump({k: [sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values())] for k, f in kernels.items()},
          sys.stdout)
"""


def test_every_kernel_is_found_in_numbas_cache_by_the_next_process(tmp_path):
    # a worker process that compiled a kernel leaves it in numba's cache; the next one must load it
    # (a kernel reaching its helpers through a closure is never found, and costs seconds per process)
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [json.loads(subprocess.run([sys.executable, "-c", WARM_AND_REPORT], env=env, check=True,
                                      capture_output=True, text=True).stdout) for _ in range(2)]
    assert all(misses >= 1 for _, misses in runs[0].values())  # a fresh cache: each compiled once
    assert runs[1] == {name: [1, 0] for name in runs[0]}

# --- geomad end to end, on a held-out catalog --------------------------------------------------


def test_geomad_run_on_a_held_out_catalog_is_optimal_and_its_mads_match_numpy(tmp_path):
    # a demo catalog from a seed no other test or benchmark uses: the quarter's geomedian, read back
    # from the COGs (4,000 pixels of each cell), against the optimum of an independent Weiszfeld loop over the
    # clear observations the test reads itself (objective within 0.2 %, plus what rounding to
    # integers may add: at most |rounding| <= 0.5 x sqrt(bands) per observation); the MADs against
    # numpy's, computed about the rounded geomedian (so within what that rounding can move them)
    import rasterio
    from click.testing import CliRunner
    from expected import _dt, catalog_items, expected_layers, output_items

    from gridded.cli import cli
    from gridded.demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME, write_demo_catalog

    catalog = write_demo_catalog(tmp_path / "held-out" / "catalog", seed=977)
    bands = ["blue", "green", "red", "nir"]
    result = CliRunner().invoke(cli, [
        "-q", "run", "--source", str(catalog), "--extent", DEMO_EXTENT, "--time", DEMO_TIME, "--grid",
        str(DEMO_GRID), "--bands", ",".join(bands), "--statistic", "geomad", "--period", "P3M",
        "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    items = catalog_items(catalog)
    outputs = output_items(tmp_path / "out")
    assert len(outputs) == 6
    checked, checked_names = 0, []
    for name, item in outputs.items():
        props = item["properties"]
        assert set(item["assets"]) == {*bands, "count", "observed", "thumbnail", *MADS}
        assert props["gridded:statistic"] == "geomad" and props["gridded:geomedian"]["tolerance"] == 1e-7
        for mad in MADS:
            band = dict(item["assets"][mad]["raster:bands"][0])
            assert set(band.pop("statistics")) == {"minimum", "maximum", "mean", "stddev", "valid_percent"}
            assert band == {"data_type": "float32", "nodata": "nan", "spatial_resolution": 10.0}
        files = {k: Path(urlparse(a["href"]).path) for k, a in item["assets"].items() if k != "thumbnail"}
        read = {}
        for key, path in files.items():
            with rasterio.open(path) as src:
                read[key], transform, shape = src.read(1), src.transform, src.shape
        layers = expected_layers(items, bands, transform, shape, _dt(props["start_datetime"]),
                                 _dt(props["end_datetime"]))
        cube = np.stack([np.stack(layers[b]) for b in bands], axis=-1)  # (T, y, x, B), NaN where unclear
        t = cube.shape[0]
        points = cube.transpose(1, 2, 0, 3).reshape(-1, t, len(bands))
        valid = ~np.isnan(points).any(axis=2)
        points = np.nan_to_num(points)
        k = valid.sum(axis=1)
        np.testing.assert_array_equal(read["count"].ravel(), k, err_msg=name)
        got = np.stack([read[b].ravel() for b in bands], axis=-1).astype(np.float64)
        clear = k > 0
        assert (got[~clear] == 0).all() and all(np.isnan(read[m].ravel()[~clear]).all() for m in MADS)
        assert all(np.isfinite(read[m].ravel()[clear]).all() for m in MADS)
        # the optimum by numpy costs seconds per thousand pixels: 4,000 of each output, at random
        some = np.zeros_like(clear)
        some[np.random.default_rng(len(checked_names)).choice(np.flatnonzero(clear), 4000, replace=False)] = True
        checked_names.append(name)
        best, _ = reference_geomedian(points[some], valid[some])
        reached = objective(points[some], valid[some], got[some])
        slack = k[some] * 0.5 * np.sqrt(len(bands)) + 1e-6
        assert (reached <= best * 1.002 + slack).all(), name
        # the MADs about the rounded geomedian, by numpy
        g = got[some][:, None, :]
        x = points[some]
        with np.errstate(invalid="ignore", divide="ignore"):
            cosine = 1 - (x * g).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(g, axis=-1))
            euclid = np.linalg.norm(x - g, axis=-1)
            bray = np.abs(x - g).sum(-1) / np.abs(x + g).sum(-1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            want = {name_: np.nanmedian(np.where(valid[some], v, np.nan), axis=1)
                    for name_, v in (("smad", cosine), ("emad", euclid), ("bcmad", bray))}
        np.testing.assert_allclose(read["emad"].ravel()[some], want["emad"], atol=0.5 * np.sqrt(len(bands)) + 1e-3)
        np.testing.assert_allclose(read["smad"].ravel()[some], want["smad"], atol=2e-3)
        np.testing.assert_allclose(read["bcmad"].ravel()[some], want["bcmad"], atol=2e-3)
        checked += int(some.sum())
    assert checked == 6 * 4000
