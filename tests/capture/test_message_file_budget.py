"""A day's budget of chatflow message files per person (INBOX_MESSAGE_FILES_PER_DAY files,
INBOX_MESSAGE_FILES_MB_PER_DAY megabytes), across the API and the start pages: Dify keeps every
file, and a message's files belong to no form whose budget would bound them. Only files Dify
took count. Real HTTP against the simulator."""

from __future__ import annotations

import datetime as dt
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from inbox.models import ApiToken, DifyApp, MessageFile, MessageFileTally, Run

pytestmark = pytest.mark.django_db(transaction=True)

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def png(name: str = "parcel.png", size: int = 0) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, PNG + b"\0" * size, content_type="image/png")


@pytest.fixture
def upload(client: Client, reviewer: User) -> Any:
    _token, raw = ApiToken.issue(reviewer)

    def send(fileobj: SimpleUploadedFile, **headers: Any) -> Any:
        return client.post(
            "/api/v1/runs/files",
            {"app": "support-chat", "file": fileobj},
            HTTP_AUTHORIZATION=f"Bearer {raw}",
            **headers,
        )

    return send


def test_the_api_refuses_message_files_past_the_day_s_count(
    chat: DifyApp, simulator: Any, upload: Any, settings: Any
) -> None:
    settings.INBOX_MESSAGE_FILES_PER_DAY = 2
    # Refused by Dify, a file is not counted: Dify keeps nothing of it.
    simulator.add_fault("status", "files_upload", status=503)
    assert upload(png("a.png")).status_code == 502
    assert upload(png("b.png")).status_code == 201
    assert upload(png("c.png")).status_code == 201
    response = upload(png("d.png"))
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "upload_limit_reached"
    assert error["message"] == (
        "You have sent as many files to Dify today (with messages and to start runs) as one "
        "person may in a day "
        "(2 files, 1000 MB in all). Try again tomorrow."
    )
    # Until the day's end (in TIME_ZONE).
    now = timezone.localtime()
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), now.tzinfo)
    assert 0 < int(response["Retry-After"]) <= (midnight - now).total_seconds() + 1
    # Nothing was sent for it; in the caller's language too.
    assert len(simulator.uploads()) == 2 and MessageFile.objects.count() == 2
    response = upload(png("d.png"), HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert response.status_code == 429
    assert "\u4eca\u5929" in response.json()["error"]["message"]

    # The next day the budget starts again, and the tally keeps only that day's row.
    tomorrow = timezone.localdate() + dt.timedelta(days=1)
    with mock.patch.object(timezone, "localdate", lambda *a, **k: tomorrow):
        assert upload(png("e.png")).status_code == 201
    assert list(MessageFileTally.objects.values_list("day", "files")) == [(tomorrow, 1)]


def test_the_api_refuses_message_files_past_the_day_s_megabytes(
    chat: DifyApp, simulator: Any, upload: Any, settings: Any, reviewer: User
) -> None:
    settings.INBOX_MESSAGE_FILES_MB_PER_DAY = 1
    assert upload(png("a.png", 600 * 1024)).status_code == 201
    response = upload(png("b.png", 600 * 1024))
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "upload_limit_reached"
    # A smaller one still fits in the day's megabyte.
    assert upload(png("c.png", 100 * 1024)).status_code == 201
    (tally,) = MessageFileTally.objects.all()
    assert (tally.who, tally.files) == (f"u:{reviewer.pk}", 2)
    assert tally.bytes == sum(f.size for f in MessageFile.objects.all())


def test_a_start_page_says_beside_the_files_that_the_day_s_are_spent(
    client: Client, chat: DifyApp, simulator: Any, upload: Any, settings: Any, reviewer: User
) -> None:
    settings.INBOX_MESSAGE_FILES_PER_DAY = 1
    # The API and the pages share the budget.
    assert upload(png("a.png")).status_code == 201
    client.force_login(reviewer)
    response = client.post(
        f"/apps/{chat.pk}/start/",
        {"query": "Late again.", "in_customer_tier": "gold", "files": [png(), png("b.png")]},
    )
    assert response.status_code == 429
    page = response.content.decode()
    # Said once, not for each file; what was typed is kept.
    assert page.count('<p class="field-error">You have sent as many files') == 1
    assert "(1 file, 1000 MB in all)" in page and "Late again.</textarea>" in page
    assert len(simulator.uploads()) == 1 and not Run.objects.exists()
