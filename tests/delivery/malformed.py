"""A corpus of malformed event streams, as a follower may receive them from Dify or a proxy.

Each case is a real captured stream (a run that pauses at one form) with something broken in
it. `continues` cases break something the follower can skip: it must still capture the form
that follows in the same stream, without reconnecting. `ends` cases break the stream itself
(cut mid-event, an `error` event): the follower reconnects, and after its attempts marks the run
for the reconcile; it never crashes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CAPTURED = Path(__file__).resolve().parents[1] / "dify" / "data" / "captured_stream.txt"
_RUN = "fb47b2e6-5e43-4f90-be01-d5c5a088d156"
_FORM = "F-7d2e"
_TOKEN = "tok-8f3a1c9e5b"


@dataclass
class Case:
    name: str
    # Bytes inserted before the stream's `human_input_required`, or a whole-stream transform.
    inject: bytes = b""
    transform: Callable[[bytes], bytes] | None = None
    # Drop everything from the form on (the stream ends broken).
    cut: bool = False
    continues: bool = True

    def stream(self, run_id: str, form_id: str, token: str) -> bytes:
        head, form_part = _split(_captured(run_id, form_id, token))
        body = head + self.inject + (b"" if self.cut else form_part)
        return self.transform(body) if self.transform else body


def _captured(run_id: str, form_id: str, token: str) -> bytes:
    text = CAPTURED.read_text(encoding="utf-8")
    text = text.replace(_RUN, run_id).replace(_FORM, form_id).replace(_TOKEN, token)
    # The capture's form expired long ago; this one is open for an hour.
    text = text.replace("1767225600", str(int(time.time()) + 3600))
    return text.encode()


def _split(stream: bytes) -> tuple[bytes, bytes]:
    at = stream.index(b'data: {"event": "human_input_required"')
    return stream[:at], stream[at:]


def definition(form_id: str, token: str) -> dict[str, Any]:
    """GET form's answer for the captured form."""
    for line in _captured("R", form_id, token).decode().splitlines():
        if '"human_input_required"' in line:
            data = json.loads(line[len("data: ") :])["data"]
            return {
                "form_content": data["form_content"],
                "inputs": data["inputs"],
                "resolved_default_values": {
                    k: str(v) for k, v in data["resolved_default_values"].items()
                },
                "user_actions": data["actions"],
                "expiration_time": data["expiration_time"],
            }
    raise AssertionError("the captured stream has no form")


def _event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _nested(depth: int) -> bytes:
    return b'data: {"event": "node_started", "data": ' + b"[" * depth + b"]" * depth + b"}\n\n"


CASES = [
    Case("bad_json", b"data: {not json at all}\n\n"),
    Case("truncated_json", b'data: {"event": "node_started", "data": {"id": \n\n'),
    Case("data_is_an_array", b"data: [1, 2, 3]\n\n"),
    Case("data_is_a_string", b'data: "just a string"\n\n'),
    Case("data_is_null", b"data: null\n\n"),
    Case("data_is_a_number", b"data: 42\n\n"),
    Case("no_event_name", _event({"task_id": "t", "data": {"id": "x"}})),
    Case("unknown_event_name", _event({"event": "brand_new_event", "data": {"x": 1}})),
    Case("event_line_without_data", b"event: node_started\n\n"),
    Case("empty_data_lines", b"data:\ndata:\n\n"),
    Case("inner_data_is_a_string", _event({"event": "node_started", "data": "oops"})),
    Case("inner_data_is_a_list", _event({"event": "node_finished", "data": [1, 2]})),
    Case(
        "node_fields_of_the_wrong_types",
        _event(
            {
                "event": "node_finished",
                "data": {"id": 7, "node_id": None, "title": ["x"], "index": "two", "status": {}},
            }
        ),
    ),
    Case(
        "event_of_five_megabytes",
        _event({"event": "text_chunk", "data": {"text": "x" * (5 * 1024 * 1024)}}),
    ),
    Case(
        "invalid_utf8",
        b'data: {"event": "text_chunk", "data": {"text": "\xff\xfe\xc3("}}\n\n',
    ),
    Case("nul_byte_inside_json", b'data: {"event": "text_chunk", "data": {"text": "a\x00b"}}\n\n'),
    Case("json_nested_too_deep", _nested(100_000)),
    Case(
        "integer_too_long_to_parse",
        b'data: {"event": "node_started", "data": {"index": ' + b"9" * 5000 + b"}}\n\n",
    ),
    Case(
        "comments_and_unknown_fields",
        b": a comment\nfoo: bar\nid: 7\nretry: soon\nevent\n\n",
    ),
    Case("pings_without_blank_lines", b"event: ping\nevent: ping\nevent: ping\n\n"),
    Case(
        "form_event_without_fields",
        _event({"event": "human_input_required", "data": {}}),
    ),
    Case(
        "form_event_of_the_wrong_types",
        _event(
            {
                "event": "human_input_required",
                "data": {
                    "form_id": 12345,
                    "form_token": ["t"],
                    "node_id": {},
                    "inputs": {"a": 1},
                    "actions": "approve",
                    "expiration_time": "soon",
                    "resolved_default_values": [],
                },
            }
        ),
    ),
    Case(
        "data_split_over_two_data_lines",
        b'data: {"event": "node_started",\ndata: "data": {"id": "split"}}\n\n',
    ),
    Case("crlf_line_endings", transform=lambda b: b.replace(b"\n", b"\r\n")),
    Case("cr_line_endings", transform=lambda b: b.replace(b"\n", b"\r")),
    Case("byte_order_mark", transform=lambda b: b"\xef\xbb\xbf" + b),
    Case("the_form_event_twice", transform=lambda b: _twice(b)),
    # The stream itself breaks: nothing after it can be read.
    Case("cut_in_the_middle_of_an_event", b'data: {"event": "node_star', cut=True, continues=False),
    Case(
        "error_event_without_status",
        _event({"event": "error", "message": "boom"}),
        cut=True,
        continues=False,
    ),
]


def _twice(stream: bytes) -> bytes:
    head, form_part = _split(stream)
    form_event = form_part[: form_part.index(b"\n\n") + 2]
    return head + form_event + form_part
