"""Scenario files: the simulator's apps and the graphs their runs walk.

One file (YAML or JSON) describes one app::

    app: {name, api_key, mode: workflow|chatflow|chat, description, tags, author_name}
    inputs: [{variable, type: text-input|paragraph|select|number|checkbox, label, required, ...}]
    flow: [node_id, ...]            # what runs after the start node, in order
    nodes: {node_id: {type, title, ...}}

Node types:

- ``llm``: streams ``text`` (a template) as ``text_chunk`` (workflow) or ``message`` (chatflow)
  events, ``chunk_words`` words at a time, ``chunk_delay`` seconds apart; outputs ``{text}``.
- ``answer``: like ``llm`` but without tokens (the chatflow Answer node).
- ``code``, ``tool``, ``http-request``, ``template-transform``, ``if-else``,
  ``knowledge-retrieval``, ``variable-aggregator``: wait ``delay`` and output ``outputs`` (values
  are templates; a value that is exactly one ``{{#node.var#}}`` keeps the variable's type).
- ``end``: sets the run's outputs and ends the run.
- ``human-input``: a Human Input form (``content``, ``inputs``, ``actions``, ``timeout`` with
  ``timeout_unit`` second|minute|hour|day, ``delivery`` webapp|email|console, ``display_in_ui``).
  ``branches`` maps an action id to the nodes that follow that choice; the nodes after the form in
  the enclosing list run afterwards either way. ``timeout_branch`` runs when the form expires;
  without one the branch ends there, as in Dify when no timeout edge is wired.
- ``parallel``: ``branches`` is a list of node lists run concurrently; forms in several branches
  pause the run together under one ``workflow_paused``.

Any node can carry ``fail: "<error>"``: it then finishes with status ``failed`` and fails the run.
Templates use Dify's ``{{#node_id.variable#}}``; start inputs are ``start.<variable>`` and
``sys.query``, ``sys.user_id``, ``sys.conversation_id``, ``sys.workflow_run_id`` are set.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inbox.simulator.files import FILE_TYPES, TRANSFER_METHODS

DEFAULT_SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"

MODES = {
    "workflow": "workflow",
    "chatflow": "advanced-chat",
    "advanced-chat": "advanced-chat",
    "chat": "chat",
}

START_INPUT_TYPES = (
    "text-input",
    "paragraph",
    "select",
    "number",
    "checkbox",
    "file",
    "file-list",
)
FORM_INPUT_TYPES = ("paragraph", "select", "file", "file-list")
BUTTON_STYLES = ("primary", "default", "accent", "ghost")
PLAIN_NODE_TYPES = (
    "code",
    "tool",
    "http-request",
    "template-transform",
    "if-else",
    "knowledge-retrieval",
    "variable-aggregator",
    "question-classifier",
)
NODE_TYPES = (*PLAIN_NODE_TYPES, "llm", "answer", "end", "human-input", "parallel")
DELIVERY_CHANNELS = ("webapp", "email", "console")
_ACTION_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TIMEOUT_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
# Dify's backend falls back to 36 hours when a node sets no timeout.
DEFAULT_FORM_TIMEOUT = 36 * 3600.0
_NAMESPACE = uuid.UUID("6f1c3b8e-58a4-4c1e-9d3b-2a7f0e9c4d11")


class ScenarioError(ValueError):
    """A scenario file that does not describe a valid app."""


@dataclass(frozen=True)
class StartInput:
    variable: str
    type: str
    label: str
    required: bool
    default: Any = None
    options: tuple[str, ...] = ()
    max_length: int | None = None
    # A file or file-list input's config, as Dify's /parameters gives it: allowed_file_types,
    # allowed_file_extensions, allowed_file_upload_methods (a file-list's count is
    # `max_length`, 0 for none).
    file_config: dict[str, Any] | None = None

    @property
    def is_file(self) -> bool:
        return self.type in ("file", "file-list")

    def user_input_form_item(self) -> dict[str, Any]:
        """The item `/parameters` lists for this input, keyed by its control type."""
        body: dict[str, Any] = {
            "label": self.label,
            "variable": self.variable,
            "required": self.required,
            "default": "" if self.default is None else self.default,
        }
        if self.type in ("text-input", "paragraph") and self.max_length is not None:
            body["max_length"] = self.max_length
        if self.type == "select":
            body["options"] = list(self.options)
        if self.is_file:
            # Dify gives a file input no default, and a file-list's count as `max_length`.
            body["default"] = None
            body.update(self.file_config or {})
            if self.type == "file-list":
                body["max_length"] = self.max_length or 0
        return {self.type: body}


@dataclass(frozen=True)
class FormSpec:
    content: str
    inputs: tuple[dict[str, Any], ...]
    actions: tuple[dict[str, str], ...]
    branches: dict[str, tuple[str, ...]]
    timeout: float
    timeout_branch: tuple[str, ...] | None
    delivery: tuple[str, ...]
    display_in_ui: bool

    @property
    def has_webapp(self) -> bool:
        return "webapp" in self.delivery

    def action_title(self, action_id: str) -> str:
        for action in self.actions:
            if action["id"] == action_id:
                return action["title"]
        return action_id


@dataclass(frozen=True)
class NodeSpec:
    id: str
    type: str
    title: str
    delay: float = 0.0
    outputs: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    chunk_words: int = 3
    chunk_delay: float = 0.0
    stream: bool = True
    fail: str | None = None
    parallel: tuple[tuple[str, ...], ...] = ()
    form: FormSpec | None = None


@dataclass(frozen=True)
class AppSpec:
    name: str
    api_key: str
    mode: str  # workflow | advanced-chat | chat
    description: str
    tags: tuple[str, ...]
    author_name: str
    inputs: tuple[StartInput, ...]
    flow: tuple[str, ...]
    nodes: dict[str, NodeSpec]
    opening_statement: str = ""
    source: str = ""
    # The app's file upload feature (a chat message's `files`): allowed_file_types,
    # allowed_file_extensions, allowed_file_upload_methods, number_limits; None: off.
    file_upload: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"app:{self.name}"))

    @property
    def workflow_id(self) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"workflow:{self.name}"))

    @property
    def is_workflow(self) -> bool:
        return self.mode == "workflow"

    @property
    def is_chatflow(self) -> bool:
        return self.mode == "advanced-chat"

    @property
    def has_graph(self) -> bool:
        return self.mode in ("workflow", "advanced-chat")

    def human_input_nodes(self) -> list[NodeSpec]:
        return [node for node in self.nodes.values() if node.form is not None]


def _fail(where: str, message: str) -> ScenarioError:
    return ScenarioError(f"{where}: {message}")


def _str(value: Any, where: str, *, required: bool = True, default: str = "") -> str:
    if value is None:
        if required:
            raise _fail(where, "is required")
        return default
    if not isinstance(value, str):
        raise _fail(where, f"must be a string, not {type(value).__name__}")
    return value


def _number(value: Any, where: str, default: float = 0.0) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _fail(where, "must be a non-negative number")
    return float(value)


def _node_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(where, "must be a list of node ids")
    return tuple(value)


def _parse_start_input(raw: Any, where: str) -> StartInput:
    if not isinstance(raw, dict):
        raise _fail(where, "must be a mapping")
    variable = _str(raw.get("variable"), f"{where}.variable")
    kind = _str(raw.get("type"), f"{where}.type")
    if kind not in START_INPUT_TYPES:
        raise _fail(f"{where}.type", f"must be one of {', '.join(START_INPUT_TYPES)}")
    options = raw.get("options") or []
    if kind == "select" and (not options or not all(isinstance(o, str) for o in options)):
        raise _fail(f"{where}.options", "a select needs a list of string options")
    max_length = raw.get("max_length")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise _fail(f"{where}.max_length", "must be a positive integer")
    file_config = None
    if kind in ("file", "file-list"):
        file_config = _parse_file_upload(raw, where)
        assert file_config is not None
        # A start input's count is its `max_length`, not `number_limits`.
        file_config.pop("number_limits", None)
    return StartInput(
        variable=variable,
        type=kind,
        label=_str(raw.get("label"), f"{where}.label", required=False, default=variable),
        required=bool(raw.get("required", True)),
        default=None if file_config is not None else raw.get("default"),
        options=tuple(options),
        max_length=max_length,
        file_config=file_config,
    )


def _parse_form_input(raw: Any, where: str) -> dict[str, Any]:
    """Validate one Human Input field and return it in the shape Dify serializes it."""
    if not isinstance(raw, dict):
        raise _fail(where, "must be a mapping")
    kind = _str(raw.get("type"), f"{where}.type")
    if kind not in FORM_INPUT_TYPES:
        raise _fail(f"{where}.type", f"must be one of {', '.join(FORM_INPUT_TYPES)}")
    name = _str(raw.get("output_variable_name"), f"{where}.output_variable_name")
    if not _IDENTIFIER.match(name) or len(name) > 30:
        raise _fail(f"{where}.output_variable_name", f"{name!r} is not a valid variable name")
    out: dict[str, Any] = {"type": kind, "output_variable_name": name}
    if kind == "paragraph":
        default = raw.get("default")
        if default is not None:
            if not isinstance(default, dict) or default.get("type") not in ("constant", "variable"):
                raise _fail(f"{where}.default", "must be {type: constant|variable, ...}")
            selector = list(default.get("selector") or [])
            if default["type"] == "variable" and len(selector) < 2:
                raise _fail(f"{where}.default.selector", "needs at least two items")
            default = {
                "type": default["type"],
                "selector": selector,
                "value": _str(default.get("value"), f"{where}.default.value", required=False),
            }
        out["default"] = default
    elif kind == "select":
        source = raw.get("option_source")
        if not isinstance(source, dict) or source.get("type") not in ("constant", "variable"):
            raise _fail(f"{where}.option_source", "must be {type: constant|variable, ...}")
        selector = list(source.get("selector") or [])
        value = list(source.get("value") or [])
        if source["type"] == "variable" and len(selector) < 2:
            raise _fail(f"{where}.option_source.selector", "needs at least two items")
        if source["type"] == "constant" and not value:
            raise _fail(f"{where}.option_source.value", "a constant select needs options")
        out["option_source"] = {"type": source["type"], "selector": selector, "value": value}
    else:
        types = list(raw.get("allowed_file_types") or [])
        if any(t not in FILE_TYPES for t in types):
            raise _fail(f"{where}.allowed_file_types", f"must be a subset of {FILE_TYPES}")
        extensions = list(raw.get("allowed_file_extensions") or [])
        if any(not isinstance(e, str) or not e.startswith(".") for e in extensions):
            raise _fail(f"{where}.allowed_file_extensions", "must be dot-prefixed, like .md")
        if "custom" in types and not extensions:
            raise _fail(
                f"{where}.allowed_file_extensions",
                "allowed_file_extensions must be set when allowed_file_types is custom",
            )
        methods = list(raw.get("allowed_file_upload_methods") or ["local_file", "remote_url"])
        if any(m not in TRANSFER_METHODS for m in methods):
            raise _fail(
                f"{where}.allowed_file_upload_methods", f"must be a subset of {TRANSFER_METHODS}"
            )
        out["allowed_file_types"] = types
        out["allowed_file_extensions"] = extensions
        out["allowed_file_upload_methods"] = methods
        if kind == "file-list":
            limit = raw.get("number_limits", 0)
            if not isinstance(limit, int) or limit < 0:
                raise _fail(f"{where}.number_limits", "must be an integer >= 0")
            out["number_limits"] = limit
    return out


def _parse_form(raw: dict[str, Any], where: str) -> FormSpec:
    inputs = raw.get("inputs") or []
    if not isinstance(inputs, list):
        raise _fail(f"{where}.inputs", "must be a list")
    parsed_inputs = tuple(
        _parse_form_input(item, f"{where}.inputs[{i}]") for i, item in enumerate(inputs)
    )
    names = [i["output_variable_name"] for i in parsed_inputs]
    if len(names) != len(set(names)):
        raise _fail(f"{where}.inputs", "duplicated output_variable_name")
    actions_raw = raw.get("actions") or []
    if not isinstance(actions_raw, list) or not actions_raw:
        raise _fail(f"{where}.actions", "a form needs at least one action")
    actions: list[dict[str, str]] = []
    for i, action in enumerate(actions_raw):
        at = f"{where}.actions[{i}]"
        if not isinstance(action, dict):
            raise _fail(at, "must be a mapping")
        action_id = _str(action.get("id"), f"{at}.id")
        if not _ACTION_ID.match(action_id) or len(action_id) > 20:
            raise _fail(f"{at}.id", f"{action_id!r} is not a valid action id (max 20 characters)")
        title = _str(action.get("title"), f"{at}.title")
        if len(title) > 100:
            raise _fail(f"{at}.title", "is longer than 100 characters")
        style = _str(
            action.get("button_style"), f"{at}.button_style", required=False, default="default"
        )
        if style not in BUTTON_STYLES:
            raise _fail(f"{at}.button_style", f"must be one of {', '.join(BUTTON_STYLES)}")
        actions.append({"id": action_id, "title": title, "button_style": style})
    ids = [a["id"] for a in actions]
    if len(ids) != len(set(ids)):
        raise _fail(f"{where}.actions", "duplicated action id")
    branches_raw = raw.get("branches") or {}
    if not isinstance(branches_raw, dict):
        raise _fail(f"{where}.branches", "must map action ids to node lists")
    branches: dict[str, tuple[str, ...]] = {}
    for action_id, nodes in branches_raw.items():
        if action_id not in ids:
            raise _fail(f"{where}.branches", f"{action_id!r} is not one of the form's actions")
        branches[action_id] = _node_list(nodes, f"{where}.branches.{action_id}")
    unit = _str(raw.get("timeout_unit"), f"{where}.timeout_unit", required=False, default="second")
    if unit not in _TIMEOUT_UNITS:
        raise _fail(f"{where}.timeout_unit", f"must be one of {', '.join(_TIMEOUT_UNITS)}")
    timeout = raw.get("timeout")
    seconds = (
        DEFAULT_FORM_TIMEOUT
        if timeout is None
        else _number(timeout, f"{where}.timeout") * _TIMEOUT_UNITS[unit]
    )
    timeout_branch = raw.get("timeout_branch")
    delivery = raw.get("delivery") or ["webapp"]
    if not isinstance(delivery, list) or any(d not in DELIVERY_CHANNELS for d in delivery):
        raise _fail(f"{where}.delivery", f"must be a list of {', '.join(DELIVERY_CHANNELS)}")
    return FormSpec(
        content=_str(raw.get("content"), f"{where}.content"),
        inputs=parsed_inputs,
        actions=tuple(actions),
        branches=branches,
        timeout=seconds,
        timeout_branch=None
        if timeout_branch is None
        else _node_list(timeout_branch, f"{where}.timeout_branch"),
        delivery=tuple(delivery),
        display_in_ui=bool(raw.get("display_in_ui", False)),
    )


def _parse_node(node_id: str, raw: Any, where: str) -> NodeSpec:
    if not isinstance(raw, dict):
        raise _fail(where, "must be a mapping")
    kind = _str(raw.get("type"), f"{where}.type")
    if kind not in NODE_TYPES:
        raise _fail(f"{where}.type", f"must be one of {', '.join(NODE_TYPES)}")
    outputs = raw.get("outputs") or {}
    if not isinstance(outputs, dict):
        raise _fail(f"{where}.outputs", "must be a mapping")
    text = raw.get("text")
    if kind in ("llm", "answer") and not isinstance(text, str):
        raise _fail(f"{where}.text", f"an {kind} node needs text")
    chunk_words = raw.get("chunk_words", 3)
    if not isinstance(chunk_words, int) or chunk_words < 1:
        raise _fail(f"{where}.chunk_words", "must be a positive integer")
    parallel: tuple[tuple[str, ...], ...] = ()
    if kind == "parallel":
        branches = raw.get("branches")
        if not isinstance(branches, list) or len(branches) < 2:
            raise _fail(f"{where}.branches", "a parallel node needs at least two node lists")
        parallel = tuple(_node_list(b, f"{where}.branches[{i}]") for i, b in enumerate(branches))
    fail = raw.get("fail")
    if fail is not None and not isinstance(fail, str):
        raise _fail(f"{where}.fail", "must be an error message")
    return NodeSpec(
        id=node_id,
        type=kind,
        title=_str(raw.get("title"), f"{where}.title", required=False, default=node_id),
        delay=_number(raw.get("delay"), f"{where}.delay"),
        outputs=outputs,
        text=text,
        chunk_words=chunk_words,
        chunk_delay=_number(raw.get("chunk_delay"), f"{where}.chunk_delay"),
        stream=bool(raw.get("stream", True)),
        fail=fail,
        parallel=parallel,
        form=_parse_form(raw, where) if kind == "human-input" else None,
    )


def _check_references(app: AppSpec, where: str) -> None:
    def walk(ids: Iterable[str], at: str) -> None:
        for node_id in ids:
            if node_id not in app.nodes:
                raise _fail(at, f"unknown node {node_id!r}")

    walk(app.flow, f"{where}.flow")
    for node in app.nodes.values():
        at = f"{where}.nodes.{node.id}"
        for i, branch in enumerate(node.parallel):
            walk(branch, f"{at}.branches[{i}]")
        if node.form is not None:
            for action_id, branch in node.form.branches.items():
                walk(branch, f"{at}.branches.{action_id}")
            walk(node.form.timeout_branch or (), f"{at}.timeout_branch")
        if node.type == "human-input" and app.mode == "chat":
            raise _fail(at, "a chat app has no workflow graph")


def _parse_file_upload(raw: Any, where: str) -> dict[str, Any] | None:
    """`app.file_upload`: the files a chat message may carry (Dify's file upload feature); also
    a file or file-list start input's kinds and methods."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _fail(where, "must be a mapping")
    types = list(raw.get("allowed_file_types") or ["image"])
    if any(t not in FILE_TYPES for t in types):
        raise _fail(f"{where}.allowed_file_types", f"must be a subset of {FILE_TYPES}")
    extensions = list(raw.get("allowed_file_extensions") or [])
    if any(not isinstance(e, str) or not e.startswith(".") for e in extensions):
        raise _fail(f"{where}.allowed_file_extensions", "must be dot-prefixed, like .md")
    methods = list(raw.get("allowed_file_upload_methods") or ["local_file", "remote_url"])
    if any(m not in TRANSFER_METHODS for m in methods):
        raise _fail(
            f"{where}.allowed_file_upload_methods", f"must be a subset of {TRANSFER_METHODS}"
        )
    limit = raw.get("number_limits", 3)
    if not isinstance(limit, int) or limit < 0:
        raise _fail(f"{where}.number_limits", "must be an integer >= 0")
    return {
        "allowed_file_types": types,
        "allowed_file_extensions": extensions,
        "allowed_file_upload_methods": methods,
        "number_limits": limit,
    }


def parse_app(data: Any, source: str = "<scenario>") -> AppSpec:
    if not isinstance(data, dict):
        raise _fail(source, "a scenario file holds one mapping")
    meta = data.get("app")
    if not isinstance(meta, dict):
        raise _fail(source, "needs an `app` mapping")
    name = _str(meta.get("name"), f"{source}: app.name")
    mode_name = _str(meta.get("mode"), f"{source}: app.mode", required=False, default="workflow")
    if mode_name not in MODES:
        raise _fail(f"{source}: app.mode", "must be workflow, chatflow or chat")
    inputs_raw = data.get("inputs") or []
    if not isinstance(inputs_raw, list):
        raise _fail(f"{source}: inputs", "must be a list")
    inputs = tuple(
        _parse_start_input(item, f"{source}: inputs[{i}]") for i, item in enumerate(inputs_raw)
    )
    nodes_raw = data.get("nodes") or {}
    if not isinstance(nodes_raw, dict):
        raise _fail(f"{source}: nodes", "must map node ids to nodes")
    nodes = {}
    for node_id, raw in nodes_raw.items():
        if node_id in ("start", "sys"):
            raise _fail(f"{source}: nodes.{node_id}", "this id is reserved")
        nodes[node_id] = _parse_node(node_id, raw, f"{source}: nodes.{node_id}")
    tags = meta.get("tags") or []
    app = AppSpec(
        name=name,
        api_key=_str(meta.get("api_key"), f"{source}: app.api_key"),
        mode=MODES[mode_name],
        description=_str(meta.get("description"), f"{source}: app.description", required=False),
        tags=tuple(str(t) for t in tags),
        author_name=_str(
            meta.get("author_name"), f"{source}: app.author_name", required=False, default="Dify"
        ),
        inputs=inputs,
        flow=_node_list(data.get("flow") or [], f"{source}: flow"),
        nodes=nodes,
        opening_statement=_str(
            meta.get("opening_statement"), f"{source}: app.opening_statement", required=False
        ),
        source=source,
        file_upload=_parse_file_upload(meta.get("file_upload"), f"{source}: app.file_upload"),
    )
    _check_references(app, source)
    return app


def load_file(path: Path) -> AppSpec:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path.name}: cannot be parsed: {exc}") from exc
    return parse_app(data, path.name)


def load_dir(directory: Path | str | None = None) -> dict[str, AppSpec]:
    """Every app in a directory of scenario files, by name; names and API keys must be unique."""
    root = Path(directory) if directory is not None else DEFAULT_SCENARIOS_DIR
    if not root.is_dir():
        raise ScenarioError(f"{root}: not a directory")
    apps: dict[str, AppSpec] = {}
    keys: dict[str, str] = {}
    paths = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    for path in paths:
        app = load_file(path)
        if app.name in apps:
            raise ScenarioError(
                f"{path.name}: app name {app.name!r} is already used by {apps[app.name].source}"
            )
        if app.api_key in keys:
            raise ScenarioError(
                f"{path.name}: API key of {app.name!r} is already used by {keys[app.api_key]!r}"
            )
        apps[app.name] = app
        keys[app.api_key] = app.name
    if not apps:
        raise ScenarioError(f"{root}: no scenario files")
    return apps
