"""The cells artifact: batches pickled one by one, each found through a fixed-width index, so a
worker reads four small ranges and its own batch whatever the plan's size.

Layout (integers little-endian):

    MAGIC                      b"GRIDDED-CELLS\n"
    preamble                   4 x uint64: header offset, header length, index offset, batch count
    payload 0 .. payload N-1   each the zlib-compressed pickle of one batch, as plain tuples (its
                               observations once each, its tasks naming them by position), and of
                               its recipe, grid and source access (pickled once, the same bytes in
                               every payload)
    header                     JSON: format, version, created, pipeline, grid, batches (the count)
    index                      N x 48 bytes: payload offset (uint64), length (uint64), SHA-256 (32 bytes)

The file is written as the plan is made, batch by batch, to a local file (then put whole), and
its preamble filled in last. A worker reads the preamble, the header, its index entry and its
payload, checks the payload's SHA-256, then unpickles it with an unpickler that admits gridded's
value classes and a few datetime builtins, nothing else: pickle runs code on load, so a foreign
or tampered file must be refused before that.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import zlib
from collections.abc import Iterable
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
from .plan import Batch, Plan, Task, cell_blob, tasks_of_rows

MAGIC = b"GRIDDED-CELLS\n"
FORMAT_VERSION = 4  # 3: batches as plain tuples beside one pickle of what they share; 4: cells compressed apart
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


def _encoded(batch: Batch) -> tuple[int, tuple[bytes, ...]]:
    """A batch of a Plan as a stream's encoded_batches gives it: (id, one blob per cell)."""
    return batch.id, tuple(cell_blob(list(tasks)) for _, tasks in groupby(batch.tasks, key=attrgetter("key")))


def _write_file(path: Path, batches: Iterable[tuple], plan) -> int:
    entries = []
    # what every batch's payload carries besides its batch, pickled once
    common = pickle.dumps({"pipeline": plan.pipeline, "grid": plan.grid, "access": plan.access}, protocol=5)
    with open(path, "wb") as f:
        f.write(MAGIC + PREAMBLE.pack(0, 0, 0, 0))
        offset = len(MAGIC) + PREAMBLE.size
        for expected, batch in enumerate(batches):  # each (id, its cells' blobs)
            if batch[0] != expected:
                raise ArtifactError(f"batch ids must be 0..N-1 in order: got {batch[0]} after {expected - 1}")
            # the cells are compressed already: the payload is stored (level 0), a zlib stream still
            payload = zlib.compress(pickle.dumps({"common": common, "batch": batch}, protocol=5), 0)
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
    if head[len(MAGIC):len(MAGIC) + 1] == b"{":  # the first layout: a JSON header line
        raise ArtifactError(f"{uri}: artifact format gridded-cells v1, this gridded reads gridded-cells "
                            f"v{FORMAT_VERSION}; regenerate it with this version")
    if len(head) < len(MAGIC) + PREAMBLE.size:
        raise ArtifactError(f"{uri}: truncated preamble; {REGENERATE}")
    header_at, header_length, index_at, n = PREAMBLE.unpack(head[len(MAGIC):])
    if not 0 < header_length <= MAX_HEADER_BYTES or header_at + header_length != index_at:
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


def read_batch(uri: str, batch_id: int) -> BatchRead:
    """(header, pipeline, grid, batch, access) for one batch id, digest-checked and safely unpickled:
    four ranged reads (preamble, header, index entry, payload), whatever the artifact's size."""
    store, name = storage_for_file(uri)
    header, index_at, n = read_header(store, name, uri)
    if not 0 <= batch_id < n:
        span = f"0..{n - 1}" if n else "none"
        raise ArtifactError(f"--batch {batch_id}: no such batch in {uri} (batches: {span})")
    entry = store.get_range(name, index_at + batch_id * ENTRY.size, ENTRY.size)
    if len(entry) != ENTRY.size:
        raise ArtifactError(f"{uri}: truncated index; {REGENERATE}")
    offset, length, digest = ENTRY.unpack(entry)
    payload = store.get_range(name, offset, length)
    if len(payload) != length or hashlib.sha256(payload).digest() != digest:
        raise ArtifactError(f"{uri}: batch {batch_id} fails its SHA-256 check (tampered or truncated); regenerate it")
    try:
        outer = _RestrictedUnpickler(io.BytesIO(_inflated(payload, MAX_BATCH_BYTES, uri, batch_id))).load()
        batch = outer.get("batch") if isinstance(outer, dict) else None
        if not (isinstance(batch, tuple) and isinstance(outer.get("common"), bytes) and len(batch) == 2
                and batch[0] == batch_id and isinstance(batch[1], tuple)
                and all(isinstance(blob, bytes) for blob in batch[1])):
            raise ArtifactError(f"{uri}: batch {batch_id} holds no batch {batch_id}; regenerate it")
        doc = _RestrictedUnpickler(io.BytesIO(outer["common"])).load()
        budget, tasks = MAX_BATCH_BYTES, list[Task]()
        for blob in batch[1]:  # each cell's tasks, compressed apart (by the process that planned it)
            rows = _inflated(blob, budget, uri, batch_id)
            budget -= len(rows)
            heads, (observations, times) = _RestrictedUnpickler(io.BytesIO(rows)).load()
            tasks.extend(tasks_of_rows(heads, observations, times))
        doc["batch"] = Batch(id=batch_id, tasks=tuple(tasks))
    except ArtifactError:
        raise
    except Exception as err:
        raise ArtifactError(f"{uri}: batch {batch_id} cannot be decoded ({err.__class__.__name__}); "
                            f"regenerate it") from err
    if not isinstance(doc, dict):
        raise ArtifactError(f"{uri}: batch {batch_id} holds no batch {batch_id}; regenerate it")
    return BatchRead(header, doc["pipeline"], doc["grid"], doc["batch"], doc.get("access") or SourceAccess())
