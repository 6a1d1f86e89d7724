"""`gridded.composite`: the composites of `gridded run` as a lazy xarray.Dataset (one Dask chunk per
grid cell and period), computed by the same task code, so the same pixels, in memory."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np
import pystac
from affine import Affine
from odc.geo.geobox import GeoBox, GeoboxTiles

from .errors import ConfigError
from .finder import ObservationFinder, drop_superseded
from .grid import Grid, cells_for_extent, load_grid
from .masks import MaskRule
from .period import parse_time, periods_for
from .pipeline import Pipeline
from .plan import Task
from .selection import extent_geometry, names_of, recipe_for
from .source import ItemQuery, items_for_query, read_items

if TYPE_CHECKING:
    import xarray
    from odc.geo.geom import Geometry

DEFAULT_CHUNK_PX = 2048  # a chunk's side when the output grid is a GeoBox (a grid's chunks are its cells)


def composite(source_or_items: str | Iterable[pystac.Item | dict], *, extent=None, geobox: GeoBox | None = None,
              time: str, bands: str | Sequence[str] | None = None, statistic: str = "median", period: str = "P1M",
              mask: str | MaskRule | None = None, grid: str | Grid | None = None,
              chunks: int | dict[str, int] | None = None, progress: Callable[[int, int], None] | None = None,
              pipeline: str | Pipeline | None = None, collection: str | Sequence[str] | None = None,
              indices=None, rank: str | None = None) -> xarray.Dataset:
    """Composites as a lazy Dataset: one variable per band (plus `count`, and a statistic's extra
    assets), dims (time, y, x) with `time` the period starts, the GeoBox attached (`ds.odc.geobox`).

    The output grid is the `grid`'s cells meeting `extent` (one chunk per cell: pixel for pixel
    what `gridded run` writes for those cells), or a `geobox` of your own (chunks of `chunks`
    pixels). `source_or_items` is a STAC catalog (path or URL) or items (pystac or dicts, e.g.
    from a pystac-client search). Nothing is read until computed, but the first item's band
    headers (for the dtypes). `progress(done, total)` is called as chunks finish.

    >>> ds = composite(demo_catalog, extent=DEMO_EXTENT, grid=str(DEMO_GRID), time="2024-01",
    ...                bands=["red", "nir"])
    >>> sorted(ds.data_vars), ds.red.dims, ds.red.dtype.name, str(ds.time.values[0])[:10]
    (['count', 'nir', 'observed', 'red'], ('time', 'y', 'x'), 'uint16', '2024-01-01')
    >>> int(ds["count"].max())
    6
    """
    import dask.array as da
    import xarray as xr
    from odc.geo.xr import xr_coords

    recipe = recipe_for(pipeline, statistic=statistic, period=period, bands=bands, mask=mask, indices=indices,
                        rank=rank)
    when = parse_time(time)
    gbox, chunk_yx, region = _output_grid(extent, geobox, grid if grid is not None else recipe.grid, chunks)
    collections = names_of(collection)
    items = _items(source_or_items, ItemQuery(collections=collections, bbox=region.boundingbox.bbox, time=when))
    items = items_for_query(items, region, when, collections)
    if not items:
        raise ConfigError("composite: no item meets the extent and time; check extent, time and collection")
    finder = ObservationFinder(drop_superseded(items), recipe, None)
    recipe = finder.resolve(recipe)
    periods = periods_for(when, recipe.period)
    tiles = GeoboxTiles(gbox, chunk_yx)
    kinds = _asset_kinds(recipe, finder.observations[0])
    counter = _Counter(progress, tiles.shape[0] * tiles.shape[1] * len(periods))
    blocks: dict[str, list] = {name: [] for name in kinds}
    for p in periods:
        rows: dict[str, list] = {name: [] for name in kinds}
        for iy in range(tiles.shape[0]):
            row: dict[str, list] = {name: [] for name in kinds}
            for ix in range(tiles.shape[1]):
                tile = cast(GeoBox, tiles[iy, ix])  # the tiles of a GeoBox are GeoBoxes
                found = finder.tasks_for((ix, iy), tile, [p])
                result = _delayed_task(found[0] if found else None, tile, recipe, kinds, counter)
                for name, (dtype, _) in kinds.items():
                    row[name].append(da.from_delayed(result[name], shape=(1, *tile.shape.yx), dtype=dtype))
            for name in kinds:
                rows[name].append(row[name])
        for name in kinds:
            blocks[name].append(rows[name])
    coords: dict[Hashable, Any] = xr_coords(gbox, crs_coord_name="spatial_ref")
    coords["time"] = np.array([p.start.replace(tzinfo=None) for p in periods], dtype="datetime64[ns]")
    variables = {
        name: xr.DataArray(da.block(blocks[name]), dims=("time", "y", "x"),
                           attrs={"nodata": nodata} if nodata is not None else {})
        for name, (_, nodata) in kinds.items()
    }
    return xr.Dataset(variables, coords=coords, attrs={
        "gridded:statistic": recipe.statistic,
        "gridded:indices": dict(recipe.indices),
        "gridded:period": recipe.period,
        "gridded:mask": recipe.mask.spec() if isinstance(recipe.mask, MaskRule) else (recipe.mask or "none"),
        "gridded:inputs": [o.item_id for o in finder.observations],
    })


def _items(source_or_items, query: ItemQuery) -> list[pystac.Item]:
    if isinstance(source_or_items, str):
        return read_items(source_or_items, query)
    items = [it if isinstance(it, pystac.Item) else pystac.Item.from_dict(it) for it in source_or_items]
    for item in items:
        if item.get_self_href():  # relative asset hrefs resolve against the item's own file
            item.make_asset_hrefs_absolute()
    return items


def _output_grid(extent, geobox: GeoBox | None, grid, chunks) -> tuple[GeoBox, tuple[int, int], Geometry]:
    """(the output GeoBox, the chunk shape (y, x), the lon/lat region to find items in)."""
    if geobox is not None:
        if grid is not None and extent is not None:
            raise ConfigError("composite: give geobox=, or grid= with extent=, not both")
        return geobox, _chunk_shape(chunks, (DEFAULT_CHUNK_PX, DEFAULT_CHUNK_PX)), geobox.extent.to_crs(4326)
    if extent is None or grid is None:
        raise ConfigError("composite: give extent= and grid= (e.g. grid='utm55s-10m'), or geobox=")
    region = extent_geometry(extent)
    grid = grid if isinstance(grid, Grid) else load_grid(grid, extent=region)
    cells = cells_for_extent(grid, region)
    if not cells:
        raise ConfigError("composite: the extent meets no cell of the grid; check extent and grid")
    xs, ys = [k[0] for k, _ in cells], [k[1] for k, _ in cells]
    first = grid.geobox((min(xs), max(ys)))  # the top-left cell: y keys grow northwards
    ny, nx = grid.tile_shape_px
    shape = ((max(ys) - min(ys) + 1) * ny, (max(xs) - min(xs) + 1) * nx)
    gbox = GeoBox(shape, Affine(*tuple(first.affine)[:6]), first.crs)
    if chunks is not None:
        raise ConfigError("composite: chunks= is for a geobox= output; a grid's chunks are its cells")
    return gbox, (ny, nx), region


def _chunk_shape(chunks, default: tuple[int, int]) -> tuple[int, int]:
    if chunks is None:
        return default
    if isinstance(chunks, int):
        return chunks, chunks
    try:
        return int(chunks["y"]), int(chunks["x"])
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"composite: chunks={chunks!r}; give pixels per chunk, e.g. 2048 or "
                          f"{{'y': 2048, 'x': 2048}}") from err


def _asset_kinds(recipe: Pipeline, first) -> dict[str, tuple[np.dtype, float | int | None]]:
    """Per output variable (dtype, nodata), as compute_task will make them: the bands' from the
    first observation's headers, the rest from their definitions."""
    from .io.rasters import band_info, configure_gdal
    from .reduce import output_kinds, output_nodata

    configure_gdal(s3=any(href.startswith("s3://") for _, href in first.hrefs))
    dtypes, nodatas = {}, {}
    for band in recipe.bands:
        dtype, source_nodata = band_info(first.href(band), what=f"item {first.item_id} asset {band}")
        dtypes[band] = np.dtype(recipe.dtype) if recipe.dtype else dtype
        nodatas[band] = output_nodata(recipe.nodata, source_nodata, dtypes[band])
    return output_kinds(recipe, dtypes, nodatas)


