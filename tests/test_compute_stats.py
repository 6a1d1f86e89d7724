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
from gridded.compute.mosaic import (
    LAYER,
    best_layer,
    first_layer,
    medoid_layer,
    reduce_best,
    reduce_first,
    reduce_last,
    reduce_medoid,
    values_at_layer,
)
from gridded.compute.percentile import (
    percentile_name,
    percentiles_of_stack,
    reduce_percentile,
    reduce_percentiles,
)
from gridded.compute.statistics import STATISTICS, statistic_for
from gridded.compute.summary import reduce_max, reduce_mean, reduce_min, reduce_std
from gridded.errors import ConfigError

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


# --- percentiles --------------------------------------------------------------------------------

QS = st.lists(st.sampled_from([0.0, 100.0, 50.0, 2.5, 10.0, 90.0, 33.3]) | st.floats(0, 100), min_size=1,
              max_size=4).map(tuple)


@SETTINGS
@given(masked_stacks(), QS, st.sampled_from(["linear", "nearest"]))
def test_percentiles_are_numpys_to_the_bit(data, qs, method):
    (stack,), (sentinel,) = data[0].values(), data[1].values()
    got = percentiles_of_stack(stack, sentinel, qs, method=method)
    assert got.shape == (len(qs), *stack.shape[1:]) and got.dtype == np.float64
    for i, q in enumerate(qs):
        want = numpy_of(np.nanpercentile, stack, sentinel, q=q, method=method)
        np.testing.assert_array_equal(got[i], want, err_msg=f"q={q!r} {method}")


@SETTINGS
@given(masked_stacks(bands=("red", "nir")), QS, st.sampled_from(["linear", "nearest"]), st.sampled_from(OUTPUTS))
def test_percentiles_write_into_out_as_to_output_converts_numpys(data, qs, method, output):
    stacks, nodata = data
    dtype, out_nodata = output
    names = [percentile_name(q) for q in qs]
    out = {name: {b: np.empty(s.shape[1:], dtype=dtype) for b, s in stacks.items()} for name in names}
    got = reduce_percentiles(stacks, nodata, qs=qs, method=method, out=out,
                             out_nodata={b: out_nodata for b in stacks})
    assert set(got) == set(names)
    for q, name in zip(qs, names):
        single = {b: np.empty(s.shape[1:], dtype=dtype) for b, s in stacks.items()}
        reduce_percentile(stacks, nodata, q=q, method=method, out=single, out_nodata={b: out_nodata for b in stacks})
        for band, stack in stacks.items():
            assert got[name][band] is out[name][band]
            want = to_output(numpy_of(np.nanpercentile, stack, nodata[band], q=q, method=method), np.dtype(dtype),
                             out_nodata)
            np.testing.assert_array_equal(got[name][band], want, err_msg=f"{name} {band} {dtype}")
            np.testing.assert_array_equal(single[band], want, err_msg=f"{name} {band} {dtype} alone")


@SETTINGS
@given(masked_stacks(bands=("red", "nir"), dtypes=("uint8", "uint16", "int16", "uint32", "int32")),
       st.sampled_from(OUTPUTS))
def test_an_integer_bands_p50_from_the_percentiles_sort_is_its_median_to_the_bit(data, output):
    # what reduce_task relies on to take a run's medians from its percentiles' sort
    from gridded.compute.median import reduce_median

    stacks, nodata = data
    dtype, out_nodata = output
    out_nodata_ = {b: out_nodata for b in stacks}
    sorted_ = reduce_percentiles(stacks, nodata, qs=(10.0, 50.0), names=("p10", "median"),
                                 out={n: {b: np.empty(s.shape[1:], dtype=dtype) for b, s in stacks.items()}
                                      for n in ("p10", "median")}, out_nodata=out_nodata_)
    median = reduce_median(stacks, nodata, out={b: np.empty(s.shape[1:], dtype=dtype) for b, s in stacks.items()},
                           out_nodata=out_nodata_)
    for band in stacks:
        np.testing.assert_array_equal(sorted_["median"][band], median[band], err_msg=f"{band} {dtype}")
    as_floats = reduce_percentiles(stacks, nodata, qs=(50.0,))["p50"]
    for band in stacks:
        np.testing.assert_array_equal(as_floats[band], reduce_median(stacks, nodata)[band], err_msg=band)


