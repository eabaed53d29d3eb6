"""A small fault-injecting HTTP/1.1 reverse proxy between an S3 client and the S3 server of the tests.

Per request, a seeded random draw may inject a fault (only for requests matching ``only``, a
``(method, path substring)`` filter):

- ``drop``: read the request, close the connection without an answer;
- ``500`` / ``503``: answer with S3's XML ``InternalError`` / ``SlowDown``;
- ``cut``: forward, then send the headers and half the body and close (a short read);
- ``lost``: forward (the server acts), then close without an answer (a lost acknowledgement).

``delay_s`` holds matching requests that long before forwarding (a slow network). The proxy records
every request as ``(method, path, Range header, fault)`` and the ``Authorization`` headers it saw, which
gives requests per clip for benchmarks and the credential a client signed with. The ``Host`` header is
forwarded as received, so request signatures stay valid.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class FaultProxy:
    def __init__(self, upstream: str, faults: dict[str, float] | None = None, seed: int = 0,
                 only: tuple[str, str] | None = None, delay_s: float = 0.0):
        u = urlsplit(upstream)
        self.up_host, self.up_port = u.hostname, u.port
        self.faults = dict(faults or {})
        self.only = only
        self.delay_s = delay_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.log: list[tuple[str, str, str | None, str]] = []
        self.authorizations: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        n = int(self.rfile.readline().split(b";")[0], 16)
                        if n == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(n)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _close(self) -> None:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            def _handle(self):
                body = self._body()
                matches = proxy._matches(self.command, self.path)
                fault = proxy._pick() if matches else None
                with proxy.lock:
                    proxy.log.append((self.command, unquote(self.path), self.headers.get("Range"), fault or "ok"))
                    if self.headers.get("Authorization"):
                        proxy.authorizations.append(self.headers["Authorization"])
                if matches and proxy.delay_s:
                    time.sleep(proxy.delay_s)
                if fault == "drop":
                    return self._close()
                if fault in ("500", "503"):
                    code, name = (500, "InternalError") if fault == "500" else (503, "SlowDown")
                    msg = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{name}</Code>'
                           "<Message>injected by the test proxy</Message></Error>").encode()
                    self.send_response(code)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    if self.command != "HEAD":  # an answer to HEAD has no body
                        self.wfile.write(msg)
                    return None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.up_host, proxy.up_port, timeout=120)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    r = conn.getresponse()
                    data = r.read()
                finally:
                    conn.close()
                if fault == "lost":
                    return self._close()
                self.send_response(r.status, r.reason)
                for k, v in r.getheaders():
                    if k.lower() not in HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                if fault == "cut":
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command == "HEAD":
                    return None
                if fault == "cut":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    return self._close()
                self.wfile.write(data)
                return None

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a client that hung up on a fault is the point, not an error to print

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _matches(self, method: str, path: str) -> bool:
        if self.only is None:
            return True
        m, sub = self.only
        return (not m or method == m) and sub in unquote(path)

    def _pick(self) -> str | None:
        with self.lock:
            x = self.rng.random()
        acc = 0.0
        for name, p in self.faults.items():
            acc += p
            if x < acc:
                return name
        return None

    def requests(self, method: str | None = None, contains: str = "") -> list[tuple[str, str, str | None, str]]:
        with self.lock:
            return [r for r in self.log if (method is None or r[0] == method) and contains in r[1]]

    def clear(self) -> None:
        with self.lock:
            self.log.clear()
            self.authorizations.clear()

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
