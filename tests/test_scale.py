"""Planning that streams (issue 19): the index's planning columns and layouts, its migration from the
first layout, ingest that parses in parallel and skips what it cannot read, plans made block by
block equal to plans made at once, and task rows counted without making observations."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from gridded.cli import cli
from gridded.demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME
from gridded.index import open_index
from gridded.plan import PlanStream, plan_for, plan_stream
from gridded.selection import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import synthetic_index

KENYA = "-5,4,10,16"  # West Africa, where the first synthetic items are


def plan_key(batches) -> list:
    """Everything a plan decides, for comparing two of them."""
    return [(b.id, [(t.key, t.period.label, [(o.item_id, o.hrefs, o.encodings) for o in t.observations])
                    for t in b.tasks]) for b in batches]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """1,500 synthetic Sentinel-2 items over Africa (benchmarks/synthetic_index.py), as ndjson."""
    path = tmp_path_factory.mktemp("synthetic") / "items.ndjson"
    synthetic_index.write_items(path, 1500)
    return path


@pytest.fixture
def dsn(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    import psycopg

    base = request.getfixturevalue("pg_dsn")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # a generated identifier, not user input
    return base.rsplit("/", 1)[0] + f"/{name}"


def indexed(dsn: str, synthetic: Path) -> str:
    """`dsn`, with the synthetic items ingested into it."""
    from gridded.index import ingest

    index = open_index(dsn)
    try:
        ingest(str(synthetic), index)
    finally:
        index.close()
    return dsn


def kenya(**where):
    return select(extent=KENYA, time="2024-01", grid="africa-10m", bands="red,nir", tiles_per_worker=3, **where)


@pytest.mark.parametrize("dsn", ["sqlite", "postgresql"], indirect=True)
def test_a_plan_from_the_index_equals_the_plan_from_the_file(dsn, synthetic):
    index = open_index(dsn)
    try:
        from gridded.index import ingest

        counts = ingest(str(synthetic), index)
        assert (counts.added, counts.skipped, index.count()) == (1500, 0, 1500)
    finally:
        index.close()
    from_file = plan_for(kenya(source=str(synthetic)))
    from_index = plan_for(kenya(index=dsn))
    assert from_file.tasks and plan_key(from_index.batches) == plan_key(from_file.batches)
    assert from_index.n_items == from_file.n_items and from_index.bands_read == from_file.bands_read
    # one layout for 1,500 items that differ in hrefs, transforms and baselines' values only
    if dsn.startswith("sqlite"):
        db = sqlite3.connect(dsn.removeprefix("sqlite:///"))
        assert db.execute("SELECT count(*) FROM layouts").fetchone()[0] == 1


def test_solar_days_are_those_of_the_footprint_centre(synthetic):
    """Solar days are made for a whole block at once; each equals the one-item formula, on both
    sides of midnight and of the antimeridian's neighbours."""
    from gridded.candidates import candidate_of
    from gridded.finder import ObservationFinder, solar_day

    with open(synthetic) as f:
        doc = json.loads(f.readline())
    rows = []
    for n, (hour, lon) in enumerate([(23, 30.0), (0, -30.0), (12, 170.0), (12, -170.0), (1, 14.0), (22, -14.0)]):
        d = json.loads(json.dumps(doc))
        d["id"] = f"item-{n}"
        d["properties"]["datetime"] = f"2024-01-10T{hour:02d}:30:00Z"
        d["geometry"] = {"type": "Polygon", "coordinates": [[[lon - 0.5, 0], [lon + 0.5, 0], [lon + 0.5, 1],
                                                             [lon - 0.5, 1], [lon - 0.5, 0]]]}
        rows.append(candidate_of(d)[0])
    rows.sort(key=lambda c: (c.time, c.id))
    finder = ObservationFinder.of_candidates(rows, {}, None)
    days = finder._solar_days_of_block()
    expected = [solar_day(c.datetime, (c.minx + c.maxx) / 2) for c in rows]
    assert days == expected and {"2024-01-09", "2024-01-10", "2024-01-11"} <= set(days)


