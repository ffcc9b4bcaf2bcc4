"""The runs JSON API: start, read, stop, ingest. Who may and may not, and the exact messages."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from inbox.models import ApiToken, AuditEntry, DifyApp, Form, Run
from inbox.runs import start_run
from inbox.simulator.scenarios import StartInput as SimStartInput
from inbox.simulator.testing import sample_inputs
from tests.capture import events as ev

pytestmark = pytest.mark.django_db


def bearer(user: User) -> dict[str, str]:
    _token, raw = ApiToken.issue(user)
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def post(client: Client, path: str, body: Any, user: User) -> Any:
    return client.post(path, json.dumps(body), content_type="application/json", **bearer(user))


def said(entry: AuditEntry) -> dict[str, Any]:
    """An entry's details but the token that made it (each `post` issues its own)."""
    return {k: v for k, v in entry.details.items() if k not in ("token_id", "token_prefix")}


def error(response: Any) -> tuple[int, str, str]:
    body = response.json()["error"]
    return response.status_code, body["code"], body["message"]


@pytest.fixture
def refunds(sim_app: Any, starters: Any) -> DifyApp:
    app: DifyApp = sim_app("refund-approval")
    return app


VALID = {"customer_name": "Ada", "order_id": "SO-1", "amount": 5, "reason": "Broken."}


def inputs(simulator: Any, **overrides: Any) -> dict[str, Any]:
    return {**sample_inputs(simulator.apps["refund-approval"]), **overrides}


# --- starting ---


