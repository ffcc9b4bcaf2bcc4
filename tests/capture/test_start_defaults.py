"""An optional start input left without a value is one Dify fills with the app's default: the
inbox sends what Dify would use, so the run's record shows what the run got, and a default the
person cleared on the page stays cleared where Dify can take a blank."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.http import QueryDict
from django.test import Client

from inbox.models import ApiToken, DifyApp, Run
from inbox.runs import StartRunForm

pytestmark = pytest.mark.django_db

PARAMETERS = {
    "user_input_form": [
        {"text-input": {"variable": "note", "label": "Note", "required": False, "default": "N/A"}},
        {"paragraph": {"variable": "story", "label": "Story", "required": False}},
        {"number": {"variable": "copies", "label": "Copies", "required": False, "default": 3}},
        {
            "select": {
                "variable": "size",
                "label": "Size",
                "required": False,
                "options": ["a", "b"],
                "default": "b",
            }
        },
        {"select": {"variable": "tone", "label": "Tone", "required": False, "options": ["x"]}},
    ]
}


def form(data: Any) -> StartRunForm:
    found = StartRunForm(DifyApp(name="t", mode="workflow"), PARAMETERS, data)
    assert found.is_valid(), found.errors
    return found


def test_inputs_left_out_get_the_default_dify_would_give_them() -> None:
    # The API's way: inputs not sent at all.
    assert form({}).dify_inputs() == {"note": "N/A", "copies": 3, "size": "b"}


def test_defaults_cleared_on_the_page_stay_cleared_where_dify_takes_a_blank() -> None:
    posted = QueryDict("in_note=&in_story=&in_copies=&in_size=b&in_tone=")
    # A blank text and a blank number are sent blank (Dify reads the number as none); the
    # choice without a default is not sent; nothing becomes the default behind the person.
    assert form(posted).dify_inputs() == {"note": "", "copies": "", "size": "b"}


def test_a_choice_with_a_default_offers_no_blank_that_dify_would_replace() -> None:
    found = StartRunForm(DifyApp(name="t", mode="workflow"), PARAMETERS)
    size = [value for value, _label in found.fields["in_size"].choices]
    tone = [value for value, _label in found.fields["in_tone"].choices]
    assert size == ["a", "b"] and found.fields["in_size"].initial == "b"
    assert tone == ["", "x"]


def test_a_start_through_the_api_records_the_default_dify_ran_with(
    client: Client, simulator: Any, sim_app: Any, starters: Any, reviewer: User
) -> None:
    sim_app("refund-approval")
    _token, raw = ApiToken.issue(reviewer)
    inputs = {
        "customer_name": "Ada",
        "order_id": "SO-1",
        "amount": 5,
        "reason": "Broken.",
    }
    response = client.post(
        "/api/v1/runs",
        json.dumps({"app": "refund-approval", "inputs": inputs}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )
    assert response.status_code == 201, response.content
    run = Run.objects.get(public_id=response.json()["id"])
    # Channel was left out: Dify runs with its default, and the record says so.
    assert run.inputs["channel"] == "email"
    assert simulator.run(run.workflow_run_id)["inputs"]["channel"] == "email"