@pytest.mark.parametrize("side", [1, 3, 64])
def test_blocks_of_any_size_make_the_same_plan(synthetic, side):
    selection = kenya(source=str(synthetic))
    whole = plan_for(selection)
    with plan_stream(selection) as stream:
        stream_in_blocks = PlanStream(pipeline=selection.pipeline, grid=selection.grid, extent=selection.extent,
                                      time=selection.time, tiles_per_worker=3, candidates=stream.source,
                                      block_side=side)
        batches = list(stream_in_blocks)
    # the blocks decide the order of the cells (and so which share a batch), not what a cell gets
    assert by_task(batches) == by_task(whole.batches) and by_task(batches)
    assert sorted(stream_in_blocks.empty_cells) == sorted(whole.empty_cells)
    assert all(len(b.cells) <= 3 for b in batches) and [b.id for b in batches] == list(range(len(batches)))


def by_task(batches) -> dict:
    return {(t.key, t.period.label): [(o.item_id, o.hrefs) for o in t.observations] for b in batches for t in b.tasks}


def test_rows_count_what_the_batches_hold(synthetic):
    selection = kenya(source=str(synthetic))
    plan = plan_for(selection)
    with plan_stream(selection) as stream:
        rows = list(stream.rows())
    assert rows == [{"batch": b.id, "cell": list(t.key), "period": t.period.label,
                     "observations": len(t.observations)} for b in plan.batches for t in b.tasks]
    assert (stream.n_tasks, stream.n_batches) == (len(plan.tasks), len(plan.batches))
    assert stream.n_observations == sum(len(t.observations) for t in plan.tasks) > 0


def test_a_large_ndjson_file_is_parsed_in_parallel_and_bad_lines_are_named_and_skipped(tmp_path, synthetic,
                                                                                      monkeypatch):
    import gridded.source

    lines = synthetic.read_bytes().splitlines()[:400]
    broken = json.loads(lines[7])
    del broken["properties"]["datetime"]
    lines[7] = json.dumps(broken).encode()
    lines[20] = b'{"type": "Feature", "id": '  # cut short
    path = tmp_path / "items.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    monkeypatch.setattr(gridded.source, "PARALLEL_PARSE_BYTES", 0)
    monkeypatch.setattr(gridded.source, "PARSE_CHUNK_BYTES", 12_000)  # two or three lines a range
    result = CliRunner().invoke(cli, ["stac", "ingest", str(path), "--index", f"sqlite:///{tmp_path / 'p.db'}"])
    assert result.exit_code == 0, result.output
    counts = dict(line.rsplit(None, 1) for line in result.stdout.splitlines()[:5])
    assert {k.strip(): int(v) for k, v in counts.items()} == {
        "added": 398, "replaced": 0, "unchanged": 0, "skipped": 2, "in index": 398}
    assert "line 8: item" in result.stderr and "no datetime" in result.stderr
    assert "line 21: not a STAC item" in result.stderr
    # the same rows as parsed in one process
    monkeypatch.setattr(gridded.source, "PARALLEL_PARSE_BYTES", 1 << 40)
    CliRunner().invoke(cli, ["stac", "ingest", str(path), "--index", f"sqlite:///{tmp_path / 's.db'}"])
    query = "SELECT collection, id, start, platform, tile, geometry, hrefs, layout FROM items ORDER BY id"
    parallel = sqlite3.connect(tmp_path / "p.db").execute(query).fetchall()
    assert parallel == sqlite3.connect(tmp_path / "s.db").execute(query).fetchall() and len(parallel) == 398


