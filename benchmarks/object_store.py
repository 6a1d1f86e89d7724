"""The benchmark year on an object store with latency: moto's S3 server (its own process, on
loopback) behind a LatencyProxy, the year's COGs uploaded to it and a copy of the static catalog
whose asset hrefs are s3:// URLs; and the least number of requests a run needs to read them.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from latency_proxy import LatencyProxy

SOURCE_BUCKET = "bench-source"
OUTPUT_BUCKET = "bench-output"
GHOST_BYTES = 8  # a COG tile's trailer and the next one's leader (the byte count, repeated)
HEADER_GET_BYTES = 16384  # what a reader's first GET of a file fetches (GDAL's, odc-stac's): tiles within it come free
KEYS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def object_store(delay_s: float):
    """(proxy, direct endpoint URL): moto's server in a process of its own (so that its work and
    the proxy's do not share one interpreter lock), the proxy adding `delay_s` to every answer."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    direct = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        with LatencyProxy(direct, delay_s) as proxy:
            proxy.server_pid = server.pid
            yield proxy, direct
    finally:
        server.terminate()
        server.wait(timeout=10)


def store_cpu_s(proxy) -> float:
    """CPU seconds the object store has used so far: moto's process and the proxy's threads (this
    process's, which does nothing else while a run is measured). On the machine that runs the
    contenders, this is CPU a real object store would not take from them."""
    with open(f"/proc/{proxy.server_pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks + time.process_time()


def client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"], region_name=KEYS["AWS_DEFAULT_REGION"])


def environment(proxy_url: str) -> dict[str, str]:
    """What a process reading and writing through the proxy is given: the standard AWS variables
    (gridded's boto3 and GDAL settings follow from them) and, for scripts that use GDAL without
    gridded, GDAL's own endpoint settings, as their users set them for a non-AWS endpoint."""
    host = proxy_url.split("://", 1)[1]
    return {**KEYS, "AWS_ENDPOINT_URL": proxy_url, "AWS_S3_ENDPOINT": host, "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE"}


def upload_year(layout: dict, endpoint: str) -> dict:
    """Put the year's COGs into the source bucket (directly, not through the proxy) and write a copy
    of its catalog with s3:// asset hrefs; returns the layout of that copy."""
    s3 = client(endpoint)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in (SOURCE_BUCKET, OUTPUT_BUCKET):
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)
    root = Path(layout["root"])
    size = layout["shape_yx"][0]
    local_catalog = Path(layout["catalog"]).parent
    s3_catalog = root / "catalog-s3"
    if s3_catalog.exists():
        shutil.rmtree(s3_catalog)
    shutil.copytree(local_catalog, s3_catalog, ignore=shutil.ignore_patterns("*.tif"))
    prefix = f"s{size}"
    scenes = []
    for scene in layout["scenes"]:
        assets = {}
        for key, path in scene["assets"].items():
            rel = Path(path).relative_to(local_catalog)
            s3_key = f"{prefix}/{rel}"
            s3.upload_file(path, SOURCE_BUCKET, s3_key)
            assets[key] = f"s3://{SOURCE_BUCKET}/{s3_key}"
        scenes.append({**scene, "assets": assets})
    for item_file in s3_catalog.rglob("*.json"):
        doc = json.loads(item_file.read_text())
        if doc.get("type") != "Feature":
            continue
        for asset in doc["assets"].values():
            href = asset["href"]
            if href.endswith(".tif"):
                rel = (item_file.parent / href).resolve().relative_to(s3_catalog.resolve())
                asset["href"] = f"s3://{SOURCE_BUCKET}/{prefix}/{rel}"
        item_file.write_text(json.dumps(doc, indent=1))
    return {**layout, "catalog": str(s3_catalog / "catalog.json"), "scenes": scenes, "local_layout": layout}


def least_requests(layout: dict) -> dict[str, int]:
    """The least GETs a run reading every pixel of every file of the year can send: one for each
    file's header and one per full-resolution tile ("tiles", the count issue 17 states), or one per
    run of tiles that lie back to back in the file ("runs": a reader merging adjacent ranges; GDAL's
    COGs put 4 bytes before and after each tile, which a reader that knows it reads with them), none
    for a run within the header's GET (a small file, such as a 20 m SCL, read whole by its first GET)."""
    import rasterio

    files = tiles = runs = 0
    for scene in layout["scenes"]:
        for path in scene["assets"].values():
            with rasterio.open(path) as src:
                spans = []
                for (row, col), _ in src.block_windows(1):
                    offset = int(src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
                    spans.append((offset, offset + src.block_size(1, row, col)))
            spans.sort()
            files += 1
            tiles += len(spans)
            starts = [spans[0]] + [b for a, b in itertools.pairwise(spans) if b[0] - a[1] > GHOST_BYTES]
            ends = [a for a, b in itertools.pairwise(spans) if b[0] - a[1] > GHOST_BYTES] + [spans[-1]]
            runs += sum(1 for _, (_, end) in zip(starts, ends) if end > HEADER_GET_BYTES)
    return {"files": files, "tiles": files + tiles, "runs": files + runs}


def download(endpoint: str, bucket: str, prefix: str, dest: Path) -> int:
    """Copy s3://bucket/prefix/ to a local folder (directly, outside any timing); returns the number
    of objects (each of which a run must have PUT at least once)."""
    s3 = client(endpoint)
    if dest.exists():
        shutil.rmtree(dest)
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for obj in page.get("Contents", []):
            target = dest / obj["Key"][len(prefix) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))
            count += 1
    return count


def clear(endpoint: str, bucket: str, prefix: str) -> None:
    s3 = client(endpoint)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


if __name__ == "__main__":  # a quick look: python object_store.py LAYOUT.json
    print(least_requests(json.loads(Path(sys.argv[1]).read_text())), file=sys.stderr)
    os._exit(0)
