"""Many reviewers, one form: the row lock on PostgreSQL lets exactly one decision through."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from inbox.models import Decision, DifyApp, Form, FormNotOpen
from tests.conftest import wait_until
from tests.delivery.conftest import Workers
from tests.delivery.helpers import make_form
from tests.delivery.scripted import ScriptedDify

pytestmark = pytest.mark.worker


@pytest.fixture
def dify() -> Iterator[ScriptedDify]:
    server = ScriptedDify()
    yield server
    server.close()


def _decide_at_once(form: Form, reviewers: list[User], keys: list[str | None]) -> list[object]:
    barrier = threading.Barrier(len(reviewers))

    def submit(args: tuple[User, str | None]) -> object:
        reviewer, key = args
        barrier.wait()
        try:
            # Each thread has its own database connection, as each web request would.
            mine = Form.objects.get(pk=form.pk)
            return mine.decide(
                action_id="approve",
                inputs={"note": reviewer.username},
                reviewer=reviewer,
                submission_key=key,
            ).pk
        except FormNotOpen as exc:
            return exc
        finally:
            connection.close()

    with ThreadPoolExecutor(len(reviewers)) as pool:
        return list(pool.map(submit, zip(reviewers, keys, strict=True)))


def test_twenty_reviewers_submitting_at_once_make_one_decision_and_one_post(
    workers: Workers, dify: ScriptedDify
) -> None:
    app = DifyApp.objects.create(name="refunds", base_url=dify.base_url, api_key="k-123")
    form = make_form(app)
    reviewers = [
        User.objects.create_user(f"reviewer{i}", first_name=f"Reviewer {i}") for i in range(20)
    ]
    workers.start()
    results = _decide_at_once(form, reviewers, [None] * 20)

    accepted = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if isinstance(r, FormNotOpen)]
    assert len(accepted) == 1 and len(refused) == 19
    winner = Decision.objects.select_related("reviewer").get()
    assert winner.pk == accepted[0]
    when = (
        timezone.localtime(winner.created_at).strftime("%H:%M")
        + " "
        + timezone.get_current_timezone_name()
    )
    expected = f"{winner.reviewer.first_name} already decided this form at {when}: Approve"
    assert {exc.message for exc in refused} == {expected}
    assert all(exc.decision == winner for exc in refused)

    wait_until(lambda: Decision.objects.get().status == "delivered", timeout=60)
    assert len(dify.requests("POST", "/form/human_input/")) == 1
    assert Form.objects.get(pk=form.pk).status == "submitted"


def test_a_double_click_posting_one_page_twice_at_once_is_one_decision(
    workers: Workers, dify: ScriptedDify
) -> None:
    app = DifyApp.objects.create(name="refunds", base_url=dify.base_url, api_key="k-123")
    form = make_form(app)
    alice = User.objects.create_user("alice", first_name="Alice")
    workers.start()
    results = _decide_at_once(form, [alice] * 5, ["page-key-1"] * 5)
    # Every post of the same page gets the same decision back, none is refused.
    assert len(set(results)) == 1 and isinstance(results[0], int)
    wait_until(lambda: Decision.objects.get().status == "delivered", timeout=60)
    assert len(dify.requests("POST", "/form/human_input/")) == 1