V1_SQLITE = """
    CREATE TABLE items (
        rowid INTEGER PRIMARY KEY, collection TEXT NOT NULL, id TEXT NOT NULL,
        start TEXT NOT NULL, "end" TEXT NOT NULL, updated TEXT NOT NULL, doc TEXT NOT NULL,
        UNIQUE (collection, id));
    CREATE INDEX items_time ON items (start, "end");
    CREATE VIRTUAL TABLE items_bbox USING rtree(rowid, minx, maxx, miny, maxy);
"""
V1_POSTGRES = """
    CREATE TABLE gridded_items (
        collection text NOT NULL, id text NOT NULL,
        start_time timestamptz NOT NULL, end_time timestamptz NOT NULL,
        bbox box NOT NULL, updated text NOT NULL, doc jsonb NOT NULL,
        PRIMARY KEY (collection, id));
    CREATE INDEX gridded_items_bbox ON gridded_items USING gist (bbox);
    CREATE INDEX gridded_items_time ON gridded_items (start_time, end_time);
"""


def demo_docs(demo_catalog) -> list[dict]:
    import pystac

    docs = []
    for item in pystac.read_file(str(demo_catalog)).get_items(recursive=True):
        item.make_asset_hrefs_absolute()
        docs.append(item.to_dict(include_self_link=True, transform_hrefs=False))
    return docs


@pytest.mark.parametrize("dsn", ["sqlite", "postgresql"], indirect=True)
def test_an_index_of_the_first_layout_is_migrated_when_opened(dsn, demo_catalog):
    docs = demo_docs(demo_catalog)
    if dsn.startswith("sqlite"):
        db = sqlite3.connect(dsn.removeprefix("sqlite:///"))
        db.executescript(V1_SQLITE)
        for n, doc in enumerate(docs, 1):
            when = doc["properties"]["datetime"]
            db.execute("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (n, doc["collection"], doc["id"], when, when, "", json.dumps(doc)))
            box = doc["bbox"]
            db.execute("INSERT INTO items_bbox VALUES (?, ?, ?, ?, ?)", (n, box[0], box[2], box[1], box[3]))
        db.commit()
        db.close()
    else:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(V1_POSTGRES)
            for doc in docs:
                when, box = doc["properties"]["datetime"], doc["bbox"]
                conn.execute("INSERT INTO gridded_items VALUES (%s, %s, %s, %s, %s::box, %s, %s::jsonb)",
                             (doc["collection"], doc["id"], when, when, f"(({box[0]},{box[1]}),({box[2]},{box[3]}))",
                              "", json.dumps(doc)))
    index = open_index(dsn)
    assert index.count() == len(docs) == 21
    index.close()
    where = dict(extent=DEMO_EXTENT, time=DEMO_TIME, grid=str(DEMO_GRID), bands="red,nir", tiles_per_worker=2)
    assert plan_key(plan_for(select(index=dsn, **where)).batches) == \
        plan_key(plan_for(select(source=str(demo_catalog), **where)).batches)
    again = open_index(dsn)  # migrated once: opening again changes nothing
    assert again.count() == 21
    again.close()


def test_an_index_whose_rtree_has_no_time_is_migrated_when_opened(tmp_path, demo_catalog):
    """Schema 2 (an R-tree over space alone) -> 3: the R-tree rebuilt with each item's time, once."""
    from datetime import UTC, datetime

    path = tmp_path / "v2.db"
    CliRunner().invoke(cli, ["stac", "ingest", str(demo_catalog), "--index", f"sqlite:///{path}"])
    db = sqlite3.connect(path)  # as schema 2 left it
    db.executescript("""
        BEGIN;
        CREATE VIRTUAL TABLE old_bbox USING rtree(rowid, minx, maxx, miny, maxy);
        INSERT INTO old_bbox SELECT rowid, minx, maxx, miny, maxy FROM items_bbox;
        DROP TABLE items_bbox;
        ALTER TABLE old_bbox RENAME TO items_bbox;
        UPDATE meta SET value = '2' WHERE key = 'schema';
        COMMIT;""")
    db.close()
    index = open_index(f"sqlite:///{path}")
    assert index.count() == 21
    assert index.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("3",)
    for start, mint, maxt in index.db.execute("SELECT i.start, b.mint, b.maxt FROM items i "
                                              "JOIN items_bbox b ON b.rowid = i.rowid").fetchall():
        days = (datetime.fromisoformat(start) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() / 86400
        assert mint <= days <= maxt and maxt - mint < 0.01  # float32, rounded outwards
    later = dict(bbox=(-180, -90, 180, 90), start=datetime(2030, 1, 1, tzinfo=UTC),
                 end=datetime(2030, 12, 31, tzinfo=UTC))
    assert index.candidates(**later) == [] and index.layouts(**later) == []
    index.close()
    where = dict(extent=DEMO_EXTENT, time=DEMO_TIME, grid=str(DEMO_GRID), bands="red,nir", tiles_per_worker=2)
    assert plan_key(plan_for(select(index=f"sqlite:///{path}", **where)).batches) == \
        plan_key(plan_for(select(source=str(demo_catalog), **where)).batches)


def test_plan_lists_a_continent_without_making_observations(synthetic, monkeypatch):
    from gridded.finder import ObservationFinder

    def refuse(self, i):
        raise AssertionError("an observation was made for a listing")

    monkeypatch.setattr(ObservationFinder, "observation", refuse)
    result = CliRunner().invoke(cli, ["plan", "--source", str(synthetic), "--extent", "-18,-35,52,38", "--time",
                                      "2024-01", "--grid", "africa-10m", "--bands", "red,nir", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) > 1000 and {r["period"] for r in rows} == {"2024-01--P1M"}
    assert f"{len(rows)} tasks" in result.stderr


@pytest.mark.parametrize("coordinates", [
    [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]],  # as published
    [[[0, 0], [4, 0], [4, 4], [0, 4]]],  # not closed: shapely closes it
    [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]], [[1, 1], [2, 1], [2, 2], [1, 1]]],  # a hole
    [[[0, 0, 5], [4, 0, 5], [4, 4, 5], [0, 4, 5], [0, 0, 5]]],  # with heights
])
def test_a_footprint_is_stored_as_shapely_writes_it(synthetic, coordinates):
    """Footprints are packed to WKB without shapely where they can be: the same bytes and bounds."""
    import shapely
    from shapely.geometry import shape

    from gridded.candidates import candidate_of

    with open(synthetic) as f:
        doc = json.loads(f.readline())
    doc["geometry"] = {"type": "Polygon", "coordinates": coordinates}
    candidate, _ = candidate_of(doc)
    expected = shape(doc["geometry"])
    assert shapely.from_wkb(candidate.geometry).equals(expected)
    assert (candidate.minx, candidate.miny, candidate.maxx, candidate.maxy) == expected.bounds
    if len(coordinates[0][0]) == 2:
        assert candidate.geometry == shapely.to_wkb(expected)


