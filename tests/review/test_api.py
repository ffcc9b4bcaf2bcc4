from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from inbox.models import ApiToken, DifyApp, Form, Upload
from tests.review.conftest import make_form

pytestmark = pytest.mark.smoke


@pytest.fixture
def auth(reviewer: User) -> dict[str, str]:
    _token, raw = ApiToken.issue(reviewer)
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_the_api_needs_a_token(client: Client, db: None) -> None:
    response = client.get("/api/v1/forms")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_list_pending_forms(client: Client, auth: dict[str, str], dify_app: DifyApp) -> None:
    form = make_form(dify_app, node_title="Manager approval")
    make_form(dify_app, status=Form.Status.SUBMITTED)
    body = client.get("/api/v1/forms?status=pending", **auth).json()
    assert body["count"] == 1 and body["pages"] == 1
    row = body["results"][0]
    assert row["id"] == str(form.public_id) and row["node_title"] == "Manager approval"
    assert row["app"] == "refunds" and row["status"] == "pending"
    assert row["url"].endswith(f"/forms/{form.public_id}/")


def test_the_list_is_narrowed_to_an_app_by_its_name_and_refuses_what_it_does_not_know(
    client: Client, auth: dict[str, str], dify_app: DifyApp, reviewers_group: Any
) -> None:
    from inbox.models import Route

    other = DifyApp.objects.create(name="hiring", base_url="http://127.0.0.1:9/v1", api_key="k")
    Route.objects.create(app=other, name="default", reminders="").groups.add(reviewers_group)
    make_form(dify_app, node_title="Refund")
    make_form(other, node_title="Offer")

    def titles(query: str) -> list[str]:
        response = client.get(f"/api/v1/forms?{query}", **auth)
        assert response.status_code == 200, response.content
        return sorted(row["node_title"] for row in response.json()["results"])

    assert titles("") == ["Offer", "Refund"]
    assert titles("app=hiring") == ["Offer"]
    assert titles(f"app={dify_app.pk}") == ["Refund"]  # its id, as the pages' filter sends it
    for query, message in (
        ("app=payroll", "Unknown app 'payroll'."),
        ("sort=cheapest", "Unknown sort 'cheapest'; one of: newest, oldest, time_left."),
    ):
        response = client.get(f"/api/v1/forms?{query}", **auth)
        assert response.status_code == 400
        assert response.json()["error"] == {"code": "invalid_param", "message": message}


def test_detail_gives_the_definition_and_never_the_token(
    client: Client, auth: dict[str, str], form: Form
) -> None:
    response = client.get(f"/api/v1/forms/{form.public_id}", **auth)
    body = response.json()
    assert [i["output_variable_name"] for i in body["inputs"]] == [
        "note",
        "decision",
        "receipt",
        "evidence",
    ]
    assert [a["id"] for a in body["actions"]] == ["approve", "escalate", "reject", "skip"]
    assert body["answerable"] is True and body["decision"] is None
    assert form.form_token not in response.content.decode()


def test_decision_validation_speaks_difys_rules(
    client: Client, auth: dict[str, str], form: Form
) -> None:
    response = client.post(
        f"/api/v1/forms/{form.public_id}/decision",
        json.dumps({"action": "approve", "inputs": {"decision": "refund"}}),
        content_type="application/json",
        **auth,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_form_data"
    assert (
        error["message"] == "receipt: Add a file. Missing required inputs: note, receipt, evidence."
    )
    assert error["details"] == {
        "receipt": ["Add a file."],
        "__all__": ["Missing required inputs: note, receipt, evidence."],
    }


@pytest.mark.parametrize("value", [{"a": [1, 2]}, 5, None, ["x"]])
def test_a_decision_with_text_that_is_not_a_string_is_refused(
    client: Client, auth: dict[str, str], form: Form, value: Any
) -> None:
    response = client.post(
        f"/api/v1/forms/{form.public_id}/decision",
        json.dumps({"action": "approve", "inputs": {"note": value, "decision": "refund"}}),
        content_type="application/json",
        **auth,
    )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "invalid_form_data",
        "message": "'note' must be a string.",
        "details": {"note": ["Must be a string."]},
    }
    assert not form.decisions.exists()


def test_a_decision_with_an_input_the_form_does_not_have_is_refused_by_its_name(
    client: Client, auth: dict[str, str], form: Form
) -> None:
    response = client.post(
        f"/api/v1/forms/{form.public_id}/decision",
        json.dumps({"action": "approve", "inputs": {"notes": "typo", "decision": "refund"}}),
        content_type="application/json",
        **auth,
    )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "invalid_form_data",
        "message": "Unknown input 'notes'; this form takes: note, decision, receipt, evidence.",
        "details": {"notes": ["Unknown input."]},
    }
    assert not form.decisions.exists()


