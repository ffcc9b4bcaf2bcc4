from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from inbox.models import ApiToken, DifyApp, Form, Upload
from tests.review.conftest import full_definition, make_form

pytestmark = pytest.mark.smoke


@pytest.fixture
def auth(reviewer: User) -> dict[str, str]:
    _token, raw = ApiToken.issue(reviewer)
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_the_api_needs_a_token(client: Client, db: None) -> None:
    response = client.get("/api/v1/forms")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_a_token_of_a_deactivated_account_is_refused_saying_so_only_to_its_holder(
    client: Client, reviewer: User
) -> None:
    _token, raw = ApiToken.issue(reviewer)
    assert client.get("/api/v1/forms", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 200
    User.objects.filter(pk=reviewer.pk).update(is_active=False)
    refused = client.get("/api/v1/forms", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert refused.status_code == 401
    assert refused.json()["error"] == {
        "code": "unauthorized",
        "message": "The API token's account is deactivated; an administrator can activate it "
        "again.",
    }
    chinese = client.get(
        "/api/v1/forms", HTTP_AUTHORIZATION=f"Bearer {raw}", HTTP_ACCEPT_LANGUAGE="zh-hans"
    ).json()["error"]
    assert chinese["code"] == "unauthorized" and re.search("[\u4e00-\u9fff]", chinese["message"])
    # A guessed token, or this one revoked, learns nothing of the account.
    guessed = client.get("/api/v1/forms", HTTP_AUTHORIZATION="Bearer inbx_guess")
    assert guessed.json()["error"]["message"] == "The API token is not valid."
    ApiToken.objects.filter(user=reviewer).update(revoked_at="2026-01-01T00:00:00Z")
    revoked = client.get("/api/v1/forms", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert revoked.json()["error"]["message"] == "The API token is not valid."


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
    for query, code, message in (
        # An app no app has: said as a start or an ingest says it.
        ("app=payroll", "unknown_app", "Unknown app \u201cpayroll\u201d."),
        (
            "sort=cheapest",
            "invalid_param",
            "Unknown sort 'cheapest'; one of: decided, newest, oldest, time_left.",
        ),
    ):
        response = client.get(f"/api/v1/forms?{query}", **auth)
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["code"], error["message"]) == (code, message)
        # The parameter is named, as the other calls' errors name their fields.
        assert list(error["details"]) == [query.split("=")[0]]


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
    # Each input left out named by itself too, for a client that reads the errors by input.
    missing = ["Missing: every input of the form must be sent."]
    assert error["details"] == {
        "receipt": ["Add a file."],
        "__all__": ["Missing required inputs: note, receipt, evidence."],
        "note": missing,
        "evidence": missing,
    }
    # In Chinese: the language's own colon after the input, no space between the sentences.
    response = client.post(
        f"/api/v1/forms/{form.public_id}/decision",
        json.dumps({"action": "approve", "inputs": {"decision": "refund"}}),
        content_type="application/json",
        HTTP_ACCEPT_LANGUAGE="zh-hans",
        **auth,
    )
    said = response.json()["error"]["message"]
    assert said.startswith("receipt\uff1a") and "\u3002 " not in said and ": " not in said


@pytest.mark.parametrize("value", [{"a": [1, 2]}, 5, None, ["x"]])
def test_a_decision_with_text_that_is_not_a_string_is_refused(
    client: Client, auth: dict[str, str], form: Form, value: Any
) -> None:
    response = client.post(
        f"/api/v1/forms/{form.public_id}/decision",
        json.dumps(
            {
                "action": "approve",
                "inputs": {"note": value, "decision": "refund", "receipt": None, "evidence": []},
            }
        ),
        content_type="application/json",
        **auth,
    )
    assert response.status_code == 400
    # Said beside the form's own errors of the other inputs, at once.
    assert response.json()["error"] == {
        "code": "invalid_form_data",
        "message": "'note' must be a string. receipt: Add a file.",
        "details": {"note": ["Must be a string."], "receipt": ["Add a file."]},
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
    said = (
        "This kind of file is not accepted here. Accepted: images (GIF, JPEG, JPG, PNG, SVG, "
        "WEBP), documents (CSV, DOCX, HTM, HTML, MARKDOWN, MD, MDX, PDF, PROPERTIES, TXT, VTT, "
        "XLS, XLSX)."
    )
    # The file's own fault: said of the `file` field in `details` too.
    assert response.json()["error"] == {
        "code": "upload_rejected",
        "message": said,
        "details": {"file": [said]},
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
        "receipt": ["This file was uploaded by someone else; upload your own."]
    }
    # One of the caller's own, made for another input, is said to be so.
    for_evidence = upload(ApiToken.objects.get().user, "evidence.png")
    Upload.objects.filter(pk=for_evidence.pk).update(input_name="evidence")
    refused = decide(for_evidence)
    assert refused.json()["error"]["details"] == {
        "receipt": ["This file was uploaded for the input “evidence”; upload it again here."]
    }
    decided = decide(mine)
    assert decided.status_code == 202
    # The decision names the file by the id the upload call gave, beside Dify's.
    receipt = decided.json()["decision"]["inputs"]["receipt"]
    assert receipt["upload_file_id"] == "dify-my-photo.png"
    assert receipt["upload"] == str(mine.public_id)


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
    assert response.status_code == 409
    assert response.json()["error"] == {
        "code": "submission_key_reused",
        "message": "You used this submission_key for a decision on another form; send a new key.",
        "details": {"submission_key": ["Used for a decision on another form."]},
    }
    assert second.decisions.count() == 0


def test_submission_keys_are_each_caller_s_own(
    client: Client,
    auth: dict[str, str],
    reviewer: Any,
    other_reviewer: Any,
    dify_app: DifyApp,
    django_capture_on_commit_callbacks: Any,
) -> None:
    definition = {
        "form_content": "Approve?",
        "inputs": [{"type": "paragraph", "output_variable_name": "note", "default": None}],
        "user_actions": [{"id": "approve", "title": "Approve", "button_style": "primary"}],
    }
    mine, theirs = (make_form(dify_app, definition=definition) for _ in range(2))
    other_auth = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(other_reviewer)[1]}"}

    def decide(form: Form, headers: dict[str, str], note: str = "ok") -> Any:
        body = {"action": "approve", "inputs": {"note": note}, "submission_key": "1"}
        with django_capture_on_commit_callbacks(execute=False):
            return client.post(
                f"/api/v1/forms/{form.public_id}/decision",
                json.dumps(body),
                content_type="application/json",
                **headers,
            )

    assert decide(mine, auth).status_code == 202
    # Another caller sending that key on that form is not handed the first one's decision.
    response = decide(mine, other_auth)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "form_not_open"
    # Nor does the key stop them using it for a decision of their own.
    assert decide(theirs, other_auth).status_code == 202
    assert theirs.decisions.get().reviewer == other_reviewer
    # The same key with other words is not the same decision sent again.
    response = decide(theirs, other_auth, note="changed my mind")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "submission_key_reused"
    assert decide(theirs, other_auth).status_code == 202
    assert theirs.decisions.count() == 1 and mine.decisions.count() == 1


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
    # Said by what differs: the action, not "other values" the call did not send.
    assert error["message"] == (
        "This submission_key was already used for a decision on this form, and this one differs "
        "from it: another action (it was 'approve'). Send a new key for another decision."
    )
    assert error["details"]["differs"] == ["action"]
    assert form.decisions.count() == 1


def _own_upload(form: Form, input_name: str, name: str) -> str:
    upload = Upload.objects.create(
        form=form,
        uploaded_by=ApiToken.objects.get().user,
        input_name=input_name,
        upload_file_id=f"dify-{name}",
        name=name,
        size=10,
        category="image" if name.endswith(".png") else "document",
    )
    return str(upload.public_id)


def test_the_same_submission_key_with_other_files_is_a_conflict_not_a_202(
    client: Client, auth: dict[str, str], form: Form, django_capture_on_commit_callbacks: Any
) -> None:
    r1, r2 = (_own_upload(form, "receipt", f"r{n}.pdf") for n in (1, 2))
    e1, e2, e3 = (_own_upload(form, "evidence", f"e{n}.png") for n in (1, 2, 3))

    def decide(receipt: Any, evidence: Any, action: str = "approve", note: str = "ok") -> Any:
        inputs = {"note": note, "decision": "refund", "receipt": receipt, "evidence": evidence}
        body = {"action": action, "inputs": inputs, "submission_key": "k-files"}
        with django_capture_on_commit_callbacks(execute=False):
            return post_json(client, f"/api/v1/forms/{form.public_id}/decision", body, auth)

    first = decide(r1, [e1, e2])
    assert first.status_code == 202, first.content
    # The same files sent again, listed in another order or spelt otherwise: the same decision.
    for receipt, evidence in ((r1, [e2, e1]), ({"upload": r1.upper()}, [{"upload": e1}, e2])):
        again = decide(receipt, evidence)
        assert again.status_code == 202, again.content
        assert again.json()["decision"]["id"] == first.json()["decision"]["id"]
    # Other files under the key are another decision: never a 202 that says they went.
    for receipt, evidence, differs in (
        (r1, [e1, e3], "evidence"),
        (r1, [e1], "evidence"),
        (r1, [e1, e2, e3], "evidence"),
        (r2, [e1, e2], "receipt"),
        (None, [e1, e2], "receipt"),
        ("https://files.example.com/r1.pdf", [e1, e2], "receipt"),
    ):
        refused = decide(receipt, evidence)
        assert refused.status_code == 409, (receipt, evidence)
        error = refused.json()["error"]
        assert error["code"] == "submission_key_reused"
        assert error["message"] == (
            "This submission_key was already used for a decision on this form, and this one "
            f"differs from it: other files for {differs}. Send a new key for another decision."
        )
        assert error["details"]["differs"] == [f"inputs.{differs}"]
        assert error["details"]["decision"]["id"] == first.json()["decision"]["id"]
    # Everything that differs is said, each in its words.
    refused = decide(r2, [e1, e3], action="reject", note="no")
    error = refused.json()["error"]
    assert error["message"] == (
        "This submission_key was already used for a decision on this form, and this one differs "
        "from it: another action (it was 'approve'); other values for note; other files for "
        "receipt, evidence. Send a new key for another decision."
    )
    assert error["details"]["differs"] == [
        "action",
        "inputs.note",
        "inputs.receipt",
        "inputs.evidence",
    ]
    assert form.decisions.count() == 1
    sent = form.decisions.get().inputs
    assert sent["receipt"]["upload_file_id"] == "dify-r1.pdf"
    assert [f["upload_file_id"] for f in sent["evidence"]] == ["dify-e1.png", "dify-e2.png"]


def test_every_decision_input_of_the_wrong_type_is_said_at_once(
    client: Client, auth: dict[str, str], dify_app: DifyApp
) -> None:
    definition = full_definition()
    definition["inputs"] += [
        {"type": "paragraph", "output_variable_name": "cause", "default": None},
    ]
    form = make_form(dify_app, definition=definition)
    inputs = {
        "note": ["a"],
        "decision": "refund",
        "cause": 5,
        "receipt": 123,
        "evidence": {"a": 1},
    }
    body = {"action": "approve", "inputs": inputs}
    response = post_json(client, f"/api/v1/forms/{form.public_id}/decision", body, auth)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_form_data"
    shape = (
        'A file is the id the upload call (/files) returned, as a string or as {"upload": id}, '
        'or a web address, as a string or as {"url": "https://..."}.'
    )
    listed = (
        'A file list takes a list of files, even of one: [id] or [{"upload": id}], not an object.'
    )
    assert error["details"] == {
        "note": ["Must be a string."],
        "receipt": [shape],
        "evidence": [listed],
        "cause": ["Must be a string."],
    }
    assert error["message"] == (
        f"'note' must be a string. receipt: {shape} evidence: {listed} 'cause' must be a string."
    )
    assert not form.decisions.exists()


def test_a_file_list_takes_a_list_and_a_file_one_file(
    client: Client, auth: dict[str, str], form: Form, django_capture_on_commit_callbacks: Any
) -> None:
    receipt = _own_upload(form, "receipt", "r.pdf")
    annex = _own_upload(form, "evidence", "annex.png")

    def decide(receipt: Any, evidence: Any) -> Any:
        inputs = {"note": "ok", "decision": "refund", "receipt": receipt, "evidence": evidence}
        with django_capture_on_commit_callbacks(execute=False):
            return post_json(
                client,
                f"/api/v1/forms/{form.public_id}/decision",
                {"action": "approve", "inputs": inputs},
                auth,
            )

    # A bare id where a list goes: refused, by its input, not taken as a list of one.
    for bare in (annex, {"upload": annex}):
        refused = decide(receipt, bare)
        assert refused.status_code == 400
        said = refused.json()["error"]
        assert said["details"] == {
            "evidence": [
                'A file list takes a list of files, even of one: [id] or [{"upload": id}], not '
                + ("a string." if isinstance(bare, str) else "an object.")
            ]
        }
        assert said["message"].startswith("evidence: A file list takes a list of files")
    # A list where one file goes: refused as well.
    refused = decide([receipt], [annex])
    assert refused.json()["error"]["details"] == {
        "receipt": [
            'This input takes one file, not a list: its id as a string or as {"upload": id} '
            "(or null for none)."
        ]
    }
    assert not form.decisions.exists()
    # Either spelling of a file, one for a file and a list for a list, is taken.
    decided = decide({"upload": receipt}, [annex])
    assert decided.status_code == 202, decided.content


def post_json(client: Client, path: str, body: Any, auth: dict[str, str]) -> Any:
    raw = body if isinstance(body, str) else json.dumps(body)
    return client.post(path, raw, content_type="application/json", **auth)


def test_text_that_cannot_be_stored_or_sent_is_refused_where_it_is(
    client: Client, auth: dict[str, str], form: Form
) -> None:
    # A lone surrogate cannot be encoded for Dify: taken, its delivery would fail for good.
    raw = '{"action": "approve", "inputs": {"note": "ok \\ud800"}}'
    response = post_json(client, f"/api/v1/forms/{form.public_id}/decision", raw, auth)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "invalid_json",
        "message": "The request body holds a lone surrogate (invalid Unicode) in inputs.note.",
        "details": {"inputs.note": ["Holds a lone surrogate (invalid Unicode)."]},
    }
    raw = '{"action": "approve", "submission_key": "a\\u0000b"}'
    response = post_json(client, f"/api/v1/forms/{form.public_id}/decision", raw, auth)
    assert response.json()["error"]["details"] == {"submission_key": ["Holds a NUL character."]}
    assert not form.decisions.exists()
    response = client.get("/api/v1/forms?q=a%00b", **auth)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "The query parameter 'q' holds a NUL character."


@pytest.mark.parametrize(
    "query", ["app=%C2%B2", "page=%C2%B2", "app=" + "9" * 5000, "node=99999999999999999999999:x"]
)
def test_numbers_no_database_can_hold_are_no_crash(
    client: Client, auth: dict[str, str], form: Form, query: str
) -> None:
    response = client.get(f"/api/v1/forms?{query}", **auth)
    assert response.status_code in (200, 400)
    assert response["Content-Type"] == "application/json"
    # The inbox page takes the same filters.
    client.force_login(form.run.started_by or User.objects.get(username="alice"))
    assert client.get(f"/?{query}").status_code == 200
    assert client.get(f"/nodes/?{query}").status_code == 200


def test_pages_of_the_form_list_end(
    client: Client, auth: dict[str, str], dify_app: DifyApp
) -> None:
    for _ in range(3):
        make_form(dify_app)
    body = client.get("/api/v1/forms?status=&page=1", **auth).json()
    assert (body["count"], body["page"], body["pages"], len(body["results"])) == (3, 1, 1, 3)
    assert (body["page_size"], body["next_page"]) == (50, None)
    # Past the last page: empty, so a client reading page after page stops.
    body = client.get("/api/v1/forms?page=2", **auth).json()
    assert (body["page"], body["results"], body["next_page"]) == (2, [], None)
    for bad in ("abc", "0", "-1", "1.5"):
        response = client.get(f"/api/v1/forms?page={bad}", **auth)
        assert response.status_code == 400, bad
        assert response.json()["error"]["code"] == "invalid_param"
    message = client.get("/api/v1/forms?status=done", **auth).json()["error"]["message"]
    assert message.startswith("Unknown status 'done'; one of: ")
    assert "pending" in message and "elsewhere" in message


def test_the_forms_are_paged_as_the_runs_are(
    client: Client, auth: dict[str, str], dify_app: DifyApp
) -> None:
    made = [make_form(dify_app) for _ in range(3)]
    ids = [str(form.public_id) for form in made]

    def page(query: str) -> dict[str, Any]:
        response = client.get(f"/api/v1/forms?sort=oldest&{query}", **auth)
        assert response.status_code == 200, response.content
        body: dict[str, Any] = response.json()
        return body

    first = page("page_size=2")
    assert (first["count"], first["pages"], first["page"], first["page_size"]) == (3, 2, 1, 2)
    assert first["next_page"] == 2 and [r["id"] for r in first["results"]] == ids[:2]
    second = page(f"page={first['next_page']}&page_size=2")
    assert (second["page"], second["next_page"]) == (2, None)
    assert [r["id"] for r in second["results"]] == ids[2:]
    # Far past the last page: empty as any page past it, not a number refused.
    far = page("page=1000001")
    assert (far["page"], far["next_page"], far["results"]) == (1000001, None, [])
    for query, message in (
        (
            "page=1000000001",
            "'page' must be a whole number from 1 to 1000000000; got '1000000001'.",
        ),
        ("page_size=0", "'page_size' must be a whole number from 1 to 100; got '0'."),
        ("page_size=500", "'page_size' must be a whole number from 1 to 100; got '500'."),
    ):
        response = client.get(f"/api/v1/forms?{query}", **auth)
        assert response.status_code == 400, query
        error = response.json()["error"]
        assert (error["code"], error["message"]) == ("invalid_param", message)
        assert list(error["details"]) == [query.split("=")[0]]


def test_a_form_s_file_inputs_say_the_largest_file_per_kind_as_its_page_does(
    client: Client,
    auth: dict[str, str],
    simulator: Any,
    simulator_dify_app: Any,
    reviewers_group: Any,
) -> None:
    from inbox.models import Route

    mb = 1024 * 1024
    simulator.set_options(
        size_limits={"image": 1 * mb, "file": 2 * mb, "audio": 3 * mb, "video": 4 * mb}
    )
    app = simulator_dify_app()
    Route.objects.create(app=app, name="default", reminders="").groups.add(reviewers_group)
    url_only = {
        "type": "file",
        "output_variable_name": "link",
        "allowed_file_types": ["document"],
        "allowed_file_extensions": [],
        "allowed_file_upload_methods": ["remote_url"],
    }
    definition = full_definition()
    definition["inputs"].append(url_only)
    form = make_form(app, definition=definition)
    inputs = {
        i["output_variable_name"]: i
        for i in client.get(f"/api/v1/forms/{form.public_id}", **auth).json()["inputs"]
    }
    # The page names "images 1 MB, documents 2 MB" and "images 1 MB, .dwg 2 MB" beside them.
    assert inputs["receipt"]["max_file_sizes"] == {"image": 1 * mb, "document": 2 * mb}
    assert inputs["evidence"]["max_file_sizes"] == {"image": 1 * mb, ".dwg": 2 * mb}
    assert inputs["evidence"]["allowed_file_extensions"] == [".dwg"]
    # Web addresses only: no file is uploaded, so no size is Dify's to take.
    assert inputs["link"]["max_file_sizes"] is None
    assert "max_file_sizes" not in inputs["note"] and "max_file_sizes" not in inputs["decision"]


def test_a_misspelt_field_is_refused_by_its_name(
    client: Client, auth: dict[str, str], form: Form
) -> None:
    body = {"action": "approve", "inputs": {}, "submision_key": "k-1"}
    response = post_json(client, f"/api/v1/forms/{form.public_id}/decision", body, auth)
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"submision_key": ["Unknown field."]}
    assert not form.decisions.exists()