def test_percentiles_named_otherwise_need_one_name_each():
    stack = {"red": np.ones((3, 1, 2), dtype=np.uint16)}
    assert set(reduce_percentiles(stack, {"red": 0}, qs=(10.0, 50.0), names=("p10", "median"))) == {"p10", "median"}
    with pytest.raises(ValueError, match="one name per percentile"):
        reduce_percentiles(stack, {"red": 0}, qs=(10.0, 50.0), names=("p10",))


def test_percentiles_by_hand():
    # pixels: [1, 2, 3, 4], [1, 2, 3], none clear, [7]; 0 is nodata
    stack = np.array([[4, 3, 0, 0], [1, 1, 0, 7], [3, 2, 0, 0], [2, 0, 0, 0]], dtype=np.uint16)[:, None, :]
    linear = percentiles_of_stack(stack, 0, (0, 25, 50, 90, 100))[:, 0]
    np.testing.assert_array_equal(linear, [[1, 1, np.nan, 7], [1.75, 1.5, np.nan, 7], [2.5, 2, np.nan, 7],
                                           [3.7, 2.8, np.nan, 7], [4, 3, np.nan, 7]])
    # nearest: the virtual index rounded half to even: (4 - 1) x 0.5 = 1.5 -> 2; (3 - 1) x 0.25 = 0.5 -> 0
    nearest = percentiles_of_stack(stack, 0, (25, 50, 75), method="nearest")[:, 0]
    np.testing.assert_array_equal(nearest, [[2, 1, np.nan, 7], [3, 2, np.nan, 7], [3, 3, np.nan, 7]])


def test_percentiles_of_infinities_are_numpys_nan_and_all():
    # numpy interpolates with _lerp, which gives NaN next to an infinity at gamma 0 and from the last
    # value taken twice when it is infinite: the linear method keeps that, nearest takes values
    f = np.array([[np.inf, -np.inf, 1.0, 1.0, np.inf], [1.0, 2.0, np.inf, np.nan, np.inf],
                  [2.0, 3.0, np.inf, np.nan, -np.inf]], dtype=np.float32)[:, None, :]
    for method in ("linear", "nearest"):
        got = percentiles_of_stack(f, None, (0, 25, 50, 100), method=method)
        for i, q in enumerate((0, 25, 50, 100)):
            np.testing.assert_array_equal(got[i], numpy_of(np.nanpercentile, f, None, q=q, method=method))
        out = np.empty((4, 1, 5), dtype=np.int16)
        percentiles_of_stack(f, None, (0, 25, 50, 100), method=method, out=out, out_nodata=-1)
        np.testing.assert_array_equal(out, to_output(got, np.int16, -1))


@pytest.mark.parametrize("dtype, sentinel", [(np.uint16, 0), (np.uint16, 65535), (np.int16, -32768), (np.uint8, 255),
                                             (np.uint32, 0), (np.int32, 0), (np.float32, -9999.0),
                                             (np.float64, float("nan"))])
@pytest.mark.parametrize("t", [1, 2, 3, 36, 70, 300])  # 300: ranks past what a uint8 holds
def test_percentiles_of_long_and_short_series(dtype, sentinel, t):
    rng = np.random.default_rng(t)
    top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1e6
    stack = rng.choice(np.array([1, 2, 3, 50, top], dtype=dtype), size=(t, 4, 70))
    stack[rng.random(stack.shape) < 0.4] = sentinel
    stack[:, 0, :5] = sentinel
    stack[:, 1, :5] = sentinel
    stack[0, 1, :5] = 7  # one clear observation: every percentile is it
    qs = (0, 10, 50, 90, 100)
    for method in ("linear", "nearest"):
        got = percentiles_of_stack(stack, sentinel, qs, method=method, threads=2)
        for i, q in enumerate(qs):
            np.testing.assert_array_equal(got[i], numpy_of(np.nanpercentile, stack, sentinel, q=q, method=method))
        assert np.isnan(got[:, 0, :5]).all() and (got[:, 1, :5] == 7).all()


