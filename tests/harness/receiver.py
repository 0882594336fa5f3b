"""An HTTP server on loopback that notifications are sent to: it records what arrives and
answers as each test tells it."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# answers other than an HTTP status
HANG = -1  # holds the connection open without answering until the test ends
DROP = -2  # closes the connection without answering


class Receiver:
    """Records every request; answers each path with its configured status (200 by default), or
    as HANG or DROP say."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes, str]] = []
        self.headers: list[dict[str, str]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each request
        self.answers: dict[str, int] = {}
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append((self.path, body, self.headers["Content-Type"]))
                receiver.headers.append(dict(self.headers))
                receiver.arrivals.append(time.monotonic())
                status = receiver.answers.get(self.path, 200)
                if status == HANG:
                    receiver.release.wait(60)
                    return
                if status == DROP:
                    self.close_connection = True
                    return
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.requests]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
