"""What one person can leave in Dify through a form's uploads is bounded (Dify has no delete): a
budget of files per form and person, removed and replaced files included, a rate per minute,
and a new file for a single file input replacing the earlier one. Real uploads, to the simulator."""

from __future__ import annotations

import html
import threading
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client, override_settings

from inbox.models import ApiToken, Form, Route, Upload, UploadTally
from tests.review.conftest import full_definition, make_form

PDF = b"%PDF-1.4 " + b"0" * 64


def _receipt_only() -> dict[str, Any]:
    """A form whose one file input is `receipt` (a single file): it holds one file, so the
    budget is INBOX_UPLOADS_PER_FORM (at least 2)."""
    definition = full_definition()
    definition["inputs"] = [
        i for i in definition["inputs"] if i["output_variable_name"] != "evidence"
    ]
    return definition


@pytest.fixture
def sim_form(simulator: Any, simulator_dify_app: Any, reviewers_group: Any) -> Form:
    app = simulator_dify_app()
    Route.objects.create(app=app, name="default", reminders="").groups.add(reviewers_group)
    return make_form(app, definition=_receipt_only())


@pytest.fixture
def one_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every upload of the test in one rate-limit window, however slow the machine, 13 seconds
    from its end."""
    monkeypatch.setattr("inbox.views_reach._window", lambda: 12345)
    monkeypatch.setattr("inbox.views_reach._window_left", lambda: 13)


def _page_upload(client: Client, form: Form, name: str) -> str:
    response = client.post(
        f"/forms/{form.public_id}/files/receipt",
        {"file": SimpleUploadedFile(name, PDF, content_type="application/pdf")},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    # What the page shows, and what it reads out (an upload that went through).
    return html.unescape(response.content.decode()) + response.get("HX-Trigger", "")


def _api_upload(client: Client, form: Form, raw: str, name: str) -> Any:
    return client.post(
        f"/api/v1/forms/{form.public_id}/files",
        {"input": "receipt", "file": SimpleUploadedFile(name, PDF, "application/pdf")},
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )


def _sent(simulator: Any) -> int:
    return int(simulator.stats()["uploads"])


@override_settings(INBOX_UPLOADS_PER_FORM=3)
def test_past_the_budget_nothing_more_is_sent_to_dify_removed_files_counting_too(
    alice: Client, simulator: Any, sim_form: Form, reviewer: User, other_reviewer: User
) -> None:
    for n in range(3):
        assert f"Uploaded: r{n}.pdf." in _page_upload(alice, sim_form, f"r{n}.pdf")
    assert _sent(simulator) == 3
    # Removing what is kept gives nothing back: Dify still holds all three.
    kept = Upload.owned(sim_form, reviewer=reviewer).get()
    alice.post(f"/forms/{sim_form.public_id}/uploads/{kept.public_id}/remove")

    said = _page_upload(alice, sim_form, "r3.pdf")
    assert (
        "You have sent 3 files to Dify for this form, the most one person may; files removed "
        "or replaced count too, as Dify keeps them. No more can be uploaded." in said
    )
    assert _sent(simulator) == 3
    assert not Upload.owned(sim_form, reviewer=reviewer).exists()

    # Through the API, the same person's budget: refused in the API's shape, nothing sent.
    # Spent for good: a 409, not a 429 that clients retrying on 429 would send again forever.
    _token, raw = ApiToken.issue(reviewer)
    refused = _api_upload(Client(), sim_form, raw, "r4.pdf")
    assert refused.status_code == 409
    assert "Retry-After" not in refused
    error = refused.json()["error"]
    assert error["code"] == "upload_budget_spent"
    assert error["message"].startswith("You have sent 3 files to Dify for this form")
    assert _sent(simulator) == 3

    # Everyone has a budget of their own.
    _token, bobs = ApiToken.issue(other_reviewer)
    assert _api_upload(Client(), sim_form, bobs, "b.pdf").status_code == 201
    assert _sent(simulator) == 4


@override_settings(INBOX_UPLOADS_PER_FORM=2)
def test_an_upload_dify_refuses_does_not_count(
    alice: Client, simulator: Any, sim_form: Form, reviewer: User
) -> None:
    simulator.add_fault("status", "files_upload", status=415, code="unsupported_file_type")
    assert "Dify does not accept this type of file." in _page_upload(alice, sim_form, "a.pdf")
    for name in ("b.pdf", "c.pdf"):
        assert f"Uploaded: {name}." in _page_upload(alice, sim_form, name)
    assert UploadTally.objects.get(form=sim_form).files == 2


@pytest.mark.django_db(transaction=True)
@override_settings(INBOX_UPLOADS_PER_FORM=2)
def test_two_uploads_at_once_cannot_both_take_the_last_file(
    simulator: Any, simulator_dify_app: Any, reviewers_group: Any, reviewer: User
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("two connections updating one row at once need PostgreSQL")
    app = simulator_dify_app()
    Route.objects.create(app=app, name="default", reminders="").groups.add(reviewers_group)
    form = make_form(app, definition=_receipt_only())
    _token, raw = ApiToken.issue(reviewer)
    assert _api_upload(Client(), form, raw, "first.pdf").status_code == 201
    # Each upload stays at Dify a while: both are past every check before either is answered.
    simulator.add_fault("delay", "files_upload", delay=1.0, times=None)
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def upload(name: str) -> None:
        try:
            barrier.wait(10)
            statuses.append(_api_upload(Client(), form, raw, name).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=upload, args=(f"p{n}.pdf",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(statuses) == [201, 409]
    assert _sent(simulator) == 2
    assert UploadTally.objects.get(form=form).files == 2


@override_settings(INBOX_UPLOADS_PER_MINUTE=2)
def test_a_reviewer_uploading_too_fast_is_held_back_on_the_page_and_through_the_api(
    alice: Client, simulator: Any, sim_form: Form, reviewer: User, one_window: None
) -> None:
    assert "Uploaded: a.pdf." in _page_upload(alice, sim_form, "a.pdf")
    assert "Uploaded: b.pdf." in _page_upload(alice, sim_form, "b.pdf")
    said = _page_upload(alice, sim_form, "c.pdf")
    assert "c.pdf: You are uploading too many files at once. Try again in 13 seconds." in said
    assert _sent(simulator) == 2

    # An API token is its user: the same count. The wait said is the one Retry-After says.
    _token, raw = ApiToken.issue(reviewer)
    refused = _api_upload(Client(), sim_form, raw, "d.pdf")
    assert refused.status_code == 429
    assert refused.json()["error"] == {
        "code": "rate_limited",
        "message": "You are uploading too many files at once. Try again in 13 seconds.",
    }
    assert refused["Retry-After"] == "13"
    assert _sent(simulator) == 2


@override_settings(INBOX_UPLOADS_PER_MINUTE=2)
def test_an_api_token_uploading_too_fast_is_held_back(
    client: Client, simulator: Any, sim_form: Form, reviewer: User, one_window: None
) -> None:
    _token, raw = ApiToken.issue(reviewer)
    statuses = [_api_upload(client, sim_form, raw, f"f{n}.pdf").status_code for n in range(3)]
    assert statuses == [201, 201, 429]
    assert _sent(simulator) == 2


def test_a_new_file_for_a_single_file_input_replaces_the_earlier_one(
    alice: Client, client: Client, simulator: Any, sim_form: Form, reviewer: User
) -> None:
    _page_upload(alice, sim_form, "old.pdf")
    old = Upload.owned(sim_form, reviewer=reviewer).get()
    _page_upload(alice, sim_form, "new.pdf")
    assert [u.name for u in Upload.owned(sim_form, reviewer=reviewer)] == ["new.pdf"]

    _token, raw = ApiToken.issue(reviewer)
    created = _api_upload(client, sim_form, raw, "api.pdf")
    assert created.status_code == 201
    assert [str(u.public_id) for u in Upload.owned(sim_form, reviewer=reviewer)] == [
        created.json()["id"]
    ]
    # The replaced ones cannot be sent with a decision, and still count: Dify keeps them.
    assert not Upload.objects.filter(pk=old.pk).exists()
    assert _sent(simulator) == 3
    assert UploadTally.objects.get(form=sim_form).files == 3


def test_an_upload_keeps_the_username_of_who_made_it(
    alice: Client, sim_form: Form, reviewer: User, one_window: None
) -> None:
    assert "Uploaded: kept.pdf." in _page_upload(alice, sim_form, "kept.pdf")
    upload = Upload.objects.get(form=sim_form)
    assert (upload.uploaded_by, upload.uploaded_by_username) == (reviewer, "alice")
    reviewer.delete()
    upload.refresh_from_db()
    assert (upload.uploaded_by, upload.uploaded_by_username) == (None, "alice")


@override_settings(INBOX_UPLOADS_PER_FORM=2, INBOX_UPLOADS_PER_MINUTE=2)
def test_a_spent_budget_is_said_before_the_rate_and_refusals_use_up_no_rate(
    client: Client, simulator: Any, sim_form: Form, reviewer: User, one_window: None
) -> None:
    _token, raw = ApiToken.issue(reviewer)
    assert [_api_upload(client, sim_form, raw, f"f{n}.pdf").status_code for n in range(2)] == [
        201,
        201,
    ]
    # The budget is spent for good: said so, not as a rate to wait out.
    for n in range(3):
        refused = _api_upload(client, sim_form, raw, f"g{n}.pdf")
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "upload_budget_spent"
        assert "Retry-After" not in refused
    assert _sent(simulator) == 2


@override_settings(INBOX_UPLOADS_PER_FORM=2, INBOX_UPLOADS_PER_MINUTE=3)
def test_only_files_sent_to_dify_count_against_the_rate(
    client: Client,
    simulator: Any,
    sim_form: Form,
    reviewer: User,
    one_window: None,
) -> None:
    _token, raw = ApiToken.issue(reviewer)
    # Refused by Dify: it keeps nothing, so neither the form's budget nor the rate counts it.
    simulator.add_fault("status", "files_upload", status=415, code="unsupported_file_type")
    assert _api_upload(client, sim_form, raw, "refused.pdf").status_code == 400
    assert _api_upload(client, sim_form, raw, "a.pdf").status_code == 201
    assert _api_upload(client, sim_form, raw, "a2.pdf").status_code == 201
    # Refused by the form's budget, again and again: nothing sent, no rate used up.
    for n in range(3):
        refused = _api_upload(client, sim_form, raw, f"b{n}.pdf")
        assert refused.json()["error"]["code"] == "upload_budget_spent"
    other = make_form(sim_form.run.app, definition=_receipt_only())
    assert _api_upload(client, other, raw, "c.pdf").status_code == 201
    # Now three files went to Dify this minute: the next one waits.
    third = make_form(sim_form.run.app, definition=_receipt_only())
    refused = _api_upload(client, third, raw, "d.pdf")
    assert refused.json()["error"]["code"] == "rate_limited"
    # ... and is not counted against that form's budget.
    assert not UploadTally.objects.filter(form=third, files__gt=0).exists()
    assert _sent(simulator) == 3
