"""An HTTP proxy in front of the S3 test server that counts requests by S3 operation and
injects the faults a real server does not produce on demand: 503 SlowDown bursts, slow
requests, outages. It can also make moto's conditional writes atomic, as S3's are: moto checks
If-None-Match and then writes, so two completions at once may both pass the check."""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


def operation(method: str, path: str) -> str:
    """The S3 operation a request performs, from its method and query string."""
    query = parse_qs(urlsplit(path).query, keep_blank_values=True)
    if method == "PUT" and "partNumber" in query:
        return "UploadPart"
    if method == "POST" and "uploads" in query:
        return "CreateMultipartUpload"
    if method == "POST" and "uploadId" in query:
        return "CompleteMultipartUpload"
    if method == "DELETE" and "uploadId" in query:
        return "AbortMultipartUpload"
    if method == "GET" and "uploads" in query:
        return "ListMultipartUploads"
    if method == "POST" and "delete" in query:
        return "DeleteObjects"
    if method == "GET" and "list-type" in query:
        return "ListObjectsV2"
    if method == "PUT" and "tagging" in query:
        return "PutObjectTagging"
    return {"PUT": "PutObject", "GET": "GetObject", "HEAD": "HeadObject"}.get(method, method)


@dataclass
class _Fault:
    remaining: int
    status: int
    code: str
    operation: str | None


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.counts: Counter[str] = Counter()
        # every request body forwarded or not, by operation: what left the host
        self.bodies: defaultdict[str, list[bytes]] = defaultdict(list)
        self._faults: list[_Fault] = []
        self._delays: dict[str | None, float] = {}
        self._down = False
        self._lock = threading.Lock()
        self._serialized: dict[str, threading.Lock] = {}
        self._hung: set[str] = set()
        self._closing = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def fail_next(
        self, count: int, status: int = 503, code: str = "SlowDown", operation: str | None = None
    ) -> None:
        with self._lock:
            self._faults.append(_Fault(count, status, code, operation))

    def delay(self, seconds: float, operation: str | None = None) -> None:
        with self._lock:
            self._delays[operation] = seconds

    def hang(self, *operations: str) -> None:
        """Accept requests of these operations ("*": every one) and never answer them."""
        with self._lock:
            self._hung.update(operations)

    def serialize(self, *operations: str) -> None:
        """Forward requests of these operations one at a time."""
        with self._lock:
            for name in operations:
                self._serialized.setdefault(name, threading.Lock())

    def outage(self, down: bool) -> None:
        self._down = down

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _take_fault(self, name: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.operation in (None, name):
                    fault.remaining -= 1
                    return fault
        return None

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        if self._down:
            handler.close_connection = True
            handler.connection.close()
            return
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        name = operation(handler.command, handler.path)
        with self._lock:
            self.counts[name] += 1
            if body:
                self.bodies[name].append(body)
            pause = self._delays.get(name, self._delays.get(None, 0.0))
            hung = name in self._hung or "*" in self._hung
        if hung:
            self._closing.wait()
            handler.close_connection = True
            return
        if pause:
            time.sleep(pause)
        fault = self._take_fault(name)
        if fault is not None:
            payload = (
                f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{fault.code}</Code>"
                f"<Message>injected by the test proxy</Message></Error>"
            ).encode()
            handler.send_response(fault.status)
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        with self._lock:
            one_at_a_time = self._serialized.get(name)
        upstream = http.client.HTTPConnection(*self._upstream, timeout=120)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
            if one_at_a_time is not None:
                one_at_a_time.acquire()
            try:
                upstream.request(handler.command, handler.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
            finally:
                if one_at_a_time is not None:
                    one_at_a_time.release()
        finally:
            upstream.close()
        handler.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)
