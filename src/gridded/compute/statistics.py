"""The statistics registry: one Statistic record per reducer, with what it writes besides its
bands and the options it takes. The CLI, the recipes and the workers take their choices from it.

A reducer takes, per band, a stack `(time, y, x)` in the source dtype in which every unclear or
missing value already equals that band's nodata sentinel, and returns per band a float64 `(y, x)`
array with NaN where no observation is clear (or writes the output dtype into `out`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from ..errors import ConfigError
from .geomedian import MADS, reduce_geomad, reduce_geomedian
from .masking import clear_count
from .median import reduce_median
from .mosaic import LAYER, reduce_best, reduce_first, reduce_last, reduce_medoid
from .percentile import percentile_name, reduce_percentile
from .summary import reduce_max, reduce_mean, reduce_min, reduce_std

# A reducer: (stacks, sentinels, *, threads=None, out=None, out_nodata=None, **options) -> per band
# (y, x): float64 with NaN where no observation is clear, or, given `out` (per band an array of
# the output dtype), the results written into it as to_output would convert them; plus the
# statistic's extra assets, as further float64 layers (the mosaics' `layer`: int32, -1 where none).
Reducer = Callable[..., dict[str, np.ndarray]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Statistic:
    """A per-pixel statistic: its reducer, the assets it writes besides its bands (float, NaN where
    no observation is clear; the mosaics' `layer` is int32, -1 there), whether it iterates (takes a
    tolerance and an iteration cap), whether it takes a `rank` ((time, y, x) float32, NaN where an
    observation is not usable), and the percentile q it is, if one (so that a run of several
    percentiles can take them all from one sort with reduce_percentiles)."""

    name: str
    reduce: Reducer
    extra_assets: tuple[str, ...] = ()
    iterative: bool = False
    ranked: bool = False
    q: float | None = None


STATISTICS: dict[str, Statistic] = {s.name: s for s in (
    Statistic(name="median", reduce=reduce_median),
    Statistic(name="geomedian", reduce=reduce_geomedian, iterative=True),
    Statistic(name="geomad", reduce=reduce_geomad, extra_assets=MADS, iterative=True),
    Statistic(name="mean", reduce=reduce_mean),
    Statistic(name="min", reduce=reduce_min),
    Statistic(name="max", reduce=reduce_max),
    Statistic(name="std", reduce=reduce_std),
    Statistic(name="first", reduce=reduce_first, extra_assets=(LAYER,)),
    Statistic(name="last", reduce=reduce_last, extra_assets=(LAYER,)),
    Statistic(name="best", reduce=reduce_best, extra_assets=(LAYER,), ranked=True),
    Statistic(name="medoid", reduce=reduce_medoid, extra_assets=(LAYER,)),
)}

PERCENTILE = re.compile(r"p(-?[0-9]+(?:\.[0-9]+)?)")


def statistic_for(name: str) -> Statistic:
    """The statistic of a name: one of STATISTICS, or a percentile pNN (p0 to p100, decimals allowed:
    p2.5), named as percentile_name writes it (p90.0 is p90)."""
    if name in STATISTICS:
        return STATISTICS[name]
    match = PERCENTILE.fullmatch(name)
    if match is None:
        raise ConfigError(f"--statistic {name}: unknown statistic; use one of {', '.join(STATISTICS)} "
                          f"or a percentile p0 to p100, e.g. p90")
    q = float(match[1])
    if not 0 <= q <= 100:
        raise ConfigError(f"--statistic {name}: percentile outside 0-100; use p0 to p100, e.g. p90")
    return Statistic(name=percentile_name(q), reduce=partial(reduce_percentile, q=q), q=q)


def warm_kernels(statistic: str, n_bands: int = 1) -> threading.Thread:
    """Load the kernels a task of `n_bands` uint16 bands uses (from numba's cache, or compile them)
    on a background thread: about half a second a worker process otherwise spends in its first
    tile's reduction, which this overlaps with the first tiles' reads. Returns the (daemon) thread."""
    def warm() -> None:
        names = [f"b{i}" for i in range(max(1, n_bands))]
        tiny = {b: np.zeros((2, 1, 1), dtype=np.uint16) for b in names}
        zeros = {b: 0 for b in names}
        out = {b: np.empty((1, 1), dtype=np.uint16) for b in names}
        rank = np.zeros((2, 1, 1), dtype=np.float32)
        statistic_for(statistic).reduce(tiny, zeros, threads=1, out=out, out_nodata=zeros, rank=rank)
        clear_count(tiny, zeros, threads=1)

    thread = threading.Thread(target=warm, name="gridded-warm-kernels", daemon=True)
    thread.start()
    return thread
