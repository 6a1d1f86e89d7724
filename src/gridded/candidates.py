"""What planning needs of an item, without its STAC document: one row of planning columns per item,
and one layout per kind of item (its assets less their hrefs, and the few properties that decide
how its bands read), resolved against a recipe once per layout instead of once per item.

A continent's index holds millions of items but a few layouts: every Sentinel-2 L2A item of Earth
Search has the same assets, bands and encodings but for its hrefs and processing baseline. So the
index stores per item only what varies (times, platform, tile, footprint, hrefs) and planning
builds no pystac object per item.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import operator
import struct
from datetime import UTC, datetime
from operator import itemgetter
from typing import NamedTuple

import shapely
from shapely.geometry import box, shape

from .errors import SourceError

# The properties that decide how an item's bands read (see assets.py): they belong to its layout.
LAYOUT_PROPERTIES = ("s2:processing_baseline", "earthsearch:boa_offset_applied", "landsat:correction")
# The asset fields that decide which asset a band is and how its values read; the rest (hrefs,
# proj:transform, file:size, checksums, statistics) varies per item and stays out of the layout.
LAYOUT_ASSET_FIELDS = ("type", "roles", "bands", "eo:bands", "raster:bands", "nodata", "data_type")
PER_ITEM_BAND_FIELDS = ("statistics", "histogram")
TILE_PROPERTIES = ("s2:mgrs_tile", "grid:code", "landsat:wrs_path_row")


class Candidate(NamedTuple):
    """One item as planning sees it (the columns of the index, in this order)."""

    id: str
    collection: str
    time: str  # the item's datetime (or start_datetime), UTC, fixed width: text order is time order
    updated: str
    platform: str  # lower-case: providers spell platforms differently
    tile: str  # MGRS tile, grid code or WRS path/row, upper-case without `MGRS-`; "" when none
    baseline: float  # Sentinel-2 processing baseline, 0 when none
    minx: float
    miny: float
    maxx: float
    maxy: float
    geometry: bytes  # the lon/lat footprint as WKB
    self_href: str | None
    hrefs: str  # "key\thref\n" per asset, absolute
    layout: str  # digest of the layout

    def href_map(self) -> dict[str, str]:
        return dict(line.split("\t", 1) for line in self.hrefs.split("\n") if line)

    @property
    def datetime(self) -> datetime:
        return datetime.fromisoformat(self.time)

    def supersedes(self, other: Candidate) -> bool:
        """Whether this item is a later processing of the same acquisition than `other`."""
        return (self.baseline, self.updated, self.id) > (other.baseline, other.updated, other.id)


def utc_text(value) -> str:
    """ISO text (or a datetime) in UTC with a fixed width, so text comparison is time comparison."""
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    return when.isoformat(timespec="microseconds")  # e.g. 2024-01-02T03:04:05.000000+00:00


def layout_of(doc: dict) -> tuple[str, dict]:
    """(digest, layout) of an item document: its collection, the band-deciding properties and its
    assets with only the band-deciding fields. Items of a kind share one layout; the last few
    layouts seen are kept, so that an item like them costs a comparison, not a serialisation."""
    props = doc.get("properties") or {}
    assets = doc.get("assets") or {}
    collection = doc.get("collection") or ""
    kept_props = {p: props[p] for p in LAYOUT_PROPERTIES if p in props}
    signature = (collection, tuple(assets), repr(kept_props))
    for digest, layout in _LAYOUTS.get(signature, ()):
        if _same_assets(assets, layout["assets"]):
            return digest, layout
    stripped = {}
    for key, asset in assets.items():
        if not isinstance(asset, dict):
            continue
        fields = {f: asset[f] for f in LAYOUT_ASSET_FIELDS if f in asset}
        for f in ("bands", "eo:bands", "raster:bands"):
            if isinstance(fields.get(f), list):
                fields[f] = [{k: v for k, v in e.items() if k not in PER_ITEM_BAND_FIELDS} if isinstance(e, dict)
                             else e for e in fields[f]]
        stripped[key] = fields
    layout = {"collection": collection, "properties": kept_props, "assets": stripped}
    text = json.dumps(layout, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:20]
    seen = _LAYOUTS.setdefault(signature, [])
    seen.insert(0, (digest, layout))
    del seen[_LAYOUTS_KEPT:]
    if len(_LAYOUTS) > 4 * _LAYOUTS_KEPT:
        _LAYOUTS.clear()
    return digest, layout


_LAYOUTS: dict[tuple, list[tuple[str, dict]]] = {}
_LAYOUTS_KEPT = 64


def _same_assets(assets: dict, layout_assets: dict) -> bool:
    """Whether an item's assets have the layout's band-deciding fields, exactly."""
    for key, asset in assets.items():
        known = layout_assets.get(key)
        if known is None or not isinstance(asset, dict):
            return False
        for f in LAYOUT_ASSET_FIELDS:
            if asset.get(f) != known.get(f):
                return False
    return True


def candidate_of(doc: dict, *, base: str | None = None, self_href: str | None = None) -> tuple[Candidate, dict]:
    """The planning row and layout of an item document. Relative asset hrefs resolve against
    `base` (the item's own file, or the file listing it; by default its self link); `self_href`
    is its own file when it has one. An item without a time or a footprint is a SourceError."""
    item_id = doc.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise SourceError("an item without an id")
    props = doc.get("properties")
    if not isinstance(props, dict):
        raise SourceError(f"item {item_id}: no properties")
    when = props.get("datetime") or props.get("start_datetime")
    if not when:
        raise SourceError(f"item {item_id}: no datetime nor start_datetime/end_datetime")
    try:
        time = utc_text(when)
        wkb, (minx, miny, maxx, maxy) = _footprint(doc.get("geometry"), doc.get("bbox"))
    except (SourceError, ValueError, TypeError, KeyError, AttributeError, shapely.errors.GEOSException) as err:
        raise SourceError(f"item {item_id}: {err}") from err
    self_href = self_href or next((link.get("href") for link in doc.get("links") or ()
                                   if isinstance(link, dict) and link.get("rel") == "self"), None)
    base = base or self_href
    lines = []
    for key, asset in (doc.get("assets") or {}).items():
        href = asset.get("href") if isinstance(asset, dict) else None
        if isinstance(href, str) and href and "\t" not in key + href and "\n" not in key + href:
            lines.append(f"{key}\t{_absolute(href, base)}")
    tile = next((str(props[p]) for p in TILE_PROPERTIES if props.get(p)), "")
    try:
        baseline = float(props.get("s2:processing_baseline") or 0)
    except (TypeError, ValueError):
        baseline = 0.0
    digest, layout = layout_of(doc)
    platform = props.get("platform", props.get("constellation", ""))
    return Candidate(
        id=item_id, collection=str(doc.get("collection") or ""), time=time, updated=str(props.get("updated", "")),
        platform=str(platform or "").strip().lower(), tile=tile.upper().removeprefix("MGRS-"), baseline=baseline,
        minx=minx, miny=miny, maxx=maxx, maxy=maxy, geometry=wkb,
        self_href=self_href or None, hrefs="\n".join(lines), layout=digest,
    ), layout


def _footprint(geometry, bbox) -> tuple[bytes, tuple[float, float, float, float]]:
    """(WKB, bounds) of an item's footprint: its geometry, else its bbox. A plain polygon (nearly
    every item) is packed straight from its coordinates, which is many times faster than making a
    shapely object per item; the rest goes through shapely."""
    if isinstance(geometry, dict) and geometry.get("type") == "Polygon":
        try:
            rings = [[(float(x), float(y)) for x, y in ring] for ring in geometry["coordinates"]]
            # closed, as shapely closes them
            rings = [ring if ring[0] == ring[-1] else [*ring, ring[0]] for ring in rings]
        except (TypeError, ValueError, KeyError, IndexError):
            rings = None  # shapely says what is wrong with it
        if rings and all(len(ring) >= 4 for ring in rings):
            xs, ys = zip(*rings[0], strict=True)
            bounds = (min(xs), min(ys), max(xs), max(ys))
            if all(math.isfinite(v) for v in bounds):
                parts = [struct.pack("<bII", 1, 3, len(rings))]
                for ring in rings:
                    parts.append(struct.pack(f"<I{2 * len(ring)}d", len(ring), *itertools.chain.from_iterable(ring)))
                return b"".join(parts), bounds
    footprint = shape(geometry) if geometry else None
    if footprint is None:
        if not bbox or len(bbox) not in (4, 6):
            raise SourceError("no geometry or bbox")
        footprint = box(*(bbox[:2] + bbox[3:5] if len(bbox) == 6 else bbox))
    minx, miny, maxx, maxy = (float(v) for v in footprint.bounds)
    bounds = (minx, miny, maxx, maxy)
    if not all(math.isfinite(v) for v in bounds):
        raise SourceError("an empty or unbounded geometry")
    return shapely.to_wkb(footprint), bounds


def _absolute(href: str, base: str | None) -> str:
    if "://" in href or base is None:
        return href
    import pystac

    return pystac.utils.make_absolute_href(href, base)


def candidate_of_item(item) -> tuple[Candidate, dict]:
    """The planning row and layout of a pystac Item (its asset hrefs made absolute first)."""
    doc = {
        "id": item.id, "collection": item.collection_id, "geometry": item.geometry, "bbox": item.bbox,
        "properties": {**item.properties, "datetime": item.properties.get("datetime")
                       or (item.datetime.isoformat() if item.datetime else None)},
        "assets": {key: {**asset.extra_fields, "href": asset.get_absolute_href() or asset.href,
                         **({"type": asset.media_type} if asset.media_type else {}),
                         **({"roles": list(asset.roles)} if asset.roles else {})}
                   for key, asset in item.assets.items()},
        "links": [{"rel": "self", "href": item.get_self_href()}] if item.get_self_href() else [],
    }
    return candidate_of(doc)


# Positions of the fields planning reads in its hot loops, where a row of the index (a plain
# tuple in Candidate's order) is not made a Candidate
ID, COLLECTION, TIME, UPDATED, PLATFORM, TILE, BASELINE, MINX, MINY, MAXX, MAXY, GEOMETRY = range(12)
_IN_ORDER = itemgetter(TIME, ID)


def drop_superseded(candidates: list) -> list:
    """The candidates (Candidates, or rows in their order) less those another one of their
    collection reprocesses: the same platform, tile and acquisition time (Earth Search lists ESA's
    reprocessings of Sentinel-2 as `_1_` beside `_0_`), of which the latest processing baseline
    (then the latest `updated`, then id) is kept. Candidates naming no tile are all kept. In time
    then id order (the input itself when it is in that order and nothing is dropped)."""
    kept: dict[tuple, tuple] = {}
    n_rest = 0
    for c in candidates:
        if not c[TILE]:
            n_rest += 1
            continue
        key = (c[COLLECTION], c[PLATFORM], c[TILE], c[TIME])
        held = kept.get(key)
        if held is None or (c[BASELINE], c[UPDATED], c[ID]) > (held[BASELINE], held[UPDATED], held[ID]):
            kept[key] = c
    if n_rest + len(kept) == len(candidates):
        keys = list(map(_IN_ORDER, candidates))
        if all(map(operator.le, keys, itertools.islice(keys, 1, None))):  # in order already (an index's rows)
            return candidates
    winners = {id(c) for c in kept.values()}
    return sorted((c for c in candidates if not c[TILE] or id(c) in winners), key=_IN_ORDER)
