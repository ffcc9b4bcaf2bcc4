from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from inbox.models import AuditEntry, Decision, DifyApp, Form, FormNotOpen
from tests.delivery.helpers import make_form

pytestmark = pytest.mark.smoke


def test_decide_stores_a_queued_decision_and_queues_its_delivery_after_commit(
    dify_app: DifyApp, reviewer: User, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    form = make_form(dify_app)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        decision = form.decide(action_id="approve", inputs={"note": "ok"}, reviewer=reviewer)
    assert len(callbacks) == 1  # the task is sent only once the decision is committed
    decision.refresh_from_db()
    assert (decision.status, decision.action_id, decision.inputs) == (
        "queued",
        "approve",
        {"note": "ok"},
    )
    assert decision.reviewer == reviewer and decision.attempts == 0
    assert Form.objects.get(pk=form.pk).status == "submitting"
    assert form.status == "submitting"
    entry = AuditEntry.objects.get(verb="decision_made")
    assert (entry.actor, entry.object_id, entry.details["action"]) == (
        reviewer,
        str(decision.pk),
        "approve",
    )


def test_a_resubmit_with_the_same_key_returns_the_first_decision(
    dify_app: DifyApp, reviewer: User, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    form = make_form(dify_app)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        first = form.decide(action_id="approve", inputs={}, reviewer=reviewer, submission_key="k1")
        again = form.decide(action_id="reject", inputs={}, reviewer=reviewer, submission_key="k1")
    assert again.pk == first.pk and again.action_id == "approve"
    assert Decision.objects.count() == 1
    assert len(callbacks) == 1


def test_the_second_reviewer_is_told_who_decided_when_and_what(
    dify_app: DifyApp,
    reviewer: User,
    other_reviewer: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    form = make_form(dify_app)
    with django_capture_on_commit_callbacks(execute=False):
        first = form.decide(action_id="approve", inputs={}, reviewer=other_reviewer)
    when = (
        timezone.localtime(first.created_at).strftime("%H:%M")
        + " "
        + timezone.get_current_timezone_name()
    )
    with pytest.raises(FormNotOpen) as refused:
        Form.objects.get(pk=form.pk).decide(action_id="reject", inputs={}, reviewer=reviewer)
    assert refused.value.message == f"Bob already decided this form at {when}: Approve"
    assert refused.value.decision == first
    assert Decision.objects.count() == 1


def test_a_guest_decision_names_the_guest(
    dify_app: DifyApp, reviewer: User, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    form = make_form(dify_app)
    with django_capture_on_commit_callbacks(execute=False):
        form.decide(action_id="reject", inputs={}, guest_email="carol@example.com")
    with pytest.raises(FormNotOpen, match=r"^carol@example.com already decided .*: Reject$"):
        form.decide(action_id="approve", inputs={}, reviewer=reviewer)


def test_a_form_past_its_expiration_time_is_refused_even_before_the_sweep(
    dify_app: DifyApp, reviewer: User
) -> None:
    form = make_form(dify_app, expires_in=None)
    Form.objects.filter(pk=form.pk).update(expiration_time=timezone.now() - dt.timedelta(minutes=1))
    form.refresh_from_db()
    when = (
        timezone.localtime(form.expiration_time).strftime("%H:%M")
        + " "
        + timezone.get_current_timezone_name()
    )
    with pytest.raises(FormNotOpen) as refused:
        form.decide(action_id="approve", inputs={}, reviewer=reviewer)
    assert refused.value.message == f"This form expired at {when}."
    assert refused.value.decision is None
    assert not Decision.objects.exists()


def test_a_form_answered_in_dify_is_refused_with_the_other_answer(
    dify_app: DifyApp, reviewer: User
) -> None:
    form = make_form(
        dify_app,
        status=Form.Status.ANSWERED_ELSEWHERE,
        filled_action_id="reject",
        filled_action_text="Reject",
    )
    with pytest.raises(FormNotOpen, match=r"^This form was answered in Dify: Reject$"):
        form.decide(action_id="approve", inputs={}, reviewer=reviewer)
    bare = make_form(dify_app, status=Form.Status.ANSWERED_ELSEWHERE)
    with pytest.raises(FormNotOpen, match=r"^This form was answered in Dify\.$"):
        bare.decide(action_id="approve", inputs={}, reviewer=reviewer)


def test_a_form_without_a_token_cannot_be_decided_here(dify_app: DifyApp, reviewer: User) -> None:
    form = make_form(dify_app, form_token="")
    with pytest.raises(FormNotOpen, match="cannot be answered from the inbox"):
        form.decide(action_id="approve", inputs={}, reviewer=reviewer)


def test_after_dify_rejected_a_decision_the_form_takes_a_new_one(
    dify_app: DifyApp, reviewer: User, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    form = make_form(dify_app)
    with django_capture_on_commit_callbacks(execute=False):
        first = form.decide(action_id="approve", inputs={}, reviewer=reviewer)
    assert Decision.finish(
        first.pk,
        status=Decision.Status.REJECTED,
        form_status=Form.Status.PENDING,
        reason="Missing required inputs: note",
        verb="decision_rejected",
    )
    assert Form.objects.get(pk=form.pk).status == "pending"
    with django_capture_on_commit_callbacks(execute=False):
        second = form.decide(action_id="approve", inputs={"note": "x"}, reviewer=reviewer)
    assert second.pk != first.pk and second.status == "queued"


def test_the_database_refuses_a_second_active_decision_without_the_lock(
    dify_app: DifyApp, reviewer: User, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    # A stale copy of the form (still `pending`) and a decision slipped in by another path:
    # the constraint, not only the status check, stops a second one.
    form = make_form(dify_app)
    Decision.objects.create(form=form, action_id="reject", reviewer=reviewer)
    with pytest.raises(
        FormNotOpen, match=r"^Alice already decided this form at \d\d:\d\d UTC: Reject$"
    ):
        form.decide(action_id="approve", inputs={}, reviewer=reviewer)
    assert Decision.objects.count() == 1


def test_the_refusal_is_in_the_reviewers_language(
    dify_app: DifyApp,
    reviewer: User,
    other_reviewer: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    from django.utils import translation

    form = make_form(dify_app)
    with django_capture_on_commit_callbacks(execute=False):
        first = form.decide(action_id="approve", inputs={}, reviewer=other_reviewer)
    when = (
        timezone.localtime(first.created_at).strftime("%H:%M")
        + " "
        + timezone.get_current_timezone_name()
    )
    with translation.override("zh-hans"), pytest.raises(FormNotOpen) as refused:
        form.decide(action_id="reject", inputs={}, reviewer=reviewer)
    assert refused.value.message == f"Bob 已于 {when} 对此表单作出决定：Approve"  # noqa: RUF001
