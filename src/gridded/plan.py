"""A selection -> the items it needs (source or index) -> grid cells x periods x items -> tasks in batches.

The plan is built block by block: a run of cells, one query of the index (or of the items read
from a source) for the block's bbox returning planning columns only (candidates.py), the block's
tasks, its batches; so a continent against millions of items needs the memory of a block, and
`PlanStream` hands the batches on as they are made (to the cells artifact, to a table).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import os
import pickle
import signal
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pystac
import shapely
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry

from ._pickling import by_fields
from .candidates import GEOMETRY, Candidate, candidate_of_item, drop_superseded
from .errors import ConfigError, GriddedError, Interrupted
from .grid import Grid, cell_outline_lonlat, cells_for_extent, outlines_lonlat
from .io.access import SourceAccess
from .masks import MaskRule
from .period import Period, TimeRange, periods_for
from .pipeline import Pipeline
from .selection import Selection, local_roots

if TYPE_CHECKING:
    from .index import Index
    from .process import TaskState

log = logging.getLogger(__name__)

MAX_MAP_FOOTPRINTS = 5000  # a plan keeps its items' footprints for a map up to this many


@by_fields
@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """One source item as a worker needs it: hrefs per band (and mask), no open handles."""

    item_id: str
    time: datetime
    platform: str
    updated: str
    solar_day: str
    hrefs: tuple[tuple[str, str], ...]  # (band or mask asset key, absolute href)
    self_href: str | None = None
    mask: MaskRule | None = None  # the clear rule of this item (a catalog may mix sensors)
    encodings: tuple[tuple[str, float, float], ...] = ()  # per band (scale, offset) of its stored values

    def href(self, band: str) -> str:
        return dict(self.hrefs)[band]

    def encoding(self, band: str) -> tuple[float, float]:
        return next(((s, o) for b, s, o in self.encodings if b == band), (1.0, 0.0))


@by_fields
@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    """One cell and one period with the observations to read: what a worker computes."""

    key: tuple[int, int]
    crs: str
    transform: tuple[float, float, float, float, float, float]
    shape_yx: tuple[int, int]
    period: Period
    observations: tuple[Observation, ...]

    @property
    def geobox(self) -> GeoBox:
        return GeoBox(self.shape_yx, Affine(*self.transform), self.crs)

    @property
    def n_layers(self) -> int:
        """Its layers: the observations once same-day scenes of a platform are mosaicked (load.py)."""
        return len({(o.platform, o.solar_day) for o in self.observations})

    def fingerprint(self, pipeline: Pipeline) -> str:
        """SHA-256 of the input item ids and `updated` times, the pipeline's parameters and the cell's grid."""
        doc = {
            "inputs": sorted([o.item_id, o.updated] for o in self.observations),
            "pipeline": pipeline.parameters(),
            "cell": list(self.key),
            # the cell's place on the grid too: another grid may number its cells alike
            "grid": [self.crs, list(self.transform), list(self.shape_yx)],
            "period": [self.period.start.isoformat(), self.period.end.isoformat()],
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


_ROW_FIELDS = tuple(name for name in Observation.__slots__ if name != "time")
_ROW = attrgetter(*_ROW_FIELDS)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


CELL_ZLIB_LEVEL = 1
MAX_TABLE_ROWS = 2048  # observations in one table: what reading one batch may inflate besides its own
MAX_TABLE_CELLS = 64


class CellRows(NamedTuple):
    """A cell's tasks as the cells artifact stores them, made by whichever process plans the cell
    (so pickling and compressing are parallel too). Neighbouring cells share most of their items,
    so a group of them shares one `table` (the same bytes object): its observations once each, as
    plain tuples that pickle at C speed, rows of their field values but time and the times apart
    as integer microseconds since 1970 UTC. `blob` holds the cell's tasks: (key, crs, transform,
    shape, period, start, stop) each, and the table rows of their observations, refs[start:stop].
    Beside them what the plan's totals and memory estimate need (per task its period label and
    layers)."""

    table: bytes
    blob: bytes
    n_observations: int
    tasks: tuple[tuple[str, int], ...]


def encode_cells(cells: list[list[Task]]) -> list[CellRows]:
    """Consecutive cells' tasks (each cell's non-empty) as CellRows, in order: a table per group of
    at most MAX_TABLE_CELLS cells, closed before it would pass MAX_TABLE_ROWS observations."""
    out: list[CellRows] = []
    group: list[tuple] = []
    index: dict[int, int] = {}  # id of an observation (alive in `cells` meanwhile) -> its table row
    rows: list = []
    times: list[int] = []

    def close() -> None:
        table = zlib.compress(pickle.dumps((tuple(rows), times), protocol=5), CELL_ZLIB_LEVEL)
        out.extend(CellRows(table, zlib.compress(pickle.dumps((heads, refs), protocol=5), CELL_ZLIB_LEVEL),
                            len(refs), shapes) for heads, refs, shapes in group)

    for tasks in cells:
        new = {id(o): o for t in tasks for o in t.observations if id(o) not in index}
        if group and (len(group) == MAX_TABLE_CELLS or len(rows) + len(new) > MAX_TABLE_ROWS):
            close()
            group, rows, times = [], [], []
            index.clear()
            new = {id(o): o for t in tasks for o in t.observations}
        index.update(zip(new, range(len(rows), len(rows) + len(new))))
        rows.extend(map(_ROW, new.values()))
        times.extend((o.time - _EPOCH) // _MICROSECOND for o in new.values())
        heads: list[tuple] = []
        refs: list[int] = []
        for t in tasks:
            start = len(refs)
            refs.extend(index[id(o)] for o in t.observations)
            heads.append((t.key, t.crs, t.transform, t.shape_yx, t.period, start, len(refs)))
        group.append((tuple(heads), refs, tuple((t.period.label, t.n_layers) for t in tasks)))
    if group:
        close()
    return out


def observation_of_row(row, us: int) -> Observation:
    """The Observation a table row and its time (`encode_cells`) stand for."""
    return Observation(**dict(zip(_ROW_FIELDS, row, strict=True)), time=_EPOCH + timedelta(microseconds=us))


def tasks_of_cell(heads, refs, observation_at) -> list[Task]:
    """The Tasks of a cell's blob, `observation_at(i)` giving its table's observation i."""
    return [Task(key=tuple(key), crs=crs, transform=tuple(transform), shape_yx=tuple(shape_yx), period=period,
                 observations=tuple(map(observation_at, refs[start:stop])))
            for key, crs, transform, shape_yx, period, start, stop in heads]


class TaskShape(NamedTuple):
    """What a task's memory depends on (gridded.sizing), known without its observations."""

    key: tuple[int, int]
    period: str  # its label
    shape_yx: tuple[int, int]
    layers: int


