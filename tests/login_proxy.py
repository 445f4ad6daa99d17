"""Test helper: a reverse proxy on loopback that lets through only requests carrying one basic login.

Put in front of a real ``mlflow server`` (which has no login of its own here), it shows that every
request of a run, its training workers' included, carried the login a ``tracking.uri`` gave as
``http://user:password@host``, wherever the project moved it: ``refused`` lists the requests without it.
"""

from __future__ import annotations

import base64
import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"host", "authorization", "connection", "keep-alive", "transfer-encoding", "content-length"}


class LoginProxy(ThreadingHTTPServer):
    """Forwards requests with ``Authorization: Basic <user:password>`` to ``backend``, refuses the rest (401)."""

    daemon_threads = True

    def __init__(self, backend: str, user: str, password: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        parts = urlsplit(backend)
        self.backend = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.accepted = 0
        self.refused: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: LoginProxy

    def log_message(self, format: str, *args: object) -> None:  # BaseHTTPRequestHandler names it format
        pass  # quiet: pytest shows the test's own output

    def _body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().strip(), 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _forward(self) -> None:
        body = self._body()
        with self.server.lock:
            if self.headers.get("Authorization") != self.server.expected:
                self.server.refused.append(f"{self.command} {self.path}")
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.server.accepted += 1
        headers = {key: value for key, value in self.headers.items() if key.lower() not in HOP_BY_HOP}
        connection = http.client.HTTPConnection(*self.server.backend, timeout=300)
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward


@contextmanager
def login_proxy(backend: str, user: str, password: str) -> Iterator[LoginProxy]:
    """A :class:`LoginProxy` serving in a thread until the block ends."""
    proxy = LoginProxy(backend, user, password)
    thread = threading.Thread(target=proxy.serve_forever, name="login-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=10)
