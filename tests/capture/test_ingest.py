"""Ingest: runs started directly against Dify, brought to the inbox with or without a token."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from inbox.capture import INGEST_FORM_PREFIX
from inbox.models import ApiToken, AuditEntry, Form, Run
from inbox.simulator.testing import parse_sse, sample_inputs
from inbox.tasks import reconcile_runs
from tests.capture.conftest import FollowerThread, no_stream_left, pending, run_status, submit
from tests.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def ingest(client: Client, caller: User, **body: Any) -> Any:
    _token, raw = ApiToken.issue(caller)
    headers = {name: body.pop(name) for name in list(body) if name.startswith("HTTP_")}
    return client.post(
        "/api/v1/ingest",
        json.dumps({"app": "refund-approval", **body}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
        **headers,
    )


def test_ingest_without_a_token_recovers_the_form_from_a_snapshot(
    client: Client,
    simulator: Any,
    sim_app: Any,
    starters: Any,
    reviewer: User,
    follower: FollowerThread,
) -> None:
    sim_app("refund-approval")
    started = simulator.start_run("refund-approval", user="crm-7")
    response = ingest(client, reviewer, workflow_run_id=started.workflow_run_id, user="crm-7")
    assert response.status_code == 201
    run = Run.objects.get()
    (form,) = pending(run)
    assert form.form_id == started.form("manager_approval")["form_id"]
    no_stream_left(run)
    # Sent again: nothing new.
    again = ingest(client, reviewer, workflow_run_id=started.workflow_run_id, user="crm-7")
    assert again.status_code == 200 and Form.objects.count() == 1
    submit(form, "approve")
    run = run_status(run, "succeeded")
    assert run.outputs["decision"] == "approve"
    assert run.dify_user == "crm-7"
    # What it was started with, from Dify's run detail.
    from inbox.dify import DifyClient

    assert (
        run.inputs and run.inputs == DifyClient.for_app(run.app).get_run(run.workflow_run_id).inputs
    )
    # Named as the app names them, on its page.
    assert dict(run.labelled_inputs)["Customer name"] == run.inputs["customer_name"]


def test_half_an_emoji_in_dify_s_data_is_stored_as_a_replacement_character(
    client: Client,
    simulator: Any,
    sim_app: Any,
    starters: Any,
    reviewer: User,
    follower: FollowerThread,
) -> None:
    """Dify's JSON escapes a lone surrogate ("\\ud83d": an input or an LLM's text cut inside an
    emoji); no database stores one. The run is captured all the same, its page opens."""
    sim_app("refund-approval")
    inputs = dict(
        sample_inputs(simulator.sim.apps["refund-approval"]), customer_name="Ada \ud83d end"
    )
    started = simulator.start_run("refund-approval", inputs=inputs, user="crm-8")
    response = ingest(client, reviewer, workflow_run_id=started.workflow_run_id, user="crm-8")
    assert response.status_code == 201
    run = Run.objects.get()
    (form,) = pending(run)
    run.refresh_from_db()
    assert run.inputs["customer_name"] == "Ada \ufffd end"
    client.force_login(reviewer)
    assert client.get(f"/runs/{run.public_id}/").status_code == 200
    assert client.get(f"/forms/{form.public_id}/").status_code == 200
    submit(form, "approve")
    assert run_status(run, "succeeded").outputs["decision"] == "approve"


def test_ingest_without_a_token_under_another_user_is_refused_and_records_nothing(
    client: Client, simulator: Any, sim_app: Any, starters: Any, reviewer: User
) -> None:
    """Dify shows a run's events only to its creator: recorded under another user, the run
    would wait for forms it can never learn of, under a user nobody can change."""
    sim_app("refund-approval")
    started = simulator.start_run("refund-approval", user="crm-7")
    response = ingest(client, reviewer, workflow_run_id=started.workflow_run_id, user="crm-8")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "user_mismatch"
    assert "Dify does not show this run's events to the user crm-8" in error["message"]
    assert not Run.objects.exists() and not AuditEntry.objects.filter(verb="run_ingested")
    # With the right user it is recorded.
    response = ingest(client, reviewer, workflow_run_id=started.workflow_run_id, user="crm-7")
    assert response.status_code == 201


def test_ingest_with_a_token_captures_the_form_at_once_and_the_snapshot_completes_it(
    client: Client,
    simulator: Any,
    sim_app: Any,
    starters: Any,
    reviewer: User,
    follower: FollowerThread,
) -> None:
    sim_app("refund-approval")
    started = simulator.start_run("refund-approval", user="crm-7")
    sim_form = started.form("manager_approval")
    response = ingest(
        client,
        reviewer,
        workflow_run_id=started.workflow_run_id,
        user="crm-7",
        form_token=sim_form["form_token"],
    )
    assert response.status_code == 201
    assert sim_form["form_token"] not in response.content.decode()
    # The form is there with the answer: its definition from GET form, answerable right away.
    (forms,) = [response.json()["forms"]]
    assert len(forms) == 1 and forms[0]["answerable"] is True
    # The follower's snapshot names it; still one form, now with Dify's form id and node.
    form = wait_until(
        lambda: Form.objects.filter(form_id=sim_form["form_id"], node_id="manager_approval").first()
    )
    assert Form.objects.count() == 1 and str(form.public_id) == forms[0]["id"]
    assert not Form.objects.filter(form_id__startswith=INGEST_FORM_PREFIX).exists()
    assert AuditEntry.objects.filter(verb="form_captured").count() == 1
    submit(form, "reject")
    run = run_status(Run.objects.get(), "succeeded")
    assert run.outputs["decision"] == "reject"


def test_a_run_whose_events_dify_refuses_is_still_answerable_by_its_token(
    client: Client,
    simulator: Any,
    sim_app: Any,
    starters: Any,
    reviewer: User,
    follower: FollowerThread,
) -> None:
    sim_app("refund-approval")
    # Started by another end user than the one we are told (as a WebApp run would be): Dify
    # will not show its events to us, but the token answers the form.
    started = simulator.start_run("refund-approval", user="webapp-visitor")
    token = started.form("manager_approval")["form_token"]
    response = ingest(
        client,
        reviewer,
        workflow_run_id=started.workflow_run_id,
        user="inbox-proxy",
        form_token=token,
    )
    assert response.status_code == 201
    run = Run.objects.get()

    def refused() -> Run | None:
        run.refresh_from_db()
        return run if run.events_unavailable else None

    run = wait_until(refused)
    form = Form.objects.get()
    assert form.status == "pending" and form.form_token == token
    submit(form, "approve")
    simulator.wait_for_status(started.workflow_run_id, "succeeded")
    assert reconcile_runs()["finished"] == 1
    run.refresh_from_db()
    assert run.status == "succeeded" and run.outputs["decision"] == "approve"
    assert Form.objects.get().status == "answered_elsewhere"


def test_a_run_whose_events_dify_refuses_reaches_its_next_pause_through_the_next_token(
    client: Client,
    simulator: Any,
    sim_app: Any,
    starters: Any,
    reviewer: User,
    other_reviewer: User,
    follower: FollowerThread,
) -> None:
    sim_app("content-publish")
    started = simulator.start_run("content-publish", user="webapp-visitor")
    run_id = started.workflow_run_id
    body = {"app": "content-publish", "workflow_run_id": run_id, "user": "inbox-proxy"}
    first = started.form("editor_review")
    assert ingest(client, reviewer, **body, form_token=first["form_token"]).status_code == 201
    run = Run.objects.get()
    wait_until(lambda: Run.objects.filter(pk=run.pk, events_unavailable=True).exists())
    editor = Form.objects.get()
    submit(editor, "approve")

    def legal_form() -> dict[str, Any] | None:
        forms = simulator.run(run_id)["forms"]
        return next((f for f in forms if f["node_id"] == "legal_check"), None)

    legal = simulator.wait_for(legal_form)
    # No stream of ours sees the second pause; the caller brings its token.
    response = ingest(client, reviewer, **body, form_token=legal["form_token"])
    assert response.status_code == 200
    assert legal["form_token"] not in response.content.decode()
    added = Form.objects.exclude(pk=editor.pk).get()
    assert added.status == "pending" and added.form_token == legal["form_token"]
    assert added.definition["user_actions"][0]["id"] == "cleared"
    assert str(added.public_id) in {f["id"] for f in response.json()["forms"]}
    # Routed like any captured form: the reviewers see it.
    assert Form.objects.for_user(other_reviewer).filter(pk=added.pk).exists()
    assert AuditEntry.objects.filter(verb="form_ingested", object_id=str(added.pk)).exists()
    # The same tokens again, and a fresh token Dify hands out for the same form (a snapshot
    # read as the run's own user): nothing new, no form recorded twice.
    with simulator.client("content-publish") as http:
        params = {"user": "webapp-visitor", "include_state_snapshot": "true"}
        replay = parse_sse(http.get(f"/workflow/{run_id}/events", params=params).text)
    (fresh,) = [e["data"]["form_token"] for e in replay if e["event"] == "human_input_required"]
    assert fresh != legal["form_token"]
    for token in (legal["form_token"], first["form_token"], fresh):
        again = ingest(client, reviewer, **body, form_token=token)
        assert again.status_code == 200, again.content
    assert Form.objects.count() == 2
    assert AuditEntry.objects.filter(verb="form_ingested").count() == 1


def test_an_ingest_of_a_run_the_caller_may_not_see_tells_nothing_of_it(
    client: Client,
    simulator: Any,
    sim_app: Any,
    starters: Any,
    reviewer: User,
    other_reviewer: User,
) -> None:
    sim_app("refund-approval")
    started = simulator.start_run("refund-approval", user="crm-7")
    body = {"workflow_run_id": started.workflow_run_id, "user": "crm-7"}
    assert ingest(client, reviewer, **body).status_code == 201
    # Bob may start runs, but this one has no form routed to him yet and he did not start it.
    for user in ("crm-7", "inbox-alice"):
        response = ingest(client, other_reviewer, **{**body, "user": user})
        assert response.status_code == 409
        assert response.json() == {
            "error": {
                "code": "conflict",
                "message": "This run is already recorded in the inbox, and you may not see it.",
            }
        }


# --- a token must be of a form the run waits at ---


def five_and_six(simulator: Any) -> tuple[Any, Any]:
    """Two runs of the same app by two end users, with different inputs, both paused."""
    inputs = sample_inputs(simulator.sim.apps["refund-approval"])
    five = simulator.start_run("refund-approval", {**inputs, "customer_name": "Five"}, user="u5")
    six = simulator.start_run("refund-approval", {**inputs, "customer_name": "Six"}, user="u6")
    return five, six


def refused_as_not_in_run(response: Any, run_id: str, token: str) -> str:
    assert response.status_code == 422, response.content
    body = response.content.decode()
    assert token not in body
    error = response.json()["error"]
    assert error["code"] == "form_not_in_run"
    assert run_id in error["message"]
    return str(error["message"])


def test_a_token_of_another_run_s_form_is_refused_and_the_run_s_own_is_recorded_with_its_node(
    client: Client, simulator: Any, sim_app: Any, starters: Any, reviewer: User
) -> None:
    """GET form does not say which run a form is of: the run's snapshot does. A form of run
    Five attached to run Six would answer Five when decided on Six."""
    sim_app("refund-approval")
    five, six = five_and_six(simulator)
    tok5 = five.form("manager_approval")["form_token"]
    assert ingest(client, reviewer, workflow_run_id=five.workflow_run_id, user="u5").status_code
    response = ingest(
        client, reviewer, workflow_run_id=six.workflow_run_id, user="u6", form_token=tok5
    )
    message = refused_as_not_in_run(response, six.workflow_run_id, tok5)
    assert "none of the forms the run waits at" in message
    assert not Run.objects.filter(workflow_run_id=six.workflow_run_id).exists()
    assert not Form.objects.exists()
    assert not AuditEntry.objects.filter(verb__in=["form_captured", "form_ingested"]).exists()
    assert simulator.submit_count(five.form("manager_approval")["form_id"]) == 0
    # In Chinese too.
    response = ingest(
        client,
        reviewer,
        workflow_run_id=six.workflow_run_id,
        user="u6",
        form_token=tok5,
        HTTP_ACCEPT_LANGUAGE="zh-hans",
    )
    assert response.json()["error"]["message"].startswith("\u6b64")
    # Six's own token: recorded at once with Dify's form id and node (routed by it), no
    # follower needed.
    own = six.form("manager_approval")
    response = ingest(
        client,
        reviewer,
        workflow_run_id=six.workflow_run_id,
        user="u6",
        form_token=own["form_token"],
    )
    assert response.status_code == 201, response.content
    form = Form.objects.get(run__workflow_run_id=six.workflow_run_id)
    assert (form.form_id, form.node_id, form.node_title) == (
        own["form_id"],
        "manager_approval",
        own["node_title"],
    )
    assert form.form_token == own["form_token"] and "Six" in form.content


def test_a_token_of_another_run_s_form_is_refused_on_an_ingest_again(
    client: Client, simulator: Any, sim_app: Any, starters: Any, reviewer: User
) -> None:
    sim_app("refund-approval")
    five, six = five_and_six(simulator)
    tok5 = five.form("manager_approval")["form_token"]
    body = {"workflow_run_id": six.workflow_run_id, "user": "u6"}
    assert ingest(client, reviewer, **body).status_code == 201
    run = Run.objects.get()
    forms_before = set(Form.objects.values_list("pk", flat=True))
    response = ingest(client, reviewer, **body, form_token=tok5)
    refused_as_not_in_run(response, six.workflow_run_id, tok5)
    assert set(Form.objects.values_list("pk", flat=True)) == forms_before
    assert not Form.objects.filter(content__contains="Five").exists()
    assert not AuditEntry.objects.filter(verb="form_ingested").exists()
    assert simulator.submit_count(five.form("manager_approval")["form_id"]) == 0
    # Six's own token adds Six's form, with its node.
    own = six.form("manager_approval")
    response = ingest(client, reviewer, **body, form_token=own["form_token"])
    assert response.status_code == 200, response.content
    form = Form.objects.get(run=run, form_id=own["form_id"])
    assert form.node_id == "manager_approval" and form.status == "pending"


def test_a_token_on_a_run_that_is_not_paused_is_refused(
    client: Client, simulator: Any, sim_app: Any, starters: Any, reviewer: User
) -> None:
    sim_app("refund-approval")
    five, six = five_and_six(simulator)
    simulator.submit_elsewhere(six.form("manager_approval")["form_id"], "approve")
    simulator.wait_for_status(six.workflow_run_id, "succeeded")
    tok5 = five.form("manager_approval")["form_token"]
    # Even where Dify will not show the run's events (nothing else to check it by).
    for user in ("u6", "inbox-proxy"):
        response = ingest(
            client, reviewer, workflow_run_id=six.workflow_run_id, user=user, form_token=tok5
        )
        message = refused_as_not_in_run(response, six.workflow_run_id, tok5)
        assert "not waiting at a form (Dify says it is succeeded)" in message
    assert not Run.objects.exists() and not Form.objects.exists()
    assert simulator.submit_count(five.form("manager_approval")["form_id"]) == 0


def test_a_token_of_a_later_pause_is_found_where_dify_replays_the_run_s_log_from_its_start(
    client: Client, simulator: Any, sim_app: Any, starters: Any, reviewer: User
) -> None:
    """Newer builds replay the retained log: the first pause (settled) comes before the one
    the run waits at now. The check reads on past it."""
    sim_app("content-publish")
    simulator.set_options(retained_log=True)
    started = simulator.start_run("content-publish", user="crm-9")
    run_id = started.workflow_run_id
    simulator.submit_elsewhere(started.form("editor_review")["form_id"], "approve")

    def legal_form() -> dict[str, Any] | None:
        forms = simulator.run(run_id)["forms"]
        return next((f for f in forms if f["node_id"] == "legal_check"), None)

    legal = simulator.wait_for(legal_form)
    simulator.wait_for_status(run_id, "paused")
    body = {"app": "content-publish", "workflow_run_id": run_id, "user": "crm-9"}
    response = ingest(client, reviewer, **body, form_token=legal["form_token"])
    assert response.status_code == 201, response.content
    form = Form.objects.get()
    assert (form.form_id, form.node_id) == (legal["form_id"], "legal_check")
