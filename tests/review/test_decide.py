"""The decision path of the form page and the JSON API, against the Dify simulator.

A paused run in the simulator, its form recorded as the capture records it. The reviewer's post
stores a Decision through `Form.decide` and moves the form to `submitting`; the delivery task is
queued only when that commits. The tests hold those commit callbacks, look at the page while the
decision is queued, then run them with Celery's tasks in this process (the production task, only
the broker hop skipped) so the decision really travels to the simulator.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from inbox.celery import app as celery_app
from inbox.models import ApiToken, Decision, DifyApp, Form, Route
from tests.delivery.helpers import simulated_forms

Capture = Callable[..., Any]


@pytest.fixture
def sim_form(simulator: Any, simulator_dify_app: Any, reviewers_group: Group) -> Form:
    app: DifyApp = simulator_dify_app("refund-approval")
    route = Route.objects.create(app=app, name="default", reminders="")
    route.groups.add(reviewers_group)
    [form] = simulated_forms(simulator, app, 1)
    return form


@pytest.fixture
def tasks_in_process() -> Iterator[None]:
    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    try:
        yield
    finally:
        celery_app.conf.task_always_eager = before


def deliver(callbacks: list[Callable[[], Any]]) -> None:
    """What happens when the decision's transaction commits: its delivery task runs."""
    for callback in callbacks:
        callback()


def body(page: str) -> str:
    start = page.index('id="form-body"')
    return page[start : page.index("</section>", start)]


