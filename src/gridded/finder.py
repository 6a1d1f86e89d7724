"""Candidates -> observations -> the tasks of a cell: layouts resolved against the recipe once each,
footprints deduplicated into an R-tree, an observation built only for an item a cell uses.

`resolve_layouts` decides, per layout (a kind of item, see candidates.py), which asset is each
band, how its values read and which clear rule applies, and from all of them the recipe's
concrete mask and output encodings. `ObservationFinder` answers "which items cover this cell,
in which period" for a block of candidates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pystac
import shapely
from odc.geo.geobox import GeoBox
from shapely.strtree import STRtree

from .assets import SENTINEL2_SCALE, BandInfo, band_info, find_band_asset, is_sentinel2_reflectance, stored_encoding
from .candidates import GEOMETRY, TIME, Candidate, candidate_of_item
from .candidates import drop_superseded as drop_superseded_candidates
from .errors import ConfigError
from .grid import outline_lonlat
from .masks import MaskRule, infer_mask
from .period import Period
from .pipeline import INFER, Pipeline
from .plan import Observation, Task
from .source import item_time

PLATFORM = Candidate._fields.index("platform")
ALLOWED_SCHEMES = ("s3", "http", "https", "file", "")
REMOTE_PREFIXES = ("s3://", "https://", "http://")


def check_href(href: str, *, item_id: str, asset: str, local_roots: tuple[Path, ...] | None) -> None:
    """Refuse an asset href outside the allowed schemes, or a local file outside the allowed roots
    (`local_roots` None: any local file; empty: none), so a catalog cannot make gridded read
    /etc/passwd or another local file into its outputs."""
    if href.startswith(REMOTE_PREFIXES):
        return
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


def solar_day(when: datetime, lon: float) -> str:
    """The local solar date of an acquisition: UTC shifted by longitude / 15 hours."""
    return (when + timedelta(hours=lon / 15.0)).date().isoformat()


@dataclass(frozen=True, slots=True)
class ResolvedLayout:
    """How the items of one layout read for a recipe."""

    mask: MaskRule | None
    keys: tuple[tuple[str, str], ...]  # (band, or the mask's asset) -> the asset key holding it
    infos: dict[str, BandInfo]
    encodings: tuple[tuple[str, float, float], ...]  # per band (scale, offset) of its stored values


def _stub_item(layout: dict, item_id: str) -> pystac.Item:
    """An item with a layout's assets and properties (hrefs and geometry aside), for assets.py."""
    item = pystac.Item(id=item_id, geometry=None, bbox=None, datetime=datetime(2000, 1, 1, tzinfo=UTC),
                       properties=dict(layout.get("properties") or {}), collection=layout.get("collection") or None)
    for key, fields in (layout.get("assets") or {}).items():
        item.add_asset(key, pystac.Asset.from_dict({**fields, "href": key}))
    return item


def resolve_layout(layout: dict, pipeline: Pipeline, example_id: str) -> ResolvedLayout:
    """The asset of each band (and of the mask) of a layout, its clear rule (the recipe's, or the one
    its assets imply) and how its band values read; an unknown band is a one-line error naming an
    item of that layout."""
    item = _stub_item(layout, example_id)
    mask = infer_mask(set(item.assets)) if pipeline.mask == INFER else pipeline.mask
    keys, infos = [], {}
    wanted = list(pipeline.bands) + ([mask.asset] if mask is not None else [])
    for band in wanted:
        found = find_band_asset(item, band)
        if found is None:
            assets = ", ".join(sorted(item.assets))
            if mask is not None and band == mask.asset and band not in pipeline.bands:
                raise ConfigError(f"item {example_id}: no mask asset {band!r} (assets: {assets}); "
                                  f"pass --mask ASSET:... naming one of them, or --mask none")
            raise ConfigError(f"item {example_id}: no asset for band {band!r} (assets: {assets}); "
                              f"use --bands with asset keys, eo:bands names or common names")
        key, asset = found
        keys.append((band, key))
        if band in pipeline.bands:
            infos[band] = band_info(item, key, asset)
    encodings = tuple((band, *stored_encoding(item, band, info)) for band, info in infos.items())
    return ResolvedLayout(mask=mask, keys=tuple(keys), infos=infos, encodings=encodings)


