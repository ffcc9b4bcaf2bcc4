from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from inbox.models import AuditEntry, DifyApp

pytestmark = pytest.mark.smoke


def test_add_dify_app_creates_then_updates(db: None, capsys: pytest.CaptureFixture[str]) -> None:
    call_command(
        "add_dify_app",
        "hr",
        "--base-url",
        "http://dify.local/v1/",
        "--api-key",
        "app-1111222233334444",
    )
    out = capsys.readouterr().out
    assert "Created Dify app 'hr' (workflow, key app-…4444)" in out
    assert "app-1111222233334444" not in out
    call_command(
        "add_dify_app",
        "hr",
        "--base-url",
        "http://dify.local/v1",
        "--api-key",
        "app-new-key-99998888",
        "--mode",
        "chatflow",
    )
    app = DifyApp.objects.get(name="hr")
    assert (app.mode, app.api_key, app.base_url) == (
        "chatflow",
        "app-new-key-99998888",
        "http://dify.local/v1",
    )
    assert list(AuditEntry.objects.values_list("verb", flat=True).order_by("id")) == [
        "created",
        "updated",
    ]


def test_add_dify_app_rejects_a_bad_url(db: None) -> None:
    with pytest.raises(CommandError, match="--base-url is not an http"):
        call_command("add_dify_app", "hr", "--base-url", "dify.local", "--api-key", "k")
