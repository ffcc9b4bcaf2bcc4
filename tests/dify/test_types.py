from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from inbox.dify.sse import iter_events
from inbox.dify.types import (
    Action,
    ErrorEvent,
    FileInput,
    FileListInput,
    FormDefinition,
    FormInput,
    HumanInputFormFilled,
    HumanInputFormTimeout,
    HumanInputRequired,
    MessageEnd,
    MessageEvent,
    NodeEvent,
    ParagraphInput,
    RunDetail,
    SelectInput,
    StreamEvent,
    TextChunk,
    UploadedFile,
    WorkflowFinished,
    WorkflowPaused,
    WorkflowStarted,
    parse_event,
)

CAPTURED = (Path(__file__).parent / "data" / "captured_stream.txt").read_bytes()

HUMAN_INPUT_REQUIRED: dict[str, Any] = {
    "event": "human_input_required",
    "task_id": "T1",
    "workflow_run_id": "R1",
    "data": {
        "form_id": "F1",
        "form_token": "tok-123",
        "node_id": "approve_node",
        "node_title": "Manager approval",
        "form_content": "Approve the refund?",
        "inputs": [{"type": "paragraph", "output_variable_name": "note", "default": None}],
        "actions": [{"id": "approve", "title": "Approve", "button_style": "primary"}],
        "display_in_ui": False,
        "resolved_default_values": {"note": ""},
        "expiration_time": 1767225600,
    },
}

GET_FORM: dict[str, Any] = {
    "form_content": "Refund {{#$output.note#}} {{#$output.reason#}} {{#$output.proof#}}",
    "inputs": [
        {
            "type": "paragraph",
            "output_variable_name": "note",
            "default": {"type": "constant", "selector": [], "value": "Looks fine"},
        },
        {
            "type": "select",
            "output_variable_name": "reason",
            "option_source": {
                "type": "variable",
                "selector": ["llm", "reasons"],
                "value": ["defect", "late"],
            },
        },
        {
            "type": "file",
            "output_variable_name": "proof",
            "allowed_file_types": ["image", "custom"],
            "allowed_file_extensions": [".heic"],
            "allowed_file_upload_methods": ["local_file"],
        },
        {
            "type": "file-list",
            "output_variable_name": "attachments",
            "allowed_file_types": ["document"],
            "allowed_file_extensions": [],
            "allowed_file_upload_methods": ["local_file", "remote_url"],
            "number_limits": 3,
        },
    ],
    "resolved_default_values": {"note": "Looks fine"},
    "user_actions": [
        {"id": "approve", "title": "Approve", "button_style": "primary"},
        {"id": "reject", "title": "Reject", "button_style": "ghost"},
    ],
    "expiration_time": 1767225600,
}


def test_human_input_required_exposes_the_form() -> None:
    event = parse_event(HUMAN_INPUT_REQUIRED)
    assert isinstance(event, HumanInputRequired)
    assert (event.event, event.task_id, event.workflow_run_id) == (
        "human_input_required",
        "T1",
        "R1",
    )
    assert event.form_id == "F1"
    assert event.form_token == "tok-123"
    assert (event.node_id, event.node_title) == ("approve_node", "Manager approval")
    assert event.form_content == "Approve the refund?"
    assert isinstance(event.inputs[0], ParagraphInput)
    assert event.inputs[0].default is None
    assert event.actions == [Action(id="approve", title="Approve", button_style="primary")]
    assert event.display_in_ui is False
    assert event.resolved_default_values == {"note": ""}
    assert event.expiration_time == 1767225600
    assert event.approval_channels == []


def test_no_repr_shows_a_form_token() -> None:
    event = parse_event(HUMAN_INPUT_REQUIRED)
    paused = parse_event(
        {
            "event": "workflow_paused",
            "data": {"reasons": [{**HUMAN_INPUT_REQUIRED["data"], "TYPE": "human_input_required"}]},
        }
    )
    for text in (repr(event), str(event), repr(paused), repr(event.definition)):
        assert "tok-123" not in text
    assert "tok-123" not in json.dumps(event.definition.to_json())


def test_a_null_token_and_approval_channels_are_read() -> None:
    raw = copy.deepcopy(HUMAN_INPUT_REQUIRED)
    raw["data"]["form_token"] = None
    raw["data"]["approval_channels"] = ["email", "console"]
    event = parse_event(raw)
    assert isinstance(event, HumanInputRequired)
    assert event.form_token is None
    assert event.approval_channels == ["email", "console"]


