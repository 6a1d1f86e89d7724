"""Where outputs and artifacts live: a local directory (S3 joins it with the same methods).

Every write is whole or absent: a temporary name in the same directory, then a rename. An
item is committed create-only (an exclusive hard link), so a second writer cannot clobber it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from .errors import ConfigError, OutputError, SourceError


class Storage(Protocol):
    uri: str

    def exists(self, name: str) -> bool: ...
    def get_bytes(self, name: str) -> bytes: ...
    def get_range(self, name: str, start: int, length: int) -> bytes: ...
    def put_bytes(self, name: str, data: bytes) -> None: ...
    def put_file(self, name: str, local_path: Path) -> None: ...
    def create_only(self, name: str, data: bytes) -> bool: ...
    def list(self, suffix: str) -> list[str]: ...
    def delete(self, name: str) -> None: ...
    def check_writable(self) -> None: ...


TEMP_MARK = ".gridded-tmp-"


class LocalStorage:
    """A directory on this machine."""

    def __init__(self, root: Path):
        self.root = root
        self.uri = str(root)

    def _path(self, name: str) -> Path:
        path = (self.root / name).resolve() if name else self.root.resolve()
        root = self.root.resolve()
        if path != root and root not in path.parents:
            raise OutputError(f"{name!r} would be written outside {self.root}; refusing")
        return path

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def get_bytes(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError as err:
            raise SourceError(f"{self.root / name}: not found") from err

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
        return path.with_name(f"{TEMP_MARK}{uuid.uuid4().hex}-{path.name}")

    def put_bytes(self, name: str, data: bytes) -> None:
        path = self._path(name)
        tmp = self._temp_for(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, name: str, local_path: Path) -> None:
        path = self._path(name)
        tmp = self._temp_for(path)
        try:
            os.replace(local_path, tmp) if _same_fs(local_path, tmp.parent) else tmp.write_bytes(local_path.read_bytes())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def create_only(self, name: str, data: bytes) -> bool:
        """Write `name` only if absent; False if it already exists (someone committed first)."""
        path = self._path(name)
        tmp = self._temp_for(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def list(self, suffix: str) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in self.root.rglob(f"*{suffix}") if TEMP_MARK not in p.name
        )

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def local_temp_dir(self, name: str) -> Path:
        """A directory beside `name` for scratch files, so the final rename stays on one filesystem."""
        path = self._path(name).parent
        path.mkdir(parents=True, exist_ok=True)
        return path

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f"{TEMP_MARK}probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise ConfigError(
                f"--output {self.root}: cannot write there ({err.strerror or err}); choose a writable directory"
            ) from err


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False


def open_storage(uri: str) -> Storage:
    """An output root: a local path or file:// URL."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return LocalStorage(Path(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:
        return LocalStorage(Path(uri))
    raise ConfigError(f"{uri}: scheme {parsed.scheme}:// is not supported; use a local directory")


def storage_for_file(uri: str) -> tuple[Storage, str]:
    """(storage of the parent, name) for a single-object URI such as the cells artifact."""
    stripped = uri.rstrip("/")
    parent, _, name = stripped.rpartition("/")
    if not name:
        raise ConfigError(f"{uri}: not a file path")
    return open_storage(parent or "."), name