def test_an_action_that_is_not_a_string_is_said_so(
    client: Client, auth: dict[str, str], form: Form
) -> None:
    for action in (["approve"], 1, True, {"id": "approve"}):
        body = {"action": action, "inputs": {}}
        response = post_json(client, f"/api/v1/forms/{form.public_id}/decision", body, auth)
        assert response.status_code == 400
        message = response.json()["error"]["message"]
        assert message.startswith(
            "'action' must be a string: the id of one of this form's actions"
        ), action
        assert "[" not in message
    for body in ({"inputs": {}}, {"action": "", "inputs": {}}, {"action": None, "inputs": {}}):
        response = post_json(client, f"/api/v1/forms/{form.public_id}/decision", body, auth)
        assert response.json()["error"]["message"].startswith(
            "'action' is required: the id of one of this form's actions"
        ), body


def test_a_file_value_of_the_wrong_shape_is_keyed_by_its_input(
    client: Client, auth: dict[str, str], form: Form
) -> None:
    inputs = {"note": "", "decision": "refund", "receipt": 5, "evidence": []}
    body = {"action": "approve", "inputs": inputs}
    response = post_json(client, f"/api/v1/forms/{form.public_id}/decision", body, auth)
    assert response.status_code == 400
    assert list(response.json()["error"]["details"]) == ["receipt"]


