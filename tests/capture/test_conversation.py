"""A chatflow's conversation goes on from the inbox: the next message is asked in the same
conversation, under the Dify user it began with, and Dify runs it with the inputs it started
with (the page "Go on with the conversation" and `POST /api/v1/runs` with `conversation_id`)."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from inbox.dify.client import DifyClient
from inbox.models import ApiToken, DifyApp, Run
from inbox.runs import ConversationBusy, start_run
from tests.capture.conftest import (
    FollowerThread,
    finished_conversation,
    pending,
    start,
)

pytestmark = pytest.mark.django_db(transaction=True)


def post(client: Client, body: Any, user: User) -> Any:
    _token, raw = ApiToken.issue(user)
    return client.post(
        "/api/v1/runs",
        json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )


def error(response: Any) -> tuple[int, str, str]:
    body = response.json()["error"]
    return response.status_code, body["code"], body["message"]


def test_the_api_goes_on_with_a_conversation_under_its_user_and_inputs(
    client: Client, simulator: Any, chat: DifyApp, follower: FollowerThread, reviewer: User
) -> None:
    first = finished_conversation(simulator, chat, reviewer)
    response = post(
        client,
        {
            "app": "support-chat",
            "query": "And my other parcel?",
            "conversation_id": first.conversation_id,
        },
        reviewer,
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["conversation_id"] == first.conversation_id
    second = Run.objects.get(public_id=body["id"])
    assert second.conversation_id == first.conversation_id and second.pk != first.pk
    assert second.dify_user == first.dify_user == "inbox-alice"
    in_dify = simulator.run(second.workflow_run_id)
    assert in_dify["conversation_id"] == first.conversation_id
    assert in_dify["user"] == "inbox-alice"
    # Dify ran it with the conversation's inputs: the form says platinum, as the first did.
    (form,) = pending(second)
    assert "platinum" in form.content
    assert second.inputs == first.inputs == {"customer_tier": "platinum"}


def test_the_api_refuses_what_a_conversation_cannot_take(
    client: Client,
    simulator: Any,
    chat: DifyApp,
    sim_app: Any,
    follower: FollowerThread,
    reviewer: User,
) -> None:
    run = start(simulator, chat, reviewer)
    pending(run)
    run.refresh_from_db()
    cid = run.conversation_id
    # Its last message waits at a form: not yet. The open run is named, as other starts' 409s
    # name theirs.
    response = post(
        client, {"app": "support-chat", "query": "Hi", "conversation_id": cid}, reviewer
    )
    assert error(response) == (
        409,
        "conversation_in_progress",
        f"The conversation's last message (run {run.public_id}) has not ended yet.",
    )
    assert response.json()["error"]["details"] == {"run": str(run.public_id)}
    assert error(
        post(
            client,
            {
                "app": "support-chat",
                "query": "Hi",
                "conversation_id": cid,
                "inputs": {"customer_tier": "gold"},
            },
            reviewer,
        )
    ) == (
        400,
        "invalid_param",
        "'inputs' cannot be given with 'conversation_id': Dify runs every message of a "
        "conversation with the inputs it started with.",
    )
    assert error(
        post(client, {"app": "support-chat", "query": " ", "conversation_id": cid}, reviewer)
    ) == (
        400,
        "invalid_inputs",
        "query: This field is required.",
    )
    sim_app("refund-approval")
    status, code, message = error(
        post(client, {"app": "refund-approval", "inputs": {}, "conversation_id": cid}, reviewer)
    )
    assert (status, code) == (400, "invalid_param") and "for chatflow apps" in message
    assert Run.objects.count() == 1


def test_a_conversation_dify_does_not_have_is_said_and_kept_as_a_failed_start(
    client: Client, simulator: Any, chat: DifyApp, reviewer: User
) -> None:
    response = post(
        client,
        {
            "app": "support-chat",
            "query": "Hi",
            "conversation_id": "5f7c8a1e-0000-4000-8000-000000000000",
        },
        reviewer,
    )
    status, code, message = error(response)
    assert (status, code) == (400, "conversation_not_found")
    assert message.startswith("Dify has no such conversation for this user")
    failed = Run.objects.get(public_id=response.json()["error"]["details"]["run"])
    assert failed.status == "failed" and failed.finished_at is not None
    assert failed.conversation_id == "5f7c8a1e-0000-4000-8000-000000000000"
    # The app itself is fine: a 404 about a conversation is not a refusal of the app.
    chat.refresh_from_db()
    assert chat.refused_at is None


def test_a_conversation_of_another_dify_user_is_not_found(
    client: Client, simulator: Any, chat: DifyApp, follower: FollowerThread, reviewer: User
) -> None:
    first = finished_conversation(simulator, chat, reviewer)
    response = post(
        client,
        {
            "app": "support-chat",
            "query": "Hi",
            "conversation_id": first.conversation_id,
            "user": "crm-9",
        },
        reviewer,
    )
    assert error(response)[:2] == (400, "conversation_not_found")


def test_dify_keeps_a_conversation_s_inputs_whatever_a_later_message_sends(
    simulator: Any, chat: DifyApp
) -> None:
    # The simulator as Dify: a later message's inputs are neither checked nor used.
    client = DifyClient.for_app(chat)
    with client.send_chat_message(
        query="Hi", inputs={"customer_tier": "platinum"}, user="u1"
    ) as stream:
        for _event in stream:
            if stream.workflow_run_id:
                break
        first = simulator.run(stream.workflow_run_id)
    with client.send_chat_message(
        query="Again",
        inputs={"customer_tier": "no such tier"},
        user="u1",
        conversation_id=first["conversation_id"],
    ) as stream:
        for _event in stream:
            if stream.workflow_run_id:
                break
        second = simulator.run(stream.workflow_run_id)
    assert second["conversation_id"] == first["conversation_id"]
    assert second["inputs"] == {"customer_tier": "platinum"}


def test_the_run_page_goes_on_with_the_conversation(
    client: Client, simulator: Any, chat: DifyApp, follower: FollowerThread, reviewer: User
) -> None:
    first = finished_conversation(simulator, chat, reviewer)
    client.force_login(reviewer)
    page = client.get(f"/runs/{first.public_id}/").content.decode()
    assert f'href="/runs/{first.public_id}/continue"' in page
    # Its one message, numbered, and not only in the collapsed inputs.
    assert "Message 1 of the conversation" in page
    shown = page[page.index('id="conversation-heading"') : page.index("<summary>Inputs</summary>")]
    assert "My parcel is two weeks late." in shown

    page = client.get(f"/runs/{first.public_id}/continue").content.decode()
    assert "The conversation so far" in page and "My parcel is two weeks late." in page
    assert "delivery is late" in page  # its answer

    response = client.post(
        f"/runs/{first.public_id}/continue",
        {"query": "Thanks!\r\nAnd the other one?", "submission_key": "k1"},
    )
    assert response.status_code == 302
    second = Run.objects.exclude(pk=first.pk).get()
    assert response["Location"] == f"/runs/{second.public_id}/"
    assert second.query == "Thanks!\nAnd the other one?"
    assert second.conversation_id == first.conversation_id and second.dify_user == first.dify_user
    assert second.started_by == reviewer and second.source == "ui"

    page = client.get(f"/runs/{second.public_id}/").content.decode()
    assert "Message 2 of the conversation" in page
    assert f'<a href="/runs/{first.public_id}/"' in page
    assert re.search(r'aria-current="page">\s*<p class="meta">\s*<strong>Message 2</strong>', page)
    # Its last message has not ended: no going on yet, on the page or by posting it.
    assert f"/runs/{second.public_id}/continue" not in page
    # The page sent twice (a double click, a resent form): the message it sent, not an error.
    again = client.post(
        f"/runs/{first.public_id}/continue",
        {"query": "Thanks!\r\nAnd the other one?", "submission_key": "k1"},
    )
    assert again.status_code == 302 and again["Location"] == f"/runs/{second.public_id}/"
    response = client.post(f"/runs/{first.public_id}/continue", {"query": "Hello?"})
    assert response.status_code == 400
    assert "last message has not ended yet" in response.content.decode()
    assert Run.objects.count() == 2


def test_going_on_needs_a_chatflow_conversation_and_the_right_to_start(
    client: Client, simulator: Any, chat: DifyApp, sim_app: Any, reviewer: User
) -> None:
    refunds = sim_app("refund-approval")
    workflow_run = Run.objects.create(
        app=refunds, dify_user="u", status="succeeded", workflow_run_id="w1", started_by=reviewer
    )
    chat_run = Run.objects.create(
        app=chat,
        dify_user="u",
        status="succeeded",
        workflow_run_id="w2",
        conversation_id="c2",
        started_by=reviewer,
    )
    client.force_login(reviewer)
    assert client.get(f"/runs/{workflow_run.public_id}/continue").status_code == 404
    assert client.get(f"/runs/{chat_run.public_id}/continue").status_code == 200
    DifyApp.objects.filter(pk=chat.pk).update(is_active=False)
    assert client.get(f"/runs/{chat_run.public_id}/continue").status_code == 404
    reviewer.groups.clear()
    assert client.get(f"/runs/{chat_run.public_id}/continue").status_code == 403


def test_only_who_started_a_conversation_goes_on_with_it(
    client: Client,
    simulator: Any,
    chat: DifyApp,
    follower: FollowerThread,
    reviewer: User,
    other_reviewer: User,
) -> None:
    first = finished_conversation(simulator, chat, reviewer)
    # Bob sees the run (its form went to the reviewers) and may start runs, but the
    # conversation is Alice's: he does not speak in it under her Dify user.
    response = post(
        client,
        {"app": "support-chat", "query": "Hi", "conversation_id": first.conversation_id},
        other_reviewer,
    )
    assert error(response) == (
        403,
        "forbidden",
        "Only who started this conversation, or an administrator, may go on with it.",
    )
    client.force_login(other_reviewer)
    page = client.get(f"/runs/{first.public_id}/").content.decode()
    assert f"/runs/{first.public_id}/continue" not in page
    assert client.get(f"/runs/{first.public_id}/continue").status_code == 403
    assert Run.objects.count() == 1


def test_a_message_in_flight_holds_the_conversation_whoever_sent_it(
    client: Client,
    simulator: Any,
    chat: DifyApp,
    follower: FollowerThread,
    reviewer: User,
    admin_user: User,
) -> None:
    first = finished_conversation(simulator, chat, reviewer)
    cid = first.conversation_id
    # The team lead sends the next message; it waits at its form.
    response = post(
        client, {"app": "support-chat", "query": "Lead", "conversation_id": cid}, admin_user
    )
    assert response.status_code == 201, response.content
    lead = Run.objects.get(public_id=response.json()["id"])
    pending(lead)
    # The reviewer's own last message has ended, the conversation's has not.
    status, code, message = error(
        post(client, {"app": "support-chat", "query": "Me", "conversation_id": cid}, reviewer)
    )
    assert (status, code) == (409, "conversation_in_progress")
    assert str(lead.public_id) in message
    assert response_details(client, reviewer, cid)["run"] == str(lead.public_id)
    client.force_login(reviewer)
    page = client.post(f"/runs/{first.public_id}/continue", {"query": "Me", "submission_key": "k"})
    assert page.status_code == 400
    assert "last message has not ended yet" in page.content.decode()
    assert f'href="/runs/{lead.public_id}/"' in page.content.decode()
    assert Run.objects.filter(conversation_id=cid).count() == 2
    assert len(simulator.run(lead.workflow_run_id)["forms"]) == 1


def response_details(client: Client, user: User, cid: str) -> Any:
    response = post(client, {"app": "support-chat", "query": "Me", "conversation_id": cid}, user)
    return response.json()["error"]["details"]


def _being_sent(first: Run, query: str, **kwargs: Any) -> Run:
    """Another message of `first`'s conversation, being sent to Dify (no workflow run id yet)."""
    return Run.objects.create(
        app=first.app,
        dify_user=first.dify_user,
        status="starting",
        conversation_id=first.conversation_id,
        query=query,
        **kwargs,
    )


