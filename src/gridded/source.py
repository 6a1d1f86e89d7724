"""Static STAC catalogs and collections -> the items that match a place and a time."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import pystac
import pystac.stac_io
import pystac.utils
from shapely.geometry import box, shape

from .errors import ConfigError, GriddedError, SourceError
from .io.s3 import is_remote, with_retries
from .period import TimeRange

log = logging.getLogger(__name__)


class _StacIO(pystac.stac_io.DefaultStacIO):
    """pystac's reader, plus s3:// through boto3 (the same client, retries and errors as
    everything else), and HTTP reads retried while they fail transiently."""

    def read_text_from_href(self, href: str) -> str:
        if href.startswith("s3://"):
            from .io.storage import storage_for_file

            store, name = storage_for_file(href, source=True)
            return store.get_bytes(name).decode("utf-8")
        read = super().read_text_from_href

        def fetch() -> str:
            try:
                return read(href)
            except Exception as err:  # urllib3's errors are not OSErrors: one line for all of them
                reason = str(err).splitlines()[0][:200] if str(err) else err.__class__.__name__
                raise SourceError(f"{href}: cannot be read ({reason}); check the path or URL",
                                  retryable=transient_http(err)) from err

        if not is_remote(href):
            return fetch()
        return with_retries(fetch, what=href)


def transient_http(err: BaseException) -> bool:
    """Whether an HTTP read may succeed later: a 5xx or 429 status, or no answer at all (refused,
    reset, timed out), anywhere in the error's causes (pystac wraps urllib's errors)."""
    import urllib.error

    while err is not None:
        if isinstance(err, urllib.error.HTTPError):
            return err.code >= 500 or err.code == 429
        if isinstance(err, (urllib.error.URLError, ConnectionError, TimeoutError)):
            return True
        err = err.__cause__ or err.__context__
    return False


def walk_items(source: str, on_bad, *, flag: str = "--source") -> list[pystac.Item]:
    """Every item under a static catalog, following child and item links one by one, so that a
    broken link or a bad item is reported to `on_bad(where, reason)` and the walk goes on."""
    stac_io = _StacIO()
    root = _catalog_href(source, flag=flag)
    items, seen, todo = [], set(), [root]
    while todo:
        href = todo.pop()
        if href in seen:
            continue
        seen.add(href)
        try:
            doc = json.loads(stac_io.read_text(href))
        except (OSError, ValueError, GriddedError) as err:
            if isinstance(err, GriddedError) and err.retryable:
                raise  # transient: the whole walk is worth retrying, not a link to count as broken
            if href == root:
                raise ConfigError(str(err)) from err
            on_bad(href, f"cannot be read ({err})")
            continue
        kind = doc.get("type") if isinstance(doc, dict) else None
        if kind == "Feature":
            try:
                item = pystac.Item.from_dict(doc, href=href, preserve_dict=False)
                item.set_self_href(href)
                items.append(item)
            except (pystac.STACError, KeyError, TypeError, ValueError) as err:
                on_bad(href, f"not a valid STAC item ({err})")
            continue
        if kind not in ("Catalog", "Collection"):
            on_bad(href, "not a STAC catalog, collection or item")
            continue
        for link in doc.get("links", []):
            if link.get("rel") in ("child", "item") and link.get("href"):
                todo.append(pystac.utils.make_absolute_href(link["href"], href))
    return sorted(items, key=lambda it: it.id)


def read_items(source: str) -> list[pystac.Item]:
    """Every item under a static catalog, collection or item collection: a path, file://, s3:// or https://."""
    href = _catalog_href(source)
    stac_io = _StacIO()
    try:
        text = stac_io.read_text(href)
    except GriddedError as err:  # the message starts with the href
        raise type(err)(f"--source {err}", retryable=err.retryable) from err
    except (OSError, ValueError) as err:
        raise ConfigError(f"--source {source}: cannot be read ({err}); check the path or URL") from err
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"--source {source}: not JSON ({err}); give a STAC catalog or collection") from err
    if not isinstance(doc, dict) or doc.get("type") not in ("Catalog", "Collection", "FeatureCollection", "Feature"):
        raise ConfigError(f"--source {source}: not a STAC catalog, collection or item collection "
                          f"(no STAC 'type'); give a catalog.json or collection.json")
    try:
        if doc["type"] == "FeatureCollection":
            return list(pystac.ItemCollection.from_dict(doc, preserve_dict=False).items)
        if doc["type"] == "Feature":
            return [pystac.Item.from_dict(doc, href=href)]
        root = pystac.read_dict(doc, href=href, stac_io=stac_io)
        return list(root.get_items(recursive=True))
    except GriddedError:
        raise
    except pystac.STACTypeError as err:
        raise ConfigError(f"--source {source}: not a valid STAC catalog, collection or item ({err}); "
                          f"give a STAC catalog.json or collection.json") from err
    except pystac.STACError as err:
        raise SourceError(f"--source {source}: {err}; fix the catalog's links or give another source") from err
    except (KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f"--source {source}: not a valid STAC document (missing or bad {err}); "
                          f"give a STAC catalog.json or collection.json") from err
    except (OSError, json.JSONDecodeError, ValueError) as err:
        raise SourceError(f"--source {source}: a linked file cannot be read ({err}); fix the catalog's links") from err


