"""`--extent` from a file: GeoJSON (geometry, Feature, FeatureCollection) or WKT, on disk, on the
loopback S3 server and on a loopback web server; bad content is bad input (exit 2), a transient
failure is retryable (exit 1), a missing file is bad input, and no message leaks a signed query."""

from __future__ import annotations

import http.server
import json
import threading
from typing import ClassVar

import pytest
from click.testing import CliRunner

from gridded.cli import cli
from gridded.demo import DEMO_EXTENT, DEMO_GRID
from gridded.errors import ConfigError, SourceError
from gridded.extent import parse_extent

SQUARE = [[146.9, -36.1], [147.1, -36.1], [147.1, -35.9], [146.9, -35.9], [146.9, -36.1]]
EAST = [[147.2, -36.1], [147.4, -36.1], [147.4, -35.9], [147.2, -35.9], [147.2, -36.1]]
POLYGON = {"type": "Polygon", "coordinates": [SQUARE]}
WKT = "POLYGON ((146.9 -36.1, 147.1 -36.1, 147.1 -35.9, 146.9 -35.9, 146.9 -36.1))"
DOCUMENTS = {
    "geometry.geojson": json.dumps(POLYGON),
    "feature.json": json.dumps({"type": "Feature", "properties": {"name": "a"}, "geometry": POLYGON}),
    "collection.geojson": json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": POLYGON},
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [EAST]}}]}),
    "area.wkt": WKT,
    "area.txt": WKT + "\n",  # no telling suffix: known by its content
}
BOUNDS = {"collection.geojson": (146.9, -36.1, 147.4, -35.9)}


def bounds(geometry) -> tuple[float, ...]:
    return tuple(round(v, 6) for v in geometry.boundingbox)


@pytest.mark.parametrize("name", DOCUMENTS)
def test_local_files(name, tmp_path):
    path = tmp_path / name
    path.write_text(DOCUMENTS[name])
    geometry = parse_extent(str(path))
    assert geometry.crs.epsg == 4326
    assert bounds(geometry) == BOUNDS.get(name, (146.9, -36.1, 147.1, -35.9))
    if name == "collection.geojson":  # the union of the features, not their bbox
        assert geometry.geom.area == pytest.approx(2 * 0.2 * 0.2)


@pytest.fixture(scope="module")
def areas(s3_server):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket="areas")
    for name, body in {**DOCUMENTS, "bad.geojson": '{"type": "Polygon", "coordinates": "nope"}',
                       "outside.wkt": "POLYGON ((500000 6000000, 500100 6000000, 500100 6000100, 500000 6000000))",
                       "binary.geojson": b"\x89PNG\r\n\x1a\n\x00\x00"}.items():
        client.put_object(Bucket="areas", Key=f"x/{name}", Body=body)
    return "s3://areas/x"


@pytest.mark.parametrize("name", DOCUMENTS)
def test_files_on_s3(name, areas):
    assert bounds(parse_extent(f"{areas}/{name}")) == BOUNDS.get(name, (146.9, -36.1, 147.1, -35.9))


@pytest.mark.parametrize("name, match", [
    ("bad.geojson", "not GeoJSON"), ("outside.wkt", "not lon/lat"), ("binary.geojson", "not text"),
    ("missing.geojson", "no such object"),
])
def test_bad_or_missing_files_on_s3_are_bad_input(name, match, areas):
    with pytest.raises(ConfigError, match=match) as err:
        parse_extent(f"{areas}/{name}")
    message = str(err.value)
    assert message.startswith(f"--extent {areas}/{name}") and "\n" not in message
    assert err.value.exit_code == 2


class Flaky(http.server.BaseHTTPRequestHandler):
    """/ok/NAME: the document; /busy: 503 always; /once/NAME: 503 then the document; else 404."""
    answered: ClassVar[dict[str, int]] = {}

    def do_GET(self):
        path = self.path.split("?")[0]
        seen = Flaky.answered[path] = Flaky.answered.get(path, 0) + 1
        name = path.rsplit("/", 1)[-1]
        if path == "/busy" or (path.startswith("/once/") and seen == 1):
            self.send_response(503)
            self.end_headers()
            return
        if path.startswith(("/ok/", "/once/")) and name in DOCUMENTS:
            body = DOCUMENTS[name].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def no_backoff(monkeypatch):
    import gridded.io.s3

    monkeypatch.setattr(gridded.io.s3, "backoff_s", lambda attempt: 0.0)


@pytest.mark.parametrize("name", ["feature.json", "area.wkt"])
def test_files_on_a_web_server(name, web):
    assert bounds(parse_extent(f"{web}/ok/{name}")) == (146.9, -36.1, 147.1, -35.9)


def test_a_transient_answer_is_retried(web, no_backoff):
    assert bounds(parse_extent(f"{web}/once/geometry.geojson")) == (146.9, -36.1, 147.1, -35.9)
    assert Flaky.answered["/once/geometry.geojson"] == 2


def test_a_server_that_stays_busy_is_a_retryable_error_and_a_404_is_not(web, no_backoff):
    with pytest.raises(SourceError, match="HTTP 503") as busy:
        parse_extent(f"{web}/busy")
    assert busy.value.retryable and busy.value.exit_code == 1 and "retry later" in str(busy.value)
    assert Flaky.answered["/busy"] > 1
    with pytest.raises(SourceError, match="HTTP 404") as missing:
        parse_extent(f"{web}/ok/gone.geojson?sig=s3cr3t-token")
    assert not missing.value.retryable and missing.value.exit_code == 2
    assert "s3cr3t" not in str(missing.value) and "check the URL" in str(missing.value)


def plan(extent: str, demo_catalog) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["plan", "--source", str(demo_catalog), "--extent", extent, "--time", "2024-01",
                                      "--grid", str(DEMO_GRID), "--bands", "red"])
    return result.exit_code, result.output


def test_the_cli_plans_the_same_cells_from_a_file_on_s3_as_from_the_bbox(areas, s3, demo_catalog):
    ring = [list(corner) for corner in _corners(DEMO_EXTENT)]
    s3.put_object(Bucket="areas", Key="demo.geojson", Body=json.dumps({"type": "Polygon", "coordinates": [ring]}))
    code, from_file = plan("s3://areas/demo.geojson", demo_catalog)
    assert code == 0, from_file
    code, from_bbox = plan(DEMO_EXTENT, demo_catalog)
    assert code == 0 and from_file == from_bbox


def test_the_cli_says_one_line_and_exits_2_or_1(areas, web, no_backoff, demo_catalog):
    code, output = plan(f"{areas}/bad.geojson", demo_catalog)
    assert code == 2 and output.startswith("gridded: error: --extent s3://areas/x/bad.geojson: not GeoJSON")
    assert output.count("\n") == 1 and "Traceback" not in output
    code, output = plan(f"{web}/busy", demo_catalog)
    assert code == 1 and output.count("\n") == 1 and "retry later" in output


def _corners(bbox: str) -> list[tuple[float, float]]:
    minx, miny, maxx, maxy = (float(v) for v in bbox.split(","))
    return [(minx, miny), (maxx, miny), (maxx, maxy), (minx, maxy), (minx, miny)]
