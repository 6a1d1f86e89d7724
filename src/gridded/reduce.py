"""A task's stacks -> every array it writes: each statistic of each band and index (several
statistics from one read: the first named plainly, the others `{band}_{statistic}`), the mosaics'
dates, and the clear and observed counts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from .compute.indices import index_stack, parse_expression
from .compute.masking import clear_count
from .compute.mosaic import LAYER, values_at_layer
from .compute.percentile import reduce_percentiles
from .compute.statistics import statistic_for
from .items import COUNT_ASSET, COUNT_NODATA, DATE_ASSET, DATE_NODATA, OBSERVED_ASSET, asset_key
from .load import Stacks
from .pipeline import Pipeline

INDEX_NODATA = float("nan")


@dataclass(frozen=True, slots=True, kw_only=True)
class Reduced:
    arrays: dict[str, np.ndarray]
    nodata: dict[str, float | int | None]
    properties: dict


def output_nodata(pipeline_nodata, source_nodata, dtype: np.dtype):
    if pipeline_nodata is not None:
        value = pipeline_nodata
    elif source_nodata is not None:
        value = source_nodata
    else:
        value = np.nan if np.issubdtype(dtype, np.floating) else 0
    if np.issubdtype(dtype, np.integer):
        return int(value)
    return float(value)


def output_kinds(pipeline: Pipeline, band_dtype: dict[str, np.dtype],
                 band_nodata: dict[str, float | int | None]) -> dict[str, tuple[np.dtype, float | int | None]]:
    """Per asset reduce_task makes, its (dtype, nodata), in the order it makes them (what a lazy
    composite declares before anything is read)."""
    kinds: dict[str, tuple[np.dtype, float | int | None]] = {}
    indices = [name for name, _ in pipeline.indices]
    percentiles = [s for s in pipeline.statistics if statistic_for(s).q is not None]
    ordered = percentiles + [s for s in pipeline.statistics if s not in percentiles]
    for name in ordered:
        statistic = statistic_for(name)
        for band in pipeline.reduced_bands:
            kinds[asset_key(pipeline, name, band)] = (band_dtype[band], band_nodata[band])
        if statistic.q is None and LAYER not in statistic.extra_assets:
            for extra in statistic.extra_assets:
                kinds[asset_key(pipeline, name, extra)] = (np.dtype(np.float32), float("nan"))
        for index in indices:
            kinds[asset_key(pipeline, name, index)] = (np.dtype(np.float32), INDEX_NODATA)
        if LAYER in statistic.extra_assets:
            kinds[asset_key(pipeline, name, DATE_ASSET)] = (np.dtype(np.int16), DATE_NODATA)
    kinds[COUNT_ASSET] = (np.dtype(np.uint16), COUNT_NODATA)
    kinds[OBSERVED_ASSET] = (np.dtype(np.uint16), COUNT_NODATA)
    return kinds


def reduce_task(stacks: Stacks, pipeline: Pipeline, period_start: datetime) -> Reduced:
    """Every output of a task from its stacks."""
    shape = next(iter(stacks.bands.values())).shape[1:]
    band_out = {b: np.dtype(pipeline.dtype) if pipeline.dtype else stacks.source_dtype[b] for b in pipeline.bands}
    band_nodata = {b: output_nodata(pipeline.nodata, stacks.source_nodata[b], band_out[b]) for b in pipeline.bands}
    index_stacks = _index_stacks(stacks, pipeline)
    reduced_bands = {b: stacks.bands[b] for b in pipeline.reduced_bands}  # none for an index-only product
    index_sentinels: dict[str, float | None] = {name: INDEX_NODATA for name in index_stacks}
    arrays: dict[str, np.ndarray] = {}
    nodata: dict[str, float | int | None] = {}

    def outputs(statistic: str, names, dtypes, nodatas) -> tuple[dict, dict]:
        out = {n: np.empty(shape, dtype=dtypes[n]) for n in names}
        for n in names:
            arrays[asset_key(pipeline, statistic, n)] = out[n]
            nodata[asset_key(pipeline, statistic, n)] = nodatas[n]
        return out, {n: nodatas[n] for n in names}

    index_dtype = dict.fromkeys(index_stacks, np.dtype(np.float32))
    index_nodata: dict[str, float | None] = dict.fromkeys(index_stacks, INDEX_NODATA)
    percentiles = [statistic_for(s) for s in pipeline.statistics if statistic_for(s).q is not None]
    medians_sorted = False  # the bands' medians taken from the percentiles' sort
    if percentiles:  # every percentile from one sort of each pixel's series
        qs = tuple(p.q for p in percentiles if p.q is not None)  # (all of them)
        for stacks_, sentinels, dtypes, nodatas in ((reduced_bands, stacks.sentinel, band_out, band_nodata),
                                                    (index_stacks, index_sentinels, index_dtype, index_nodata)):
            if not stacks_:
                continue
            out = {p.name: outputs(p.name, list(stacks_), dtypes, nodatas)[0] for p in percentiles}
            median = stacks_ is reduced_bands and _median_from_sort(pipeline, stacks_)
            if median:  # p50 from the same sort is the median to the bit: one sort, not two
                out[MEDIAN_Q] = outputs("median", list(stacks_), dtypes, nodatas)[0]
            reduce_percentiles(stacks_, sentinels, qs=qs + ((50.0,) if median else ()), names=tuple(out),
                               method=pipeline.percentile_method, out=out, out_nodata=nodatas)
            medians_sorted |= median
    for name in pipeline.statistics:
        statistic = statistic_for(name)
        if statistic.q is not None:
            continue
        if name == "median" and medians_sorted:
            if index_stacks:
                out, out_nodata = outputs(name, list(index_stacks), index_dtype, index_nodata)
                statistic.reduce(index_stacks, index_sentinels, out=out, out_nodata=out_nodata)
            continue
        out, out_nodata = outputs(name, pipeline.reduced_bands, band_out, band_nodata)
        options: dict[str, Any] = {"max_iterations": pipeline.max_iterations, "tolerance": pipeline.tolerance}
        if statistic.ranked:  # Pipeline refuses a ranked statistic without a --rank
            rank = pipeline.rank or ""
            options.update(rank=_rank(stacks, pipeline, index_stacks), maximize=not rank.startswith("-"))
        if LAYER in statistic.extra_assets:  # a mosaic chooses among the observations clear in every band read
            # (and takes the values of the bands it writes: none for an index-only product)
            reduced = statistic.reduce(stacks.bands, stacks.sentinel, out=out, out_nodata=out_nodata, **options)
        elif reduced_bands:
            reduced = statistic.reduce(reduced_bands, stacks.sentinel, out=out, out_nodata=out_nodata, **options)
        else:  # an index-only product: the indices alone
            reduced = {}
        if LAYER in statistic.extra_assets:  # a mosaic: every index from the chosen observation, and its date
            layer = reduced[LAYER]
            if index_stacks:
                index_out, index_out_nodata = outputs(name, list(index_stacks), index_dtype, index_nodata)
                values_at_layer(index_stacks, layer, out=index_out, out_nodata=index_out_nodata)
            key = asset_key(pipeline, name, DATE_ASSET)
            arrays[key], nodata[key] = _dates(layer, stacks.layer_times, period_start), DATE_NODATA
            continue
        for extra in statistic.extra_assets:
            key = asset_key(pipeline, name, extra)
            arrays[key], nodata[key] = reduced[extra].astype(np.float32), float("nan")
        if index_stacks:
            index_out, index_out_nodata = outputs(name, list(index_stacks), index_dtype, index_nodata)
            statistic.reduce(index_stacks, index_sentinels, out=index_out, out_nodata=index_out_nodata, **options)
    arrays[COUNT_ASSET], nodata[COUNT_ASSET] = clear_count(stacks.bands, stacks.sentinel), COUNT_NODATA
    assert stacks.observed is not None  # read_stacks counts them
    arrays[OBSERVED_ASSET], nodata[OBSERVED_ASSET] = stacks.observed, COUNT_NODATA
    place = {k: i for i, k in enumerate(output_kinds(pipeline, band_out, band_nodata))}
    arrays = {k: arrays[k] for k in sorted(arrays, key=lambda k: place.get(k, len(place)))}  # as composite declares
    properties = {}
    if any(statistic_for(s).iterative for s in pipeline.statistics):
        properties["gridded:geomedian"] = {"tolerance": pipeline.tolerance, "max_iterations": pipeline.max_iterations}
    return Reduced(arrays=arrays, nodata=nodata, properties=properties)


MEDIAN_Q = "median"  # reduce_percentiles' key of the medians it sorts for


def _median_from_sort(pipeline: Pipeline, stacks: dict[str, np.ndarray]) -> bool:
    """Whether the bands' medians are taken from the percentiles' sort: a run asking for the median
    and "linear" percentiles, of integer bands, whose middle two values numpy's interpolation at
    q = 50 averages exactly as the median does (floats could differ in the last bit)."""
    return ("median" in pipeline.statistics and pipeline.percentile_method == "linear"
            and all(np.issubdtype(s.dtype, np.integer) for s in stacks.values()))


def physical(stack: np.ndarray, sentinel, encoding: tuple[float, float]) -> np.ndarray:
    """A band's stack as float32 physical values (stored x scale + offset), NaN where unclear."""
    scale, offset = encoding
    values = stack.astype(np.float32)
    missing = np.isnan(values)
    if sentinel is not None and not (isinstance(sentinel, float) and np.isnan(sentinel)):
        missing |= stack == sentinel
    values *= np.float32(scale)
    values += np.float32(offset)
    values[missing] = np.nan
    return values