def test_a_message_still_starting_holds_the_conversation_as_its_run_is_made(
    simulator: Any, chat: DifyApp, follower: FollowerThread, reviewer: User
) -> None:
    first = finished_conversation(simulator, chat, reviewer)
    # Another message of the conversation is being sent to Dify: no workflow run id yet.
    starting = _being_sent(first, "Sent a moment ago", started_by=reviewer)
    sent = simulator.request_count("chat_messages")
    # Checked where the run is made, whatever a caller checked before.
    with pytest.raises(ConversationBusy) as refused:
        start_run(
            chat,
            inputs={},
            query="Me too",
            dify_user=first.dify_user,
            started_by=reviewer,
            conversation_id=first.conversation_id,
        )
    assert refused.value.code == "conversation_in_progress"
    assert refused.value.details()["run"] == str(starting.public_id)
    assert Run.objects.filter(conversation_id=first.conversation_id).count() == 2
    assert simulator.request_count("chat_messages") == sent


def test_two_next_messages_sent_at_once_start_one_turn(
    simulator: Any, chat: DifyApp, follower: FollowerThread, reviewer: User, admin_user: User
) -> None:
    first = finished_conversation(simulator, chat, reviewer)
    cid = first.conversation_id
    # Dify is slow to take a message: both requests are in the inbox at the same moment.
    simulator.add_fault("delay", "chat_messages", times=2, delay=0.5)
    barrier = threading.Barrier(2)
    answers: dict[str, Any] = {}

    def send(user: User) -> None:
        try:
            body = {"app": "support-chat", "query": f"From {user}", "conversation_id": cid}
            barrier.wait(timeout=10)
            answers[user.username] = post(Client(), body, user)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(u,)) for u in (reviewer, admin_user)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    statuses = sorted(a.status_code for a in answers.values())
    assert statuses == [201, 409], {k: a.content for k, a in answers.items()}
    turns = Run.objects.filter(conversation_id=cid).exclude(pk=first.pk)
    assert turns.count() == 1
    in_dify = [
        r
        for r in simulator.call(lambda: list(simulator.sim.runs.values()))
        if r.conversation is not None and r.conversation.id == cid
    ]
    assert len(in_dify) == 2  # the first message and one next one


