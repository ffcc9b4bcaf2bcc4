"""Dify's variable templates: ``{{#node_id.variable#}}`` read from a run's variable pool.

``{{#$output.name#}}`` placeholders are not variables: they mark where a Human Input field sits in
the form's content and are only replaced, by the submitted values, after the form is filled.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

VariablePool = dict[str, dict[str, Any]]

_VARIABLE = re.compile(r"\{\{#([A-Za-z0-9_]+)\.([A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)#\}\}")
OUTPUT_PLACEHOLDER = re.compile(r"\{\{#\$output\.([a-zA-Z_][a-zA-Z0-9_]{0,29})#\}\}")


def lookup(pool: Mapping[str, Mapping[str, Any]], selector: Sequence[str]) -> Any:
    """The value at a selector (``[node_id, variable, key...]``), or None when any part is missing."""
    if len(selector) < 2:
        return None
    value: Any = pool.get(selector[0], {}).get(selector[1])
    for key in selector[2:]:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def render(template: str, pool: Mapping[str, Mapping[str, Any]]) -> str:
    """Substitute variables, leaving ``$output`` placeholders for the form to fill."""

    def replace(match: re.Match[str]) -> str:
        return as_text(lookup(pool, [match.group(1), *match.group(2).split(".")]))

    return _VARIABLE.sub(replace, template)


def resolve(value: Any, pool: Mapping[str, Mapping[str, Any]]) -> Any:
    """Render a node's configured output; a value that is exactly one variable keeps its type."""
    if isinstance(value, str):
        whole = _VARIABLE.fullmatch(value.strip())
        if whole:
            return lookup(pool, [whole.group(1), *whole.group(2).split(".")])
        return render(value, pool)
    if isinstance(value, dict):
        return {k: resolve(v, pool) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, pool) for v in value]
    return value


def render_outputs(
    content: str, values: Mapping[str, Any], inputs: Sequence[Mapping[str, Any]]
) -> str:
    """The content after submission: Dify writes files as ``[file]`` and lists as ``[N files]``."""
    kinds = {i["output_variable_name"]: i["type"] for i in inputs}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        value = values.get(name)
        if value is None:
            return ""
        kind = kinds.get(name)
        if kind == "file":
            return "[file]"
        if kind == "file-list":
            return f"[{len(value) if isinstance(value, list) else 0} files]"
        if kind in ("paragraph", "select"):
            return str(value)
        return as_text(value)

    return OUTPUT_PLACEHOLDER.sub(replace, content)