@pytest.mark.parametrize("dsn", ["sqlite", "postgresql"], indirect=True)
def test_blocks_planned_by_worker_processes_make_the_same_artifact(dsn, synthetic, tmp_path, monkeypatch):
    """An index's blocks planned by two worker processes (each its own connection) give the
    artifact, totals and task rows that planning in this process gives."""
    from importlib import import_module

    from gridded.artifact import read_batch, write_artifact

    indexed(dsn, synthetic)
    selection = kenya(index=dsn)
    module, parent = import_module("gridded.plan"), os.getpid()
    real = module.plan_block

    def elsewhere(*args):  # a forked worker inherits the patch: only this process refuses to plan
        if os.getpid() == parent:
            pytest.fail("a block was planned in this process")
        return real(*args)

    got = {}
    for workers in (1, 2):
        if workers == 2:
            monkeypatch.setattr(module, "plan_block", elsewhere)
        path = str(tmp_path / f"cells-{workers}.pickle")
        with plan_stream(selection, workers=workers) as stream:
            assert len(stream.blocks) >= 8
            n = write_artifact(stream, path)
            totals = (n, stream.n_batches, stream.n_tasks, stream.n_observations, sorted(stream.empty_cells),
                      stream.largest, len(stream.footprints))
            rows = list(stream.rows())
        got[workers] = totals, rows, plan_key(read_batch(path, i)[3] for i in range(n))
    assert got[2] == got[1]
    monkeypatch.undo()
    whole = plan_for(selection)
    assert got[1][2] == plan_key(whole.batches) and whole.tasks
    assert got[1][0][:4] == (len(whole.batches), len(whole.batches), len(whole.tasks),
                             sum(len(t.observations) for t in whole.tasks))
    assert len(got[1][1]) == len(whole.tasks) and sorted(got[1][0][4]) == sorted(whole.empty_cells)


