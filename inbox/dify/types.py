"""Typed views of what Dify sends: stream events, form definitions, uploads, run details.

Parsing is lenient on purpose. Dify adds fields and events between versions (`approval_channels`,
`submitted_data`, `reasons[].type` next to `TYPE`), so an unknown event becomes a plain
`StreamEvent`, a missing field gets a neutral default, and every object keeps the dict it was
built from in `.raw` so nothing the server said is lost.

A `form_token` is a bearer secret: no repr here shows one (nor the raw dicts that contain one).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

# --- lenient coercion -------------------------------------------------------------------------


class SealedText(str):
    """A secret this process cannot read (its stored ciphertext, which no configured key opens):
    never sent as the secret. The model layer makes these (`inbox.crypto.Sealed`); the client
    refuses them (`ApiKeyUnreadable`, `FormTokenUnreadable`)."""


# What no database stores: NUL, and half of a surrogate pair (Dify's JSON may escape one alone,
# "\ud83d", when an LLM's output or a user's input cut an emoji in two; a pair decodes to its
# character, so any surrogate left in a decoded string is alone).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _mend(text: str) -> str:
    return _UNSTORABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", text)


def storable(value: Any) -> Any:
    """`value` (decoded JSON) as a database can store it: every NUL character taken out of its
    strings and keys (an LLM's output can hold one, and PostgreSQL stores none, neither in text
    nor as `\\u0000` in jsonb) and every lone surrogate replaced by U+FFFD (psycopg cannot
    encode one, nor SQLite's driver), so one such character cannot make every write of the
    record fail. Values with neither come back as they are; others as copies."""
    if isinstance(value, str):
        return _mend(value) if _UNSTORABLE.search(value) else value
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any, default: str = "") -> str:
    if value is None:
        return default
    return value if isinstance(value, str) else str(value)


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _str_list(value: Any) -> list[str]:
    return [_str(v) for v in _list(value) if v is not None]


def _opt_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _int(value: Any, default: int = 0) -> int:
    result = _opt_int(value)
    return default if result is None else result


def _opt_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("true", "1", "yes")
    return bool(value)


def display_value(value: Any) -> str:
    """A default value as text, the way Dify's GET form stringifies `resolved_default_values`:
    null is "", objects and lists are JSON text, anything else is `str()` of it."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        # Python's str(), which is what the server applies.
        return "True" if value else "False"
    return str(value)


# --- form definition --------------------------------------------------------------------------


@dataclass(kw_only=True)
class Action:
    id: str
    title: str
    button_style: str = "default"
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Any) -> Action:
        d = _dict(data)
        return cls(
            id=_str(d.get("id")),
            title=_str(d.get("title")),
            button_style=_str(d.get("button_style"), "default") or "default",
            raw=d,
        )

    def to_json(self) -> dict[str, Any]:
        return {**self.raw, "id": self.id, "title": self.title, "button_style": self.button_style}


@dataclass(kw_only=True)
class ValueSource:
    """`default` of a paragraph, `option_source` of a select: {type, selector, value}."""

    type: str = "constant"
    selector: list[str] = field(default_factory=list)
    value: Any = None

    @classmethod
    def from_api(cls, data: Any) -> ValueSource | None:
        if not isinstance(data, dict):
            return None
        return cls(
            type=_str(data.get("type"), "constant"),
            selector=_str_list(data.get("selector")),
            value=data.get("value"),
        )


@dataclass(kw_only=True)
class FormInput:
    """An input of a kind we do not know; the known kinds are subclasses."""

    type: str
    output_variable_name: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.output_variable_name

    @classmethod
    def from_api(cls, data: Any) -> FormInput:
        d = _dict(data)
        kind = _str(d.get("type"))
        impl = _INPUT_KINDS.get(kind, FormInput)
        return impl._from_dict(d)

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> FormInput:
        return cls(
            type=_str(d.get("type")),
            output_variable_name=_str(d.get("output_variable_name")),
            raw=d,
        )

    def to_json(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw)


