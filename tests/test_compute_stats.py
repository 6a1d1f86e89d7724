"""The statistics beside the medians (compute/summary.py, percentile.py, mosaic.py and their registry
entries) against independent numpy: nanmean, nanmin, nanmax, nanstd, nanpercentile, a max-then-first
search, a brute-force medoid."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridded.compute.arrays import to_output
from gridded.compute.summary import reduce_max, reduce_mean, reduce_min, reduce_std

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32")
OUTPUTS = [("uint16", 0), ("uint16", 65535), ("int16", -32768), ("uint8", None), ("float32", -9999.0),
           ("float32", None)]


@st.composite
def masked_stacks(draw, bands=("red",), dtypes=DTYPES, max_t=12):
    """Per band a (time, y, x) stack of one dtype with random holes at its sentinel (NaN in a float
    stack without one), rows across a SPAN of 64 pixels, a narrow value range now and then (ties,
    equal middles), the dtype's extremes (what the sorts give missing values) and pixels with no
    clear observation."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    shape = (draw(st.integers(1, max_t)), draw(st.integers(1, 3)), draw(st.integers(1, 70)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    stacks, nodata = {}, {}
    for band in bands:
        if dtype.kind == "f":
            sentinel = draw(st.sampled_from([float("nan"), -9999.0, None]))
            top = draw(st.sampled_from([3, 1e6]))
            values = rng.uniform(-top, top, shape).astype(dtype)
            if top == 3:
                values = np.rint(values)
        else:
            info = np.iinfo(dtype)
            sentinel = draw(st.sampled_from([0, int(info.max), int(info.min), None]))
            top = draw(st.sampled_from([3, 1000, int(info.max)]))
            values = rng.integers(max(info.min, -top), min(info.max, top), shape, dtype=dtype, endpoint=True)
            values[rng.random(shape) < 0.1] = info.max  # sorts among the missing values
        holes = rng.random(shape) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
        if draw(st.booleans()):
            holes[:, 0, 0] = True  # a pixel with nothing clear
        if sentinel is not None:
            values[holes] = sentinel
        elif dtype.kind == "f":
            values[holes] = np.nan
        stacks[band], nodata[band] = values, sentinel
    return stacks, nodata


def is_clear(stack: np.ndarray, sentinel) -> np.ndarray:
    clear = ~np.isnan(stack.astype(np.float64))
    if sentinel is not None and not np.isnan(sentinel):
        clear &= stack != sentinel
    return clear


def with_nan(stack: np.ndarray, sentinel) -> np.ndarray:
    """float64 copy with NaN where the value is not clear."""
    return np.where(is_clear(stack, sentinel), stack.astype(np.float64), np.nan)


def clear_in_every_band(stacks, nodata) -> np.ndarray:
    return np.logical_and.reduce([is_clear(stacks[b], nodata[b]) for b in stacks])


def numpy_of(function, stack, sentinel, **options) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels, infinities
        return function(with_nan(stack, sentinel), axis=0, **options)


# --- mean, min, max, std ----------------------------------------------------------------------

SUMMARIES = {"mean": (reduce_mean, np.nanmean), "min": (reduce_min, np.nanmin), "max": (reduce_max, np.nanmax),
             "std": (reduce_std, np.nanstd)}


@SETTINGS
@given(masked_stacks(bands=("red", "nir")))
def test_mean_min_max_std_are_numpys(data):
    stacks, nodata = data
    for name, (reduce, function) in SUMMARIES.items():
        result = reduce(stacks, nodata)
        assert set(result) == set(stacks)
        for band, stack in stacks.items():
            got, want = result[band], numpy_of(function, stack, nodata[band])
            assert got.dtype == np.float64 and got.shape == stack.shape[1:]
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=name)
            exact = name in ("min", "max") or (name == "mean" and stack.dtype.kind != "f")
            if exact:  # comparisons, or sums of integers (exact in float64)
                np.testing.assert_array_equal(got, want, err_msg=name)
            else:
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=name)


