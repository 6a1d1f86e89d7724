"""Arrays -> COGs + one STAC item per (cell, period), COGs first and the item last, create-only."""

from __future__ import annotations

import copy
import json
import math
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac

from . import __version__
from .errors import Interrupted
from .grid import cell_outline_lonlat
from .io.cog import write_cog
from .io.s3 import is_remote
from .io.storage import Storage
from .pipeline import Pipeline
from .plan import Task

COUNT_ASSET = "count"
COUNT_NODATA = 0
STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
]


def cell_prefix(task: Task) -> str:
    x, y = task.key
    return f"x{x}/y{y}/{task.period.label}"


def item_id(pipeline: Pipeline, task: Task) -> str:
    x, y = task.key
    return f"{pipeline.name}_x{x}_y{y}_{task.period.label}"


def item_name(pipeline: Pipeline, task: Task) -> str:
    """Where a task's item lives under the output root: its commit marker."""
    return f"{cell_prefix(task)}/{item_id(pipeline, task)}.stac-item.json"


def asset_name(pipeline: Pipeline, task: Task, asset: str) -> str:
    return f"{cell_prefix(task)}/{item_id(pipeline, task)}_{asset}.tif"


def build_item(*, pipeline: Pipeline, task: Task, assets: dict[str, tuple[np.dtype, float | None]],
               fingerprint: str, extra: dict | None = None) -> dict:
    """The STAC item of a task's outputs: times, proj:*, raster:bands, provenance, input links."""
    geobox = task.geobox
    geometry, bbox = cell_outline_lonlat(geobox)
    epsg = geobox.crs.epsg
    item = pystac.Item(
        id=item_id(pipeline, task),
        geometry=copy.deepcopy(geometry),
        bbox=list(bbox),
        datetime=None,
        start_datetime=task.period.start,
        end_datetime=task.period.end,
        properties={},
        collection=pipeline.name,
        stac_extensions=list(STAC_EXTENSIONS),
    )
    props = item.properties
    props.update({
        "created": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
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
        "gridded:inputs": [o.item_id for o in task.observations],
        "gridded:fingerprint": fingerprint,
    })
    if epsg is None:
        props["proj:code"] = None
        props["proj:wkt2"] = geobox.crs.to_wkt()
    image = os.environ.get("GRIDDED_IMAGE")
    if image:
        props["gridded:image"] = image
    if extra:
        props.update(extra)
    for key, (dtype, nodata) in assets.items():
        band = {"data_type": np.dtype(dtype).name, "spatial_resolution": abs(geobox.resolution.x)}
        if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
            band["nodata"] = nodata.item() if hasattr(nodata, "item") else nodata
        elif nodata is not None:
            band["nodata"] = "nan"
        scale, offset = pipeline.encoding(key)
        if (scale, offset) != (1.0, 0.0):  # how the stored values become the physical quantity
            band.update(scale=scale, offset=offset)
        item.add_asset(key, pystac.Asset(
            href=f"./{Path(asset_name(pipeline, task, key)).name}",
            media_type=pystac.MediaType.COG,
            roles=["data"],
            title="clear observations" if key == COUNT_ASSET else key,
            extra_fields={"raster:bands": [band]},
        ))
    for obs in task.observations:
        if obs.self_href and is_remote(obs.self_href):
            item.add_link(pystac.Link("derived_from", obs.self_href, media_type=pystac.MediaType.JSON))
        elif obs.self_href:
            item.add_link(pystac.Link("derived_from", Path(obs.self_href).as_uri(), media_type=pystac.MediaType.JSON))
    depth = "../../../"
    item.add_link(pystac.Link("root", f"{depth}catalog.json", media_type=pystac.MediaType.JSON))
    item.add_link(pystac.Link("parent", f"{depth}collection.json", media_type=pystac.MediaType.JSON))
    item.add_link(pystac.Link("collection", f"{depth}collection.json", media_type=pystac.MediaType.JSON))
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def commit_outputs(storage: Storage, *, pipeline: Pipeline, task: Task, arrays: dict[str, np.ndarray],
                   nodata: dict[str, float | None], fingerprint: str, replace: bool,
                   extra: dict | None = None) -> str:
    """Write each COG whole, then the item: create-only, or replacing a stale one. Returns 'done'."""
    geobox = task.geobox
    for key, array in arrays.items():
        name = asset_name(pipeline, task, key)
        path = storage.scratch_path(name)
        try:
            write_cog(path, array, geobox, nodata[key], encoding=pipeline.encoding(key))
            crash_point("cog-written")
            storage.put_file(name, path)
        finally:
            path.unlink(missing_ok=True)
    crash_point("cogs-committed")
    if COMMITS_STOPPED.is_set():  # the run is stopping: its catalog is being written without this cell
        raise Interrupted("stopped before committing its item; a rerun computes it")
    item = build_item(pipeline=pipeline, task=task, fingerprint=fingerprint, extra=extra,
                      assets={k: (a.dtype, nodata[k]) for k, a in arrays.items()})
    body = json.dumps(item, indent=1).encode()
    name = item_name(pipeline, task)
    if replace:
        storage.put_bytes(name, body)
    elif not storage.create_only(name, body):
        # someone committed this cell first (another worker, or our own retried PUT whose answer
        # was lost): theirs stands if it is for the same inputs
        theirs = json.loads(storage.get_bytes(name))
        if theirs.get("properties", {}).get("gridded:fingerprint") != fingerprint:
            storage.put_bytes(name, body)
    crash_point("item-committed")
    return "done"


# Set when a run is interrupted in this process: tasks still running commit no more items, so
# the catalog written on the way out lists everything committed
COMMITS_STOPPED = threading.Event()


def crash_point(phase: str) -> None:
    """Fault injection for the crash tests: die here, as a SIGKILL would, when GRIDDED_CRASH_AT names
    this phase (cog-written, cogs-committed, item-committed)."""
    if os.environ.get("GRIDDED_CRASH_AT") == phase:
        os._exit(137)
