"""The statistics registry: one Statistic record per reducer, with what it writes besides its
bands and the options it takes. The CLI, the recipes and the workers take their choices from it.

A reducer takes, per band, a stack `(time, y, x)` in the source dtype in which every unclear or
missing value already equals that band's nodata sentinel, and returns per band a float64 `(y, x)`
array with NaN where no observation is clear (or writes the output dtype into `out`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .geomedian import MADS, reduce_geomad, reduce_geomedian
from .masking import clear_count
from .median import reduce_median

# A reducer: (stacks, sentinels, *, threads=None, out=None, out_nodata=None, **options) -> per band
# (y, x): float64 with NaN where no observation is clear, or, given `out` (per band an array of
# the output dtype), the results written into it as to_output would convert them; plus the
# statistic's extra assets, as further float64 layers.
Reducer = Callable[..., dict[str, np.ndarray]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Statistic:
    """A per-pixel statistic: its reducer, the float assets it writes besides its bands (NaN where
    no observation is clear), and whether it iterates (takes a tolerance and an iteration cap)."""

    name: str
    reduce: Reducer
    extra_assets: tuple[str, ...] = ()
    iterative: bool = False


STATISTICS: dict[str, Statistic] = {s.name: s for s in (
    Statistic(name="median", reduce=reduce_median),
    Statistic(name="geomedian", reduce=reduce_geomedian, iterative=True),
    Statistic(name="geomad", reduce=reduce_geomad, extra_assets=MADS, iterative=True),
)}


def warm_kernels(statistic: str, n_bands: int = 1) -> threading.Thread:
    """Load the kernels a task of `n_bands` uint16 bands uses (from numba's cache, or compile them)
    on a background thread: about half a second a worker process otherwise spends in its first
    tile's reduction, which this overlaps with the first tiles' reads. Returns the (daemon) thread."""
    def warm() -> None:
        names = [f"b{i}" for i in range(max(1, n_bands))]
        tiny = {b: np.zeros((2, 1, 1), dtype=np.uint16) for b in names}
        zeros = {b: 0 for b in names}
        out = {b: np.empty((1, 1), dtype=np.uint16) for b in names}
        STATISTICS[statistic].reduce(tiny, zeros, threads=1, out=out, out_nodata=zeros)
        clear_count(tiny, zeros, threads=1)

    thread = threading.Thread(target=warm, name="gridded-warm-kernels", daemon=True)
    thread.start()
    return thread
