"""Validate what the Dify simulator receives and answers against Dify's official OpenAPI spec.

`shared/dify/openapi_service.json` (beside the repository) is the source of truth, with the
exceptions listed in `SPEC_EXCEPTIONS` below, each with its reason. Requests and responses go
through openapi-core; every SSE event is validated on its own against the stream-event schema the
spec maps its `event` name to (`ChunkWorkflowEvent` for workflow apps, `ChunkChatEvent` for
chatflow and chat apps).

    from tests.openapi_check import assert_exchanges_valid
    assert_exchanges_valid(sim.exchanges())
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from inbox.simulator.recorder import Exchange

SHARED = Path(__file__).resolve().parents[2] / "shared"
SPEC_PATH = SHARED / "dify" / "openapi_service.json"
SERVER = "https://api.dify.ai/v1"
ERROR_ENVELOPE = {
    "type": "object",
    "required": ["status", "code", "message"],
    "properties": {
        "status": {"type": "integer"},
        "code": {"type": "string"},
        "message": {"type": "string"},
    },
}
# The operations the simulator serves: (method, path template).
OPERATIONS = {
    ("post", "/workflows/run"),
    ("post", "/chat-messages"),
    ("get", "/workflow/{workflow_run_id}/events"),
    ("get", "/workflows/run/{workflow_run_id}"),
    ("post", "/workflows/tasks/{task_id}/stop"),
    ("post", "/chat-messages/{task_id}/stop"),
    ("get", "/form/human_input/{form_token}"),
    ("post", "/form/human_input/{form_token}"),
    ("post", "/files/upload"),
    ("get", "/parameters"),
    ("get", "/info"),
}


# --- Where the spec and CONTRACT.md disagree, or the spec cannot be checked as written ----------


@dataclass(frozen=True)
class SpecException:
    name: str
    reason: str
    patch: Callable[[dict[str, Any]], None]


def _operations(spec: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for method, path in OPERATIONS:
        yield spec["paths"][path][method]


def _declare_401_and_envelope(spec: dict[str, Any]) -> None:
    for operation in _operations(spec):
        responses = operation["responses"]
        responses.setdefault(
            "401", {"description": "unauthorized", "content": {"application/json": {}}}
        )
        for status, response in responses.items():
            if status.startswith(("4", "5")) and "$ref" not in response:
                response.setdefault("content", {}).setdefault("application/json", {})
                response["content"]["application/json"]["schema"] = ERROR_ENVELOPE


def _declare_framework_errors(spec: dict[str, Any]) -> None:
    for method, path in OPERATIONS:
        responses = spec["paths"][path][method]["responses"]
        codes = ["405"] + (["415", "400"] if method == "post" else [])
        for code in codes:
            responses.setdefault(
                code,
                {
                    "description": "framework error",
                    "content": {"application/json": {"schema": ERROR_ENVELOPE}},
                },
            )


def _user_input_form_items(spec: dict[str, Any]) -> None:
    def control(extra: dict[str, Any] | None = None) -> dict[str, Any]:
        properties = {
            "label": {"type": "string"},
            "variable": {"type": "string"},
            "required": {"type": "boolean"},
            "default": {},
            **(extra or {}),
        }
        return {"type": "object", "required": ["label", "variable"], "properties": properties}

    kinds = {
        "text-input": control({"max_length": {"type": "integer"}}),
        "paragraph": control({"max_length": {"type": "integer"}}),
        "select": control({"options": {"type": "array", "items": {"type": "string"}}}),
        "number": control(),
        "checkbox": control(),
    }
    item = {
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1,
        "oneOf": [
            {"type": "object", "required": [name], "properties": {name: schema}}
            for name, schema in kinds.items()
        ],
    }
    params = spec["components"]["schemas"]["AppParametersResponse"]
    params["properties"]["user_input_form"]["items"] = item


def _raw_default_values_in_events(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    for name in ("WorkflowStreamEventHumanInputRequired", "StreamEventHumanInputRequired"):
        data = schemas[name]["allOf"][-1]["properties"]["data"]
        data["properties"]["resolved_default_values"] = {
            "type": "object",
            "additionalProperties": True,
        }


SPEC_EXCEPTIONS: tuple[SpecException, ...] = (
    SpecException(
        "401 and the error envelope",
        "The spec declares no 401 although its ApiKeyAuth text and CONTRACT §1 say a missing or "
        "bad key answers 401 `unauthorized`; its error responses carry examples but no schema. "
        "Every operation gets a 401, and every 4xx/5xx must be Dify's {status, code, message}.",
        _declare_401_and_envelope,
    ),
    SpecException(
        "framework errors",
        "Dify's framework answers before the route's own checks: 405 `method_not_allowed` on any "
        "route, and for JSON bodies 415 `unsupported_media_type` (not JSON) or 400 `bad_request` "
        "(not parseable). The spec leaves these out.",
        _declare_framework_errors,
    ),
    SpecException(
        "user_input_form items",
        "`UserInputFormItem` is a oneOf of wrappers with no required key, so every item matches "
        "all three and fails; Dify also lists `number` and `checkbox` start inputs. Items are "
        "checked as exactly one control key among text-input, paragraph, select, number, checkbox.",
        _user_input_form_items,
    ),
    SpecException(
        "D7 resolved_default_values in events",
        "CONTRACT D7: the `human_input_required` event (and pause reasons) carry the raw resolved "
        "values; only GET form stringifies them. The event schema's string-only map is relaxed; "
        "GET keeps the spec's strings.",
        _raw_default_values_in_events,
    ),
)

# Answers that are not Dify's and are checked only for the error envelope (or not at all):
# injected faults imitate a failing proxy or network, and a cut connection sends no answer.
SKIPPED_BY_DESIGN = (
    "injected faults (status, drop_stream, close_upload, drop_after_submit) are not Dify answers",
    "a malformed X-Sim-Fault header is refused by the simulator itself, not by Dify",
    "404 for a URL that matches no operation has no operation to validate against",
)


@functools.cache
def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    patched = copy.deepcopy(spec)
    for exception in SPEC_EXCEPTIONS:
        exception.patch(patched)
    return patched


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@functools.cache
def _openapi() -> OpenAPI:
    config = Config(extra_media_type_deserializers={"text/event-stream": _text})
    return OpenAPI.from_dict(load_spec(), config=config)


@functools.cache
def _validator(schema_name: str) -> OAS30Validator:
    spec = load_spec()
    root = {
        "components": spec["components"],
        "allOf": [{"$ref": f"#/components/schemas/{schema_name}"}],
    }
    return OAS30Validator(root, format_checker=oas30_format_checker)


def _errors(validator: OAS30Validator, instance: Any) -> list[str]:
    problems = []
    for error in validator.iter_errors(instance):
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        problems.append(f"{where}: {error.message}")
    return problems


def event_schema_name(event: dict[str, Any], app_mode: str | None) -> str | None:
    parent = "ChunkWorkflowEvent" if app_mode == "workflow" else "ChunkChatEvent"
    mapping = load_spec()["components"]["schemas"][parent]["discriminator"]["mapping"]
    ref = mapping.get(event.get("event"))
    return ref.rsplit("/", 1)[-1] if ref else None


def validate_event(event: dict[str, Any], app_mode: str | None) -> list[str]:
    """Problems with one SSE event for an app of this mode; [] when it is valid."""
    parent = "ChunkWorkflowEvent" if app_mode == "workflow" else "ChunkChatEvent"
    problems = _errors(_validator(parent), event)
    name = event_schema_name(event, app_mode)
    if name is None:
        return [*problems, f"event {event.get('event')!r} is not in {parent}'s mapping"]
    return problems + _errors(_validator(name), event)


def _request(exchange: Exchange) -> MockRequest:
    body = exchange.request_body or b""
    content_type = exchange.request_headers.get("content-type", "application/json")
    if exchange.request_parts is not None:
        boundary = "simulatorcheckboundary"
        chunks = []
        for part in exchange.request_parts:
            disposition = f'form-data; name="{part["name"]}"'
            if part["filename"] is not None:
                disposition += f'; filename="{part["filename"]}"'
            head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            if part["content_type"]:
                head += f"Content-Type: {part['content_type']}\r\n"
            value = part.get("value") or "x"
            chunks.append(f"{head}\r\n{value}\r\n")
        body = ("".join(chunks) + f"--{boundary}--\r\n").encode()
        content_type = f"multipart/form-data; boundary={boundary}"
    path = exchange.path.removeprefix("/v1")
    return MockRequest(
        SERVER,
        exchange.method,
        path,
        args=dict(parse_qsl(exchange.query, keep_blank_values=True)),
        headers={k: v for k, v in exchange.request_headers.items() if k != "content-length"},
        data=body,
        content_type=content_type.split(";")[0] if exchange.request_parts is None else content_type,
    )


def validate_request(exchange: Exchange) -> list[str]:
    try:
        _openapi().validate_request(_request(exchange))
    except Exception as exc:
        return [f"request: {_describe(exc)}"]
    return []


def validate_response(exchange: Exchange) -> list[str]:
    """Problems with the answer (status, headers, body, and each SSE event)."""
    problems: list[str] = []
    content_type = exchange.response_headers.get("content-type", "application/json")
    data = exchange.response_body
    if exchange.is_stream:
        # The stream as sent (pings first: their place does not matter to the schema).
        data = b"event: ping\n\n" * exchange.pings + b"".join(
            b"data: " + json.dumps(e).encode() + b"\n\n" for e in exchange.events or ()
        )
    response = MockResponse(
        data, exchange.status, exchange.response_headers, content_type.split(";")[0]
    )
    try:
        _openapi().validate_response(_request(exchange), response)
    except Exception as exc:
        problems.append(f"response: {_describe(exc)}")
    for index, event in enumerate(exchange.events or ()):
        for problem in validate_event(event, exchange.app_mode):
            problems.append(f"event {index} ({event.get('event')}): {problem}")
    return problems


def _describe(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__ or exc.__context__
    details = getattr(cause, "schema_errors", None) or getattr(exc, "schema_errors", None)
    if details:
        text += (
            " ["
            + "; ".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in details)
            + "]"
        )
    elif cause is not None:
        text += f" ({type(cause).__name__}: {cause})"
    return text


def validate_exchange(exchange: Exchange, *, check_request: bool = True) -> list[str]:
    """Every problem with one recorded exchange, skipping what `SKIPPED_BY_DESIGN` names."""
    if not exchange.completed:
        return []
    if exchange.fault in ("status", "invalid_fault_header"):
        envelope = _errors(OAS30Validator(ERROR_ENVELOPE), json.loads(exchange.response_body))
        return [f"injected status: {p}" for p in envelope]
    if exchange.status == 404 and exchange.route == "unrouted":
        return []
    problems = validate_request(exchange) if check_request else []
    return problems + validate_response(exchange)


def exchange_problems(exchanges: Iterable[Exchange], *, check_requests: bool = True) -> list[str]:
    found = []
    for exchange in exchanges:
        for problem in validate_exchange(exchange, check_request=check_requests):
            found.append(f"{exchange.summary()}: {problem}")
    return found


def assert_exchanges_valid(exchanges: Iterable[Exchange], *, check_requests: bool = True) -> int:
    """Fail with every problem found; return how many exchanges were checked."""
    items = list(exchanges)
    problems = exchange_problems(items, check_requests=check_requests)
    assert not problems, "spec violations:\n" + "\n".join(problems[:50])
    return len(items)
