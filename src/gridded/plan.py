"""A selection -> the items it needs (source or index) -> grid cells x periods x items -> tasks in batches.

The plan is built block by block: a run of cells, one query of the index (or of the items read
from a source) for the block's bbox returning planning columns only (candidates.py), the block's
tasks, its batches; so a continent against millions of items needs the memory of a block, and
`PlanStream` hands the batches on as they are made (to the cells artifact, to a table).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pystac
import shapely
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry

from ._pickling import by_fields
from .candidates import GEOMETRY, Candidate, candidate_of_item, drop_superseded
from .errors import ConfigError
from .grid import Grid, cell_outline_lonlat, cells_for_extent, outlines_lonlat
from .io.access import SourceAccess
from .masks import MaskRule
from .period import Period, TimeRange, periods_for
from .pipeline import Pipeline
from .selection import Selection, local_roots

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

    def status(self, output: str) -> dict[tuple[tuple[int, int], str], str]:
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


BLOCK_SIDE = 8  # cells are planned in blocks of 8 x 8, one index query each


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

    def __init__(self, grid: Grid, extent, side: int = BLOCK_SIDE):
        self.side = side
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
            self.bbox = tuple(float(v) for v in extent.boundingbox)


def _us(when: datetime) -> np.datetime64:
    return np.datetime64(when.astimezone(UTC).replace(tzinfo=None), "us")


class PlanStream:
    """The plan of a selection made block by block: iterate for the batches as they are made; the
    totals (`n_items`, `empty_cells`, `n_tasks`, ...) are complete once iterated; `to_plan()` keeps
    them all in a Plan. The recipe is resolved before the first batch, from the layouts of the
    items in the extent's bbox (so each artifact payload can carry it)."""

    def __init__(self, *, pipeline: Pipeline, grid: Grid, extent, time: TimeRange, tiles_per_worker: int,
                 candidates, local_roots: tuple[Path, ...] | None = None, collections: tuple[str, ...] = (),
                 access: SourceAccess | None = None, block_side: int = BLOCK_SIDE, cells: CellBlocks | None = None):
        from .finder import resolve_layouts

        if tiles_per_worker < 1:
            raise ConfigError(f"--tiles-per-worker {tiles_per_worker}: must be at least 1")
        self.grid, self.extent, self.time, self.tiles_per_worker = grid, extent, time, tiles_per_worker
        self.source, self.local_roots, self.collections = candidates, local_roots, collections
        self.access = access or SourceAccess()
        self.layout = cells if cells is not None and cells.side == block_side else CellBlocks(grid, extent, block_side)
        self.cells, self.blocks = self.layout.cells, self.layout.blocks
        layouts = candidates.layouts(bbox=self.layout.bbox, start=time.start, end=time.end, collections=collections)
        self.pipeline, self.resolved, self.bands_read = resolve_layouts(pipeline, layouts)
        self.n_items = sum(lc.count for lc in layouts)
        self.periods = periods_for(time, self.pipeline.period)
        self.empty_cells: list[tuple[int, int]] = []
        self.n_batches = self.n_tasks = self.n_observations = 0
        self.footprints: dict[bytes, None] = {}
        self.largest: TaskShape | None = None  # of the tasks so far, for the summary's memory estimate

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> PlanStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _cells(self, counts_only: bool) -> Iterator[tuple[tuple[int, int], tuple[int, int], list]]:
        """(cell, its shape, its tasks) for each cell with data, in plan order; with `counts_only`
        its (period, number of observations, of layers) instead, no observation made."""
        from .finder import ObservationFinder

        self.empty_cells, self.footprints = [], {}
        self.n_batches = self.n_tasks = self.n_observations = 0
        self.largest = None
        for block, bbox in zip(self.blocks, self.layout.bboxes):
            outlines = outlines_lonlat([gbox for _, gbox in block])
            found = self.source.candidates(bbox=bbox, start=self.time.start, end=self.time.end,
                                           collections=self.collections, hrefs=not counts_only)
            found = drop_superseded(found)
            if len(self.footprints) <= MAX_MAP_FOOTPRINTS:
                self.footprints.update(dict.fromkeys(c[GEOMETRY] for c in found))
            finder = ObservationFinder.of_candidates(found, self.resolved, self.local_roots)
            for (key, gbox), outline in zip(block, outlines):
                if counts_only:
                    found_tasks = finder.counts_for(gbox, self.periods, outline)
                else:
                    found_tasks = finder.tasks_for(key, gbox, self.periods, outline)
                if found_tasks:
                    yield key, tuple(gbox.shape), found_tasks
                else:
                    self.empty_cells.append(key)

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


def plan_stream(selection: Selection) -> PlanStream:
    """The selection's plan, to be iterated batch by batch: from the index (a query per block of
    cells) or from the items of the source (read once, kept as candidates)."""
    cells = CellBlocks(selection.grid, selection.extent)
    if selection.index:
        from .index import open_index

        if selection.query or selection.filter:
            raise ConfigError("--query and --filter need a STAC API --source; the index plans by collection, "
                              "place and time")
        candidates = open_index(selection.index)
    else:
        from dataclasses import replace

        from .source import iter_candidates

        query = replace(selection.item_query(), bbox=cells.bbox)  # the cells' bbox: beyond the extent's
        with selection.access.exported():
            candidates = InMemoryCandidates((c, layout) for c, layout, _ in iter_candidates(selection.source, query))
    try:
        return PlanStream(pipeline=selection.pipeline, grid=selection.grid, extent=selection.extent,
                          time=selection.time, tiles_per_worker=selection.tiles_per_worker, candidates=candidates,
                          local_roots=local_roots(selection), collections=selection.collections,
                          access=selection.access, cells=cells)
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