@pytest.mark.parametrize("key", ["TYPE", "type"])
def test_pause_reasons_accept_both_spellings_of_their_type(key: str) -> None:
    reason = {k: v for k, v in HUMAN_INPUT_REQUIRED["data"].items() if k != "display_in_ui"}
    reason[key] = "human_input_required"
    event = parse_event(
        {
            "event": "workflow_paused",
            "task_id": "T1",
            "workflow_run_id": "R1",
            "data": {
                "workflow_run_id": "R1",
                "paused_nodes": ["approve_node"],
                "outputs": {},
                "reasons": [reason],
                "status": "paused",
                "created_at": 1,
                "elapsed_time": 0.5,
                "total_tokens": 10,
                "total_steps": 2,
            },
        }
    )
    assert isinstance(event, WorkflowPaused)
    assert event.paused_nodes == ["approve_node"]
    assert event.total_steps == 2
    [parsed] = event.reasons
    assert parsed.type == "human_input_required"
    assert parsed.is_human_input
    assert parsed.form_token == "tok-123"
    assert parsed.form_id == "F1"
    assert parsed.definition.user_actions[0].id == "approve"


def test_workflow_paused_takes_its_run_id_from_data_when_missing_at_top() -> None:
    event = parse_event({"event": "workflow_paused", "data": {"workflow_run_id": "R9"}})
    assert event.workflow_run_id == "R9"


def test_raw_and_stringified_defaults_display_the_same() -> None:
    raw_values = {"a": None, "b": {"k": "ü"}, "c": [1, 2], "d": 3, "e": "text", "f": True}
    stringified = {"a": "", "b": '{"k": "ü"}', "c": "[1, 2]", "d": "3", "e": "text", "f": "True"}
    inputs = [{"type": "paragraph", "output_variable_name": name} for name in raw_values]
    from_event = FormDefinition.from_api({"inputs": inputs, "resolved_default_values": raw_values})
    from_get = FormDefinition.from_api({"inputs": inputs, "resolved_default_values": stringified})
    assert from_event.display_defaults() == stringified
    assert from_get.display_defaults() == stringified


def test_default_for_falls_back_to_a_constant_then_to_empty() -> None:
    definition = FormDefinition.from_api(
        {
            "inputs": [
                {
                    "type": "paragraph",
                    "output_variable_name": "constant",
                    "default": {"type": "constant", "selector": [], "value": "preset"},
                },
                {
                    "type": "paragraph",
                    "output_variable_name": "variable",
                    "default": {"type": "variable", "selector": ["n", "v"], "value": "ignored"},
                },
                {"type": "paragraph", "output_variable_name": "none", "default": None},
                {
                    "type": "paragraph",
                    "output_variable_name": "resolved",
                    "default": {"type": "constant", "selector": [], "value": "stale"},
                },
            ],
            "resolved_default_values": {"resolved": "fresh"},
        }
    )
    assert definition.default_for("constant") == "preset"
    # A selector is never resolved on our side: without the server's value, nothing shows.
    assert definition.default_for("variable") == ""
    assert definition.default_for("none") == ""
    assert definition.default_for("resolved") == "fresh"
    assert definition.default_for("missing") == ""


def test_get_form_definitions_of_all_four_input_kinds() -> None:
    definition = FormDefinition.from_api(GET_FORM)
    note, reason, proof, attachments = definition.inputs
    assert isinstance(note, ParagraphInput)
    assert note.default is not None and note.default.value == "Looks fine"
    assert isinstance(reason, SelectInput)
    assert reason.option_source.type == "variable"
    assert reason.option_source.selector == ["llm", "reasons"]
    assert reason.options == ["defect", "late"]
    assert type(proof) is FileInput
    assert proof.allowed_file_types == ["image", "custom"]
    assert proof.allowed_file_extensions == [".heic"]
    assert proof.allowed_file_upload_methods == ["local_file"]
    assert proof.max_files == 1
    assert isinstance(attachments, FileListInput)
    assert attachments.number_limits == 3
    assert attachments.allowed_file_upload_methods == ["local_file", "remote_url"]
    assert [a.id for a in definition.actions] == ["approve", "reject"]
    assert definition.action("reject") == Action(id="reject", title="Reject", button_style="ghost")
    assert definition.expiration_time == 1767225600
    assert definition.input("attachments") is attachments