def _catalog_href(source: str, *, flag: str = "--source") -> str:
    """An absolute href of the catalog file; a local directory means its catalog.json or collection.json."""
    parsed = urlparse(source)
    if parsed.scheme in ("s3", "http", "https"):
        return source
    if parsed.scheme not in ("", "file") and len(parsed.scheme) != 1:
        raise ConfigError(f"{flag} {source}: scheme {parsed.scheme}:// is not supported; use a path, s3:// or https://")
    path = Path(parsed.path if parsed.scheme == "file" else source)
    if path.is_dir():
        for name in ("catalog.json", "collection.json"):
            if (path / name).is_file():
                return str((path / name).resolve())
    if not path.is_file():
        raise ConfigError(f"{flag} {source}: no such catalog file; give the path of a catalog.json or collection.json")
    return str(path.resolve())


def item_time(item: pystac.Item) -> datetime:
    """The item's datetime, or its start_datetime when datetime is null."""
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise SourceError(f"item {item.id}: no datetime nor start_datetime; fix the item")
    # normalised to datetime.timezone.utc: pystac gives dateutil's tzutc, which the artifact refuses
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


def items_for_query(items: list[pystac.Item], extent_lonlat, time: TimeRange,
                    collection: str | None = None) -> list[pystac.Item]:
    """The items whose footprint intersects the extent and whose time is in the range, by time then id."""
    region = extent_lonlat.geom
    selected = []
    for item in items:
        if collection is not None and item.collection_id != collection:
            continue
        when = item_time(item)
        if not time.start <= when <= time.end:
            continue
        footprint = shape(item.geometry) if item.geometry else (box(*item.bbox) if item.bbox else None)
        if footprint is None:
            log.warning("item %s has neither geometry nor bbox; skipped", item.id)
            continue
        if footprint.intersects(region):
            selected.append(item)
    return sorted(selected, key=lambda it: (item_time(it), it.id))


def find_asset(item: pystac.Item, band: str) -> tuple[str, pystac.Asset] | None:
    """The asset for a band name: the asset key, else an `eo:bands` name, else a common name."""
    lowered = band.lower()
    for key, asset in item.assets.items():
        if key.lower() == lowered:
            return key, asset
    for attr in ("name", "common_name"):
        for key, asset in item.assets.items():
            for entry in asset.extra_fields.get("eo:bands", []) + asset.extra_fields.get("bands", []):
                if str(entry.get(attr, "")).lower() == lowered or str(entry.get(f"eo:{attr}", "")).lower() == lowered:
                    return key, asset
    return None


def asset_raster_info(asset: pystac.Asset) -> tuple[str | None, float | None]:
    """(data_type, nodata) declared by the asset's `raster:bands`, or None for either."""
    bands = asset.extra_fields.get("raster:bands") or asset.extra_fields.get("bands") or [{}]
    first = bands[0] if bands else {}
    dtype = first.get("data_type")
    nodata = first.get("nodata", asset.extra_fields.get("nodata"))
    return dtype, (float(nodata) if isinstance(nodata, (int, float)) else None)


def read_ndjson(source: str, *, flag: str = "--source") -> list[pystac.Item]:
    """Newline-delimited JSON items (one STAC item per line); blank lines ignored."""
    text = _StacIO().read_text(_catalog_href(source, flag=flag))
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(pystac.Item.from_dict(json.loads(line), preserve_dict=False))
        except (json.JSONDecodeError, pystac.STACError, KeyError, TypeError, ValueError) as err:
            raise SourceError(f"{source} line {n}: not a STAC item ({err}); fix or remove the line") from err
    return items


def is_stac_api(source: str) -> bool:
    """An http(s) root whose landing page declares item search (a STAC API, not a static catalog)."""
    if urlparse(source).scheme not in ("http", "https"):
        return False
    try:
        doc = json.loads(_StacIO().read_text(source))
    except (OSError, ValueError):
        return False
    conforms = " ".join(doc.get("conformsTo", [])) if isinstance(doc, dict) else ""
    links = doc.get("links", []) if isinstance(doc, dict) else []
    return "item-search" in conforms or any(link.get("rel") == "search" for link in links)


def search_api(source: str, *, collection: str | None, bbox: list[float] | None, datetime_: str | None,
               progress=None, page_size: int = 500) -> list[pystac.Item]:
    """Every item a STAC API search returns, page after page (pystac-client follows the `next` links)."""
    import pystac_client

    try:
        client = pystac_client.Client.open(source)
        search = client.search(collections=[collection] if collection else None, bbox=bbox, datetime=datetime_,
                               limit=page_size)
        items = []
        for item in search.items():
            items.append(item)
            if progress and len(items) % page_size == 0:
                progress(f"{len(items)} items read from {source}")
        return items
    except pystac_client.exceptions.APIError as err:
        raise SourceError(f"{source}: the STAC API refused the search ({str(err).splitlines()[0][:200]}); "
                          f"check --collection, --bbox and --datetime") from err
    except OSError as err:
        raise ConfigError(f"{source}: the STAC API cannot be reached ({err.__class__.__name__}); check the URL") from err
