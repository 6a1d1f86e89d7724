"""Arrays -> COGs, a thumbnail and one STAC item per (cell, period): the files first, the item last
(create-only: it is the commit marker)."""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

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
    uploads = _Uploads(storage)
    for key, array in arrays.items():
        name = asset_name(pipeline, task, key)
        statistics[key] = band_statistics(array, nodata[key])
        uploads.put_built(name, lambda path, key=key, array=array: write_cog(
            path, array, geobox, nodata[key], encoding=asset_encoding(pipeline, key),
            description=asset_title(pipeline, key)))
        hrefs[key] = storage.url(name)
    name = asset_name(pipeline, task, THUMBNAIL_ASSET)
    uploads.put_built(name, lambda path: write_png(path, thumbnail_rgba(arrays, nodata, pipeline.layers)))
    hrefs[THUMBNAIL_ASSET] = storage.url(name)
    uploads.wait()  # every file committed before the item that points at them
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


# Uploads a worker keeps outstanding to an object store: each PUT waits a round trip and the
# store's write, not a CPU, so a task encodes its next COG while the last ones are sent
UPLOADS_IN_FLIGHT = 16
_UPLOADERS: dict[int, ThreadPoolExecutor] = {}
_UPLOADERS_LOCK = threading.Lock()


def _uploaders() -> ThreadPoolExecutor:
    pid = os.getpid()  # a forked worker starts its own
    with _UPLOADERS_LOCK:
        if pid not in _UPLOADERS:
            _UPLOADERS.clear()
            _UPLOADERS[pid] = ThreadPoolExecutor(UPLOADS_IN_FLIGHT, thread_name_prefix="gridded-put")
        return _UPLOADERS[pid]


class _Uploads:
    """A task's files, each built in the storage's scratch place on the task's thread, then
    committed whole under its name: on an object store by the worker's upload threads while the
    next is built, locally at once (a rename)."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self.remote = storage.uri.startswith("s3://")
        self.jobs: list[Future] = []

    def put_built(self, name: str, build) -> None:
        path = self.storage.scratch_path(name)
        try:
            build(path)
            crash_point("cog-written")
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if self.remote:
            self.jobs.append(_uploaders().submit(self._put, name, path))
        else:
            self._put(name, path)

    def _put(self, name: str, path) -> None:
        try:
            self.storage.put_file(name, path)
        finally:
            path.unlink(missing_ok=True)

    def wait(self) -> None:
        """Every upload finished; the first failure raised (after the others ended)."""
        errors = [job.exception() for job in self.jobs]
        self.jobs = []
        failed = [err for err in errors if err is not None]
        if failed:
            raise failed[0]


# Set when a run is interrupted in this process: tasks still running commit no more items, so
# the catalog written on the way out lists everything committed
COMMITS_STOPPED = threading.Event()


def crash_point(phase: str) -> None:
    """Fault injection for the crash tests: die here, as a SIGKILL would, when GRIDDED_CRASH_AT names
    this phase (cog-written, cogs-committed, item-committed)."""
    if os.environ.get("GRIDDED_CRASH_AT") == phase:
        os._exit(137)
