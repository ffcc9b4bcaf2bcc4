"""Dify replaying a run's events from its start: newer builds replay the retained event log
instead of a snapshot (CONTRACT 6.1). Applied again, in whatever batches the follower cuts the
stream into, the replay creates nothing twice and changes nothing already settled."""

from __future__ import annotations

from typing import Any

import pytest

from inbox.capture import StreamState
from inbox.models import AuditEntry, Decision, Run, RunEvent
from tests.capture import events as ev

pytestmark = pytest.mark.django_db

# Two passes of a loop through the same Human Input node: F1, then F2.
F1 = ev.form_data("F1", "tok-1", expires=2_000_000_000)
F2 = ev.form_data("F2", "tok-2", expires=2_000_003_600)

# F1 announced, paused on, filled in Dify; the loop came round to the node again: F2 waits.
LOOP = [
    ev.started(),
    ev.event("human_input_required", F1),
    ev.paused(F1),
    ev.filled(),
    ev.started("resumption"),
    ev.event("human_input_required", F2),
    ev.paused(F2),
]

# The same loop where F1 timed out instead.
TIMED_OUT_LOOP = [
    ev.started(),
    ev.event("human_input_required", F1),
    ev.paused(F1),
    ev.timeout(expires=F1["expiration_time"]),
    ev.started("resumption"),
    ev.event("human_input_required", F2),
    ev.paused(F2),
]

# A chatflow that answers, pauses, and answers on once the form is filled.
CHAT = [
    ev.started(),
    ev.message("Hello"),
    ev.message(", let me ask."),
    ev.event("human_input_required", F1),
    ev.paused(F1),
    ev.filled(),
    ev.started("resumption"),
    ev.message(" Granted."),
]


def apply(run: Run, events: list[dict[str, Any]], stream: StreamState | None = None) -> Any:
    return run.apply_events(events, fetch_definitions=False, stream=stream)


def live(run: Run, log: list[dict[str, Any]]) -> None:
    """The log as it first came: one stream per pause, as the follower reads a run."""
    apply(run, log[:3])
    apply(run, log[3:5])
    apply(run, log[5:])


def forms(run: Run) -> dict[str, tuple[str, str, str]]:
    return {f.form_id: (f.status, f.filled_action_id, f.rendered_content) for f in run.forms.all()}


# --- forms ---


def test_a_replayed_fill_goes_to_the_form_it_filled_not_to_the_one_now_pending_at_its_node(
    run: Run,
) -> None:
    live(run, LOOP)
    before = forms(run)
    assert before["F1"][:2] == ("answered_elsewhere", "approve")
    assert before["F2"] == ("pending", "", "")
    audit = AuditEntry.objects.count()
    applied = apply(run, LOOP)
    assert forms(run) == before
    assert applied.paused and applied.awaiting_human and not applied.changed
    assert run.status == "paused"
    assert AuditEntry.objects.count() == audit
    assert RunEvent.objects.filter(run=run, event="human_input_form_filled").count() == 1


@pytest.mark.parametrize("cut", range(1, len(LOOP)))
@pytest.mark.parametrize("one_stream", [True, False], ids=["one stream", "batch by batch"])
def test_a_replayed_loop_changes_no_form_wherever_it_is_cut_into_batches(
    run: Run, cut: int, one_stream: bool
) -> None:
    live(run, LOOP)
    before = forms(run)
    stream = StreamState() if one_stream else None
    apply(run, LOOP[:cut], stream)
    applied = apply(run, LOOP[cut:], stream)
    assert forms(run) == before
    assert applied.awaiting_human and run.status == "paused"


@pytest.mark.parametrize(
    "replayed",
    [LOOP, [ev.started(), ev.event("human_input_required", F2), ev.paused(F2)]],
    ids=["the log from the start", "a snapshot"],
)
def test_the_next_form_of_a_loop_filled_like_the_last_one_is_filled_not_taken_for_a_replay(
    run: Run, replayed: list[dict[str, Any]]
) -> None:
    live(run, LOOP)
    stream = StreamState()
    apply(run, replayed, stream)
    # F2 is now filled in Dify with the same action and note as F1 was.
    applied = apply(run, [ev.filled()], stream)
    status, action, rendered = forms(run)["F2"]
    assert (status, action) == ("answered_elsewhere", "approve") and rendered
    assert run.status == "running" and applied.changed


def test_a_fill_in_the_batch_that_announces_its_form_fills_that_form(run: Run) -> None:
    # F1 is still pending here: its fill never reached us (Dify has moved on to F2).
    apply(run, LOOP[:3])
    apply(run, [*LOOP[4:], ev.filled(action="reject", note="no")])
    assert forms(run)["F1"] == ("pending", "", "")
    assert forms(run)["F2"] == ("answered_elsewhere", "reject", "Approve the refund?\n\nno")


