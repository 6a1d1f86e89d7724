"""STAC sources -> the items that match a place and a time: a static catalog or collection (walked
link by link), a saved search result (a FeatureCollection, or newline-delimited items, known by
content), one item, or a STAC API (searched once, page by page, through pystac-client).
Items come as they are read (`iter_items`), so a large source need not be held in memory."""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import pystac
import pystac.stac_io
import pystac.utils
from shapely.geometry import box, shape

from ._json import loads as loads_json
from .candidates import Candidate, candidate_of
from .errors import ConfigError, GriddedError, SourceError
from .io.s3 import is_remote, with_retries
from .period import TimeRange

log = logging.getLogger(__name__)

API_PAGE_SIZE = 500
# a search that returns more is a typo (the world for years) or a server paging forever
API_MAX_ITEMS = 2_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class ItemQuery:
    """What to ask a source for. Static sources are filtered here by collection, place and time;
    a STAC API is asked for all of it (and `query` / `filter`, which only an API understands)."""

    collections: tuple[str, ...] = ()
    bbox: tuple[float, float, float, float] | None = None  # lon/lat
    time: TimeRange | None = None
    query: tuple[str, ...] = ()  # STAC API query extension, e.g. "eo:cloud_cover<80"
    filter: str | None = None  # CQL2 text, or CQL2 JSON when it starts with "{"
    page_size: int = API_PAGE_SIZE
    max_items: int = API_MAX_ITEMS

    @property
    def datetime(self) -> str | None:
        if self.time is None:
            return None
        return (f"{self.time.start.isoformat().replace('+00:00', 'Z')}/"
                f"{self.time.end.isoformat().replace('+00:00', 'Z')}")


