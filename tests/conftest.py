"""Shared fixtures: the demo selection, a real S3-protocol server, a real PostgreSQL (the demo
catalog itself is in the repository's root conftest, which the docstring examples share)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gridded.demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME


@pytest.fixture
def demo_args(demo_catalog) -> list[str]:
    """The selection flags of a demo run (add --output ...)."""
    return [
        "--source", str(demo_catalog), "--extent", DEMO_EXTENT, "--time", DEMO_TIME,
        "--grid", str(DEMO_GRID), "--bands", "blue,green,red,nir", "--tiles-per-worker", "2",
    ]


@pytest.fixture
def catalog_copy(demo_catalog, tmp_path) -> Path:
    """A private copy of the demo catalog that a test may damage."""
    dest = tmp_path / "catalog"
    shutil.copytree(demo_catalog.parent, dest)
    return dest / "catalog.json"


CANARY_KEY_ID = "AKIACANARYKEYID0000"
CANARY_SECRET = "canary-secret-5a3b7c9d1e"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (moto's server mode) on a free loopback port, with boto3 and
    GDAL pointed at it through the standard environment only (AWS_ENDPOINT_URL and keys)."""
    import logging
    import os

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_SESSION_TOKEN")}
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID=CANARY_KEY_ID,
                      AWS_SECRET_ACCESS_KEY=CANARY_SECRET, AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    yield f"http://{host}:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3(s3_server):
    """A boto3 client on the test server (the test's own, not gridded's)."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_server)


def upload_tree(s3, local: Path, bucket: str, prefix: str, **put_args) -> None:
    """Copy a local folder to s3://bucket/prefix/ with the test's own client."""
    for path in sorted(local.rglob("*")):
        if path.is_file():
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(local)}", Body=path.read_bytes(), **put_args)


def demo_on_s3(s3, demo_catalog: Path, bucket: str, **put_args) -> str:
    """A new bucket holding the demo catalog under stac/; returns the catalog's s3:// href."""
    s3.create_bucket(Bucket=bucket)
    upload_tree(s3, demo_catalog.parent, bucket, "stac", **put_args)
    return f"s3://{bucket}/stac/catalog.json"


def download_tree(s3, bucket: str, prefix: str, local: Path) -> list[str]:
    """Copy s3://bucket/prefix/ to a local folder; return the keys."""
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for obj in page.get("Contents", []):
            keys.append(obj["Key"])
            dest = local / obj["Key"][len(prefix) + 1:]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
    return keys


def _pg_bindir() -> Path | None:
    import glob
    import shutil

    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


@pytest.fixture(scope="session")
def pg_dsn():
    """A real PostgreSQL server: $GRIDDED_TEST_PG_DSN, else one started here (initdb in a temporary
    folder, a free loopback port). In CI a missing server is a failure, never a skip."""
    import os
    import shutil
    import socket
    import subprocess
    import tempfile

    if os.environ.get("GRIDDED_TEST_PG_DSN"):
        yield os.environ["GRIDDED_TEST_PG_DSN"]
        return
    bindir = _pg_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries not found; .ci/run installs them with apt-get")
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    data = Path(tempfile.mkdtemp(prefix="gridded-pg-"))
    as_user = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres system user
        shutil.chown(data, user="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "gridded",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-w", "-l", str(data / "log"),
                    "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://gridded@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)