@dataclass(kw_only=True)
class ParagraphInput(FormInput):
    type: str = "paragraph"
    default: ValueSource | None = None

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> ParagraphInput:
        return cls(
            output_variable_name=_str(d.get("output_variable_name")),
            default=ValueSource.from_api(d.get("default")),
            raw=d,
        )


@dataclass(kw_only=True)
class SelectInput(FormInput):
    type: str = "select"
    option_source: ValueSource = field(default_factory=ValueSource)

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> SelectInput:
        source = ValueSource.from_api(d.get("option_source")) or ValueSource(value=[])
        source.value = _str_list(source.value)
        return cls(
            output_variable_name=_str(d.get("output_variable_name")), option_source=source, raw=d
        )

    @property
    def options(self) -> list[str]:
        # Always the server's list: newer Dify resolves variable-sourced options into `value`
        # when serving the form; we never resolve a selector ourselves.
        return list(self.option_source.value or [])


@dataclass(kw_only=True)
class FileInput(FormInput):
    type: str = "file"
    allowed_file_types: list[str] = field(default_factory=list)
    allowed_file_extensions: list[str] = field(default_factory=list)
    allowed_file_upload_methods: list[str] = field(default_factory=list)

    @classmethod
    def _file_fields(cls, d: dict[str, Any]) -> dict[str, Any]:
        return {
            "output_variable_name": _str(d.get("output_variable_name")),
            "allowed_file_types": _str_list(d.get("allowed_file_types")),
            "allowed_file_extensions": _str_list(d.get("allowed_file_extensions")),
            "allowed_file_upload_methods": _str_list(d.get("allowed_file_upload_methods")),
            "raw": d,
        }

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> FileInput:
        return cls(**cls._file_fields(d))

    @property
    def max_files(self) -> int:
        return 1


@dataclass(kw_only=True)
class FileListInput(FileInput):
    type: str = "file-list"
    # 0 means Dify sets no cap of its own.
    number_limits: int = 0

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> FileListInput:
        return cls(**cls._file_fields(d), number_limits=max(_int(d.get("number_limits")), 0))

    @property
    def max_files(self) -> int:
        return self.number_limits


_INPUT_KINDS: dict[str, type[FormInput]] = {
    "paragraph": ParagraphInput,
    "select": SelectInput,
    "file": FileInput,
    "file-list": FileListInput,
}


@dataclass(kw_only=True)
class FormDefinition:
    """What a reviewer needs to answer a form: GET /form/human_input/{token}, or the
    `human_input_required` event (which has the same fields, `actions` for `user_actions`)."""

    form_content: str = ""
    inputs: list[FormInput] = field(default_factory=list)
    user_actions: list[Action] = field(default_factory=list)
    # As received: strings from GET, raw values in events and pause reasons (CONTRACT D7).
    resolved_default_values: dict[str, Any] = field(default_factory=dict)
    expiration_time: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def actions(self) -> list[Action]:
        return self.user_actions

    @classmethod
    def from_api(cls, data: Any) -> FormDefinition:
        d = storable(_dict(data))
        actions = d.get("user_actions")
        if actions is None:
            actions = d.get("actions")
        return cls(
            form_content=_str(d.get("form_content")),
            inputs=[FormInput.from_api(i) for i in _list(d.get("inputs"))],
            user_actions=[Action.from_api(a) for a in _list(actions)],
            resolved_default_values=dict(_dict(d.get("resolved_default_values"))),
            expiration_time=_opt_int(d.get("expiration_time")),
            raw=d,
        )

    @classmethod
    def from_event(cls, event: Any) -> FormDefinition:
        """From a `human_input_required` event (or its `data`, or a pause reason)."""
        if isinstance(event, HumanInputFields):
            return event.definition
        d = _dict(event)
        if "event" in d and isinstance(d.get("data"), dict):
            d = d["data"]
        return cls.from_api(d)

    def to_json(self) -> dict[str, Any]:
        """The GET-form shape, for storing; `from_api(to_json())` gives an equal definition.
        Unknown keys of the source are kept; the token and event-only keys are not."""
        extra = {k: v for k, v in self.raw.items() if k not in _NOT_DEFINITION_KEYS}
        return copy.deepcopy(
            {
                **extra,
                "form_content": self.form_content,
                "inputs": [i.to_json() for i in self.inputs],
                "user_actions": [a.to_json() for a in self.user_actions],
                "resolved_default_values": self.resolved_default_values,
                "expiration_time": self.expiration_time,
            }
        )

    def input(self, name: str) -> FormInput | None:
        for item in self.inputs:
            if item.output_variable_name == name:
                return item
        return None

    def action(self, action_id: str) -> Action | None:
        for item in self.user_actions:
            if item.id == action_id:
                return item
        return None

    def default_for(self, input_name: str) -> str:
        """The text to prefill: the resolved default if the server gave one, else a constant
        default's value, else "". Selectors are never resolved here (the server does that)."""
        if input_name in self.resolved_default_values:
            return display_value(self.resolved_default_values[input_name])
        item = self.input(input_name)
        if isinstance(item, ParagraphInput) and item.default and item.default.type == "constant":
            return display_value(item.default.value)
        return ""

    def display_defaults(self) -> dict[str, str]:
        return {
            i.output_variable_name: self.default_for(i.output_variable_name) for i in self.inputs
        }


