"""Sources beyond a local path: https:// static catalogs (GDAL /vsicurl/), unsigned and
requester-pays s3:// reads."""

from __future__ import annotations

import functools
import http.server
import re
import threading

import pytest
from click.testing import CliRunner
from expected import check_pixels

from conftest import demo_on_s3
from gridded.cli import cli
from gridded.demo import DEMO_EXTENT, DEMO_GRID

SELECT = ["--extent", DEMO_EXTENT, "--time", "2024-01", "--grid", str(DEMO_GRID), "--bands", "red,nir"]


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP Range support, as object stores and CDNs serve COGs."""

    def log_message(self, *args):
        pass

    def send_head(self):
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if not match:
            return super().send_head()
        path = self.translate_path(self.path)
        try:
            with open(path, "rb") as f:
                size = f.seek(0, 2)
                start = int(match[1])
                end = min(int(match[2]) if match[2] else size - 1, size - 1)
                f.seek(start)
                body = f.read(end - start + 1)
        except OSError:
            self.send_error(404)
            return None
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)
        return None


@pytest.fixture(scope="module")
def http_catalog(demo_catalog):
    handler = functools.partial(RangeHandler, directory=str(demo_catalog.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/catalog.json"
    server.shutdown()


def test_run_from_https_style_static_catalog(http_catalog, demo_catalog, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", "--source", http_catalog, *SELECT, "--output", str(out)])
    assert result.exit_code == 0, result.output
    stats = check_pixels(out, demo_catalog, bands=["red", "nir"])
    assert stats["tasks"] == 6


@pytest.mark.parametrize("flag", ["--unsigned", "--requester-pays"])
def test_unsigned_and_requester_pays_sources(s3, demo_catalog, tmp_path, flag, monkeypatch):
    # the flags set these in the environment (for worker processes); monkeypatch undoes it after
    monkeypatch.setenv("AWS_NO_SIGN_REQUEST", "NO")
    monkeypatch.setenv("AWS_REQUEST_PAYER", "")
    bucket = "public-imagery" if flag == "--unsigned" else "payer-imagery"
    # a public bucket answers anonymous reads; the server refuses them elsewhere (403)
    source = demo_on_s3(s3, demo_catalog, bucket, **({"ACL": "public-read"} if flag == "--unsigned" else {}))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", "--source", source, flag, *SELECT,
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert check_pixels(out, demo_catalog, bands=["red", "nir"])["tasks"] == 6
