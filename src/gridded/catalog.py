"""The output root's catalog.json and collection.json, rebuilt from the items that exist."""

from __future__ import annotations

import json
from datetime import datetime

import pystac

from . import __version__
from .io.storage import Storage, get_many, open_storage, put_if_changed

ITEM_SUFFIX = ".stac-item.json"


def write_catalog(storage: Storage | str, *, collection_id: str | None = None, description: str | None = None,
                  license: str | None = None) -> int:
    """Rebuild catalog.json and collection.json from every committed item; returns the item count.
    `storage` is an output root (a path or s3:// URI) or its Storage. The collection describes the
    product: extent of all items, summaries (bands, gsd, platforms, statistic, period), item_assets,
    the processing provider, the licence (`license`, else the collection's, else "other").

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
    summary = _Summary()
    links = []
    # the items and the two documents as they are, read at once (on S3 each read is a round trip)
    *bodies, old_collection, old_catalog = get_many(storage, [*names, "collection.json", "catalog.json"])
    for name, body in zip(names, bodies):
        if body is None:  # listed, then gone (replaced by a concurrent writer): read it again
            body = storage.get_bytes(name)
        item = json.loads(body)
        summary.add(item)
        links.append(pystac.Link("item", f"./{name}", media_type=pystac.MediaType.GEOJSON, title=item.get("id")))
    cid = collection_id or (sorted(summary.collections)[0] if summary.collections else "gridded")
    collection = pystac.Collection(
        id=cid,
        description=description or f"{cid}: composites written by gridded {__version__}",
        extent=summary.extent(),
        license=license or _existing_license(old_collection) or "other",
        providers=[pystac.Provider(name="gridded", roles=[pystac.ProviderRole.PROCESSOR],
                                   description=f"composites computed by gridded {__version__}",
                                   extra_fields={"processing:software": {"gridded": __version__}})],
        summaries=pystac.Summaries(summary.summaries()),
        stac_extensions=list(COLLECTION_EXTENSIONS),
        extra_fields={"item_assets": summary.item_assets},
    )
    collection.add_links(links)
    collection.add_link(pystac.Link("root", "./catalog.json", media_type=pystac.MediaType.JSON, title=f"{cid} catalog"))
    collection.add_link(pystac.Link("parent", "./catalog.json", media_type=pystac.MediaType.JSON,
                                    title=f"{cid} catalog"))
    catalog = pystac.Catalog(id=f"{cid}-catalog", description=f"Outputs of gridded pipeline {cid}")
    catalog.add_link(pystac.Link("child", "./collection.json", media_type=pystac.MediaType.JSON, title=cid))
    catalog.add_link(pystac.Link("root", "./catalog.json", media_type=pystac.MediaType.JSON, title=f"{cid} catalog"))
    col_doc = collection.to_dict(include_self_link=False, transform_hrefs=False)
    cat_doc = catalog.to_dict(include_self_link=False, transform_hrefs=False)
    put_if_changed(storage, "collection.json", json.dumps(col_doc, indent=1).encode(), existing=old_collection)
    put_if_changed(storage, "catalog.json", json.dumps(cat_doc, indent=1).encode(), existing=old_catalog)
    return len(names)


COLLECTION_EXTENSIONS = [
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
]
# what an item_assets entry keeps of an asset: what every item's asset of that key shares
ITEM_ASSET_FIELDS = ("type", "roles", "title", "eo:bands")


class _Summary:
    """What the collection says of all its items, gathered item by item."""

    def __init__(self) -> None:
        self.bboxes: list[list[float]] = []
        self.starts: list[str] = []
        self.ends: list[str] = []
        self.collections: set[str] = set()
        self.values: dict[str, set] = {"gsd": set(), "platform": set(), "gridded:statistic": set(),
                                       "gridded:period": set(), "proj:epsg": set()}
        self.item_assets: dict[str, dict] = {}
        self.bands: dict[str, dict] = {}

    def add(self, item: dict) -> None:
        props = item.get("properties", {})
        self.bboxes.append(item["bbox"])
        self.starts.append(props.get("start_datetime") or props.get("datetime"))
        self.ends.append(props.get("end_datetime") or props.get("datetime"))
        if item.get("collection"):
            self.collections.add(item["collection"])
        for key in ("gsd", "gridded:statistic", "proj:epsg"):
            if props.get(key) is not None:
                self.values[key].add(props[key])
        period = str(props.get("gridded:pipeline", {}).get("period", ""))
        if period:
            self.values["gridded:period"].add(period)
        self.values["platform"].update(props.get("gridded:platforms", []))
        for key, asset in item.get("assets", {}).items():
            entry = {f: asset[f] for f in ITEM_ASSET_FIELDS if f in asset}
            raster = asset.get("raster:bands")
            if raster:  # the encoding, not the statistics (those are the item's own)
                entry["raster:bands"] = [{k: v for k, v in raster[0].items() if k != "statistics"}]
            self.item_assets.setdefault(key, entry)
            for band in asset.get("eo:bands", []):
                self.bands.setdefault(band.get("name", key), band)

    def extent(self) -> pystac.Extent:
        if not self.bboxes:
            unbounded: list[list[datetime | None]] = [[None, None]]
            return pystac.Extent(pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]), pystac.TemporalExtent(unbounded))
        bboxes = self.bboxes
        spatial = [[min(b[0] for b in bboxes), min(b[1] for b in bboxes),
                    max(b[2] for b in bboxes), max(b[3] for b in bboxes)]]
        return pystac.Extent(pystac.SpatialExtent(spatial),
                             pystac.TemporalExtent([[_parse(min(self.starts)), _parse(max(self.ends))]]))

    def summaries(self) -> dict:
        found = {key: sorted(values) for key, values in self.values.items() if values}
        if self.bands:
            found["eo:bands"] = list(self.bands.values())
        return found


def _existing_license(collection: bytes | None) -> str | None:
    if collection is None:
        return None
    try:
        return json.loads(collection).get("license")
    except (ValueError, AttributeError):
        return None


def make_relative(storage: Storage | str) -> int:
    """Rewrite every item of an output root with hrefs relative to itself (and no self link), so the
    folder is a self-contained catalog to copy anywhere; returns the items rewritten."""
    if isinstance(storage, str):
        storage = open_storage(storage)
    names = storage.list(ITEM_SUFFIX)
    for name in names:
        item = json.loads(storage.get_bytes(name))
        folder = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
        for asset in item.get("assets", {}).values():
            filename = asset["href"].rsplit("/", 1)[-1]
            if storage.exists(folder + filename):  # its file is beside the item, wherever it was written
                asset["href"] = "./" + filename
        item["links"] = [link for link in item.get("links", []) if link.get("rel") != "self"]
        storage.put_bytes(name, json.dumps(item, indent=1).encode())
    return len(names)


def _parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))