def is_larger(shape: TaskShape, than: TaskShape | None) -> bool:
    """Whether `shape` holds more pixels x layers (then more pixels) than `than`."""
    if than is None:
        return True
    area, other = shape.shape_yx[0] * shape.shape_yx[1], than.shape_yx[0] * than.shape_yx[1]
    return (area * shape.layers, area) > (other * than.layers, other)


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """At most --tiles-per-worker cells (all their periods), processed by one worker."""

    id: int
    tasks: tuple[Task, ...]

    @property
    def cells(self) -> list[tuple[int, int]]:
        return sorted({t.key for t in self.tasks})


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    pipeline: Pipeline
    grid: Grid
    batches: tuple[Batch, ...]
    n_cells_in_extent: int
    n_items: int
    empty_cells: tuple[tuple[int, int], ...] = field(default=())
    # what is read for each band: (band, asset key, data type, scale, offset, items), one row per way
    bands_read: tuple[tuple[str, str, str | None, float, float, int], ...] = ()
    extent: Geometry | None = None  # the lon/lat extent asked for
    access: SourceAccess = field(default_factory=SourceAccess)  # how workers reach the sources
    footprints: tuple = ()  # the items' lon/lat footprints (shapely), for a map; none for a large plan

    @property
    def tasks(self) -> list[Task]:
        return [t for b in self.batches for t in b.tasks]

    def status(self, output: str) -> dict[tuple[tuple[int, int], str], TaskState]:
        """Per (cell, period label) in `output`: done (item current), changed (stale) or to-do."""
        from .io.storage import open_storage
        from .process import task_states

        return task_states(self.tasks, self.pipeline, open_storage(output))

    @property
    def __geo_interface__(self) -> dict:
        """The tasks as a GeoJSON FeatureCollection in lon/lat: one feature per cell and period,
        with its batch and observation count (what `gridded plan` lists)."""
        features = []
        for batch in self.batches:
            for task in batch.tasks:
                outline, _ = cell_outline_lonlat(task.geobox)
                features.append({"type": "Feature", "geometry": outline, "properties": {
                    "cell": f"x{task.key[0]} y{task.key[1]}", "x": task.key[0], "y": task.key[1],
                    "period": task.period.label, "batch": batch.id, "observations": len(task.observations)}})
        return {"type": "FeatureCollection", "features": features}

    def to_geodataframe(self):
        """The tasks as a geopandas GeoDataFrame (EPSG:4326), e.g. to `.explore()` in a notebook."""
        try:
            import geopandas
        except ImportError as err:
            raise ConfigError("Plan.to_geodataframe needs geopandas; pip install geopandas") from err
        return geopandas.GeoDataFrame.from_features(self.__geo_interface__, crs="EPSG:4326")


