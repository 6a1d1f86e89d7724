"""An HTTP proxy on loopback in front of the S3-protocol server that injects faults on request.

Rules say which requests to break (method, a substring of the path, which occurrence) and how:
`503` (SlowDown), `500`, `403` (AccessDenied), `reset` (close before answering), `truncate` (send half the body, then
close), `lost` (forward the request, then close before the answer reaches the client: a PUT that
happened although the client never heard so), `forward-500` (forward it, then answer 500: the
write happened, the client is told it failed). Besides rules, a `policy(method, path, headers)`
may name the fault of each request (see OncePerKey).
"""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Rule:
    method: str
    path_part: str
    fault: str
    times: int = 1  # how many matching requests to break (-1: all of them)
    skip: int = 0  # let this many matching requests through first
    seen: int = field(default=0)

    def hit(self, method: str, path: str) -> bool:
        if method != self.method or self.path_part not in path:
            return False
        self.seen += 1
        if self.seen <= self.skip:
            return False
        return self.times < 0 or self.seen - self.skip <= self.times


class FaultProxy:
    def __init__(self, upstream: str):
        host, port = upstream.split("://", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.rules: list[Rule] = []
        self.policy = None
        self.requests = 0
        self.injected: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy.fault_for(self.command, self.path, self.headers)
                if fault in ("503", "500", "403"):
                    code = int(fault)
                    text = {503: b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>",
                            500: b"<Error><Code>InternalError</Code><Message>oops</Message></Error>",
                            403: b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"}[code]
                    self.send_response(code)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                    return
                if fault == "reset":
                    self._reset()
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if fault == "lost":
                    self._reset()
                    return
                if fault == "forward-500":
                    text = b"<Error><Code>InternalError</Code><Message>after the write</Message></Error>"
                    self.send_response(500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                    return
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault == "truncate" and self.command != "HEAD" and len(data) > 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self._reset()
                    return
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _reset(self):
                self.close_connection = True
                try:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def fault_for(self, method: str, path: str, headers=None) -> str | None:
        with self.lock:
            self.requests += 1
            if self.policy is not None:
                fault = self.policy(method, path, headers or {})
                if fault:
                    self.injected.append((method, path, fault))
                    return fault
            for rule in self.rules:
                if rule.hit(method, path):
                    self.injected.append((method, path, rule.fault))
                    return rule.fault
        return None

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class OncePerKey:
    """A policy breaking each (fault kind, key) at most once: the first HEAD and the first GET of
    every key answered 503 SlowDown, one ranged GET of every source COG cut short, the first PUT
    of every key answered 500, each STAC item's next PUT forwarded and then answered 500 (the write
    happened), and the first bucket listing's connection closed."""

    def __init__(self, source_bucket: str):
        self.source_bucket = source_bucket
        self.done: set[tuple[str, str]] = set()

    def once(self, kind: str, key: str) -> bool:
        if (kind, key) in self.done:
            return False
        self.done.add((kind, key))
        return True

    def __call__(self, method: str, path: str, headers) -> str | None:
        key = path.split("?", 1)[0]
        listing = "list-type=2" in path
        if listing:
            return "reset" if self.once("list", key) else None
        if method == "HEAD":
            return "503" if self.once("head", key) else None
        if method == "GET":
            if self.once("get", key):
                return "503"
            ranged = "Range" in headers or "range" in headers
            if ranged and key.startswith(f"/{self.source_bucket}/") and key.endswith(".tif"):
                return "truncate" if self.once("cut", key) else None
            return None
        if method == "PUT":
            if self.once("put", key):
                return "500"
            if key.endswith(".stac-item.json") and self.once("put-then-500", key):
                return "forward-500"
        return None

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for kind, _ in self.done:
            counts[kind] = counts.get(kind, 0) + 1
        return counts
