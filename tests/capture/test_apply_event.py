"""Run.apply_event with Dify's events as dicts: idempotent, order-tolerant, compact, no token
stored in clear. The GET form step is given its answer here; the simulator tests do it for real."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from inbox.dify.errors import FormExpired
from inbox.dify.types import FormDefinition
from inbox.models import AuditEntry, Decision, Form, Run, RunEvent
from tests.capture import events as ev

pytestmark = pytest.mark.django_db


def get_definition(**overrides: Any) -> FormDefinition:
    """What GET form answers: here a select whose options the server resolved."""
    data = {
        "form_content": "Approve the refund?\n\n{{#$output.note#}}",
        "inputs": [
            {"type": "paragraph", "output_variable_name": "note", "default": None},
            {
                "type": "select",
                "output_variable_name": "level",
                "option_source": {"type": "variable", "selector": ["n", "v"], "value": ["a", "b"]},
            },
        ],
        "user_actions": [{"id": "approve", "title": "Approve", "button_style": "primary"}],
        "resolved_default_values": {"note": ""},
        "expiration_time": 2_000_000_000,
    }
    data.update(overrides)
    return FormDefinition.from_api(data)


def pause_once(run: Run, token: str = "tok-secret-1") -> Any:
    return run.apply_events(
        [
            ev.started(),
            ev.node("node_started", "fetch", "Fetch order", execution="E1"),
            ev.node("node_finished", "fetch", "Fetch order", execution="E1", status="succeeded"),
            ev.required(token=token),
            ev.paused(ev.form_data(token=token)),
        ],
        definitions={"F1": get_definition()},
    )


def test_a_pause_records_the_form_with_its_fetched_definition_and_the_run_as_paused(
    run: Run,
) -> None:
    applied = pause_once(run)
    assert applied.paused and applied.awaiting_human and applied.changed
    assert run.status == "paused" and run.task_id == ev.TASK
    (form,) = run.forms.all()
    assert form.form_id == "F1" and form.status == "pending"
    assert form.form_token == "tok-secret-1"
    # The definition is GET form's (resolved options), not the event's copy.
    assert form.definition["inputs"][1]["option_source"]["value"] == ["a", "b"]
    assert form.definition_fetched_at is not None
    assert form.approval_channels == ["webapp"]
    assert form.expiration_time is not None and form.expiration_time.year == 2033
    assert [item["key"] for item in run.timeline] == ["started", "node:E1", "form:F1"]
    node = run.timeline[1]
    assert (node["title"], node["status"]) == ("Fetch order", "succeeded")
    assert run.timeline[2]["form"] == str(form.public_id)
    assert AuditEntry.objects.filter(verb="form_captured", object_id=str(form.pk)).count() == 1


def test_a_replayed_snapshot_creates_nothing_twice_and_keeps_the_fresh_token(run: Run) -> None:
    pause_once(run)
    timeline = run.timeline
    applied = pause_once(run, token="tok-fresh-2")
    assert not applied.changed and not applied.forms_created
    assert run.forms.count() == 1 and run.forms.get().form_token == "tok-fresh-2"
    assert run.timeline == timeline
    assert AuditEntry.objects.filter(verb="form_captured").count() == 1


def test_a_form_closed_for_good_lets_go_of_its_token_and_a_replay_does_not_bring_it_back(
    run: Run,
) -> None:
    pause_once(run)
    assert run.forms.get().form_token == "tok-secret-1"
    # Answered in Dify: nothing is sent for it again, so its bearer token is not kept.
    run.apply_event(ev.filled())
    form = run.forms.get()
    assert (form.status, form.form_token) == ("answered_elsewhere", "")
    # A reopened stream's snapshot replays the pause with a token: the closed form stays
    # without one, and nothing else changes.
    applied = pause_once(run, token="tok-fresh-2")
    form.refresh_from_db()
    assert (form.status, form.form_token) == ("answered_elsewhere", "")
    assert not applied.forms_created and not applied.needs_definition


def test_the_token_is_stored_encrypted_and_nowhere_else(run: Run) -> None:
    pause_once(run)
    run.apply_events([ev.filled(), ev.finished()])
    with connection.cursor() as cursor:
        for table in ("inbox_form", "inbox_run", "inbox_runevent", "inbox_auditentry"):
            cursor.execute(f"SELECT * FROM {table}")
            assert "tok-secret-1" not in repr(cursor.fetchall()), table


def test_a_form_without_token_is_not_answerable_and_the_run_is_still_followed_to_its_end(
    run: Run,
) -> None:
    data = ev.form_data(token=None, channels=["email"])
    applied = run.apply_events(
        [ev.started(), ev.required(token=None, channels=["email"]), ev.paused(data)]
    )
    form = run.forms.get()
    assert form.status == "not_answerable" and form.form_token == ""
    assert form.approval_channels == ["email"]
    assert form.content.startswith("Approve the refund?")
    # Someone waits at it (by email), so the follower closes the stream here...
    assert applied.awaiting_human and not applied.needs_definition
    # ... and Dify's events later say who answered and how the run ended.
    run.apply_events([ev.filled(action="reject"), ev.finished()])
    form.refresh_from_db()
    assert form.status == "answered_elsewhere"
    assert (form.filled_action_id, form.filled_action_text) == ("reject", "Reject")
    assert run.status == "succeeded"


def test_a_form_filled_in_dify_is_answered_elsewhere_with_what_was_filled(run: Run) -> None:
    pause_once(run)
    applied = run.apply_event(ev.filled())
    form = run.forms.get()
    assert form.status == "answered_elsewhere"
    assert form.rendered_content == "Approve the refund?\n\nok by me"
    assert form.filled_data == {"note": "ok by me"}
    assert run.status == "running" and applied.changed
    run.apply_event(ev.filled())  # replayed: one stored event, one audit entry
    assert RunEvent.objects.filter(run=run, event="human_input_form_filled").count() == 1
    assert AuditEntry.objects.filter(verb="form_answered_elsewhere").count() == 1
    assert "form_token" not in str(RunEvent.objects.get(event="human_input_form_filled").payload)
    # The timeline: the pause where it happened, one answer after it (not two).
    statuses = [(item["event"], item.get("status")) for item in run.timeline if "form" in item]
    assert statuses == [("human_input_required", "paused"), ("human_input_form_filled", "answered")]


def test_a_fill_while_our_decision_is_in_flight_leaves_the_status_to_delivery(
    run: Run, reviewer: User
) -> None:
    pause_once(run)
    form = run.forms.get()
    form.decide(action_id="approve", inputs={"note": "ok by me"}, reviewer=reviewer)
    run.apply_event(ev.filled())
    form.refresh_from_db()
    assert form.status == "submitting"
    assert form.filled_action_id == "approve" and form.rendered_content


def test_a_fill_after_our_delivered_decision_keeps_it_submitted(run: Run, reviewer: User) -> None:
    pause_once(run)
    form = run.forms.get()
    decision = form.decide(action_id="approve", inputs={"note": "x"}, reviewer=reviewer)
    Decision.objects.filter(pk=decision.pk).update(status="delivered")
    Form.objects.filter(pk=form.pk).update(status="submitted")
    run.apply_event(ev.filled())
    form.refresh_from_db()
    assert form.status == "submitted" and form.rendered_content


def test_a_timeout_expires_the_form_and_the_run_goes_on(run: Run) -> None:
    pause_once(run)
    run.apply_event(ev.timeout())
    assert run.forms.get().status == "expired" and run.status == "running"
    assert run.timeline[-1]["status"] == "expired"


def test_the_end_closes_open_forms_and_a_late_replay_does_not_undo_it(run: Run) -> None:
    pause_once(run)
    # GET form of the open form, asked before the end is applied: Dify expired it at the end.
    expired = FormExpired(412, "human_input_form_expired", "expired")
    applied = run.apply_events(
        [ev.finished("failed", error="boom", outputs={})], definitions={"F1": expired}
    )
    assert applied.finished
    assert run.status == "failed" and run.error == "boom" and run.finished_at is not None
    assert run.forms.get().status == "expired"
    # A snapshot stream opened before the end and delivered after it.
    pause_once(run)
    assert run.status == "failed" and run.forms.get().status == "expired"
    run.apply_event(ev.finished("failed", error="boom"))
    assert RunEvent.objects.filter(run=run, event="workflow_finished").count() == 1


def test_the_end_leaves_a_form_pending_when_get_form_could_not_say_what_became_of_it(
    run: Run,
) -> None:
    pause_once(run)
    Form.objects.filter(run=run).update(checked_at=timezone.now())
    # The app's Dify (127.0.0.1:9) does not answer the GET form asked before the end is applied.
    run.apply_event(ev.finished())
    form = run.forms.get()
    assert run.status == "succeeded"
    # Answered in Dify or expired: the reconcile asks again, first in line.
    assert form.status == "pending" and form.checked_at is None
    assert not AuditEntry.objects.filter(verb="form_expired").exists()


def test_outputs_and_the_final_status_come_from_workflow_finished(run: Run) -> None:
    pause_once(run)
    run.apply_events([ev.filled(), ev.finished()])
    assert run.status == "succeeded" and run.outputs == {"decision": "approve"}
    assert run.timeline[-1]["key"] == "finished"


def test_a_pause_with_no_form_waiting_is_the_gap_before_a_resume(run: Run) -> None:
    pause_once(run)
    run.apply_event(ev.filled())
    # Dify's snapshot between an accepted submit and the resume: paused, nothing pending.
    applied = run.apply_events([ev.started(), ev.paused()])
    assert applied.paused and not applied.awaiting_human


def test_a_form_and_its_pause_in_one_batch_write_the_form_once(run: Run) -> None:
    """The form is inserted once, routed and with GET form's definition; the pause that names
    it writes nothing more; the batch's audit entries go in one INSERT; no savepoint (the
    follower commits this batch while a reviewer waits)."""
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        pause_once(run)
    sql = [q["sql"] for q in queries.captured_queries]
    form_writes = [
        q for q in sql if q.startswith(('INSERT INTO "inbox_form"', 'UPDATE "inbox_form"'))
    ]
    assert len(form_writes) == 1 and form_writes[0].startswith("INSERT"), form_writes
    form = run.forms.get()
    assert form.routed_at is not None and form.definition_fetched_at is not None
    assert form.definition["inputs"][1]["option_source"]["value"] == ["a", "b"]
    assert len([q for q in sql if q.startswith('INSERT INTO "inbox_auditentry"')]) == 1
    verbs = set(
        AuditEntry.objects.filter(object_type="form", object_id=str(form.pk)).values_list(
            "verb", flat=True
        )
    )
    assert verbs == {"form_captured", "form_routed"}
    # The batch's own transaction is a savepoint here, inside the test's; no other.
    assert len([q for q in sql if q.startswith("SAVEPOINT")]) == 1


def test_pause_reasons_alone_capture_the_forms_with_either_type_key(run: Run) -> None:
    run.apply_events(
        [ev.paused(ev.form_data("F7", "tok-7", node_id="n7"), type_key="type")],
        definitions={"F7": get_definition()},
    )
    assert run.forms.get().form_id == "F7" and run.status == "paused"


def test_parallel_forms_under_one_pause(run: Run) -> None:
    a = ev.form_data("FA", "tok-a", node_id="legal", title="Legal")
    b = ev.form_data("FB", None, node_id="finance", title="Finance", channels=["email"])
    run.apply_events(
        [
            ev.started(),
            ev.event("human_input_required", a),
            ev.event("human_input_required", b),
            ev.paused(a, b),
        ],
        definitions={"FA": get_definition()},
    )
    statuses = dict(run.forms.values_list("node_id", "status"))
    assert statuses == {"legal": "pending", "finance": "not_answerable"}
    run.apply_event(ev.filled(node_id="legal"))
    statuses = dict(run.forms.values_list("node_id", "status"))
    assert statuses == {"legal": "answered_elsewhere", "finance": "not_answerable"}


@pytest.mark.parametrize(("error", "status", "label"), ev.CLOSED_IN_DIFY)
def test_a_412_from_get_form_settles_the_new_form_in_its_record_its_audit_and_the_timeline(
    run: Run, error: Exception, status: str, label: str
) -> None:
    run.apply_events([ev.started(), ev.required()], definitions={"F1": error})
    form = run.forms.get()
    assert form.status == status
    verbs = list(
        AuditEntry.objects.filter(object_type="form", object_id=str(form.pk))
        .order_by("id")
        .values_list("verb", flat=True)
    )
    assert verbs[-2:] == ["form_captured", f"form_{status}"]
    run.refresh_from_db()
    assert run.timeline[-1]["key"] == "form:F1" and run.timeline[-1]["status"] == label


def test_node_events_make_one_entry_per_execution_and_text_chunks_are_appended(
    run: Run,
) -> None:
    run.apply_events(
        [
            ev.started(),
            ev.node("node_started", "llm", "Summarize", execution="E9"),
            ev.event("text_chunk", {"text": "Hello ", "from_variable_selector": ["llm", "text"]}),
            ev.event("text_chunk", {"text": "world", "from_variable_selector": ["llm", "text"]}),
            ev.node("node_finished", "llm", "Summarize", execution="E9", status="succeeded"),
            ev.event("node_started", {"id": "E10", "node_id": "inner", "iteration_id": "I1"}),
        ]
    )
    assert [item["key"] for item in run.timeline] == ["started", "node:E9"]
    assert run.timeline[1]["text"] == "Hello world"
    assert run.timeline[1]["status"] == "succeeded"
    assert not RunEvent.objects.filter(run=run).exists()


def test_chatflow_answer_chunks_are_aggregated_and_a_replace_replaces(run: Run) -> None:
    chat = {"conversation_id": "C1", "message_id": "M1", "created_at": 1}
    run.apply_events(
        [
            ev.started(),
            ev.event("message", answer="Hel", **chat),
            ev.event("message", answer="lo", **chat),
        ]
    )
    assert run.answer == "Hello" and run.conversation_id == "C1" and run.message_id == "M1"
    run.apply_events([ev.event("message_replace", answer="Hello", **chat)])
    assert run.answer == "Hello"
    run.apply_events(
        [
            ev.event("message", answer=" there", **chat),
            ev.event("message_end", id="M1", metadata={"usage": {"total_tokens": 3}}, **chat),
            ev.finished(outputs={"answer": "Hello there"}),
        ]
    )
    assert run.answer == "Hello there" and run.status == "succeeded"
    assert RunEvent.objects.filter(run=run, event="message_end").count() == 1


def test_an_error_event_is_recorded_but_the_final_status_waits_for_dify(run: Run) -> None:
    pause_once(run)
    applied = run.apply_event({"event": "error", "status": 500, "code": "x", "message": "boom"})
    assert applied.error == "boom" and run.error == "boom" and run.status == "paused"
    assert RunEvent.objects.filter(run=run, event="error").count() == 1


def test_an_unknown_event_is_stored_once_without_any_token(run: Run) -> None:
    weird = ev.event("agent_log", {"form_token": "tok-x", "label": "thinking"})
    applied = run.apply_events([weird, weird])
    stored = RunEvent.objects.get(run=run)
    assert stored.event == "agent_log" and stored.payload["data"] == {"label": "thinking"}
    assert not applied.changed


def test_request_follow_asks_for_a_snapshot_and_is_a_no_op_on_a_finished_run(run: Run) -> None:
    seq = run.follow_seq
    assert run.request_follow(snapshot=True)
    run.refresh_from_db()
    assert run.follow_wanted and run.follow_snapshot and run.follow_seq == seq + 1
    Run.objects.filter(pk=run.pk).update(follow_wanted=False, follow_snapshot=False)
    assert run.request_follow()
    run.refresh_from_db()
    assert run.follow_wanted and not run.follow_snapshot
    Run.objects.filter(pk=run.pk).update(status="succeeded", follow_wanted=False)
    run.refresh_from_db()
    assert not run.request_follow() and not Run.objects.get(pk=run.pk).follow_wanted


# --- NUL characters (PostgreSQL stores none: not in text, not as \u0000 in jsonb) ---


def test_nul_characters_from_an_llm_are_dropped_and_the_form_is_still_captured(
    run: Run,
) -> None:
    form = ev.form_data(content="Refund \x00EUR 15?\n\n{{#$output.note#}}")
    form["inputs"][0]["output_variable_name"] = "no\x00te"
    applied = run.apply_events(
        [
            ev.started(),
            ev.node("node_started", "llm", "Summarize", execution="E9"),
            ev.event("text_chunk", {"text": "a\x00b", "from_variable_selector": ["llm", "text"]}),
            ev.message("Hi\x00!"),
            ev.event("human_input_required", form),
            ev.paused(form),
            ev.event("agent_log", {"label": "thinking\x00", "\x00key": 1}),
        ],
        fetch_definitions=False,
    )
    assert applied.forms_created
    captured = run.forms.get()
    assert captured.content == "Refund EUR 15?\n\n{{#$output.note#}}"
    assert captured.definition["inputs"][0]["output_variable_name"] == "note"
    assert run.answer == "Hi!" and run.timeline[1]["text"] == "ab"
    assert RunEvent.objects.get(run=run, event="agent_log").payload["data"] == {
        "label": "thinking",
        "key": 1,
    }
    run.apply_events(
        [ev.filled(note="ok\x00"), ev.finished(outputs={"summary": "done\x00"})],
        fetch_definitions=False,
    )
    captured.refresh_from_db()
    assert captured.rendered_content == "Approve the refund?\n\nok"
    assert captured.filled_data == {"note": "ok"}
    assert run.outputs == {"summary": "done"} and run.status == "succeeded"


def test_nul_characters_in_what_get_form_answers_are_dropped(run: Run) -> None:
    definition = FormDefinition.from_api(
        {
            "form_content": "Approve\x00?",
            "inputs": [],
            "user_actions": [{"id": "approve", "title": "Appr\x00ove", "button_style": "primary"}],
            "resolved_default_values": {"note": "\x00"},
            "expiration_time": 2_000_000_000,
        }
    )
    run.apply_events([ev.required(), ev.paused(ev.form_data())], definitions={"F1": definition})
    captured = run.forms.get()
    assert captured.content == "Approve?" and captured.definition_fetched_at is not None
    assert captured.definition["user_actions"][0]["title"] == "Approve"
    assert captured.definition["resolved_default_values"] == {"note": ""}


def test_a_node_s_whole_text_replaces_the_chunks_seen_of_it(run: Run) -> None:
    # The stream opened while the LLM was writing: only the end of its text came as chunks.
    finished = ev.node("node_finished", "llm", "Write draft", execution="E7", status="succeeded")
    finished["data"]["outputs"] = {"text": "Title\n\nFirst sentence. The rest of it."}
    run.apply_events(
        [
            ev.started(),
            ev.node("node_started", "llm", "Write draft", execution="E7"),
            ev.event("text_chunk", {"text": "The rest of it.", "from_variable_selector": ["llm"]}),
            finished,
        ],
        fetch_definitions=False,
    )
    run.refresh_from_db()
    [entry] = [item for item in run.timeline if item.get("node_id") == "llm"]
    assert entry["text"] == "Title\n\nFirst sentence. The rest of it."
    assert entry["status"] == "succeeded"
    # A node that streamed no text gets none from its outputs: the timeline shows what streams.
    quiet = ev.node("node_finished", "code", "Compute", execution="E8", status="succeeded")
    quiet["data"]["outputs"] = {"text": "internal"}
    run.apply_events(
        [ev.node("node_started", "code", "Compute", execution="E8"), quiet],
        fetch_definitions=False,
    )
    run.refresh_from_db()
    assert "text" not in next(item for item in run.timeline if item.get("node_id") == "code")


@pytest.mark.parametrize(
    ("status", "form_status", "entry"),
    [
        ("succeeded", "answered_elsewhere", "answered"),
        ("stopped", "expired", "expired"),
        ("failed", "expired", "expired"),
    ],
)
def test_an_email_only_form_closes_with_its_run(
    run: Run, status: str, form_status: str, entry: str
) -> None:
    # Answerable only by email: no token to ask Dify about it, no fill seen (no stream was
    # open). Once the run ends it is not "only answerable in Dify" any more.
    form = ev.form_data(token=None, channels=["email"], node_id="owner_approval")
    run.apply_events(
        [ev.started(), ev.node("node_started", "llm", "Draft", execution="E1")],
        fetch_definitions=False,
    )
    run.apply_events([ev.event("human_input_required", form), ev.paused(form)])
    assert run.forms.get().status == "not_answerable"
    run.apply_events([ev.finished(status=status)], fetch_definitions=False)
    run.refresh_from_db()
    assert run.forms.get().status == form_status
    entries = {item["key"]: item for item in run.timeline}
    assert entries["form:F1"]["status"] == entry
    # Nor does a node the stream saw start stay "running" under the ended run.
    assert entries["node:E1"]["status"] == ("succeeded" if status == "succeeded" else status)


def test_file_types_dify_can_never_accept_are_logged_once_as_the_form_is_captured(
    run: Run,
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Any,
) -> None:
    import logging

    drawings = {
        "type": "file-list",
        "output_variable_name": "drawings",
        "allowed_file_types": ["custom"],
        # Dify compares a file's extension, in lower case with its dot, with each entry as
        # written: ".DXF", "step" and ".tar.gz" match no file; ".dwg" does.
        "allowed_file_extensions": [".dwg", ".DXF", "step", ".tar.gz"],
        "allowed_file_upload_methods": ["local_file"],
        "number_limits": 3,
    }
    data = ev.form_data()
    data["inputs"] = [*data["inputs"], drawings]
    caplog.set_level(logging.WARNING, logger="inbox")
    for token in ("tok-secret-1", "tok-fresh-2"):
        # Captured, then the same form again (a replayed snapshot): told once.
        data = {**data, "form_token": token}
        with django_capture_on_commit_callbacks(execute=True):
            run.apply_events([ev.event("human_input_required", data), ev.paused(data)])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    form = run.forms.get()
    assert warnings == [
        f"form {form.public_id} (app {run.app.name}, node approve_node): the workflow lists file"
        " types Dify cannot accept: .DXF, step, .tar.gz. Change them in the workflow (a dot and"
        " lower case, one part: '.dxf'; one of Dify's own kinds, as '.pdf', only with its kind"
        " allowed)."
    ]
    assert "tok-" not in warnings[0]