def test_percentiles_of_the_most_observations_counted_and_one_more():
    t = 65_535
    stack = (np.arange(t, dtype=np.uint32) % 1000 + 1).astype(np.uint16).reshape(t, 1, 1).repeat(2, axis=2)
    stack[::3, 0, 1] = 0
    got = percentiles_of_stack(stack, 0, (10, 90))
    for i, q in enumerate((10, 90)):
        np.testing.assert_array_equal(got[i], numpy_of(np.nanpercentile, stack, 0, q=q))
    with pytest.raises(ConfigError, match=r"65536 observations .* use a shorter --period"):
        percentiles_of_stack(np.ones((65_536, 1, 1), dtype=np.uint16), 0, (50,))


def test_percentiles_of_an_empty_series_are_nan_and_bad_options_are_refused():
    assert np.isnan(percentiles_of_stack(np.zeros((0, 2, 3), np.uint16), 0, (10, 90))).all()
    with pytest.raises(ConfigError, match="percentile method 'lower': unknown; use one of linear, nearest"):
        percentiles_of_stack(np.ones((3, 1, 1), np.uint16), 0, (50,), method="lower")
    with pytest.raises(ConfigError, match="percentile 101: outside 0-100"):
        percentiles_of_stack(np.ones((3, 1, 1), np.uint16), 0, (101,))


# --- the registry: fixed names and pNN -----------------------------------------------------------


@pytest.mark.parametrize("name, canonical, q", [("p90", "p90", 90.0), ("p2.5", "p2.5", 2.5), ("p0", "p0", 0.0),
                                                ("p100", "p100", 100.0), ("p90.0", "p90", 90.0),
                                                ("p050", "p50", 50.0), ("p99.99", "p99.99", 99.99)])
def test_statistic_for_a_percentile(name, canonical, q):
    statistic = statistic_for(name)
    assert (statistic.name, statistic.q, statistic.extra_assets, statistic.iterative) == (canonical, q, (), False)
    stack = np.array([4, 1, 0, 3, 2], dtype=np.uint16).reshape(5, 1, 1)
    got = statistic.reduce({"b": stack}, {"b": 0})["b"][0, 0]
    assert got == np.nanpercentile([4.0, 1.0, 3.0, 2.0], q)


@pytest.mark.parametrize("name, message", [
    ("p101", "--statistic p101: percentile outside 0-100; use p0 to p100, e.g. p90"),
    ("p100.5", "--statistic p100.5: percentile outside 0-100; use p0 to p100, e.g. p90"),
    ("p-5", "--statistic p-5: percentile outside 0-100; use p0 to p100, e.g. p90"),
    ("p", ("--statistic p: unknown statistic; use one of median, geomedian, geomad, mean, min, max, std, first, "
           "last, best, medoid or a percentile p0 to p100, e.g. p90")),
    ("P90", "--statistic P90: unknown statistic; use one of"),
    ("p9O", "--statistic p9O: unknown statistic; use one of"),
    ("mode", "--statistic mode: unknown statistic; use one of"),
])
def test_statistic_for_an_unknown_name_or_percentile_says_the_fix(name, message):
    with pytest.raises(ConfigError) as err:
        statistic_for(name)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_statistic_for_the_fixed_names_is_the_registry():
    for name, statistic in STATISTICS.items():
        assert statistic_for(name) is statistic
    assert {n for n, s in STATISTICS.items() if s.extra_assets == (LAYER,)} == {"first", "last", "best", "medoid"}
    assert [n for n, s in STATISTICS.items() if s.ranked] == ["best"]
    assert all(s.q is None for s in STATISTICS.values())


