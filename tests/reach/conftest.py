from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache

from inbox import notify
from inbox.models import DifyApp, Form, FormRecipient, Route
from tests.reach.factories import DEFINITION, make_form, route

GUEST = "guest@example.net"
GUEST_ZH = "zhang@example.cn"

# A form with a file input, so the upload endpoints have something to accept.
FILE_DEFINITION: dict[str, Any] = {
    **DEFINITION,
    "form_content": DEFINITION["form_content"] + "\n\n{{#$output.receipt#}}",
    "inputs": [
        *DEFINITION["inputs"],
        {
            "type": "file",
            "output_variable_name": "receipt",
            "allowed_file_types": ["document", "image"],
            "allowed_file_extensions": [],
            "allowed_file_upload_methods": ["local_file", "remote_url"],
        },
    ],
}


@pytest.fixture(autouse=True)
def _fresh_rate_limits() -> None:
    # Rate-limit counters live in the cache; one test's visits must not count against the next.
    cache.clear()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # The personas are created in every test (the permission matrix makes 170 of them); the
    # production hasher is slow on purpose, which here only costs seconds per test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def reach_app(db: None) -> DifyApp:
    return DifyApp.objects.create(
        name="payroll", base_url="http://127.0.0.1:9/v1", api_key="app-payroll-key-123456"
    )


@pytest.fixture
def reach_route(reach_app: DifyApp, reviewer: User) -> Route:
    """payroll's default route: alice by name, two guests (English and Chinese), reminders."""
    return route(
        reach_app,
        users=[reviewer],
        recipients=[(GUEST, "en"), (GUEST_ZH, "zh-hans")],
        allow_guests=True,
        reminders="24h,1h",
    )


@pytest.fixture
def routed_form(reach_route: Route, reach_app: DifyApp) -> Form:
    return make_form(
        reach_app,
        definition=FILE_DEFINITION,
        content=FILE_DEFINITION["form_content"],
        expires_in=dt.timedelta(hours=30),
    )


@pytest.fixture
def guest_recipient(routed_form: Form) -> FormRecipient:
    return routed_form.recipients.get(email=GUEST)


@pytest.fixture
def guest_link(guest_recipient: FormRecipient) -> str:
    return notify.link_path(notify.link_token(guest_recipient))
