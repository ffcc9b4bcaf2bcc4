"""Ingest: runs started directly against Dify, brought to the inbox with or without a token."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from inbox.capture import INGEST_FORM_PREFIX
from inbox.models import ApiToken, AuditEntry, Form, Run
from inbox.tasks import reconcile_runs
from tests.capture.conftest import FollowerThread, no_stream_left, pending, run_status, submit
from tests.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def ingest(client: Client, caller: User, **body: Any) -> Any:
    _token, raw = ApiToken.issue(caller)
    return client.post(
        "/api/v1/ingest",
        json.dumps({"app": "refund-approval", **body}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
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