# --- first, last, best, medoid ------------------------------------------------------------------


def check_values_at(result: dict, stacks: dict, layer: np.ndarray) -> None:
    """Every band of result is its stack's value at `layer` (NaN at -1), and result[LAYER] is layer."""
    np.testing.assert_array_equal(result[LAYER], layer)
    assert result[LAYER].dtype == np.int32
    for band, stack in stacks.items():
        taken = np.take_along_axis(stack, np.maximum(layer, 0)[None], axis=0)[0].astype(np.float64)
        np.testing.assert_array_equal(result[band], np.where(layer >= 0, taken, np.nan), err_msg=band)


@SETTINGS
@given(masked_stacks(bands=("blue", "red", "nir")))
def test_first_and_last_take_every_band_from_one_observation_clear_in_all(data):
    stacks, nodata = data
    clear = clear_in_every_band(stacks, nodata)
    t = clear.shape[0]
    some = clear.any(axis=0)
    first = np.where(some, np.argmax(clear, axis=0), -1)
    last = np.where(some, t - 1 - np.argmax(clear[::-1], axis=0), -1)
    check_values_at(reduce_first(stacks, nodata), stacks, first)
    check_values_at(reduce_last(stacks, nodata), stacks, last)


def best_by_search(clear: np.ndarray, rank: np.ndarray, maximize: bool) -> np.ndarray:
    """Per pixel: the usable layers, the best rank among them, the first layer having it."""
    _, ny, nx = clear.shape
    layer = np.full((ny, nx), -1)
    for y in range(ny):
        for x in range(nx):
            usable = np.flatnonzero(clear[:, y, x] & ~np.isnan(rank[:, y, x]))
            if usable.size:
                ranks = rank[usable, y, x]
                target = ranks.max() if maximize else ranks.min()
                layer[y, x] = usable[np.flatnonzero(ranks == target)[0]]
    return layer


@SETTINGS
@given(masked_stacks(bands=("red", "nir")), st.integers(0, 2**32 - 1), st.booleans())
def test_best_is_the_first_of_the_best_ranked_usable_observations(data, seed, maximize):
    stacks, nodata = data
    rng = np.random.default_rng(seed)
    shape = stacks["red"].shape
    rank = rng.choice(np.array([0, 1, 2, np.inf, -np.inf, 0.5], dtype=np.float32), size=shape)  # ties
    rank[rng.random(shape) < 0.3] = np.nan
    want = best_by_search(clear_in_every_band(stacks, nodata), rank, maximize)
    check_values_at(reduce_best(stacks, nodata, rank=rank, maximize=maximize), stacks, want)


def medoid_by_brute_force(stacks: dict, nodata: dict) -> tuple[np.ndarray, np.ndarray]:
    """(layer, its sum of distances) per pixel: the full distance matrix of the clear observations,
    each row added in time order (np.cumsum), the first least; and the sums as hdmedians adds them
    (np.sum), to check the choice is least by its definition too."""
    clear = clear_in_every_band(stacks, nodata)
    cube = np.stack([stacks[b].astype(np.float64) for b in stacks], axis=-1)  # (t, y, x, bands)
    _, ny, nx, nb = cube.shape
    layer = np.full((ny, nx), -1)
    least = np.full((ny, nx), np.nan)
    for y in range(ny):
        for x in range(nx):
            idx = np.flatnonzero(clear[:, y, x])
            if not idx.size:
                continue
            p = cube[idx, y, x]
            squares = np.zeros((idx.size, idx.size))
            for b in range(nb):
                squares += (p[:, None, b] - p[None, :, b]) ** 2
            dist = np.sqrt(squares)
            sums = np.cumsum(dist, axis=1)[:, -1]
            layer[y, x] = idx[np.argmin(sums)]
            least[y, x] = np.sum(dist, axis=1).min()
    return layer, least


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(masked_stacks(bands=("blue", "red", "nir"), dtypes=("uint16", "int16", "float32")))
def test_medoid_is_the_brute_force_medoid(data):
    stacks, nodata = data
    want, least = medoid_by_brute_force(stacks, nodata)
    result = reduce_medoid(stacks, nodata)
    check_values_at(result, stacks, want)
    # and least by hdmedians' own sums (added in another order), to rounding
    cube = np.stack([stacks[b].astype(np.float64) for b in stacks], axis=-1)
    clear = clear_in_every_band(stacks, nodata)
    for y, x in zip(*np.nonzero(want >= 0)):
        p = cube[clear[:, y, x], y, x]
        chosen = cube[want[y, x], y, x]
        assert np.linalg.norm(p - chosen, axis=1).sum() <= least[y, x] * (1 + 1e-12)