@SETTINGS
@given(masked_stacks(bands=("red", "nir")), st.sampled_from(OUTPUTS))
def test_summaries_write_into_out_as_to_output_converts_numpys(data, output):
    stacks, nodata = data
    dtype, out_nodata = output
    for name, (reduce, function) in SUMMARIES.items():
        out = {b: np.empty(s.shape[1:], dtype=dtype) for b, s in stacks.items()}
        got = reduce(stacks, nodata, out=out, out_nodata={b: out_nodata for b in stacks})
        for band, stack in stacks.items():
            assert got[band] is out[band]
            want = to_output(numpy_of(function, stack, nodata[band]), np.dtype(dtype), out_nodata)
            np.testing.assert_array_equal(got[band], want, err_msg=f"{name} {band} {dtype}")


def test_summaries_by_hand():
    # pixels: odd count, even count, all masked, one clear value; 0 is nodata
    stack = np.array([[3, 1, 0, 0], [1, 2, 0, 7], [2, 5, 0, 0], [0, 10, 0, 0]], dtype=np.uint16)[:, None, :]
    nodata = {"b": 0}
    np.testing.assert_array_equal(reduce_mean({"b": stack}, nodata)["b"][0], [2.0, 4.5, np.nan, 7.0])
    np.testing.assert_array_equal(reduce_min({"b": stack}, nodata)["b"][0], [1, 1, np.nan, 7])
    np.testing.assert_array_equal(reduce_max({"b": stack}, nodata)["b"][0], [3, 10, np.nan, 7])
    std = reduce_std({"b": stack}, nodata)["b"][0]
    np.testing.assert_allclose(std, [np.sqrt(2 / 3), np.sqrt(12.25 + 6.25 + 0.25 + 30.25) / 2, np.nan, 0.0])
    out = np.empty((1, 4), dtype=np.uint8)
    reduce_mean({"b": stack}, nodata, out={"b": out}, out_nodata={"b": 255})
    np.testing.assert_array_equal(out[0], [2, 4, 255, 7])  # 4.5 rounds half to even


def test_extremes_of_the_dtypes_limits_and_infinities():
    # a clear value equal to what an unclear one counts as (the dtype's extremes, infinities)
    u = np.array([65535, 0, 65535], dtype=np.uint16).reshape(3, 1, 1)
    assert reduce_min({"b": u}, {"b": 0})["b"][0, 0] == 65535
    assert reduce_max({"b": u}, {"b": 65535})["b"][0, 0] == 0
    i = np.array([-32768, 5, 32767], dtype=np.int16).reshape(3, 1, 1)
    assert reduce_max({"b": i}, {"b": 5})["b"][0, 0] == 32767
    assert reduce_min({"b": i}, {"b": 5})["b"][0, 0] == -32768
    f = np.array([[np.inf, -np.inf, np.nan, 2.0], [np.inf, 1.0, np.nan, -np.inf]], dtype=np.float32)[:, None, :]
    for reduce, function in SUMMARIES.values():
        np.testing.assert_array_equal(reduce({"b": f}, {"b": None})["b"], numpy_of(function, f, None))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t", [1, 2, 3, 36, 300])
def test_summaries_of_long_and_short_series(dtype, t):
    rng = np.random.default_rng(t)
    top = np.iinfo(dtype).max if np.dtype(dtype).kind != "f" else 1e6
    stack = rng.choice(np.array([1, 2, 3, 50, top], dtype=dtype), size=(t, 5, 70))
    stack[rng.random(stack.shape) < 0.4] = 0
    stack[:, 0, :5] = 0
    for name, (reduce, function) in SUMMARIES.items():
        got = reduce({"b": stack}, {"b": 0}, threads=2)["b"]
        np.testing.assert_allclose(got, numpy_of(function, stack, 0), rtol=1e-12, atol=0, err_msg=name)
        assert np.isnan(got[0, :5]).all()


def test_summaries_of_an_empty_series_are_nan():
    for reduce, _ in SUMMARIES.values():
        assert np.isnan(reduce({"b": np.zeros((0, 2, 3), np.uint16)}, {"b": 0})["b"]).all()
