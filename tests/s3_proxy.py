"""A loopback HTTP proxy in front of the test S3 server, with scripted faults.

Used by the storage tests (outages, dropped connections, S3 error answers)
and by the end-to-end tests, which hold chosen requests (a trainer's
checkpoint upload, a data download) to stop a real search at a known point
instead of racing it: see `Hold`.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "server", "date"}

Rule = Callable[[int, str, str], "str | None"]


class ScriptedS3Proxy:
    """Loopback HTTP proxy in front of an S3 server, with scripted faults.

    `rule(n, method, path)` sees the n-th request (1-based) and returns None
    (forward it) or a fault: "drop" (close without answering), "truncate"
    (forward, then send half the body and close), or "<status>:<S3 code>"
    (answer with S3's XML error document).
    """

    def __init__(self, upstream: str | None, rule: Rule | None = None) -> None:
        self.upstream = urlsplit(upstream).netloc if upstream else None
        self.rule: Rule = rule or (lambda n, method, path: None)
        self.requests: list[tuple[str, str]] = []
        self.port = 0
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ScriptedS3Proxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with proxy._lock:
                    proxy._conns.add(self.connection)

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    with proxy._lock:
                        proxy._conns.discard(self.connection)

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection: the server is gone."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def count(self, method: str | None = None) -> int:
        with self._lock:
            return sum(1 for m, _ in self.requests if method in (None, m))

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append((h.command, h.path))
            n = len(self.requests)
        fault = self.rule(n, h.command, h.path)
        if fault == "drop":
            h.close_connection = True
            return
        if fault and fault[0].isdigit():
            status, code = fault.split(":", 1)
            self._answer_error(h, int(status), code)
            return
        assert self.upstream is not None, "no upstream to forward to"
        upstream = http.client.HTTPConnection(self.upstream, timeout=30)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_HEADERS}
        upstream.request(h.command, h.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        upstream.close()
        h.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_HEADERS | {"content-length"}:
                h.send_header(name, value)
        # HEAD keeps the upstream length (the object size); others send ours.
        sent_length = (
            response.getheader("Content-Length", "0") if h.command == "HEAD" else len(data)
        )
        h.send_header("Content-Length", str(sent_length))
        h.end_headers()
        if h.command == "HEAD":
            return
        if fault == "truncate":
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(data)

    @staticmethod
    def _answer_error(h: BaseHTTPRequestHandler, status: int, code: str) -> None:
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>scripted {code}</Message>"
            f"<Resource>{escape(h.path)}</Resource><RequestId>4442587FB7D0A2F9</RequestId></Error>"
        ).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/xml")
        h.send_header("Content-Length", "0" if h.command == "HEAD" else str(len(xml)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(xml)


class Hold:
    """A proxy rule that holds matching requests until the test releases them.

    While armed, each request whose method is `method` and whose path matches
    `pattern` blocks in the proxy (`held` is set when the first one arrives).
    `release(None)` forwards them (and every later match); `release("503:SlowDown")`
    answers them, and every later match, with that fault. Holding a request a
    search cannot progress without (a trainer's upload of its generation-1
    checkpoint, say) stops the search at a known point whatever the machine's
    speed: nothing races.
    """

    def __init__(self, method: str, pattern: str) -> None:
        self.method = method
        self.pattern = re.compile(pattern)
        self.held = threading.Event()
        self._released = threading.Event()
        self._outcome: str | None = None

    def __call__(self, n: int, method: str, path: str) -> str | None:
        if method != self.method or not self.pattern.search(path):
            return None
        if not self._released.is_set():
            self.held.set()
            self._released.wait()
        return self._outcome

    def wait_held(self, timeout_s: float = 240) -> None:
        """Block until a matching request is held (the timeout only bounds a broken test)."""
        assert self.held.wait(timeout_s), (
            f"no {self.method} matching {self.pattern.pattern} arrived"
        )

    def release(self, fault: str | None = None) -> None:
        self._outcome = fault
        self._released.set()
