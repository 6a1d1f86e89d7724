"""A task's outputs as a STAC item that the common loaders read with no extra arguments (odc-stac,
stackstac, GDAL's STACIT, QGIS): `datetime` set, `proj:epsg` beside `proj:code`, absolute asset
hrefs, every band described (`eo:bands` from the sources, `raster:bands` with scale, offset and
statistics), a thumbnail, provenance and the input fingerprint."""

from __future__ import annotations

import copy
import math
import os
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pystac

from . import __version__
from .compute.geomedian import MADS
from .grid import cell_outline_lonlat
from .io.s3 import is_remote
from .pipeline import Pipeline
from .plan import Task

COUNT_ASSET = "count"  # observations clear in every band
OBSERVED_ASSET = "observed"  # observations with a value in every band, clear or not
COUNT_NODATA = 0
DATE_ASSET = "date"  # a mosaic's: days since the period's start of the observation each pixel is from
DATE_NODATA = -1
THUMBNAIL_ASSET = "thumbnail"
STAC_EXTENSIONS = [
    # projection v1.2.0 is the version that has both proj:code and proj:epsg (stackstac, and GDAL
    # before 3.7, read only the latter; v2.0.0 dropped it)
    "https://stac-extensions.github.io/projection/v1.2.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
]
# eo v1.1.0's common names: a source's other names are kept as `name` only
EO_COMMON_NAMES = frozenset({"coastal", "blue", "green", "red", "rededge", "yellow", "pan", "nir", "nir08", "nir09",
                             "cirrus", "swir16", "swir22", "lwir", "lwir11", "lwir12"})


def cell_prefix(task: Task) -> str:
    x, y = task.key
    return f"x{x}/y{y}/{task.period.label}"


def item_id(pipeline: Pipeline, task: Task) -> str:
    """The item's id, in lower case as STAC ids usually are (`2024-01--p1m`)."""
    x, y = task.key
    return f"{pipeline.name}_x{x}_y{y}_{task.period.label}".lower()


def item_name(pipeline: Pipeline, task: Task) -> str:
    """Where a task's item lives under the output root: its commit marker."""
    return f"{cell_prefix(task)}/{item_id(pipeline, task)}.stac-item.json"


def asset_name(pipeline: Pipeline, task: Task, asset: str) -> str:
    suffix = ".png" if asset == THUMBNAIL_ASSET else ".tif"
    return f"{cell_prefix(task)}/{item_id(pipeline, task)}_{asset}{suffix}"


def band_statistics(array: np.ndarray, nodata) -> dict:
    """raster:bands statistics of the stored values: minimum, maximum, mean, stddev, valid_percent
    (of the values that are not nodata, nor NaN or infinite), in one kernel's two passes."""
    from .compute._jit import summarise, summarise_narrow
    from .compute.arrays import is_float_dtype, sentinel_for

    values = np.ascontiguousarray(array).reshape(-1)
    if values.dtype == np.bool_:
        values = values.view(np.uint8)
    sentinel, use = sentinel_for(values.dtype, nodata)
    if np.issubdtype(values.dtype, np.integer) and values.dtype.itemsize <= 2 and values.size < 2**30:
        n, low, high, total, squares = summarise_narrow(values, sentinel, use)  # exact sums
        mean = total / n if n else 0.0
        std = math.sqrt((n * squares - total * total) / (n * n)) if n else 0.0  # Python's integers: exact
    else:
        n, low, high, mean, std = summarise(values, sentinel, use, is_float_dtype(values.dtype))
    stats = {"valid_percent": round(100.0 * n / values.size, 4) if values.size else 0.0}
    if n:
        stats.update(minimum=float(low), maximum=float(high), mean=float(mean), stddev=float(std))
    return stats


def eo_band(description: dict, band: str) -> dict:
    """An eo:bands entry (eo v1.1.0) from a source's band description (STAC 1.0 or 1.1 spelling)."""
    entry: dict[str, Any] = {"name": str(description.get("name") or band)}
    common = description.get("common_name") or description.get("eo:common_name")
    if common in EO_COMMON_NAMES:
        entry["common_name"] = common
    for field in ("center_wavelength", "full_width_half_max"):
        value = description.get(field, description.get(f"eo:{field}"))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            entry[field] = value
    if description.get("description"):
        entry["description"] = str(description["description"])
    return entry


def _nodata_field(nodata):
    if nodata is None:
        return None
    if isinstance(nodata, float) and math.isnan(nodata):
        return "nan"
    return nodata.item() if hasattr(nodata, "item") else nodata