def test_a_fill_for_a_form_never_seen_is_not_pinned_on_an_answered_form_of_its_node(
    run: Run,
) -> None:
    apply(run, LOOP[:4])
    before = forms(run)
    apply(run, [ev.filled(action="reject", note="no")])
    assert forms(run) == before
    entry = run.timeline[-1]
    assert (entry["event"], entry["action"]) == ("human_input_form_filled", "Reject")
    assert "form" not in entry
    assert run.status == "running"


def test_a_replay_of_parallel_forms_leaves_the_one_still_waiting_alone(run: Run) -> None:
    a = ev.form_data("FA", "tok-a", node_id="legal", title="Legal")
    b = ev.form_data("FB", "tok-b", node_id="finance", title="Finance")
    log = [
        ev.started(),
        ev.event("human_input_required", a),
        ev.event("human_input_required", b),
        ev.paused(a, b),
        ev.filled(node_id="legal"),
        ev.paused(b),
    ]
    apply(run, log[:4])
    apply(run, log[4:])
    applied = apply(run, log)
    statuses = dict(run.forms.values_list("node_id", "status"))
    assert statuses == {"legal": "answered_elsewhere", "finance": "pending"}
    assert applied.awaiting_human


def test_a_replayed_timeout_does_not_expire_the_form_now_pending_at_its_node(run: Run) -> None:
    live(run, TIMED_OUT_LOOP)
    assert forms(run) == {"F1": ("expired", "", ""), "F2": ("pending", "", "")}
    applied = apply(run, TIMED_OUT_LOOP)
    assert forms(run)["F2"] == ("pending", "", "") and applied.awaiting_human
    # Alone, F1's timeout is still F1's (it names F1's expiration time)...
    apply(run, [ev.timeout(expires=F1["expiration_time"])])
    assert forms(run)["F2"] == ("pending", "", "")
    # ... and F2's own expires F2.
    apply(run, [ev.timeout(expires=F2["expiration_time"])])
    assert forms(run)["F2"] == ("expired", "", "")
    assert RunEvent.objects.filter(run=run, event="human_input_form_timeout").count() == 2


# --- the answer ---


@pytest.mark.parametrize("cut", range(1, len(CHAT) + 1))
def test_a_replayed_answer_is_kept_once_wherever_the_replay_is_cut(run: Run, cut: int) -> None:
    apply(run, CHAT[:5])
    apply(run, CHAT[5:])
    assert run.answer == "Hello, let me ask. Granted."
    stream = StreamState()
    apply(run, CHAT[:cut], stream)
    # The replay caught up: what follows is new.
    apply(run, [*CHAT[cut:], ev.message(" Anything else?")], stream)
    assert run.answer == "Hello, let me ask. Granted. Anything else?"


def test_live_text_after_a_snapshot_that_replays_no_chunks_is_appended(run: Run) -> None:
    apply(run, CHAT[:5])
    stream = StreamState()
    # An older build's snapshot (or one whose message it could not find): no message_replace.
    apply(run, [ev.started(), ev.event("human_input_required", F1), ev.paused(F1)], stream)
    apply(run, [ev.filled(), ev.started("resumption"), ev.message(" Granted.")], stream)
    assert run.answer == "Hello, let me ask. Granted."


def test_the_end_sets_the_answer_dify_gives_even_a_shorter_one(run: Run) -> None:
    # Chunks seen twice by a stream that did not replay from the start.
    apply(run, [ev.message("Hello ")])
    apply(run, [ev.message("Hello ")])
    apply(run, [ev.finished(outputs={"answer": "Hello "})])
    assert run.answer == "Hello "


def test_message_end_carrying_the_answer_sets_it(run: Run) -> None:
    apply(run, [ev.message("Hi")])
    apply(run, [ev.message("Hi")])
    apply(run, [ev.event("message_end", id="M1", answer="Hi", **ev.CHAT)])
    assert run.answer == "Hi"


def test_a_late_replay_does_not_change_the_answer_of_a_finished_run(run: Run) -> None:
    apply(run, [ev.started(), ev.message("Hello there"), ev.finished(outputs={})])
    assert run.answer == "Hello there" and run.status == "succeeded"
    # A snapshot opened before the end and delivered after it, then stray chunks.
    apply(run, [ev.started(), ev.message("Hel", "message_replace")])
    apply(run, [ev.message("lo again")])
    assert run.answer == "Hello there"


def test_a_replayed_node_text_is_kept_once(run: Run) -> None:
    log = [
        ev.started(),
        ev.node("node_started", "llm", "Summarize", execution="E9"),
        ev.event("text_chunk", {"text": "Hello ", "from_variable_selector": ["llm", "text"]}),
        ev.event("text_chunk", {"text": "world", "from_variable_selector": ["llm", "text"]}),
        ev.node("node_finished", "llm", "Summarize", execution="E9", status="succeeded"),
    ]
    apply(run, log)
    applied = apply(run, log)
    assert run.timeline[1]["text"] == "Hello world" and not applied.changed


# --- a Human Input node's outputs as evidence of a presumed delivery ---


def human_input_finished(execution: str, action: str, note: str) -> dict[str, Any]:
    """The Human Input node's `node_finished`: its outputs name the action that filled the form
    (`__action_id`), but neither the form nor anything its announcement carried."""
    return ev.event(
        "node_finished",
        {
            "id": execution,
            "node_id": "approve_node",
            "node_type": "human-input",
            "title": "Manager approval",
            "index": 2,
            "status": "succeeded",
            "outputs": {"note": note, "__action_id": action},
            "created_at": 1,
        },
    )


# F1 answered in Dify with Reject; the loop came round: F2 waits, and a decision of ours for it is
# delivered by presumption (Approve). Then Dify replays the run's log from its start, with F2's
# answer after it: ours, with or without its fill.
FIRST_PASS = [
    ev.started(),
    ev.event("human_input_required", F1),
    ev.paused(F1),
    ev.filled(action="reject", note="no"),
    human_input_finished("E1", "reject", "no"),
    ev.started("resumption"),
    ev.event("human_input_required", F2),
    ev.paused(F2),
]


@pytest.mark.parametrize("fills", [True, False], ids=["with the fills", "outputs alone"])
@pytest.mark.parametrize("cut", [0, 4, 5, 8])
def test_a_replayed_pass_of_a_loop_settles_the_presumption_on_its_own_form_only(
    run: Run, reviewer: Any, fills: bool, cut: int
) -> None:
    from tests.delivery.helpers import presume

    live(run, FIRST_PASS)
    f1, f2 = run.forms.get(form_id="F1"), run.forms.get(form_id="F2")
    assert (f1.status, f1.filled_action_id, f2.status) == (
        "answered_elsewhere",
        "reject",
        "pending",
    )
    decision = presume(f2, "approve", reviewer=reviewer)
    replay = [
        *FIRST_PASS,
        *([ev.filled(action="approve", note="ours")] if fills else []),
        human_input_finished("E2", "approve", "ours"),
        ev.finished(),
    ]
    if not fills:
        replay = [e for e in replay if e["event"] != "human_input_form_filled"]
    # F1's outputs (Reject) are not F2's: read in one stream, however the batches fall, the
    # replay confirms our Approve and corrects nothing.
    stream = StreamState()
    apply(run, replay[:cut], stream)
    apply(run, replay[cut:], stream)
    decision.refresh_from_db()
    f2.refresh_from_db()
    assert (decision.status, f2.status) == ("delivered", "submitted")
    (entry,) = AuditEntry.objects.filter(verb="delivery_confirmed")
    assert entry.object_id == str(decision.pk)
    assert entry.details["confirmed_by"] == (
        "human_input_form_filled" if fills else "node_finished"
    )
    assert not AuditEntry.objects.filter(verb="decision_rejected").exists()


def test_a_node_outputs_shown_after_a_fill_at_the_resume_go_to_the_filled_form(
    run: Run, reviewer: Any
) -> None:
    from tests.delivery.helpers import presume

    apply(run, FIRST_PASS)
    decision = presume(run.forms.get(form_id="F2"), "approve", reviewer=reviewer)
    # A stream opened at the resume: F2's fill names Reject, and so do the node's outputs.
    apply(
        run,
        [
            ev.started("resumption"),
            ev.filled(action="reject", note="theirs"),
            human_input_finished("E2", "reject", "theirs"),
        ],
    )
    decision.refresh_from_db()
    assert decision.status == "rejected"
    (entry,) = AuditEntry.objects.filter(verb="decision_rejected")
    assert entry.details["evidence"] == "human_input_form_filled"


def test_outputs_a_replay_cannot_place_among_several_forms_of_the_node_settle_nothing(
    run: Run, reviewer: Any
) -> None:
    from tests.delivery.helpers import presume

    apply(run, FIRST_PASS)
    decision = presume(run.forms.get(form_id="F2"), "approve", reviewer=reviewer)
    # A replay from the start that shows the node's outputs before announcing anything there
    # (as a state snapshot lists executed nodes): F1's pass or F2's, nothing tells.
    apply(run, [ev.started(), human_input_finished("E1", "reject", "no")])
    decision.refresh_from_db()
    assert decision.status == "delivered" and decision.delivery_presumed
    # A stream of the node's one pass going on live does tell: the pass Dify is at, F2's.
    apply(run, [human_input_finished("E2", "approve", "ours")])
    assert not Decision.objects.get(pk=decision.pk).delivery_presumed