def test_a_form_past_its_time_is_said_to_have_expired_not_to_be_decided(
    client: Client, auth: dict[str, str], dify_app: DifyApp
) -> None:
    import datetime as dt

    form = make_form(dify_app, expires_in=dt.timedelta(seconds=-5))
    body = {"action": "approve", "inputs": {}}
    response = post_json(client, f"/api/v1/forms/{form.public_id}/decision", body, auth)
    assert response.status_code == 409
    assert response.json()["error"]["message"].startswith("This form expired at ")
    details = response.json()["error"]["details"]
    # Expired, as soon as its time has passed: not "pending" until the sweep records it.
    assert details["status"] == "expired"
    assert details["expired_at"] == form.expiration_time.isoformat()
    detail = client.get(f"/api/v1/forms/{form.public_id}", **auth).json()
    assert (detail["status"], detail["answerable"]) == ("expired", False)
    listed = client.get("/api/v1/forms?status=all", **auth).json()["results"]
    assert [row["status"] for row in listed] == ["expired"]
    # In the expired tab, not the pending one, as soon as its time is up.
    assert client.get("/api/v1/forms?status=pending", **auth).json()["results"] == []
    expired = client.get("/api/v1/forms?status=expired", **auth).json()["results"]
    assert [row["id"] for row in expired] == [str(form.public_id)]
    run = client.get(f"/api/v1/runs/{form.run.public_id}", **auth).json()
    assert run["forms"][0]["answerable"] is False


