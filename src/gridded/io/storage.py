"""Where outputs and artifacts live: a local directory or an S3 prefix, with the same methods.

Every write is whole or absent: a temporary name in the same directory, then a rename. An
item is committed create-only (an exclusive hard link), so a second writer cannot clobber it.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from http.client import HTTPException
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError
from urllib3.exceptions import ProtocolError

from ..errors import ConfigError, GriddedError, OutputError, SourceError
from .s3 import http_status, requester_pays, s3_client, split_s3, translate_error, unsigned_requested, with_retries


class Storage(Protocol):
    uri: str

    def exists(self, name: str) -> bool: ...
    def get_bytes(self, name: str) -> bytes: ...
    def get_if_exists(self, name: str) -> bytes | None: ...
    def url(self, name: str) -> str: ...
    def get_range(self, name: str, start: int, length: int) -> bytes: ...
    def put_bytes(self, name: str, data: bytes) -> None: ...
    def put_file(self, name: str, local_path: Path) -> None: ...
    def create_only(self, name: str, data: bytes) -> bool: ...
    def list(self, suffix: str) -> list[str]: ...
    def delete(self, name: str) -> None: ...
    def check_writable(self) -> None: ...
    def scratch_path(self, name: str) -> Path: ...
    def sweep(self) -> int: ...


TEMP_MARK = ".gridded-tmp-"
TEMP_MAX_AGE_S = 24 * 3600
HOST = socket.gethostname()


TEMP_SEPARATOR = "@"  # never in a host name (pods' names are full of '-')


def temp_name(final: str) -> str:
    """A temporary name that says who writes it: host and pid, so a dead writer's leftovers are known."""
    return f"{TEMP_MARK}{HOST}{TEMP_SEPARATOR}{os.getpid()}{TEMP_SEPARATOR}{uuid.uuid4().hex[:12]}-{final}"