def resolve_layouts(pipeline: Pipeline, layouts) -> tuple[Pipeline, dict[str, ResolvedLayout], tuple]:
    """(the recipe made concrete, each layout resolved, what is read per band) for the layouts of
    the items a plan considers (`LayoutCount`s: digest, layout, count, an example id, latest time).

    The recipe's inferred mask becomes concrete when every layout has the same rule; each band's
    output encoding is the one most items have (the later on a tie), or with `harmonize`
    Sentinel-2's first encoding (DN / 10000): items stored otherwise are converted to it."""
    collections = sorted({lc.layout.get("collection") or "" for lc in layouts})
    resolved = {}
    for lc in layouts:
        try:
            resolved[lc.digest] = resolve_layout(lc.layout, pipeline, lc.example_id)
        except ConfigError as err:
            if len(collections) > 1:  # most likely one sensor's band names asked of another's items
                raise ConfigError(f"{err}; the source mixes collections ({', '.join(collections)}): "
                                  f"pass --collection to composite one of them") from err
            raise
    changes: dict = {}
    if pipeline.mask == INFER:
        rules = {resolved[lc.digest].mask for lc in layouts}
        changes["mask"] = rules.pop() if len(rules) == 1 else (None if not rules else INFER)
    encodings = []
    for band in pipeline.bands:
        votes: dict[tuple[float, float], list] = {}
        for lc in layouts:
            seen = next((s, o) for b, s, o in resolved[lc.digest].encodings if b == band)
            vote = votes.setdefault(seen, [0, ""])
            vote[0] += lc.count
            vote[1] = max(vote[1], lc.latest)
        if pipeline.harmonize and any(is_sentinel2_reflectance(s, o) for s, o in votes):
            target = (SENTINEL2_SCALE, 0.0)
        elif votes:
            target = max(votes, key=lambda e: tuple(votes[e]))
        else:
            target = (1.0, 0.0)
        encodings.append((band, *target))
    changes["encodings"] = tuple(encodings)
    descriptions = {}
    for lc in sorted(layouts, key=lambda lc: -lc.count):
        for band, meta in resolved[lc.digest].infos.items():
            if band not in descriptions and meta.description:
                descriptions[band] = json.dumps(meta.description, sort_keys=True)
    changes["descriptions"] = tuple(sorted(descriptions.items()))
    ways: dict[tuple, int] = {}
    for lc in layouts:
        r = resolved[lc.digest]
        for band, meta in r.infos.items():
            way = (band, meta.key, meta.data_type, *next((s, o) for b, s, o in r.encodings if b == band))
            ways[way] = ways.get(way, 0) + lc.count
    bands_read = tuple((*way, n) for way, n in sorted(ways.items(), key=lambda kv: (kv[0][0], -kv[1])))
    return replace(pipeline, **changes), resolved, bands_read


class LayoutCounts(list):
    """The layouts of a list of candidates, as an index query reports them (see index.LayoutCount)."""

    @classmethod
    def of(cls, candidates: list[Candidate], layouts: dict[str, dict]) -> LayoutCounts:
        from .index import LayoutCount

        found: dict[str, list] = {}
        for c in candidates:
            entry = found.setdefault(c.layout, [0, c.id, c.time])
            entry[0] += 1
            entry[1] = min(entry[1], c.id)
            entry[2] = max(entry[2], c.time)
        return cls(LayoutCount(d, layouts[d], n, example, latest) for d, (n, example, latest) in found.items())


class ObservationFinder:
    """The observations of a block of candidates (hrefs checked as an item is first used) and an
    R-tree of their distinct footprints: the tasks of any cell of the block, for any periods."""

    def __init__(self, items: list[pystac.Item], pipeline: Pipeline, local_roots: tuple[Path, ...] | None):
        """From pystac items: their layouts resolved here (see `of_candidates` for a plan's blocks)."""
        pairs = [candidate_of_item(item) for item in items]
        candidates = sorted((c for c, _ in pairs), key=lambda c: (c.time, c.id))
        counts = LayoutCounts.of(candidates, {c.layout: layout for c, layout in pairs})
        self.resolved_pipeline, resolved, self._bands_read = resolve_layouts(pipeline, counts)
        self._setup(candidates, resolved, local_roots)

    @classmethod
    def of_candidates(cls, candidates: list[Candidate], resolved: dict[str, ResolvedLayout],
                      local_roots: tuple[Path, ...] | None) -> ObservationFinder:
        finder = cls.__new__(cls)
        finder._setup(candidates, resolved, local_roots)
        return finder

    def _setup(self, candidates: list, resolved: dict[str, ResolvedLayout],
               local_roots: tuple[Path, ...] | None) -> None:
        """`candidates`: Candidates, or index rows in their order, in time then id order."""
        self.candidates = candidates
        self.resolved, self.local_roots = resolved, local_roots
        self._made: list[Observation | None] = [None] * len(candidates)
        self._solar_days: list[str] | None = None  # made for the whole block when first needed
        self._layer_ids: np.ndarray | None = None
        self.times = np.array([c[TIME][:26] for c in candidates], dtype="datetime64[us]")
        distinct: dict[bytes, int] = {}
        owner = np.fromiter((distinct.setdefault(c[GEOMETRY], len(distinct)) for c in candidates),
                            dtype=np.int64, count=len(candidates))
        self.footprints = shapely.from_wkb(list(distinct)) if distinct else np.array([], dtype=object)
        self._owner = owner  # per candidate, its footprint
        order = np.argsort(owner, kind="stable")  # the candidates of each footprint, in time order
        bounds = np.searchsorted(owner[order], np.arange(len(distinct) + 1))
        self.members = [order[bounds[i]:bounds[i + 1]] for i in range(len(distinct))]
        self.tree = STRtree(self.footprints) if len(self.footprints) else None

    def resolve(self, pipeline: Pipeline) -> Pipeline:
        """The recipe made concrete by these items (see resolve_layouts); for a finder of pystac items."""
        return self.resolved_pipeline

    def bands_read(self) -> tuple[tuple[str, str, str | None, float, float, int], ...]:
        return self._bands_read

    @property
    def observations(self) -> list[Observation]:
        return [self.observation(i) for i in range(len(self.candidates))]

    def observation(self, i: int) -> Observation:
        """The observation of candidate `i` (made once): its hrefs per band checked, no open handles."""
        made = self._made[i]
        if made is None:
            made = self._made[i] = self._observation(i)
        return made

    def _observation(self, i: int) -> Observation:
        c = Candidate._make(self.candidates[i])
        layout = self.resolved[c.layout]
        listed = "\n" + c.hrefs + "\n"
        hrefs = []
        for band, key in layout.keys:
            at = listed.find(f"\n{key}\t")
            if at < 0:
                raise ConfigError(f"item {c.id} asset {key}: no href; fix the item, or name another asset in --bands")
            href = listed[at + len(key) + 2:listed.index("\n", at + 1)]
            if not href.startswith(REMOTE_PREFIXES):
                check_href(href, item_id=c.id, asset=key, local_roots=self.local_roots)
            hrefs.append((band, href))
        if self._solar_days is None:
            self._solar_days = self._solar_days_of_block()
        return Observation(
            item_id=c.id, time=c.datetime, platform=c.platform, updated=c.updated,
            solar_day=self._solar_days[i], hrefs=tuple(hrefs), self_href=c.self_href,
            mask=layout.mask, encodings=layout.encodings)

    def _solar_days_of_block(self) -> list[str]:
        """solar_day of every candidate, at once."""
        return np.datetime_as_string(self._solar_dates()).tolist()

    def _solar_dates(self) -> np.ndarray:
        """Per candidate, its local solar date (see solar_day), at the middle longitude of its
        footprint's bounds (rows made for counting carry no bbox, and the R-tree's is rounded)."""
        west, _, east, _ = shapely.bounds(self.footprints).T if len(self.footprints) else np.zeros((4, 0))
        lon = ((west + east) / 2)[self._owner]
        shift = np.round(lon / 15.0 * 3600e6).astype("timedelta64[us]")  # as solar_day() shifts
        return (self.times + shift).astype("datetime64[D]")

    def inputs_of(self, gbox: GeoBox, outline: shapely.Polygon | None = None) -> np.ndarray:
        """The candidates whose footprints cover some of the cell, in time order: more than half a
        pixel of it, so that an item that only touches the cell (a shared edge, as the next cell's
        output item does) is not one of its inputs."""
        if self.tree is None:
            return np.array([], dtype=np.int64)
        cell = outline if outline is not None else outline_lonlat(gbox)
        hits = self.tree.query(cell, predicate="intersects")
        if not len(hits):
            return np.array([], dtype=np.int64)
        inside = shapely.contains_properly(self.footprints[hits], cell)  # no area to measure for these
        rest = hits[~inside]
        half_pixel = 0.5 * cell.area / (gbox.shape[0] * gbox.shape[1])
        covering = rest[shapely.area(shapely.intersection(self.footprints[rest], cell)) > half_pixel]
        chosen = np.concatenate([hits[inside], covering])
        if not len(chosen):
            return np.array([], dtype=np.int64)
        return np.sort(np.concatenate([self.members[f] for f in chosen]))

    def counts_for(self, gbox: GeoBox, periods: list[Period], outline: shapely.Polygon | None = None
                   ) -> list[tuple[Period, int, int]]:
        """(period, number of observations, of layers) for each period with observations meeting
        the cell; its layers are its observations once same-day scenes are mosaicked (Task.n_layers)."""
        hits = self.inputs_of(gbox, outline)
        if not len(hits):
            return []
        times = self.times[hits]
        lo, hi = self._period_bounds(times, periods)
        layers = self.layer_ids()[hits]
        return [(p, int(h - low), len(np.unique(layers[low:h]))) for p, low, h in zip(periods, lo, hi) if h > low]

    def layer_ids(self) -> np.ndarray:
        """Per candidate, a number for its (platform, solar day): the layer it is mosaicked into."""
        if self._layer_ids is None:
            platforms: dict[str, int] = {}
            code = np.fromiter((platforms.setdefault(c[PLATFORM], len(platforms)) for c in self.candidates),
                               dtype=np.int64, count=len(self.candidates))
            day = self._solar_dates().astype(np.int64)
            self._layer_ids = code * 1_000_000 + day
        return self._layer_ids

    @staticmethod
    def _period_bounds(times: np.ndarray, periods: list[Period]) -> tuple[np.ndarray, np.ndarray]:
        starts = np.array([p.start.replace(tzinfo=None) for p in periods], dtype="datetime64[us]")
        ends = np.array([p.end.replace(tzinfo=None) for p in periods], dtype="datetime64[us]")
        return np.searchsorted(times, starts, side="left"), np.searchsorted(times, ends, side="right")

    def tasks_for(self, key: tuple[int, int], gbox: GeoBox, periods: list[Period],
                  outline: shapely.Polygon | None = None) -> list[Task]:
        """One task per period that has observations meeting the cell, in time order."""
        hits = self.inputs_of(gbox, outline)
        if not len(hits):
            return []
        times = self.times[hits]
        tasks = []
        crs, transform, shape_yx = str(gbox.crs), tuple(gbox.affine)[:6], tuple(gbox.shape)
        for period, lo, hi in zip(periods, *self._period_bounds(times, periods)):
            if hi > lo:
                picked = hits[lo:hi].tolist()
                made = self._made
                for i in picked:
                    if made[i] is None:
                        made[i] = self._observation(i)
                tasks.append(Task(key=key, crs=crs, transform=transform, shape_yx=shape_yx, period=period,
                                  observations=tuple([made[i] for i in picked])))
        return tasks


def drop_superseded(items: list[pystac.Item]) -> list[pystac.Item]:
    """The items less those another one of their collection reprocesses (see
    candidates.drop_superseded), in time then id order."""
    by_id = {(item.collection_id or "", item.id): item for item in items}
    kept = drop_superseded_candidates([candidate_of_item(item)[0] for item in items])
    return [by_id[(c.collection, c.id)] for c in kept]


__all__ = ["ObservationFinder", "ResolvedLayout", "check_href", "drop_superseded", "item_time", "resolve_layouts",
           "solar_day"]
