"""How much memory a task needs at its peak, from the plan alone (no read): what `gridded plan`
says of the largest task and what `--scheduler` places tasks by.

A task holds, at once, every band's stack of its same-day observations (layers x pixels x the
source's bytes per sample), the per-layer observed flags, one scene's band and mask windows as
they are read, the float32 stacks of band indices (and the bands they are made of), every output
array, and while a COG is written, GDAL's in-memory copy of one asset and its overviews. The
kernels' own buffers are a few rows each and left out. What a worker process holds besides its
tasks (Python, numba, GDAL's block cache) is the worker's, not the task's.
"""

from __future__ import annotations

import numpy as np

from .compute.indices import bands_of, parse_expression
from .compute.statistics import statistic_for
from .pipeline import Pipeline
from .plan import Plan, PlanStream, Task, TaskShape, is_larger
from .reduce import output_kinds

# bytes per sample of a band whose items declare no data type: float32, the widest type sources
# commonly store, so that the estimate errs high (Sentinel-2 and Landsat store uint16: half that)
ASSUMED_SAMPLE_BYTES = 4
COG_COPY_FACTOR = 2  # GDAL's MEM copy of an asset (1x) plus its overviews (1/3) and compressed tiles


def sample_bytes_of(plan: Plan | PlanStream) -> dict[str, int]:
    """Per band, the bytes of one source sample: the widest data type its items declare."""
    widest: dict[str, int] = {}
    for band, _key, data_type, *_ in plan.bands_read:
        if data_type:
            try:
                size = np.dtype(data_type).itemsize
            except TypeError:
                continue
            widest[band] = max(widest.get(band, 0), size)
    return widest


def task_memory_bytes(task: Task, pipeline: Pipeline, sample_bytes: dict[str, int] | None = None) -> int:
    """An upper estimate of the task's peak memory, in bytes (see the module's docstring)."""
    return memory_bytes(task.shape_yx, task.n_layers, pipeline, sample_bytes)


def memory_bytes(shape_yx: tuple[int, int], layers: int, pipeline: Pipeline,
                 sample_bytes: dict[str, int] | None = None) -> int:
    """The peak memory of a task of `layers` observations of `shape_yx` pixels, in bytes."""
    sample = {b: (sample_bytes or {}).get(b, ASSUMED_SAMPLE_BYTES) for b in pipeline.bands}
    pixels = shape_yx[0] * shape_yx[1]
    layers = max(1, layers)
    per_sample = sum(sample.values())
    stacks = layers * pixels * per_sample
    observed = layers * pixels  # bool per layer
    reading = pixels * (per_sample + 1 + len(pipeline.bands))  # one scene's windows, its mask, validity flags
    floats = _float_stacks(pipeline)
    percentiles = sum(statistic_for(s).q is not None for s in pipeline.statistics)
    band_dtype = {b: np.dtype(pipeline.dtype) if pipeline.dtype else np.dtype(f"u{sample[b]}")
                  for b in pipeline.bands}
    kinds = output_kinds(pipeline, band_dtype, dict.fromkeys(pipeline.bands))
    outputs = pixels * sum(dtype.itemsize for dtype, _ in kinds.values())
    # per band or index, a reducer's float64 plane (a geomedian's estimate) or the percentiles' layers
    reducing = pixels * len(pipeline.layers) * max(8, 4 * percentiles)
    writing = COG_COPY_FACTOR * pixels * max(dtype.itemsize for dtype, _ in kinds.values())
    return stacks + observed + reading + int(layers * pixels * 4 * floats) + outputs + reducing + writing


def _float_stacks(pipeline: Pipeline) -> float:
    """How many float32 stacks of a task's layers the indices (and a ranking band) add: per index
    its values, and for one numpy evaluates (not the fused kernel) two intermediates of its
    expression and per band it reads its physical values and two boolean layers (where it is
    missing); a ranking band's physical values likewise."""
    from .compute.indices import fused

    stacks, bands = 0.0, set()
    for name, expression in pipeline.indices:
        tree = parse_expression(expression, where=f"--band-index {name}")
        if fused(tree):
            stacks += 1
        else:
            stacks += 3
            bands |= set(bands_of(tree))
    ranked = any(statistic_for(s).ranked for s in pipeline.statistics)
    rank = (pipeline.rank or "").lstrip("-")
    if ranked and rank in pipeline.bands:
        bands.add(rank)
    return stacks + 1.5 * len(bands)


def largest_task(plan: Plan | PlanStream) -> tuple[TaskShape | None, int]:
    """(the task of a plan needing the most memory, its bytes); (None, 0) for no task. Of a
    PlanStream, once iterated (its batches or its rows: there its layers are counted, not made)."""
    sample_bytes = sample_bytes_of(plan)
    if isinstance(plan, PlanStream):
        shape = plan.largest
    else:
        shape = None
        for t in plan.tasks:
            seen = TaskShape(t.key, t.period.label, t.shape_yx, t.n_layers)
            if is_larger(seen, shape):
                shape = seen
    if shape is None:
        return None, 0
    return shape, memory_bytes(shape.shape_yx, shape.layers, plan.pipeline, sample_bytes)


def describe_bytes(n: int | float) -> str:
    """Bytes as a person reads them: 1.3 GiB, 18 MiB, 512 KiB."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} B"