def test_to_json_round_trips() -> None:
    definition = FormDefinition.from_api({**GET_FORM, "future_field": {"x": 1}})
    stored = json.loads(json.dumps(definition.to_json()))
    again = FormDefinition.from_api(stored)
    assert again == definition
    assert again.to_json() == stored
    assert stored["future_field"] == {"x": 1}
    assert stored["inputs"] == GET_FORM["inputs"]


def test_a_definition_from_the_event_stores_like_one_from_get() -> None:
    event = parse_event(HUMAN_INPUT_REQUIRED)
    assert isinstance(event, HumanInputRequired)
    stored = event.definition.to_json()
    assert set(stored) == {
        "form_content",
        "inputs",
        "user_actions",
        "resolved_default_values",
        "expiration_time",
    }
    assert FormDefinition.from_api(stored) == event.definition
    assert FormDefinition.from_event(HUMAN_INPUT_REQUIRED) == event.definition


def test_unknown_inputs_actions_and_fields_are_kept() -> None:
    definition = FormDefinition.from_api(
        {
            "inputs": [{"type": "date", "output_variable_name": "when", "format": "iso"}],
            "user_actions": [{"id": "ok", "title": "OK"}],
            "expiration_time": None,
        }
    )
    [when] = definition.inputs
    assert type(when) is FormInput
    assert when.raw["format"] == "iso"
    assert definition.actions[0].button_style == "default"
    assert definition.expiration_time is None
    assert definition.to_json()["inputs"] == [
        {"type": "date", "output_variable_name": "when", "format": "iso"}
    ]


def test_an_unknown_event_is_kept_whole() -> None:
    raw = {"event": "agent_log", "task_id": "T", "data": {"x": 1}, "novel": True}
    event = parse_event(raw)
    assert type(event) is StreamEvent
    assert event.event == "agent_log"
    assert event.raw == raw
    assert event.data == {"x": 1}


def test_unknown_fields_of_known_events_are_kept() -> None:
    raw = {"event": "workflow_finished", "data": {"id": "R", "status": "succeeded", "new": 1}}
    event = parse_event(raw)
    assert isinstance(event, WorkflowFinished)
    assert event.data["new"] == 1
    assert event.workflow_run_id == "R"


def test_a_malformed_event_does_not_raise() -> None:
    event = parse_event({"event": "human_input_required", "data": "nonsense"})
    assert isinstance(event, HumanInputRequired)
    assert event.form_token is None
    assert event.inputs == []
    assert isinstance(parse_event("not even a dict"), StreamEvent)


def test_resume_side_events() -> None:
    filled = parse_event(
        {
            "event": "human_input_form_filled",
            "task_id": "T2",
            "workflow_run_id": "R1",
            "data": {
                "node_id": "approve_node",
                "node_title": "Approval",
                "rendered_content": "Approved: ok",
                "action_id": "approve",
                "action_text": "Approve",
                "submitted_data": {"note": "ok"},
            },
        }
    )
    assert isinstance(filled, HumanInputFormFilled)
    assert (filled.action_id, filled.action_text) == ("approve", "Approve")
    assert filled.rendered_content == "Approved: ok"
    assert filled.submitted_data == {"note": "ok"}
    without = parse_event({"event": "human_input_form_filled", "data": {"action_id": "x"}})
    assert isinstance(without, HumanInputFormFilled)
    assert without.submitted_data is None

    timeout = parse_event(
        {
            "event": "human_input_form_timeout",
            "workflow_run_id": "R1",
            "data": {"node_id": "n", "node_title": "N", "expiration_time": 5},
        }
    )
    assert isinstance(timeout, HumanInputFormTimeout)
    assert timeout.expiration_time == 5

    finished = parse_event(
        {
            "event": "workflow_finished",
            "task_id": "T2",
            "workflow_run_id": "R1",
            "data": {
                "id": "R1",
                "workflow_id": "W",
                "status": "failed",
                "outputs": None,
                "error": "boom",
                "elapsed_time": 1.5,
                "total_tokens": 3,
                "total_steps": 4,
                "created_at": 1,
                "finished_at": 2,
                "created_by": {"id": "u", "user": "alice"},
                "exceptions_count": 0,
                "files": [],
            },
        }
    )
    assert isinstance(finished, WorkflowFinished)
    assert (finished.status, finished.error, finished.finished_at) == ("failed", "boom", 2)
    assert finished.outputs == {}
    assert finished.created_by == {"id": "u", "user": "alice"}


