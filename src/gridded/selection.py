"""What to compute, from loose input (flags, a notebook's keywords) to one Selection of typed
values: the one place friendly input is normalised; everything downstream takes a Selection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

from odc.geo.geom import Geometry

from .errors import ConfigError
from .grid import Grid, load_grid
from .io.access import SourceAccess
from .io.s3 import requester_pays, unsigned_requested
from .masks import MaskRule, parse_mask
from .period import TimeRange, parse_as_of, parse_time
from .pipeline import Pipeline, bands_of_indices, indices_of, load_pipeline, with_overrides
from .source import ItemQuery, names_of


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """What to compute: the same for run, plan, tiles generate and the Python API."""

    source: str | None
    extent: Geometry  # EPSG:4326
    time: TimeRange
    grid: Grid
    pipeline: Pipeline
    tiles_per_worker: int = 1
    collections: tuple[str, ...] = ()  # only items of these collections (all when empty)
    query: tuple[str, ...] = ()  # STAC API query extension terms, e.g. "eo:cloud_cover<80"
    filter: str | None = None  # a CQL2 filter (text, or JSON) for a STAC API search
    index: str | None = None  # plan from this index instead of reading the source
    access: SourceAccess = field(default_factory=SourceAccess)  # unsigned / requester-pays S3, signed hrefs
    allow_roots: tuple[str, ...] = ()  # more local folders asset hrefs may point into

    def __post_init__(self):
        _check_where_and_how_many(self.source, self.index, self.tiles_per_worker)

    def item_query(self) -> ItemQuery:
        """What to ask the source for: the collections, the extent's bbox and the time range."""
        return ItemQuery(collections=self.collections, bbox=self.extent.boundingbox.bbox, time=self.time,
                         query=self.query, filter=self.filter)


def _check_where_and_how_many(source, index, tiles_per_worker) -> None:
    if not isinstance(tiles_per_worker, int) or tiles_per_worker < 1:
        raise ConfigError(f"--tiles-per-worker {tiles_per_worker}: must be at least 1")
    if (source is None) == (index is None):
        raise ConfigError("give exactly one of --source CATALOG or --index DSN")


def select(source: str | None = None, *, extent, time: str | TimeRange, index: str | None = None,
           as_of: str | datetime | None = None, pipeline: str | Pipeline | None = None, grid: str | Grid | None = None,
           statistic: str | None = None, period: str | None = None, bands: str | Sequence[str] | None = None,
           mask: str | MaskRule | None = None, collection: str | Sequence[str] | None = None,
           query: str | Sequence[str] = (), filter: str | None = None, tiles_per_worker: int = 4,
           allow_roots: Sequence[str] = (), indices=None, rank: str | None = None,
           access: SourceAccess | None = None, sign: str | None = None) -> Selection:
    """A Selection from loose values: a recipe name or file with every given value put over it.

    `extent` is a lon/lat bbox (text or 4 numbers), a GeoJSON file, WKT, or an odc-geo Geometry;
    `time` an ISO interval, `YYYY`, `YYYY-MM` or `last:P1M`; `bands` a list or comma-separated
    text. Bad values raise ConfigError naming the problem and the fix.

    >>> from gridded.demo import DEMO_EXTENT
    >>> s = select("catalog.json", extent=DEMO_EXTENT, time="2024-01", bands=["red", "nir"], grid="utm55s-10m")
    >>> s.pipeline.bands, s.pipeline.statistic, s.time.start.isoformat()
    (('red', 'nir'), 'median', '2024-01-01T00:00:00+00:00')
    """
    _check_where_and_how_many(source, index, tiles_per_worker)
    recipe = recipe_for(pipeline, statistic=statistic, period=period, bands=bands, mask=mask, indices=indices,
                        rank=rank)
    grid = grid if grid is not None else recipe.grid
    if grid is None:
        raise ConfigError("no grid: pass --grid NAME|FILE (e.g. --grid utm55s-10m) or use a --pipeline that names one")
    if recipe.bands == ():
        raise ConfigError("no bands: pass --bands blue,green,red,nir, a --band-index ndvi (which reads the bands it "
                          "names) or a --pipeline that lists them")
    region = extent_geometry(extent)
    if not isinstance(as_of, datetime):
        as_of = parse_as_of(as_of)
    return Selection(
        source=source,
        extent=region,
        time=time if isinstance(time, TimeRange) else parse_time(time, as_of=as_of),
        grid=grid if isinstance(grid, Grid) else load_grid(grid, extent=region),
        pipeline=recipe,
        tiles_per_worker=tiles_per_worker,
        collections=names_of(collection),
        query=names_of(query),
        filter=filter or None,
        index=index,
        allow_roots=tuple(allow_roots),
        access=access or SourceAccess(unsigned=unsigned_requested(), requester_pays=requester_pays(), sign=sign),
    )