BLOCK_SIDE = 8  # cells are planned in blocks of at least 8 x 8, one index query each
BLOCK_SPAN_M = 768_000  # and a block at least this wide (8 cells of 96 km): many scenes' widths, so
MAX_BLOCK_SIDE = 128    # that a scene is fetched for few blocks (on 19.2 km cells, 40 x 40 of them)


def block_side_for(grid: Grid) -> int:
    """Cells a side of a planning block: BLOCK_SPAN_M of the grid's metres, at least BLOCK_SIDE."""
    from pyproj import CRS

    crs = CRS.from_user_input(grid.crs)
    if not crs.is_projected or crs.axis_info[0].unit_name not in ("metre", "meter"):
        return BLOCK_SIDE
    return max(BLOCK_SIDE, min(MAX_BLOCK_SIDE, math.ceil(BLOCK_SPAN_M / max(grid.tile_size))))


class InMemoryCandidates:
    """Candidates read from a source, answering the index's two queries (see index.Index)."""

    def __init__(self, pairs):
        self.items: list[Candidate] = []
        self.layout_docs: dict[str, dict] = {}
        for candidate, layout in pairs:
            self.items.append(candidate)
            self.layout_docs.setdefault(candidate.layout, layout)
        self.items.sort(key=lambda c: (c.time, c.id))  # so every selection is in time then id order
        self.bounds = np.array([(c.minx, c.miny, c.maxx, c.maxy) for c in self.items], dtype=float).reshape(-1, 4)
        self.times = np.array([c.time[:26] for c in self.items], dtype="datetime64[us]")
        self.collections = np.array([c.collection for c in self.items], dtype=object)

    def _select(self, bbox, start, end, collections) -> list[Candidate]:
        b = self.bounds
        keep = (b[:, 2] >= bbox[0]) & (b[:, 0] <= bbox[2]) & (b[:, 3] >= bbox[1]) & (b[:, 1] <= bbox[3])
        keep &= (self.times >= _us(start)) & (self.times <= _us(end))
        if collections:
            keep &= np.isin(self.collections, list(collections))
        return [self.items[i] for i in np.flatnonzero(keep)]

    def layouts(self, *, bbox, start, end, collections=()):
        from .finder import LayoutCounts

        return LayoutCounts.of(self._select(bbox, start, end, collections), self.layout_docs)

    def candidates(self, *, bbox, start, end, collections=(), hrefs: bool = True) -> list[Candidate]:
        return self._select(bbox, start, end, collections)

    def close(self) -> None:
        pass


