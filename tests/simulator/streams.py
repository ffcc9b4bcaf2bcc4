"""Reading SSE streams from the simulator with plain httpx, pings and timing included."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Stream:
    events: list[dict[str, Any]] = field(default_factory=list)
    pings: int = 0
    closed_after: float = 0.0  # seconds from the request to the server closing the stream
    closed_at: float = 0.0  # time.monotonic() when it closed

    @property
    def names(self) -> list[str]:
        return [e["event"] for e in self.events]

    def first(self, name: str) -> dict[str, Any]:
        return next(e for e in self.events if e["event"] == name)

    def all(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name]


def read_stream(
    response: httpx.Response,
    on_event: Callable[[dict[str, Any], Stream], None] | None = None,
    on_ping: Callable[[Stream], None] | None = None,
) -> Stream:
    """Read a streaming response to its end; callbacks may act (submit, ...) while it is open."""
    stream = Stream()
    started = time.monotonic()
    for line in response.iter_lines():
        if line.startswith("event: ping"):
            stream.pings += 1
            if on_ping is not None:
                on_ping(stream)
        elif line.startswith("data:"):
            event = json.loads(line[5:])
            stream.events.append(event)
            if on_event is not None:
                on_event(event, stream)
    stream.closed_at = time.monotonic()
    stream.closed_after = stream.closed_at - started
    return stream


def follow(
    sim: Any,
    app: str,
    run_id: str,
    user: str,
    *,
    snapshot: bool = False,
    continue_on_pause: bool = False,
    on_event: Callable[[dict[str, Any], Stream], None] | None = None,
    on_ping: Callable[[Stream], None] | None = None,
    timeout: float = 20.0,
) -> Stream:
    params = {"user": user}
    if snapshot:
        params["include_state_snapshot"] = "true"
    if continue_on_pause:
        params["continue_on_pause"] = "true"
    with (
        sim.client(app, timeout=timeout) as http,
        http.stream("GET", f"/workflow/{run_id}/events", params=params) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return read_stream(response, on_event, on_ping)


def submit(
    sim: Any, app: str, token: str, inputs: dict[str, Any], action: str, user: str
) -> httpx.Response:
    with sim.client(app) as http:
        return http.post(
            f"/form/human_input/{token}", json={"inputs": inputs, "action": action, "user": user}
        )