def test_medoid_by_hand():
    # pixel 0: a square's corners and its centre (the centre); 1: two copies of a point and one far
    # away (the earlier copy); 2: two points (the earlier); 3: one; 4: none. 65535 is nodata (N).
    N = 65535
    a = np.array([[0, 5, 1, N, N], [10, 5, N, N, N], [0, 9, 3, N, N], [10, N, N, 4, N], [5, N, N, N, N]],
                 dtype=np.uint16)[:, None, :]
    b = np.array([[0, 5, 1, N, N], [0, 5, N, N, N], [10, 1, 7, N, N], [10, N, N, 6, N], [5, N, N, N, N]],
                 dtype=np.uint16)[:, None, :]
    result = reduce_medoid({"a": a, "b": b}, {"a": N, "b": N})
    np.testing.assert_array_equal(result[LAYER][0], [4, 0, 0, 3, -1])
    np.testing.assert_array_equal(result["a"][0], [5, 5, 1, 4, np.nan])
    np.testing.assert_array_equal(result["b"][0], [5, 5, 1, 6, np.nan])


@SETTINGS
@given(masked_stacks(bands=("red", "nir")), st.sampled_from(OUTPUTS))
def test_mosaics_write_into_out_as_to_output_converts(data, output):
    stacks, nodata = data
    dtype, out_nodata = output
    rank = np.random.default_rng(1).random(stacks["red"].shape).astype(np.float32)
    for reduce in (reduce_first, reduce_last, reduce_best, reduce_medoid):
        floats = reduce(stacks, nodata, rank=rank)
        out = {b: np.empty(s.shape[1:], dtype=dtype) for b, s in stacks.items()}
        got = reduce(stacks, nodata, rank=rank, out=out, out_nodata={b: out_nodata for b in stacks})
        np.testing.assert_array_equal(got[LAYER], floats[LAYER])
        for band in stacks:
            assert got[band] is out[band]
            np.testing.assert_array_equal(got[band], to_output(floats[band], np.dtype(dtype), out_nodata),
                                          err_msg=f"{reduce.__name__} {band} {dtype}")


def test_mosaics_of_mixed_dtypes_float_bands_and_empty_series():
    rng = np.random.default_rng(5)
    red = rng.integers(0, 4, (6, 2, 9)).astype(np.uint16)
    nir = rng.integers(0, 4, (6, 2, 9)).astype(np.int32)
    nodata = {"red": 0, "nir": 0}
    as_float = {"red": np.where(red == 0, np.nan, red).astype(np.float32),
                "nir": np.where(nir == 0, np.nan, nir).astype(np.float32)}
    rank = rng.random(red.shape).astype(np.float32)
    for reduce in (reduce_first, reduce_last, reduce_best, reduce_medoid):
        mixed = reduce({"red": red, "nir": nir}, nodata, rank=rank)
        floats = reduce(as_float, {"red": None, "nir": None}, rank=rank)
        for key in ("red", "nir", LAYER):
            np.testing.assert_array_equal(mixed[key], floats[key], err_msg=f"{reduce.__name__} {key}")
        empty = reduce({"red": red[:0], "nir": nir[:0]}, nodata, rank=rank[:0])
        assert (empty[LAYER] == -1).all() and np.isnan(empty["red"]).all()


