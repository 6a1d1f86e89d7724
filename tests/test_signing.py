"""--sign planetary-computer: asset hrefs signed by the worker when it reads them, with tokens from a
loopback stand-in of the Planetary Computer's SAS token endpoint (the SDK takes its address from
PC_SDK_SAS_URL), read through a loopback stand-in of Azure Blob Storage that refuses unsigned and
expired reads. A signed href is a credential: it is in nothing gridded writes or prints."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from providers import PC_32TMT_0705_V0212, load_collection, load_item, materialize, window_lonlat, write_static_catalog

ACCOUNT, CONTAINER = "sentinel2l2a01", "sentinel2-l2"


class Stand:
    """The two loopback services and what they saw."""

    def __init__(self, files: dict[str, Path]):
        self.files = files  # blob path -> local file
        self.tokens_given = 0
        self.refuse_tokens = False
        self.reads: list[tuple[str, str]] = []  # (path, sig)
        self.expired = {"sig-1"}  # the first token has expired by the time it is used: a 403

    def token(self) -> tuple[int, dict]:
        if self.refuse_tokens:
            return 403, {"message": "Access denied: no subscription key"}
        self.tokens_given += 1
        return 200, {"msft:expiry": "2099-01-01T00:00:00Z",
                     "token": f"st=2024-01-01&se=2099-01-01&sp=rl&sv=2021-06-08&sr=c&sig=sig-{self.tokens_given}"}


def serve(handler_cls) -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def stand(tmp_path):
    item = load_item(PC_32TMT_0705_V0212)
    local = materialize(item, tmp_path / "pixels", ["B04", "SCL"], rng=np.random.default_rng(7))
    files = {}
    for key in ("B04", "SCL"):
        published = urlparse(item["assets"][key]["href"])
        files[published.path] = Path(local["assets"][key]["href"])
        # the published href, but http: the loopback stand-in of blob storage cannot hold Azure's certificate
        local["assets"][key]["href"] = f"http://{published.netloc}{published.path}"
    state = Stand(files)

    class Tokens(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            assert self.path == f"/api/sas/v1/token/{ACCOUNT}/{CONTAINER}", self.path
            code, body = state.token()
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    class Blobs(http.server.BaseHTTPRequestHandler):  # an HTTP proxy: GET http://host/path?query
        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self.do_GET(head=True)

        def do_GET(self, head=False):
            url = urlparse(self.path)
            sig = parse_qs(url.query).get("sig", [""])[0]
            state.reads.append((url.path, sig))
            if url.netloc != f"{ACCOUNT}.blob.core.windows.net" or not sig or sig in state.expired:
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = state.files[url.path].read_bytes()
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            start, end = (int(match[1]), min(int(match[2] or len(data) - 1), len(data) - 1)) if match else \
                (0, len(data) - 1)
            self.send_response(206 if match else 200)
            if match:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            if not head:
                self.wfile.write(data[start:end + 1])

    tokens, tokens_at = serve(Tokens)
    blobs, blobs_at = serve(Blobs)
    catalog = write_static_catalog([local], tmp_path / "catalog", [load_collection("planetarycomputer",
                                                                                    "sentinel-2-l2a")])
    minx, miny, maxx, maxy = window_lonlat(local, "B04", written_asset_window(local, tmp_path))
    inset = 0.1 * (maxx - minx)
    env = {**os.environ, "PC_SDK_SAS_URL": f"http://{tokens_at}/api/sas/v1/token", "GDAL_HTTP_PROXY": blobs_at,
           "GDAL_HTTP_MAX_RETRY": "0"}
    env.pop("PC_SDK_SUBSCRIPTION_KEY", None)
    yield state, catalog, f"{minx + inset},{miny + inset},{maxx - inset},{maxy - inset}", env, local
    tokens.shutdown()
    blobs.shutdown()


def written_asset_window(local, tmp_path):
    from providers import _WRITTEN

    path = next(p for p in _WRITTEN if p.name == "B04.tif" and str(tmp_path) in str(p))
    return _WRITTEN[path].window


def gridded(env, *args):
    return subprocess.run([sys.executable, "-m", "gridded.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_reads_are_signed_by_the_worker_resigned_once_expired_and_the_token_is_written_nowhere(stand, tmp_path):
    state, catalog, extent, env, local = stand
    out = tmp_path / "out"
    proc = gridded(env, "-v", "run", "--source", str(catalog), "--extent", extent, "--time", "2020-07", "--grid",
                   "auto", "--bands", "red", "--sign", "planetary-computer", "--output", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    signed = [sig for _, sig in state.reads]
    assert "sig-1" in signed and "sig-2" in signed  # the expired token refused, a new one fetched and used
    assert state.tokens_given == 2 and all(sig for sig in signed)  # never an unsigned read
    docs = [json.loads(p.read_text()) for p in out.rglob("*.stac-item.json")]
    assert docs and all(d["properties"]["gridded:inputs"] == [local["id"]] for d in docs)
    for doc in docs:  # the composite is of the pixels behind the signed hrefs
        import rasterio

        with rasterio.open(urlparse(doc["assets"]["red"]["href"]).path) as src:
            assert (src.read(1) > 0).any()
    everything = proc.stdout + proc.stderr + "".join(p.read_text(errors="replace") for p in out.rglob("*")
                                                     if p.suffix in (".json", ".geojson"))
    assert "sig-" not in everything and "sp=rl" not in everything


def test_a_token_endpoint_that_refuses_is_one_line_naming_the_variable(stand, tmp_path):
    state, catalog, extent, env, _ = stand
    state.refuse_tokens = True
    proc = gridded(env, "run", "--source", str(catalog), "--extent", extent, "--time", "2020-07", "--grid", "auto",
                   "--bands", "red", "--sign", "planetary-computer", "--output", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    assert failed and all("refused a token" in line and "PC_SDK_SUBSCRIPTION_KEY" in line for line in failed)
    assert "Traceback" not in proc.stderr


def test_without_sign_the_blob_store_refuses_and_says_so(stand, tmp_path):
    state, catalog, extent, env, _ = stand
    proc = gridded(env, "run", "--source", str(catalog), "--extent", extent, "--time", "2020-07", "--grid", "auto",
                   "--bands", "red", "--output", str(tmp_path / "out"))
    assert proc.returncode in (1, 2), proc.stderr[-2000:]
    assert all(sig == "" for _, sig in state.reads) and state.tokens_given == 0
    assert any("403" in line for line in proc.stdout.splitlines() if line.startswith("FAILED"))


def test_reads_refused_together_share_one_new_token(stand, monkeypatch):
    """Reads of a batch on threads meet the expired token together: the first to ask for a new one
    gets it, the others sign with it instead of fetching one each."""
    import planetary_computer.sas as sas
    from planetary_computer.settings import Settings

    from gridded.io.access import PlanetaryComputerSigner

    state, _, _, env, _ = stand
    monkeypatch.setenv("PC_SDK_SAS_URL", env["PC_SDK_SAS_URL"])
    Settings.get.cache_clear()
    sas.TOKEN_CACHE.clear()
    try:
        sign = PlanetaryComputerSigner()
        href = f"https://{ACCOUNT}.blob.core.windows.net/{CONTAINER}/tiles/B04.tif"
        refused = sign(href)
        assert refused.endswith("sig=sig-1")
        start = threading.Barrier(8)
        again: list[str] = []

        def refuse():
            start.wait()
            again.append(sign(href, refresh=refused))

        threads = [threading.Thread(target=refuse) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert state.tokens_given == 2 and again == [href + "?" + again[0].split("?", 1)[1]] * 8
        assert again[0].endswith("sig=sig-2")
        assert sign(href, refresh=again[0]).endswith("sig=sig-3")  # a refused new token: a newer one
        assert sign(href).endswith("sig=sig-3") and state.tokens_given == 3
    finally:
        Settings.get.cache_clear()
        sas.TOKEN_CACHE.clear()
