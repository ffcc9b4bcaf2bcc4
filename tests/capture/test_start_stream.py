"""Starting a run against a Dify that answers the start with a stream but never names the run:
the start ends on its own deadline, keep-alive pings or not."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

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
    assert caught.value.message == "Dify did not start a run."
    run = Run.objects.get()
    assert run.status == "failed" and run.error == "Dify did not start a run."