def test_a_decision_is_queued_then_delivered_and_the_page_says_so(
    client: Client,
    reviewer: User,
    sim_form: Form,
    simulator: Any,
    tasks_in_process: None,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    client.force_login(reviewer)
    url = f"/forms/{sim_form.public_id}/"
    post = {"action": "approve", "in_decision_note": "Refund granted.", "submission_key": "k-1"}
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(url + "decide", post)
    assert response.status_code == 302 and response["Location"] == url
    decision = Decision.objects.get(form=sim_form)
    assert (decision.status, decision.action_id, decision.reviewer) == (
        "queued",
        "approve",
        reviewer,
    )
    assert decision.inputs == {"decision_note": "Refund granted."}
    assert Form.objects.get(pk=sim_form.pk).status == Form.Status.SUBMITTING
    assert len(callbacks) == 1  # the delivery is queued once, after the commit
    assert simulator.submit_count(sim_form.form_id) == 0

    queued = body(client.get(url).content.decode())
    assert "Decision queued; it is on its way to Dify." in queued
    assert "Alice chose “Approve refund”." in queued  # the button as it read, not its id

    sent = time.time()
    deliver(callbacks)
    decision.refresh_from_db()
    assert decision.status == Decision.Status.DELIVERED and decision.attempts == 1
    # The simulator notes when the submit arrived (the click-to-Dify benchmark reads it).
    received = simulator.stats()["submit_received_at"][sim_form.form_id]
    assert sent <= received <= time.time()
    assert simulator.submits_applied(sim_form.form_id) == 1
    form_in_dify = simulator.run(sim_form.run.workflow_run_id)["forms"][0]
    assert form_in_dify["action_id"] == "approve"
    assert form_in_dify["submitted_data"] == {"decision_note": "Refund granted."}

    delivered = body(client.get(url).content.decode())
    assert "✓ Submitted" in delivered and "By Alice" in delivered
    assert "Approve refund" in delivered  # the action's title, as Dify shows it
    assert sim_form.form_token not in delivered


def test_the_same_page_posted_twice_makes_one_decision(
    client: Client,
    reviewer: User,
    sim_form: Form,
    simulator: Any,
    tasks_in_process: None,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    client.force_login(reviewer)
    url = f"/forms/{sim_form.public_id}/decide"
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        first = client.post(url, {"action": "approve", "submission_key": "k-twice"})
        # A double click, or the browser resending after a lost answer; htmx this time.
        again = client.post(
            url, {"action": "approve", "submission_key": "k-twice"}, HTTP_HX_REQUEST="true"
        )
        # The page shown again (Back) and another choice made on it: not sent, and said so,
        # with the note kept to copy.
        other = client.post(
            url,
            {"action": "reject", "submission_key": "k-twice", "in_decision_note": "No, wait."},
            HTTP_HX_REQUEST="true",
        )
    assert other.status_code == 200  # htmx swaps 2xx only: the refusal is in the page
    refused = other.content.decode()
    assert "already decided this form at" in refused and "Approve refund" in refused
    assert "No, wait." in refused
    assert first.status_code == 302 and again.status_code == 200
    swapped = again.content.decode()
    assert "Decision queued; it is on its way to Dify." in swapped
    # The page's header follows: its status badge, no more "Take this form", nor "Expires in".
    assert '<span id="form-status" class="badge submitting" hx-swap-oob="true">' in swapped
    assert re.search(
        r'<div id="claim" hx-swap-oob="true"><input type="hidden" name="claim" [^>]*>\s*</div>',
        swapped,
    )
    assert '<span id="form-expiry" hx-swap-oob="true"></span>' in swapped
    assert Decision.objects.filter(form=sim_form).count() == 1
    assert len(callbacks) == 1
    deliver(callbacks)
    with django_capture_on_commit_callbacks(execute=True) as later:
        late = client.post(url, {"action": "approve", "submission_key": "k-twice"})
    assert late.status_code == 302 and later == []
    assert simulator.submit_count(sim_form.form_id) == 1
    decision = Decision.objects.get(form=sim_form)
    assert (decision.status, decision.action_id) == ("delivered", "approve")


def test_another_reviewer_after_the_first_is_told_who_got_there_first(
    client: Client,
    reviewer: User,
    other_reviewer: User,
    sim_form: Form,
    simulator: Any,
    tasks_in_process: None,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    url = f"/forms/{sim_form.public_id}/"
    client.force_login(reviewer)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        client.post(url + "decide", {"action": "approve", "submission_key": "k-alice"})
    # Bob's page was opened before Alice decided; he posts his own choice.
    bob = Client()
    bob.force_login(other_reviewer)
    with django_capture_on_commit_callbacks(execute=False) as bobs:
        refused = bob.post(
            url + "decide",
            {
                "action": "reject",
                "submission_key": "k-bob",
                "in_decision_note": "Not convinced: the receipt is missing.",
            },
        )
    assert refused.status_code == 409 and bobs == []
    page = refused.content.decode()
    assert "Alice already decided this form at" in page and ": Approve refund" in page
    # What Bob wrote is shown back to him to copy, not lost with his page.
    assert "Not sent. What you typed is kept here so you can copy it." in page
    assert re.search(
        r'<textarea id="unsent-1" readonly rows="4" dir="auto">Not convinced: the receipt is missing\.</textarea>',
        page,
    )
    swapped = bob.post(
        url + "decide",
        {"action": "reject", "submission_key": "k-bob-htmx", "in_decision_note": "Still no."},
        HTTP_HX_REQUEST="true",
    ).content.decode()
    assert "Still no.</textarea>" in swapped and "Alice already decided" in swapped
    # Alice's second tab, opened before she decided in the first: her own decision is hers.
    second_tab = client.post(
        url + "decide", {"action": "reject", "submission_key": "k-alice-tab-2"}
    ).content.decode()
    assert "You already decided this form at" in second_tab and ": Approve refund" in second_tab
    assert "Alice already decided" not in second_tab
    deliver(callbacks)
    # Delivered by now: the same answer, and Bob's choice never reaches Dify.
    refused = bob.post(url + "decide", {"action": "reject", "submission_key": "k-bob-2"})
    assert refused.status_code == 409
    assert "Alice already decided this form at" in refused.content.decode()
    assert "By Alice" in body(refused.content.decode())
    assert Decision.objects.filter(form=sim_form).count() == 1
    assert simulator.submit_count(sim_form.form_id) == 1
    assert simulator.run(sim_form.run.workflow_run_id)["forms"][0]["action_id"] == "approve"


def dify_refuses_the_decision(simulator: Any, message: str) -> None:
    """Dify answers the next submit with a 400 `invalid_form_data` saying `message`."""
    simulator.add_fault(
        "status", "form_submit", status=400, code="invalid_form_data", message=message
    )


def test_a_decision_dify_refuses_comes_back_with_the_values_kept(
    client: Client,
    reviewer: User,
    sim_form: Form,
    simulator: Any,
    tasks_in_process: None,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    dify_refuses_the_decision(simulator, "decision_note: must mention the order")
    client.force_login(reviewer)
    url = f"/forms/{sim_form.public_id}/"
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        sent = client.post(
            url + "decide",
            {"action": "approve", "in_decision_note": "Fine by me."},
            HTTP_HX_REQUEST="true",
        ).content.decode()
    # The page's poll is redrawn with the page's new state: polled with the old one ("open"),
    # it would find the form open again after the refusal and redraw nothing, leaving "on its
    # way to Dify" on the page for good.
    [poll] = re.findall(r'<div id="live" hx-swap-oob="true" hx-get="([^"]+)"', sent)
    assert "state=in_flight-queued" in poll
    deliver(callbacks)
    decision = Decision.objects.get(form=sim_form)
    assert decision.status == Decision.Status.REJECTED
    assert Form.objects.get(pk=sim_form.pk).status == Form.Status.PENDING
    redrawn = client.get(poll.replace("&amp;", "&"), HTTP_HX_REQUEST="true").content.decode()
    assert (
        "Dify did not accept the last decision." in redrawn and "Fine by me.</textarea>" in redrawn
    )
    # Open again: the header's claim panel and expiry come back, as a reload draws them.
    assert '<div class="claim" id="claim" hx-swap-oob="true">' in redrawn
    assert "Take this form" in redrawn
    expiry = 'id="form-expiry" class="expiry' if sim_form.expiration_time else 'id="form-expiry"'
    assert expiry in redrawn
    page = body(client.get(url).content.decode())
    assert "Dify did not accept the last decision." in page
    assert "decision_note: must mention the order" in page
    assert "Fine by me.</textarea>" in page
    # Fixed and sent again: this one is delivered.
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        again = client.post(
            url + "decide", {"action": "approve", "in_decision_note": "Order SO-1: refund."}
        )
    assert again.status_code == 302
    deliver(callbacks)
    assert Decision.objects.filter(form=sim_form, status="delivered").count() == 1
    assert simulator.submits_applied(sim_form.form_id) == 1


def test_an_input_dify_s_refusal_names_is_marked_beside_its_field(
    client: Client,
    reviewer: User,
    other_reviewer: User,
    sim_form: Form,
    simulator: Any,
    tasks_in_process: None,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    dify_refuses_the_decision(
        simulator, "Invalid value for paragraph input 'decision_note': too long"
    )
    client.force_login(reviewer)
    url = f"/forms/{sim_form.public_id}/"
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        client.post(url + "decide", {"action": "approve", "in_decision_note": "Fine by me."})
    deliver(callbacks)
    page = body(client.get(url).content.decode())
    assert "Dify did not accept the last decision." in page
    field = re.search(
        r'<div class="field[^"]*" data-kind="paragraph" data-name="decision_note".*?</div>',
        page,
        re.S,
    )
    assert field is not None and "has-error" in field.group(0)
    assert 'id="err-decision_note"' in page and "Dify did not accept this value." in page
    # The banner says why; no second summary of the same.
    assert "Please correct the following" not in page
    # Another reviewer starts from their own values: nothing of the refusal is marked there.
    client.force_login(other_reviewer)
    theirs = body(client.get(url).content.decode())
    assert "Dify did not accept this value." not in theirs


# --- The JSON API ---------------------------------------------------------------------------


def api_post(client: Client, token: str, url: str, data: dict[str, Any]) -> Any:
    return client.post(
        url, json.dumps(data), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )


def test_the_api_takes_a_decision_with_202_and_reports_its_delivery(
    client: Client,
    reviewer: User,
    other_reviewer: User,
    sim_form: Form,
    simulator: Any,
    tasks_in_process: None,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    _, alice_token = ApiToken.issue(reviewer)
    _, bob_token = ApiToken.issue(other_reviewer)
    url = f"/api/v1/forms/{sim_form.public_id}"
    payload = {
        "action": "approve",
        "inputs": {"decision_note": "Approved via the API."},
        "submission_key": "api-k-1",
    }
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api_post(client, alice_token, url + "/decision", payload)
        # The client retries (a timeout on its side): the same decision, nothing new queued.
        retried = api_post(client, alice_token, url + "/decision", payload)
    assert response.status_code == 202
    decision = response.json()["decision"]
    assert decision["status"] == "queued" and decision["action"] == "approve"
    assert decision["decided_by"] == "Alice" and decision["delivered_at"] is None
    assert retried.status_code == 202 and retried.json()["decision"]["id"] == decision["id"]
    assert len(callbacks) == 1 and Decision.objects.count() == 1
    detail = client.get(url, HTTP_AUTHORIZATION=f"Bearer {alice_token}").json()
    assert detail["status"] == "submitting" and detail["decision"]["status"] == "queued"
    assert detail["decision"]["held"] is False
    # Held while Dify refuses the app (`Decision.held_for_app`): the API says so.
    Decision.objects.update(held_for_app=True)
    detail = client.get(url, HTTP_AUTHORIZATION=f"Bearer {alice_token}").json()
    assert detail["decision"]["held"] is True
    Decision.objects.update(held_for_app=False)

    # Bob, a moment later: refused, and told whose decision it is.
    late = api_post(client, bob_token, url + "/decision", {"action": "reject", "inputs": {}})
    assert late.status_code == 409
    error = late.json()["error"]
    assert error["code"] == "form_not_open"
    assert error["message"].startswith("Alice already decided this form at")
    assert error["message"].endswith(": Approve refund")
    assert error["details"]["decision"]["id"] == decision["id"]

    deliver(callbacks)
    detail = client.get(url, HTTP_AUTHORIZATION=f"Bearer {alice_token}").json()
    assert detail["status"] == "submitted" and detail["answerable"] is False
    assert detail["decision"]["status"] == "delivered" and detail["decision"]["delivered_at"]
    assert sim_form.form_token not in json.dumps(detail)
    assert simulator.submits_applied(sim_form.form_id) == 1
    submitted = simulator.run(sim_form.run.workflow_run_id)["forms"][0]["submitted_data"]
    assert submitted == {"decision_note": "Approved via the API."}
    # The same key after delivery still answers with that decision, now delivered.
    again = api_post(client, alice_token, url + "/decision", payload)
    assert again.status_code == 202 and again.json()["decision"]["status"] == "delivered"
    assert simulator.submit_count(sim_form.form_id) == 1


def test_deciding_a_form_another_reviewer_took_asks_first_and_decides_once(
    client: Client,
    reviewer: User,
    other_reviewer: User,
    sim_form: Form,
    simulator: Any,
    tasks_in_process: None,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    sim_form.claim(reviewer)  # Alice took it
    url = f"/forms/{sim_form.public_id}/"
    bob = Client()
    bob.force_login(other_reviewer)
    post = {"action": "reject", "submission_key": "k-bob", "in_decision_note": "Receipt missing."}
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        asked = bob.post(url + "decide", post)
    assert asked.status_code == 409 and callbacks == []
    assert not Decision.objects.filter(form=sim_form).exists()
    page = asked.content.decode()
    assert "Alice is handling this form. Decide anyway?" in page
    # Without script: the same form, what Bob typed kept, the same key, his action offered.
    assert f'<input type="hidden" name="taken_ok" value="{reviewer.pk}">' in page
    assert '<input type="hidden" name="submission_key" value="k-bob">' in page
    assert re.search(r"<textarea [^>]*>\s*Receipt missing\.</textarea>", page), re.findall(
        r"<textarea[^>]*>[^<]*</textarea>", page
    )
    assert '<button type="submit" name="action" value="reject" class="btn primary">' in page
    assert "Decide anyway: Reject" in page
    # In Chinese, and on the page's htmx post alike.
    chinese = bob.post(
        url + "decide", post, HTTP_HX_REQUEST="true", HTTP_ACCEPT_LANGUAGE="zh-hans"
    ).content.decode()
    assert (
        "<strong>Alice \u6b63\u5728\u5904\u7406\u6b64\u8868\u5355\u3002" in chinese
        and "Decide anyway" not in chinese
    )
    assert not Decision.objects.filter(form=sim_form).exists()
    # A confirmation given for someone else than the holder now is asked again.
    stale = bob.post(url + "decide", {**post, "taken_ok": str(other_reviewer.pk)})
    assert stale.status_code == 409 and not Decision.objects.exists()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        confirmed = bob.post(url + "decide", {**post, "taken_ok": str(reviewer.pk)})
        # The confirmation sent twice (a double click): still one decision.
        again = bob.post(url + "decide", {**post, "taken_ok": str(reviewer.pk)})
    assert confirmed.status_code == 302 and again.status_code == 302
    decision = Decision.objects.get(form=sim_form)
    assert (decision.reviewer, decision.action_id) == (other_reviewer, "reject")
    assert decision.inputs == {"decision_note": "Receipt missing."}
    assert len(callbacks) == 1
    deliver(callbacks)
    assert simulator.submit_count(sim_form.form_id) == 1
    # The holder deciding it is not asked; nor is anyone once the holder lets go.
    other = next(iter(simulated_forms(simulator, sim_form.run.app, 1)))
    other.claim(reviewer)
    client.force_login(reviewer)
    own = client.post(f"/forms/{other.public_id}/decide", {"action": "approve"})
    assert own.status_code == 302 and Decision.objects.filter(form=other).count() == 1


def test_the_api_decides_a_taken_form_without_asking_and_names_its_holder(
    client: Client,
    reviewer: User,
    other_reviewer: User,
    sim_form: Form,
    tasks_in_process: None,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    sim_form.claim(reviewer)
    _, bob_token = ApiToken.issue(other_reviewer)
    url = f"/api/v1/forms/{sim_form.public_id}"
    detail = client.get(url, HTTP_AUTHORIZATION=f"Bearer {bob_token}").json()
    assert detail["claimed_by"] == {"username": "alice", "name": "Alice"}
    with django_capture_on_commit_callbacks(execute=False):
        response = api_post(
            client,
            bob_token,
            url + "/decision",
            {"action": "reject", "inputs": {"decision_note": "No."}},
        )
    assert response.status_code == 202, response.content
    assert Decision.objects.get(form=sim_form).reviewer == other_reviewer