def test_a_reviewer_starts_a_run_and_gets_its_dify_run_id(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    response = post(
        client, "/api/v1/runs", {"app": "refund-approval", "inputs": inputs(simulator)}, reviewer
    )
    assert response.status_code == 201, response.content
    body = response.json()
    run = Run.objects.get(public_id=body["id"])
    assert body["workflow_run_id"] == run.workflow_run_id != ""
    assert body["status"] == "running" and body["dify_user"] == "inbox-alice"
    assert body["started_by"] == "alice" and body["source"] == "api"
    assert body["url"].endswith(f"/runs/{run.public_id}/")
    # Dify knows the run under the same user; the follower takes it from here.
    assert simulator.run(run.workflow_run_id)["user"] == "inbox-alice"
    assert run.follow_wanted and run.follow_snapshot


def test_each_run_started_through_the_api_names_the_token_that_started_it(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    starts = []
    for _n in range(2):
        token, raw = ApiToken.issue(reviewer)
        body = {"app": "refund-approval", "inputs": inputs(simulator)}
        response = client.post(
            "/api/v1/runs",
            json.dumps(body),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {raw}",
        )
        assert response.status_code == 201
        starts.append((token, raw, response.json()["id"]))
    for token, raw, public_id in starts:
        entry = AuditEntry.objects.get(verb="run_started", details__public_id=public_id)
        assert entry.actor == reviewer
        assert entry.details["via"] == "api" and entry.details["token_id"] == token.pk
        assert entry.details["token_prefix"] == token.prefix
        assert raw not in json.dumps(entry.details)


def test_the_caller_may_choose_the_dify_user_once(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    body = post(
        client,
        "/api/v1/runs",
        {"app": "refund-approval", "inputs": inputs(simulator), "user": "crm-42"},
        reviewer,
    ).json()
    run = Run.objects.get(public_id=body["id"])
    assert run.dify_user == "crm-42" == simulator.run(run.workflow_run_id)["user"]


def test_a_chatflow_needs_its_message(
    client: Client, simulator: Any, sim_app: Any, starters: Any, reviewer: User
) -> None:
    sim_app("support-chat")
    response = post(client, "/api/v1/runs", {"app": "support-chat", "inputs": {}}, reviewer)
    assert error(response) == (400, "invalid_inputs", "query: This field is required.")
    response = post(
        client,
        "/api/v1/runs",
        {"app": "support-chat", "inputs": {}, "query": "Where is my parcel?"},
        reviewer,
    )
    assert response.status_code == 201
    run = Run.objects.get(public_id=response.json()["id"])
    assert run.query == "Where is my parcel?" and run.conversation_id
    # The conversation, to go on with it in Dify.
    assert response.json()["conversation_id"] == run.conversation_id


NOT_A_NUMBER = (
    '\'amount\' must be a number: a JSON number, or a string holding one, such as "130" or "12.5".'
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, (400, "invalid_param", "'app' is required: the name of a Dify app.")),
        (
            {"app": "nope"},
            (400, "unknown_app", "There is no active Dify app named 'nope'."),
        ),
        (
            {"app": "refund-approval", "inputs": []},
            (400, "invalid_param", "'inputs' must be an object."),
        ),
        (
            {"app": "refund-approval", "inputs": {}, "user": ""},
            (
                400,
                "invalid_param",
                "'user' is empty: leave it out, or send null, when there is none.",
            ),
        ),
        (
            {"app": "refund-approval", "inputs": {"colour": "red"}},
            (
                400,
                "invalid_inputs",
                "Unknown input 'colour'; this app takes: amount, channel, customer_name, "
                "order_id, reason, vip.",
            ),
        ),
        # A string that is no number and another JSON type: one problem, said one way (a
        # string of a number is taken, as Dify takes it).
        (
            {"app": "refund-approval", "inputs": {**VALID, "amount": "lots"}},
            (400, "invalid_inputs", NOT_A_NUMBER),
        ),
        (
            {"app": "refund-approval", "inputs": {**VALID, "amount": True}},
            (400, "invalid_inputs", NOT_A_NUMBER),
        ),
        # Nine characters that would be a million-digit integer: refused before converting.
        (
            {"app": "refund-approval", "inputs": {**VALID, "amount": "1e1000000"}},
            (400, "invalid_inputs", "amount: Enter a number smaller than 10^16."),
        ),
        (
            {"app": "refund-approval", "inputs": {**VALID, "amount": 10**16}},
            (400, "invalid_inputs", "amount: Enter a number smaller than 10^16."),
        ),
        (
            {"app": "refund-approval", "inputs": VALID, "query": "Refund it."},
            (
                400,
                "invalid_param",
                "'query' is for chatflow apps; refund-approval is a workflow and takes only "
                "'inputs'.",
            ),
        ),
        (
            {"app": "refund-approval", "inputs": {**VALID, "vip": "yes"}},
            (400, "invalid_inputs", "'vip' must be true or false."),
        ),
        (
            {"app": "refund-approval", "inputs": {"customer_name": 7}},
            (
                400,
                "invalid_inputs",
                "'customer_name' must be a string. order_id: This field is required. amount: "
                "This field is required. reason: This field is required.",
            ),
        ),
        # Every input's error at once: those of the wrong JSON type beside the form's own.
        (
            {
                "app": "refund-approval",
                "inputs": {**VALID, "amount": "abc", "channel": "fax", "vip": "yes"},
            },
            (
                400,
                "invalid_inputs",
                f"{NOT_A_NUMBER} channel: Select a valid choice. fax is not one of the "
                "available choices. 'vip' must be true or false.",
            ),
        ),
        (
            {
                "app": "refund-approval",
                "inputs": {
                    "customer_name": "",
                    "order_id": "SO-1",
                    "amount": 5,
                    "reason": "x",
                    "channel": "fax",
                },
            },
            (
                400,
                "invalid_inputs",
                "customer_name: This field is required. channel: Select a valid choice. fax is "
                "not one of the available choices.",
            ),
        ),
        (
            {"app": "refund-approval", "inputs": {"customer_name": "x" * 81}},
            (
                400,
                "invalid_inputs",
                "customer_name: Ensure this value has at most 80 characters (it has 81). "
                "order_id: This field is required. amount: This field is required. "
                "reason: This field is required.",
            ),
        ),
    ],
)
def test_start_validation_says_what_is_wrong(
    client: Client, refunds: DifyApp, reviewer: User, body: Any, expected: Any
) -> None:
    response = post(client, "/api/v1/runs", body, reviewer)
    assert error(response) == expected
    assert not Run.objects.exists()


def test_a_number_input_takes_a_string_of_one_and_says_anything_else_one_way(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    detail = 'Must be a number: a JSON number, or a string holding one, such as "130".'
    for value in ("abc", True, {"n": 1}, [130]):
        response = post(
            client,
            "/api/v1/runs",
            {"app": "refund-approval", "inputs": {**VALID, "amount": value}},
            reviewer,
        )
        assert error(response) == (400, "invalid_inputs", NOT_A_NUMBER), value
        assert response.json()["error"]["details"] == {"amount": [detail]}
    body = {"app": "refund-approval", "inputs": {**VALID, "amount": "130"}}
    response = post(client, "/api/v1/runs", body, reviewer)
    assert response.status_code == 201, response.content
    assert Run.objects.get().inputs["amount"] == 130


def test_a_query_for_a_workflow_is_refused_by_its_field(
    client: Client, refunds: DifyApp, reviewer: User
) -> None:
    body = {"app": "refund-approval", "inputs": VALID, "query": "Refund it."}
    response = post(client, "/api/v1/runs", body, reviewer)
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"query": ["Only a chatflow app takes a query."]}


def test_the_largest_number_allowed_reaches_dify_exactly(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    body = {"app": "refund-approval", "inputs": {**VALID, "amount": "9999999999999999.5e-1"}}
    response = post(client, "/api/v1/runs", body, reviewer)
    assert response.status_code == 201, response.content
    run = Run.objects.get()
    assert run.inputs["amount"] == 999999999999999.95
    assert simulator.run(run.workflow_run_id)["status"] in ("running", "paused")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"app": "refund-approval", "inputs": {"amount": 1' + b"0" * 5000 + b"}}",
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=["a 5001-digit integer", "arrays nested 100,000 deep"],
)
def test_json_python_will_not_read_is_a_400_not_a_crash(
    client: Client, refunds: DifyApp, reviewer: User, raw: bytes
) -> None:
    response = client.post("/api/v1/runs", raw, content_type="application/json", **bearer(reviewer))
    assert error(response) == (
        400,
        "invalid_json",
        "The request body holds a number too long or nesting too deep.",
    )
    assert not Run.objects.exists()


def test_an_unknown_address_and_an_oversized_body_are_answered_in_the_api_s_shape(
    client: Client, starters: Any, reviewer: User
) -> None:
    for path in ("/api/v1/nope", "/api/v1/forms/abc", "/api/v2/runs"):
        response = client.get(path, **bearer(reviewer))
        assert response["Content-Type"] == "application/json"
        assert error(response) == (404, "not_found", f"No such API address: GET {path}")
    huge = json.dumps({"app": "refund-approval", "inputs": {"note": "x" * (6 * 1024 * 1024)}})
    response = client.post(
        "/api/v1/runs", huge, content_type="application/json", **bearer(reviewer)
    )
    assert error(response) == (
        413,
        "request_too_large",
        "The request body is over 5242880 bytes; files go to the upload call, one at a time.",
    )


def test_text_is_sent_as_typed_and_a_message_of_spaces_is_no_message(
    client: Client, simulator: Any, sim_app: Any, starters: Any, reviewer: User
) -> None:
    sim_app("refund-approval")
    sim_app("support-chat")
    typed = {**VALID, "customer_name": "  Ada ", "reason": "    indented\n  and kept  "}
    response = post(client, "/api/v1/runs", {"app": "refund-approval", "inputs": typed}, reviewer)
    assert response.status_code == 201, response.content
    run = Run.objects.get()
    assert run.inputs["customer_name"] == "  Ada " and run.inputs["reason"] == typed["reason"]
    assert simulator.run(run.workflow_run_id)["status"] in ("running", "paused")
    blank = post(
        client, "/api/v1/runs", {"app": "support-chat", "inputs": {}, "query": "  \n "}, reviewer
    )
    assert error(blank) == (400, "invalid_inputs", "query: This field is required.")


@contextlib.contextmanager
def added_inputs(simulator: Any, app_name: str, *extra: SimStartInput) -> Iterator[None]:
    """The simulator's app with more start inputs, for the time of a test."""
    app = simulator.apps[app_name]

    def use(spec: Any) -> None:
        simulator.sim.apps[spec.name] = simulator.sim.apps_by_key[spec.api_key] = spec

    simulator.call(lambda: use(dataclasses.replace(app, inputs=(*app.inputs, *extra))))
    try:
        yield
    finally:
        simulator.call(lambda: use(app))


@pytest.fixture
def more_inputs(simulator: Any) -> Iterator[None]:
    """refund-approval with two more start inputs: a checkbox ticked by default, and a JSON
    object, which the inbox cannot send (Dify's start node has it; our form has no field)."""
    with added_inputs(
        simulator,
        "refund-approval",
        SimStartInput("notify", "checkbox", "Notify the customer", False, default=True),
        SimStartInput("meta", "json_object", "Metadata", False),
    ):
        yield


def test_a_chatflow_input_named_query_and_the_message_each_keep_their_error(
    client: Client, simulator: Any, sim_app: Any, starters: Any, reviewer: User
) -> None:
    sim_app("support-chat")
    with added_inputs(
        simulator, "support-chat", SimStartInput("query", "text-input", "Search terms", True)
    ):
        response = post(client, "/api/v1/runs", {"app": "support-chat", "inputs": {}}, reviewer)
    assert response.json()["error"]["details"]["query"] == [
        "This field is required.",
        "This field is required.",
    ]


def test_a_checkbox_left_out_is_its_default_as_in_dify(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User, more_inputs: None
) -> None:
    response = post(client, "/api/v1/runs", {"app": "refund-approval", "inputs": VALID}, reviewer)
    assert response.status_code == 201, response.content
    run = Run.objects.get()
    assert run.inputs["notify"] is True and run.inputs["vip"] is False
    unticked = {**VALID, "notify": False}
    response = post(
        client, "/api/v1/runs", {"app": "refund-approval", "inputs": unticked}, reviewer
    )
    assert Run.objects.get(public_id=response.json()["id"]).inputs["notify"] is False


def test_a_value_for_an_input_the_inbox_cannot_send_is_refused_not_dropped(
    client: Client, refunds: DifyApp, reviewer: User, more_inputs: None
) -> None:
    body = {"app": "refund-approval", "inputs": {**VALID, "meta": {"source": "crm"}}}
    response = post(client, "/api/v1/runs", body, reviewer)
    assert error(response) == (
        400,
        "invalid_inputs",
        "'meta' is a json_object input, which the inbox cannot send; start this run in Dify "
        "instead.",
    )
    assert response.json()["error"]["details"] == {
        "meta": ["The inbox cannot send json_object inputs."]
    }
    assert not Run.objects.exists()


def test_validation_details_are_keyed_by_variable(
    client: Client, refunds: DifyApp, reviewer: User
) -> None:
    response = post(client, "/api/v1/runs", {"app": "refund-approval", "inputs": {}}, reviewer)
    details = response.json()["error"]["details"]
    assert set(details) == {"customer_name", "order_id", "amount", "reason"}


def test_someone_without_the_permission_may_not_start_or_ingest(
    client: Client, refunds: DifyApp, outsider: User, reviewers_group: Any
) -> None:
    for path in ("/api/v1/runs", "/api/v1/ingest"):
        response = post(client, path, {"app": "refund-approval"}, outsider)
        assert error(response) == (403, "forbidden", "You may not start or ingest runs.")
    assert not Run.objects.exists()
    # Nor does being staff alone: it opens the admin, not Dify's apps.
    outsider.is_staff = True
    outsider.save(update_fields=["is_staff"])
    for path in ("/api/v1/runs", "/api/v1/ingest"):
        response = post(client, path, {"app": "refund-approval"}, outsider)
        assert error(response) == (403, "forbidden", "You may not start or ingest runs.")
    client.force_login(outsider)
    assert client.get(f"/apps/{refunds.pk}/start/").status_code == 403
    assert not Run.objects.exists()


def test_a_start_sent_again_under_its_submission_key_is_the_same_run(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User, other_reviewer: User
) -> None:
    body = {"app": "refund-approval", "inputs": inputs(simulator), "submission_key": "order-7"}
    first = post(client, "/api/v1/runs", body, reviewer)
    assert first.status_code == 201, first.content
    # A retry (the first answer lost on the way back): the same run, 200, nothing asked of Dify.
    calls = simulator.request_count("parameters")
    again = post(client, "/api/v1/runs", body, reviewer)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert simulator.request_count("workflows_run") == 1 and Run.objects.count() == 1
    assert simulator.request_count("parameters") == calls
    # The key with other inputs is not that start: refused rather than read as started.
    other = {**body, "inputs": inputs(simulator, customer_name="Grace")}
    assert error(post(client, "/api/v1/runs", other, reviewer)) == (
        409,
        "submission_key_reused",
        "This submission_key was already used to start a run with another app, inputs, query "
        "or user; send a new key for another start.",
    )
    assert error(post(client, "/api/v1/runs", {**body, "user": "crm-9"}, reviewer))[1] == (
        "submission_key_reused"
    )
    # Keys are each caller's own: another caller's "order-7" is another start.
    theirs = post(client, "/api/v1/runs", body, other_reviewer)
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
    assert simulator.request_count("workflows_run") == Run.objects.count() == 2
    for key in (7, "k" * 65, ""):
        assert error(post(client, "/api/v1/runs", {**body, "submission_key": key}, reviewer)) == (
            400,
            "invalid_param",
            "'submission_key' must be a string of 1 to 64 characters (any characters), or be "
            "left out.",
        )
    # An empty key is not "no key": two calls with it start nothing, rather than two runs.
    assert simulator.request_count("workflows_run") == Run.objects.count() == 2


def test_a_start_refused_by_dify_lets_its_key_go_and_a_lost_answer_keeps_it(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    body = {"app": "refund-approval", "inputs": inputs(simulator), "submission_key": "s-1"}
    simulator.add_fault("status", "workflows_run", status=503)
    assert error(post(client, "/api/v1/runs", body, reviewer))[:2] == (502, "dify_error")
    # Dify started nothing: the retry under the same key is tried again, and starts the run.
    retried = post(client, "/api/v1/runs", body, reviewer)
    assert retried.status_code == 201 and retried.json()["status"] != "failed"
    assert Run.objects.get(status="failed").submission_key == ""
    # An answer lost after Dify took the start: it may be running there. The retry says so again,
    # naming the same kept run, and sends Dify nothing.
    body = {**body, "submission_key": "s-2"}
    simulator.add_fault("drop_stream", "workflows_run", after_events=0)
    lost = post(client, "/api/v1/runs", body, reviewer)
    again = post(client, "/api/v1/runs", body, reviewer)
    assert error(lost)[:2] == error(again)[:2] == (504, "dify_no_answer")
    assert error(again)[2] == (
        "Dify did not answer when this start was first sent. It may have started the run "
        "anyway: check in Dify before starting it again."
    )
    assert lost.json()["error"]["details"]["run"] == again.json()["error"]["details"]["run"]
    assert simulator.request_count("workflows_run") == 3


def test_a_start_still_waiting_for_dify_is_said_to_be_under_way(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    from inbox.api import _scoped_key
    from inbox.runs import start_digest

    body = {"app": "refund-approval", "inputs": inputs(simulator), "submission_key": "slow"}
    # As the row of a start whose first answer has not come back from Dify yet.
    Run.objects.create(
        app=refunds,
        dify_user="inbox-alice",
        status=Run.Status.STARTING,
        submission_key=_scoped_key(reviewer, "slow"),
        submission_digest=start_digest(refunds.pk, body["inputs"], "", "inbox-alice"),
    )
    response = post(client, "/api/v1/runs", body, reviewer)
    assert error(response) == (
        409,
        "start_in_progress",
        "The start sent under this submission_key is still waiting for Dify; ask again in a "
        "moment.",
    )
    assert response["Retry-After"] == "1"
    assert simulator.request_count("workflows_run") == 0
    # Still starting long after any start is answered: its sender ended mid-start, and whether
    # Dify started it is not known. Said so, rather than "ask again in a moment" for ever.
    Run.objects.update(created_at=timezone.now() - dt.timedelta(minutes=3))
    assert error(post(client, "/api/v1/runs", body, reviewer))[:2] == (504, "dify_no_answer")
    assert simulator.request_count("workflows_run") == 0


@pytest.mark.django_db(transaction=True)
def test_two_starts_under_one_key_at_once_start_one_run(
    simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    import threading

    body = {"app": "refund-approval", "inputs": inputs(simulator), "submission_key": "twice"}
    # Dify is slow to take the start, so the second arrives while the first waits for it.
    simulator.add_fault("delay", "workflows_run", delay=1.0)
    answers: list[Any] = []
    barrier = threading.Barrier(2)

    def send() -> None:
        from django.db import connection

        barrier.wait()
        try:
            answers.append(post(Client(), "/api/v1/runs", body, reviewer))
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses in ([201, 409], [200, 201]), [a.content for a in answers]
    assert simulator.request_count("workflows_run") == 1 and Run.objects.count() == 1


def test_a_key_taken_between_the_check_and_the_insert_starts_nothing(
    simulator: Any, refunds: DifyApp, reviewer: User, monkeypatch: Any
) -> None:
    from inbox import runs

    held = Run.objects.create(
        app=refunds,
        dify_user="u",
        status=Run.Status.RUNNING,
        workflow_run_id="w-1",
        submission_key="api-held",
        submission_digest="d",
    )
    real = runs.started_under
    calls: list[str] = []

    def late(key: str, digest: str) -> None:
        # The first look finds nothing (the other start's row not in yet); the second, after
        # the insert met the key, finds it.
        calls.append(key)
        if len(calls) > 1:
            real(key, digest)

    monkeypatch.setattr(runs, "started_under", late)
    with pytest.raises(runs.SameStart) as same:
        runs.start_run(
            refunds, inputs={}, dify_user="u", submission_key="api-held", submission_digest="d"
        )
    assert same.value.run == held and same.value.same
    assert simulator.request_count("workflows_run") == 0 and Run.objects.count() == 1


def test_a_key_let_go_between_the_insert_and_the_second_look_is_tried_again(
    simulator: Any, refunds: DifyApp, reviewer: User, monkeypatch: Any
) -> None:
    from inbox import runs

    failing = Run.objects.create(
        app=refunds,
        dify_user="u",
        status=Run.Status.STARTING,
        submission_key="api-racing",
        submission_digest="d",
    )
    real = runs.started_under
    calls: list[str] = []

    def racing(key: str, digest: str) -> None:
        # First look: the other start holds the key, not yet seen. Its insert meets the key;
        # by the second look the other start has failed and let the key go.
        calls.append(key)
        if len(calls) == 2:
            Run.objects.filter(pk=failing.pk).update(status="failed", submission_key="")
        if len(calls) > 1:
            real(key, digest)

    monkeypatch.setattr(runs, "started_under", racing)
    run = runs.start_run(
        refunds,
        inputs=inputs(simulator),
        dify_user="u",
        submission_key="api-racing",
        submission_digest="d",
    )
    # Not a 500: the key was free again, and this start took it and went to Dify.
    assert run.submission_key == "api-racing" and run.workflow_run_id
    assert simulator.request_count("workflows_run") == 1 and len(calls) == 2


def test_an_app_whose_key_this_process_cannot_read_starts_nothing_and_keeps_no_run(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User, settings: Any
) -> None:
    from cryptography.fernet import Fernet
    from django.core.cache import cache

    from inbox.runs import app_parameters

    body = {"app": "refund-approval", "inputs": inputs(simulator)}
    # Its parameters read while the key was readable (cached), then the key saved with an
    # encryption key this process does not have (one dropped before its rotation).
    app_parameters(refunds)
    before = list(settings.INBOX_ENCRYPTION_KEYS)
    settings.INBOX_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), *before]
    refunds.save()
    settings.INBOX_ENCRYPTION_KEYS = before
    expected = (
        503,
        "api_key_unreadable",
        "The API key of the app 'refund-approval' cannot be decrypted with "
        "INBOX_ENCRYPTION_KEYS: put back the key it was encrypted with, or enter the API key "
        "again in the admin.",
    )
    assert error(post(client, "/api/v1/runs", body, reviewer)) == expected
    # Its parameters not cached: refused as early, with the same words.
    cache.clear()
    response = post(client, "/api/v1/runs", body, reviewer)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "api_key_unreadable"
    assert not Run.objects.exists() and simulator.request_count("workflows_run") == 0


def test_a_dify_refusal_is_passed_on_and_recorded(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    simulator.add_fault("status", "workflows_run", status=503)
    response = post(
        client, "/api/v1/runs", {"app": "refund-approval", "inputs": inputs(simulator)}, reviewer
    )
    # The inbox's own code; Dify's status and code beside it, with the run kept for the record.
    assert error(response) == (502, "dify_error", "Service Unavailable")
    run = Run.objects.get()
    assert response.json()["error"]["details"] == {
        "run": str(run.public_id),
        "dify_status": 503,
        "dify_code": "service_unavailable",
    }
    assert run.status == "failed" and run.error == "Service Unavailable" and not run.follow_wanted
    # The failed run is the caller's to read.
    detail = client.get(f"/api/v1/runs/{run.public_id}", **bearer(reviewer))
    assert detail.status_code == 200 and detail.json()["status"] == "failed"
    # It ended when Dify refused it, as any failed run has an end.
    assert run.finished_at is not None and detail.json()["finished_at"] is not None
    # Dify never named it: no id, rather than an empty one.
    assert detail.json()["workflow_run_id"] is None


def test_a_chat_app_set_up_as_a_chatflow_is_said_to_be_one(
    client: Client, sim_app: Any, starters: Any, reviewer: User
) -> None:
    app = sim_app("faq-bot")
    DifyApp.objects.filter(pk=app.pk).update(mode="chatflow")
    response = post(client, "/api/v1/runs", {"app": "faq-bot", "query": "Hi"}, reviewer)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "dify_error"
    assert error["message"].startswith("Dify answered as a chat app with no workflow")
    assert Run.objects.get(pk__isnull=False).status == "failed"


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (401, "unauthorized", (502, "dify_error")),
        (404, "not_found", (502, "dify_error")),
        (400, "invalid_param", (400, "dify_rejected_inputs")),
        # Its model provider not set up: no input the caller could change would start the run.
        (400, "provider_not_initialize", (502, "dify_error")),
        (400, "provider_quota_exceeded", (502, "dify_error")),
    ],
)
def test_dify_s_codes_never_pass_for_the_inbox_s_own(
    client: Client,
    simulator: Any,
    refunds: DifyApp,
    reviewer: User,
    status: int,
    code: str,
    expected: tuple[int, str],
) -> None:
    # A 401 from Dify is not the caller's token refused, nor its 404 an address of ours.
    simulator.add_fault("status", "workflows_run", status=status, code=code, message="No.")
    response = post(
        client, "/api/v1/runs", {"app": "refund-approval", "inputs": inputs(simulator)}, reviewer
    )
    assert (response.status_code, response.json()["error"]["code"]) == expected
    details = response.json()["error"]["details"]
    assert (details["dify_status"], details["dify_code"]) == (status, code)


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (401, "unauthorized", "Access token is invalid"),
        (400, "app_unavailable", "App unavailable, please check your app configurations."),
    ],
)
def test_dify_refusing_the_app_s_parameters_marks_the_app_and_a_start_it_takes_clears_it(
    client: Client,
    simulator: Any,
    refunds: DifyApp,
    reviewer: User,
    status: int,
    code: str,
    message: str,
) -> None:
    # A revoked key, or nothing published: Dify refuses the parameters a start reads first.
    simulator.add_fault("status", "parameters", status=status, code=code, message=message)
    body = {"app": "refund-approval", "inputs": inputs(simulator)}
    response = post(client, "/api/v1/runs", body, reviewer)
    refusal = f"{status} {code}: {message}"
    assert error(response) == (
        502,
        "dify_error",
        f"Dify's parameters could not be read: {refusal}",
    )
    assert response.json()["error"]["details"] == {"dify_status": status, "dify_code": code}
    assert not Run.objects.exists()  # nothing was started
    refunds.refresh_from_db()
    assert (refunds.refusal, refunds.refusal_status) == (refusal, status)
    assert said(AuditEntry.objects.get(verb="app_refused")) == {
        "refusal": refusal,
        "source": "start",
        "via": "api",
    }
    # Put right in Dify: the next start goes through, and Dify taking it clears the mark.
    assert post(client, "/api/v1/runs", body, reviewer).status_code == 201
    refunds.refresh_from_db()
    assert refunds.refused_at is None
    assert said(AuditEntry.objects.get(verb="app_accepted")) == {"source": "start", "via": "api"}


