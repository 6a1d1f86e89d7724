"""The STAC item index: SQLite (an R-tree over bboxes and times) by default, PostgreSQL (GiST) for a team.

Each item is stored as the columns planning reads (candidates.py: times, platform, tile, footprint
as WKB, hrefs, the digest of its layout) beside its STAC document, zstd-compressed (zlib in
indexes written before; both are read); layouts are stored once each. Planning reads the columns
only, block by block, and never builds an item.

Ingest is an idempotent upsert keyed by (collection, id), a few thousand items per transaction:
the same item twice changes nothing, an item with a newer `updated` replaces the old one. Every
query takes parameters; no SQL is ever built from values. An index of the first layout (one JSON
document per item) is migrated in place when opened, and so is one of the second (an R-tree over
space alone, which at ten years of items gave each year's query ten times the rows to drop).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple, Protocol
from urllib.parse import urlparse

import pystac

from ._json import loads as loads_json
from .candidates import Candidate, utc_text
from .errors import ConfigError

DEFAULT_INDEX = "sqlite:///gridded-index.db"
# items upserted per transaction: the pages of the id index and the R-tree that a transaction
# touches are written to the WAL once each per transaction, and a batch of 2,000 random ids touches
# nearly as many pages as 10,000 (a quarter less time adding 10^5 items to an index of 10^6, and
# a third less I/O; 50 MB more memory)
INGEST_BATCH = 10_000
SCHEMA_VERSION = 3
# the R-tree's time axis: days since 1970 from the stored ISO text, by SQLite itself (the R-tree
# keeps 32-bit floats rounded outwards, ~3 minutes at today's dates: the exact test on the text
# columns follows)
_DAYS = "(julianday({}) - 2440587.5)"
_RTREE = "rtree(rowid, minx, maxx, miny, maxy, mint, maxt)"  # the items' bboxes and times (schema 3)
CACHE_KIB = 65536  # SQLite page cache per connection (its default is 2 MiB)
# the documents are read rarely (stac search, migration): speed over size. zstd level 3 makes
# them as small as zlib's fastest level (1.3 KB for a 5 KB Sentinel-2 item) in a third of its time
DOC_ZSTD_LEVEL = 3
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_codecs = threading.local()
_IN_CHUNK = 900  # ids per `IN (...)` lookup, below SQLite's variable limit


class Row(NamedTuple):
    """One item to upsert: its planning columns, its layout and its compressed document."""

    candidate: Candidate
    layout: dict
    doc: bytes  # compressed JSON (compress_doc)


class LayoutCount(NamedTuple):
    """A layout among the items a query selects: how many, one of their ids, the latest time."""

    digest: str
    layout: dict
    count: int  # type: ignore[assignment]  # the field hides tuple.count, which nothing here calls
    example_id: str
    latest: str


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

    @property
    def total(self) -> int:
        return self.added + self.replaced + self.unchanged


class Index(Protocol):
    dsn: str

    def upsert(self, rows: list[Row]) -> IngestCounts: ...
    def layouts(self, *, bbox, start: datetime, end: datetime,
                collections: tuple[str, ...] = ()) -> list[LayoutCount]: ...
    def layout_docs(self) -> dict[str, dict]: ...  # every layout the index holds, by digest
    def candidates(self, *, bbox, start: datetime, end: datetime, collections: tuple[str, ...] = (),
                   hrefs: bool = True) -> list[tuple]: ...  # rows in Candidate's order
    def search(self, *, bbox, start: datetime, end: datetime,
               collections: tuple[str, ...] = ()) -> list[pystac.Item]: ...
    def count(self) -> int: ...
    def close(self) -> None: ...


def _latest_per_key(rows: Iterable[Row]) -> list[Row]:
    """One row per (collection, id): the newest `updated`, the last on a tie."""
    kept: dict[tuple[str, str], Row] = {}
    for row in rows:
        key = (row.candidate.collection, row.candidate.id)
        held = kept.get(key)
        if held is None or row.candidate.updated >= held.candidate.updated:
            kept[key] = row
    return list(kept.values())


def _replaces(row: Row, updated: str, doc: bytes | None) -> bool:
    """Whether a row replaces what is stored: a newer `updated`, or another document when neither has one."""
    new = row.candidate.updated
    return (bool(new) and new > updated) or (not new and not updated and doc is not None and doc != row.doc)


def _zstd():
    """This thread's (compressor, decompressor): zstandard's are not shared between threads."""
    if not hasattr(_codecs, "pair"):
        import zstandard

        _codecs.pair = (zstandard.ZstdCompressor(level=DOC_ZSTD_LEVEL), zstandard.ZstdDecompressor())
    return _codecs.pair


def compress_doc(raw: bytes) -> bytes:
    """An item's JSON as the index stores it."""
    return _zstd()[0].compress(raw)