def recipe_for(pipeline: str | Pipeline | None, *, statistic: str | Sequence[str] | None = None,
               period: str | None = None, bands: str | Sequence[str] | None = None,
               mask: str | MaskRule | None = None, indices=None, rank: str | None = None) -> Pipeline:
    """A recipe (a built-in name, a YAML file or a Pipeline; none: a plain composite) with every
    value given put over it. `statistic` may name several (median,p10,p90 or a list); `indices`
    are built-in names, NAME=EXPRESSION texts or a mapping of name to expression."""
    if isinstance(bands, str):
        bands = tuple(b.strip() for b in bands.split(",") if b.strip()) or None
    if statistic is not None and not isinstance(statistic, str):
        statistic = ",".join(statistic)
    base = pipeline if isinstance(pipeline, Pipeline) else (load_pipeline(pipeline) if pipeline else None)
    # the bands read: those given, else the recipe's (not an index-only recipe's: its bands follow
    # its indices); none and indices given: an index-only product, reading what the indices name
    read = tuple(bands) if bands is not None else (base.bands if base and not base.index_only else ())
    resolved = indices_of([indices] if isinstance(indices, str) else indices, read) if indices else None
    index_only = None if bands is None else False
    if resolved and not read:
        bands, index_only = bands_of_indices(resolved), True
    return with_overrides(
        base,
        statistic=statistic,
        period=period,
        bands=tuple(bands) if bands is not None else None,
        mask=parse_mask(mask) if isinstance(mask, str) else mask,
        indices=resolved,
        rank=rank,
        index_only=index_only,
    )


def extent_geometry(extent) -> Geometry:
    """Text (bbox, GeoJSON file, WKT), four numbers or a Geometry -> an EPSG:4326 Geometry."""
    from .extent import parse_extent

    if isinstance(extent, Geometry):
        if extent.crs is None or extent.crs.epsg != 4326:
            raise ConfigError("--extent: give the geometry in lon/lat (EPSG:4326); use geometry.to_crs(4326)")
        return extent
    if isinstance(extent, (tuple, list)) and len(extent) == 4:
        extent = ",".join(str(float(v)) for v in extent)
    if not isinstance(extent, (str, Path)):
        raise ConfigError(f"--extent {extent!r}: give minx,miny,maxx,maxy, a GeoJSON file, WKT or a Geometry")
    return parse_extent(str(extent))


def local_roots(selection: Selection) -> tuple[Path, ...] | None:
    """Where local asset files may be: under a local catalog's folder (and --allow-root folders);
    nowhere for a remote catalog unless allowed; anywhere for an index the user built."""
    if selection.index:
        return None
    assert selection.source is not None  # a Selection has one of a source and an index
    extra = tuple(Path(r).resolve() for r in selection.allow_roots)
    parsed = urlparse(selection.source)
    if parsed.scheme in ("s3", "http", "https"):
        return extra
    path = Path(parsed.path if parsed.scheme == "file" else selection.source).resolve()
    return (path if path.is_dir() else path.parent,) + extra
