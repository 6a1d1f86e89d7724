"""The item index on a real SQLite file and a real PostgreSQL server: ingest, upsert, search, run."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pystac
import pytest
from click.testing import CliRunner
from expected import catalog_items, check_pixels

from gridded.cli import cli
from gridded.demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME


@pytest.fixture(params=["sqlite", "postgresql"])
def dsn(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    base = request.getfixturevalue("pg_dsn")
    # a fresh database per test, so counts start at zero
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # a generated identifier, not user input
    return base.rsplit("/", 1)[0] + f"/{name}"


def cli_ok(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def counts(text: str) -> dict[str, int]:
    rows = dict(line.rsplit(None, 1) for line in text.splitlines() if line and not line.startswith("ingested"))
    return {k.strip(): int(v) for k, v in rows.items()}


def test_ingest_is_an_idempotent_upsert(dsn, demo_catalog, catalog_copy):
    n = len(catalog_items(demo_catalog))
    assert counts(cli_ok("stac", "ingest", str(demo_catalog), "--index", dsn)) == {
        "added": n, "replaced": 0, "unchanged": 0, "skipped": 0, "in index": n}
    assert counts(cli_ok("stac", "ingest", str(demo_catalog), "--index", dsn))["unchanged"] == n
    # a reprocessed scene (newer `updated`) replaces the old one; an item without datetime is skipped
    collection = pystac.read_file(str(catalog_copy.parent / "sentinel-2-l2a-demo" / "collection.json"))
    items = list(collection.get_items())
    items[0].properties["updated"] = "2025-01-01T00:00:00Z"
    items[0].save_object()
    broken = json.loads(Path(items[1].get_self_href()).read_text())
    broken["properties"]["datetime"] = None
    Path(items[1].get_self_href()).write_text(json.dumps(broken))
    got = counts(cli_ok("stac", "ingest", str(catalog_copy), "--index", dsn))
    assert got == {"added": 0, "replaced": 1, "unchanged": n - 2, "skipped": 1, "in index": n}


def test_run_from_the_index_equals_run_from_the_source(dsn, demo_catalog, tmp_path):
    cli_ok("stac", "ingest", str(demo_catalog), "--index", dsn)
    select = ["--extent", DEMO_EXTENT, "--time", DEMO_TIME, "--grid", str(DEMO_GRID), "--bands", "red,nir",
              "--tiles-per-worker", "2"]
    from_source = cli_ok("run", "--source", str(demo_catalog), *select, "--output", "unused", "--dry-run")
    from_index = cli_ok("run", "--index", dsn, *select, "--output", "unused", "--dry-run")
    assert json.loads(from_index) == json.loads(from_source) and json.loads(from_source)
    out = tmp_path / "out"
    cli_ok("run", "--index", dsn, *select, "--output", str(out))
    assert check_pixels(out, demo_catalog, bands=["red", "nir"])["tasks"] == 18
    # the run's own output catalog ingests back
    got = counts(cli_ok("stac", "ingest", str(out / "catalog.json"), "--index", dsn))
    assert got["added"] == 18 and got["skipped"] == 0
    listed = cli_ok("stac", "search", "--index", dsn, "--collection", "composite", "--datetime", "2024-02")
    assert listed.splitlines()[0] == "6 items"


def test_hostile_ids_are_stored_and_found_exactly(dsn, tmp_path):
    ids = ["a'b", 'quote"d', "100%", "under_score", "x'); DROP TABLE items; --", "%", "_"]
    lines = []
    for i, item_id in enumerate(ids):
        lines.append(json.dumps({
            "type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": "c_%'",
            "geometry": {"type": "Point", "coordinates": [10 + i, 10]}, "bbox": [10 + i, 10, 10 + i, 10],
            "properties": {"datetime": f"2024-01-0{i + 1}T00:00:00Z"}, "assets": {}, "links": []}))
    source = tmp_path / "items.ndjson"
    source.write_text("\n".join(lines) + "\n")
    assert counts(cli_ok("stac", "ingest", str(source), "--index", dsn))["added"] == len(ids)
    found = [json.loads(x)["id"] for x in cli_ok("stac", "search", "--index", dsn, "--json").splitlines()]
    assert sorted(found) == sorted(ids)
    exact = cli_ok("stac", "search", "--index", dsn, "--collection", "c_%'", "--bbox", "12.5,9,13.5,11", "--json")
    assert [json.loads(x)["id"] for x in exact.splitlines()] == ["under_score"]
    assert cli_ok("stac", "search", "--index", dsn, "--collection", "c__'").splitlines()[0] == "0 items"


@pytest.mark.parametrize("parallel", [False, True])
def test_json_that_orjson_refuses_is_read_as_the_standard_library_reads_it(dsn, tmp_path, monkeypatch, parallel):
    # NaN, an integer past 64 bits and a lone surrogate: valid for Python's json, refused by orjson
    import gridded.source

    monkeypatch.setattr(gridded.source, "PARALLEL_PARSE_BYTES", 0 if parallel else 1 << 40)
    # (2**70 + 1 and -2**63 - 1: orjson would make floats of them, without an error)
    odd = ['"eo:cloud_cover": NaN', '"big": 1180591620717411303425, "low": -9223372036854775809',
           '"title": "\\ud800"']
    lines = [f'{{"type": "Feature", "stac_version": "1.0.0", "id": "odd-{i}", "collection": "c", '
             f'"geometry": null, "bbox": [10, 10, 11, 11], "properties": {{"datetime": "2024-01-01T00:00:00Z", '
             f'{value}}}, "assets": {{}}, "links": []}}' for i, value in enumerate(odd)]
    source = tmp_path / "items.ndjson"
    source.write_text("\n".join([*lines, "{not json"]) + "\n")
    result = CliRunner().invoke(cli, ["stac", "ingest", str(source), "--index", dsn])
    assert result.exit_code == 0, result.output
    assert "line 4: not a STAC item (Expecting property name enclosed in double quotes" in result.stderr
    found = {(doc := json.loads(x))["id"]: doc["properties"]
             for x in cli_ok("stac", "search", "--index", dsn, "--json").splitlines()}
    assert sorted(found) == ["odd-0", "odd-1", "odd-2"]
    assert math.isnan(found["odd-0"]["eo:cloud_cover"])
    assert found["odd-1"]["big"] == 2**70 + 1 and found["odd-1"]["low"] == -(2**63) - 1
    assert found["odd-2"]["title"] == "\ud800"


def test_bad_dsn_is_one_line_exit_2():
    result = CliRunner().invoke(cli, ["stac", "search", "--index", "postgresql://nobody:s3cret@127.0.0.1:1/db"])
    assert result.exit_code == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("gridded: error: --index postgresql://nobody:***@127.0.0.1:1/db: cannot connect")
    assert "s3cret" not in result.output


@pytest.fixture(scope="module")
def stac_api(demo_catalog, tmp_path_factory):
    """A real STAC API server on loopback (`rustac serve`, memory backend) holding the demo items."""
    import socket
    import subprocess
    import time
    import urllib.request

    folder = tmp_path_factory.mktemp("api")
    items = catalog_items(demo_catalog)
    for item in items:
        item["links"] = []
        for asset in item["assets"].values():  # an API serves absolute URLs
            asset["href"] = Path(asset["href"]).as_uri()
    collection = json.loads((demo_catalog.parent / "sentinel-2-l2a-demo" / "collection.json").read_text())
    collection["links"] = []
    (folder / "collection.json").write_text(json.dumps(collection))
    (folder / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["rustac", "serve", "--addr", f"127.0.0.1:{port}", str(folder / "collection.json"),
                               str(folder / "items.json")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        server.kill()
        raise RuntimeError(f"rustac serve did not start: {server.stderr.read()[-500:]}")
    yield url
    server.kill()
    server.wait()


def test_ingest_from_a_stac_api_pages_through_every_item(dsn, stac_api, demo_catalog, tmp_path):
    n = len(catalog_items(demo_catalog))
    got = counts(cli_ok("stac", "ingest", stac_api, "--collection", "sentinel-2-l2a-demo", "--page-size", "4",
                        "--index", dsn))
    assert got == {"added": n, "replaced": 0, "unchanged": 0, "skipped": 0, "in index": n}  # 6 pages of 4
    select = ["--extent", DEMO_EXTENT, "--time", "2024-02", "--grid", str(DEMO_GRID), "--bands", "nir"]
    cli_ok("run", "--index", dsn, "--collection", "sentinel-2-l2a-demo", *select, "--output", str(tmp_path / "o"))
    assert check_pixels(tmp_path / "o", demo_catalog, bands=["nir"])["tasks"] == 6
    # a narrower API search ingests only what it returns
    result = CliRunner().invoke(cli, ["stac", "ingest", stac_api, "--datetime", "2024-01-01/2024-01-31",
                                      "--index", f"sqlite:///{tmp_path / 'jan.db'}"])
    assert result.exit_code == 0 and counts(result.stdout)["added"] == sum(
        1 for it in catalog_items(demo_catalog) if it["properties"]["datetime"].startswith("2024-01"))


def test_unreachable_stac_api_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["stac", "ingest", "http://127.0.0.1:9/", "--index",
                                      f"sqlite:///{tmp_path / 'x.db'}"])
    assert result.exit_code == 1  # an endpoint that does not answer may answer later: retryable
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("gridded: error: ") and "127.0.0.1:9" in line and "Traceback" not in result.output


def test_documents_are_stored_zstd_compressed_and_zlib_ones_of_older_indexes_still_read(dsn, demo_catalog):
    import zlib

    cli_ok("stac", "ingest", str(demo_catalog), "--index", dsn)
    from gridded.index import open_index

    index = open_index(dsn)
    try:
        db, table, key = (index.db, "docs", "rowid") if dsn.startswith("sqlite") else (index.db, "gridded_items", "id")
        docs = db.execute(f"SELECT {key}, doc FROM {table}").fetchall()  # constant names
        assert docs and all(bytes(doc).startswith(b"\x28\xb5\x2f\xfd") for _, doc in docs)  # zstd frames
        # an index written before stored zlib: every other document rewritten so, in place
        import zstandard

        plain = zstandard.ZstdDecompressor()
        mark = "?" if dsn.startswith("sqlite") else "%s"
        for k, doc in docs[::2]:
            db.execute(f"UPDATE {table} SET doc = {mark} WHERE {key} = {mark}",
                       (zlib.compress(plain.decompress(bytes(doc)), 1), k))
        db.commit()
    finally:
        index.close()
    found = [json.loads(x) for x in cli_ok("stac", "search", "--index", dsn, "--json").splitlines()]
    want = {i["id"]: i for i in catalog_items(demo_catalog)}
    assert sorted(i["id"] for i in found) == sorted(want)
    for item in found:  # each document as it was ingested, whichever way it is compressed
        assert item["properties"]["datetime"] == want[item["id"]]["properties"]["datetime"]
        assert item["assets"]["red"]["href"] == want[item["id"]]["assets"]["red"]["href"]