def _writer_is_gone(name: str, age_s: float) -> bool:
    """True when the temp file's writer (host and pid in its name) is no longer running here, or it is stale."""
    if age_s > TEMP_MAX_AGE_S:
        return True
    parts = name[len(TEMP_MARK):].split(TEMP_SEPARATOR, 2)
    if len(parts) < 3:
        return False  # not a name this version writes: only age can tell
    host, pid = parts[0], parts[1]
    if host != HOST:
        return False  # another machine's writer: only age can tell
    if not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class LocalStorage:
    """A directory on this machine."""

    def __init__(self, root: Path):
        self.root = root
        self.uri = str(root)
        self._resolved: str | None = None

    def _path(self, name: str) -> Path:
        # the root resolved once; a name joined to it by its text ("..", "." and doubled slashes
        # taken out), which costs no system call: a task names a dozen files
        if self._resolved is None:
            self._resolved = str(self.root.resolve())
        root = self._resolved
        path = os.path.normpath(os.path.join(root, name)) if name else root
        if path != root and not path.startswith(root.rstrip(os.sep) + os.sep):
            raise OutputError(f"{name!r} would be written outside {self.root}; refusing")
        return Path(path)

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()  # an object, as on S3: a folder is not one

    def url(self, name: str) -> str:
        """Where `name` is, as a file:// URL (what asset hrefs and links point at: absolute, also when
        an item is served by an API, against whose address a bare path would resolve)."""
        return self._path(name).as_uri()

    def get_bytes(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except (FileNotFoundError, IsADirectoryError) as err:
            raise SourceError(f"{self.root / name}: not found") from err

    def get_if_exists(self, name: str) -> bytes | None:
        """The object's bytes, or None when there is none."""
        try:
            return self._path(name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def get_range(self, name: str, start: int, length: int) -> bytes:
        try:
            with open(self._path(name), "rb") as f:
                f.seek(start)
                return f.read(length)
        except FileNotFoundError as err:
            raise SourceError(f"{self.root / name if name else self.root}: not found; check the path") from err
        except IsADirectoryError as err:
            raise ConfigError(f"{self.root / name if name else self.root}: is a directory, not a file") from err

    def _temp_for(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.with_name(temp_name(path.name))

    def _commit(self, name: str, fill, commit) -> bool:
        """Fill a temporary file beside `name`, then commit it there (rename or exclusive link)."""
        path = self._path(name)
        try:
            tmp = self._temp_for(path)
            try:
                fill(tmp)
                return commit(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as err:
            raise OutputError(f"{path}: cannot write there ({err.strerror or err}); "
                              f"choose a writable location") from err

    def put_bytes(self, name: str, data: bytes) -> None:
        self._commit(name, lambda tmp: _write_synced(tmp, data), _replace)

    def put_file(self, name: str, local_path: Path) -> None:
        def fill(tmp: Path) -> None:
            if _same_fs(local_path, tmp.parent):
                os.replace(local_path, tmp)
            else:
                shutil.copyfile(local_path, tmp)

        self._commit(name, fill, _replace)

    def create_only(self, name: str, data: bytes) -> bool:
        """Write `name` only if absent; False if it already exists (someone committed first)."""
        return self._commit(name, lambda tmp: _write_synced(tmp, data), _link_if_absent)

    def list(self, suffix: str) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in self.root.rglob(f"*{suffix}")
            if TEMP_MARK not in p.name and p.is_file()
        )

    def delete(self, name: str) -> None:
        path = self._path(name)
        if path.is_file() or path.is_symlink():
            path.unlink()

    def scratch_path(self, name: str) -> Path:
        """Where to build `name` before committing it: a temporary name beside it (one filesystem,
        so committing is a rename; a crash leaves only a temporary name, which `sweep` removes)."""
        try:
            return self._temp_for(self._path(name))
        except OSError as err:
            raise OutputError(f"{self.root / name}: cannot write there ({err.strerror or err})") from err

    def sweep(self) -> int:
        """Remove temporary files whose writer is gone; returns how many."""
        removed = 0
        if not self.root.is_dir():
            return 0
        now = time.time()
        for path in self.root.rglob(f"{TEMP_MARK}*"):
            try:
                if _writer_is_gone(path.name, now - path.stat().st_mtime):
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        return removed

    def check_writable(self) -> None:
        """Refuse an output that cannot be created or written, without creating anything."""
        probe = self.root.absolute()
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise ConfigError(f"--output {self.root}: {probe} is a file, not a directory; choose a directory")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise ConfigError(f"--output {self.root}: {probe} is not writable; choose a writable directory")


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _replace(tmp: Path, path: Path) -> bool:
    os.replace(tmp, path)
    return True


def _link_if_absent(tmp: Path, path: Path) -> bool:
    try:
        os.link(tmp, path)  # fails if `path` exists: the exclusive commit
    except FileExistsError:
        return False
    return True


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False


class S3Storage:
    """A prefix in an S3 bucket: whole-object PUTs only (no multipart upload ever left open),
    create-only commits with `If-None-Match: *`, existence by HEAD."""

    def __init__(self, uri: str, *, source: bool = False):
        self.uri = uri.rstrip("/")
        self.bucket, prefix = split_s3(self.uri + "/")
        self.prefix = prefix.strip("/")
        self.source = source

    @property
    def client(self):
        return s3_client(unsigned=self.source and unsigned_requested())

    def _extra(self) -> dict:
        return {"RequestPayer": "requester"} if self.source and requester_pays() else {}

    def _key(self, name: str) -> str:
        parts = [p for p in name.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise OutputError(f"{name!r} would be written outside {self.uri}; refusing")
        return "/".join([self.prefix] + parts if self.prefix else parts)

    def _uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name)}"

    def url(self, name: str) -> str:
        """Where `name` is, as an s3:// URI (what asset hrefs and links point at)."""
        return self._uri(name)

    def _call(self, name: str, method: str, **kwargs):
        """One S3 call for `name`, retried while it fails transiently, its last failure translated."""
        return self._retried(name, lambda: getattr(self.client, method)(Bucket=self.bucket, **kwargs))

    def _retried(self, name: str, call, *, source: bool | None = None):
        uri = self._uri(name) if name else self.uri
        try:
            return with_retries(call, what=uri)
        except (ClientError, BotoCoreError, OSError, HTTPException, ProtocolError) as err:
            if isinstance(err, GriddedError):
                raise
            raise translate_error(err, uri, source=self.source if source is None else source) from err

    def exists(self, name: str) -> bool:
        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(name), **self._extra())
                return True
            except ClientError as err:
                if http_status(err) == 404:
                    return False
                raise

        return self._retried(name, head)

    def _read(self, name: str, **kwargs) -> bytes:
        """GET an object's body, the request and the reading of its body retried together (a body
        cut short is a failure botocore would not retry)."""
        def get() -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(name), **kwargs,
                                          **self._extra())["Body"].read()

        return self._retried(name, get)

    def get_bytes(self, name: str) -> bytes:
        return self._read(name)

    def get_if_exists(self, name: str) -> bytes | None:
        """The object's bytes, or None when there is none: one GET, where a HEAD and a GET would
        wait two round trips."""
        def get() -> bytes | None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._key(name),
                                              **self._extra())["Body"].read()
            except ClientError as err:
                if http_status(err) == 404:
                    return None
                raise

        return self._retried(name, get)

    def get_range(self, name: str, start: int, length: int) -> bytes:
        if length <= 0:
            if not self.exists(name):  # as a local file's: nothing to read still needs an object
                raise SourceError(f"{self._uri(name)}: not found; check the key")
            return b""
        try:
            return self._read(name, Range=f"bytes={start}-{start + length - 1}")
        except (ConfigError, SourceError, OutputError) as err:
            if isinstance(err.__cause__, ClientError) and \
                    err.__cause__.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""
            raise

    def put_bytes(self, name: str, data: bytes) -> None:
        self._call(name, "put_object", Key=self._key(name), Body=data, ContentType=_content_type(name))

    def put_file(self, name: str, local_path: Path) -> None:
        def put() -> None:
            with open(local_path, "rb") as body:  # opened per attempt: a retry sends it from the start
                self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=body,
                                       ContentType=_content_type(name))

        self._retried(name, put)

    def create_only(self, name: str, data: bytes) -> bool:
        def put() -> bool:
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data,
                                       ContentType=_content_type(name), IfNoneMatch="*")
                return True
            except ClientError as err:
                if http_status(err) in (409, 412):
                    return False  # committed already (maybe by our own retried PUT): the caller checks it
                raise

        return self._retried(name, put, source=False)

    def list(self, suffix: str) -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""

        def listing() -> list[str]:  # retried whole: a listing is idempotent
            names = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for obj in page.get("Contents", []):
                    if obj["Key"].endswith(suffix):
                        names.append(obj["Key"][len(base):])
            return sorted(names)

        return self._retried("", listing)

    def delete(self, name: str) -> None:
        self._call(name, "delete_object", Key=self._key(name))

    def scratch_path(self, name: str) -> Path:
        """A local file to build `name` in before its one PUT."""
        import tempfile

        return Path(tempfile.gettempdir()) / temp_name(Path(name).name)

    def sweep(self) -> int:
        """Whole-object PUTs leave no partial objects: nothing to sweep."""
        return 0

    def check_writable(self) -> None:
        def head_bucket() -> None:
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as err:
                if http_status(err) == 404:
                    raise ConfigError(f"--output {self.uri}: bucket {self.bucket} does not exist; "
                                      f"check the bucket name (and AWS_ENDPOINT_URL)") from err
                raise

        self._retried("", head_bucket, source=False)


