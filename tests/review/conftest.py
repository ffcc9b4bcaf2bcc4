from __future__ import annotations

import copy
import datetime as dt
import itertools
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from inbox.models import DifyApp, Form, Run
from tests.review.browser import browser_contexts, chromium

__all__ = ["browser_contexts", "chromium"]  # fixtures for the browser tests

_ids = itertools.count(1)

CONTENT = """# Refund request

Customer **Ada** asks for a refund of 120 EUR.

{{#$output.note#}}

Choose the outcome:

{{#$output.decision#}}

{{#$output.unknown_field#}}
"""


def full_definition(**overrides: Any) -> dict[str, Any]:
    """A definition with every input kind, in the shape Dify's GET form answers."""
    definition: dict[str, Any] = {
        "form_content": CONTENT,
        "inputs": [
            {
                "type": "paragraph",
                "output_variable_name": "note",
                "default": {"type": "constant", "selector": [], "value": "constant default"},
            },
            {
                "type": "select",
                "output_variable_name": "decision",
                "option_source": {
                    "type": "constant",
                    "selector": [],
                    "value": ["refund", "partial", "deny"],
                },
            },
            {
                "type": "file",
                "output_variable_name": "receipt",
                "allowed_file_types": ["image", "document"],
                "allowed_file_extensions": [],
                "allowed_file_upload_methods": ["local_file", "remote_url"],
            },
            {
                "type": "file-list",
                "output_variable_name": "evidence",
                "allowed_file_types": ["image", "custom"],
                "allowed_file_extensions": [".dwg"],
                "allowed_file_upload_methods": ["local_file", "remote_url"],
                "number_limits": 3,
            },
        ],
        "resolved_default_values": {"note": "resolved default"},
        "user_actions": [
            {"id": "approve", "title": "Approve", "button_style": "primary"},
            {"id": "escalate", "title": "Escalate", "button_style": "accent"},
            {"id": "reject", "title": "Reject", "button_style": "default"},
            {"id": "skip", "title": "Skip", "button_style": "ghost"},
        ],
        "expiration_time": None,
    }
    definition.update(overrides)
    return definition


def make_run(app: DifyApp, **kwargs: Any) -> Run:
    n = next(_ids)
    kwargs.setdefault("workflow_run_id", f"wr-{n}")
    kwargs.setdefault("dify_user", f"inbox-user-{n}")
    kwargs.setdefault("status", Run.Status.PAUSED)
    return Run.objects.create(app=app, **kwargs)


def make_form(
    app: DifyApp,
    *,
    run: Run | None = None,
    definition: dict[str, Any] | None = None,
    expires_in: dt.timedelta | None = dt.timedelta(hours=5),
    **kwargs: Any,
) -> Form:
    n = next(_ids)
    # A copy: a test that edits its form's definition must not edit a module's constant for
    # the tests after it.
    definition = copy.deepcopy(definition) if definition is not None else full_definition()
    kwargs.setdefault("form_id", f"F-{n}")
    kwargs.setdefault("form_token", f"secret-form-token-{n}")
    kwargs.setdefault("node_id", f"node_{n}")
    kwargs.setdefault("node_title", "Manager approval")
    kwargs.setdefault("content", definition.get("form_content", ""))
    if expires_in is not None:
        kwargs.setdefault("expiration_time", timezone.now() + expires_in)
    return Form.objects.create(run=run or make_run(app), definition=definition, **kwargs)


@pytest.fixture
def form(dify_app: DifyApp) -> Form:
    return make_form(dify_app)


@pytest.fixture
def alice(client: Client, reviewer: User) -> Client:
    client.force_login(reviewer)
    return client