def test_planning_workers_are_one_per_cpu_for_many_blocks(monkeypatch):
    import dask.system

    from gridded.plan import MAX_PLAN_WORKERS, PARALLEL_MIN_BLOCKS, plan_workers

    monkeypatch.setattr(dask.system, "CPU_COUNT", 2)
    assert plan_workers(PARALLEL_MIN_BLOCKS - 1) == 1 and plan_workers(PARALLEL_MIN_BLOCKS) == 2
    monkeypatch.setattr(dask.system, "CPU_COUNT", 64)
    assert plan_workers(10_000) == MAX_PLAN_WORKERS and plan_workers(12) == 3


def test_sigterm_while_workers_plan_stops_them_and_leaves_nothing(synthetic, tmp_path):
    import signal

    import psutil

    from gridded.artifact import write_artifact
    from gridded.errors import Interrupted

    dsn = indexed(f"sqlite:///{tmp_path / 'index.db'}", synthetic)
    before = signal.getsignal(signal.SIGTERM)
    import gridded.artifact

    entry = gridded.artifact.ENTRY
    others = set(psutil.Process().children())  # the servers of other tests, say

    class TermOnSecond:  # the artifact's index entries: SIGTERM, as Kubernetes stops a pod, mid-write
        size, calls = entry.size, 0

        def pack(self, *values):
            self.calls += 1
            if self.calls == 2:
                assert len(set(psutil.Process().children()) - others) == 2  # the workers, planning
                os.kill(os.getpid(), signal.SIGTERM)
            return entry.pack(*values)

    with plan_stream(kenya(index=dsn), workers=2) as stream, pytest.MonkeyPatch.context() as patch:
        patch.setattr(gridded.artifact, "ENTRY", TermOnSecond())
        with pytest.raises(Interrupted, match="while planning: nothing was written") as err:
            write_artifact(stream, str(tmp_path / "cells.pickle"))
        assert set(psutil.Process().children()) - others == set()  # stopped before the stream is closed
    assert err.value.exit_code == 143 and err.value.retryable
    assert list(tmp_path.iterdir()) == [tmp_path / "index.db"]
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("rows, cells", [(None, 64), (10**6, 3), (10**6, 1)], ids=["by-rows", "by-cells", "one-each"])
def test_cells_share_tables_of_observations_in_groups_of_any_size(synthetic, tmp_path, monkeypatch, rows, cells):
    """However the cells are grouped into tables (closed by the observations they hold, a cell
    above the limit alone; or by the cells), every batch reads back as planned at once."""
    import pickle
    import zlib
    from collections import Counter
    from importlib import import_module

    from test_artifact import split_artifact

    from gridded.artifact import read_batch, write_artifact

    selection = kenya(source=str(synthetic))
    whole = plan_for(selection)
    per_cell = Counter()
    for t in whole.tasks:
        per_cell[t.key] += len(t.observations)
    limit = max(per_cell.values()) - 1 if rows is None else rows  # the largest cell above it
    module = import_module("gridded.plan")
    monkeypatch.setattr(module, "MAX_TABLE_ROWS", limit)
    monkeypatch.setattr(module, "MAX_TABLE_CELLS", cells)
    path = tmp_path / "cells.pickle"
    with plan_stream(selection) as stream:
        n = write_artifact(stream, str(path))
    assert plan_key(read_batch(str(path), i)[3] for i in range(n)) == plan_key(whole.batches)
    data = path.read_bytes()
    stored = [cell for payload in split_artifact(data)[1]
              for cell in pickle.loads(zlib.decompress(payload))["batch"][1]]
    sharing = Counter(ref for ref, _ in stored)  # cells per table
    sizes = [len(pickle.loads(zlib.decompress(data[at:at + length]))[0]) for at, length, _ in sharing]
    assert len(stored) == len(per_cell)
    if cells == 1:
        assert set(sharing.values()) == {1}
    elif rows is None:  # several cells share a table; a cell above the limit has one alone
        assert max(sharing.values()) > 1 and max(sizes) > limit
        assert all(n == 1 for n, size in zip(sharing.values(), sizes, strict=True) if size > limit)
        assert all(size <= limit for n, size in zip(sharing.values(), sizes, strict=True) if n > 1)
    else:
        assert max(sharing.values()) == 3 and len(sharing) < len(stored)