def test_best_without_a_rank_or_with_the_wrong_shape_is_refused():
    stack = np.ones((3, 1, 2), dtype=np.uint16)
    with pytest.raises(ConfigError, match="--statistic best: no rank to choose observations by"):
        reduce_best({"b": stack}, {"b": 0})
    with pytest.raises(ValueError, match=r"rank has shape \(3, 1, 1\)"):
        best_layer({"b": stack}, {"b": 0}, np.ones((3, 1, 1), dtype=np.float32))


def test_layers_and_values_are_public_for_dates_and_other_bands():
    # a caller maps the layer to its observation's date, or takes another band at the same layer
    stack = np.array([[0, 4], [3, 0], [5, 6]], dtype=np.uint16)[:, None, :]
    stacks, nodata = {"b": stack}, {"b": 0}
    np.testing.assert_array_equal(first_layer(stacks, nodata), [[1, 0]])
    np.testing.assert_array_equal(first_layer(stacks, nodata, latest=True), [[2, 2]])
    np.testing.assert_array_equal(medoid_layer(stacks, nodata), [[1, 0]])  # two points: the earlier
    other = {"qa": np.arange(6, dtype=np.uint8).reshape(3, 1, 2)}
    np.testing.assert_array_equal(values_at_layer(other, first_layer(stacks, nodata))["qa"], [[2, 1]])


# --- threads, and numba's cache ---------------------------------------------------------------------


def test_every_new_reducer_gives_the_same_on_several_threads():
    rng = np.random.default_rng(11)
    stacks = {b: rng.integers(0, 2000, (20, 37, 130)).astype(np.uint16) for b in ("red", "nir")}
    for s in stacks.values():
        s[rng.random(s.shape) < 0.3] = 0
    nodata = {b: 0 for b in stacks}
    rank = rng.random(stacks["red"].shape).astype(np.float32)
    for name in ("mean", "min", "max", "std", "first", "last", "best", "medoid", "p10", "p90"):
        reduce = statistic_for(name).reduce
        one = reduce(stacks, nodata, rank=rank, threads=1)
        three = reduce(stacks, nodata, rank=rank, threads=3)
        for key in one:
            np.testing.assert_array_equal(one[key], three[key], err_msg=f"{name} {key}")


NEW_KERNELS = ("mean_rows", "std_rows", "extreme_rows", "percentile_rows", "first_rows", "best_rows", "medoid_rows",
               "take_rows")
HELPERS = ("store", "add_clear", "sort_span", "percentile_indexes", "clear_row")

WARM_NEW_AND_REPORT = f"""
import json, sys
from gridded.compute import _jit
from gridded.compute.statistics import warm_kernels
for name in ("mean", "min", "max", "std", "first", "last", "best", "medoid", "p90"):
    warm_kernels(name, 4).join()
json.dump({{k: [sum(getattr(_jit, k).stats.cache_hits.values()), sum(getattr(_jit, k).stats.cache_misses.values())]
           for k in {NEW_KERNELS + HELPERS!r}}}, sys.stdout)
"""


def test_every_new_kernel_is_found_in_numbas_cache_by_the_next_process(tmp_path):
    # a worker that compiled the kernels leaves them in numba's cache; the next process must load
    # every one of them (a kernel reaching a helper through a closure is compiled anew each time)
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [json.loads(subprocess.run([sys.executable, "-c", WARM_NEW_AND_REPORT], env=env, check=True,
                                      capture_output=True, text=True).stdout) for _ in range(2)]
    for name in NEW_KERNELS:
        assert runs[0][name][1] >= 1, name  # a fresh cache: compiled
        assert runs[1][name] == [runs[0][name][1], 0], name  # then every signature loaded, none compiled
    for name in HELPERS:
        assert runs[1][name][1] == 0, name  # inlined from the callers' cache, never compiled again