class _Counter:
    """Chunks done, reported to the caller's callback from whichever thread finished one. The graph
    holds only its token (graphs are pickled for a distributed scheduler, and a lock is not):
    chunks computed in this process find it; elsewhere there is nothing to report to."""

    live: ClassVar[dict[str, _Counter]] = {}

    def __init__(self, callback, total: int):
        self.callback, self.total, self.done = callback, total, 0
        self.lock = threading.Lock()
        self.token = uuid.uuid4().hex
        if callback is not None:
            self.live[self.token] = self

    @classmethod
    def tick(cls, token: str) -> None:
        counter = cls.live.get(token)
        if counter is None:
            return
        with counter.lock:
            counter.done += 1
            done = counter.done
            if done >= counter.total:
                cls.live.pop(token, None)
        counter.callback(done, counter.total)


def _delayed_task(task: Task | None, tile: GeoBox, recipe: Pipeline, kinds: dict, counter: _Counter) -> dict:
    """Per variable, a Delayed (1, y, x) array of one chunk and period (all nodata without observations)."""
    import dask

    compute = dask.delayed(_compute_chunk, pure=True)
    result = compute(task, tuple(tile.shape.yx), recipe, kinds, counter.token)
    return {name: result[name] for name in kinds}


def _compute_chunk(task: Task | None, shape_yx: tuple[int, int], recipe: Pipeline, kinds: dict,
                   progress_token: str) -> dict[str, np.ndarray]:
    from .io.rasters import configure_gdal
    from .process import compute_task

    if task is None:
        arrays = {name: np.full((1, *shape_yx), nodata, dtype=dtype) for name, (dtype, nodata) in kinds.items()}
    else:
        configure_gdal(s3=any(href.startswith("s3://") for obs in task.observations for _, href in obs.hrefs))
        result = compute_task(task, recipe)
        arrays = {name: result.arrays[name].astype(kinds[name][0], copy=False)[None] for name in kinds}
    _Counter.tick(progress_token)
    return arrays