def test_workers_are_spawned_when_this_process_has_other_threads(synthetic, tmp_path, monkeypatch):
    """With other threads running (a notebook's Dask cluster, say) forking is unsafe: the workers are
    spawned, and plan the same artifact."""
    import threading

    import psutil

    from gridded.artifact import read_batch, write_artifact

    dsn = indexed(f"sqlite:///{tmp_path / 'index.db'}", synthetic)
    selection = kenya(index=dsn)
    others = set(psutil.Process().children())
    seen: list[list[str]] = []

    class Watch:  # the artifact's writes: what the workers were started as, while they plan
        def __init__(self, real):
            self.real = real

        def __getattr__(self, name):
            return getattr(self.real, name)

        def pack(self, *values):
            if not seen:
                seen.append([p.cmdline()[-1] for p in set(psutil.Process().children()) - others])
            return self.real.pack(*values)

    import gridded.artifact

    monkeypatch.setattr(gridded.artifact, "ENTRY", Watch(gridded.artifact.ENTRY))
    monkeypatch.setattr(threading, "active_count", lambda: 2)
    path = str(tmp_path / "cells.pickle")
    with plan_stream(selection, workers=2) as stream:
        n = write_artifact(stream, path)
    # a spawned worker is a new interpreter (a forked one would show this process's command line)
    assert seen[0].count("--multiprocessing-fork") == 2, seen
    assert plan_key(read_batch(path, i)[3] for i in range(n)) == plan_key(plan_for(selection).batches)


@pytest.mark.parametrize("dsn", ["sqlite", "postgresql"], indirect=True)
def test_workers_resolve_the_recipe_while_they_plan_and_report_a_band_no_layout_has(dsn, synthetic, tmp_path):
    """With planning workers the layouts of the extent's items are asked of a worker (not of this
    process, before any block) while the others plan: the same artifact, the same resolved recipe,
    the same totals; and a band no item has is the same one-line error as without workers."""
    from gridded.artifact import read_batch, write_artifact
    from gridded.errors import ConfigError
    from gridded.plan import plan_stream

    indexed(dsn, synthetic)
    selection = kenya(index=dsn)
    whole = plan_for(selection)
    path = str(tmp_path / "cells.pickle")
    with plan_stream(selection, workers=2) as stream:
        def not_here(**_):
            raise AssertionError("the layouts were asked of the planning process")

        assert stream._resolution is None  # not resolved yet: the first blocks are planned meanwhile
        stream.source.layouts = not_here  # the workers have their own connections, this one is unused
        n = write_artifact(stream, path)
        assert (stream.n_items, stream.n_tasks, stream.bands_read) == (whole.n_items, len(whole.tasks),
                                                                        whole.bands_read)
    assert whole.n_items > 0 and whole.pipeline.mask is not None and whole.pipeline.encodings
    assert read_batch(path, 0)[1] == whole.pipeline
    assert plan_key(read_batch(path, i)[3] for i in range(n)) == plan_key(whole.batches)
    messages = []
    for workers in (1, 2):
        bad = select(extent=KENYA, time="2024-01", grid="africa-10m", bands="red,swir99", index=dsn)
        with pytest.raises(ConfigError) as err, plan_stream(bad, workers=workers) as stream:
            write_artifact(stream, str(tmp_path / f"bad-{workers}.pickle"))
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "no asset for band 'swir99'" in messages[0], messages
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("bad")) == []
