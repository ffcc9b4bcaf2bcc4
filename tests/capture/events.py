"""Dify stream events as dicts, shaped as Dify sends them (CONTRACT section 2)."""

from __future__ import annotations

import time
from typing import Any

from inbox.dify.errors import FormAlreadySubmitted, FormExpired

RUN = "R-capture-1"
TASK = "T-capture-1"


def event(name: str, data: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"event": name, "task_id": TASK, "workflow_run_id": RUN}
    if data is not None:
        payload["data"] = data
    payload.update(extra)
    return payload


def started(reason: str = "initial") -> dict[str, Any]:
    """`reason` is "initial" at the start of a run (and of a snapshot replaying it) and
    "resumption" when a paused run goes on."""
    return event(
        "workflow_started",
        {
            "id": RUN,
            "workflow_id": "W1",
            "inputs": {},
            "created_at": int(time.time()),
            "reason": reason,
        },
    )


CHAT = {"conversation_id": "C1", "message_id": "M1", "created_at": 1}


def message(answer: str, name: str = "message") -> dict[str, Any]:
    """A chatflow `message` chunk (or `message_replace`): the answer is at top level."""
    return event(name, answer=answer, **CHAT)


def node(
    name: str, node_id: str, title: str, *, execution: str, status: str = ""
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": execution,
        "node_id": node_id,
        "node_type": "code",
        "title": title,
        "index": 1,
        "created_at": int(time.time()),
    }
    if status:
        data["status"] = status
    return event(name, data)


def form_data(
    form_id: str = "F1",
    token: str | None = "tok-secret-1",
    *,
    node_id: str = "approve_node",
    title: str = "Manager approval",
    content: str = "Approve the refund?\n\n{{#$output.note#}}",
    channels: list[str] | None = None,
    expires: int | None = None,
) -> dict[str, Any]:
    return {
        "form_id": form_id,
        "form_token": token,
        "node_id": node_id,
        "node_title": title,
        "form_content": content,
        "inputs": [{"type": "paragraph", "output_variable_name": "note", "default": None}],
        "actions": [
            {"id": "approve", "title": "Approve", "button_style": "primary"},
            {"id": "reject", "title": "Reject", "button_style": "default"},
        ],
        "display_in_ui": False,
        "resolved_default_values": {"note": ""},
        "expiration_time": expires or int(time.time()) + 3600,
        "approval_channels": channels if channels is not None else ["webapp"],
    }


def required(**kwargs: Any) -> dict[str, Any]:
    return event("human_input_required", form_data(**kwargs))


def paused(*forms: dict[str, Any], type_key: str = "TYPE") -> dict[str, Any]:
    return event(
        "workflow_paused",
        {
            "workflow_run_id": RUN,
            "paused_nodes": [f["node_id"] for f in forms],
            "outputs": {},
            "reasons": [{type_key: "human_input_required", **f} for f in forms],
            "status": "paused",
            "created_at": int(time.time()),
            "elapsed_time": 1.0,
            "total_tokens": 0,
            "total_steps": 3,
        },
    )


def filled(
    node_id: str = "approve_node", action: str = "approve", note: str = "ok by me"
) -> dict[str, Any]:
    return event(
        "human_input_form_filled",
        {
            "node_id": node_id,
            "node_title": "Manager approval",
            "rendered_content": f"Approve the refund?\n\n{note}",
            "action_id": action,
            "action_text": action.title(),
            "submitted_data": {"note": note},
        },
    )


def timeout(node_id: str = "approve_node", expires: int = 1) -> dict[str, Any]:
    """`expires`: the expiration_time of the form that timed out."""
    return event(
        "human_input_form_timeout",
        {"node_id": node_id, "node_title": "Manager approval", "expiration_time": expires},
    )


def finished(status: str = "succeeded", **data: Any) -> dict[str, Any]:
    body = {
        "id": RUN,
        "workflow_id": "W1",
        "status": status,
        "outputs": {"decision": "approve"},
        "error": None,
        "elapsed_time": 2.0,
        "total_tokens": 0,
        "total_steps": 5,
        "created_at": int(time.time()) - 2,
        "finished_at": int(time.time()),
        "created_by": {"id": "EU1", "user": "inbox-alice"},
        "exceptions_count": 0,
        "files": [],
    }
    body.update(data)
    return event("workflow_finished", body)


# GET form's two refusals of a form closed in Dify (412), each with the status the form takes and
# the label its timeline entry shows: `pytest.mark.parametrize(("error", "status", "label"), ...)`.
CLOSED_IN_DIFY = [
    (
        FormAlreadySubmitted(412, "human_input_form_submitted", "already submitted"),
        "answered_elsewhere",
        "answered",
    ),
    (FormExpired(412, "human_input_form_expired", "expired"), "expired", "expired"),
]