def build_item(*, pipeline: Pipeline, task: Task, assets: dict[str, tuple[np.dtype, float | None]],
               hrefs: dict[str, str], self_href: str, fingerprint: str, statistics: dict[str, dict] | None = None,
               extra: dict | None = None) -> dict:
    """The STAC item of a task's outputs (`hrefs`: asset key -> where it was written, absolute)."""
    geobox = task.geobox
    crs = geobox.crs
    assert crs is not None  # a grid's cells are in its CRS
    geometry, bbox = cell_outline_lonlat(geobox)
    epsg = crs.epsg
    resolution = abs(geobox.resolution.x)
    item = pystac.Item(
        id=item_id(pipeline, task),
        geometry=copy.deepcopy(geometry),
        bbox=list(bbox),
        datetime=task.period.start,  # what loaders put on the time axis: the period's start
        start_datetime=task.period.start,
        end_datetime=task.period.end,
        properties={},
        collection=pipeline.name,
        stac_extensions=list(STAC_EXTENSIONS),
    )
    platforms = sorted({o.platform for o in task.observations if o.platform})
    props = item.properties
    props.update({
        "created": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "proj:epsg": epsg,
        "proj:code": f"EPSG:{epsg}" if epsg else None,
        "proj:shape": list(geobox.shape),
        "proj:transform": list(geobox.affine)[:6],
        "proj:bbox": list(geobox.boundingbox),
        "processing:software": {"gridded": __version__},
        "gridded:pipeline": pipeline.parameters(),
        "gridded:version": __version__,
        "gridded:statistic": pipeline.statistic,
        "gridded:period": task.period.label,
        "gridded:cell": list(task.key),
        "gridded:platforms": platforms,
        "gridded:inputs": [o.item_id for o in task.observations],
        "gridded:fingerprint": fingerprint,
    })
    if crs.units[0] in ("metre", "meter", "m"):
        props["gsd"] = resolution
    if len(platforms) == 1:
        props["platform"] = platforms[0]
    if epsg is None:
        props["proj:wkt2"] = crs.to_wkt()
    image = os.environ.get("GRIDDED_IMAGE")
    if image:
        props["gridded:image"] = image
    if extra:
        props.update(extra)
    for key, (dtype, nodata) in assets.items():
        item.add_asset(key, data_asset(pipeline, key, dtype, nodata, hrefs[key], resolution,
                                       (statistics or {}).get(key)))
    if THUMBNAIL_ASSET in hrefs:
        item.add_asset(THUMBNAIL_ASSET, pystac.Asset(href=hrefs[THUMBNAIL_ASSET], media_type=pystac.MediaType.PNG,
                                                     roles=["thumbnail"], title="thumbnail (256 px)"))
    for obs in task.observations:
        if obs.self_href:
            href = obs.self_href if is_remote(obs.self_href) or obs.self_href.startswith("file:") else \
                f"file://{os.path.abspath(obs.self_href)}"
            item.add_link(pystac.Link("derived_from", href, media_type=pystac.MediaType.JSON, title=obs.item_id))
    depth = "../../../"
    item.add_link(pystac.Link("root", f"{depth}catalog.json", media_type=pystac.MediaType.JSON,
                              title=f"{pipeline.name} catalog"))
    item.add_link(pystac.Link("parent", f"{depth}collection.json", media_type=pystac.MediaType.JSON,
                              title=pipeline.name))
    item.add_link(pystac.Link("collection", f"{depth}collection.json", media_type=pystac.MediaType.JSON,
                              title=pipeline.name))
    doc = item.to_dict(include_self_link=False, transform_hrefs=False)
    # absolute: the item names where it is, so its relative links resolve wherever it is read from
    doc["links"].append({"rel": "self", "href": self_href, "type": pystac.MediaType.GEOJSON, "title": item.id})
    return doc


def data_asset(pipeline: Pipeline, key: str, dtype, nodata, href: str, resolution: float,
               statistics: dict | None) -> pystac.Asset:
    """One COG of an item: a band of the statistic, the clear count or a statistic's extra layer."""
    band = {"data_type": np.dtype(dtype).name, "spatial_resolution": resolution}
    if _nodata_field(nodata) is not None:
        band["nodata"] = _nodata_field(nodata)
    layer, _ = asset_layer(pipeline, key)
    scale, offset = asset_encoding(pipeline, key)
    if (scale, offset) != (1.0, 0.0):  # how the stored values become the physical quantity
        band.update(scale=scale, offset=offset)
    if statistics:
        band["statistics"] = statistics
    extra = {"raster:bands": [band]}
    if layer in pipeline.reduced_bands:
        extra["eo:bands"] = [eo_band(pipeline.description(layer), layer)]
    return pystac.Asset(href=href, media_type=pystac.MediaType.COG, roles=["data"], title=asset_title(pipeline, key),
                        extra_fields=extra)


def asset_key(pipeline: Pipeline, statistic: str, layer: str) -> str:
    """The asset of a band, index or extra layer under a statistic: its own name for the first
    statistic (what single-statistic outputs always had), `{name}_{statistic}` for the others."""
    return layer if statistic == pipeline.statistics[0] else f"{layer}_{statistic}"


def asset_layer(pipeline: Pipeline, key: str) -> tuple[str, str]:
    """(band, index or extra layer; statistic) of an asset key; (key, "") for the counts."""
    for statistic in pipeline.statistics:
        for layer in (*pipeline.layers, DATE_ASSET, *MADS):
            if asset_key(pipeline, statistic, layer) == key:
                return layer, statistic
    return key, ""


def asset_encoding(pipeline: Pipeline, key: str) -> tuple[float, float]:
    """(scale, offset) of an asset's stored values: its band's, for every statistic but std (a
    spread takes the scale, not the offset); indices, counts and dates are stored as they are."""
    layer, statistic = asset_layer(pipeline, key)
    if layer not in pipeline.reduced_bands:
        return 1.0, 0.0
    scale, offset = pipeline.encoding(layer)
    return (scale, 0.0) if statistic == "std" else (scale, offset)


def asset_title(pipeline: Pipeline, key: str) -> str:
    """How an asset is named to people (STAC Browser, QGIS's band description)."""
    if key == COUNT_ASSET:
        return "clear observations"
    if key == OBSERVED_ASSET:
        return "observations with a value, clear or not"
    layer, statistic = asset_layer(pipeline, key)
    if layer == DATE_ASSET:
        return f"date of the {statistic} observation (days since the period's start)"
    if layer in pipeline.layers:
        return f"{layer} ({statistic} of clear observations)"
    return f"{layer} ({statistic})"