# Keys of an event or pause reason that are not part of the form as GET describes it; the token
# above all must not end up in a stored definition.
_NOT_DEFINITION_KEYS = frozenset(
    {
        "form_token",
        "form_id",
        "node_id",
        "node_title",
        "display_in_ui",
        "approval_channels",
        "actions",
        "TYPE",
        "type",
    }
)


# --- stream events ----------------------------------------------------------------------------


@dataclass(kw_only=True)
class StreamEvent:
    """One event of a run's stream. Subclasses add typed views of known events' `data`."""

    event: str
    task_id: str | None = None
    workflow_run_id: str | None = None
    # Chatflow events carry these at top level.
    conversation_id: str | None = None
    message_id: str | None = None
    created_at: int | None = None
    data: dict[str, Any] = field(default_factory=dict, repr=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(kw_only=True)
class HumanInputFields:
    """A pending form as the stream describes it: the `human_input_required` event's data and
    each reason of `workflow_paused`."""

    form_id: str = ""
    # null when the form has no WebApp recipient (email or console delivery only).
    form_token: str | None = field(default=None, repr=False)
    node_id: str = ""
    node_title: str = ""
    form_content: str = field(default="", repr=False)
    inputs: list[FormInput] = field(default_factory=list, repr=False)
    actions: list[Action] = field(default_factory=list, repr=False)
    display_in_ui: bool = False
    resolved_default_values: dict[str, Any] = field(default_factory=dict, repr=False)
    expiration_time: int | None = None
    approval_channels: list[str] = field(default_factory=list)

    @staticmethod
    def _parse(d: dict[str, Any]) -> dict[str, Any]:
        return {
            # The two identifiers are taken only as the strings Dify sends: a number or a list
            # here is garbage, and a form made from it could never be answered.
            "form_id": d["form_id"] if isinstance(d.get("form_id"), str) else "",
            "form_token": d["form_token"] if isinstance(d.get("form_token"), str) else None,
            "node_id": _str(d.get("node_id")),
            "node_title": _str(d.get("node_title")),
            "form_content": _str(d.get("form_content")),
            "inputs": [FormInput.from_api(i) for i in _list(d.get("inputs"))],
            "actions": [Action.from_api(a) for a in _list(d.get("actions", d.get("user_actions")))],
            "display_in_ui": _bool(d.get("display_in_ui")),
            "resolved_default_values": dict(_dict(d.get("resolved_default_values"))),
            "expiration_time": _opt_int(d.get("expiration_time")),
            "approval_channels": _str_list(d.get("approval_channels")),
        }

    @property
    def definition(self) -> FormDefinition:
        source = self._source()
        return FormDefinition(
            form_content=self.form_content,
            inputs=list(self.inputs),
            user_actions=list(self.actions),
            resolved_default_values=dict(self.resolved_default_values),
            expiration_time=self.expiration_time,
            raw={k: v for k, v in source.items() if k not in _NOT_DEFINITION_KEYS},
        )

    def _source(self) -> dict[str, Any]:
        return {}


@dataclass(kw_only=True)
class PauseReason(HumanInputFields):
    # `TYPE` in the documented shape, `type` from a newer serializer: both are read.
    type: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, data: Any) -> PauseReason:
        d = _dict(data)
        kind = d.get("TYPE", d.get("type"))
        return cls(type=_str(kind), raw=d, **HumanInputFields._parse(d))

    @property
    def is_human_input(self) -> bool:
        return self.type == "human_input_required"

    def _source(self) -> dict[str, Any]:
        return self.raw