class CellBlocks:
    """The cells meeting an extent in square blocks of `side` x `side` (blocks, and the cells in
    them, in row order: the order of the plan's cells and batches), each block's lon/lat bbox (one
    query each) and theirs together (what a source is asked for: items covering any part of a
    cell, inside the extent or not, are that cell's inputs)."""

    def __init__(self, grid: Grid, extent, side: int | None = None):
        self.side = side = side or block_side_for(grid)
        self.cells = cells_for_extent(grid, extent)
        grouped: dict[tuple[int, int], list] = {}
        for key, gbox in self.cells:
            grouped.setdefault((key[1] // side, key[0] // side), []).append((key, gbox))
        self.blocks = [sorted(grouped[b], key=lambda kv: (kv[0][1], kv[0][0])) for b in sorted(grouped)]
        self.bboxes = [tuple(float(v) for v in shapely.total_bounds(outlines_lonlat([g for _, g in block])))
                       for block in self.blocks]
        if self.bboxes:
            b = np.array(self.bboxes)
            self.bbox = (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))
        else:
            x0, y0, x1, y1 = (float(v) for v in extent.boundingbox)
            self.bbox = (x0, y0, x1, y1)


def _us(when: datetime) -> np.datetime64:
    return np.datetime64(when.astimezone(UTC).replace(tzinfo=None), "us")


class BlockSpec(NamedTuple):
    """What planning a block needs besides the block and the source: sent once to each worker."""

    time: TimeRange
    collections: tuple[str, ...]
    resolved: dict
    local_roots: tuple[Path, ...] | None
    periods: list[Period]
    counts_only: bool
    as_rows: bool = False  # each cell's tasks as a CellRows (encode_cells)


def plan_block(source, spec: BlockSpec, block: list, bbox, want_footprints: bool) -> tuple[list, list]:
    """One block: one query of the source for its bbox, then (cell, shape, tasks or counts) for each
    of its cells in order (an empty list for a cell without data) and the footprints found."""
    from .finder import ObservationFinder

    outlines = outlines_lonlat([gbox for _, gbox in block])
    found = source.candidates(bbox=bbox, start=spec.time.start, end=spec.time.end, collections=spec.collections,
                              hrefs=not spec.counts_only)
    found = drop_superseded(found)
    footprints = list(dict.fromkeys(c[GEOMETRY] for c in found)) if want_footprints else []
    finder = ObservationFinder.of_candidates(found, spec.resolved, spec.local_roots)
    cells: list[tuple[tuple[int, int], tuple[int, int], Any]] = []
    for (key, gbox), outline in zip(block, outlines, strict=True):
        if spec.counts_only:
            cells.append((key, tuple(gbox.shape), finder.counts_for(gbox, spec.periods, outline)))
        else:
            cells.append((key, tuple(gbox.shape), finder.tasks_for(key, gbox, spec.periods, outline)))
    if spec.as_rows:  # each cell with data's tasks as a CellRows, its neighbours' items shared
        encoded = iter(encode_cells([tasks for _, _, tasks in cells if tasks]))
        cells = [(key, shape, next(encoded) if tasks else tasks) for key, shape, tasks in cells]
    return cells, footprints


PARALLEL_MIN_BLOCKS = 8  # fewer blocks are planned in the calling process: a worker takes ~1 s to start
MAX_PLAN_WORKERS = 8     # each holds its own connection and page cache (~100 MB)


def plan_workers(n_blocks: int) -> int:
    """Worker processes for planning `n_blocks` blocks from an index: one per CPU this process may
    use (cgroup quotas counted, as a pod's limit), at most MAX_PLAN_WORKERS, none for few blocks."""
    from dask.system import CPU_COUNT

    if n_blocks < PARALLEL_MIN_BLOCKS:
        return 1
    return max(1, min(CPU_COUNT, MAX_PLAN_WORKERS, n_blocks // 4))


_WORKER: dict = {}  # a planning worker's index connection and block spec


def _stop_on_sigterm():
    """SIGTERM (as Kubernetes sends it) raises Interrupted here while workers plan, so they are
    stopped and nothing half-written is left; returns what puts the previous handler back."""
    import threading

    def on_term(signum, frame):
        raise Interrupted(f"stopped by signal {signum} while planning: nothing was written; rerun it")

    if threading.current_thread() is not threading.main_thread():  # only the main thread may
        return lambda: None
    previous = signal.signal(signal.SIGTERM, on_term)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _start_block_worker(dsn: str, spec: BlockSpec, parent: int) -> None:
    from .index import open_index

    # the parent answers Ctrl-C and SIGTERM (and stops its workers); a worker dies with it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with(parent)
    _WORKER["source"], _WORKER["spec"] = open_index(dsn), spec


_PR_SET_PDEATHSIG = 1  # prctl(2)


def _die_with(parent: int) -> None:
    """On Linux, have the kernel stop this worker when the process that made it dies (SIGKILL
    included): a pool's workers otherwise wait on its queue for ever."""
    import sys

    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before that was set
        os._exit(1)


def _plan_block(block: list, bbox, want_footprints: bool) -> tuple[list, list]:
    return plan_block(_WORKER["source"], _WORKER["spec"], block, bbox, want_footprints)


def _find_layouts(bbox, start, end, collections) -> list:
    return _WORKER["source"].layouts(bbox=bbox, start=start, end=end, collections=collections)


class _Resolution(NamedTuple):
    """The recipe made concrete from the layouts of the extent's items (see resolve_layouts)."""

    pipeline: Pipeline
    resolved: dict
    bands_read: tuple
    n_items: int


class PlanStream:
    """The plan of a selection made block by block: iterate for the batches as they are made; the
    totals (`n_items`, `empty_cells`, `n_tasks`, ...) are complete once iterated; `to_plan()` keeps
    them all in a Plan. The recipe is resolved before the first batch, from the layouts of the
    items in the extent's bbox (so each artifact payload can carry it)."""

    def __init__(self, *, pipeline: Pipeline, grid: Grid, extent, time: TimeRange, tiles_per_worker: int,
                 candidates, local_roots: tuple[Path, ...] | None = None, collections: tuple[str, ...] = (),
                 access: SourceAccess | None = None, block_side: int | None = None, cells: CellBlocks | None = None,
                 workers: int | None = 1):
        if tiles_per_worker < 1:
            raise ConfigError(f"--tiles-per-worker {tiles_per_worker}: must be at least 1")
        self.grid, self.extent, self.time, self.tiles_per_worker = grid, extent, time, tiles_per_worker
        self.source, self.local_roots, self.collections = candidates, local_roots, collections
        self.access = access or SourceAccess()
        wanted = block_side or block_side_for(grid)
        self.layout = cells if cells is not None and cells.side == wanted else CellBlocks(grid, extent, wanted)
        self.cells, self.blocks = self.layout.cells, self.layout.blocks
        self.asked = pipeline  # the recipe as given; `pipeline` is it resolved from the items' layouts
        self.periods = periods_for(time, pipeline.period)
        self.empty_cells: list[tuple[int, int]] = []
        self.n_batches = self.n_tasks = self.n_observations = 0
        self.footprints: dict[bytes, None] = {}
        self.largest: TaskShape | None = None  # of the tasks so far, for the summary's memory estimate
        self.workers = workers  # processes planning an index's blocks; None: one per CPU for many blocks
        self._resolution: _Resolution | None = None
        if self._planning_workers() <= 1:  # else a worker asks the index while the others plan blocks
            self._resolved()

    def _resolve(self, layouts) -> _Resolution:
        from .finder import resolve_layouts

        self._resolution = _Resolution(*resolve_layouts(self.asked, layouts), sum(lc.count for lc in layouts))
        return self._resolution

    def _resolved(self) -> _Resolution:
        if self._resolution is None:  # not asked of a planning worker (yet): the index answers here
            return self._resolve(self.source.layouts(bbox=self.layout.bbox, start=self.time.start,
                                                     end=self.time.end, collections=self.collections))
        return self._resolution

    @property
    def pipeline(self) -> Pipeline:
        return self._resolved().pipeline

    @property
    def resolved(self) -> dict:
        return self._resolved().resolved

    @property
    def bands_read(self) -> tuple:
        return self._resolved().bands_read

    @property
    def n_items(self) -> int:
        return self._resolved().n_items

    def _each_layout(self) -> dict:
        """Every layout of the index resolved against the recipe (those that cannot be are left out:
        the layouts of the extent's items decide whether that is an error)."""
        from .finder import resolve_layout

        resolved = {}
        for digest, layout in self.source.layout_docs().items():
            try:
                resolved[digest] = resolve_layout(layout, self.asked, "")
            except ConfigError:
                continue
        return resolved

    def _planning_workers(self) -> int:
        if getattr(self.source, "dsn", None) is None:
            return 1
        n = len(self.blocks)
        return plan_workers(n) if self.workers is None else min(self.workers, n)

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> PlanStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _cells(self, counts_only: bool, as_rows: bool = False) -> Iterator[tuple[tuple[int, int], tuple[int, int],
                                                                                Any]]:
        """(cell, its shape, its tasks) for each cell with data, in plan order; with `counts_only`
        its (period, number of observations, of layers) instead, no observation made; `as_rows`:
        a CellRows."""
        self.empty_cells, self.footprints = [], {}
        self.n_batches = self.n_tasks = self.n_observations = 0
        self.largest = None
        for cells, footprints in self._blocks_planned(counts_only, as_rows):
            if len(self.footprints) <= MAX_MAP_FOOTPRINTS:
                self.footprints.update(dict.fromkeys(footprints))
            for key, shape_yx, found_tasks in cells:
                if found_tasks:
                    yield key, shape_yx, found_tasks
                else:
                    self.empty_cells.append(key)

    def _blocks_planned(self, counts_only: bool, as_rows: bool) -> Iterator[tuple[list, list]]:
        """Each block's (cells, footprints) in block order, planned here or, for an index of many
        blocks, by worker processes of their own (each with its own connection): a few blocks in
        flight at once, so the memory is that of a few blocks whatever the plan's size."""
        jobs = list(zip(self.blocks, self.layout.bboxes))
        workers = self._planning_workers()
        if workers <= 1:
            spec = BlockSpec(self.time, self.collections, self.resolved, self.local_roots, self.periods, counts_only,
                             as_rows)
            for block, bbox in jobs:
                yield plan_block(self.source, spec, block, bbox, len(self.footprints) <= MAX_MAP_FOOTPRINTS)
            return
        import multiprocessing
        import sys
        import threading
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        # forked on Linux while this process has no other thread (as a command has when it plans): a
        # worker starts at once, the modules shared; spawned otherwise (a notebook's Dask threads, say;
        # macOS, where forking is unsafe, and Windows, which cannot)
        method = "fork" if sys.platform == "linux" and threading.active_count() == 1 else "spawn"
        # the recipe is resolved from the layouts of the items in the extent (a query over all of
        # them: seconds for a continent), asked of a worker while the others plan the first blocks,
        # which need only their own items' layouts: every layout the index holds, resolved up front
        spec = BlockSpec(self.time, self.collections, self._each_layout() if self._resolution is None else
                         self.resolved, self.local_roots, self.periods, counts_only, as_rows)
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                   initializer=_start_block_worker, initargs=(self.source.dsn, spec, os.getpid()))
        restore_sigterm = _stop_on_sigterm()
        try:
            pending: deque = deque()
            gc.freeze()  # forked at the first submit: the collector leaves the pages they share unwritten
            layouts = None if self._resolution is not None else pool.submit(
                _find_layouts, self.layout.bbox, self.time.start, self.time.end, self.collections)
            for block, bbox in jobs:
                if len(pending) == 2 * workers:
                    if layouts is not None:  # before any block's result: a layout that fails is reported
                        self._resolve(layouts.result())
                        layouts = None
                    yield pending.popleft().result()
                pending.append(pool.submit(_plan_block, block, bbox, len(self.footprints) <= MAX_MAP_FOOTPRINTS))
                gc.unfreeze()
            if layouts is not None:
                self._resolve(layouts.result())
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool as err:
            raise GriddedError(f"a planning worker process died ({err}); rerun it (with more memory if it was "
                               "killed for memory)", retryable=True) from err
        finally:
            gc.unfreeze()
            pool.shutdown(wait=True, cancel_futures=True)
            restore_sigterm()

    def __iter__(self) -> Iterator[Batch]:
        """The batches, as they are made."""
        pending: list[Task] = []
        n_pending = 0
        for _, _, tasks in self._cells(counts_only=False):
            pending.extend(tasks)
            n_pending += 1
            if n_pending == self.tiles_per_worker:
                yield self._batch(pending)
                pending, n_pending = [], 0
        if pending:
            yield self._batch(pending)

    def encoded_batches(self) -> Iterator[tuple[int, tuple[tuple[bytes, bytes], ...]]]:
        """The batches as the cells artifact stores them: (id, (table, blob) per cell: see
        CellRows), made where the cells are planned (by the planning workers, in parallel)."""
        cells: list[tuple[bytes, bytes]] = []
        for key, shape_yx, cell in self._cells(counts_only=False, as_rows=True):
            cells.append((cell.table, cell.blob))
            self.n_tasks += len(cell.tasks)
            self.n_observations += cell.n_observations
            for label, layers in cell.tasks:
                self._seen(TaskShape(key, label, shape_yx, layers))
            if len(cells) == self.tiles_per_worker:
                yield self.n_batches, tuple(cells)
                self.n_batches += 1
                cells = []
        if cells:
            yield self.n_batches, tuple(cells)
            self.n_batches += 1

    def _batch(self, tasks: list[Task]) -> Batch:
        batch = Batch(id=self.n_batches, tasks=tuple(tasks))
        self.n_batches += 1
        self.n_tasks += len(tasks)
        self.n_observations += sum(len(t.observations) for t in tasks)
        for t in tasks:
            self._seen(TaskShape(t.key, t.period.label, t.shape_yx, t.n_layers))
        return batch

    def _seen(self, shape: TaskShape) -> None:
        if is_larger(shape, self.largest):
            self.largest = shape

    def rows(self) -> Iterator[dict]:
        """One row per task, in batch order (its batch, cell, period and observation count), as
        they are planned: the observations are counted, not made, so a continent lists in seconds."""
        n_pending = 0
        for key, shape_yx, counts in self._cells(counts_only=True):
            for period, n, layers in counts:
                self.n_tasks += 1
                self.n_observations += n
                self._seen(TaskShape(key, period.label, shape_yx, layers))
                yield {"batch": self.n_batches, "cell": list(key), "period": period.label, "observations": n}
            n_pending += 1
            if n_pending == self.tiles_per_worker:
                self.n_batches += 1
                n_pending = 0
        if n_pending:
            self.n_batches += 1

    @property
    def n_cells_in_extent(self) -> int:
        return len(self.cells)

    @property
    def n_cells_with_data(self) -> int:
        return len(self.cells) - len(self.empty_cells)

    def map_footprints(self) -> tuple:
        if len(self.footprints) > MAX_MAP_FOOTPRINTS:
            return ()
        return tuple(shapely.from_wkb(list(self.footprints)))

    def to_plan(self) -> Plan:
        batches = tuple(self)
        return Plan(pipeline=self.pipeline, grid=self.grid, batches=batches, n_cells_in_extent=len(self.cells),
                    n_items=self.n_items, empty_cells=tuple(self.empty_cells), bands_read=self.bands_read,
                    extent=self.extent, access=self.access, footprints=self.map_footprints())


def make_plan(*, pipeline: Pipeline, grid: Grid, extent, time: TimeRange, items: list[pystac.Item],
              tiles_per_worker: int, local_roots: tuple[Path, ...] | None = None) -> Plan:
    """Cells x periods x items -> tasks, batched by cell. Cells with no observation are left out."""
    source = InMemoryCandidates(candidate_of_item(item) for item in items)
    return PlanStream(pipeline=pipeline, grid=grid, extent=extent, time=time, tiles_per_worker=tiles_per_worker,
                      candidates=source, local_roots=local_roots).to_plan()


def plan_stream(selection: Selection, *, workers: int | None = 1) -> PlanStream:
    """The selection's plan, to be iterated batch by batch: from the index (a query per block of
    cells) or from the items of the source (read once, kept as candidates). `workers`: processes
    planning an index's blocks (None: one per CPU when there are many blocks); where they are
    spawned rather than forked (macOS, Windows, other threads running), a script asking for them
    must guard its main code with `if __name__ == "__main__":`."""
    cells = CellBlocks(selection.grid, selection.extent)
    if selection.index:
        from .index import open_index

        if selection.query or selection.filter:
            raise ConfigError("--query and --filter need a STAC API --source; the index plans by collection, "
                              "place and time")
        candidates: Index | InMemoryCandidates = open_index(selection.index)
    else:
        from dataclasses import replace

        from .source import iter_candidates

        assert selection.source is not None  # a Selection has one of a source and an index
        query = replace(selection.item_query(), bbox=cells.bbox)  # the cells' bbox: beyond the extent's
        with selection.access.exported():
            candidates = InMemoryCandidates((c, layout) for c, layout, _ in iter_candidates(selection.source, query))
    try:
        return PlanStream(pipeline=selection.pipeline, grid=selection.grid, extent=selection.extent,
                          time=selection.time, tiles_per_worker=selection.tiles_per_worker, candidates=candidates,
                          local_roots=local_roots(selection), collections=selection.collections,
                          access=selection.access, cells=cells, workers=workers)
    except BaseException:
        candidates.close()
        raise


def plan_for(selection: Selection) -> Plan:
    """Read the source (or query the index), pick the items for the extent and time, plan cells x periods.

    >>> from gridded import select
    >>> plan = plan_for(select(demo_catalog, extent=DEMO_EXTENT, time="2024-01", grid=str(DEMO_GRID),
    ...                        bands="red,nir", tiles_per_worker=2))
    >>> len(plan.tasks), len(plan.batches), plan.pipeline.mask.spec()
    (6, 3, 'scl:0,1,3,8,9,10')
    >>> plan.status(str(tmp / "nothing-yet"))[((234, 2343), "2024-01--P1M")]
    'to-do'
    """
    with plan_stream(selection) as stream:
        return stream.to_plan()