def _index_stacks(stacks: Stacks, pipeline: Pipeline) -> dict[str, np.ndarray]:
    """Per index, its (time, y, x) float32 values per observation, from the bands' physical values."""
    if not pipeline.indices:
        return {}
    cache: dict[str, np.ndarray] = {}

    def band_values(band: str) -> np.ndarray:
        if band not in cache:
            cache[band] = physical(stacks.bands[band], stacks.sentinel[band], pipeline.encoding(band))
        return cache[band]

    result = {}
    encodings = {band: pipeline.encoding(band) for band in pipeline.bands}
    for name, expression in pipeline.indices:
        tree = parse_expression(expression, where=f"--band-index {name}")
        result[name] = index_stack(tree, stacks.bands, stacks.sentinel, encodings, band_values)
    return result


def _rank(stacks: Stacks, pipeline: Pipeline, index_stacks: dict[str, np.ndarray]) -> np.ndarray:
    name = (pipeline.rank or "").lstrip("-")  # set: see reduce_task
    if name in index_stacks:
        return index_stacks[name]
    return physical(stacks.bands[name], stacks.sentinel[name], pipeline.encoding(name))


def _dates(layer: np.ndarray, times: tuple, period_start: datetime) -> np.ndarray:
    """Days since the period's start of each pixel's chosen layer (-1 where none)."""
    days = np.array([(t - period_start).total_seconds() // 86400 for t in times] or [0], dtype=np.int16)
    out = np.full(layer.shape, DATE_NODATA, dtype=np.int16)
    chosen = layer >= 0
    out[chosen] = days[layer[chosen]]
    return out