@dataclass(kw_only=True)
class HumanInputRequired(StreamEvent, HumanInputFields):
    def _source(self) -> dict[str, Any]:
        return self.data


@dataclass(kw_only=True)
class WorkflowStarted(StreamEvent):
    id: str = ""
    workflow_id: str = ""
    inputs: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(kw_only=True)
class WorkflowPaused(StreamEvent):
    paused_nodes: list[str] = field(default_factory=list)
    reasons: list[PauseReason] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict, repr=False)
    status: str = "paused"
    elapsed_time: float | None = None
    total_tokens: int | None = None
    total_steps: int | None = None


@dataclass(kw_only=True)
class WorkflowFinished(StreamEvent):
    id: str = ""
    workflow_id: str = ""
    # succeeded | failed | stopped | partial-succeeded
    status: str = ""
    outputs: dict[str, Any] = field(default_factory=dict, repr=False)
    error: str | None = None
    elapsed_time: float | None = None
    total_tokens: int | None = None
    total_steps: int | None = None
    finished_at: int | None = None
    exceptions_count: int | None = None
    created_by: dict[str, Any] = field(default_factory=dict, repr=False)
    files: list[Any] = field(default_factory=list, repr=False)


@dataclass(kw_only=True)
class HumanInputFormFilled(StreamEvent):
    node_id: str = ""
    node_title: str = ""
    rendered_content: str = field(default="", repr=False)
    action_id: str = ""
    action_text: str = ""
    # Documented but absent from some versions (CONTRACT D8).
    submitted_data: dict[str, Any] | None = field(default=None, repr=False)


@dataclass(kw_only=True)
class HumanInputFormTimeout(StreamEvent):
    node_id: str = ""
    node_title: str = ""
    expiration_time: int | None = None


@dataclass(kw_only=True)
class NodeEvent(StreamEvent):
    """node_started / node_finished / node_retry, and the iteration_* and loop_* variants."""

    id: str = ""
    node_id: str = ""
    node_type: str = ""
    title: str = ""
    index: int | None = None
    status: str | None = None
    error: str | None = None


@dataclass(kw_only=True)
class TextChunk(StreamEvent):
    text: str = ""
    from_variable_selector: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class MessageEvent(StreamEvent):
    """Chatflow `message` / `agent_message` chunks and `message_replace`: `answer` is at top
    level, not under `data`. `message_replace` replaces the answer so far."""

    answer: str = ""


@dataclass(kw_only=True)
class MessageEnd(StreamEvent):
    id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)
    files: list[Any] = field(default_factory=list, repr=False)


@dataclass(kw_only=True)
class ErrorEvent(StreamEvent):
    status: int | None = None
    code: str = ""
    message: str = ""


@dataclass(kw_only=True)
class PingEvent(StreamEvent):
    pass


TERMINAL_EVENTS = frozenset({"workflow_finished", "workflow_paused", "error"})


