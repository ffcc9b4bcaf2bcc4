"""Starting a run against a Dify that answers the start with a stream but never names the run:
the start ends on its own deadline, keep-alive pings or not."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.utils import translation

from inbox import runs
from inbox.models import DifyApp, Run
from inbox.runs import StartFailed, start_run
from tests.delivery.scripted import Reply, ScriptedDify

pytestmark = pytest.mark.django_db


@pytest.fixture
def dify() -> Iterator[ScriptedDify]:
    server = ScriptedDify()
    yield server
    server.close()


def test_a_start_answered_by_pings_alone_ends_at_its_deadline(
    dify: ScriptedDify, monkeypatch: Any
) -> None:
    monkeypatch.setattr(runs, "FIRST_EVENT_SECONDS", 0.5)
    app = DifyApp.objects.create(name="pings", base_url=dify.base_url, api_key="app-key-123")
    # A ping every 0.1 s for a minute: each one keeps the read timeout from firing.
    dify.on("POST", "/workflows/run", Reply(events=["event: ping"] * 600, every=0.1))
    started = time.monotonic()
    with pytest.raises(StartFailed) as caught:
        start_run(app, inputs={}, dify_user="inbox-alice")
    # Ended by its own 0.5 s deadline, long before the pings stop.
    assert time.monotonic() - started < 20
    # Dify took the request: the run may be queued there, and the message says so.
    message = (
        "Dify did not name the run within 0.5 seconds. It may still start it: check in Dify "
        "before starting it again."
    )
    assert (caught.value.message, caught.value.status) == (message, 504)
    run = Run.objects.get()
    assert run.status == "failed" and run.error == message


def test_a_start_whose_answer_is_lost_says_the_run_may_have_started(dify: ScriptedDify) -> None:
    app = DifyApp.objects.create(name="lost", base_url=dify.base_url, api_key="app-key-123")
    # Dify reads the request, then the connection closes with no answer.
    dify.on("POST", "/workflows/run", Reply(drop=True))
    with pytest.raises(StartFailed) as caught:
        start_run(app, inputs={}, dify_user="inbox-alice")
    assert (caught.value.status, caught.value.code) == (504, "dify_no_answer")
    assert "It may have started the run anyway" in caught.value.message
    run = Run.objects.get()
    assert run.status == "failed" and "check in Dify before starting it again" in run.error


def test_a_start_dify_never_received_says_dify_could_not_be_reached() -> None:
    # Nothing listens there: the request never left.
    app = DifyApp.objects.create(
        name="down", base_url="http://127.0.0.1:9/v1", api_key="app-key-123"
    )
    with pytest.raises(StartFailed) as caught:
        start_run(app, inputs={}, dify_user="inbox-alice")
    assert (caught.value.status, caught.value.code) == (502, "dify_unavailable")
    assert caught.value.message.startswith("Dify could not be reached")


def test_a_failed_start_is_stored_in_english_and_read_in_each_readers_language(
    dify: ScriptedDify, monkeypatch: Any
) -> None:
    monkeypatch.setattr(runs, "FIRST_EVENT_SECONDS", 0.5)
    app = DifyApp.objects.create(name="pings", base_url=dify.base_url, api_key="app-key-123")
    dify.on("POST", "/workflows/run", Reply(events=["event: ping"] * 50, every=0.1))
    # Started by a reviewer reading Chinese: they are told in Chinese ...
    with translation.override("zh-hans"), pytest.raises(StartFailed) as caught:
        start_run(app, inputs={}, dify_user="inbox-alice")
    assert caught.value.message.startswith("Dify 在 0.5 秒内没有")
    # ... while the run keeps English (the admin, the audit trail, the API) with its parts,
    # and each page reads it in its reader's language.
    run = Run.objects.get()
    assert run.error.startswith("Dify did not name the run within 0.5 seconds.")
    assert run.error_parts["values"] == {"seconds": 0.5}
    with translation.override("en"):
        assert run.error_text == run.error
    with translation.override("zh-hans"):
        assert run.error_text == caught.value.message


def test_dify_s_own_words_replace_a_stored_reason_and_are_shown_as_they_are() -> None:
    app = DifyApp.objects.create(name="gone", base_url="http://127.0.0.1:9/v1", api_key="k-1")
    run = Run.objects.create(app=app, workflow_run_id="wr-1", dify_user="u", status="running")
    run.gone_from_dify(source="reconcile")
    run.refresh_from_db()
    with translation.override("zh-hans"):
        assert run.error_text.startswith("Dify 已不再知道此运行")
    # Dify's error event later carries its own words (a replay): they are kept as said.
    run.apply_event({"event": "error", "message": "Workflow 已停止", "code": "stopped"})
    run.refresh_from_db()
    assert (run.error, run.error_parts) == ("Workflow 已停止", {})
    with translation.override("en"):
        assert run.error_text == "Workflow 已停止"
