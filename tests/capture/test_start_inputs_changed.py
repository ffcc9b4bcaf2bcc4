"""An app republished in Dify with other start inputs (a choice's options changed, an input
added) while the inbox holds its `/parameters` cached: the start page and `POST /api/v1/runs`
follow Dify's inputs as they are now, not as they were cached."""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from inbox.models import ApiToken, DifyApp, Run
from inbox.simulator.scenarios import StartInput as SimStartInput
from inbox.simulator.testing import sample_inputs

pytestmark = pytest.mark.django_db


@pytest.fixture
def refunds(sim_app: Any, starters: Any) -> DifyApp:
    app: DifyApp = sim_app("refund-approval")
    return app


@contextlib.contextmanager
def republished(simulator: Any, app_name: str, **changes: dict[str, Any]) -> Iterator[None]:
    """The simulator's app republished: its start inputs named in `changes` changed
    (`channel={"options": (...)}`), for the time of a test. `add` adds inputs."""
    app = simulator.apps[app_name]
    added = changes.pop("add", ())
    inputs = tuple(
        dataclasses.replace(spec, **changes[spec.variable]) if spec.variable in changes else spec
        for spec in app.inputs
    )

    def use(spec: Any) -> None:
        simulator.sim.apps[spec.name] = simulator.sim.apps_by_key[spec.api_key] = spec

    simulator.call(lambda: use(dataclasses.replace(app, inputs=(*inputs, *added))))
    try:
        yield
    finally:
        simulator.call(lambda: use(app))


def page_data(simulator: Any, **overrides: Any) -> dict[str, Any]:
    values = sample_inputs(simulator.apps["refund-approval"])
    data = {f"in_{k}": v for k, v in values.items() if not isinstance(v, bool)}
    data.update(overrides)
    return data


def options_of(page: str, name: str) -> list[str]:
    select = page.split(f'name="{name}"', 1)[1].split("</select>", 1)[0]
    return [part.split('"', 1)[0] for part in select.split('<option value="')[1:]]


def test_a_start_dify_refuses_for_changed_inputs_shows_the_page_with_dify_s_inputs_now(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    client.force_login(reviewer)
    page = client.get(f"/apps/{refunds.pk}/start/").content.decode()
    assert options_of(page, "in_channel") == ["email", "phone", "chat"]
    priority = SimStartInput("priority", "text-input", "Priority", True)
    web = {"options": ("web", "store"), "default": "web"}
    with republished(simulator, "refund-approval", channel=web, add=(priority,)):
        response = client.post(
            f"/apps/{refunds.pk}/start/",
            page_data(simulator, in_customer_name="Grace Hopper", in_channel="email"),
        )
        assert response.status_code == 400
        page = html.unescape(response.content.decode())
        # The inputs as Dify has them now: the choice Dify takes, and the input it added.
        assert options_of(page, "in_channel") == ["web", "store"]
        # A choice no longer offered is at the input's default again.
        assert '<option value="web" selected>' in page
        assert 'name="in_priority"' in page
        # What was typed is kept where its input still is.
        assert 'value="Grace Hopper"' in page
        assert "This app's start inputs have changed in Dify since the page was opened" in page
        said = (
            "Dify refused this value: Channel in input form must be one of the following: "
            "['web', 'store']"
        )
        assert '<div id="id_in_channel_error"><p class="field-error">' + said in page
        # Beside the choice, Dify's reason alone (not also the page's own check of "email").
        assert "Select a valid choice" not in page
        # The page shown next asks Dify again rather than its cache.
        page = client.get(f"/apps/{refunds.pk}/start/").content.decode()
        assert options_of(page, "in_channel") == ["web", "store"]
        assert 'name="in_priority"' in page
        # Sent from the page built again, the run starts.
        response = client.post(
            f"/apps/{refunds.pk}/start/",
            page_data(simulator, in_channel="store", in_priority="high"),
        )
    assert response.status_code == 302, response.content.decode()
    started = Run.objects.exclude(workflow_run_id="").get()
    assert started.inputs["channel"] == "store" and started.inputs["priority"] == "high"


def test_a_start_refused_with_the_inputs_unchanged_is_shown_as_before(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    simulator.add_fault(
        "status",
        "workflows_run",
        status=400,
        code="invalid_param",
        message="amount in input form must be a valid number",
    )
    client.force_login(reviewer)
    response = client.post(f"/apps/{refunds.pk}/start/", page_data(simulator))
    page = html.unescape(response.content.decode())
    assert response.status_code == 400
    assert "Dify refused this value: Refund amount (EUR) in input form" in page
    assert "have changed in Dify" not in page


def bearer(user: User) -> dict[str, str]:
    _token, raw = ApiToken.issue(user)
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def start(client: Client, auth: dict[str, str], **inputs: Any) -> Any:
    body = {"app": "refund-approval", "inputs": {**BASE, **inputs}}
    return client.post("/api/v1/runs", json.dumps(body), content_type="application/json", **auth)


BASE = {"customer_name": "Ada", "order_id": "SO-1", "amount": 5, "reason": "Broken."}


def test_the_api_asks_dify_again_before_refusing_a_value_its_cache_does_not_know(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    auth = bearer(reviewer)
    assert start(client, auth, channel="email").status_code == 201  # the parameters cached
    asked = simulator.request_count("parameters")
    kiosk = ("email", "phone", "chat", "kiosk")
    priority = SimStartInput("priority", "text-input", "Priority", False)
    with republished(simulator, "refund-approval", channel={"options": kiosk}, add=(priority,)):
        response = start(client, auth, channel="kiosk", priority="high")
        assert response.status_code == 201, response.content
        run = Run.objects.get(public_id=response.json()["id"])
        assert run.inputs["channel"] == "kiosk" and run.inputs["priority"] == "high"
        assert simulator.request_count("parameters") == asked + 1
        # A value Dify does not take either is refused, having asked once: the parameters
        # just read are not asked again.
        response = start(client, auth, channel="fax")
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_inputs"
        assert simulator.request_count("parameters") == asked + 2


def test_dify_refusing_the_inputs_drops_the_cached_parameters(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    auth = bearer(reviewer)
    assert start(client, auth, channel="email").status_code == 201  # the parameters cached
    with republished(simulator, "refund-approval", channel={"options": ("web", "store")}):
        response = start(client, auth, channel="email")
        # Checked here against the cache, which still offers "email": Dify refuses it.
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "dify_rejected_inputs"
        sent = simulator.request_count("workflows_run")
        # The next call reads Dify's inputs again: refused here, nothing sent to Dify.
        response = start(client, auth, channel="email")
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_inputs"
        assert response.json()["error"]["message"] == (
            "channel: Select a valid choice. email is not one of the available choices."
        )
        assert simulator.request_count("workflows_run") == sent