def _node_fields(d: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": _str(d.get("id")),
        "node_id": _str(d.get("node_id")),
        "node_type": _str(d.get("node_type")),
        "title": _str(d.get("title")),
        "index": _opt_int(d.get("index")),
        "status": _opt_str(d.get("status")),
        "error": _opt_str(d.get("error")),
    }


def parse_event(payload: Any) -> StreamEvent:
    """A decoded `data:` JSON object as a typed event. Never raises on unknown content."""
    raw = _dict(payload)
    name = _str(raw.get("event"))
    data = _dict(raw.get("data"))
    run_id = _opt_str(raw.get("workflow_run_id")) or _opt_str(data.get("workflow_run_id"))
    if run_id is None and name in ("workflow_started", "workflow_finished"):
        run_id = _opt_str(data.get("id"))
    base: dict[str, Any] = {
        "event": name,
        "task_id": _opt_str(raw.get("task_id")),
        "workflow_run_id": run_id,
        "conversation_id": _opt_str(raw.get("conversation_id")),
        "message_id": _opt_str(raw.get("message_id")),
        "created_at": _opt_int(raw.get("created_at")),
        "data": data,
        "raw": raw,
    }
    if name == "human_input_required":
        return HumanInputRequired(**base, **HumanInputFields._parse(data))
    if name == "workflow_paused":
        return WorkflowPaused(
            **base,
            paused_nodes=_str_list(data.get("paused_nodes")),
            reasons=[PauseReason.from_api(r) for r in _list(data.get("reasons"))],
            outputs=_dict(data.get("outputs")),
            status=_str(data.get("status"), "paused"),
            elapsed_time=_opt_float(data.get("elapsed_time")),
            total_tokens=_opt_int(data.get("total_tokens")),
            total_steps=_opt_int(data.get("total_steps")),
        )
    if name == "workflow_finished":
        return WorkflowFinished(
            **base,
            id=_str(data.get("id")),
            workflow_id=_str(data.get("workflow_id")),
            status=_str(data.get("status")),
            outputs=_dict(data.get("outputs")),
            error=_opt_str(data.get("error")) or None,
            elapsed_time=_opt_float(data.get("elapsed_time")),
            total_tokens=_opt_int(data.get("total_tokens")),
            total_steps=_opt_int(data.get("total_steps")),
            finished_at=_opt_int(data.get("finished_at")),
            exceptions_count=_opt_int(data.get("exceptions_count")),
            created_by=_dict(data.get("created_by")),
            files=_list(data.get("files")),
        )
    if name == "workflow_started":
        return WorkflowStarted(
            **base,
            id=_str(data.get("id")),
            workflow_id=_str(data.get("workflow_id")),
            inputs=_dict(data.get("inputs")),
        )
    if name == "human_input_form_filled":
        submitted = data.get("submitted_data")
        return HumanInputFormFilled(
            **base,
            node_id=_str(data.get("node_id")),
            node_title=_str(data.get("node_title")),
            rendered_content=_str(data.get("rendered_content")),
            action_id=_str(data.get("action_id")),
            action_text=_str(data.get("action_text")),
            submitted_data=submitted if isinstance(submitted, dict) else None,
        )
    if name == "human_input_form_timeout":
        return HumanInputFormTimeout(
            **base,
            node_id=_str(data.get("node_id")),
            node_title=_str(data.get("node_title")),
            expiration_time=_opt_int(data.get("expiration_time")),
        )
    if name.startswith(("node_", "iteration_", "loop_")):
        return NodeEvent(**base, **_node_fields(data))
    if name == "text_chunk":
        return TextChunk(
            **base,
            text=_str(data.get("text")),
            from_variable_selector=_str_list(data.get("from_variable_selector")),
        )
    if name in ("message", "agent_message", "message_replace"):
        return MessageEvent(**base, answer=_str(raw.get("answer")))
    if name == "message_end":
        return MessageEnd(
            **base,
            id=_str(raw.get("id")),
            metadata=_dict(raw.get("metadata")),
            files=_list(raw.get("files")),
        )
    if name == "error":
        return ErrorEvent(
            **base,
            status=_opt_int(raw.get("status")),
            code=_str(raw.get("code")),
            message=_str(raw.get("message")),
        )
    if name == "ping":
        return PingEvent(**base)
    return StreamEvent(**base)


