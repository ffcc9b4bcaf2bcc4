"""A batch that announces a form is applied while its GET form is in flight and waits for the
answer before it commits (capture.DefinitionsHandoff): the form shows once, with its definition
and its reviewers, whatever GET form answers, and a GET that takes too long costs the definition
only for a moment."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import pytest
from django.db import connections

from inbox import capture
from inbox.dify.errors import DifyConnectionError
from inbox.dify.types import parse_event
from inbox.models import AuditEntry, Form, Run
from tests.capture import events as ev
from tests.capture.conftest import pending, start
from tests.capture.test_apply_event import get_definition
from tests.conftest import wait_until

# How long the simulator holds the GET forms of the follower's tests: long against what a
# loaded machine may take to schedule the follower's steps.
GET_HELD = 3.0

PAUSE = [
    ev.started(),
    ev.required(token="tok-secret-1"),
    ev.paused(ev.form_data(token="tok-secret-1")),
]


def apply_with(run: Run, answer: dict[str, Any] | None, timeout: float = 2.0) -> capture.Applied:
    """Apply the pause with the GET's `answer` handed over by another thread a moment later
    (None: never, the batch gives up after `timeout`)."""
    handoff = capture.DefinitionsHandoff(["F1"], timeout=timeout)
    if answer is not None:
        threading.Timer(0.05, handoff.give, (answer,)).start()
    applied = capture.apply_events(run, PAUSE, handoff=handoff)
    run.refresh_from_db()
    return applied


def captured_audit(form: Form) -> dict[str, Any]:
    entry = AuditEntry.objects.get(verb="form_captured", object_id=str(form.pk))
    assert entry.details.pop("public_id") == str(form.public_id)
    assert entry.details.pop("run") == str(form.run.public_id)
    return dict(entry.details)


@pytest.mark.django_db
def test_the_definition_handed_over_is_the_forms_and_nothing_is_fetched_again(run: Run) -> None:
    applied = apply_with(run, {"F1": get_definition()})
    form = run.forms.get()
    assert form.definition["inputs"][1]["option_source"]["value"] == ["a", "b"]
    assert form.definition_fetched_at is not None and form.routed_at is not None
    assert captured_audit(form) == {"source": "stream", "status": "pending", "definition": "get"}
    assert applied.forms_created == [form.pk] and not applied.needs_definition
    assert applied.paused and applied.awaiting_human
    assert run.status == "paused" and run.timeline[-1]["status"] == "waiting"


@pytest.mark.django_db
@pytest.mark.parametrize(("error", "status", "label"), ev.CLOSED_IN_DIFY)
def test_a_412_handed_over_settles_the_new_form_before_anyone_sees_it(
    run: Run, error: Exception, status: str, label: str
) -> None:
    applied = apply_with(run, {"F1": error})
    form = run.forms.get()
    assert form.status == status and form.definition_fetched_at is None
    verbs = list(
        AuditEntry.objects.filter(object_type="form", object_id=str(form.pk))
        .order_by("id")
        .values_list("verb", flat=True)
    )
    assert verbs[-2:] == ["form_captured", f"form_{status}"]
    # Nobody waits at this pause: the follower does not hold the run for it.
    assert applied.paused and not applied.awaiting_human and not applied.needs_definition
    assert run.timeline[-1]["key"] == "form:F1" and run.timeline[-1]["status"] == label


class AnsweredMidBatch(capture.DefinitionsHandoff):
    """GET form answers right after the batch first looks (at the form's announcement), so
    the answer is in when the pause names the form again, in the same batch: what a follower
    under load meets when the GET lands while the batch is being applied."""

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__(["F1"], timeout=2.0)
        self.answer = answer

    def answered(self) -> dict[str, Any] | None:
        found = super().answered()
        if found is None:
            self.give(self.answer)
        return found


@pytest.mark.django_db
@pytest.mark.parametrize(("error", "status", "label"), ev.CLOSED_IN_DIFY)
def test_a_412_that_lands_between_the_announcement_and_the_pause_settles_the_form_once_captured(
    run: Run, error: Exception, status: str, label: str
) -> None:
    applied = capture.apply_events(run, PAUSE, handoff=AnsweredMidBatch({"F1": error}))
    run.refresh_from_db()
    form = run.forms.get()
    assert form.status == status and form.definition_fetched_at is None
    verbs = list(
        AuditEntry.objects.filter(object_type="form", object_id=str(form.pk))
        .order_by("id")
        .values_list("verb", flat=True)
    )
    # Captured first, then settled: the trail reads as when the answer came at either end.
    assert verbs[-2:] == ["form_captured", f"form_{status}"]
    assert verbs.count(f"form_{status}") == 1
    assert applied.paused and not applied.awaiting_human and not applied.needs_definition
    assert run.timeline[-1]["key"] == "form:F1" and run.timeline[-1]["status"] == label


@pytest.mark.django_db
def test_a_definition_that_lands_between_the_announcement_and_the_pause_is_the_forms(
    run: Run,
) -> None:
    handoff = AnsweredMidBatch({"F1": get_definition()})
    applied = capture.apply_events(run, PAUSE, handoff=handoff)
    run.refresh_from_db()
    form = run.forms.get()
    assert form.definition["inputs"][1]["option_source"]["value"] == ["a", "b"]
    assert form.definition_fetched_at is not None and form.routed_at is not None
    assert captured_audit(form) == {"source": "stream", "status": "pending", "definition": "get"}
    assert applied.forms_created == [form.pk] and not applied.needs_definition
    assert applied.paused and applied.awaiting_human


@pytest.mark.django_db
def test_a_get_that_failed_or_never_came_leaves_the_definition_to_be_fetched_again(
    run: Run,
) -> None:
    failed = DifyConnectionError("connection refused")
    applied = apply_with(run, {"F1": failed})
    form = run.forms.get()
    assert form.definition_fetched_at is None and form.status == "pending"
    assert captured_audit(form)["definition"] == "event"
    assert applied.needs_definition == {form.pk: "tok-secret-1"}

    Form.objects.all().delete()
    began = time.monotonic()
    applied = apply_with(run, None, timeout=0.2)
    assert time.monotonic() - began >= 0.2
    form = run.forms.get()
    assert form.definition_fetched_at is None
    assert applied.needs_definition == {form.pk: "tok-secret-1"}


@pytest.mark.django_db
def test_a_replay_that_refetches_a_known_form_updates_it_in_place(run: Run) -> None:
    apply_with(run, {"F1": get_definition()})
    form = run.forms.get()
    handoff = capture.DefinitionsHandoff(["F1"])
    handoff.give({"F1": get_definition(form_content="Approve the refund now?")})
    fresh = [ev.required(token="tok-secret-2"), ev.paused(ev.form_data(token="tok-secret-2"))]
    applied = capture.apply_events(run, fresh, handoff=handoff)
    form.refresh_from_db()
    assert run.forms.count() == 1 and not applied.forms_created
    assert form.form_token == "tok-secret-2" and form.content == "Approve the refund now?"
    assert AuditEntry.objects.filter(verb="form_captured").count() == 1


# --- in the follower, against the simulator ---


@pytest.mark.django_db(transaction=True)
def test_the_follower_inserts_and_routes_a_form_while_its_get_form_is_in_flight(
    simulator: Any, sim_app: Any
) -> None:
    from tests.capture.conftest import FollowerThread, needs_shared_database

    needs_shared_database()
    app = sim_app()
    # GET form held long against what a loaded machine may take to start the batch after it
    # (a database thread busy, the process descheduled): the batch inserts the form well
    # inside the GET, and waits for it however slow the machine (not the 2 s default).
    simulator.add_fault("delay", "form_get", times=1, delay=GET_HELD)
    thread = FollowerThread("in-flight", definition_wait_seconds=30.0).start()
    try:
        run = start(simulator, app)
        incomplete: list[str] = []

        def complete() -> Form | None:
            # What anyone else can read while the GET is delayed: no form, then the whole form.
            for form in Form.objects.filter(run=run):
                if form.definition_fetched_at is None or form.routed_at is None:
                    incomplete.append(form.form_id)
                return form
            return None

        form = wait_until(complete, timeout=30, interval=0.02)
    finally:
        thread.stop()
        connections.close_all()
    assert incomplete == []
    # Inserted and routed before the GET answered (however late the batch began, within half
    # the GET's hold); committed with what it answered.
    assert form.definition_fetched_at - form.created_at >= dt.timedelta(seconds=GET_HELD / 2)
    assert captured_audit(form)["definition"] == "get"
    assert AuditEntry.objects.filter(verb="form_routed", object_id=str(form.pk)).count() == 1
    assert len(simulator.exchanges("form_get")) == 1


@pytest.mark.django_db(transaction=True)
def test_a_get_form_slower_than_the_wait_commits_the_form_and_its_definition_follows(
    simulator: Any, sim_app: Any
) -> None:
    from tests.capture.conftest import FollowerThread, needs_shared_database

    needs_shared_database()
    app = sim_app()
    # Both GETs slow: the one the batch gives up on, and the retry that brings the definition
    # afterwards, so the form is seen without its definition for a while. Seen before the
    # first GET, sent after `began`, could have answered: the batch did not wait for it (a
    # bound the product meets by the GET's whole hold, not by what a loaded machine allows).
    simulator.add_fault("delay", "form_get", times=2, delay=GET_HELD)
    thread = FollowerThread("slow-get", definition_wait_seconds=0.3).start()
    try:
        began = time.monotonic()
        run = start(simulator, app)
        first = wait_until(lambda: Form.objects.filter(run=run).first(), timeout=15, interval=0.02)
        assert time.monotonic() - began < GET_HELD
        assert first.definition_fetched_at is None and first.status == "pending"
        (form,) = pending(run)
    finally:
        thread.stop()
    assert form.pk == first.pk and run.forms.count() == 1
    assert captured_audit(form)["definition"] == "event"


def test_a_refreshing_stream_fetches_each_form_once_though_its_pause_comes_in_a_later_batch() -> (
    None
):
    """A snapshot stream hands out fresh tokens, so each form it names is fetched again; but
    once per stream: the pause that names the form again, in the next batch, fetches nothing."""
    from inbox.follower import Claim, Follower

    follower = Follower("wanted", db_threads=1)
    claim = Claim(
        pk=1, seq=1, refresh=True, workflow_run_id=ev.RUN, dify_user="u", app=None, known={"F1"}
    )
    announced = [parse_event(ev.required(token="tok-fresh"))]
    pause = [parse_event(ev.paused(ev.form_data(token="tok-fresh")))]
    try:
        assert follower._wanted_definitions(claim, announced) == {"F1": "tok-fresh"}
        claim.answered({"F1": get_definition()})
        assert follower._wanted_definitions(claim, pause) == {}
        # The stream as it goes on: its pause ended the refresh.
        assert not claim.refresh
        assert follower._wanted_definitions(claim, pause) == {}
    finally:
        follower.executor.shutdown()


def test_a_fill_makes_the_forms_still_waiting_be_fetched_again_at_the_next_pause() -> None:
    """Parallel forms: the answer of one may change the select options and defaults of the
    other, which the pause after the resume lists again."""
    from inbox.follower import Claim, Follower

    follower = Follower("wanted", db_threads=1)
    claim = Claim(
        pk=1, seq=1, refresh=False, workflow_run_id=ev.RUN, dify_user="u", app=None, known={"F2"}
    )
    claim.fetched_this_stream.add("F2")
    second = ev.form_data("F2", "tok-2", node_id="second")
    again = [parse_event(ev.required(form_id="F2", token="tok-2", node_id="second"))]
    try:
        assert follower._wanted_definitions(claim, again) == {}
        # The fill and the pause after the resume, in one batch or in two.
        filled = [parse_event(ev.filled("first"))]
        repaused = [*again, parse_event(ev.paused(second))]
        assert follower._wanted_definitions(claim, filled + repaused) == {"F2": "tok-2"}
        claim.answered({"F2": get_definition()})
        assert follower._wanted_definitions(claim, filled) == {}
        assert follower._wanted_definitions(claim, repaused) == {"F2": "tok-2"}
        claim.answered({"F2": get_definition()})
        assert follower._wanted_definitions(claim, repaused) == {}
    finally:
        follower.executor.shutdown()
