"""Routes, forms and recipients for the reach tests (and for any test that needs a form routed
somewhere other than the shared `dify_app` fixture's default route)."""

from __future__ import annotations

import copy
import datetime as dt
import itertools
from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone

from inbox.models import DifyApp, Form, Route, RouteRecipient, Run

_ids = itertools.count(1)

DEFINITION: dict[str, Any] = {
    "form_content": "Refund **120 EUR** to Ada?\n\n{{#$output.note#}}",
    "inputs": [{"type": "paragraph", "output_variable_name": "note", "default": None}],
    "user_actions": [
        {"id": "approve", "title": "Approve", "button_style": "primary"},
        {"id": "reject", "title": "Reject", "button_style": "default"},
    ],
    "resolved_default_values": {},
}


def route(
    app: DifyApp,
    *,
    node: str = "",
    name: str = "",
    groups: Iterable[Group] = (),
    users: Iterable[User] = (),
    recipients: Iterable[tuple[str, str] | str] = (),
    **fields: Any,
) -> Route:
    """A route of `app`; `node` empty makes (or reuses) the app's default route."""
    fields.setdefault("reminders", "")
    if not node:
        made, _ = Route.objects.update_or_create(
            app=app, node="", defaults={"name": name or "default", **fields}
        )
    else:
        made = Route.objects.create(app=app, node=node, name=name or node, **fields)
    made.groups.set(list(groups))
    made.users.set(list(users))
    made.recipients.all().delete()
    for item in recipients:
        email, language = (item, "en") if isinstance(item, str) else item
        RouteRecipient.objects.create(route=made, email=email, language=language)
    return made


def make_run(app: DifyApp, **kwargs: Any) -> Run:
    n = next(_ids)
    kwargs.setdefault("workflow_run_id", f"R-reach-{n}")
    kwargs.setdefault("dify_user", f"inbox-reach-{n}")
    kwargs.setdefault("status", Run.Status.PAUSED)
    kwargs.setdefault("follow_wanted", False)
    return Run.objects.create(app=app, **kwargs)


def make_form(
    app: DifyApp,
    *,
    run: Run | None = None,
    expires_in: dt.timedelta | None = dt.timedelta(hours=5),
    **kwargs: Any,
) -> Form:
    """A captured form: creating it routes it, as the follower's capture does."""
    n = next(_ids)
    kwargs.setdefault("form_id", f"F-reach-{n}")
    kwargs.setdefault("form_token", f"dify-form-token-reach-{n}")
    kwargs.setdefault("node_id", f"approval_{n}")
    kwargs.setdefault("node_title", "Manager approval")
    kwargs.setdefault("definition", DEFINITION)
    kwargs.setdefault("content", DEFINITION["form_content"])
    # A copy: a test that edits its form's definition must not edit a module's constant for
    # the tests after it.
    kwargs["definition"] = copy.deepcopy(kwargs["definition"])
    if expires_in is not None:
        kwargs.setdefault("expiration_time", timezone.now() + expires_in)
    return Form.objects.create(run=run or make_run(app), **kwargs)


def route_existing(forms: Iterable[Form]) -> None:
    """Route forms created without `save()` (bulk_create), as their capture would have."""
    for form in forms:
        form.on_captured()


def user_change_data(admin_client: Client, user: User, **changes: Any) -> dict[str, Any]:
    """What the admin's change page of `user` would post, with `changes`: unticked boxes left
    out, as a browser leaves them."""
    form = admin_client.get(f"/admin/auth/user/{user.pk}/change/").context["adminform"].form
    data = {
        name: value
        for name, value in form.initial.items()
        if name not in ("user_permissions", "password") and value is not None
    }
    data["groups"] = [g.pk for g in user.groups.all()]
    data.update(
        {"date_joined_0": "2026-01-01", "date_joined_1": "00:00:00", "last_login_0": "", **changes}
    )
    data["last_login_1"] = ""
    return {name: value for name, value in data.items() if value is not False}


def html_of(message: Any) -> str:
    """The HTML part of an email."""
    return str(next(content for content, kind in message.alternatives if kind == "text/html"))
