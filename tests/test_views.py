from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.smoke


def test_healthz_checks_the_database(client: Client, db: None) -> None:
    response = client.get("/healthz")
    assert response.json() == {"status": "ok"}


def test_inbox_requires_login(client: Client, db: None) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_login_page_speaks_chinese_when_the_browser_asks(client: Client, db: None) -> None:
    page = client.get("/accounts/login/", HTTP_ACCEPT_LANGUAGE="zh-Hans").content.decode()
    assert "登录" in page


def test_a_reviewer_sees_the_inbox(client: Client, reviewer: object) -> None:
    client.force_login(reviewer)
    page = client.get("/").content.decode()
    assert "Nothing is waiting for you." in page
