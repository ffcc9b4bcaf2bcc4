"""A loopback HTTP server that answers from a script, for the outcome-by-outcome delivery tests.

The Dify simulator covers real runs and the fault tests; these tests need one exact answer at a
time (a 412 after a lost response, a Retry-After of 7 s, an event stream with one filled form),
so they script them. Real sockets and real HTTP: the client under test is unchanged.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    # Read the request, then close the connection without an answer: the request reached the
    # server (and may have been applied), the response is lost.
    drop: bool = False
    # An event stream: each item is one event's JSON (or a raw str line block).
    events: list[Any] | None = None
    # An event stream sent exactly as these bytes, then the connection is closed (the body is
    # delimited by the close, so it may end anywhere, mid-line included).
    raw: bytes | None = None
    # With `events`: send them one at a time, this many seconds apart (a slow or silent run's
    # keep-alive pings), the body delimited by closing the connection.
    every: float = 0.0


def error(status: int, code: str, message: str, **headers: str) -> Reply:
    return Reply(
        status=status, body={"status": status, "code": code, "message": message}, headers=headers
    )


@dataclass
class Seen:
    method: str
    path: str
    query: str
    body: Any


class _QuietServer(ThreadingHTTPServer):
    # Batches of concurrent calls: more than the default five connections may wait for accept.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that drop a kept-alive connection (or a reply that drops on purpose) are part
        # of the tests, not errors.
        pass


class ScriptedDify:
    def __init__(self) -> None:
        self.script: dict[tuple[str, str, str], list[Reply]] = defaultdict(list)
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                with server._lock:
                    server.seen.append(Seen(self.command, path, query, body))
                    reply = server._next(self.command, path, query)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if reply.raw is not None:
                    self.close_connection = True
                    self.send_response(reply.status)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("connection", "close")
                    self.end_headers()
                    self.wfile.write(reply.raw)
                    self.wfile.flush()
                    return
                if reply.events is not None and reply.every:
                    self.close_connection = True
                    self.send_response(reply.status)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("connection", "close")
                    self.end_headers()
                    for event in reply.events:
                        text = event if isinstance(event, str) else "data: " + json.dumps(event)
                        try:
                            self.wfile.write((text + "\n\n").encode())
                            self.wfile.flush()
                        except OSError:  # the client hung up
                            return
                        time.sleep(reply.every)
                    return
                if reply.events is not None:
                    chunks = []
                    for event in reply.events:
                        text = event if isinstance(event, str) else "data: " + json.dumps(event)
                        chunks.append(text + "\n\n")
                    data = "".join(chunks).encode()
                    ctype = "text/event-stream"
                else:
                    data = json.dumps(reply.body).encode()
                    ctype = "application/json"
                self.send_response(reply.status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(data)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = _handle
            do_POST = _handle

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _next(self, method: str, path: str, query: str) -> Reply:
        # The most specific entry (longest query part) first.
        entries = sorted(self.script.items(), key=lambda item: -len(item[0][2]))
        for (m, prefix, part), replies in entries:
            if m == method and path.startswith(prefix) and part in query and replies:
                return replies.pop(0) if len(replies) > 1 else replies[0]
        if method == "GET" and path.endswith("/events"):
            # A paused run's resume stream: a ping, then nothing (Dify replays no past events).
            return Reply(events=["event: ping"])
        if method == "GET" and "/form/human_input/" in path:
            return error(404, "not_found", "Form not found")
        if method == "GET" and path == "/v1/info":
            # An answer with the fields of Dify's /info (only such an answer is Dify's), naming
            # no app.
            return Reply(
                body={"name": "", "description": "", "tags": [], "mode": "", "author_name": None}
            )
        return Reply()

    def on(self, method: str, prefix: str, *replies: Reply, query: str = "") -> None:
        """Answer requests to paths under `prefix` (and with `query` in the query string) with
        these replies in turn; the last one repeats."""
        self.script[(method, "/v1" + prefix, query)] = list(replies)

    def requests(self, method: str, prefix: str, *, query: str = "") -> list[Seen]:
        with self._lock:
            return [
                s
                for s in self.seen
                if s.method == method and s.path.startswith("/v1" + prefix) and query in s.query
            ]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
