"""Arrays -> COGs, a thumbnail and one STAC item per (cell, period): the files first, the item last
(create-only: it is the commit marker)."""

from __future__ import annotations

import json
import os
import threading

import numpy as np

from .errors import Interrupted
from .io.cog import write_cog
from .io.storage import Storage
from .items import THUMBNAIL_ASSET, asset_encoding, asset_name, asset_title, band_statistics, build_item, item_name
from .pipeline import Pipeline
from .plan import Task
from .thumbnail import thumbnail_rgba, write_png


def commit_outputs(storage: Storage, *, pipeline: Pipeline, task: Task, arrays: dict[str, np.ndarray],
                   nodata: dict[str, float | None], fingerprint: str, replace: bool,
                   extra: dict | None = None) -> str:
    """Write each COG whole and the thumbnail, then the item: create-only, or replacing a stale one.
    Returns 'done'."""
    geobox = task.geobox
    hrefs, statistics = {}, {}
    for key, array in arrays.items():
        name = asset_name(pipeline, task, key)
        statistics[key] = band_statistics(array, nodata[key])
        _put_built(storage, name, lambda path, key=key, array=array: write_cog(
            path, array, geobox, nodata[key], encoding=asset_encoding(pipeline, key),
            description=asset_title(pipeline, key)))
        hrefs[key] = storage.url(name)
    name = asset_name(pipeline, task, THUMBNAIL_ASSET)
    _put_built(storage, name, lambda path: write_png(path, thumbnail_rgba(arrays, nodata, pipeline.bands)))
    hrefs[THUMBNAIL_ASSET] = storage.url(name)
    crash_point("cogs-committed")
    if COMMITS_STOPPED.is_set():  # the run is stopping: its catalog is being written without this cell
        raise Interrupted("stopped before committing its item; a rerun computes it")
    name = item_name(pipeline, task)
    item = build_item(pipeline=pipeline, task=task, fingerprint=fingerprint, extra=extra, hrefs=hrefs,
                      self_href=storage.url(name), statistics=statistics,
                      assets={k: (a.dtype, nodata[k]) for k, a in arrays.items()})
    body = json.dumps(item, indent=1).encode()
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


def _put_built(storage: Storage, name: str, build) -> None:
    """Build a file in the storage's scratch place, then commit it whole under `name`."""
    path = storage.scratch_path(name)
    try:
        build(path)
        crash_point("cog-written")
        storage.put_file(name, path)
    finally:
        path.unlink(missing_ok=True)


# Set when a run is interrupted in this process: tasks still running commit no more items, so
# the catalog written on the way out lists everything committed
COMMITS_STOPPED = threading.Event()


def crash_point(phase: str) -> None:
    """Fault injection for the crash tests: die here, as a SIGKILL would, when GRIDDED_CRASH_AT names
    this phase (cog-written, cogs-committed, item-committed)."""
    if os.environ.get("GRIDDED_CRASH_AT") == phase:
        os._exit(137)