def _content_type(name: str) -> str:
    if name.endswith(".tif"):
        return "image/tiff; application=geotiff; profile=cloud-optimized"
    if name.endswith(".json"):
        return "application/json"
    return "application/octet-stream"


def open_storage(uri: str, *, source: bool = False) -> Storage:
    """An output root (or a source prefix): a local path, file:// URL or s3://bucket/prefix."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return S3Storage(uri, source=source)
    if parsed.scheme == "file":
        return LocalStorage(Path(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:
        return LocalStorage(Path(uri))
    raise ConfigError(f"{uri}: scheme {parsed.scheme}:// is not supported; use a local directory or s3://")


def storage_for_file(uri: str, *, source: bool = False) -> tuple[Storage, str]:
    """(storage of the parent, name) for a single-object URI such as the cells artifact."""
    stripped = uri.rstrip("/")
    parent, _, name = stripped.rpartition("/")
    if not name or stripped.endswith(":/"):
        raise ConfigError(f"{uri}: not a file path")
    if parent in ("s3:/", "s3:"):
        raise ConfigError(f"{uri}: needs a key after the bucket, e.g. s3://bucket/runs/cells.pickle")
    return open_storage(parent or ".", source=source), name


_UNREAD = object()


def put_if_changed(storage: Storage, name: str, body: bytes, *, existing=_UNREAD) -> bool:
    """Write `name` unless it already holds `body` (a rerun that changed nothing writes nothing);
    True when written. `existing`: its bytes as the caller read them (None: there is none), so
    that they are not read again."""
    if existing is _UNREAD:
        try:
            existing = storage.get_if_exists(name)
        except SourceError:  # unreadable as it is: write it anew
            existing = None
    if existing == body:
        return False
    storage.put_bytes(name, body)
    return True


# Objects read at once from an object store, where each read waits a round trip, not a CPU
READS_AT_ONCE = 32


def get_many(storage: Storage, names: list[str]) -> list[bytes | None]:
    """Each object's bytes (None where there is none), read READS_AT_ONCE at a time."""
    if len(names) <= 1 or not storage.uri.startswith("s3://"):
        return [storage.get_if_exists(name) for name in names]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(READS_AT_ONCE, len(names))) as pool:
        return list(pool.map(storage.get_if_exists, names))
