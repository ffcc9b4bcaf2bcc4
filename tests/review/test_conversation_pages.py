"""A chatflow's form and run say which conversation and which of its messages they belong to:
the inbox's rows, the form page's run panel, the run page (the conversation as a
conversation, with each message's forms and how they were decided), and the API."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from inbox.models import ApiToken, Decision, DifyApp, Form, Run
from tests.review.conftest import make_form, make_run


def _conversation(app: DifyApp, user: User) -> dict[str, Any]:
    """Alice's conversation: a message answered after a form she decided, a next message Dify
    refused (not sent), a second message, and a third waiting at a form."""
    DifyApp.objects.filter(pk=app.pk).update(mode=DifyApp.Mode.CHATFLOW)
    app.refresh_from_db()
    base = timezone.now() - dt.timedelta(hours=1)

    def message(minute: int, query: str, **fields: Any) -> Run:
        run = make_run(app, conversation_id="conv-1", query=query, started_by=user, **fields)
        Run.objects.filter(pk=run.pk).update(created_at=base + dt.timedelta(minutes=minute))
        run.refresh_from_db()
        return run

    first = message(1, "My parcel is two weeks late.", status="succeeded", answer="Sorry!")
    decided = make_form(
        app,
        run=first,
        node_title="Agent approval",
        status=Form.Status.SUBMITTED,
        filled_action_id="approve",
        filled_action_text="Approve",
        form_token="",
    )
    Decision.objects.create(
        form=decided, reviewer=user, action_id="approve", status=Decision.Status.DELIVERED
    )
    refused = message(
        2,
        "Hello? Anyone?",
        status="failed",
        workflow_run_id="",
        error="Dify has no such conversation for this user.",
    )
    second = message(3, "And the other parcel?", status="succeeded", answer="It left today.")
    third = message(4, "Refund me please, the parcel never came", status="paused")
    waiting = make_form(app, run=third, node_title="Refund approval")
    return {
        "first": first,
        "refused": refused,
        "second": second,
        "third": third,
        "decided": decided,
        "waiting": waiting,
    }


def test_a_chatflow_form_names_its_message_of_the_conversation(
    alice: Client, dify_app: DifyApp, reviewer: User
) -> None:
    c = _conversation(dify_app, reviewer)
    third, waiting = c["third"], c["waiting"]
    # The inbox's row: the message (a start Dify refused is not counted) and what it asked,
    # in place of the run's id.
    page = alice.get("/").content.decode()
    row = re.search(r'<li class="row[^>]*>.*?</li>', page, re.S)
    assert row is not None
    assert "Message 3 of the conversation" in row.group(0)
    assert "Refund me please, the parcel never came" in row.group(0)
    assert "Run <code>" not in row.group(0)
    # The form page's run panel: the same, linked to the run page.
    page = alice.get(f"/forms/{waiting.public_id}/").content.decode()
    panel = page[page.index('id="run-panel"') :]
    assert f'<a href="/runs/{third.public_id}/">Message 3 of the conversation</a>' in panel
    assert "Refund me please, the parcel never came" in panel
    # In Chinese.
    alice.cookies["django_language"] = "zh-hans"
    page = alice.get("/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "会话中的第 3 条消息" in page
    page = alice.get(
        f"/forms/{waiting.public_id}/", HTTP_ACCEPT_LANGUAGE="zh-hans"
    ).content.decode()
    assert "会话中的第 3 条消息" in page and "会话" in page
    # The API: the form's run, and the runs list, say the conversation, query and number.
    _token, raw = ApiToken.issue(reviewer)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    body = alice.get(f"/api/v1/forms/{waiting.public_id}", **auth).json()
    assert body["run"]["conversation_id"] == "conv-1"
    assert body["run"]["query"] == "Refund me please, the parcel never came"
    assert body["run"]["turn"] == 3
    listed = alice.get("/api/v1/forms", **auth).json()["results"]
    assert [f["run"]["turn"] for f in listed] == [3]
    runs = {r["id"]: r for r in alice.get("/api/v1/runs", **auth).json()["results"]}
    assert runs[str(third.public_id)]["turn"] == 3
    assert runs[str(c["second"].public_id)]["turn"] == 2
    assert runs[str(c["first"].public_id)]["query"] == "My parcel is two weeks late."
    assert runs[str(c["refused"].public_id)]["turn"] is None
    assert runs[str(c["refused"].public_id)]["conversation_id"] == "conv-1"
    detail = alice.get(f"/api/v1/runs/{third.public_id}", **auth).json()
    assert (detail["turn"], detail["conversation_id"]) == (3, "conv-1")


def test_chatflow_rows_cost_the_inbox_no_query_more(
    alice: Client, dify_app: DifyApp, reviewer: User
) -> None:
    alice.get("/")  # a session's first request also remembers the reviewer's language, once
    # A workflow's forms, one waiting and one decided, as the conversation has.
    make_form(dify_app)
    decided = make_form(dify_app, status=Form.Status.SUBMITTED, form_token="")
    Decision.objects.create(
        form=decided, reviewer=reviewer, action_id="approve", status=Decision.Status.DELIVERED
    )
    with CaptureQueriesContext(connection) as one:
        alice.get("/", {"status": "all"})
    _conversation(dify_app, reviewer)
    with CaptureQueriesContext(connection) as more:
        page = alice.get("/", {"status": "all"}).content.decode()
    assert "Message 1 of the conversation" in page and "Message 3 of the conversation" in page
    assert len(one) == len(more)


def test_the_run_page_shows_the_conversation_as_a_conversation(
    alice: Client, dify_app: DifyApp, reviewer: User
) -> None:
    c = _conversation(dify_app, reviewer)
    page = alice.get(f"/runs/{c['second'].public_id}/").content.decode()
    section = page[page.index('id="conversation-heading"') : page.index('id="run-live"')]
    assert "Message 2 of the conversation" in section  # the page's heading
    messages = re.findall(r'<li class="conversation-message[^"]*"[^>]*>.*?</li>\n', section, re.S)
    assert len(messages) == 4
    first, refused, second, third = messages
    # Each message's query and answer, in order, with its forms and how they were decided.
    assert "<strong>Message 1</strong>" in first and "My parcel is two weeks late." in first
    assert "Sorry!" in first
    assert f'href="/forms/{c["decided"].public_id}/"' in first
    assert "Approve" in first and "decided by Alice" in first
    # The start Dify refused: kept, marked, and not numbered.
    assert "Not sent" in refused and "Hello? Anyone?" in refused
    # Said without a reason of its own: Dify's refusal (or outage) says why.
    assert "The inbox has no run of this message in Dify." in refused
    assert "Dify has no such conversation for this user." in refused
    assert "<strong>Message" not in refused
    # This message, marked; its answer is in the live part below.
    assert 'aria-current="page"' in second and "<strong>Message 2</strong>" in second
    assert "And the other parcel?" in second
    assert "aria-current" not in first + refused + third
    assert "<strong>Message 3</strong>" in third and "Refund approval" in third
    # The page's own message is no longer only in the collapsed inputs.
    assert "<summary>Inputs</summary>" not in page
    # The page to go on with the conversation numbers them the same way.
    reviewer.user_permissions.add(Permission.objects.get(codename="add_run"))
    page = alice.get(f"/runs/{c['second'].public_id}/continue").content.decode()
    assert "<strong>Message 3</strong>" in page and "<strong>Message 4</strong>" not in page
    assert "Not sent" in page
    # In Chinese.
    page = alice.get(
        f"/runs/{c['second'].public_id}/", HTTP_ACCEPT_LANGUAGE="zh-hans"
    ).content.decode()
    assert "会话中的第 2 条消息" in page and "未发出" in page and "第 1 条消息" in page
    assert "由 Alice 决定" in page


def test_a_long_conversation_shows_its_latest_messages_and_the_page_s_own(
    alice: Client, dify_app: DifyApp, reviewer: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inbox.runs
    import inbox.views_runs

    monkeypatch.setattr(inbox.runs, "CONVERSATION_SHOWN", 3)
    monkeypatch.setattr(inbox.views_runs, "CONVERSATION_SHOWN", 3)
    DifyApp.objects.filter(pk=dify_app.pk).update(mode=DifyApp.Mode.CHATFLOW)
    base = timezone.now() - dt.timedelta(hours=1)
    runs = []
    for i in range(6):
        run = make_run(
            dify_app,
            conversation_id="conv-2",
            query=f"question {i + 1}",
            started_by=reviewer,
            status="succeeded",
        )
        Run.objects.filter(pk=run.pk).update(created_at=base + dt.timedelta(minutes=i))
        runs.append(run)
    # The last message's page: the latest three, the earlier ones said to be in Dify.
    page = alice.get(f"/runs/{runs[-1].public_id}/").content.decode()
    assert "question 6" in page and "question 4" in page and "question 3" not in page
    assert "<strong>Message 4</strong>" in page and "<strong>Message 6</strong>" in page
    assert "Only the latest 3 messages are shown here" in page
    # An older message's page shows it too, numbered as it is, with the latest.
    page = alice.get(f"/runs/{runs[1].public_id}/").content.decode()
    assert "question 2" in page and "<strong>Message 2</strong>" in page
    assert "question 6" in page and "question 3" not in page
    assert "Messages in between are not shown here." in page
    assert "Message 2 of the conversation" in page
