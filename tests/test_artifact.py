"""plan.py batching and artifact.py: the demo plan against tasks derived here from the catalog's JSON,
the cells artifact's round trip, its digest, version and batch checks, and its refusal of foreign pickles."""

from __future__ import annotations

import builtins
import hashlib
import itertools
import json
import math
import os
import pickle
import random
import shutil
import struct
import zlib
from collections import Counter
from datetime import datetime

import numpy as np
import pytest
from expected import catalog_items
from pyproj import Transformer
from shapely.geometry import Polygon, box

from gridded.artifact import FORMAT_VERSION, MAGIC, read_batch, write_artifact
from gridded.demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME
from gridded.errors import ArtifactError
from gridded.extent import parse_extent
from gridded.grid import load_grid
from gridded.period import parse_time
from gridded.pipeline import Pipeline
from gridded.plan import plan_for
from gridded.selection import Selection

BANDS = ("blue", "green", "red", "nir")
TILE_M = 2560.0  # grids/demo-utm55s-2560m.yaml
UTM55S = "EPSG:32755"


def demo_plan(catalog, tiles_per_worker: int):
    selection = Selection(
        source=str(catalog),
        extent=parse_extent(DEMO_EXTENT),
        time=parse_time(DEMO_TIME),
        grid=load_grid(str(DEMO_GRID)),
        pipeline=Pipeline(name="demo-median", bands=BANDS),
        tiles_per_worker=tiles_per_worker,
    )
    return plan_for(selection)


def to_utm(ring_lonlat, step_deg: float = 1e-4) -> Polygon:
    """A lon/lat ring in UTM 55S, its edges followed closely."""
    to_xy = Transformer.from_crs("EPSG:4326", UTM55S, always_xy=True)
    points = []
    for (x0, y0), (x1, y1) in itertools.pairwise(ring_lonlat):
        n = max(2, int(math.hypot(x1 - x0, y1 - y0) / step_deg))
        for f in np.linspace(0, 1, n, endpoint=False):
            points.append(to_xy.transform(x0 + f * (x1 - x0), y0 + f * (y1 - y0)))
    return Polygon(points)


def expected_tasks(catalog) -> Counter:
    """(cell bounds, month label, item ids) for every cell meeting the extent and month with a scene on it."""
    minx, miny, maxx, maxy = map(float, DEMO_EXTENT.split(","))
    extent = to_utm([(minx, miny), (maxx, miny), (maxx, maxy), (minx, maxy), (minx, miny)])
    items = [
        (it["id"], datetime.fromisoformat(it["properties"]["datetime"].replace("Z", "+00:00")),
         to_utm(it["geometry"]["coordinates"][0]))
        for it in catalog_items(catalog)
    ]
    left, bottom, right, top = extent.bounds
    expected = Counter()
    for ix in range(math.floor(left / TILE_M), math.floor(right / TILE_M) + 1):
        for iy in range(math.floor(bottom / TILE_M), math.floor(top / TILE_M) + 1):
            cell = box(ix * TILE_M, iy * TILE_M, (ix + 1) * TILE_M, (iy + 1) * TILE_M)
            if not cell.intersects(extent):
                continue
            for month in (1, 2, 3):
                ids = tuple(sorted(i for i, when, foot in items if when.month == month and foot.intersects(cell)))
                if ids:
                    expected[(cell.bounds, f"2024-{month:02d}--P1M", ids)] += 1
    return expected


def task_row(task) -> tuple:
    a, b, c, d, e, f = task.transform  # x = a*col + b*row + c, y = d*col + e*row + f
    assert b == d == 0 and a > 0 > e  # north-up
    ny, nx = task.shape_yx
    bounds = (c, f + e * ny, c + a * nx, f)
    return (tuple(round(v, 6) for v in bounds), task.period.label, tuple(sorted(o.item_id for o in task.observations)))


@pytest.fixture(scope="module")
def plans(demo_catalog):
    return {n: demo_plan(demo_catalog, n) for n in (1, 2, 4, 5, 10)}


# --- batching --------------------------------------------------------------------------------


@pytest.mark.parametrize("tiles_per_worker", [1, 2, 4, 5, 10])
def test_batches_hold_every_task_once_in_at_most_n_cells(plans, demo_catalog, tiles_per_worker):
    plan = plans[tiles_per_worker]
    expected = expected_tasks(demo_catalog)
    n_cells = len({bounds for bounds, _, _ in expected})
    assert n_cells == 6 and sum(expected.values()) == 18  # 3 x 2 cells of 2,560 m, three months each
    assert [b.id for b in plan.batches] == list(range(len(plan.batches)))
    assert len(plan.batches) == math.ceil(n_cells / tiles_per_worker)
    seen_cells = set()
    for batch in plan.batches:
        cells = {t.key for t in batch.tasks}
        assert 1 <= len(cells) <= tiles_per_worker
        assert not cells & seen_cells, "a cell's tasks are split across batches"
        seen_cells |= cells
    rows = Counter(task_row(t) for b in plan.batches for t in b.tasks)
    assert rows == expected
    for batch in plan.batches:
        for task in batch.tasks:
            assert task.crs.upper().endswith("32755")
            assert task.shape_yx == (256, 256)
            left, bottom, _, _ = task_row(task)[0]
            assert (left, bottom) == (task.key[0] * TILE_M, task.key[1] * TILE_M)


def test_no_cell_lacks_data_in_the_demo(plans):
    plan = plans[2]
    assert plan.n_cells_in_extent == 6 and plan.empty_cells == ()
    assert plan.pipeline.mask is not None and plan.pipeline.mask.asset == "scl"  # inferred from the assets


# --- the artifact ----------------------------------------------------------------------------


@pytest.fixture
def artifact(plans, tmp_path):
    plan = plans[2]
    path = tmp_path / "cells.pickle"
    write_artifact(plan, str(path))
    return plan, path


def split_artifact(blob: bytes) -> tuple[dict, list[bytes]]:
    """(header, payloads), read by hand from the documented layout."""
    assert blob.startswith(MAGIC)
    header_at, header_length, index_at, n = struct.unpack("<4Q", blob[len(MAGIC):len(MAGIC) + 32])
    header = json.loads(blob[header_at:header_at + header_length])
    payloads = []
    for i in range(n):
        offset, length, digest = struct.unpack("<QQ32s", blob[index_at + 48 * i:index_at + 48 * (i + 1)])
        payloads.append(blob[offset:offset + length])
        assert hashlib.sha256(payloads[-1]).digest() == digest
    return header, payloads


def join_artifact(header: dict, payloads: list[bytes]) -> bytes:
    """An artifact in the documented layout, written by hand."""
    body, entries, at = b"", b"", len(MAGIC) + 32
    for payload in payloads:
        entries += struct.pack("<QQ32s", at + len(body), len(payload), hashlib.sha256(payload).digest())
        body += payload
    head = json.dumps(header).encode()
    header_at = len(MAGIC) + 32 + len(body)
    offsets = struct.pack("<4Q", header_at, len(head), header_at + len(head), len(payloads))
    return MAGIC + offsets + body + head + entries


def test_round_trip_equals_the_plan(artifact):
    plan, path = artifact
    header, payloads = split_artifact(path.read_bytes())
    assert header["batches"] == len(payloads) == len(plan.batches)
    for batch, payload in zip(plan.batches, payloads):
        got_header, pipeline, grid, got, _ = read_batch(str(path), batch.id)
        assert got == batch
        assert got is not batch
        assert pipeline == plan.pipeline and grid == plan.grid
        assert got_header["version"] == FORMAT_VERSION
        # the payload: the batch as its id and per cell where its table of observations is and a
        # zlib blob of its tasks, beside the shared recipe; the table holds each observation once,
        # as plain tuples (rows, and times in microseconds since 1970), the tasks index into it
        data = path.read_bytes()
        outer = pickle.loads(zlib.decompress(payload))
        batch_id, stored = outer["batch"]
        cells = list(dict.fromkeys(t.key for t in batch.tasks))
        assert batch_id == batch.id and len(stored) == len(cells)
        for key, ((offset, length, digest), blob) in zip(cells, stored, strict=True):
            table = data[offset:offset + length]
            assert hashlib.sha256(table).digest() == digest
            rows, times = pickle.loads(zlib.decompress(table))
            tasks, refs = pickle.loads(zlib.decompress(blob))
            mine = [t for t in batch.tasks if t.key == key]
            assert [tuple(head[0]) for head in tasks] == [key] * len(mine)
            assert [[rows[refs[i]][0] for i in range(start, stop)] for *_, start, stop in tasks] == \
                [[o.item_id for o in t.observations] for t in mine]
            assert [times[refs[i]] for i in range(len(refs))] == \
                [int(o.time.timestamp()) * 10**6 + o.time.microsecond for t in mine for o in t.observations]
            assert len(rows) == len({o.item_id for t in batch.tasks for o in t.observations})  # each once
        assert pickle.loads(outer["common"])["pipeline"] == plan.pipeline


def test_round_trip_through_a_file_uri(artifact):
    plan, path = artifact
    assert read_batch(path.as_uri(), 1)[3] == plan.batches[1]


def table_of(payload: bytes) -> tuple[int, int, bytes]:
    """Where the table of observations of a payload's first cell is."""
    return pickle.loads(zlib.decompress(payload))["batch"][1][0][0]


def test_a_worker_reads_five_small_ranges_and_its_own_batch(artifact, monkeypatch):
    from gridded.io.storage import LocalStorage

    _, path = artifact
    _, payloads = split_artifact(path.read_bytes())
    _, table_length, _ = table_of(payloads[2])
    reads = []
    original = LocalStorage.get_range
    monkeypatch.setattr(LocalStorage, "get_range",
                        lambda self, name, start, length: reads.append(length) or original(self, name, start, length))
    read_batch(str(path), 2)
    # preamble, header, index entry, payload, the table its cells share
    assert len(reads) == 5 and reads[2] == 48 and reads[3:] == [len(payloads[2]), table_length]
    assert sum(reads) < len(payloads[2]) + table_length + 1024


def test_a_tampered_table_byte_fails_its_sha256(artifact):
    plan, path = artifact
    blob = bytearray(path.read_bytes())
    offset, length, _ = table_of(split_artifact(bytes(blob))[1][1])
    blob[offset + length // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="batch 1 fails its SHA-256"):
        read_batch(str(path), 1)
    assert read_batch(str(path), 0)[3] == plan.batches[0]


def test_a_tampered_payload_byte_fails_its_sha256(artifact):
    plan, path = artifact
    blob = bytearray(path.read_bytes())
    _, payloads = split_artifact(bytes(blob))
    at = bytes(blob).index(payloads[1])
    blob[at + len(payloads[1]) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="SHA-256") as err:
        read_batch(str(path), 1)
    assert "\n" not in str(err.value)
    assert read_batch(str(path), 0)[3] == plan.batches[0]  # a worker reads and checks its own batch only


def test_a_truncated_artifact_is_refused(artifact):
    plan, path = artifact
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match=r"truncated|SHA-256"):
        read_batch(str(path), len(plan.batches) - 1)


def test_an_artifact_of_the_first_layout_is_refused_naming_its_version(artifact):
    _, path = artifact
    path.write_bytes(MAGIC + b'{"format":"gridded-cells","version":1,"batches":[]}\n')
    with pytest.raises(ArtifactError, match=f"v1, this gridded reads gridded-cells v{FORMAT_VERSION}; regenerate"):
        read_batch(str(path), 0)


@pytest.mark.parametrize("low_byte", [ord("{"), ord("{") + 1])
def test_a_preamble_that_starts_like_the_first_layout_is_read_as_it_is(plans, tmp_path, low_byte):
    """The first layout had a JSON line after the magic; a preamble whose header offset's low byte
    is "{" (one artifact in 256) is still a preamble."""
    plan = plans[2]
    header = {"format": "gridded-cells", "version": FORMAT_VERSION, "created": "2024-01-01T00:00:00+00:00",
              "pipeline": "x", "grid": "x", "batches": 1}
    noise = random.Random(0).randbytes(512)  # incompressible: each pad moves the header by a byte
    for pad in range(512):
        common = pickle.dumps({"pipeline": plan.pipeline, "grid": plan.grid, "access": None, "pad": noise[:pad]})
        data = join_artifact(header, [zlib.compress(pickle.dumps({"common": common, "batch": (0, ())}))])
        if data[len(MAGIC)] == low_byte:
            break
    assert data[len(MAGIC)] == low_byte
    path = tmp_path / "cells.pickle"
    path.write_bytes(data)
    got_header, pipeline, _, batch, _ = read_batch(str(path), 0)
    assert got_header["batches"] == 1 and pipeline == plan.pipeline and batch.tasks == ()


def test_wrong_magic_is_refused(artifact):
    _, path = artifact
    blob = path.read_bytes()
    path.write_bytes(b"X" + blob[1:])
    with pytest.raises(ArtifactError, match="not a gridded cells artifact"):
        read_batch(str(path), 0)
    path.write_bytes(pickle.dumps({"batch": None}))
    with pytest.raises(ArtifactError, match="not a gridded cells artifact"):
        read_batch(str(path), 0)


@pytest.mark.parametrize("change", [{"version": FORMAT_VERSION + 1}, {"version": str(FORMAT_VERSION)},
                                    {"format": "other-cells"}])
def test_wrong_version_or_format_is_refused(artifact, change):
    _, path = artifact
    header, payloads = split_artifact(path.read_bytes())
    path.write_bytes(join_artifact(header | change, payloads))
    with pytest.raises(ArtifactError, match=r"v1|version|format") as err:
        read_batch(str(path), 0)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("batch_id", [3, 99, -1])
def test_unknown_batch_id_is_refused(artifact, batch_id):
    plan, path = artifact
    assert len(plan.batches) == 3
    with pytest.raises(ArtifactError, match=rf"--batch {batch_id}: no such batch .*0\.\.2"):
        read_batch(str(path), batch_id)


@pytest.mark.parametrize("damage", ["batch count", "unfinished"])
def test_a_damaged_header_or_preamble_is_refused(artifact, damage):
    _, path = artifact
    header, payloads = split_artifact(path.read_bytes())
    if damage == "batch count":
        blob = join_artifact(header | {"batches": len(payloads) + 1}, payloads)
    else:  # as a writer killed before filling the preamble leaves it
        blob = MAGIC + bytes(32) + join_artifact(header, payloads)[len(MAGIC) + 32:]
    path.write_bytes(blob)
    with pytest.raises(ArtifactError, match="corrupt") as err:
        read_batch(str(path), 0)
    assert "regenerate" in str(err.value)


# --- foreign pickles -------------------------------------------------------------------------


class Touch:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class EvalTouch:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.target)!r}, 'w').close()",))


class RemoveTree:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (shutil.rmtree, (str(self.target),))


class GriddedCallable:
    """A gridded function rather than a gridded value: write_demo_catalog deletes the directory it is given."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        from gridded.demo import write_demo_catalog

        return (write_demo_catalog, (self.target,))


def artifact_with(payload: bytes) -> bytes:
    """A well-formed artifact around any payload, its SHA-256 computed here so the digest check passes."""
    header = {"format": "gridded-cells", "version": FORMAT_VERSION, "created": "2024-01-01T00:00:00+00:00",
              "pipeline": "x", "grid": "x", "batches": 1}
    return join_artifact(header, [zlib.compress(payload)])


def artifact_with_a_cell(common: bytes, table: bytes, blob: bytes) -> bytes:
    """A well-formed artifact whose batch 1 is one cell of `blob`, its table `table` (batch 0's bytes)."""
    header = {"format": "gridded-cells", "version": FORMAT_VERSION, "created": "2024-01-01T00:00:00+00:00",
              "pipeline": "x", "grid": "x", "batches": 2}
    ref = (len(MAGIC) + 32, len(table), hashlib.sha256(table).digest())
    doc = {"common": common, "batch": (1, ((ref, blob),))}
    return join_artifact(header, [table, zlib.compress(pickle.dumps(doc, protocol=5))])


@pytest.mark.parametrize("attack", [Touch, EvalTouch, RemoveTree, GriddedCallable])
@pytest.mark.parametrize("nested", [False, True, "cell", "table"],
                         ids=["bare", "inside-a-batch-doc", "inside-a-cell", "inside-a-table"])
def test_a_foreign_pickle_is_refused_before_it_runs(plans, tmp_path, attack, nested):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("still here")
    target = victim / "SOMEFILE" if attack in (Touch, EvalTouch) else victim
    evil = attack(target)
    plan = plans[2]
    doc = {"pipeline": plan.pipeline, "grid": plan.grid, "batch": evil} if nested else evil
    path = tmp_path / "cells.pickle"
    if nested in ("cell", "table"):  # a well-formed batch whose one cell's blob or table is the attack
        common = pickle.dumps({"pipeline": plan.pipeline, "grid": plan.grid, "access": None}, protocol=5)
        bad, empty = zlib.compress(pickle.dumps(evil, protocol=5)), zlib.compress(pickle.dumps(((), [])))
        path.write_bytes(artifact_with_a_cell(common, *((empty, bad) if nested == "cell" else (bad, empty))))
    else:
        path.write_bytes(artifact_with(pickle.dumps(doc, protocol=5)))
    with pytest.raises(ArtifactError, match="refusing") as err:
        read_batch(str(path), 1 if nested in ("cell", "table") else 0)
    assert "\n" not in str(err.value)
    assert not (victim / "SOMEFILE").exists()
    assert (victim / "keep.txt").read_text() == "still here"


def test_cells_that_inflate_beyond_the_limit_together_are_refused(artifact, monkeypatch):
    import gridded.artifact

    plan, path = artifact
    data = path.read_bytes()
    outer = zlib.decompress(split_artifact(data)[1][0])
    cells = pickle.loads(outer)["batch"][1]
    tables = {ref for ref, _ in cells}
    sizes = [len(zlib.decompress(blob)) for _, blob in cells]
    sizes += [len(zlib.decompress(data[offset:offset + length])) for offset, length, _ in tables]
    assert len(cells) >= 2 and len(outer) < sum(sizes) - 1 and max(sizes) < sum(sizes) - 1
    # the outer payload, the table and every cell fit the limit alone; together they do not: the
    # limit is the batch's, not each part's
    monkeypatch.setattr(gridded.artifact, "MAX_BATCH_BYTES", sum(sizes) - 1)
    with pytest.raises(ArtifactError, match="inflates beyond"):
        read_batch(str(path), 0)
    monkeypatch.setattr(gridded.artifact, "MAX_BATCH_BYTES", sum(sizes))
    assert read_batch(str(path), 0)[3] == plan.batches[0]


def test_a_pickle_of_plain_builtins_that_is_no_batch_is_refused(tmp_path):
    path = tmp_path / "cells.pickle"
    path.write_bytes(artifact_with(pickle.dumps({"batch": [1, 2, 3], "common": b""})))
    with pytest.raises(ArtifactError, match="holds no batch"):
        read_batch(str(path), 0)
