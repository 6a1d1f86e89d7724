"""The STAC item index: SQLite (an R-tree over bboxes) by default, PostgreSQL (GiST) for a team.

Ingest is an idempotent upsert keyed by (collection, id): the same item twice changes nothing,
an item with a newer `updated` replaces the old one. Every query takes parameters; no SQL is
ever built from values.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import pystac

from .errors import ConfigError, SourceError

DEFAULT_INDEX = "sqlite:///gridded-index.db"
INGEST_BATCH = 2000  # items upserted per transaction


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexedItem:
    """The columns an item is indexed by, taken from its STAC document."""

    id: str
    collection: str
    start: str
    end: str
    bbox: tuple[float, float, float, float]
    updated: str
    doc: str

    @classmethod
    def from_item(cls, item: pystac.Item) -> IndexedItem:
        item.make_asset_hrefs_absolute()
        doc = item.to_dict(include_self_link=True, transform_hrefs=False)
        props = item.properties
        when = props.get("datetime")
        start = props.get("start_datetime") or when
        end = props.get("end_datetime") or when
        if start is None or end is None:
            raise SourceError(f"item {item.id}: no datetime nor start_datetime/end_datetime")
        if item.geometry is None or not item.bbox:
            raise SourceError(f"item {item.id}: no geometry or bbox")
        box = item.bbox
        minx, miny, maxx, maxy = (box[0], box[1], box[3], box[4]) if len(box) == 6 else box
        return cls(id=item.id, collection=item.collection_id or "", start=_utc(start), end=_utc(end),
                   bbox=(float(minx), float(miny), float(maxx), float(maxy)),
                   updated=str(props.get("updated", "")), doc=json.dumps(doc, separators=(",", ":")))


def _utc(text: str) -> str:
    """ISO text in UTC with a fixed width, so text comparison is time comparison."""
    when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class IngestCounts:
    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    skipped: int = 0

    def add(self, other: IngestCounts) -> None:
        self.added += other.added
        self.replaced += other.replaced
        self.unchanged += other.unchanged
        self.skipped += other.skipped


class Index(Protocol):
    dsn: str

    def upsert(self, items: Iterable[IndexedItem]) -> IngestCounts: ...
    def search(self, *, bbox, start: datetime, end: datetime, collections: tuple[str, ...] = ()) -> list[pystac.Item]: ...
    def count(self) -> int: ...
    def close(self) -> None: ...


class SQLiteIndex:
    """A single SQLite file: items table plus an R-tree virtual table over the bboxes."""

    def __init__(self, path: Path, dsn: str):
        self.dsn = dsn
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path)
            self.db.executescript(
                """
                CREATE TABLE IF NOT EXISTS items (
                    rowid INTEGER PRIMARY KEY, collection TEXT NOT NULL, id TEXT NOT NULL,
                    start TEXT NOT NULL, "end" TEXT NOT NULL, updated TEXT NOT NULL, doc TEXT NOT NULL,
                    UNIQUE (collection, id));
                CREATE INDEX IF NOT EXISTS items_time ON items (start, "end");
                CREATE VIRTUAL TABLE IF NOT EXISTS items_bbox USING rtree(rowid, minx, maxx, miny, maxy);
                """
            )
        except sqlite3.Error as err:
            raise ConfigError(f"--index {dsn}: cannot open the SQLite index ({err}); check the path") from err

    def upsert(self, items: Iterable[IndexedItem]) -> IngestCounts:
        counts = IngestCounts()
        with self.db:
            for it in items:
                row = self.db.execute("SELECT rowid, updated, doc FROM items WHERE collection = ? AND id = ?",
                                      (it.collection, it.id)).fetchone()
                if row is None:
                    cur = self.db.execute(
                        'INSERT INTO items (collection, id, start, "end", updated, doc) VALUES (?, ?, ?, ?, ?, ?)',
                        (it.collection, it.id, it.start, it.end, it.updated, it.doc))
                    self.db.execute("INSERT INTO items_bbox VALUES (?, ?, ?, ?, ?)",
                                    (cur.lastrowid, it.bbox[0], it.bbox[2], it.bbox[1], it.bbox[3]))
                    counts.added += 1
                elif _newer(it.updated, row[1]) or (it.updated == row[1] and it.doc != row[2] and not it.updated):
                    self.db.execute('UPDATE items SET start = ?, "end" = ?, updated = ?, doc = ? WHERE rowid = ?',
                                    (it.start, it.end, it.updated, it.doc, row[0]))
                    self.db.execute("UPDATE items_bbox SET minx = ?, maxx = ?, miny = ?, maxy = ? WHERE rowid = ?",
                                    (it.bbox[0], it.bbox[2], it.bbox[1], it.bbox[3], row[0]))
                    counts.replaced += 1
                else:
                    counts.unchanged += 1
        return counts

    def search(self, *, bbox, start, end, collections=()) -> list[pystac.Item]:
        sql = ('SELECT i.doc FROM items i JOIN items_bbox b ON b.rowid = i.rowid '
               'WHERE b.maxx >= ? AND b.minx <= ? AND b.maxy >= ? AND b.miny <= ? '
               'AND i."end" >= ? AND i.start <= ?')
        params = [bbox[0], bbox[2], bbox[1], bbox[3], _utc(start.isoformat()), _utc(end.isoformat())]
        if collections:
            sql += f" AND i.collection IN ({', '.join('?' * len(collections))})"
            params.extend(collections)
        rows = self.db.execute(sql + " ORDER BY i.start, i.id", params).fetchall()
        return [pystac.Item.from_dict(json.loads(r[0]), preserve_dict=False) for r in rows]

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM items").fetchone()[0]

    def close(self) -> None:
        self.db.close()


class PostgresIndex:
    """PostgreSQL through psycopg 3: a `box` column with a GiST index, B-tree on times."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS gridded_items (
            collection text NOT NULL, id text NOT NULL,
            start_time timestamptz NOT NULL, end_time timestamptz NOT NULL,
            bbox box NOT NULL, updated text NOT NULL, doc jsonb NOT NULL,
            PRIMARY KEY (collection, id));
        CREATE INDEX IF NOT EXISTS gridded_items_bbox ON gridded_items USING gist (bbox);
        CREATE INDEX IF NOT EXISTS gridded_items_time ON gridded_items (start_time, end_time);
    """

    def __init__(self, dsn: str):
        import psycopg

        self.dsn = dsn
        try:
            self.db = psycopg.connect(dsn, connect_timeout=10)
            with self.db.transaction():
                self.db.execute("SELECT pg_advisory_xact_lock(7212024)")  # one schema creator at a time
                self.db.execute(self.SCHEMA)
        except psycopg.Error as err:
            raise ConfigError(f"--index {_redact(dsn)}: cannot connect to PostgreSQL "
                              f"({str(err).strip().splitlines()[0]}); check the host, port, user and database") from err

    def upsert(self, items: Iterable[IndexedItem]) -> IngestCounts:
        counts = IngestCounts()
        with self.db.transaction():
            for it in items:
                row = self.db.execute("SELECT updated, doc::text FROM gridded_items WHERE collection = %s AND id = %s",
                                      (it.collection, it.id)).fetchone()
                box = f"(({it.bbox[0]},{it.bbox[1]}),({it.bbox[2]},{it.bbox[3]}))"
                if row is None:
                    self.db.execute(
                        "INSERT INTO gridded_items VALUES (%s, %s, %s, %s, %s::box, %s, %s::jsonb)",
                        (it.collection, it.id, it.start, it.end, box, it.updated, it.doc))
                    counts.added += 1
                elif _newer(it.updated, row[0]):
                    self.db.execute(
                        "UPDATE gridded_items SET start_time = %s, end_time = %s, bbox = %s::box, updated = %s, "
                        "doc = %s::jsonb WHERE collection = %s AND id = %s",
                        (it.start, it.end, box, it.updated, it.doc, it.collection, it.id))
                    counts.replaced += 1
                else:
                    counts.unchanged += 1
        return counts

    def search(self, *, bbox, start, end, collections=()) -> list[pystac.Item]:
        sql = ("SELECT doc::text FROM gridded_items WHERE bbox && %s::box AND end_time >= %s AND start_time <= %s")
        params = [f"(({bbox[0]},{bbox[1]}),({bbox[2]},{bbox[3]}))", start, end]
        if collections:
            sql += " AND collection = ANY(%s)"
            params.append(list(collections))
        rows = self.db.execute(sql + " ORDER BY start_time, id", params).fetchall()
        return [pystac.Item.from_dict(json.loads(r[0]), preserve_dict=False) for r in rows]

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM gridded_items").fetchone()[0]

    def close(self) -> None:
        self.db.close()


def _newer(candidate: str, stored: str) -> bool:
    return bool(candidate) and candidate > stored


def _redact(dsn: str) -> str:
    """A DSN fit for messages: the password replaced."""
    parsed = urlparse(dsn)
    if parsed.password:
        return dsn.replace(f":{parsed.password}@", ":***@")
    return dsn


def open_index(dsn: str | None) -> Index:
    """`sqlite:///path.db` (or a plain path), or `postgresql://user@host/db`; None: the default
    SQLite file `gridded-index.db` here.

    >>> index = open_index(f"sqlite:///{tmp / 'index.db'}")
    >>> ingest(demo_catalog, index).added, index.count()
    (21, 21)
    >>> index.close()
    """
    dsn = dsn or DEFAULT_INDEX
    parsed = urlparse(dsn)
    if parsed.scheme in ("postgresql", "postgres"):
        return PostgresIndex(dsn)
    if parsed.scheme == "sqlite":
        path = dsn[len("sqlite:///"):] if dsn.startswith("sqlite:///") else parsed.path
        return SQLiteIndex(Path(path), dsn)
    if parsed.scheme == "":
        return SQLiteIndex(Path(dsn), dsn)
    raise ConfigError(f"--index {_redact(dsn)}: use sqlite:///path.db or postgresql://user@host/db")


def ingest(source: str, index: Index, *, collection: str | None = None, bbox: str | None = None,
           datetime_: str | None = None, progress=None, page_size: int = 500) -> IngestCounts:
    """Read a static catalog, STAC API or ndjson file and upsert its items; bad items and broken
    links are counted and skipped (the first few named through `progress`), the rest go in. The
    same items again change nothing.

    >>> index = open_index(f"sqlite:///{tmp / 'again.db'}")
    >>> first, second = ingest(demo_catalog, index), ingest(demo_catalog, index)
    >>> first.added, second.added, second.unchanged
    (21, 0, 21)
    >>> index.close()
    """
    from .period import parse_time
    from .selection import names_of
    from .source import ItemQuery, iter_items

    box = None
    if bbox:
        try:
            box = tuple(float(v) for v in bbox.split(","))
            assert len(box) == 4 and box[0] < box[2] and box[1] < box[3]
        except (ValueError, AssertionError) as err:
            raise ConfigError(f"--bbox {bbox}: use minx,miny,maxx,maxy in degrees with min < max") from err
    query = ItemQuery(collections=names_of(collection), bbox=box, page_size=page_size,
                      time=parse_time(datetime_) if datetime_ else None)
    skipped: list[str] = []
    counts = IngestCounts()
    rows: list[IndexedItem] = []
    items = iter_items(source, query, flag="SOURCE", on_bad=lambda where, reason: skipped.append(f"{where}: {reason}"),
                       progress=progress)
    for item in items:
        try:
            rows.append(IndexedItem.from_item(item))
        except (SourceError, ValueError, TypeError) as err:
            skipped.append(f"{item.id}: {err}")
        if len(rows) >= INGEST_BATCH:  # one transaction per few thousand items: memory stays flat
            counts.add(index.upsert(rows))
            rows = []
    counts.add(index.upsert(rows))
    counts.skipped = len(skipped)
    for reason in skipped[:20]:
        if progress:
            progress(f"skipped {reason}")
    return counts
