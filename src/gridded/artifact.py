"""The cells artifact: batches pickled one by one behind a JSON header of offsets and digests.

Layout: the magic line, one JSON header line, then each batch's pickle. A worker reads the
header and its own batch only, checks that batch's SHA-256, then unpickles it with an
unpickler that admits gridded's value classes and a few datetime builtins, nothing else:
pickle runs code on load, so a foreign or tampered file must be refused before that.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from typing import NamedTuple
from datetime import UTC, datetime

from .errors import ArtifactError
from .io.storage import storage_for_file
from .grid import Grid
from .io.access import SourceAccess
from .pipeline import Pipeline
from .plan import Batch, Plan

MAGIC = b"GRIDDED-CELLS\n"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024 * 1024

ALLOWED_CLASSES = {
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


def encode_artifact(plan: Plan) -> bytes:
    """The artifact bytes for a plan: header with per-batch offsets and SHA-256, then payloads."""
    payloads = [
        pickle.dumps({"pipeline": plan.pipeline, "grid": plan.grid, "batch": b, "access": plan.access}, protocol=5)
        for b in plan.batches
    ]
    entries, offset = [], 0
    for batch, payload in zip(plan.batches, payloads):
        entries.append({"id": batch.id, "offset": offset, "length": len(payload),
                        "sha256": hashlib.sha256(payload).hexdigest(), "cells": batch.cells})
        offset += len(payload)
    header = {
        "format": "gridded-cells",
        "version": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(),
        "pipeline": plan.pipeline.name,
        "grid": plan.grid.name,
        "batches": entries,
    }
    return MAGIC + json.dumps(header, separators=(",", ":")).encode() + b"\n" + b"".join(payloads)


def write_artifact(plan: Plan, uri: str) -> None:
    store, name = storage_for_file(uri)
    store.put_bytes(name, encode_artifact(plan))


def read_header(blob_head: bytes, uri: str) -> tuple[dict, int]:
    if not blob_head.startswith(MAGIC):
        raise ArtifactError(f"{uri}: not a gridded cells artifact (bad magic); regenerate it with `gridded tiles generate`")
    end = blob_head.find(b"\n", len(MAGIC))
    if end < 0:
        raise ArtifactError(f"{uri}: truncated header; regenerate it with `gridded tiles generate`")
    try:
        header = json.loads(blob_head[len(MAGIC):end])
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{uri}: corrupt header; regenerate it with `gridded tiles generate`") from err
    if not isinstance(header, dict):
        raise ArtifactError(f"{uri}: corrupt header; regenerate it with `gridded tiles generate`")
    if header.get("format") != "gridded-cells" or header.get("version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{uri}: artifact format {header.get('format')} v{header.get('version')}, this gridded reads "
            f"gridded-cells v{FORMAT_VERSION}; regenerate it with this version"
        )
    entries = header.get("batches")
    required = {"id": int, "offset": int, "length": int, "sha256": str}
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and all(isinstance(e.get(k), t) for k, t in required.items()) for e in entries):
        raise ArtifactError(f"{uri}: corrupt header (batch entries); regenerate it with `gridded tiles generate`")
    return header, end + 1


class BatchRead(NamedTuple):
    header: dict
    pipeline: Pipeline
    grid: Grid
    batch: Batch
    access: SourceAccess


def read_batch(uri: str, batch_id: int) -> BatchRead:
    """(header, pipeline, grid, batch, access) for one batch id, digest-checked and safely unpickled."""
    store, name = storage_for_file(uri)
    head = store.get_range(name, 0, MAX_HEADER_BYTES)
    header, base = read_header(head, uri)
    entries = {e["id"]: e for e in header["batches"]}
    if batch_id not in entries:
        ids = sorted(entries)
        span = f"{ids[0]}..{ids[-1]}" if ids else "none"
        raise ArtifactError(f"--batch {batch_id}: no such batch in {uri} (batches: {span})")
    entry = entries[batch_id]
    payload = store.get_range(name, base + entry["offset"], entry["length"])
    if len(payload) != entry["length"] or hashlib.sha256(payload).hexdigest() != entry["sha256"]:
        raise ArtifactError(f"{uri}: batch {batch_id} fails its SHA-256 check (tampered or truncated); regenerate it")
    try:
        doc = _RestrictedUnpickler(io.BytesIO(payload)).load()
    except ArtifactError:
        raise
    except Exception as err:
        raise ArtifactError(f"{uri}: batch {batch_id} cannot be decoded ({err.__class__.__name__}); regenerate it") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("batch"), Batch):
        raise ArtifactError(f"{uri}: batch {batch_id} holds no batch; regenerate it")
    return BatchRead(header, doc["pipeline"], doc["grid"], doc["batch"], doc.get("access") or SourceAccess())
