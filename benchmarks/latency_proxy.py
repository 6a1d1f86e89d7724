"""An HTTP proxy on loopback in front of an S3-protocol server that makes it a distant one: every
answer waits `delay_s` (default 40 ms, a request's round trip to a region's object store), and
every request is counted by kind (HEAD, ranged GET, whole GET, LIST, PUT, POST, DELETE) with the
bytes sent back and the most requests in flight at once.

Clients keep their connections (HTTP/1.1 keep-alive), as they would to S3; the proxy keeps one
upstream connection per client connection, so the server behind it is not what is measured.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
import time
from collections import Counter


def request_kind(method: str, path: str, headers) -> str:
    """HEAD, GET (ranged), GET (whole), LIST, PUT, POST, DELETE."""
    query = path.split("?", 1)[1] if "?" in path else ""
    if method == "GET" and ("list-type=" in query or "prefix=" in query or path.split("?", 1)[0].count("/") <= 1):
        return "LIST"
    if method == "GET":
        return "GET range" if headers.get("Range") else "GET whole"
    return method


class LatencyProxy:
    def __init__(self, upstream: str, delay_s: float = 0.040):
        host, port = upstream.split("://", 1)[1].rstrip("/").split(":")
        self.upstream = (host, int(port))
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.reset()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            upstream_conn: http.client.HTTPConnection | None = None

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _forward(self, body: bytes):
                for attempt in (1, 2):  # an idle upstream connection the server closed: open another
                    if self.upstream_conn is None:
                        self.upstream_conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                    try:
                        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                        self.upstream_conn.request(self.command, self.path, body=body, headers=headers)
                        resp = self.upstream_conn.getresponse()
                        return resp, resp.read()
                    except (ConnectionError, http.client.HTTPException, OSError):
                        self.upstream_conn.close()
                        self.upstream_conn = None
                        if attempt == 2:
                            raise
                raise AssertionError("unreachable")

            def _any(self):
                kind = request_kind(self.command, self.path, self.headers)
                entry = proxy._started(kind, self.path, self.headers.get("Range"))
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else b""
                    if proxy.delay_s:
                        time.sleep(proxy.delay_s)
                    resp, data = self._forward(body)
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                    proxy._finished(entry, len(data) if self.command != "HEAD" else 0, len(body))
                except Exception:
                    proxy._finished(entry, 0, 0)
                    raise

            def finish(self):
                super().finish()
                if self.upstream_conn is not None:
                    self.upstream_conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.request_queue_size = 256
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def reset(self) -> None:
        """Counters back to zero (between the runs measured)."""
        with self.lock:
            self.kinds: Counter[str] = Counter()
            self.log: list[list] = []  # [start, kind, path, Range, end] per request (monotonic s)
            self.in_flight = 0
            self.max_in_flight = 0
            self.bytes_down = 0
            self.bytes_up = 0

    def _started(self, kind: str, path: str, byte_range: str | None) -> list:
        entry = [time.monotonic(), kind, path, byte_range, None]
        with self.lock:
            self.log.append(entry)
            self.kinds[kind] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return entry

    def _finished(self, entry: list, down: int, up: int) -> None:
        entry[4] = time.monotonic()
        with self.lock:
            self.in_flight -= 1
            self.bytes_down += down
            self.bytes_up += up

    def counts(self) -> dict:
        """{"requests": total, "by_kind": {...}, "max_in_flight": n, "mb_down": x, "mb_up": y}."""
        with self.lock:
            return {"requests": sum(self.kinds.values()), "by_kind": dict(self.kinds),
                    "max_in_flight": self.max_in_flight, "mb_down": self.bytes_down / 2**20,
                    "mb_up": self.bytes_up / 2**20}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