# --- other responses --------------------------------------------------------------------------


@dataclass(kw_only=True)
class UploadedFile:
    """The 201 answer of POST /files/upload; `id` is what a file mapping's `upload_file_id` takes."""

    id: str
    name: str = ""
    size: int = 0
    extension: str = ""
    mime_type: str = ""
    created_by: str | None = None
    created_at: int | None = None
    # Signed download links: as good as the file itself, so kept out of reprs.
    preview_url: str | None = field(default=None, repr=False)
    source_url: str | None = field(default=None, repr=False)
    original_url: str | None = field(default=None, repr=False)
    tenant_id: str | None = None
    conversation_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, data: Any) -> UploadedFile:
        d = _dict(data)
        return cls(
            id=_str(d.get("id")),
            name=_str(d.get("name")),
            size=_int(d.get("size")),
            extension=_str(d.get("extension")),
            mime_type=_str(d.get("mime_type")),
            created_by=_opt_str(d.get("created_by")),
            created_at=_opt_int(d.get("created_at")),
            preview_url=_opt_str(d.get("preview_url")),
            source_url=_opt_str(d.get("source_url")),
            original_url=_opt_str(d.get("original_url")),
            tenant_id=_opt_str(d.get("tenant_id")),
            conversation_id=_opt_str(d.get("conversation_id")),
            raw=d,
        )

    def mapping(self, category: str) -> dict[str, str]:
        """The file mapping to submit for this upload; `category` must be what Dify detects."""
        return {"transfer_method": "local_file", "upload_file_id": self.id, "type": category}


RUN_FINAL_STATUSES = frozenset({"succeeded", "failed", "stopped", "partial-succeeded"})


@dataclass(kw_only=True)
class RunDetail:
    """GET /workflows/run/{id}. `status`: running | succeeded | failed | stopped |
    partial-succeeded | paused."""

    id: str
    workflow_id: str = ""
    status: str = ""
    # Dify sends the inputs as a JSON string; parsed here, the original stays in `raw`.
    inputs: dict[str, Any] = field(default_factory=dict, repr=False)
    outputs: dict[str, Any] = field(default_factory=dict, repr=False)
    error: str | None = None
    total_steps: int | None = None
    total_tokens: int | None = None
    created_at: int | None = None
    finished_at: int | None = None
    elapsed_time: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, data: Any) -> RunDetail:
        d = _dict(data)
        inputs: Any = d.get("inputs")
        if isinstance(inputs, str):
            try:
                inputs = json.loads(inputs) if inputs else {}
            except ValueError:
                inputs = {}
        outputs: Any = d.get("outputs")
        if isinstance(outputs, str):
            try:
                outputs = json.loads(outputs) if outputs else {}
            except ValueError:
                outputs = {}
        return cls(
            id=_str(d.get("id")),
            workflow_id=_str(d.get("workflow_id")),
            status=_str(d.get("status")),
            # Both may be JSON in a string: decoded here, so cleaned here.
            inputs=_dict(storable(inputs)),
            outputs=_dict(storable(outputs)),
            error=_opt_str(d.get("error")) or None,
            total_steps=_opt_int(d.get("total_steps")),
            total_tokens=_opt_int(d.get("total_tokens")),
            created_at=_opt_int(d.get("created_at")),
            finished_at=_opt_int(d.get("finished_at")),
            elapsed_time=_opt_float(d.get("elapsed_time")),
            raw=d,
        )

    @property
    def is_finished(self) -> bool:
        return self.status in RUN_FINAL_STATUSES
