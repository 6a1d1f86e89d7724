"""The Storage contract, run over both implementations: a local directory and an S3 prefix on the
moto server; then S3's retries through a fault-injecting proxy on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from fault_proxy import FaultProxy, Rule

import gridded.io.s3 as s3_module
from gridded.errors import ConfigError, GriddedError
from gridded.io.storage import HOST, TEMP_MARK, LocalStorage, S3Storage, Storage, get_many, put_if_changed, temp_name

BODY = bytes(range(256)) * 4  # 1,024 bytes, every byte value, so a range off by one shows


@dataclass
class Backend:
    kind: str
    storage: Storage  # rooted at `out` inside its container (a folder, a bucket)
    expected_url: Callable[[str], str]  # the absolute URL a name must have, written independently
    stored: Callable[[], list[str]]  # every object in the container, seen without the Storage
    generation: Callable[[str], object]  # changes whenever the object is written again
    unwritable: Storage  # a root that cannot be written (under a regular file; a missing bucket)


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path) -> Backend:
    if request.param == "local":
        container = tmp_path / "container"
        root = container / "out"
        (tmp_path / "a-file").write_bytes(b"not a folder")

        def stored() -> list[str]:
            return sorted(p.relative_to(container).as_posix() for p in container.rglob("*") if p.is_file())

        def generation(name: str) -> object:
            st = (root / name).stat()  # a rewrite is a rename of a new file: a new inode
            return st.st_ino, st.st_mtime_ns

        return Backend("local", LocalStorage(root), lambda name: f"file://{root}/{name}", stored, generation,
                       LocalStorage(tmp_path / "a-file" / "out"))
    s3 = request.getfixturevalue("s3")
    bucket = f"contract-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})

    def stored() -> list[str]:
        return sorted(obj["Key"] for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []))

    def generation(name: str) -> object:
        return s3.head_object(Bucket=bucket, Key=f"out/{name}")["VersionId"]

    return Backend("s3", S3Storage(f"s3://{bucket}/out"), lambda name: f"s3://{bucket}/out/{name}", stored,
                   generation, S3Storage(f"s3://no-such-bucket-{uuid.uuid4().hex[:12]}/out"))


def test_put_bytes_then_get_bytes_round_trip(backend):
    storage = backend.storage
    storage.put_bytes("x1/y2/cell.tif", BODY)
    storage.put_bytes("top.json", b"{}")
    assert storage.get_bytes("x1/y2/cell.tif") == BODY
    assert storage.get_bytes("top.json") == b"{}"
    assert backend.stored() == ["out/top.json", "out/x1/y2/cell.tif"]
    storage.put_bytes("top.json", b"[1]")  # replaced whole
    assert storage.get_bytes("top.json") == b"[1]"


@pytest.mark.parametrize("start, length, expected", [
    (0, 16, BODY[:16]),
    (10, 5, BODY[10:15]),
    (1000, 100, BODY[1000:]),  # runs past the end: what there is
    (1023, 1, BODY[1023:]),
    (1024, 10, b""),  # starts at the end
    (5000, 10, b""),  # starts past the end
    (7, 0, b""),
])
def test_get_range(backend, start, length, expected):
    backend.storage.put_bytes("blob.bin", BODY)
    assert backend.storage.get_range("blob.bin", start, length) == expected


def test_exists(backend):
    storage = backend.storage
    assert not storage.exists("a/b.json")
    storage.put_bytes("a/b.json", b"1")
    assert storage.exists("a/b.json")
    assert not storage.exists("a/b.jso")
    assert not storage.exists("a/c.json")


def test_get_if_exists_is_the_body_or_none(backend):
    storage = backend.storage
    assert storage.get_if_exists("a/b.json") is None
    storage.put_bytes("a/b.json", b"1")
    assert storage.get_if_exists("a/b.json") == b"1"
    storage.put_bytes("a/empty.json", b"")
    assert storage.get_if_exists("a/empty.json") == b""  # an empty object is there
    assert storage.get_if_exists("a") is None  # a folder is not an object


def test_get_many_reads_each_name_in_order(backend):
    storage = backend.storage
    for n in range(40):
        storage.put_bytes(f"x/{n}.json", str(n).encode())
    names = [f"x/{n}.json" for n in range(40)] + ["x/missing.json"]
    assert get_many(storage, names) == [str(n).encode() for n in range(40)] + [None]


def test_url_is_absolute_and_of_the_storage_kind(backend):
    url = backend.storage.url("x1/y2/item.stac-item.json")
    assert url == backend.expected_url("x1/y2/item.stac-item.json")
    assert url.startswith({"local": "file:///", "s3": "s3://"}[backend.kind])


def test_put_file_stores_the_whole_file_and_consumes_or_copies_it(backend, tmp_path):
    source = tmp_path / "built.tif"
    source.write_bytes(BODY * 3)
    backend.storage.put_file("x/built.tif", source)
    assert backend.storage.get_bytes("x/built.tif") == BODY * 3
    assert not source.exists() or source.read_bytes() == BODY * 3
    assert backend.stored() == ["out/x/built.tif"]


def test_create_only_commits_once_and_keeps_the_first_body(backend):
    storage = backend.storage
    assert storage.create_only("c/item.json", b"first") is True
    assert storage.create_only("c/item.json", b"second") is False
    assert storage.get_bytes("c/item.json") == b"first"
    assert backend.stored() == ["out/c/item.json"]  # no temporary left by the refused commit


def test_list_names_relative_sorted_by_suffix_without_temporaries(backend):
    storage = backend.storage
    for name in ("b/2.tif", "a/1.json", "c.tif", "a/1.tif", "a/z/9.tif"):
        storage.put_bytes(name, b"x")
    leftover = storage.scratch_path("a/3.tif")  # a writer that died before committing
    leftover.write_bytes(b"partial")
    try:
        assert storage.list(".tif") == ["a/1.tif", "a/z/9.tif", "b/2.tif", "c.tif"]
        assert storage.list(".json") == ["a/1.json"]
        assert storage.list(".png") == []
        assert not any(TEMP_MARK in name for name in storage.list(""))
    finally:
        leftover.unlink(missing_ok=True)


def test_list_of_a_root_never_written_is_empty(backend):
    assert backend.storage.list(".json") == []


def test_a_folder_is_not_an_object(backend, request):
    storage = backend.storage
    storage.put_bytes("a/x.json", b"1")
    assert storage.list("") == ["a/x.json"]
    assert not storage.exists("a")
    with pytest.raises(GriddedError):
        storage.get_bytes("a")


def test_delete(backend):
    storage = backend.storage
    storage.put_bytes("d/gone.json", b"1")
    storage.put_bytes("d/kept.json", b"2")
    storage.delete("d/gone.json")
    assert not storage.exists("d/gone.json")
    assert storage.list(".json") == ["d/kept.json"]
    storage.delete("d/never-there.json")  # absent already: nothing to do
    assert storage.get_bytes("d/kept.json") == b"2"


def test_scratch_path_then_put_file_leaves_no_temporary(backend):
    """What write.py does for each COG: build in the scratch place, commit, unlink what is left."""
    storage = backend.storage
    scratch = storage.scratch_path("x1/y2/band.tif")
    assert TEMP_MARK in scratch.name and not scratch.exists()
    scratch.write_bytes(BODY)
    try:
        storage.put_file("x1/y2/band.tif", scratch)
    finally:
        scratch.unlink(missing_ok=True)
    assert storage.get_bytes("x1/y2/band.tif") == BODY
    assert backend.stored() == ["out/x1/y2/band.tif"]
    assert not any(TEMP_MARK in p.name for p in scratch.parent.iterdir())


def test_sweep_removes_only_the_leftovers_of_writers_that_are_gone(backend):
    storage = backend.storage
    if backend.kind == "s3":  # whole-object PUTs: an S3 prefix never holds a partial object
        assert storage.sweep() == 0
        return
    root = storage.root
    root.mkdir(parents=True)
    dead = root / f"{TEMP_MARK}{HOST}@{2**22 + 7}@0123456789ab-a.tif"  # above any pid_max: no such process
    alive = root / f"{TEMP_MARK}{HOST}@{os.getpid()}@0123456789ab-b.tif"
    assert temp_name("c.tif").startswith(f"{TEMP_MARK}{HOST}@{os.getpid()}@")
    dead.write_bytes(b"x")
    alive.write_bytes(b"x")
    assert storage.sweep() == 1
    assert not dead.exists() and alive.exists()


def test_sweep_knows_its_own_dead_writers_on_a_hyphenated_host(tmp_path, monkeypatch):
    import gridded.io.storage as storage_module

    monkeypatch.setattr(storage_module, "HOST", "s2-median-batch-3-pod-7f9c")
    root = tmp_path / "out"
    root.mkdir()
    dead = root / f"{TEMP_MARK}s2-median-batch-3-pod-7f9c@{2**22 + 7}@0123456789ab-a.tif"
    dead.write_bytes(b"x")
    assert LocalStorage(root).sweep() == 1


def test_check_writable_passes_for_a_usable_root_and_creates_nothing(backend):
    backend.storage.check_writable()
    assert backend.stored() == []


def test_check_writable_refuses_an_unusable_root_with_a_config_error(backend):
    with pytest.raises(ConfigError) as caught:
        backend.unwritable.check_writable()
    message = str(caught.value)
    assert "\n" not in message and backend.unwritable.uri in message
    assert {"local": "is a file, not a directory", "s3": "does not exist"}[backend.kind] in message


@pytest.mark.parametrize("read", ["get_bytes", "get_range"])
def test_a_missing_object_is_a_gridded_error_naming_it(backend, read):
    call = {"get_bytes": lambda: backend.storage.get_bytes("no/such.json"),
            "get_range": lambda: backend.storage.get_range("no/such.json", 0, 10)}[read]
    with pytest.raises(GriddedError) as caught:
        call()
    assert "no/such.json" in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.retryable is False and caught.value.exit_code == 2
    assert not backend.stored()


def test_a_missing_object_is_an_error_also_for_an_empty_range(backend, request):
    with pytest.raises(GriddedError):
        backend.storage.get_range("no/such.json", 0, 0)


@pytest.mark.parametrize("name", ["../x.json", "a/../../x.json", "../out-sibling/x.json"])
@pytest.mark.parametrize("method", ["put_bytes", "create_only", "get_bytes", "exists", "url", "delete"])
def test_a_name_escaping_the_root_is_refused(backend, name, method):
    call = {
        "put_bytes": lambda: backend.storage.put_bytes(name, b"1"),
        "create_only": lambda: backend.storage.create_only(name, b"1"),
        "get_bytes": lambda: backend.storage.get_bytes(name),
        "exists": lambda: backend.storage.exists(name),
        "url": lambda: backend.storage.url(name),
        "delete": lambda: backend.storage.delete(name),
    }[method]
    with pytest.raises(GriddedError, match="outside"):
        call()
    assert backend.stored() == []


def test_put_if_changed_writes_only_a_different_body(backend):
    storage = backend.storage
    assert put_if_changed(storage, "catalog.json", b'{"a": 1}') is True  # absent: written
    assert storage.get_bytes("catalog.json") == b'{"a": 1}'
    first = backend.generation("catalog.json")
    assert put_if_changed(storage, "catalog.json", b'{"a": 1}') is False
    assert backend.generation("catalog.json") == first  # not written again
    assert put_if_changed(storage, "catalog.json", b'{"a": 2}') is True
    assert backend.generation("catalog.json") != first
    assert storage.get_bytes("catalog.json") == b'{"a": 2}'
    # what the caller has read already is not read again: given as absent, it is written
    assert put_if_changed(storage, "catalog.json", b'{"a": 2}', existing=None) is True
    assert put_if_changed(storage, "catalog.json", b'{"a": 2}', existing=b'{"a": 2}') is False


# --- S3 only: retries through a fault-injecting proxy -----------------------------------------------


@pytest.fixture(scope="module")
def proxy(s3_server):
    with FaultProxy(s3_server) as running:
        yield running


@pytest.fixture
def via_proxy(proxy, s3, monkeypatch):
    """(proxy, storage on a fresh bucket whose client goes through the proxy, bucket): a new
    AWS_ENDPOINT_URL is a new gridded client (one is cached per environment)."""
    bucket = f"faults-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=bucket)
    proxy.rules, proxy.policy = [], None
    proxy.injected.clear()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setattr(s3_module, "BACKOFF_BASE_S", 0.001)  # the same retries, without the waits
    assert s3_module.s3_client().meta.endpoint_url == proxy.url
    return proxy, S3Storage(f"s3://{bucket}/out"), bucket


def faults(proxy: FaultProxy) -> list[tuple[str, str]]:
    return [(method, fault) for method, _, fault in proxy.injected]


@pytest.mark.parametrize("fault", ["503", "500", "reset"])
def test_a_transient_put_and_get_are_retried(via_proxy, s3, fault):
    proxy, storage, bucket = via_proxy
    key = f"/{bucket}/out/x/item.json"
    proxy.rules = [Rule("PUT", key, fault), Rule("GET", key, fault)]
    before = proxy.requests
    storage.put_bytes("x/item.json", BODY)
    assert storage.get_bytes("x/item.json") == BODY
    assert faults(proxy) == [("PUT", fault), ("GET", fault)]
    assert proxy.requests - before == 4  # each once broken, once through: no more
    assert s3.get_object(Bucket=bucket, Key="out/x/item.json")["Body"].read() == BODY


def test_a_body_cut_short_is_read_again(via_proxy, s3):
    proxy, storage, bucket = via_proxy
    s3.put_object(Bucket=bucket, Key="out/cells.pickle", Body=BODY)
    proxy.rules = [Rule("GET", f"/{bucket}/out/cells.pickle", "truncate")]
    assert storage.get_range("cells.pickle", 100, 500) == BODY[100:600]
    assert faults(proxy) == [("GET", "truncate")]


def test_create_only_whose_answer_was_lost_reports_the_commit_as_taken(via_proxy, s3):
    """The PUT happened but its answer never came: the retry finds the object (412), and the
    caller (write.commit_outputs) reads it back to see whose it is."""
    proxy, storage, bucket = via_proxy
    proxy.rules = [Rule("PUT", f"/{bucket}/out/item.json", "lost")]
    assert storage.create_only("item.json", b"ours") is False
    assert faults(proxy) == [("PUT", "lost")]
    assert s3.get_object(Bucket=bucket, Key="out/item.json")["Body"].read() == b"ours"


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_access_denied_is_a_config_error_and_not_retried(via_proxy, method):
    proxy, storage, bucket = via_proxy
    storage.put_bytes("secret.json", b"1")
    proxy.rules = [Rule(method, f"/{bucket}/out/secret.json", "403", times=-1)]
    call = storage.get_bytes if method == "GET" else lambda name: storage.put_bytes(name, b"2")
    with pytest.raises(ConfigError) as caught:
        call("secret.json")
    message = str(caught.value)
    assert f"s3://{bucket}/out/secret.json" in message and "access denied" in message and "\n" not in message
    assert caught.value.retryable is False and caught.value.exit_code == 2
    assert faults(proxy) == [(method, "403")]  # asked once


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_a_persistent_transient_failure_gives_up_retryable_with_exit_1(via_proxy, method):
    proxy, storage, bucket = via_proxy
    storage.put_bytes("busy.json", b"1")
    proxy.rules = [Rule(method, f"/{bucket}/out/busy.json", "503", times=-1)]
    call = storage.get_bytes if method == "GET" else lambda name: storage.put_bytes(name, b"2")
    with pytest.raises(GriddedError) as caught:
        call("busy.json")
    assert caught.value.retryable is True and caught.value.exit_code == 1
    assert f"s3://{bucket}/out/busy.json" in str(caught.value) and "retry later" in str(caught.value)
    assert not isinstance(caught.value, ConfigError)
    assert faults(proxy) == [(method, "503")] * s3_module.S3_ATTEMPTS  # bounded: each attempt once


def test_the_storage_client_goes_through_the_proxy(via_proxy, s3_server):
    """The premise of the tests above: a new AWS_ENDPOINT_URL gives gridded a new client."""
    proxy, storage, _ = via_proxy
    assert proxy.url != s3_server
    before = proxy.requests
    storage.put_bytes("seen.json", b"1")
    assert storage.exists("seen.json")
    assert proxy.requests == before + 2 and proxy.injected == []
