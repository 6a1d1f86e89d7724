"""A selection -> the items it needs (source or index) -> grid cells x periods x items -> tasks in batches."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pystac
import shapely
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from shapely.geometry import box, shape
from shapely.strtree import STRtree

from .assets import (SENTINEL2_SCALE, BandInfo, band_info, find_band_asset, is_sentinel2_reflectance,
                     stored_encoding)
from .errors import ConfigError
from .grid import Grid, cell_outline_lonlat, cells_for_extent, outline_lonlat
from .io.access import SourceAccess
from .masks import MaskRule, infer_mask
from .period import Period, TimeRange, periods_for
from .pipeline import INFER, Pipeline
from .selection import Selection, local_roots
from .source import item_time, items_for_query, read_items

log = logging.getLogger(__name__)

MAX_MAP_FOOTPRINTS = 5000  # a plan keeps its items' footprints for a map up to this many


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


def solar_day(when: datetime, lon: float) -> str:
    """The local solar date of an acquisition: UTC shifted by longitude / 15 hours."""
    return (when + timedelta(hours=lon / 15.0)).date().isoformat()


ALLOWED_SCHEMES = ("s3", "http", "https", "file", "")


def check_href(href: str, *, item_id: str, asset: str, local_roots: tuple[Path, ...] | None) -> None:
    """Refuse an asset href outside the allowed schemes, or a local file outside the allowed roots
    (`local_roots` None: any local file; empty: none), so a catalog cannot make gridded read
    /etc/passwd or another local file into its outputs."""
    parsed = urlparse(href)
    scheme = "" if len(parsed.scheme) == 1 else parsed.scheme  # a Windows drive letter is a path
    if scheme not in ALLOWED_SCHEMES or href.startswith("/vsi"):
        raise ConfigError(f"item {item_id} asset {asset}: href {href!r} has a scheme gridded does not read; "
                          f"use s3://, https:// or a file under the catalog")
    if scheme in ("file", "") and local_roots is not None:
        path = Path(parsed.path if scheme == "file" else href).resolve()
        if not any(path == root or root in path.parents for root in local_roots):
            where = ", ".join(str(r) for r in local_roots) or "none for a remote catalog"
            raise ConfigError(f"item {item_id} asset {asset}: local file {path} is outside the allowed roots "
                              f"({where}); pass --allow-root DIR to read it")


def observation_for(item: pystac.Item, pipeline: Pipeline,
                    local_roots: tuple[Path, ...] | None = None) -> tuple[Observation, dict[str, BandInfo]]:
    """The hrefs of the bands (and mask asset) of one item, the clear rule that applies to it (the
    recipe's, or the one its assets imply) and how its band values read; an unknown band is a
    one-line error."""
    mask = infer_mask(set(item.assets)) if pipeline.mask == INFER else pipeline.mask
    hrefs, infos = [], {}
    wanted = list(pipeline.bands) + ([mask.asset] if mask is not None else [])
    for band in wanted:
        found = find_band_asset(item, band)
        if found is None:
            if mask is not None and band == mask.asset and band not in pipeline.bands:
                raise ConfigError(
                    f"item {item.id}: no mask asset {band!r} (assets: {', '.join(sorted(item.assets))}); "
                    f"pass --mask ASSET:... naming one of them, or --mask none"
                )
            raise ConfigError(
                f"item {item.id}: no asset for band {band!r} (assets: {', '.join(sorted(item.assets))}); "
                f"use --bands with asset keys, eo:bands names or common names"
            )
        key, asset = found
        href = asset.get_absolute_href() or asset.href
        check_href(href, item_id=item.id, asset=key, local_roots=local_roots)
        hrefs.append((band, href))
        if band in pipeline.bands:
            infos[band] = band_info(item, key, asset)
    minx, _, maxx, _ = item.bbox or shape(item.geometry).bounds
    when = item_time(item)
    platform = item.properties.get("platform", item.properties.get("constellation", ""))
    observation = Observation(
        item_id=item.id,
        time=when,
        # providers spell platforms differently (Sentinel-2A, sentinel-2a): one platform, one mosaic a day
        platform=str(platform).strip().lower(),
        updated=str(item.properties.get("updated", "")),
        solar_day=solar_day(when, (minx + maxx) / 2),
        hrefs=tuple(hrefs),
        self_href=item.get_self_href(),
        mask=mask,
        encodings=tuple((band, *stored_encoding(item, band, info)) for band, info in infos.items()),
    )
    return observation, infos


def resolve_recipe(pipeline: Pipeline, observations: list[Observation],
                   infos: list[dict[str, BandInfo]]) -> Pipeline:
    """The recipe with what the items decide: an inferred mask made concrete when every item has the
    same rule, and per band the encoding of its outputs and its description. The outputs' encoding
    is the one most observations have (the later on a tie), or with `harmonize` Sentinel-2's first
    encoding (DN / 10000): observations stored otherwise are converted to it before reducing."""
    from dataclasses import replace

    changes: dict = {}
    if pipeline.mask == INFER:
        rules = {o.mask for o in observations}
        changes["mask"] = rules.pop() if len(rules) == 1 else (None if not rules else INFER)
    encodings = []
    for band in pipeline.bands:
        seen = [o.encoding(band) for o in sorted(observations, key=lambda o: o.time)]
        if pipeline.harmonize and any(is_sentinel2_reflectance(s, o) for s, o in seen):
            target = (SENTINEL2_SCALE, 0.0)
        elif seen:
            votes = {e: (seen.count(e), i) for i, e in enumerate(seen)}
            target = max(votes, key=lambda e: votes[e])
        else:
            target = (1.0, 0.0)
        encodings.append((band, *target))
    changes["encodings"] = tuple(encodings)
    descriptions = {}
    for info in infos:
        for band, band_meta in info.items():
            if band not in descriptions and band_meta.description:
                descriptions[band] = json.dumps(band_meta.description, sort_keys=True)
    changes["descriptions"] = tuple(sorted(descriptions.items()))
    return replace(pipeline, **changes)


def drop_superseded(items: list[pystac.Item]) -> list[pystac.Item]:
    """The items less those another one of their collection reprocesses: the same platform, tile and
    acquisition time (Earth Search lists ESA's reprocessings of Sentinel-2 as `_1_` beside `_0_`), of
    which the latest processing baseline (then the latest `updated`) is kept. Items naming no tile
    are all kept."""
    kept: dict[tuple, pystac.Item] = {}
    rest = []
    for item in items:
        props = item.properties
        tile = props.get("s2:mgrs_tile") or props.get("grid:code") or props.get("landsat:wrs_path_row")
        if not tile:
            rest.append(item)
            continue
        key = (item.collection_id, str(props.get("platform", "")).lower(), str(tile).upper().removeprefix("MGRS-"),
               item_time(item))
        if key not in kept or _processing(item) > _processing(kept[key]):
            kept[key] = item
    return sorted(rest + list(kept.values()), key=lambda it: (item_time(it), it.id))


def _processing(item: pystac.Item) -> tuple:
    props = item.properties
    try:
        baseline = float(props.get("s2:processing_baseline", 0))
    except (TypeError, ValueError):
        baseline = 0.0
    return baseline, str(props.get("updated") or props.get("created") or ""), item.id


def make_plan(*, pipeline: Pipeline, grid: Grid, extent, time: TimeRange, items: list[pystac.Item],
              tiles_per_worker: int, local_roots: tuple[Path, ...] | None = None) -> Plan:
    """Cells x periods x items -> tasks, batched by cell. Cells with no observation are left out."""
    if tiles_per_worker < 1:
        raise ConfigError(f"--tiles-per-worker {tiles_per_worker}: must be at least 1")
    cells = cells_for_extent(grid, extent)
    items = drop_superseded(items)
    finder = ObservationFinder(items, pipeline, local_roots)
    pipeline = finder.resolve(pipeline)
    periods = periods_for(time, pipeline.period)
    tasks_by_cell: dict[tuple[int, int], list[Task]] = {}
    empty = []
    for key, gbox in cells:
        tasks = finder.tasks_for(key, gbox, periods)
        if tasks:
            tasks_by_cell[key] = tasks
        else:
            empty.append(key)
    keys = list(tasks_by_cell)
    batches = tuple(
        Batch(id=i, tasks=tuple(t for k in keys[start:start + tiles_per_worker] for t in tasks_by_cell[k]))
        for i, start in enumerate(range(0, len(keys), tiles_per_worker))
    )
    return Plan(pipeline=pipeline, grid=grid, batches=batches, n_cells_in_extent=len(cells),
                n_items=len(items), empty_cells=tuple(empty), bands_read=finder.bands_read(), extent=extent,
                footprints=tuple(finder.footprints) if len(finder.footprints) <= MAX_MAP_FOOTPRINTS else ())


class ObservationFinder:
    """The observations of a set of items (hrefs checked once) and a spatial index of their
    footprints: the tasks of any cell, for any periods."""

    def __init__(self, items: list[pystac.Item], pipeline: Pipeline, local_roots: tuple[Path, ...] | None):
        collections = sorted({it.collection_id or "" for it in items})
        self.observations, self.infos = [], []
        for item in items:
            try:
                observation, info = observation_for(item, pipeline, local_roots)
            except ConfigError as err:
                if len(collections) > 1:  # most likely one sensor's band names asked of another's items
                    raise ConfigError(f"{err}; the source mixes collections ({', '.join(collections)}): "
                                      f"pass --collection to composite one of them") from err
                raise
            self.observations.append(observation)
            self.infos.append(info)
        self.footprints = np.array([shape(it.geometry) if it.geometry else box(*it.bbox) for it in items])
        self.tree = STRtree(self.footprints) if len(self.footprints) else None

    def resolve(self, pipeline: Pipeline) -> Pipeline:
        return resolve_recipe(pipeline, self.observations, self.infos)

    def bands_read(self) -> tuple[tuple[str, str, str | None, float, float, int], ...]:
        """Per band and way of reading it (asset key, data type, stored encoding), how many items."""
        ways: dict[tuple, int] = {}
        for observation, info in zip(self.observations, self.infos):
            for band, meta in info.items():
                way = (band, meta.key, meta.data_type, *observation.encoding(band))
                ways[way] = ways.get(way, 0) + 1
        return tuple((*way, n) for way, n in sorted(ways.items(), key=lambda kv: (kv[0][0], -kv[1])))

    def inputs_of(self, gbox: GeoBox) -> list[int]:
        """The items whose footprints cover some of the cell: more than half a pixel of it, so that
        an item that only touches the cell (a shared edge, as the next cell's output item does) is
        not one of its inputs."""
        if self.tree is None:
            return []
        cell_lonlat = outline_lonlat(gbox)
        hits = self.tree.query(cell_lonlat, predicate="intersects")
        if not len(hits):
            return []
        overlap = shapely.area(shapely.intersection(self.footprints[hits], cell_lonlat))
        half_pixel = 0.5 * cell_lonlat.area / (gbox.shape[0] * gbox.shape[1])
        return sorted(int(i) for i in hits[overlap > half_pixel])

    def tasks_for(self, key: tuple[int, int], gbox: GeoBox, periods: list[Period]) -> list[Task]:
        """One task per period that has observations meeting the cell, in time order."""
        hits = self.inputs_of(gbox)
        tasks = []
        for period in periods:
            obs = tuple(o for o in (self.observations[i] for i in hits) if period.start <= o.time <= period.end)
            if obs:
                tasks.append(Task(
                    key=key, crs=str(gbox.crs), transform=tuple(gbox.affine)[:6], shape_yx=tuple(gbox.shape),
                    period=period, observations=tuple(sorted(obs, key=lambda o: (o.time, o.item_id))),
                ))
        return tasks


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
    if selection.index:
        from .index import open_index

        if selection.query or selection.filter:
            raise ConfigError("--query and --filter need a STAC API --source; the index plans by collection, "
                              "place and time")
        index = open_index(selection.index)
        try:
            candidates = index.search(bbox=selection.extent.boundingbox, start=selection.time.start,
                                      end=selection.time.end, collections=selection.collections)
        finally:
            index.close()
    else:
        with selection.access.exported():
            candidates = read_items(selection.source, selection.item_query())
    items = items_for_query(candidates, selection.extent, selection.time, selection.collections)
    plan = make_plan(pipeline=selection.pipeline, grid=selection.grid, extent=selection.extent,
                     time=selection.time, items=items, tiles_per_worker=selection.tiles_per_worker,
                     local_roots=local_roots(selection))
    return replace(plan, access=selection.access)
