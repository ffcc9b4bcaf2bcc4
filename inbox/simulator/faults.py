"""Fault injection: the failures a client must survive, on demand.

A fault targets a route (or ``*``), optionally one app, one run (``run``: a workflow run id, for
the routes that name one: its events and its detail) and one form (``form``: a form id, for the
routes that name one by its token: GET and POST form), for the next ``times`` requests (or until
cleared). Kinds:

- ``status``: answer ``status`` (any 4xx or 5xx; 429 with ``Retry-After: retry_after``) before
  anything else, with Dify's error envelope: the code Dify gives that status (as its handler
  names werkzeug's exceptions: 404 ``not_found``, 409 ``conflict``, 422 ``unprocessable_entity``,
  500 ``internal_server_error``...), or ``code`` when given, e.g. a code that says otherwise than
  the status.
- ``delay``: wait ``delay`` seconds before handling the request.
- ``drop_stream``: cut the connection of an SSE response after ``after_events`` events.
- ``stream_error``: after ``after_events`` events (0: before any) send Dify's in-stream ``error`` event
  (``status``, ``code``, ``message``) and end the stream.
- ``close_upload``: cut the connection of a file upload after ``after_bytes`` bytes of body.
- ``drop_after_submit``: apply a form submission, then cut the connection before answering, so
  the client sees a failed request although the submission counted.

Faults come from the control API (``POST /_sim/faults``), the in-process handle, or one request's
``X-Sim-Fault`` header (``kind=status&status=503``), which applies to that request only.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qsl

KINDS = ("status", "delay", "drop_stream", "stream_error", "close_upload", "drop_after_submit")
ROUTES = (
    "workflows_run",
    "chat_messages",
    "workflow_events",
    "form_get",
    "form_submit",
    "files_upload",
    "workflow_run_detail",
    "workflow_stop",
    "chat_stop",
    "parameters",
    "info",
)
_ids = itertools.count(1)

# Dify's envelopes for an HTTP error of each status: its handler names the code after the
# werkzeug exception raised (`NotFound` -> `not_found`).
STATUS_ERRORS: dict[int, tuple[str, str]] = {
    400: ("bad_request", "Bad Request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not Found"),
    405: ("method_not_allowed", "Method Not Allowed"),
    408: ("request_timeout", "Request Timeout"),
    409: ("conflict", "Conflict"),
    410: ("gone", "Gone"),
    412: ("precondition_failed", "Precondition Failed"),
    413: ("request_entity_too_large", "Request Entity Too Large"),
    415: ("unsupported_media_type", "Unsupported Media Type"),
    422: ("unprocessable_entity", "Unprocessable Entity"),
    429: ("too_many_requests", "Too many requests. Please try again later."),
    500: ("internal_server_error", "Internal Server Error."),
    501: ("not_implemented", "Not Implemented"),
    502: ("bad_gateway", "Bad Gateway"),
    503: ("service_unavailable", "Service Unavailable"),
    504: ("gateway_timeout", "Gateway Timeout"),
}


@dataclass
class Fault:
    kind: str
    route: str = "*"
    app: str | None = None
    run: str | None = None
    form: str | None = None
    times: int | None = 1  # None: until cleared
    status: int = 503
    code: str | None = None
    message: str | None = None
    retry_after: int | None = None
    delay: float = 0.0
    after_events: int = 0
    after_bytes: int = 0
    id: int = 0
    used: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(KINDS)}")
        if self.route != "*" and self.route not in ROUTES:
            raise ValueError(f"unknown route {self.route!r}; one of {', '.join(ROUTES)} or *")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1 (or null for until cleared)")
        if self.kind == "status" and not 400 <= self.status <= 599:
            raise ValueError("status must be an HTTP error status")
        if self.kind == "status" and self.status == 429 and self.retry_after is None:
            self.retry_after = 1
        if not self.id:
            self.id = next(_ids)

    def matches(
        self, route: str, app: str | None, run: str | None = None, form: str | None = None
    ) -> bool:
        if self.route not in ("*", route):
            return False
        if self.run is not None and self.run != run:
            return False
        if self.form is not None and self.form != form:
            return False
        return self.app is None or self.app == app

    def error_body(self) -> dict[str, Any]:
        code, message = (
            STATUS_ERRORS.get(self.status) or STATUS_ERRORS[400 if self.status < 500 else 500]
        )
        return {
            "status": self.status,
            "code": self.code or code,
            "message": self.message if self.message is not None else message,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        allowed = {
            "kind",
            "route",
            "app",
            "run",
            "form",
            "times",
            "status",
            "code",
            "message",
            "retry_after",
            "delay",
            "after_events",
            "after_bytes",
        }
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        if "kind" not in data:
            raise ValueError("a fault needs a kind")
        values = dict(data)
        for key in ("times", "status", "retry_after", "after_events", "after_bytes"):
            if values.get(key) is not None:
                values[key] = int(values[key])
        if values.get("delay") is not None:
            values["delay"] = float(values["delay"])
        return cls(**values)

    @classmethod
    def from_header(cls, header: str, route: str) -> Fault:
        values: dict[str, Any] = dict(parse_qsl(header, keep_blank_values=True))
        values.setdefault("route", route)
        values["times"] = 1
        return cls.from_dict(values)


class FaultBook:
    def __init__(self) -> None:
        self.faults: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        self.faults.clear()

    def remove(self, fault_id: int) -> bool:
        before = len(self.faults)
        self.faults = [f for f in self.faults if f.id != fault_id]
        return len(self.faults) != before

    def take(
        self, route: str, app: str | None, run: str | None = None, form: str | None = None
    ) -> list[Fault]:
        """The faults that apply to this request, each counted as used once."""
        taken = []
        for fault in list(self.faults):
            if not fault.matches(route, app, run, form):
                continue
            fault.used += 1
            if fault.times is not None:
                fault.times -= 1
                if fault.times == 0:
                    self.faults.remove(fault)
            taken.append(fault)
        return taken