def test_dify_busy_or_away_while_the_parameters_are_read_is_said_as_for_a_start(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    from django.core.cache import cache

    body = {"app": "refund-approval", "inputs": inputs(simulator)}
    cache.clear()  # the parameters are read anew
    # (Every time: the client tries a GET again before it gives up.)
    simulator.add_fault("status", "parameters", status=429, retry_after=7, times=None)
    response = post(client, "/api/v1/runs", body, reviewer)
    assert response.status_code == 429 and response["Retry-After"] == "7"
    assert response.json()["error"]["code"] == "rate_limited"
    simulator.clear_faults()
    cache.clear()
    simulator.add_fault("status", "parameters", status=503, times=None)
    response = post(client, "/api/v1/runs", body, reviewer)
    assert error(response)[:2] == (502, "dify_error")
    assert response.json()["error"]["details"]["dify_status"] == 503
    assert not Run.objects.exists()


def test_dify_rate_limiting_a_start_is_passed_on_with_its_retry_after(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    simulator.add_fault("status", "workflows_run", status=429, retry_after=7)
    response = post(
        client, "/api/v1/runs", {"app": "refund-approval", "inputs": inputs(simulator)}, reviewer
    )
    assert response.status_code == 429 and response["Retry-After"] == "7"
    assert Run.objects.get().status == "failed"
    # Once Dify lets it through, the same call starts the run.
    response = post(
        client, "/api/v1/runs", {"app": "refund-approval", "inputs": inputs(simulator)}, reviewer
    )
    assert response.status_code == 201 and "Retry-After" not in response


# --- reading and stopping ---


@pytest.fixture
def paused_run(simulator: Any, refunds: DifyApp, reviewer: User) -> Run:
    run = start_run(refunds, inputs=inputs(simulator), dify_user="inbox-alice", started_by=reviewer)
    # As the follower would record it.
    snapshot = simulator.run(run.workflow_run_id)
    (sim_form,) = snapshot["forms"]
    data = ev.form_data(sim_form["form_id"], sim_form["form_token"], node_id="manager_approval")
    run.apply_events([ev.event("human_input_required", data), ev.paused(data)])
    return run


def test_the_run_detail_has_forms_and_never_the_token(
    client: Client, paused_run: Run, reviewer: User
) -> None:
    response = client.get(f"/api/v1/runs/{paused_run.public_id}", **bearer(reviewer))
    body = response.json()
    form = Form.objects.get()
    assert body["status"] == "paused"
    assert [f["id"] for f in body["forms"]] == [str(form.public_id)]
    assert body["forms"][0]["answerable"] is True
    assert body["forms"][0]["url"].endswith(f"/forms/{form.public_id}/")
    assert form.form_token and form.form_token not in response.content.decode()
    assert "form_token" not in response.content.decode()
    assert {item["event"] for item in body["timeline"]} >= {"human_input_required"}


def test_the_run_detail_lists_a_form_answered_once_as_its_page_does(
    client: Client, paused_run: Run, reviewer: User
) -> None:
    form = Form.objects.get()
    paused_run.apply_events([ev.filled(node_id="manager_approval", action="approve")])
    # The run waited five minutes for the answer.
    run = Run.objects.get(pk=paused_run.pk)
    [answer] = [i for i in run.timeline if i["event"] == "human_input_form_filled"]
    [pause] = [i for i in run.timeline if i["event"] == "human_input_required"]
    pause["at"] = (dt.datetime.fromisoformat(answer["at"]) - dt.timedelta(minutes=5)).isoformat()
    Run.objects.filter(pk=run.pk).update(timeline=run.timeline)
    body = client.get(f"/api/v1/runs/{run.public_id}", **bearer(reviewer)).json()
    entries = [item for item in body["timeline"] if item.get("node_id") == "manager_approval"]
    # One entry for the form, as on the run page: its answer, with the outcome and the action,
    # when the run paused for it and how long it waited; the fields clients read are kept.
    assert len(entries) == 1, body["timeline"]
    [entry] = entries
    assert entry["event"] == "human_input_form_filled"
    assert entry["status"] == "answered"
    assert entry["action"] == "Approve"
    assert entry["form"] == str(form.public_id)
    assert entry["title"] and entry["at"] == answer["at"]
    assert entry["paused_at"] == pause["at"]
    assert entry["waited_seconds"] == 300
    assert "key" not in entry
    # The page shows the same entries.
    client.force_login(reviewer)
    page = client.get(f"/runs/{run.public_id}/")
    assert page.content.decode().count('class="tl-answered"') == 1
    assert 'class="tl-paused"' not in page.content.decode()


def test_who_may_see_a_run(
    client: Client,
    paused_run: Run,
    other_reviewer: User,
    outsider: User,
    admin_user: User,
) -> None:
    path = f"/api/v1/runs/{paused_run.public_id}"
    # Bob sees it through its form, routed to the reviewers; an outsider does not.
    assert client.get(path, **bearer(other_reviewer)).status_code == 200
    assert client.get(path, **bearer(admin_user)).status_code == 200
    response = client.get(path, **bearer(outsider))
    assert error(response) == (404, "not_found", "No such run, or you may not see it.")


def test_a_run_without_forms_is_seen_by_who_started_it_only(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User, other_reviewer: User
) -> None:
    run = start_run(refunds, inputs=inputs(simulator), dify_user="inbox-alice", started_by=reviewer)
    path = f"/api/v1/runs/{run.public_id}"
    assert client.get(path, **bearer(reviewer)).status_code == 200
    assert client.get(path, **bearer(other_reviewer)).status_code == 404


def test_stopping_is_for_who_started_the_run_and_not_at_a_form(
    client: Client, paused_run: Run, reviewer: User, other_reviewer: User
) -> None:
    path = f"/api/v1/runs/{paused_run.public_id}/stop"
    response = post(client, path, {}, other_reviewer)
    assert error(response) == (
        403,
        "forbidden",
        "Only who started a run, or an administrator, may stop it.",
    )
    response = post(client, path, {}, reviewer)
    assert error(response) == (
        409,
        "not_stoppable",
        "This run is waiting at a form, where Dify cannot stop it. Answer the form, or let it "
        "expire.",
    )


def test_stopping_a_working_run(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    simulator.set_options(time_scale=30.0)
    run = start_run(refunds, inputs=inputs(simulator), dify_user="inbox-alice", started_by=reviewer)
    response = post(client, f"/api/v1/runs/{run.public_id}/stop", {}, reviewer)
    assert response.status_code == 202
    # Which token asked is in the trail.
    stopped = AuditEntry.objects.get(verb="run_stop_requested")
    assert stopped.details["via"] == "api"
    assert stopped.details["token_id"] == ApiToken.objects.get(user=reviewer).pk
    simulator.wait_for_status(run.workflow_run_id, "stopped")
    run.refresh_from_db()
    assert run.follow_wanted  # the follower records the end


def test_stopping_takes_no_fields_and_passes_dify_s_refusal_on(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    simulator.set_options(time_scale=30.0)
    run = start_run(refunds, inputs=inputs(simulator), dify_user="inbox-alice", started_by=reviewer)
    path = f"/api/v1/runs/{run.public_id}/stop"
    # A reason or "force" would read as honoured: refused by name.
    assert error(post(client, path, {"force": True}, reviewer)) == (
        400,
        "invalid_param",
        "Unknown field 'force'; this call takes none.",
    )
    simulator.add_fault("status", "workflow_stop", status=503)
    response = post(client, path, {}, reviewer)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "dify_error"
    assert response.json()["error"]["details"] == {
        "dify_status": 503,
        "dify_code": "service_unavailable",
    }


def test_a_dify_user_is_taken_exactly_as_sent(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    for path, body in (
        (
            "/api/v1/runs",
            {"app": "refund-approval", "inputs": inputs(simulator), "user": " crm-7 "},
        ),
        ("/api/v1/ingest", {"app": "refund-approval", "workflow_run_id": "R1", "user": "crm-7 "}),
    ):
        status, code, message = error(post(client, path, body, reviewer))
        assert (status, code) == (400, "invalid_param") and "white space" in message, message
    assert not Run.objects.exists()


# --- ingest ---


def test_ingest_validation(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    cases = [
        (
            {"app": "refund-approval", "user": "u"},
            (400, "invalid_param", "'workflow_run_id' is required: the run id Dify gave the run."),
        ),
        (
            {"app": "refund-approval", "workflow_run_id": "R1"},
            (400, "invalid_param", "'user' is required: the Dify user that started the run."),
        ),
        (
            {"app": "refund-approval", "workflow_run_id": "R1", "user": "u", "form_token": 5},
            (400, "invalid_param", "'form_token' must be a string, not a number."),
        ),
        (
            {"app": "refund-approval", "workflow_run_id": "no-such-run", "user": "u"},
            (400, "run_not_found", "Dify knows no run no-such-run in the app refund-approval."),
        ),
    ]
    for body, expected in cases:
        assert error(post(client, "/api/v1/ingest", body, reviewer)) == expected
    started = simulator.start_run("refund-approval", user="crm-7")
    response = post(
        client,
        "/api/v1/ingest",
        {
            "app": "refund-approval",
            "workflow_run_id": started.workflow_run_id,
            "user": "crm-7",
            "form_token": "not-a-token",
        },
        reviewer,
    )
    assert error(response) == (
        400,
        "form_not_found",
        "Dify does not know this form token in the app refund-approval.",
    )
    assert not Run.objects.exists()


@pytest.mark.parametrize(
    ("fields", "field", "message", "detail"),
    [
        ({"app": 5}, "app", "'app' must be a string, not a number.", "Must be a string."),
        (
            {"app": float("nan")},
            "app",
            "'app' must be a string, not a number.",
            "Must be a string.",
        ),
        ({"app": ""}, "app", "'app' is empty.", "Must not be empty."),
        (
            {"app": " refund-approval"},
            "app",
            "'app' starts or ends with white space; Dify compares it exactly. Send it without.",
            "Starts or ends with white space.",
        ),
        (
            {"user": "u" * 300},
            "user",
            "'user' is too long: 300 characters, at most 255.",
            "At most 255 characters.",
        ),
        (
            {"workflow_run_id": "a" * 100000},
            "workflow_run_id",
            "'workflow_run_id' is too long: 100000 characters, at most 64.",
            "At most 64 characters.",
        ),
        (
            {"workflow_run_id": " abc "},
            "workflow_run_id",
            "'workflow_run_id' starts or ends with white space; Dify compares it exactly. Send "
            "it without.",
            "Starts or ends with white space.",
        ),
        (
            {"form_token": "t" * 600},
            "form_token",
            "'form_token' is too long: 600 characters, at most 512.",
            "At most 512 characters.",
        ),
        (
            {"form_token": False},
            "form_token",
            "'form_token' must be a string, not true/false.",
            "Must be a string.",
        ),
        (
            {"form_token": 0},
            "form_token",
            "'form_token' must be a string, not a number.",
            "Must be a string.",
        ),
        (
            {"form_token": []},
            "form_token",
            "'form_token' must be a string, not an array.",
            "Must be a string.",
        ),
        (
            {"form_token": ""},
            "form_token",
            "'form_token' is empty: leave it out, or send null, when there is none.",
            "Must not be empty.",
        ),
        *[
            (
                {"workflow_run_id": bad},
                "workflow_run_id",
                "'workflow_run_id' is not a Dify run id: Dify's are UUIDs, of letters, digits "
                "and dashes.",
                "Not a Dify run id.",
            )
            for bad in (".", "..", "a/b", "a b", "a?b", "a%2Fb", "\u00e9t\u00e9")
        ],
    ],
)
def test_ingest_says_which_field_is_wrong_and_how(
    client: Client,
    simulator: Any,
    refunds: DifyApp,
    reviewer: User,
    fields: dict[str, Any],
    field: str,
    message: str,
    detail: str,
) -> None:
    body = {"app": "refund-approval", "workflow_run_id": "R1", "user": "u", **fields}
    response = post(client, "/api/v1/ingest", body, reviewer)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "invalid_param",
        "message": message,
        "details": {field: [detail]},
    }
    # Nothing was asked of Dify.
    assert not simulator.exchanges("workflow_run_detail")
    assert not Run.objects.exists()


def test_ingesting_the_same_run_twice_changes_nothing(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    started = simulator.start_run("refund-approval", user="crm-7")
    body = {"app": "refund-approval", "workflow_run_id": started.workflow_run_id, "user": "crm-7"}
    first = post(client, "/api/v1/ingest", body, reviewer)
    assert first.status_code == 201
    run = Run.objects.get()
    assert (run.status, run.dify_user, run.source) == ("paused", "crm-7", "ingest")
    assert run.follow_wanted and run.follow_snapshot
    before = Run.objects.values().get()
    second = post(client, "/api/v1/ingest", body, reviewer)
    assert second.status_code == 200 and second.json()["id"] == first.json()["id"]
    assert Run.objects.values().get() == before
    other_user = post(client, "/api/v1/ingest", {**body, "user": "crm-8"}, reviewer)
    assert error(other_user) == (
        409,
        "conflict",
        "This run is already recorded with another Dify user.",
    )


def test_a_select_whose_options_are_not_a_list_offers_no_choice_rather_than_failing() -> None:
    from inbox.runs import StartInput

    item = {"select": {"variable": "tier", "label": "Tier", "required": True, "options": 7}}
    spec = StartInput.from_item(item)
    assert spec is not None and spec.options == ()


def test_a_run_lists_forms_the_caller_may_not_open_without_their_address(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User, admin_user: User
) -> None:
    from inbox.models import Route

    # The approval goes to the administrator alone; alice started the run and sees it.
    route = Route.objects.create(app=refunds, node="manager_approval", name="ops", reminders="")
    route.users.add(admin_user)
    run = start_run(refunds, inputs=inputs(simulator), dify_user="inbox-alice", started_by=reviewer)
    (sim_form,) = simulator.run(run.workflow_run_id)["forms"]
    data = ev.form_data(sim_form["form_id"], sim_form["form_token"], node_id="manager_approval")
    run.apply_events([ev.event("human_input_required", data), ev.paused(data)])
    body = client.get(f"/api/v1/runs/{run.public_id}", **bearer(reviewer)).json()
    [entry] = body["forms"]
    # Nor does the timeline name it.
    form_id = str(Form.objects.get(run=run).public_id)
    assert form_id not in json.dumps(body)
    assert (entry["visible"], entry["id"], entry["url"], entry["answerable"]) == (
        False,
        None,
        None,
        False,
    )
    assert entry["status"] == "pending"
    [entry] = client.get(f"/api/v1/runs/{run.public_id}", **bearer(admin_user)).json()["forms"]
    assert entry["visible"] and entry["answerable"] and entry["id"]


def test_dify_busy_is_a_429_to_wait_out_for_uploads_ingest_and_stop(
    client: Client, simulator: Any, paused_run: Run, refunds: DifyApp, reviewer: User
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    form = Form.objects.get()
    # The form takes a document, as claim-review's do.
    form.definition = {
        **form.definition,
        "inputs": [
            {
                "type": "file",
                "output_variable_name": "attachment",
                "allowed_file_types": ["document"],
                "allowed_file_extensions": [],
                "allowed_file_upload_methods": ["local_file"],
            }
        ],
    }
    form.save(update_fields=["definition"])
    simulator.add_fault("status", "files_upload", status=429, retry_after=60)
    response = client.post(
        f"/api/v1/forms/{form.public_id}/files",
        {
            "input": "attachment",
            "file": SimpleUploadedFile("r.pdf", b"%PDF-1.4", "application/pdf"),
        },
        **bearer(reviewer),
    )
    assert (response.status_code, response["Retry-After"]) == (429, "60")
    assert response.json()["error"]["code"] == "rate_limited"
    # Dify refusing the app's key is not the file's fault either.
    simulator.add_fault("status", "files_upload", status=401, code="unauthorized")
    response = client.post(
        f"/api/v1/forms/{form.public_id}/files",
        {
            "input": "attachment",
            "file": SimpleUploadedFile("r.pdf", b"%PDF-1.4", "application/pdf"),
        },
        **bearer(reviewer),
    )
    assert error(response)[:2] == (502, "dify_error")

    started = simulator.start_run("refund-approval", user="crm-7")
    simulator.add_fault("status", "workflow_run_detail", status=429, retry_after=60)
    body = {"app": "refund-approval", "workflow_run_id": started.workflow_run_id, "user": "crm-7"}
    response = post(client, "/api/v1/ingest", body, reviewer)
    assert (response.status_code, response["Retry-After"]) == (429, "60")
    assert response.json()["error"]["code"] == "rate_limited"
    # Not Dify "unreachable" when it answers with a refusal.
    simulator.add_fault("status", "workflow_run_detail", status=401, code="unauthorized")
    response = post(client, "/api/v1/ingest", body, reviewer)
    assert error(response)[:2] == (502, "dify_error")
    assert "could not be reached" not in response.json()["error"]["message"]


def test_the_runs_list_shows_a_start_dify_did_not_take(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User, other_reviewer: User
) -> None:
    started = start_run(
        refunds, inputs=inputs(simulator), dify_user="inbox-alice", started_by=reviewer
    )
    # A start Dify did not take (or whose answer was lost, a 504): its error names the run
    # kept for the record, which the list shows beside the others.
    simulator.add_fault("status", "workflows_run", status=503)
    response = post(
        client, "/api/v1/runs", {"app": "refund-approval", "inputs": inputs(simulator)}, reviewer
    )
    assert response.status_code == 502
    lost = response.json()["error"]["details"]["run"]
    body = client.get("/api/v1/runs", **bearer(reviewer)).json()
    assert [r["id"] for r in body["results"]] == [lost, str(started.public_id)]
    assert body["results"][0]["status"] == "failed" and body["results"][0]["error"]
    assert body["next_page"] is None
    body = client.get("/api/v1/runs?status=failed", **bearer(reviewer)).json()
    assert [r["id"] for r in body["results"]] == [lost]
    assert client.get("/api/v1/runs?status=open&app=refund-approval", **bearer(reviewer)).json()[
        "results"
    ][0]["id"] == str(started.public_id)
    by_id = client.get(f"/api/v1/runs?status=open&app={refunds.pk}", **bearer(reviewer)).json()
    assert [r["id"] for r in by_id["results"]] == [str(started.public_id)]  # as the forms list
    # Another reviewer sees neither: no form of them is routed to anyone yet.
    assert client.get("/api/v1/runs", **bearer(other_reviewer)).json()["results"] == []
    for bad in ("status=done", "page=0"):
        response = client.get(f"/api/v1/runs?{bad}", **bearer(reviewer))
        assert error(response)[:2] == (400, "invalid_param"), bad
    # An app no app has is said as a start says it, the filter named.
    response = client.get("/api/v1/runs?app=nope", **bearer(reviewer))
    assert error(response) == (400, "unknown_app", "Unknown app \u201cnope\u201d.")
    assert response.json()["error"]["details"] == {"app": ["Unknown app."]}


def test_an_ingest_dify_fails_passes_its_status_and_code_on(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    started = simulator.start_run("refund-approval", user="crm-7")
    simulator.add_fault("status", "workflow_run_detail", status=503, times=None)
    response = post(
        client,
        "/api/v1/ingest",
        {"app": "refund-approval", "workflow_run_id": started.workflow_run_id, "user": "crm-7"},
        reviewer,
    )
    assert response.status_code == 502
    body = response.json()["error"]
    assert body["code"] == "dify_error"
    assert body["details"] == {"dify_status": 503, "dify_code": "service_unavailable"}


def test_a_dify_that_hangs_is_said_unreachable_within_the_request_s_deadline(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User, settings: Any
) -> None:
    # Run detail hangs longer than the request may wait: three tries of 30 s each would hold
    # the caller for a minute and a half.
    settings.INBOX_DIFY_REQUEST_DEADLINE_SECONDS = 1.5
    started = simulator.start_run("refund-approval", user="crm-7")
    simulator.add_fault("delay", "workflow_run_detail", delay=5.0, times=None)
    response = post(
        client,
        "/api/v1/ingest",
        {"app": "refund-approval", "workflow_run_id": started.workflow_run_id, "user": "crm-7"},
        reviewer,
    )
    # Without the deadline the one try would wait the 5 s out and the run be recorded; cut at
    # it, Dify is said unreachable, and no retry starts past it (the client tries three times).
    assert error(response)[:2] == (502, "dify_unavailable")
    assert simulator.request_count("workflow_run_detail") == 1
    assert not Run.objects.exists()


def test_the_run_and_form_detail_say_when_dify_cannot_be_reached_or_refuses_the_app(
    client: Client, simulator: Any, paused_run: Run, reviewer: User
) -> None:
    import datetime as dt

    from django.utils import timezone

    from inbox.app_check import AppNotFound
    from inbox.dify.errors import ServerError
    from inbox.models import APP_NOT_FOUND_REFUSAL

    form = Form.objects.get()
    run_path = f"/api/v1/runs/{paused_run.public_id}"
    form_path = f"/api/v1/forms/{form.public_id}"

    def said() -> list[dict[str, Any]]:
        return [
            client.get(path, **bearer(reviewer)).json()["dify"] for path in (run_path, form_path)
        ]

    ok = {
        "state": "ok",
        "since": None,
        "reason": None,
        "dify_status": None,
        "following": "ok",
        "next_try": None,
    }
    assert said() == [ok, ok]
    app = paused_run.app
    # Dify fails the app's calls (a 503 seen by the reconcile): unreachable, since then.
    app.note_unreachable(
        ServerError(503, "service_unavailable", "Service Unavailable"), "reconcile"
    )
    app.refresh_from_db()
    for dify in said():
        assert (dify["state"], dify["reason"], dify["dify_status"]) == (
            "unreachable",
            "not_reachable",
            503,
        )
        assert dify["since"] == app.contact_failed_since.isoformat()
    # The follower gave up on the run's events for now: said, with its next try.
    later = timezone.now() + dt.timedelta(minutes=4)
    Run.objects.filter(pk=paused_run.pk).update(give_ups=2, refollow_after=later)
    for dify in said():
        assert (dify["following"], dify["next_try"]) == ("given_up", later.isoformat())
    # Dify answers 404 for the app as a whole: refused, never with Dify's message.
    app.note_refused(AppNotFound(404, APP_NOT_FOUND_REFUSAL, "secret-ish detail"), "ingest")
    for dify in said():
        assert (dify["state"], dify["reason"], dify["dify_status"]) == (
            "refused",
            "app_not_found",
            404,
        )
    assert "secret-ish" not in client.get(run_path, **bearer(reviewer)).content.decode()


# --- paging the runs, as the forms are paged ---


def test_the_runs_are_paged_as_the_forms_are(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    started = [
        start_run(refunds, inputs=inputs(simulator), dify_user="inbox-alice", started_by=reviewer)
        for _n in range(3)
    ]
    newest = [str(run.public_id) for run in reversed(started)]
    auth = bearer(reviewer)

    def page(query: str) -> dict[str, Any]:
        response = client.get(f"/api/v1/runs?{query}", **auth)
        assert response.status_code == 200, response.content
        body: dict[str, Any] = response.json()
        return body

    first = page("page_size=2")
    assert (first["page"], first["page_size"], first["next_page"]) == (1, 2, 2)
    assert [r["id"] for r in first["results"]] == newest[:2]
    second = page(f"page={first['next_page']}&page_size=2")
    assert (second["page"], second["next_page"]) == (2, None)
    assert [r["id"] for r in second["results"]] == newest[2:]
    # As the forms' list: a page past the last is empty, not refused.
    for past in ("3&page_size=2", "1000001", "1000000000"):
        body = page(f"page={past}")
        assert (body["results"], body["next_page"]) == ([], None), past
    assert page("")["page_size"] == 50
    # `all` is every status, as for the forms.
    assert [r["id"] for r in page("status=all")["results"]] == newest
    for query, field, message in (
        (
            "page=1000000001",
            "page",
            "'page' must be a whole number from 1 to 1000000000; got '1000000001'.",
        ),
        ("page=0", "page", "'page' must be a whole number from 1 to 1000000000; got '0'."),
        ("page_size=0", "page_size", "'page_size' must be a whole number from 1 to 100; got '0'."),
        (
            "page_size=101",
            "page_size",
            "'page_size' must be a whole number from 1 to 100; got '101'.",
        ),
        (
            "page_size=ten",
            "page_size",
            "'page_size' must be a whole number from 1 to 100; got 'ten'.",
        ),
    ):
        response = client.get(f"/api/v1/runs?{query}", **auth)
        assert error(response) == (400, "invalid_param", message), query
        top = "1000000000" if field == "page" else "100"
        assert response.json()["error"]["details"] == {field: [f"A whole number from 1 to {top}."]}
    message = client.get("/api/v1/runs?status=done", **auth).json()["error"]["message"]
    assert message.startswith("Unknown status 'done'; one of: all, ")


# --- the apps: what may be started, and with which inputs ---


def test_the_apps_are_listed_as_the_apps_page_lists_them_with_their_state(
    client: Client, simulator: Any, sim_app: Any, starters: Any, reviewer: User, outsider: User
) -> None:
    from inbox.dify.errors import DifyStatusError

    refunds = sim_app("refund-approval")
    chat = sim_app("support-chat")
    sim_app("document-intake")
    DifyApp.objects.create(
        name="retired", base_url=simulator.base_url, api_key="k", is_active=False
    )
    # Dify refuses the chatflow's key: on record, said without Dify's words.
    chat.note_refused(
        DifyStatusError(401, "unauthorized", "Access token is invalid (secret-ish)"), "start"
    )
    response = client.get("/api/v1/apps", **bearer(reviewer))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["may_start"] is True
    rows = {row["name"]: row for row in body["results"]}
    assert list(rows) == ["document-intake", "refund-approval", "support-chat"]
    assert rows["refund-approval"] == {
        "name": "refund-approval",
        "mode": "workflow",
        "usable": True,
        "dify": {"state": "ok", "since": None, "reason": None, "dify_status": None},
        "may_start": True,
        "start_url": f"http://testserver/apps/{refunds.pk}/start/",
    }
    assert rows["support-chat"]["mode"] == "chatflow"
    assert rows["support-chat"]["usable"] is False
    assert rows["support-chat"]["dify"]["state"] == "refused"
    assert rows["support-chat"]["dify"]["reason"] == "refused"
    assert rows["support-chat"]["dify"]["dify_status"] == 401
    assert "secret-ish" not in response.content.decode()
    # Someone who may not start runs sees the apps (as the page shows them), not their inputs.
    body = client.get("/api/v1/apps", **bearer(outsider)).json()
    assert body["may_start"] is False
    assert {(r["may_start"], r["start_url"]) for r in body["results"]} == {(False, None)}
    assert len(body["results"]) == 3
    response = client.get("/api/v1/apps/refund-approval", **bearer(outsider))
    assert error(response) == (403, "forbidden", "You may not start or ingest runs.")
    # An app that is no active app's name is not there.
    for name in ("retired", "nope"):
        response = client.get(f"/api/v1/apps/{name}", **bearer(reviewer))
        assert error(response) == (404, "not_found", f"No active app named '{name}'.")
    response = client.get("/api/v1/apps?x=1", **bearer(reviewer))
    assert error(response)[:2] == (400, "invalid_param")


def test_an_app_that_cannot_start_runs_is_listed_as_not_usable(
    client: Client, simulator: Any, sim_app: Any, starters: Any, reviewer: User
) -> None:
    from cryptography.fernet import Fernet
    from django.test import override_settings

    from inbox.dify.errors import DifyStatusError

    intake = sim_app("document-intake")
    refunds = sim_app("refund-approval")
    # Dify says it is no workflow: its runs' forms go through, its starts do not.
    intake.note_refused(DifyStatusError(400, "not_workflow_app", "wrong mode"), "start")
    # Its key stored under a key this process no longer has: nothing can be asked of Dify.
    with override_settings(INBOX_ENCRYPTION_KEYS=[Fernet.generate_key().decode()]):
        DifyApp.objects.filter(pk=refunds.pk).update(api_key="app-under-a-lost-key")
    rows = {r["name"]: r for r in client.get("/api/v1/apps", **bearer(reviewer)).json()["results"]}
    assert (rows["document-intake"]["usable"], rows["document-intake"]["dify"]) == (
        False,
        {
            "state": "refused",
            "since": DifyApp.objects.get(pk=intake.pk).refused_at.isoformat(),
            "reason": "mode_mismatch",
            "dify_status": 400,
        },
    )
    assert (rows["refund-approval"]["usable"], rows["refund-approval"]["dify"]) == (
        False,
        {"state": "refused", "since": None, "reason": "api_key_unreadable", "dify_status": None},
    )
    response = client.get("/api/v1/apps/refund-approval", **bearer(reviewer))
    assert error(response)[:2] == (503, "api_key_unreadable")


UNAVAILABLE = "App unavailable, please check your app configurations."


def test_an_app_dify_calls_unavailable_is_unpublished_not_refused(
    client: Client, paused_run: Run, reviewer: User, admin_client: Client
) -> None:
    from inbox.dify.errors import DifyStatusError

    form = Form.objects.get()
    app = paused_run.app
    # Nothing published in Dify: only its starts are refused.
    app.note_refused(DifyStatusError(400, "app_unavailable", UNAVAILABLE), "start")
    app.refresh_from_db()
    unpublished = {
        "state": "unpublished",
        "since": app.refused_at.isoformat(),
        "reason": "app_unavailable",
        "dify_status": 400,
    }
    for path in (f"/api/v1/runs/{paused_run.public_id}", f"/api/v1/forms/{form.public_id}"):
        response = client.get(path, **bearer(reviewer))
        assert response.json()["dify"] == {
            **unpublished,
            "following": "ok",
            "next_try": None,
        }
        assert UNAVAILABLE not in response.content.decode()
    # Its form is still answerable: its decision goes.
    run = client.get(f"/api/v1/runs/{paused_run.public_id}", **bearer(reviewer)).json()
    assert [f["answerable"] for f in run["forms"]] == [True]
    # The apps' list: not usable for starts, and said the same.
    rows = {r["name"]: r for r in client.get("/api/v1/apps", **bearer(reviewer)).json()["results"]}
    assert (rows["refund-approval"]["usable"], rows["refund-approval"]["dify"]) == (
        False,
        unpublished,
    )
    # /healthz counts it apart from the refused apps.
    problems = admin_client.get("/healthz").json()["problems"]
    assert "dify: 1 app(s) not published (no run can start)" in problems
    assert not [p for p in problems if "refused" in p], problems


def test_an_app_whose_connection_test_found_a_chat_app_starts_nothing(
    client: Client,
    simulator: Any,
    sim_app: Any,
    refunds: DifyApp,
    starters: Any,
    reviewer: User,
    admin_client: Client,
) -> None:
    faq = sim_app("faq-bot")  # a plain chat app in Dify, set up here as a workflow
    # The administrator's connection test finds it is a chat app (recorded "unusable").
    admin_client.post(
        "/admin/inbox/difyapp/",
        {"action": "test_connection", "_selected_action": [str(faq.pk)]},
    )
    asked = len(simulator.exchanges())
    response = post(client, "/api/v1/runs", {"app": "faq-bot", "inputs": {}}, reviewer)
    assert error(response) == (
        409,
        "app_unusable",
        "faq-bot cannot be used here: Dify says it is a “chat” app. Such apps have no Human "
        "Input node, so no run of it can be started or decided here.",
    )
    assert response.json()["error"]["details"] == {"dify_mode": "chat"}
    response = client.post(
        "/api/v1/runs",
        json.dumps({"app": "faq-bot", "inputs": {}}),
        content_type="application/json",
        HTTP_ACCEPT_LANGUAGE="zh-hans",
        **bearer(reviewer),
    )
    assert response.json()["error"]["code"] == "app_unusable"
    assert "没有人工输入节点" in response.json()["error"]["message"]
    # Nothing asked of Dify, nothing kept.
    assert len(simulator.exchanges()) == asked and not Run.objects.exists()
    # Listed as not usable, and its detail offers nothing to start, without asking Dify.
    rows = {r["name"]: r for r in client.get("/api/v1/apps", **bearer(reviewer)).json()["results"]}
    assert (rows["faq-bot"]["usable"], rows["faq-bot"]["dify"]) == (
        False,
        {"state": "refused", "since": None, "reason": "app_unusable", "dify_status": None},
    )
    assert rows["refund-approval"]["usable"] is True
    body = client.get("/api/v1/apps/faq-bot", **bearer(reviewer)).json()
    assert (body["usable"], body["startable"], body["inputs"]) == (False, False, [])
    assert len(simulator.exchanges()) == asked
    # The other app starts as before.
    body = {"app": "refund-approval", "inputs": inputs(simulator)}
    assert post(client, "/api/v1/runs", body, reviewer).status_code == 201


def test_a_start_dify_refused_as_unpublished_keeps_both_words_in_its_error(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    simulator.add_fault(
        "status", "workflows_run", status=400, code="app_unavailable", message=UNAVAILABLE
    )
    body = {"app": "refund-approval", "inputs": inputs(simulator)}
    response = post(client, "/api/v1/runs", body, reviewer)
    assert error(response)[:2] == (502, "dify_error")
    run = client.get(f"/api/v1/runs/{Run.objects.get().public_id}", **bearer(reviewer)).json()
    # In English, as the admin and the trail have it: the inbox's words, and Dify's.
    assert run["error"] == (
        "Dify did not start the run: Dify says this app is not available: it may have no "
        f"published workflow. Runs of it can start once an administrator publishes it in Dify. "
        f"(Dify: {UNAVAILABLE})"
    )


def test_an_app_s_start_inputs_are_those_the_start_page_builds(
    client: Client, simulator: Any, sim_app: Any, starters: Any, reviewer: User
) -> None:
    mb = 1024 * 1024
    simulator.set_options(
        size_limits={"image": 1 * mb, "file": 2 * mb, "audio": 3 * mb, "video": 4 * mb}
    )
    for name in ("refund-approval", "document-intake", "support-chat"):
        sim_app(name)
    auth = bearer(reviewer)
    body = client.get("/api/v1/apps/refund-approval", **auth).json()
    assert (body["name"], body["mode"], body["usable"], body["startable"]) == (
        "refund-approval",
        "workflow",
        True,
        True,
    )
    assert body["query"] is None and body["message_files"] is None
    inputs = {item["variable"]: item for item in body["inputs"]}
    assert list(inputs) == ["customer_name", "order_id", "amount", "reason", "channel", "vip"]
    assert inputs["customer_name"] == {
        "variable": "customer_name",
        "label": "Customer name",
        "type": "text-input",
        "required": True,
        "default": "Ada Lovelace",
        "options": [],
        "max_length": 80,
        "supported": True,
    }
    assert (inputs["amount"]["type"], inputs["amount"]["default"]) == ("number", 249.9)
    assert inputs["channel"]["options"] == ["email", "phone", "chat"]
    assert (inputs["channel"]["required"], inputs["channel"]["default"]) == (False, "email")
    assert (inputs["vip"]["type"], inputs["vip"]["default"]) == ("checkbox", False)
    # File inputs: their kinds, how many, and the largest file per kind Dify takes.
    inputs = {
        i["variable"]: i
        for i in client.get("/api/v1/apps/document-intake", **auth).json()["inputs"]
    }
    assert inputs["contract"] == {
        "variable": "contract",
        "label": "Signed contract",
        "type": "file",
        "required": True,
        "default": None,
        "options": [],
        "max_length": None,
        "supported": True,
        "allowed_file_types": ["document"],
        "allowed_file_extensions": [],
        "allowed_file_upload_methods": ["local_file", "remote_url"],
        "max_files": 1,
        "max_file_sizes": {"document": 2 * mb},
    }
    assert inputs["attachments"]["max_files"] == 3
    assert inputs["attachments"]["max_file_sizes"] == {"image": 1 * mb, "document": 2 * mb}
    # A chatflow: its message is required, and the files a message may carry.
    body = client.get("/api/v1/apps/support-chat", **auth).json()
    assert body["mode"] == "chatflow" and body["query"] == {"required": True}
    assert body["message_files"] == {
        "allowed_file_types": ["image", "document"],
        "allowed_file_extensions": [],
        "allowed_file_upload_methods": ["local_file", "remote_url"],
        "max_files": 3,
        "max_file_sizes": {"image": 1 * mb, "document": 2 * mb},
    }
    # The same parameters as the start page's, kept for a minute: not asked of Dify again,
    # neither by the page nor by a start.
    asked = simulator.request_count("parameters", "support-chat")
    assert asked == 1
    client.get("/api/v1/apps/support-chat", **auth)
    client.force_login(reviewer)
    assert (
        client.get(f"/apps/{DifyApp.objects.get(name='support-chat').pk}/start/").status_code == 200
    )
    assert simulator.request_count("parameters", "support-chat") == asked


def test_an_app_whose_dify_is_away_or_refuses_is_said_so_not_a_500(
    client: Client, simulator: Any, sim_app: Any, starters: Any, reviewer: User
) -> None:
    DifyApp.objects.create(name="away", base_url="http://127.0.0.1:9/v1", api_key="k")
    response = client.get("/api/v1/apps/away", **bearer(reviewer))
    status, code, message = error(response)
    assert (status, code) == (502, "dify_unavailable")
    assert message.startswith("Dify's parameters could not be read: ")
    sim_app("refund-approval")
    simulator.add_fault("status", "parameters", status=401, code="unauthorized")
    response = client.get("/api/v1/apps/refund-approval", **bearer(reviewer))
    assert error(response)[:2] == (502, "dify_error")
    # Recorded as the start page records it: the list says so.
    listed = client.get("/api/v1/apps", **bearer(reviewer)).json()["results"]
    row = next(r for r in listed if r["name"] == "refund-approval")
    assert (row["usable"], row["dify"]["state"], row["dify"]["dify_status"]) == (
        False,
        "refused",
        401,
    )