def names_of(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """None, "a,b", or ["a", "b,c"] -> ("a", "b", "c")."""
    if value is None:
        return ()
    parts = [value] if isinstance(value, str) else list(value)
    return tuple(name.strip() for part in parts for name in str(part).split(",") if name.strip())


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


def transient_http(err: BaseException | None) -> bool:
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


def read_items(source: str, query: ItemQuery | None = None, *, flag: str = "--source") -> list[pystac.Item]:
    """Every item of a source (see iter_items) that the query selects, in a list."""
    return list(iter_items(source, query, flag=flag))


class Doc(NamedTuple):
    """One item document as read: where its relative hrefs resolve, and how to name it in messages."""

    doc: dict
    base: str | None  # the file it came from (its own, or the file listing it)
    self_href: str | None  # its own file, when it has one
    where: str
    raw: bytes | None = None  # the line it was read from, when it was one


def iter_items(source: str, query: ItemQuery | None = None, *, flag: str = "--source",
               on_bad: Callable[[str, str], None] | None = None,
               progress: Callable[[str], None] | None = None) -> Iterator[pystac.Item]:
    """The items of a static catalog or collection, a FeatureCollection, ndjson, one item or a STAC
    API, as they are read. Broken links and bad items under a catalog go to `on_bad(where, why)`
    and the walk goes on (without `on_bad` they fail it); a root that cannot be read or is not STAC
    is a one-line error naming `flag`."""
    query = query or ItemQuery()
    for doc in iter_docs(source, query, flag=flag, on_bad=on_bad, progress=progress):
        try:
            item = _item_from(doc.doc, doc.where, href=doc.self_href)
        except ConfigError as err:
            if on_bad is None:
                raise
            on_bad(doc.where, str(err).split(": ", 1)[-1])
            continue
        if doc.self_href is None and doc.base is not None:
            _absolute_assets(item, doc.base)
        if _wanted(item, query):
            yield item


def iter_candidates(source: str, query: ItemQuery | None = None, *, flag: str = "--source",
                    on_bad: Callable[[str, str], None] | None = None,
                    progress: Callable[[str], None] | None = None) -> Iterator[tuple[Candidate, dict, Doc]]:
    """(planning row, layout, document) of every item of a source the query selects, as read, without
    building pystac objects (see iter_items for the sources and `on_bad`)."""
    query = query or ItemQuery()
    for doc in iter_docs(source, query, flag=flag, on_bad=on_bad, progress=progress):
        try:
            candidate, layout = candidate_of(doc.doc, base=doc.base, self_href=doc.self_href)
        except SourceError as err:
            if on_bad is None:
                raise ConfigError(f"{doc.where}: not a usable STAC item ({err}); fix or remove it") from err
            on_bad(doc.where, str(err))
            continue
        if _candidate_wanted(candidate, query):
            yield candidate, layout, doc


def iter_rows(source: str, query: ItemQuery | None = None, **kwargs) -> Iterator:
    """Index rows (planning columns, layout, compressed document) of a source's items, as read; a
    large local ndjson file is parsed by a pool of processes, in order, a chunk of lines each."""
    from .index import Row

    query = query or ItemQuery()
    href = None if is_stac_api(source) else _catalog_href(source, flag=kwargs.get("flag", "--source"))
    if href and not is_remote(href) and _looks_like_ndjson(href) and os.path.getsize(href) > PARALLEL_PARSE_BYTES:
        yield from _parallel_rows(href, source, query, **kwargs)
        return
    for candidate, layout, doc in iter_candidates(source, query, **kwargs):
        yield Row(candidate, layout, _stored_doc(doc.doc, doc.raw, candidate))


def _stored_doc(doc: dict, raw: bytes | None, candidate: Candidate) -> bytes:
    """The compressed document the index keeps: as read when its hrefs are absolute."""
    from .index import compress_doc

    if raw is None or not _hrefs_absolute(doc):
        raw = json.dumps(_with_absolute_hrefs(doc, candidate), separators=(",", ":")).encode()
    return compress_doc(raw)


PARALLEL_PARSE_BYTES = 16 << 20  # below this an ndjson file is parsed in the process reading it
PARSE_CHUNK_BYTES = 4 << 20  # a worker's share of a large ndjson file at a time (~800 Earth Search items)
# ranges parsed ahead of the reader: more than an index transaction's worth (INGEST_BATCH), so the
# workers go on parsing while the index writes one (~4 MB of rows each, pickled then unpickled)
PARSE_AHEAD = 32


def _parallel_rows(path: str, source: str, query: ItemQuery, *, flag: str = "--source",
                   on_bad: Callable[[str, str], None] | None = None, progress=None) -> Iterator:
    """Index rows of a large local ndjson file, parsed by a process per CPU: each reads a range of
    whole lines from the file itself (this process only finds where the ranges end) and sends
    back its rows, in order."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from .index import Row

    workers = max(1, len(os.sched_getaffinity(0)))
    where = f"{flag} {source}"
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
        pending: deque = deque()
        spans = _line_spans(path)
        first = 1  # the number of the first line of the next result
        while True:
            while len(pending) < max(PARSE_AHEAD, 2 * workers):
                span = next(spans, None)
                if span is None:
                    break
                pending.append(pool.submit(_rows_of_span, span, path, query))
            if not pending:
                return
            rows, layouts, bad, n_lines = pending.popleft().result()
            for n, why in bad:
                _bad(on_bad, f"{where} line {first + n}", why)
            first += n_lines
            for candidate, doc in rows:
                yield Row(candidate, layouts[candidate.layout], doc)


def _line_spans(path: str) -> Iterator[tuple[int, int]]:
    """(start, end) byte ranges of whole lines, about PARSE_CHUNK_BYTES each: found by a seek and
    one line's read per range, not by reading the file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        start = 0
        while start < size:
            f.seek(min(start + PARSE_CHUNK_BYTES, size))
            f.readline()  # to the end of the line the range would end in
            yield start, f.tell()
            start = f.tell()


def _rows_of_span(span: tuple[int, int], path: str, query: ItemQuery):
    """(rows as (candidate, compressed document), their layouts, bad lines as (index in the span,
    why), the span's number of lines) of the lines in a byte range of a file."""
    start, end = span
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    lines = data.split(b"\n")  # as iterating the file splits them: only at newlines
    rows, bad = [], []
    layouts: dict[str, dict] = {}
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            doc = loads_json(line)
            if not isinstance(doc, dict):
                raise SourceError("not a JSON object")
            candidate, layout = candidate_of(doc, base=path)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            bad.append((n, f"not a STAC item ({err})"))
            continue
        except SourceError as err:
            bad.append((n, str(err)))
            continue
        if _candidate_wanted(candidate, query):
            layouts.setdefault(candidate.layout, layout)
            rows.append((candidate, _stored_doc(doc, line.rstrip(b"\r"), candidate)))
    return rows, layouts, bad, data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def _hrefs_absolute(doc: dict) -> bool:
    return all("://" in str(a.get("href", "://")) for a in (doc.get("assets") or {}).values() if isinstance(a, dict))


def _with_absolute_hrefs(doc: dict, candidate: Candidate) -> dict:
    """The document as the index stores it: asset hrefs absolute, its own file as its self link."""
    hrefs = candidate.href_map()
    assets = {k: {**a, "href": hrefs.get(k, a.get("href"))} if isinstance(a, dict) else a
              for k, a in (doc.get("assets") or {}).items()}
    links = [link for link in doc.get("links") or () if not (isinstance(link, dict) and link.get("rel") == "self")]
    if candidate.self_href:
        links.append({"rel": "self", "href": candidate.self_href, "type": "application/geo+json"})
    return {**doc, "assets": assets, "links": links}


def _candidate_wanted(c: Candidate, query: ItemQuery) -> bool:
    if query.collections and c.collection not in query.collections:
        return False
    if query.time is not None and not query.time.start <= c.datetime <= query.time.end:
        return False
    if query.bbox is not None:
        qx0, qy0, qx1, qy1 = query.bbox
        if c.maxx < qx0 or c.minx > qx1 or c.maxy < qy0 or c.miny > qy1:
            return False
    return True


def iter_docs(source: str, query: ItemQuery, *, flag: str = "--source",
              on_bad: Callable[[str, str], None] | None = None,
              progress: Callable[[str], None] | None = None) -> Iterator[Doc]:
    """The item documents of a source, as read (a STAC API's pages as they come, an ndjson file
    line by line)."""
    api = is_stac_api(source)
    if (query.query or query.filter) and not api:
        raise ConfigError(f"{flag} {source}: --query and --filter need a STAC API source (item search); "
                          f"drop them, or give the API's URL")
    if api:
        for n, doc in enumerate(search_api(source, query, progress=progress, as_dicts=True), 1):
            yield Doc(doc, None, None, f"{flag} {source} item {n}")
        return
    href = _catalog_href(source, flag=flag)
    if not is_remote(href) and _looks_like_ndjson(href):
        yield from _ndjson_docs(_local_lines(href), source, flag=flag, on_bad=on_bad, base=href)
        return
    try:
        text = _StacIO().read_text(href)
    except GriddedError as err:  # the message starts with the href
        raise type(err)(f"{flag} {err}", retryable=err.retryable) from err
    yield from _parse_source(text, href, source, flag=flag, on_bad=on_bad)


def _looks_like_ndjson(path: str) -> bool:
    """A local file of one JSON document a line (read line by line, never whole)."""
    with open(path, "rb") as f:
        first = f.readline(1 << 24).strip()
        second = f.readline(16).strip()
    if not first.startswith(b"{") or not second.startswith(b"{"):
        return False
    try:
        return isinstance(json.loads(first), dict)
    except ValueError:
        return False


def _local_lines(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from f


def _parse_source(text: str, href: str, source: str, *, flag: str, on_bad) -> Iterator[Doc]:
    try:
        doc = loads_json(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        doc = None
    if doc is None:
        if text.lstrip().startswith("{"):  # several JSON documents, one a line: ndjson
            return _ndjson_docs((line.encode() for line in text.splitlines()), source, flag=flag, on_bad=on_bad,
                                base=href)
        raise ConfigError(f"{flag} {source}: not JSON; give a STAC catalog, collection, item collection or "
                          f"newline-delimited items")
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind in ("FeatureCollection", "Feature"):
        features = doc.get("features") or [] if kind == "FeatureCollection" else [doc]
        return (Doc(f, href, None, f"{flag} {source} feature {n}") for n, f in enumerate(features, 1)
                if isinstance(f, dict) or _bad(on_bad, f"{flag} {source} feature {n}", "not a JSON object"))
    if kind in ("Catalog", "Collection"):
        missing = [field for field in ("id", "description", "links") if field not in doc]
        if missing or not isinstance(doc.get("links"), list):
            raise ConfigError(f"{flag} {source}: not a valid STAC {kind.lower()} "
                              f"(no {', '.join(missing) or 'links list'}); give a STAC catalog.json or collection.json")
        return _walk(href, doc, on_bad=on_bad or _refuse(flag, source))
    raise ConfigError(f"{flag} {source}: not a STAC catalog, collection, item or item collection "
                      f"(no STAC 'type'); give a catalog.json, collection.json or a saved search")


def _bad(on_bad, where: str, why: str) -> bool:
    if on_bad is None:
        raise ConfigError(f"{where}: {why}; fix or remove it")
    on_bad(where, why)
    return False


def _item_from(doc, where: str, href: str | None = None) -> pystac.Item:
    try:
        item = pystac.Item.from_dict(doc, href=href, preserve_dict=False)
    except (pystac.STACError, pystac.STACTypeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise ConfigError(f"{where}: not a valid STAC item ({str(err)[:200]}); fix or remove it") from err
    if href is not None:
        item.set_self_href(href)
        item.make_asset_hrefs_absolute()
    return item


def _ndjson_docs(lines: Iterator[bytes], source: str, *, flag: str, on_bad, base: str) -> Iterator[Doc]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = loads_json(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            _bad(on_bad, f"{flag} {source} line {n}", f"not a STAC item ({err})")
            continue
        if isinstance(doc, dict) or _bad(on_bad, f"{flag} {source} line {n}", "not a JSON object"):
            yield Doc(doc, base, None, f"{flag} {source} line {n}", line.rstrip(b"\r\n"))


def _absolute_assets(item: pystac.Item, base: str) -> None:
    """Relative asset hrefs of items saved in one file resolve against that file."""
    for asset in item.assets.values():
        asset.href = pystac.utils.make_absolute_href(asset.href, base)


WALK_PREFETCH = 10  # documents read ahead of the walk (boto3's connection pool holds ten)


def _walk(root: str, root_doc: dict, *, on_bad: Callable[[str, str], None]) -> Iterator[Doc]:
    """Item documents under a static catalog, depth first in the catalog's own order, the next few
    links read ahead on threads: a catalog on S3 or HTTPS costs a round trip per document, and one
    at a time a catalog of 10^4 items takes minutes."""
    from concurrent.futures import Future, ThreadPoolExecutor

    stac_io = _StacIO()

    def read(href: str) -> dict:
        return json.loads(stac_io.read_text(href))

    seen: set[str] = set()
    todo: list[tuple[str, dict | None]] = [(root, root_doc)]  # a stack: the next document last
    ahead: dict[str, Future] = {}
    pool = ThreadPoolExecutor(WALK_PREFETCH, thread_name_prefix="gridded-walk")
    try:
        while todo:
            for href, doc in todo[-1:-WALK_PREFETCH - 1:-1]:
                if doc is None and href not in ahead and href not in seen:
                    ahead[href] = pool.submit(read, href)
            href, doc = todo.pop()
            if href in seen:
                continue
            seen.add(href)
            if doc is None:
                future = ahead.pop(href)
                try:
                    doc = future.result()
                except (OSError, ValueError, GriddedError) as err:
                    if isinstance(err, GriddedError) and err.retryable:
                        raise  # transient: the whole walk is worth retrying, not a link to count as broken
                    on_bad(href, f"cannot be read ({err})")
                    continue
            kind = doc.get("type") if isinstance(doc, dict) else None
            if kind == "Feature":
                yield Doc(doc, href, href, href)
                continue
            if kind not in ("Catalog", "Collection"):
                on_bad(href, "not a STAC catalog, collection or item")
                continue
            links = [link for link in doc.get("links", []) if link.get("rel") in ("child", "item") and link.get("href")]
            for link in reversed(links):  # depth first, in the catalog's own order
                todo.append((pystac.utils.make_absolute_href(link["href"], href), None))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _refuse(flag: str, source: str) -> Callable[[str, str], None]:
    """What a broken link or bad item under a catalog does when nobody counts them: fail."""
    def refuse(where: str, why: str) -> None:
        raise SourceError(f"{flag} {source}: {where} {why}; fix the catalog's links or give another source")

    return refuse


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
        raise ConfigError(f"{flag} {source}: no such catalog file; give the path of a catalog.json or "
                          f"collection.json")
    return str(path.resolve())


def item_time(item: pystac.Item) -> datetime:
    """The item's datetime, or its start_datetime when datetime is null."""
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise SourceError(f"item {item.id}: no datetime nor start_datetime; fix the item")
    # normalised to datetime.timezone.utc: pystac gives dateutil's tzutc, which the artifact refuses
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


def _wanted(item: pystac.Item, query: ItemQuery) -> bool:
    if query.collections and item.collection_id not in query.collections:
        return False
    if query.time is not None and not query.time.start <= item_time(item) <= query.time.end:
        return False
    if query.bbox is not None and item.bbox:
        minx, miny, maxx, maxy = (item.bbox[0], item.bbox[1], item.bbox[-3 if len(item.bbox) == 6 else 2],
                                  item.bbox[-2 if len(item.bbox) == 6 else 3])
        qx0, qy0, qx1, qy1 = query.bbox
        if maxx < qx0 or minx > qx1 or maxy < qy0 or miny > qy1:
            return False
    return True


def items_for_query(items: list[pystac.Item], extent_lonlat, time: TimeRange,
                    collections: tuple[str, ...] = ()) -> list[pystac.Item]:
    """The items whose footprint intersects the extent and whose time is in the range, by time then id."""
    region = extent_lonlat.geom
    selected = []
    for item in items:
        if collections and item.collection_id not in collections:
            continue
        when = item_time(item)
        if not time.start <= when <= time.end:
            continue
        # (mypy spreads a bbox's floats over box's `ccw` flag too: a 2D bbox has four)
        footprint = shape(item.geometry) if item.geometry else (box(*item.bbox) if item.bbox else None)  # type: ignore[arg-type]
        if footprint is None:
            log.warning("item %s has neither geometry nor bbox; skipped", item.id)
            continue
        if footprint.intersects(region):
            selected.append(item)
    return sorted(selected, key=lambda it: (item_time(it), it.id))


def is_stac_api(source: str) -> bool:
    """An http(s) root whose landing page declares item search (a STAC API, not a static catalog)."""
    if urlparse(source).scheme not in ("http", "https"):
        return False
    try:
        doc = json.loads(_StacIO().read_text(source))
    except GriddedError as err:
        if err.retryable:
            raise type(err)(f"--source {err}", retryable=True) from err
        return False
    except (OSError, ValueError):
        return False
    conforms = " ".join(doc.get("conformsTo", [])) if isinstance(doc, dict) else ""
    links = doc.get("links", []) if isinstance(doc, dict) else []
    return "item-search" in conforms or any(isinstance(link, dict) and link.get("rel") == "search" for link in links)


def search_api(source: str, query: ItemQuery, *, progress: Callable[[str], None] | None = None,
               as_dicts: bool = False) -> Iterator:
    """Every item a STAC API search returns, page after page as they come (pystac-client follows the
    `next` links); more than `query.max_items` is refused, so a server paging forever stops."""
    import pystac_client
    from pystac_client.exceptions import APIError

    options: dict[str, Any] = {}
    if query.filter:
        text = query.filter.strip()
        options["filter"] = json.loads(text) if text.startswith("{") else text
        options["filter_lang"] = "cql2-json" if text.startswith("{") else "cql2-text"
    if query.query:
        options["query"] = list(query.query)
    try:
        client = pystac_client.Client.open(source)
        search = client.search(collections=list(query.collections) or None, bbox=query.bbox,
                               datetime=query.datetime, limit=query.page_size, max_items=query.max_items + 1,
                               **options)
        for n, item in enumerate(search.items_as_dicts() if as_dicts else search.items(), start=1):
            if n > query.max_items:
                raise ConfigError(f"--source {source}: the search returned more than {query.max_items:,} items; "
                                  f"narrow --extent, --time, --collection or --filter")
            if progress and n % query.page_size == 0:
                progress(f"{n} items read from {source}")
            yield item
    except GriddedError:
        raise
    except json.JSONDecodeError as err:
        raise ConfigError(f"--filter {query.filter}: not CQL2 JSON ({err}); give CQL2 text or JSON") from err
    except APIError as err:
        status = getattr(err, "status_code", None)
        transient = status is not None and (status >= 500 or status == 429)
        raise SourceError(f"--source {source}: the STAC API refused the search ({str(err).splitlines()[0][:200]}); "
                          + ("retry later" if transient else "check --collection, --query and --filter"),
                          retryable=transient) from err
    except (OSError, ValueError, TypeError) as err:
        transient = transient_http(err) or isinstance(err, OSError)
        raise SourceError(f"--source {source}: the STAC API cannot be searched ({err.__class__.__name__}: "
                          f"{str(err)[:160]}); " + ("check the URL or retry later" if transient else "check the URL"),
                          retryable=transient) from err