def decompress_doc(doc: bytes) -> bytes:
    """A stored document's JSON: zstd, or zlib as indexes before it stored them."""
    if not doc.startswith(_ZSTD_MAGIC):
        return zlib.decompress(doc)
    return _zstd()[1].decompress(doc)


def _rtree_test(table: str = "") -> str:
    """The R-tree's part of a query: a bbox (x, x, y, y) and a time range (first, last) as parameters."""
    first, last = _DAYS.format("?"), _DAYS.format("?")
    return (f"{table}maxx >= ? AND {table}minx <= ? AND {table}maxy >= ? AND {table}miny <= ? "
            f"AND {table}maxt >= {first} AND {table}mint <= {last}")


def _item_of(doc: bytes) -> pystac.Item:
    return pystac.Item.from_dict(loads_json(decompress_doc(doc)), preserve_dict=False)


class SQLiteIndex:
    """A single SQLite file (WAL): items with their planning columns (small rows, many to a page),
    an R-tree over their bboxes and times, their documents in a table of their own, and the layouts."""

    SCHEMA = f"""
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS items (
            rowid INTEGER PRIMARY KEY, collection TEXT NOT NULL, id TEXT NOT NULL,
            start TEXT NOT NULL, "end" TEXT NOT NULL, updated TEXT NOT NULL, platform TEXT NOT NULL,
            tile TEXT NOT NULL, baseline REAL NOT NULL, geometry BLOB NOT NULL, self_href TEXT,
            hrefs TEXT NOT NULL, layout TEXT NOT NULL, UNIQUE (collection, id));
        CREATE TABLE IF NOT EXISTS docs (rowid INTEGER PRIMARY KEY, doc BLOB NOT NULL);
        CREATE VIRTUAL TABLE IF NOT EXISTS items_bbox USING {_RTREE};
        CREATE TABLE IF NOT EXISTS layouts (layout TEXT PRIMARY KEY, doc TEXT NOT NULL);
    """
    COLUMNS = ("collection", "id", "start", '"end"', "updated", "platform", "tile", "baseline", "geometry",
               "self_href", "hrefs", "layout")
    SELECT = ('SELECT i.id, i.collection, i.start, i.updated, i.platform, i.tile, i.baseline, '
              'b.minx, b.miny, b.maxx, b.maxy, i.geometry, i.self_href, i.hrefs, i.layout ')
    COUNTING = ("SELECT i.id, i.collection, i.start, i.updated, i.platform, i.tile, i.baseline, "
                "NULL, NULL, NULL, NULL, i.geometry, NULL, '', NULL ")  # what counting observations needs

    def __init__(self, path: Path, dsn: str):
        self.dsn = dsn
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, isolation_level=None)  # transactions are explicit
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA busy_timeout=30000")
            self.db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")  # pages a block shares with the next stay read
            old = self._columns("items")
            if old and "layout" not in old:  # the first layout: set aside, then copied over below
                self.db.executescript("BEGIN IMMEDIATE; ALTER TABLE items RENAME TO items_v1; "
                                      "DROP TABLE IF EXISTS items_bbox; DROP INDEX IF EXISTS items_time; COMMIT;")
            self.db.executescript(self.SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            self.known_layouts = {r[0] for r in self.db.execute("SELECT layout FROM layouts")}
            if self._columns("items_v1"):
                self._migrate()
            if "mint" not in self._columns("items_bbox"):
                self._add_time_to_rtree()
        except sqlite3.Error as err:
            raise ConfigError(f"--index {dsn}: cannot open the SQLite index ({err}); check the path") from err

    def _columns(self, table: str) -> set[str]:
        return {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}  # a constant table name

    def _migrate(self) -> None:
        """The items of an index of the first layout (a JSON doc each) -> this one; idempotent, so an
        interrupted migration resumes when the index is opened again."""
        from .candidates import candidate_of

        last = 0
        while True:
            page = self.db.execute("SELECT rowid, doc FROM items_v1 WHERE rowid > ? ORDER BY rowid LIMIT ?",
                                   (last, INGEST_BATCH)).fetchall()
            if not page:
                break
            self.upsert([Row(*candidate_of(loads_json(doc)), compress_doc(doc.encode()))
                         for _, doc in page])
            last = page[-1][0]
        self.db.execute("DROP TABLE items_v1")

    def _add_time_to_rtree(self) -> None:
        """Schema 2 -> 3: the R-tree rebuilt with the items' times, in one transaction (an interrupted
        one leaves schema 2 as it was, and the next opening starts again)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(f"CREATE VIRTUAL TABLE items_bbox_v3 USING {_RTREE}")
            times = f"{_DAYS.format('i.start')}, " + _DAYS.format('i."end"')
            self.db.execute(f"INSERT INTO items_bbox_v3 SELECT b.rowid, b.minx, b.maxx, b.miny, b.maxy, {times} "
                            "FROM items_bbox b JOIN items i ON i.rowid = b.rowid ORDER BY b.rowid")
            self.db.execute("DROP TABLE items_bbox")
            self.db.execute("ALTER TABLE items_bbox_v3 RENAME TO items_bbox")
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def upsert(self, rows: list[Row]) -> IngestCounts:
        counts = IngestCounts()
        rows = _latest_per_key(rows)
        if not rows:
            return counts
        self.db.execute("BEGIN IMMEDIATE")
        try:
            stored: dict[tuple[str, str], tuple[int, str, bytes | None]] = {}
            by_collection: dict[str, list[str]] = {}
            for r in rows:
                by_collection.setdefault(r.candidate.collection, []).append(r.candidate.id)
            for collection, ids in by_collection.items():  # through the (collection, id) unique index
                for start in range(0, len(ids), _IN_CHUNK):
                    chunk = ids[start:start + _IN_CHUNK]
                    for rowid, item_id, updated, doc in self.db.execute(
                            "SELECT rowid, id, updated, CASE WHEN updated = '' THEN "
                            "(SELECT doc FROM docs d WHERE d.rowid = items.rowid) END FROM items "
                            f"WHERE collection = ? AND id IN ({', '.join('?' * len(chunk))})", [collection, *chunk]):
                        stored[(collection, item_id)] = (rowid, updated, doc)
            next_rowid = (self.db.execute("SELECT max(rowid) FROM items").fetchone()[0] or 0) + 1
            inserts, updates, boxes, docs, layouts = [], [], [], [], {}
            for row in rows:
                c = row.candidate
                values = (c.collection, c.id, c.time, c.time, c.updated, c.platform, c.tile, c.baseline,
                          c.geometry, c.self_href, c.hrefs, c.layout)
                held = stored.get((c.collection, c.id))
                if held is None:
                    inserts.append((next_rowid, *values))
                    boxes.append((next_rowid, c.minx, c.maxx, c.miny, c.maxy, c.time, c.time))
                    docs.append((next_rowid, row.doc))
                    next_rowid += 1
                    counts.added += 1
                elif _replaces(row, held[1], held[2]):
                    updates.append((*values[2:], held[0]))
                    boxes.append((held[0], c.minx, c.maxx, c.miny, c.maxy, c.time, c.time))
                    docs.append((held[0], row.doc))
                    counts.replaced += 1
                else:
                    counts.unchanged += 1
                    continue
                if c.layout not in self.known_layouts:
                    layouts[c.layout] = row.layout
            self.db.executemany("INSERT OR IGNORE INTO layouts VALUES (?, ?)",
                                [(k, json.dumps(v, separators=(",", ":"))) for k, v in layouts.items()])
            self.db.executemany(f"INSERT INTO items (rowid, {', '.join(self.COLUMNS)}) "
                                f"VALUES ({', '.join('?' * (len(self.COLUMNS) + 1))})", inserts)
            self.db.executemany('UPDATE items SET start = ?, "end" = ?, updated = ?, platform = ?, tile = ?, '
                                'baseline = ?, geometry = ?, self_href = ?, hrefs = ?, layout = ? '
                                'WHERE rowid = ?', updates)
            self.db.executemany(f"INSERT OR REPLACE INTO items_bbox VALUES (?, ?, ?, ?, ?, {_DAYS.format('?')}, "
                                f"{_DAYS.format('?')})", boxes)
            self.db.executemany("INSERT OR REPLACE INTO docs VALUES (?, ?)", docs)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.known_layouts.update(layouts)
        return counts

    def _where(self, bbox, start, end, collections, *, boxes: bool = False) -> tuple[str, list]:
        """The FROM and WHERE of a query; with `boxes`, the R-tree's bounds as b.* too. Without, the
        items are read in rowid order (a list of the R-tree's hits first): a third faster than in the
        R-tree's order, which jumps about the items' pages. The R-tree selects by space and time
        (its times rounded outwards), the text columns then decide the time exactly."""
        if boxes:
            sql = f'FROM items_bbox b JOIN items i ON i.rowid = b.rowid WHERE {_rtree_test("b.")} '
        else:
            sql = f'FROM items i WHERE i.rowid IN (SELECT rowid FROM items_bbox WHERE {_rtree_test()}) '
        sql += 'AND i."end" >= ? AND i.start <= ?'
        first, last = utc_text(start), utc_text(end)
        params = [bbox[0], bbox[2], bbox[1], bbox[3], first, last, first, last]
        if collections:
            # `+`: not through the (collection, id) index, which would scan a whole collection
            sql += f" AND +i.collection IN ({', '.join('?' * len(collections))})"
            params.extend(collections)
        return sql, params

    def layouts(self, *, bbox, start, end, collections=()) -> list[LayoutCount]:
        where, params = self._where(bbox, start, end, collections)
        found = self.db.execute(f"SELECT i.layout, count(*), min(i.id), max(i.start) {where} GROUP BY i.layout",
                                params).fetchall()
        docs = dict(self.db.execute(f"SELECT layout, doc FROM layouts WHERE layout IN "
                                    f"({', '.join('?' * len(found))})", [f[0] for f in found]).fetchall()) \
            if found else {}
        return [LayoutCount(d, json.loads(docs[d]), n, example, latest) for d, n, example, latest in found]

    def layout_docs(self) -> dict[str, dict]:
        return {d: json.loads(doc) for d, doc in self.db.execute("SELECT layout, doc FROM layouts")}

    def candidates(self, *, bbox, start, end, collections=(), hrefs: bool = True) -> list[tuple]:
        """The planning columns of the items a query selects, as rows in Candidate's order, in time
        then id order; without `hrefs`, none (for counting)."""
        where, params = self._where(bbox, start, end, collections, boxes=hrefs)
        select = self.SELECT if hrefs else self.COUNTING
        return self.db.execute(f"{select} {where} ORDER BY i.start, i.id", params).fetchall()  # rows, as Candidates

    def search(self, *, bbox, start, end, collections=()) -> list[pystac.Item]:
        where, params = self._where(bbox, start, end, collections)
        rows = self.db.execute(f"SELECT (SELECT doc FROM docs d WHERE d.rowid = i.rowid) {where} "
                               "ORDER BY i.start, i.id", params).fetchall()
        return [_item_of(r[0]) for r in rows]

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM items").fetchone()[0]

    def close(self) -> None:
        self.db.close()


class PostgresIndex:
    """PostgreSQL through psycopg 3: the planning columns with a `box` under a GiST index, B-tree
    on times, layouts in their own table; ingest copies a batch into a staging table and upserts
    it on the server in one statement."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS gridded_items (
            collection text NOT NULL, id text NOT NULL,
            start_time timestamptz NOT NULL, end_time timestamptz NOT NULL, updated text NOT NULL,
            platform text NOT NULL, tile text NOT NULL, baseline double precision NOT NULL,
            bbox box NOT NULL, geometry bytea NOT NULL, self_href text, hrefs text NOT NULL,
            layout text NOT NULL, doc bytea NOT NULL,
            PRIMARY KEY (collection, id));
        CREATE INDEX IF NOT EXISTS gridded_items_bbox ON gridded_items USING gist (bbox);
        CREATE INDEX IF NOT EXISTS gridded_items_time ON gridded_items (start_time, end_time);
        CREATE TABLE IF NOT EXISTS gridded_layouts (layout text PRIMARY KEY, doc jsonb NOT NULL);
    """
    COLUMNS = ("collection", "id", "start_time", "end_time", "updated", "platform", "tile", "baseline", "bbox",
               "geometry", "self_href", "hrefs", "layout", "doc")
    # the time as Candidate's fixed-width UTC text, made by the server: rows come back as they are used
    TIME_TEXT = """to_char(start_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""
    SELECT = (f"SELECT id, collection, {TIME_TEXT}, updated, platform, tile, baseline, "
              "(bbox[1])[0], (bbox[1])[1], (bbox[0])[0], (bbox[0])[1], geometry, self_href, hrefs, layout ")
    COUNTING = (f"SELECT id, collection, {TIME_TEXT}, updated, platform, tile, baseline, "
                "NULL::float8, NULL::float8, NULL::float8, NULL::float8, geometry, NULL::text, '', NULL::text ")

    def __init__(self, dsn: str):
        import psycopg

        self.dsn = dsn
        try:
            self.db = psycopg.connect(dsn, connect_timeout=10)
            with self.db.transaction():
                self.db.execute("SELECT pg_advisory_xact_lock(7212024)")  # one schema creator at a time
                old = {r[0] for r in self.db.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = 'gridded_items' "
                    "AND table_schema = current_schema()")}
                if old and "layout" not in old:
                    self.db.execute("ALTER TABLE gridded_items RENAME TO gridded_items_v1")
                    self.db.execute("ALTER INDEX IF EXISTS gridded_items_bbox RENAME TO gridded_items_v1_bbox")
                    self.db.execute("ALTER INDEX IF EXISTS gridded_items_time RENAME TO gridded_items_v1_time")
                    self.db.execute("ALTER TABLE gridded_items_v1 RENAME CONSTRAINT gridded_items_pkey "
                                    "TO gridded_items_v1_pkey")
                self.db.execute(self.SCHEMA)
            self.known_layouts = {r[0] for r in self.db.execute("SELECT layout FROM gridded_layouts")}
            self._migrate()
        except psycopg.Error as err:
            raise ConfigError(f"--index {_redact(dsn)}: cannot connect to PostgreSQL "
                              f"({str(err).strip().splitlines()[0]}); check the host, port, user and database") from err

    def _migrate(self) -> None:
        """Items of the first layout (gridded_items_v1, a jsonb doc each) -> this one, once."""
        from .candidates import candidate_of

        exists = self.db.execute("SELECT to_regclass('gridded_items_v1')").fetchone()[0]  # type: ignore[index]
        self.db.commit()
        if exists is None:
            return
        with self.db.transaction():  # one transaction: the upserts nest in it as savepoints
            with self.db.cursor(name="gridded_migrate") as cur:
                cur.itersize = INGEST_BATCH
                cur.execute("SELECT doc::text FROM gridded_items_v1")
                rows = []
                for (doc,) in cur:
                    rows.append(Row(*candidate_of(loads_json(doc)), compress_doc(doc.encode())))
                    if len(rows) >= INGEST_BATCH:
                        self.upsert(rows)
                        rows = []
                self.upsert(rows)
            self.db.execute("DROP TABLE gridded_items_v1")

    def upsert(self, rows: list[Row]) -> IngestCounts:
        counts = IngestCounts()
        rows = _latest_per_key(rows)
        if not rows:
            return counts
        with self.db.transaction():
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS gridded_stage "
                            "(LIKE gridded_items INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
            new_layouts = {r.candidate.layout: r.layout for r in rows if r.candidate.layout not in self.known_layouts}
            if new_layouts:
                with self.db.cursor() as cur:
                    cur.executemany("INSERT INTO gridded_layouts VALUES (%s, %s::jsonb) ON CONFLICT DO NOTHING",
                                    [(k, json.dumps(v)) for k, v in new_layouts.items()])
            stage = f"COPY gridded_stage ({', '.join(self.COLUMNS)}) FROM STDIN"
            with self.db.cursor() as cur, cur.copy(stage) as copy:
                for row in rows:
                    c = row.candidate
                    copy.write_row((c.collection, c.id, c.time, c.time, c.updated, c.platform, c.tile, c.baseline,
                                    f"(({c.minx},{c.miny}),({c.maxx},{c.maxy}))", c.geometry, c.self_href, c.hrefs,
                                    c.layout, row.doc))
            changed = ", ".join(f"{col} = excluded.{col}" for col in self.COLUMNS[2:])
            added, replaced = self.db.execute(
                f"WITH up AS (INSERT INTO gridded_items SELECT * FROM gridded_stage "
                f"ON CONFLICT (collection, id) DO UPDATE SET {changed} "
                f"WHERE (excluded.updated <> '' AND excluded.updated > gridded_items.updated) "
                f"OR (excluded.updated = '' AND gridded_items.updated = '' AND excluded.doc <> gridded_items.doc) "
                f"RETURNING (xmax = 0) AS inserted) "
                f"SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up").fetchone()  # type: ignore[misc]
        self.known_layouts.update(new_layouts)
        counts.added, counts.replaced = added, replaced
        counts.unchanged = len(rows) - added - replaced
        return counts

    def _where(self, bbox, start, end, collections) -> tuple[str, list]:
        sql = "FROM gridded_items WHERE bbox && %s::box AND end_time >= %s AND start_time <= %s"
        params = [f"(({bbox[0]},{bbox[1]}),({bbox[2]},{bbox[3]}))", start, end]
        if collections:
            sql += " AND collection = ANY(%s)"
            params.append(list(collections))
        return sql, params

    def layouts(self, *, bbox, start, end, collections=()) -> list[LayoutCount]:
        where, params = self._where(bbox, start, end, collections)
        found = self.db.execute(f"SELECT layout, count(*), min(id), max(start_time) {where} GROUP BY layout",
                                params).fetchall()
        docs: dict[str, str] = dict(self.db.execute(
            "SELECT layout, doc::text FROM gridded_layouts WHERE layout = ANY(%s)", [[f[0] for f in found]]).fetchall())
        self.db.commit()
        return [LayoutCount(d, json.loads(docs[d]), n, example, utc_text(latest)) for d, n, example, latest in found]

    def layout_docs(self) -> dict[str, dict]:
        found = self.db.execute("SELECT layout, doc::text FROM gridded_layouts").fetchall()
        self.db.commit()
        return {d: json.loads(doc) for d, doc in found}

    def candidates(self, *, bbox, start, end, collections=(), hrefs: bool = True) -> list[tuple]:
        where, params = self._where(bbox, start, end, collections)
        select = self.SELECT if hrefs else self.COUNTING
        with self.db.cursor(binary=True) as cur:
            cur.execute(f"{select} {where} ORDER BY start_time, id", params)
            found = cur.fetchall()  # rows, in Candidate's order
        self.db.commit()
        return found

    def search(self, *, bbox, start, end, collections=()) -> list[pystac.Item]:
        where, params = self._where(bbox, start, end, collections)
        rows = self.db.execute(f"SELECT doc {where} ORDER BY start_time, id", params).fetchall()
        self.db.commit()
        return [_item_of(r[0]) for r in rows]

    def count(self) -> int:
        n = self.db.execute("SELECT count(*) FROM gridded_items").fetchone()[0]  # type: ignore[index]
        self.db.commit()
        return n

    def close(self) -> None:
        self.db.close()


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
    """Read a static catalog, STAC API or ndjson file and upsert its items, as they are read, a
    few thousand per transaction (memory stays flat whatever the size); bad items and broken links
    are counted and skipped (the first few named through `progress`), the rest go in. The same
    items again change nothing.

    >>> index = open_index(f"sqlite:///{tmp / 'again.db'}")
    >>> first, second = ingest(demo_catalog, index), ingest(demo_catalog, index)
    >>> first.added, second.added, second.unchanged
    (21, 0, 21)
    >>> index.close()
    """
    import time

    from .period import parse_time
    from .source import ItemQuery, iter_rows, names_of

    box = None
    if bbox:
        try:
            x0, y0, x1, y1 = (float(v) for v in bbox.split(","))  # not four: a ValueError
            assert x0 < x1 and y0 < y1
            box = (x0, y0, x1, y1)
        except (ValueError, AssertionError) as err:
            raise ConfigError(f"--bbox {bbox}: use minx,miny,maxx,maxy in degrees with min < max") from err
    query = ItemQuery(collections=names_of(collection), bbox=box, page_size=page_size,
                      time=parse_time(datetime_) if datetime_ else None)
    skipped: list[str] = []
    counts = IngestCounts()
    started = last_said = time.monotonic()
    rows = iter_rows(source, query, flag="SOURCE", on_bad=lambda where, reason: skipped.append(f"{where}: {reason}"),
                     progress=progress)
    for batch in _batched(rows, INGEST_BATCH):  # one transaction per few thousand items: memory stays flat
        counts.add(index.upsert(batch))
        now = time.monotonic()
        if progress and now - last_said >= 5:
            last_said = now
            progress(f"ingested {counts.total + len(skipped):,} items ({counts.total / (now - started):,.0f} items/s)")
    counts.skipped = len(skipped)
    for reason in skipped[:20]:
        if progress:
            progress(f"skipped {reason}")
    return counts


def _batched(rows: Iterator[Row], n: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch
