"""The cells artifact: batches pickled one by one, each found through a fixed-width index, so a
worker reads a few small ranges and its own batch whatever the plan's size.

Layout (integers little-endian):

    MAGIC                      b"GRIDDED-CELLS\n"
    preamble                   4 x uint64: header offset, header length, index offset, batch count
    tables and payloads        in the order written, each table before the first payload naming it:
      table                    the zlib-compressed pickle of the observations of a group of
                               neighbouring cells (plain tuples, each observation once; CellRows)
      payload 0 .. N-1         the pickle (in a stored zlib stream) of one batch: per cell the
                               offset, length and SHA-256 of its table and the zlib-compressed pickle
                               of its tasks (naming observations by their row in the table), beside
                               the recipe, grid and source access (pickled once, the same bytes in
                               every payload)
    header                     JSON: format, version, created, pipeline, grid, batches (the count)
    index                      N x 48 bytes: payload offset (uint64), length (uint64), SHA-256 (32 bytes)

The file is written as the plan is made, batch by batch, to a local file (then put whole), and
its preamble filled in last. A worker reads the preamble, the header, its index entry, its payload
and its cells' tables (one, unless the batch spans groups), checks each one's SHA-256, then
unpickles them with an unpickler that admits gridded's value classes and a few datetime builtins,
nothing else: pickle runs code on load, so a foreign or tampered file must be refused before that.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import zlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from itertools import groupby
from operator import attrgetter
from pathlib import Path
from typing import NamedTuple

from .errors import ArtifactError
from .grid import Grid
from .io.access import SourceAccess
from .io.storage import storage_for_file
from .pipeline import Pipeline
from .plan import Batch, Observation, Plan, Task, encode_cells, observation_of_row, tasks_of_cell

MAGIC = b"GRIDDED-CELLS\n"
FORMAT_VERSION = 5  # 3: batches as plain tuples beside one pickle of what they share; 4: cells compressed
# apart, their observations in tables that neighbouring cells share; 5: the recipe (pickled by
# position) gained index_only
PREAMBLE = struct.Struct("<4Q")
ENTRY = struct.Struct("<QQ32s")
MAX_HEADER_BYTES = 1 << 20
MAX_BATCH_BYTES = 4 << 30  # a batch's pickle inflates to at most this
REGENERATE = "regenerate it with `gridded tiles generate`"

ALLOWED_CLASSES = {
    ("gridded._pickling", "rebuild"),  # sets the slots of one of these classes (it is given the class)
    ("gridded.plan", "Batch"),
    ("gridded.plan", "Task"),
    ("gridded.plan", "Observation"),
    ("gridded.period", "Period"),
    ("gridded.pipeline", "Pipeline"),
    ("gridded.masks", "MaskRule"),
    ("gridded.grid", "Grid"),
    ("gridded.io.access", "SourceAccess"),
    ("datetime", "datetime"),
    ("datetime", "timezone"),
    ("datetime", "timedelta"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in ALLOWED_CLASSES:
            raise ArtifactError(
                f"cells artifact refers to {module}.{name}, which is not a gridded value; "
                f"refusing to load it (regenerate it with `gridded tiles generate`)"
            )
        return super().find_class(module, name)


def write_artifact(plan, uri: str) -> int:
    """Write the batches of a Plan or PlanStream (iterated here, so a stream is made as it is
    written) to `uri`; the number of batches written. Nothing is left at `uri` on failure."""
    store, name = storage_for_file(uri)
    batches: Iterable[tuple] = (map(_encoded, plan.batches) if isinstance(plan, Plan) else plan.encoded_batches())
    scratch = Path(store.scratch_path(name))
    try:
        n = _write_file(scratch, batches, plan)
        store.put_file(name, scratch)
    finally:
        if hasattr(batches, "close"):  # a stream stopped early stops its planning workers now
            batches.close()
        if scratch.exists():
            scratch.unlink()
    return n


def _encoded(batch: Batch) -> tuple[int, tuple[tuple[bytes, bytes], ...]]:
    """A batch of a Plan as a stream's encoded_batches gives it: (id, (table, blob) per cell)."""
    cells = encode_cells([list(tasks) for _, tasks in groupby(batch.tasks, key=attrgetter("key"))])
    return batch.id, tuple((cell.table, cell.blob) for cell in cells)


TableRef = tuple[int, int, bytes]  # where a table of observations is in the file: offset, length, SHA-256


def _write_file(path: Path, batches: Iterable[tuple], plan) -> int:
    entries = []
    common = None  # what every payload carries besides its batch, pickled once: when the first batch
    # is made (a stream resolves its recipe while its first blocks are planned)
    with open(path, "wb") as f:
        f.write(MAGIC + PREAMBLE.pack(0, 0, 0, 0))
        offset = len(MAGIC) + PREAMBLE.size
        # the tables written lately (a group's cells come one after another, so an older table is
        # never met again): id -> (the table, kept so its id is not reused; where it is)
        tables: dict[int, tuple[bytes, TableRef]] = {}
        for expected, (batch_id, cells) in enumerate(batches):  # each (id, (table, blob) per cell)
            if batch_id != expected:
                raise ArtifactError(f"batch ids must be 0..N-1 in order: got {batch_id} after {expected - 1}")
            if common is None:
                common = pickle.dumps({"pipeline": plan.pipeline, "grid": plan.grid, "access": plan.access},
                                      protocol=5)
            stored = []
            for table, blob in cells:
                if id(table) not in tables:  # a table before the first payload that needs it
                    tables[id(table)] = table, (offset, len(table), hashlib.sha256(table).digest())
                    f.write(table)
                    offset += len(table)
                    if len(tables) > 4:
                        del tables[next(iter(tables))]
                stored.append((tables[id(table)][1], blob))
            # the cells are compressed already: the payload is stored (level 0), a zlib stream still
            payload = zlib.compress(pickle.dumps({"common": common, "batch": (batch_id, tuple(stored))},
                                                 protocol=5), 0)
            entries.append(ENTRY.pack(offset, len(payload), hashlib.sha256(payload).digest()))
            f.write(payload)
            offset += len(payload)
        header = json.dumps({"format": "gridded-cells", "version": FORMAT_VERSION,
                             "created": datetime.now(UTC).isoformat(), "pipeline": plan.pipeline.name,
                             "grid": plan.grid.name, "batches": len(entries)}, separators=(",", ":")).encode()
        header_at = f.tell()
        f.write(header)
        index_at = f.tell()
        f.write(b"".join(entries))
        f.seek(len(MAGIC))
        f.write(PREAMBLE.pack(header_at, len(header), index_at, len(entries)))
        f.flush()
        os.fsync(f.fileno())
    return len(entries)


def read_header(store, name: str, uri: str) -> tuple[dict, int, int]:
    """(header, index offset, batch count) of an artifact, its layout checked."""
    head = store.get_range(name, 0, len(MAGIC) + PREAMBLE.size)
    if not head.startswith(MAGIC):
        raise ArtifactError(f"{uri}: not a gridded cells artifact (bad magic); {REGENERATE}")
    header_at, header_length, index_at, n = (PREAMBLE.unpack(head[len(MAGIC):])
                                             if len(head) == len(MAGIC) + PREAMBLE.size else (0, 0, 0, 0))
    if not 0 < header_length <= MAX_HEADER_BYTES or header_at + header_length != index_at:
        # the first layout had a JSON header line here; a preamble may start with that byte too
        if head[len(MAGIC):len(MAGIC) + 1] == b"{":
            raise ArtifactError(f"{uri}: artifact format gridded-cells v1, this gridded reads gridded-cells "
                                f"v{FORMAT_VERSION}; regenerate it with this version")
        if len(head) < len(MAGIC) + PREAMBLE.size:
            raise ArtifactError(f"{uri}: truncated preamble; {REGENERATE}")
        raise ArtifactError(f"{uri}: corrupt preamble (unfinished or damaged file); {REGENERATE}")
    blob = store.get_range(name, header_at, header_length)
    try:
        header = json.loads(blob)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{uri}: corrupt header; {REGENERATE}") from err
    if not isinstance(header, dict):
        raise ArtifactError(f"{uri}: corrupt header; {REGENERATE}")
    if header.get("format") != "gridded-cells" or header.get("version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{uri}: artifact format {header.get('format')} v{header.get('version')}, this gridded reads "
            f"gridded-cells v{FORMAT_VERSION}; regenerate it with this version"
        )
    if header.get("batches") != n:
        raise ArtifactError(f"{uri}: corrupt header (batch count); {REGENERATE}")
    return header, index_at, n


class BatchRead(NamedTuple):
    header: dict
    pipeline: Pipeline
    grid: Grid
    batch: Batch
    access: SourceAccess