# --- band indices: the fused kernel against numpy's evaluation of the same expression ---------

@st.composite
def expressions(draw, depth=3):
    """Random expressions of the grammar over red and nir: numbers (zero among them, for the
    divisions by zero), every operator and every function the fused kernel computes."""
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(["red", "nir", "red", "nir", "0", "1", "0.5", "2.5", "1e-3"]))
    kind = draw(st.sampled_from(["+", "-", "*", "/", "neg", "sqrt", "abs", "min", "max", "clip"]))
    a = draw(expressions(depth - 1))
    if kind == "neg":
        return f"-({a})"
    if kind in ("sqrt", "abs"):
        return f"{kind}({a})"
    b = draw(expressions(depth - 1))
    if kind in ("min", "max"):
        return f"{kind}({a}, {b})"
    if kind == "clip":
        return f"clip({a}, {b}, {draw(expressions(depth - 1))})"
    return f"({a}) {kind} ({b})"


@SETTINGS
@given(data=masked_stacks(bands=("red", "nir"), max_t=5), text=expressions(),
       encoding=st.sampled_from([(1.0, 0.0), (1e-4, -0.1), (0.5, 3.0)]))
def test_the_fused_index_kernel_equals_numpy_evaluation(data, text, encoding):
    from gridded.compute.indices import bands_of, evaluate, index_stack, parse_expression, program_of
    from gridded.reduce import physical

    stacks, nodata = data
    tree = parse_expression(text)
    encodings = dict.fromkeys(stacks, encoding)

    def values(band):
        return physical(stacks[band], nodata[band], encodings[band])

    got = index_stack(tree, stacks, nodata, encodings, values, threads=2)
    if bands_of(tree):
        assert program_of(tree) is not None  # every function drawn here is fused
        want = evaluate(tree, {b: values(b) for b in bands_of(tree)})
    else:  # numbers only: that number everywhere
        want = np.full(stacks["red"].shape, evaluate(tree, {"red": np.zeros(1, np.float32)})[0])
    assert got.dtype == np.float32 and got.shape == stacks["red"].shape
    np.testing.assert_array_equal(got, want, err_msg=text)


def test_an_index_with_exp_or_log_or_of_bands_in_two_dtypes_is_evaluated_by_numpy():
    from gridded.compute.indices import index_stack, parse_expression, program_of
    from gridded.reduce import physical

    rng = np.random.default_rng(3)
    red = rng.integers(0, 3000, (4, 2, 33)).astype(np.uint16)
    nir = rng.integers(0, 3000, (4, 2, 33)).astype(np.int16)
    assert program_of(parse_expression("log(nir) - exp(red / 1000)")) is None
    assert program_of(parse_expression("(nir - red) / (nir + red)"))[2] == ("nir", "red")
    stacks, nodata = {"red": red, "nir": nir}, {"red": 0, "nir": 0}
    enc = {"red": (1e-4, 0.0), "nir": (1e-4, 0.0)}
    for text in ("log(nir) - exp(red / 1000)", "(nir - red) / (nir + red)"):
        tree = parse_expression(text)
        want_r, want_n = physical(red, 0, enc["red"]), physical(nir, 0, enc["nir"])
        with np.errstate(all="ignore"):
            if text.startswith("log"):
                want = (np.log(want_n) - np.exp(want_r / np.float32(1000))).astype(np.float32)
            else:
                want = np.where(want_n + want_r == 0, np.nan, (want_n - want_r) / (want_n + want_r)).astype(np.float32)
        got = index_stack(tree, stacks, nodata, enc, lambda b: physical(stacks[b], nodata[b], enc[b]))
        np.testing.assert_array_equal(got, want, err_msg=text)
