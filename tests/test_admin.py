from __future__ import annotations

import pytest
from django.test import Client

from inbox.models import DifyApp

pytestmark = pytest.mark.smoke


def test_admin_lists_apps_with_a_masked_key(
    client: Client, admin_user: object, dify_app: DifyApp
) -> None:
    client.force_login(admin_user)
    page = client.get("/admin/inbox/difyapp/").content.decode()
    assert "app-…3456" in page
    assert "app-secret-key-123456" not in page


def test_admin_change_form_never_echoes_the_key(
    client: Client, admin_user: object, dify_app: DifyApp
) -> None:
    client.force_login(admin_user)
    page = client.get(f"/admin/inbox/difyapp/{dify_app.pk}/change/").content.decode()
    assert "app-secret-key-123456" not in page
    assert "Current key: app-…3456" in page


def test_saving_with_an_empty_key_keeps_the_current_one(
    client: Client, admin_user: object, dify_app: DifyApp
) -> None:
    client.force_login(admin_user)
    response = client.post(
        f"/admin/inbox/difyapp/{dify_app.pk}/change/",
        {
            "name": "refunds",
            "base_url": "http://127.0.0.1:9/v1",
            "api_key": "",
            "mode": "workflow",
            "is_active": "on",
        },
    )
    assert response.status_code == 302
    assert DifyApp.objects.get(pk=dify_app.pk).api_key == "app-secret-key-123456"


def test_creating_an_app_requires_a_key(client: Client, admin_user: object) -> None:
    client.force_login(admin_user)
    response = client.post(
        "/admin/inbox/difyapp/add/",
        {"name": "new", "base_url": "http://127.0.0.1:9/v1", "api_key": "", "mode": "workflow"},
    )
    assert "An API key is required." in response.content.decode()
    assert not DifyApp.objects.filter(name="new").exists()


@pytest.mark.parametrize("path", ["run", "form", "decision", "upload", "runevent", "auditentry"])
def test_every_model_has_a_working_admin_list(
    client: Client, admin_user: object, path: str
) -> None:
    client.force_login(admin_user)
    assert client.get(f"/admin/inbox/{path}/").status_code == 200


def test_audit_entries_are_read_only(client: Client, admin_user: object) -> None:
    client.force_login(admin_user)
    assert client.get("/admin/inbox/auditentry/add/").status_code == 403
