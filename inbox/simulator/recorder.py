"""Every request the simulator answered and what it answered, for spec validation in tests."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Exchange:
    route: str
    method: str
    path: str  # as requested, e.g. /v1/form/human_input/abc
    query: str
    request_headers: dict[str, str]
    request_body: bytes | None  # None for multipart uploads, which are streamed, not kept
    # For uploads: each part's name, filename, content type, size, and a plain field's value.
    request_parts: list[dict[str, Any]] | None = None
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes = b""
    events: list[dict[str, Any]] | None = None  # the SSE events sent, pings excluded
    pings: int = 0
    app: str | None = None
    app_mode: str | None = None
    fault: str | None = None  # the injected fault kind that shaped this answer, if any
    completed: bool = True  # False when the connection was cut on purpose

    @property
    def is_stream(self) -> bool:
        return self.events is not None

    def json(self) -> Any:
        return json.loads(self.response_body)

    def summary(self) -> str:
        return f"{self.method} {self.path} -> {self.status}"


class Recorder:
    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled
        self.exchanges: list[Exchange] = []

    def add(self, exchange: Exchange) -> None:
        if self.enabled:
            self.exchanges.append(exchange)

    def clear(self) -> None:
        self.exchanges = []
