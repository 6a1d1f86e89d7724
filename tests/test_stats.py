"""stats.py: reducers against plain numpy (np.nanmedian) and a short Weiszfeld loop written here."""

from __future__ import annotations

import warnings

import click
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gridded.stats import STATISTICS, clear_count, reduce_geomedian, reduce_median, to_output

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
    assert isinstance(option.type, click.Choice)
    assert set(option.type.choices) == set(STATISTICS) == {"median", "geomedian"}

    def commands(group):
        for command in group.commands.values():
            yield command
            if isinstance(command, click.Group):
                yield from commands(command)

    for command in commands(cli):
        for param in command.params:
            if param.name == "statistic":
                assert set(param.type.choices) == set(STATISTICS), command.name


@pytest.mark.parametrize("name", sorted(STATISTICS))
def test_every_reducer_has_the_one_signature(name):
    stack = np.array([[[5, 0]], [[7, 3]], [[9, 0]]], dtype=np.uint16)
    result = STATISTICS[name]({"red": stack, "nir": stack + 1}, {"red": 0, "nir": 1})
    assert set(result) == {"red", "nir"}
    assert result["red"].shape == (1, 2) and result["red"].dtype == np.float64
    # pixel 0: three collinear observations, so both statistics give the middle one; pixel 1: one clear
    np.testing.assert_allclose(result["red"][0], [7, 3], atol=1e-6)
    np.testing.assert_allclose(result["nir"][0], [8, 4], atol=1e-6)