def _inflated(data: bytes, limit: int, uri: str, batch_id: int) -> bytes:
    """`data` inflated, refused past `limit` bytes (a small payload may inflate to any size)."""
    inflate = zlib.decompressobj()
    out = inflate.decompress(data, limit) if limit > 0 else b""  # (a max_length of 0 is no limit)
    if inflate.unconsumed_tail or (limit <= 0 and data):
        raise ArtifactError(f"{uri}: batch {batch_id} inflates beyond {MAX_BATCH_BYTES >> 20} MiB; regenerate it")
    if not inflate.eof:
        raise ArtifactError(f"{uri}: batch {batch_id} is cut short; regenerate it")
    return out


def _is_cell(cell) -> bool:
    return (isinstance(cell, tuple) and len(cell) == 2 and isinstance(cell[1], bytes) and isinstance(cell[0], tuple)
            and len(cell[0]) == 3 and isinstance(cell[0][0], int) and isinstance(cell[0][1], int)
            and isinstance(cell[0][2], bytes))


def _observations_of(rows, times) -> Callable[[int], Observation]:
    """A table's observation i, each made once (cells of one batch share them)."""
    made: dict[int, Observation] = {}

    def at(i: int) -> Observation:
        if i not in made:
            made[i] = observation_of_row(rows[i], times[i])
        return made[i]

    return at


def _checked_range(store, name: str, ref: TableRef, uri: str, batch_id: int) -> bytes:
    """The bytes at (offset, length) whose SHA-256 is the digest given."""
    offset, length, digest = ref
    data = store.get_range(name, offset, length)
    if len(data) != length or hashlib.sha256(data).digest() != digest:
        raise ArtifactError(f"{uri}: batch {batch_id} fails its SHA-256 check (tampered or truncated); regenerate it")
    return data


def read_batch(uri: str, batch_id: int) -> BatchRead:
    """(header, pipeline, grid, batch, access) for one batch id, digest-checked and safely unpickled:
    five ranged reads (preamble, header, index entry, payload, the table of observations its cells
    share; one more for each further table), whatever the artifact's size."""
    store, name = storage_for_file(uri)
    header, index_at, n = read_header(store, name, uri)
    if not 0 <= batch_id < n:
        span = f"0..{n - 1}" if n else "none"
        raise ArtifactError(f"--batch {batch_id}: no such batch in {uri} (batches: {span})")
    entry = store.get_range(name, index_at + batch_id * ENTRY.size, ENTRY.size)
    if len(entry) != ENTRY.size:
        raise ArtifactError(f"{uri}: truncated index; {REGENERATE}")
    offset, length, digest = ENTRY.unpack(entry)
    payload = _checked_range(store, name, (offset, length, digest), uri, batch_id)
    try:
        outer = _RestrictedUnpickler(io.BytesIO(_inflated(payload, MAX_BATCH_BYTES, uri, batch_id))).load()
        batch = outer.get("batch") if isinstance(outer, dict) else None
        if not (isinstance(batch, tuple) and isinstance(outer.get("common"), bytes) and len(batch) == 2
                and batch[0] == batch_id and isinstance(batch[1], tuple) and all(map(_is_cell, batch[1]))):
            raise ArtifactError(f"{uri}: batch {batch_id} holds no batch {batch_id}; regenerate it")
        doc = _RestrictedUnpickler(io.BytesIO(outer["common"])).load()
        budget, tasks = MAX_BATCH_BYTES, list[Task]()
        tables: dict[TableRef, Callable[[int], Observation]] = {}
        for ref, blob in batch[1]:  # each cell's tasks, and the table of observations it refers to
            if ref not in tables:
                raw = _inflated(_checked_range(store, name, ref, uri, batch_id), budget, uri, batch_id)
                budget -= len(raw)
                rows, times = _RestrictedUnpickler(io.BytesIO(raw)).load()
                tables[ref] = _observations_of(rows, times)
            raw = _inflated(blob, budget, uri, batch_id)
            budget -= len(raw)
            heads, refs = _RestrictedUnpickler(io.BytesIO(raw)).load()
            tasks.extend(tasks_of_cell(heads, refs, tables[ref]))
        doc["batch"] = Batch(id=batch_id, tasks=tuple(tasks))
    except ArtifactError:
        raise
    except Exception as err:
        raise ArtifactError(f"{uri}: batch {batch_id} cannot be decoded ({err.__class__.__name__}); "
                            f"regenerate it") from err
    if not isinstance(doc, dict):
        raise ArtifactError(f"{uri}: batch {batch_id} holds no batch {batch_id}; regenerate it")
    return BatchRead(header, doc["pipeline"], doc["grid"], doc["batch"], doc.get("access") or SourceAccess())