def test_a_conversation_s_id_in_another_spelling_is_the_same_conversation(
    client: Client,
    simulator: Any,
    chat: DifyApp,
    follower: FollowerThread,
    reviewer: User,
    other_reviewer: User,
) -> None:
    first = finished_conversation(simulator, chat, reviewer)
    # Dify reads the id as a UUID: upper case or without dashes, it names the same conversation.
    for spelling in (first.conversation_id.upper(), first.conversation_id.replace("-", "")):
        body = {"app": "support-chat", "query": "Hi", "conversation_id": spelling}
        assert error(post(client, {**body, "user": first.dify_user}, other_reviewer))[:2] == (
            403,
            "forbidden",
        )
    status, code, message = error(
        post(client, {"app": "support-chat", "query": "Hi", "conversation_id": "c-1"}, reviewer)
    )
    assert (status, code) == (400, "invalid_param") and "conversation_id" in message
    # Her own, spelt otherwise: the next message of it, stored as Dify spells it.
    response = post(
        client,
        {"app": "support-chat", "query": "Again", "conversation_id": first.conversation_id.upper()},
        reviewer,
    )
    assert response.status_code == 201, response.content
    assert response.json()["conversation_id"] == first.conversation_id
    assert Run.objects.filter(conversation_id=first.conversation_id).count() == 2


def test_a_message_in_flight_the_caller_may_not_see_is_not_named(
    client: Client,
    simulator: Any,
    chat: DifyApp,
    follower: FollowerThread,
    reviewer: User,
) -> None:
    first = finished_conversation(simulator, chat, reviewer)
    # A message of hers being sent by someone she does not see runs of (a started run of the
    # conversation that no route or start of hers shows her).
    hidden = _being_sent(first, "Sent by the team lead")
    assert not Run.objects.for_user(reviewer).filter(pk=hidden.pk).exists()
    response = post(
        client,
        {"app": "support-chat", "query": "Me", "conversation_id": first.conversation_id},
        reviewer,
    )
    status, code, message = error(response)
    assert (status, code) == (409, "conversation_in_progress")
    assert str(hidden.public_id) not in response.content.decode()
    assert message == "The conversation's last message, sent by someone else, has not ended yet."
    client.force_login(reviewer)
    page = client.get(f"/runs/{first.public_id}/continue").content.decode()
    assert "last message has not ended yet" in page and str(hidden.public_id) not in page