def test_decision_on_a_closed_form_is_a_conflict(
    client: Client, auth: dict[str, str], dify_app: DifyApp
) -> None:
    form = make_form(dify_app, status=Form.Status.EXPIRED)
    response = client.post(
        f"/api/v1/forms/{form.public_id}/decision",
        json.dumps({"action": "approve", "inputs": {}}),
        content_type="application/json",
        **auth,
    )
    assert response.status_code == 409 and response.json()["error"]["code"] == "form_not_open"


def test_files_refuse_a_type_the_input_does_not_take(
    client: Client, auth: dict[str, str], form: Form
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("song.mp3", b"ID3", content_type="audio/mpeg")
    response = client.post(
        f"/api/v1/forms/{form.public_id}/files", {"input": "receipt", "file": upload}, **auth
    )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "upload_rejected",
        "message": "This kind of file is not accepted here. Accepted: images, documents.",
    }


def test_another_reviewers_uploads_are_neither_listed_nor_sent(
    client: Client,
    auth: dict[str, str],
    form: Form,
    other_reviewer: User,
    django_capture_on_commit_callbacks: Any,
) -> None:
    def upload(by: User, name: str) -> Upload:
        return Upload.objects.create(
            form=form,
            uploaded_by=by,
            input_name="receipt",
            upload_file_id=f"dify-{name}",
            name=name,
            size=10,
            category="image",
        )

    theirs = upload(other_reviewer, "bobs-photo.png")
    mine = upload(ApiToken.objects.get().user, "my-photo.png")
    detail = client.get(f"/api/v1/forms/{form.public_id}", **auth).json()
    assert [u["name"] for u in detail["uploads"]] == ["my-photo.png"]

    def decide(receipt: Upload) -> Any:
        with django_capture_on_commit_callbacks(execute=False):
            return client.post(
                f"/api/v1/forms/{form.public_id}/decision",
                json.dumps(
                    {
                        "action": "approve",
                        "inputs": {
                            "note": "ok",
                            "decision": "refund",
                            "receipt": str(receipt.public_id),
                            "evidence": [],
                        },
                    }
                ),
                content_type="application/json",
                **auth,
            )

    refused = decide(theirs)
    assert refused.status_code == 400
    assert refused.json()["error"]["details"] == {
        "receipt": ["This upload is not part of this form; upload the file again."]
    }
    assert decide(mine).status_code == 202


def test_unknown_forms_are_404(client: Client, auth: dict[str, str]) -> None:
    response = client.get("/api/v1/forms/00000000-0000-0000-0000-000000000000", **auth)
    assert response.status_code == 404


def test_a_submission_key_of_another_forms_decision_is_refused_not_a_crash(
    client: Client, auth: dict[str, str], dify_app: DifyApp, django_capture_on_commit_callbacks: Any
) -> None:
    definition = {
        "form_content": "Approve?",
        "inputs": [],
        "user_actions": [{"id": "approve", "title": "Approve", "button_style": "primary"}],
    }
    first, second = (make_form(dify_app, definition=definition) for _ in range(2))

    def decide(form: Form) -> Any:
        with django_capture_on_commit_callbacks(execute=False):
            return client.post(
                f"/api/v1/forms/{form.public_id}/decision",
                json.dumps({"action": "approve", "inputs": {}, "submission_key": "k-123"}),
                content_type="application/json",
                **auth,
            )

    assert decide(first).status_code == 202
    response = decide(second)
    assert response.status_code == 400
    assert response.json()["error"]["details"]["submission_key"] == [
        "This submission key was used for a decision on another form; send a new one."
    ]
    assert second.decisions.count() == 0


def test_the_same_submission_key_with_another_action_is_a_conflict_not_a_202(
    client: Client, auth: dict[str, str], dify_app: DifyApp, django_capture_on_commit_callbacks: Any
) -> None:
    definition = {
        "form_content": "Approve?",
        "inputs": [],
        "user_actions": [
            {"id": "approve", "title": "Approve", "button_style": "primary"},
            {"id": "reject", "title": "Reject", "button_style": "default"},
        ],
    }
    form = make_form(dify_app, definition=definition)

    def decide(action: str) -> Any:
        with django_capture_on_commit_callbacks(execute=False):
            return client.post(
                f"/api/v1/forms/{form.public_id}/decision",
                json.dumps({"action": action, "inputs": {}, "submission_key": "k-7"}),
                content_type="application/json",
                **auth,
            )

    assert decide("approve").status_code == 202
    # Sent again: the same decision.
    again = decide("approve")
    assert again.status_code == 202 and again.json()["decision"]["action"] == "approve"
    other = decide("reject")
    assert other.status_code == 409
    error = other.json()["error"]
    assert error["code"] == "submission_key_reused"
    assert error["details"]["decision"]["action"] == "approve"
    assert form.decisions.count() == 1
