"""An HTTP proxy on loopback in front of the S3-protocol server that injects faults on request.

Rules say which requests to break (method, a substring of the path, which occurrence) and how:
`503` (SlowDown), `500`, `403` (AccessDenied), `reset` (close before answering), `truncate` (send half the body, then
close), `lost` (forward the request, then close before the answer reaches the client: a PUT that
happened although the client never heard so).
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
                fault = proxy.fault_for(self.command, self.path)
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

    def fault_for(self, method: str, path: str) -> str | None:
        with self.lock:
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