def test_started_node_and_text_events() -> None:
    events = [parse_event(json.loads(e.data)) for e in iter_events([CAPTURED]) if e.data]
    assert isinstance(events[0], WorkflowStarted)
    assert events[0].inputs["customer"] == "Zoë Müller"
    nodes = [e for e in events if isinstance(e, NodeEvent)]
    assert [(n.event, n.node_id, n.status) for n in nodes] == [
        ("node_started", "start", None),
        ("node_finished", "start", "succeeded"),
        ("node_started", "llm", None),
        ("node_finished", "llm", "succeeded"),
    ]
    chunks = [e for e in events if isinstance(e, TextChunk)]
    assert chunks[0].text == "Der Kunde "
    assert chunks[0].from_variable_selector == ["llm", "text"]
    assert isinstance(events[-1], WorkflowPaused)
    assert events[-1].reasons[0].definition == events[-2].definition  # type: ignore[attr-defined]


def test_chatflow_events_carry_conversation_and_message_ids() -> None:
    top = {"task_id": "T", "conversation_id": "C", "message_id": "M", "created_at": 7}
    message = parse_event({"event": "message", **top, "answer": "Hel", "workflow_run_id": "R"})
    assert isinstance(message, MessageEvent)
    assert (message.conversation_id, message.message_id, message.answer) == ("C", "M", "Hel")
    assert message.created_at == 7
    replace = parse_event({"event": "message_replace", **top, "answer": "Hello"})
    assert isinstance(replace, MessageEvent)
    assert replace.answer == "Hello"
    end = parse_event({"event": "message_end", **top, "id": "M", "metadata": {"usage": {}}})
    assert isinstance(end, MessageEnd)
    assert end.metadata == {"usage": {}}
    assert end.conversation_id == "C"


def test_error_event() -> None:
    event = parse_event(
        {"event": "error", "status": 400, "code": "invalid_param", "message": "bad", "data": None}
    )
    assert isinstance(event, ErrorEvent)
    assert (event.status, event.code, event.message) == (400, "invalid_param", "bad")
    assert event.task_id is None


def test_uploaded_file_and_its_mapping() -> None:
    uploaded = UploadedFile.from_api(
        {
            "id": "a1b2",
            "name": "photo.png",
            "size": 204800,
            "extension": "png",
            "mime_type": "image/png",
            "created_by": "u",
            "created_at": 1705407629,
            "preview_url": None,
            "source_url": "https://files.example/signed?sign=secret",
            "original_url": None,
            "user_id": None,
            "tenant_id": "t",
            "conversation_id": None,
            "file_key": None,
            "reference": None,
        }
    )
    assert (uploaded.id, uploaded.size, uploaded.extension) == ("a1b2", 204800, "png")
    assert "sign=secret" not in repr(uploaded)
    assert uploaded.mapping("image") == {
        "transfer_method": "local_file",
        "upload_file_id": "a1b2",
        "type": "image",
    }


def test_run_detail_parses_its_inputs_string() -> None:
    detail = RunDetail.from_api(
        {
            "id": "R",
            "workflow_id": "W",
            "status": "paused",
            "inputs": '{"query": "x"}',
            "outputs": None,
            "error": None,
            "total_steps": 3,
            "total_tokens": 150,
            "created_at": 1,
            "finished_at": None,
            "elapsed_time": 1.23,
        }
    )
    assert detail.inputs == {"query": "x"}
    assert detail.outputs == {}
    assert detail.status == "paused"
    assert not detail.is_finished
    assert RunDetail.from_api({"id": "R", "status": "partial-succeeded"}).is_finished


def test_storable_takes_out_nul_and_mends_half_a_surrogate_pair() -> None:
    from inbox.dify.types import storable

    raw = json.loads(
        '{"a\\u0000": ["x\\ud83d y", {"k": "\\ude00"}], "ok": "\\ud83d\\ude00", "n": 1}'
    )
    assert storable(raw) == {"a": ["x\ufffd y", {"k": "\ufffd"}], "ok": "\U0001f600", "n": 1}
    clean = {"text": "nothing to mend"}
    assert storable(clean) == clean
