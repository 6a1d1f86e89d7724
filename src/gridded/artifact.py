"""The cells artifact: batches pickled one by one, each found through a fixed-width index, so a
worker reads four small ranges and its own batch whatever the plan's size.

Layout (integers little-endian):

    MAGIC                      b"GRIDDED-CELLS\n"
    preamble                   4 x uint64: header offset, header length, index offset, batch count
    payload 0 .. payload N-1   each the zlib-compressed pickle of one batch (with its recipe,
                               grid and source access)
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
from pathlib import Path
from typing import NamedTuple

from .errors import ArtifactError
from .grid import Grid
from .io.access import SourceAccess
from .io.storage import storage_for_file
from .pipeline import Pipeline
from .plan import Batch, Plan

MAGIC = b"GRIDDED-CELLS\n"
FORMAT_VERSION = 2
PREAMBLE = struct.Struct("<4Q")
ENTRY = struct.Struct("<QQ32s")
MAX_HEADER_BYTES = 1 << 20
ZLIB_LEVEL = 1
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
    batches: Iterable[Batch] = plan.batches if isinstance(plan, Plan) else plan
    scratch = Path(store.scratch_path(name))
    try:
        n = _write_file(scratch, batches, plan)
        store.put_file(name, scratch)
    finally:
        if scratch.exists():
            scratch.unlink()
    return n


def _write_file(path: Path, batches: Iterable[Batch], plan) -> int:
    entries = []
    with open(path, "wb") as f:
        f.write(MAGIC + PREAMBLE.pack(0, 0, 0, 0))
        for expected, batch in enumerate(batches):
            if batch.id != expected:
                raise ArtifactError(f"batch ids must be 0..N-1 in order: got {batch.id} after {expected - 1}")
            payload = zlib.compress(pickle.dumps({"pipeline": plan.pipeline, "grid": plan.grid, "batch": batch,
                                                  "access": plan.access}, protocol=5), ZLIB_LEVEL)
            entries.append(ENTRY.pack(f.tell(), len(payload), hashlib.sha256(payload).digest()))
            f.write(payload)
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
        inflate = zlib.decompressobj()
        data = inflate.decompress(payload, MAX_BATCH_BYTES)
        if inflate.unconsumed_tail:
            raise ArtifactError(f"{uri}: batch {batch_id} inflates beyond {MAX_BATCH_BYTES >> 20} MiB; regenerate it")
        doc = _RestrictedUnpickler(io.BytesIO(data)).load()
    except ArtifactError:
        raise
    except Exception as err:
        raise ArtifactError(f"{uri}: batch {batch_id} cannot be decoded ({err.__class__.__name__}); regenerate it") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("batch"), Batch) or doc["batch"].id != batch_id:
        raise ArtifactError(f"{uri}: batch {batch_id} holds no batch {batch_id}; regenerate it")
    return BatchRead(header, doc["pipeline"], doc["grid"], doc["batch"], doc.get("access") or SourceAccess())
