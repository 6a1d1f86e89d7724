"""The output root's catalog.json and collection.json, rebuilt from the items that exist."""

from __future__ import annotations

import json
from datetime import datetime

import pystac

from . import __version__
from .io.storage import Storage, open_storage

ITEM_SUFFIX = ".stac-item.json"


def write_catalog(storage: Storage | str, *, collection_id: str | None = None, description: str | None = None) -> int:
    """Rebuild catalog.json and collection.json from every committed item; returns the item count.
    `storage` is an output root (a path or s3:// URI) or its Storage.

    >>> from gridded import plan, process_batch, select
    >>> todo = plan(select(demo_catalog, extent=DEMO_EXTENT, time="2024-03", grid=str(DEMO_GRID), bands="red"))
    >>> _ = process_batch(todo.batches[0], todo.pipeline, str(tmp / "catalogued"))
    >>> write_catalog(str(tmp / "catalogued"))
    4

    Rebuilt from a listing rather than appended to, so concurrent writers never lose each
    other's links: the last writer's listing includes everyone's committed items.
    """
    if isinstance(storage, str):
        storage = open_storage(storage)
    names = storage.list(ITEM_SUFFIX)
    bboxes, starts, ends, ids = [], [], [], set()
    links = []
    for name in names:
        item = json.loads(storage.get_bytes(name))
        props = item.get("properties", {})
        bboxes.append(item["bbox"])
        starts.append(props.get("start_datetime") or props.get("datetime"))
        ends.append(props.get("end_datetime") or props.get("datetime"))
        ids.add(item.get("collection"))
        links.append(pystac.Link("item", f"./{name}", media_type=pystac.MediaType.GEOJSON))
    cid = collection_id or (sorted(i for i in ids if i)[0] if any(ids) else "gridded")
    if bboxes:
        spatial = [[min(b[0] for b in bboxes), min(b[1] for b in bboxes),
                    max(b[2] for b in bboxes), max(b[3] for b in bboxes)]]
        temporal = [[_parse(min(starts)), _parse(max(ends))]]
    else:
        spatial, temporal = [[-180.0, -90.0, 180.0, 90.0]], [[None, None]]
    collection = pystac.Collection(
        id=cid,
        description=description or f"{cid}: composites written by gridded {__version__}",
        extent=pystac.Extent(pystac.SpatialExtent(spatial), pystac.TemporalExtent(temporal)),
        license="other",
    )
    collection.add_links(links)
    collection.add_link(pystac.Link("root", "./catalog.json", media_type=pystac.MediaType.JSON))
    collection.add_link(pystac.Link("parent", "./catalog.json", media_type=pystac.MediaType.JSON))
    catalog = pystac.Catalog(id=f"{cid}-catalog", description=f"Outputs of gridded pipeline {cid}")
    catalog.add_link(pystac.Link("child", "./collection.json", media_type=pystac.MediaType.JSON))
    catalog.add_link(pystac.Link("root", "./catalog.json", media_type=pystac.MediaType.JSON))
    col_doc = collection.to_dict(include_self_link=False, transform_hrefs=False)
    cat_doc = catalog.to_dict(include_self_link=False, transform_hrefs=False)
    _put_if_changed(storage, "collection.json", json.dumps(col_doc, indent=1).encode())
    _put_if_changed(storage, "catalog.json", json.dumps(cat_doc, indent=1).encode())
    return len(names)


def _put_if_changed(storage: Storage, name: str, body: bytes) -> None:
    """A rerun that changed nothing writes nothing."""
    if storage.exists(name) and storage.get_bytes(name) == body:
        return
    storage.put_bytes(name, body)


def _parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))