def test_an_upload_dify_cannot_be_reached_for_is_not_the_file_s_fault(
    client: Client, auth: dict[str, str], form: Form
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    # The app's Dify is a closed port: worth trying again, not a file to change.
    response = client.post(
        f"/api/v1/forms/{form.public_id}/files",
        {"input": "receipt", "file": SimpleUploadedFile("r.pdf", b"%PDF-1.4", "application/pdf")},
        **auth,
    )
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "dify_unavailable"


def test_errors_django_would_answer_in_html_are_json(
    client: Client, auth: dict[str, str], form: Form, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = f"/api/v1/forms/{form.public_id}/files"
    response = client.generic(
        "POST", path, b"--xx\r\nbroken", content_type="multipart/form-data", **auth
    )
    assert response.status_code == 400 and response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "invalid_request"
    many = "&".join(f"f{n}=1" for n in range(1100))
    response = client.get(f"/api/v1/forms?{many}", **auth)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    # A failure of the inbox itself: the envelope, and nothing of the failure's insides.
    monkeypatch.setattr("inbox.api.page_state", lambda form: 1 / 0)
    response = client.get(f"/api/v1/forms/{form.public_id}", **auth)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "ZeroDivision" not in response.content.decode()


def test_protocol_headers_of_refusals(client: Client, auth: dict[str, str], form: Form) -> None:
    response = client.delete(f"/api/v1/forms/{form.public_id}", **auth)
    assert response.status_code == 405 and response["Allow"] == "GET, HEAD"
    response = client.get(f"/api/v1/forms/{form.public_id}/decision", **auth)
    assert response.status_code == 405 and response["Allow"] == "POST"
    response = client.get("/api/v1/forms")
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")


def test_a_misspelt_query_parameter_is_refused_by_name(
    client: Client, auth: dict[str, str], form: Form
) -> None:
    response = client.get("/api/v1/forms?stauts=submitted", **auth)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_param" and "'stauts'" in error["message"]
    assert error["details"] == {"stauts": ["Unknown query parameter."]}
    assert client.get("/api/v1/forms?status=all&mine=1&sort=newest", **auth).status_code == 200
    assert client.get(f"/api/v1/forms/{form.public_id}?x=1", **auth).status_code == 400
    assert client.get("/api/v1/runs?status=open&page=1", **auth).status_code == 200


def test_a_query_parameter_given_twice_is_refused(
    client: Client, auth: dict[str, str], form: Form
) -> None:
    # Which one would count is not the caller's to guess: "mine=1&mine=0" is refused.
    for path in ("/api/v1/forms?mine=1&mine=0", "/api/v1/runs?status=open&status=finished"):
        response = client.get(path, **auth)
        assert response.status_code == 400, path
        error = response.json()["error"]
        key = path.split("?")[1].split("=")[0]
        assert (error["code"], error["message"], error["details"]) == (
            "invalid_param",
            f"The query parameter '{key}' is given more than once; it takes one value.",
            {key: ["Given more than once."]},
        )


def test_head_is_a_get_without_its_body(client: Client, auth: dict[str, str], form: Form) -> None:
    got = client.get(f"/api/v1/forms/{form.public_id}", **auth)
    head = client.head(f"/api/v1/forms/{form.public_id}", **auth)
    assert head.status_code == 200 and head.content == b""
    assert head["Content-Type"] == "application/json"
    assert head["Content-Length"] == str(len(got.content))
    assert client.head("/api/v1/forms?page=0", **auth).status_code == 400
    assert client.head("/api/v1/forms").status_code == 401
    refused = client.head(f"/api/v1/forms/{form.public_id}/decision", **auth)
    assert refused.status_code == 405 and refused["Allow"] == "POST"
    missing, head = client.get("/api/v1/nothing", **auth), client.head("/api/v1/nothing", **auth)
    assert head.status_code == missing.status_code == 404 and head.content == b""
    assert head["Content-Length"] == str(len(missing.content))


def test_a_submitted_form_says_what_was_answered_and_the_decision_what_was_sent(
    client: Client, auth: dict[str, str], reviewer: User, dify_app: DifyApp
) -> None:
    from inbox.models import Decision

    form = make_form(
        dify_app,
        definition={
            "form_content": "Refund?\n\n{{#$output.note#}}",
            "inputs": [{"type": "paragraph", "output_variable_name": "note", "default": None}],
            "user_actions": [{"id": "approve", "title": "Approve", "button_style": "primary"}],
        },
        status=Form.Status.SUBMITTED,
    )
    Decision.objects.create(
        form=form,
        reviewer=reviewer,
        action_id="approve",
        inputs={"note": "Paid from Q3."},
        status=Decision.Status.DELIVERED,
    )
    body = client.get(f"/api/v1/forms/{form.public_id}", **auth).json()
    assert body["rendered_content"] == "Refund?\n\nPaid from Q3."
    assert body["decision"]["inputs"] == {"note": "Paid from Q3."}
    # Who decided, to read (a name) and to match (a username, as a run's started_by).
    decided = body["decision"]
    assert (decided["decided_by"], decided["decided_by_username"]) == ("Alice", "alice")
    assert decided["decided_by_email"] is None
    # A guest who decided through an emailed link: their address, and no username.
    Decision.objects.update(reviewer=None, guest_email="ops@example.com")
    decided = client.get(f"/api/v1/forms/{form.public_id}", **auth).json()["decision"]
    assert decided["decided_by"] == decided["decided_by_email"] == "ops@example.com"
    assert decided["decided_by_username"] is None


def test_a_decision_still_names_its_reviewer_once_their_account_is_deleted(
    client: Client,
    auth: dict[str, str],
    dify_app: DifyApp,
    reviewers_group: Any,
    reviewer: User,
) -> None:
    from inbox.models import Decision

    bob = User.objects.create_user("bob", "bob@example.com", "pw", first_name="Bob")
    bob.groups.add(reviewers_group)
    form = make_form(
        dify_app,
        definition={
            "form_content": "Refund?",
            "inputs": [],
            "user_actions": [{"id": "approve", "title": "Approve", "button_style": "primary"}],
        },
    )
    decision = form.decide(action_id="approve", inputs={}, reviewer=bob)
    bob.delete()
    decision.refresh_from_db()
    assert decision.reviewer is None
    decided = client.get(f"/api/v1/forms/{form.public_id}", **auth).json()["decision"]
    assert (decided["decided_by"], decided["decided_by_username"]) == ("Bob", "bob")
    assert decided["decided_by_email"] is None
    # The page says who chose it; a guest is still told "a reviewer", not "another recipient".
    client.force_login(reviewer)
    page = client.get(f"/forms/{form.public_id}/")
    assert "Bob chose" in page.content.decode()
    assert Decision.objects.get().decider_label_for("guest@example.com") == "a reviewer"
    # The admin lists and finds it by that name.
    reviewer.is_staff = reviewer.is_superuser = True
    reviewer.save()
    listed = client.get("/admin/inbox/decision/?q=bob").content.decode()
    assert listed.count('field-decider">Bob<') == 1


def full_inputs() -> dict[str, Any]:
    return {
        "note": "ok",
        "decision": "refund",
        "receipt": {"url": "https://files.example.com/r.pdf"},
        "evidence": [],
    }


def test_a_form_dify_closed_before_its_deadline_says_when_it_closed(
    client: Client, auth: dict[str, str], dify_app: DifyApp
) -> None:
    import datetime as dt

    from django.utils import timezone

    # Dify timed it out three days early (a global timeout); a decision found it so.
    deadline = timezone.now() + dt.timedelta(days=3)
    form = make_form(dify_app, expires_in=None, expiration_time=deadline)
    Form.objects.filter(pk=form.pk).update(status=Form.Status.EXPIRED, form_token="")
    form.refresh_from_db()
    response = post_json(
        client,
        f"/api/v1/forms/{form.public_id}/decision",
        {"action": "approve", "inputs": {}},
        auth,
    )
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["details"]["status"] == "expired"
    assert error["details"]["expired_at"] == form.updated_at.isoformat()
    assert form.updated_at < deadline
    # A time as on other days' clocks, the sentence's one period its own.
    assert error["message"].startswith("This form expired at ") and not error["message"].endswith(
        ".."
    )


def test_the_loser_of_two_decisions_at_once_is_told_the_form_s_status(
    client: Client, auth: dict[str, str], dify_app: DifyApp, reviewer: User, monkeypatch: Any
) -> None:
    from inbox import api

    form = make_form(dify_app)
    form.decide(action_id="approve", inputs=full_inputs(), reviewer=reviewer)
    # The other decision arrives between this call's check and the form's lock.
    monkeypatch.setattr(api, "page_state", lambda form: "open")
    response = post_json(
        client,
        f"/api/v1/forms/{form.public_id}/decision",
        {"action": "reject", "inputs": full_inputs()},
        auth,
    )
    assert response.status_code == 409
    details = response.json()["error"]["details"]
    assert details["status"] == "submitting" and details["decision"]["action"] == "approve"


def test_a_submission_key_is_a_string_or_absent(
    client: Client, auth: dict[str, str], form: Form
) -> None:
    for key in (0, False, [], 12, "", "k" * 65):
        body = {"action": "approve", "inputs": full_inputs(), "submission_key": key}
        response = post_json(client, f"/api/v1/forms/{form.public_id}/decision", body, auth)
        assert response.status_code == 400, key
        assert response.json()["error"] == {
            "code": "invalid_param",
            "message": "'submission_key' must be a string of 1 to 64 characters (any "
            "characters), or be left out.",
            "details": {"submission_key": ["A string of 1 to 64 characters."]},
        }
    # An empty key is not "no key": nothing was decided under it.
    assert not form.decisions.exists()


def test_a_decision_sent_again_after_dify_rejected_it_is_a_conflict_not_a_202(
    client: Client, auth: dict[str, str], form: Form, django_capture_on_commit_callbacks: Any
) -> None:
    from inbox.models import Decision

    body = {"action": "approve", "inputs": full_inputs(), "submission_key": "k-9"}
    url = f"/api/v1/forms/{form.public_id}/decision"
    with django_capture_on_commit_callbacks(execute=False):
        first = post_json(client, url, body, auth)
    assert first.status_code == 202
    decision = form.decisions.get()
    # Dify refused the values (400 invalid_form_data): the form is the reviewer's again.
    Decision.finish(
        decision.pk,
        status=Decision.Status.REJECTED,
        form_status=Form.Status.PENDING,
        reason="Missing required inputs: note",
        verb="decision_rejected",
    )
    again = post_json(client, url, body, auth)
    assert again.status_code == 409
    error = again.json()["error"]
    assert error["code"] == "decision_rejected"
    assert error["message"] == (
        "Dify rejected the decision sent under this submission_key: Missing required inputs: "
        "note. The form is open again: send the decision under a new submission_key."
    )
    assert error["details"]["decision"]["status"] == "rejected"
    assert error["details"]["status"] == "pending"
    assert form.decisions.count() == 1
    # A new key is a new decision.
    with django_capture_on_commit_callbacks(execute=False):
        new = post_json(client, url, {**body, "submission_key": "k-10"}, auth)
    assert new.status_code == 202 and form.decisions.count() == 2
    # Its delivery failing for good is said too, with what an administrator may do.
    Decision.finish(
        form.decisions.exclude(pk=decision.pk).get().pk,
        status=Decision.Status.FAILED,
        form_status=Form.Status.FAILED,
        reason="Dify refused the decision (422 unprocessable_entity): No.",
        verb="decision_failed",
    )
    failed = post_json(client, url, {**body, "submission_key": "k-10"}, auth)
    assert failed.status_code == 409
    error = failed.json()["error"]
    assert error["code"] == "decision_failed"
    assert error["message"] == (
        "The decision sent under this submission_key was not delivered: Dify refused the "
        "decision (422 unprocessable_entity): No. An administrator may retry its delivery."
    )
    assert (error["details"]["status"], error["details"]["decision"]["status"]) == (
        "failed",
        "failed",
    )


def test_a_body_that_is_not_json_is_told_the_call_takes_json(
    client: Client, auth: dict[str, str], form: Form, django_capture_on_commit_callbacks: Any
) -> None:
    url = f"/api/v1/forms/{form.public_id}/decision"
    response = client.post(url, {"action": "approve"}, **auth)  # a form post
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "invalid_json",
        "message": "This call takes a JSON object as its body, sent with 'Content-Type: "
        "application/json'; this body (multipart/form-data) is not JSON.",
    }
    response = client.post(
        url, "action=approve", content_type="application/x-www-form-urlencoded", **auth
    )
    assert "(application/x-www-form-urlencoded) is not JSON" in response.json()["error"]["message"]
    # Sent as JSON, a broken body says where it broke.
    response = client.post(url, "{oops", content_type="application/json", **auth)
    assert response.json()["error"]["message"] == (
        "The request body is not valid JSON (line 1, column 2)."
    )
    # In Chinese too: where the parser stopped, not its English words.
    response = client.post(
        url, "{oops", content_type="application/json", HTTP_ACCEPT_LANGUAGE="zh-hans", **auth
    )
    assert response.json()["error"]["message"] == (
        "\u8bf7\u6c42\u6b63\u6587\u4e0d\u662f\u6709\u6548\u7684 JSON"
        "\uff08\u7b2c 1 \u884c\u7b2c 2 \u5217\uff09\u3002"
    )
    # A JSON body sent as text/plain is still read as JSON.
    body = json.dumps({"action": "approve", "inputs": full_inputs()})
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(url, body, content_type="text/plain", **auth)
    assert response.status_code == 202, response.content


def test_the_upload_call_says_it_takes_a_multipart_body_with_an_input(
    client: Client, auth: dict[str, str], form: Form
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    url = f"/api/v1/forms/{form.public_id}/files"
    expected = {
        "code": "invalid_param",
        "message": "This call takes a multipart/form-data body: an 'input' field with the name "
        "of the form's file input, and the file in a part named 'file'.",
        "details": {"input": ["Required: the name of one of the form's file inputs."]},
    }
    response = post_json(client, url, {"input": "receipt"}, auth)
    assert (response.status_code, response.json()["error"]) == (400, expected)
    pdf = SimpleUploadedFile("r.pdf", b"%PDF-1.4", "application/pdf")
    response = client.post(url, {"file": pdf}, **auth)
    assert (response.status_code, response.json()["error"]) == (400, expected)
    # An input named, but not one of the form's file inputs, is still said by its name, in
    # `details` too, with the ones it has.
    response = client.post(url, {"input": "note", "file": pdf}, **auth)
    assert response.json()["error"] == {
        "code": "invalid_param",
        "message": "'note' is not a file input of this form; its file inputs: receipt, evidence.",
        "details": {"input": ["Not a file input of this form."]},
    }


def test_mine_is_one_or_zero(client: Client, auth: dict[str, str], form: Form) -> None:
    for value in ("1", "0", ""):
        assert client.get(f"/api/v1/forms?mine={value}", **auth).status_code == 200
    for value in ("true", "banana"):
        response = client.get(f"/api/v1/forms?mine={value}", **auth)
        assert response.status_code == 400 and "'mine' is 1" in response.json()["error"]["message"]
        assert response.json()["error"]["details"] == {"mine": ["1 or 0."]}


def test_the_upload_call_takes_one_input_and_one_file_and_says_closed_first(
    client: Client, auth: dict[str, str], form: Form, dify_app: DifyApp
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    url = f"/api/v1/forms/{form.public_id}/files"

    def pdf(name: str = "r.pdf") -> Any:
        return SimpleUploadedFile(name, b"%PDF-1.4", "application/pdf")

    for data, says in (
        ({"input": "receipt", "file": pdf(), "extra": "x"}, "Unknown field 'extra'"),
        ({"input": "receipt", "file": [pdf("a.pdf"), pdf("b.pdf")]}, "one 'file' per call"),
        ({"input": ["receipt", "evidence"], "file": pdf()}, "one 'input'"),
        ({"input": "receipt", "document": pdf()}, "Unknown file field 'document'"),
    ):
        response = client.post(url, data, **auth)
        assert response.status_code == 400, data
        error = response.json()["error"]
        assert error["code"] == "invalid_param" and says in error["message"], error
    assert not Upload.objects.exists()
    # A closed form says so before anything about the request's fields.
    decided = make_form(dify_app, status=Form.Status.SUBMITTED)
    response = client.post(f"/api/v1/forms/{decided.public_id}/files", {"input": "nope"}, **auth)
    assert response.status_code == 409 and response.json()["error"]["code"] == "form_not_open"


def test_a_host_the_server_does_not_answer_to_is_told_in_json(
    client: Client, auth: dict[str, str], db: None
) -> None:
    response = client.get("/api/v1/forms", HTTP_HOST="evil.example.com", **auth)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "invalid_request"
    page = client.get("/", HTTP_HOST="evil.example.com")
    assert page.status_code == 400 and page["Content-Type"].startswith("text/html")


def test_an_id_is_found_in_either_case(client: Client, auth: dict[str, str], form: Form) -> None:
    upper = str(form.public_id).upper()
    response = client.get(f"/api/v1/forms/{upper}", **auth)
    assert response.status_code == 200 and response.json()["id"] == str(form.public_id)
    response = client.get(f"/api/v1/runs/{str(form.run.public_id).upper()}", **auth)
    assert response.status_code == 200


def test_a_form_says_who_is_handling_it(
    client: Client, auth: dict[str, str], form: Form, reviewer: User, other_reviewer: User
) -> None:
    listed = client.get("/api/v1/forms", **auth).json()["results"]
    assert [f["claimed_by"] for f in listed] == [None]
    form.claim(other_reviewer)
    listed = client.get("/api/v1/forms", **auth).json()["results"]
    assert listed[0]["claimed_by"] == {"username": "bob", "name": "Bob"}
    detail = client.get(f"/api/v1/forms/{form.public_id}", **auth).json()
    assert detail["claimed_by"] == {"username": "bob", "name": "Bob"}


def test_a_database_that_does_not_answer_is_a_503_to_try_again(
    client: Client, auth: dict[str, str], form: Form, caplog: pytest.LogCaptureFixture
) -> None:
    from django.db import OperationalError, connection

    def down(*args: Any) -> Any:
        # Every query, as while PostgreSQL restarts.
        raise OperationalError("connection to server at 10.0.0.5 failed: Connection refused")

    with connection.execute_wrapper(down):
        response = client.get("/api/v1/forms", **auth)
        decided = client.post(
            f"/api/v1/forms/{form.public_id}/decision",
            {"action": "approve", "inputs": {}},
            content_type="application/json",
            **auth,
        )
    for answer in (response, decided):
        assert answer.status_code == 503 and answer["Content-Type"] == "application/json"
        assert answer["Retry-After"] == "30"
        assert answer.json()["error"]["code"] == "unavailable"
        assert "10.0.0.5" not in answer.content.decode()
    # Said in the log, without a traceback per call.
    assert "database unavailable: connection to server at 10.0.0.5 failed" in caplog.text
    assert "Traceback" not in caplog.text


def test_a_file_listed_twice_or_a_value_that_is_no_upload_id_is_refused_by_its_input(
    client: Client, auth: dict[str, str], form: Form, django_capture_on_commit_callbacks: Any
) -> None:
    mine = Upload.objects.create(
        form=form,
        uploaded_by=ApiToken.objects.get().user,
        input_name="evidence",
        upload_file_id="dify-annex",
        name="annex.png",
        size=10,
        category="image",
    )
    annex = str(mine.public_id)

    def decide(receipt: Any, evidence: Any) -> Any:
        with django_capture_on_commit_callbacks(execute=False):
            inputs = {"note": "ok", "decision": "refund", "receipt": receipt, "evidence": evidence}
            body = {"action": "approve", "inputs": inputs}
            return post_json(client, f"/api/v1/forms/{form.public_id}/decision", body, auth)

    url = "https://files.example.com/r.pdf"
    for twice in ([annex, annex], [annex, {"upload": annex.upper()}], [url + "#.png"] * 2):
        refused = decide(url, twice)
        assert refused.status_code == 400, twice
        assert refused.json()["error"]["details"] == {
            "evidence": ["The same file is attached twice."]
        }
    # Neither an upload id nor a web address: said as an upload id that is none, by its input.
    refused = decide("nope", [])
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["message"].startswith("receipt: 'nope' is not an upload id")
    assert "web address starting with http" in error["message"]
    assert list(error["details"]) == ["receipt"]
    # A value of the wrong shape is told the documented shapes only.
    shape = decide({"name": "x"}, [])
    said = shape.json()["error"]["message"]
    assert '{"upload": id}' in said and "upload_id" not in said
    # Given as documented, once, it is taken.
    decided = decide(url, [{"upload": annex}])
    assert decided.status_code == 202, decided.content
    assert decided.json()["decision"]["inputs"]["evidence"][0]["upload"] == annex


def test_every_api_message_is_in_the_caller_s_language(
    client: Client, auth: dict[str, str], form: Form
) -> None:
    """One rule: Accept-Language is honoured for every message (codes stay as they are)."""
    zh = {"HTTP_ACCEPT_LANGUAGE": "zh-hans", **auth}
    cases = [
        client.get("/api/v1/forms?status=zz", **zh),
        client.get("/api/v1/forms?page=x", **zh),
        client.get("/api/v1/forms?colour=red", **zh),
        client.get("/api/v1/nowhere", **zh),
        client.get("/api/v1/forms", HTTP_ACCEPT_LANGUAGE="zh-hans"),
        client.post("/api/v1/ingest", json.dumps({"app": "x"}), "application/json", **zh),
        client.post("/api/v1/ingest", json.dumps({"app": 5}), "application/json", **zh),
        client.post("/api/v1/ingest", "nope", "text/plain", **zh),
        client.post(
            f"/api/v1/forms/{form.public_id}/decision",
            json.dumps({"action": "approve", "inputs": {}, "colour": 1}),
            "application/json",
            **zh,
        ),
    ]
    for response in cases:
        message = response.json()["error"]["message"]
        assert re.search("[\u4e00-\u9fff]", message), message
    # And in English without the header.
    english = client.get("/api/v1/forms?status=zz", **auth).json()["error"]["message"]
    assert english.startswith("Unknown status 'zz'; one of:")
