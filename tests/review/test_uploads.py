"""Upload checks that happen before anything is sent to Dify, and removing an upload."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, RequestFactory

from inbox.models import Decision, DifyApp, Form, Route, Upload
from tests.conftest import BytesSeen
from tests.review.conftest import full_definition, make_form

pytestmark = pytest.mark.smoke


def post_file(
    client: Client, form: Form, input_name: str, name: str, data: bytes, mime: str, **extra: str
):  # type: ignore[no-untyped-def]
    upload = SimpleUploadedFile(name, data, content_type=mime)
    return client.post(f"/forms/{form.public_id}/files/{input_name}", {"file": upload}, **extra)


def test_a_file_of_a_type_the_input_refuses_is_explained(alice: Client, form: Form) -> None:
    response = post_file(
        alice, form, "receipt", "song.mp3", b"ID3", "audio/mpeg", HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    assert response["HX-Retarget"] == "#file-error-receipt"
    assert (
        "<p>song.mp3: This kind of file is not accepted here. Accepted: "
        "images (GIF, JPEG, JPG, PNG, SVG, WEBP), documents (CSV, DOCX, HTM, HTML, MARKDOWN, MD, MDX, PDF, PROPERTIES, TXT, VTT, XLS, XLSX).</p>"
        in response.content.decode()
    )
    # Read out by the place it goes to (an alert), not by the page's announcer as well.
    assert "HX-Trigger" not in response
    assert not Upload.objects.exists()


def test_a_file_over_its_category_limit_is_refused_before_sending(
    alice: Client, form: Form
) -> None:
    big = b"\x89PNG" + b"0" * (10 * 1024 * 1024)
    response = post_file(
        alice, form, "receipt", "scan.png", big, "image/png", HTTP_HX_REQUEST="true"
    )
    assert (
        "scan.png: The file is larger than 10 MB, the most Dify takes for this kind of file."
        in response.content.decode()
    )
    assert not Upload.objects.exists()


def test_uploads_refused_where_only_web_addresses_are_allowed(
    alice: Client, dify_app: DifyApp
) -> None:
    definition = full_definition()
    definition["inputs"][2]["allowed_file_upload_methods"] = ["remote_url"]
    form = make_form(dify_app, definition=definition)
    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    assert f'hx-post="/forms/{form.public_id}/files/receipt"' not in page
    response = post_file(
        alice, form, "receipt", "r.pdf", b"%PDF", "application/pdf", HTTP_HX_REQUEST="true"
    )
    assert "Uploads are not accepted here; give a web address instead." in response.content.decode()


def test_no_uploads_once_the_form_is_closed(alice: Client, dify_app: DifyApp) -> None:
    form = make_form(dify_app, status=Form.Status.SUBMITTED)
    response = post_file(
        alice, form, "receipt", "r.pdf", b"%PDF", "application/pdf", HTTP_HX_REQUEST="true"
    )
    assert "This form can no longer be answered." in response.content.decode()


def test_an_unknown_input_is_not_found(alice: Client, form: Form) -> None:
    response = post_file(alice, form, "note", "r.pdf", b"%PDF", "application/pdf")
    assert response.status_code == 404


def test_without_script_an_upload_error_comes_back_as_a_message(alice: Client, form: Form) -> None:
    response = post_file(alice, form, "receipt", "song.mp3", b"ID3", "audio/mpeg")
    assert response.status_code == 302 and response["Location"] == f"/forms/{form.public_id}/"
    page = alice.get(response["Location"]).content.decode()
    assert "song.mp3: This kind of file is not accepted here." in page


def test_removing_an_upload(alice: Client, form: Form, reviewer: Any) -> None:
    upload = Upload.objects.create(
        form=form,
        uploaded_by=reviewer,
        input_name="receipt",
        upload_file_id="u1",
        name="r.pdf",
        size=10,
        category="document",
    )
    response = alice.post(
        f"/forms/{form.public_id}/uploads/{upload.public_id}/remove", HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200 and response.content == b""
    assert "r.pdf removed." in response["HX-Trigger"]
    assert not Upload.objects.exists()


def test_another_reviewers_upload_cannot_be_removed(
    alice: Client, form: Form, reviewers_group: Any
) -> None:
    bob = User.objects.create_user("bob")
    bob.groups.add(reviewers_group)
    theirs = Upload.objects.create(
        form=form,
        uploaded_by=bob,
        input_name="receipt",
        upload_file_id="u2",
        name="bobs.pdf",
        size=10,
        category="document",
    )
    response = alice.post(
        f"/forms/{form.public_id}/uploads/{theirs.public_id}/remove", HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 404
    assert Upload.objects.filter(pk=theirs.pk).exists()


def test_uploads_need_a_login_and_csrf(client: Client, form: Form, reviewer: object) -> None:
    assert (
        post_file(client, form, "receipt", "r.pdf", b"%PDF", "application/pdf").status_code == 302
    )
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(reviewer)  # type: ignore[arg-type]
    assert (
        post_file(strict, form, "receipt", "r.pdf", b"%PDF", "application/pdf").status_code == 403
    )


def _upload(form: Form, input_name: str, name: str, **fields: object) -> Upload:
    return Upload.objects.create(
        form=form,
        input_name=input_name,
        upload_file_id=f"dify-{name}",
        name=name,
        size=2048,
        category="document",
        **fields,
    )


def test_a_full_file_list_takes_no_more_and_says_which_files_were_not_added(
    alice: Client, form: Form, reviewer: User, other_reviewer: User
) -> None:
    for n in range(3):  # the list takes three
        _upload(form, "evidence", f"e{n}.png", uploaded_by=reviewer)
    _upload(form, "evidence", "bobs.png", uploaded_by=other_reviewer)  # Bob's list is his own
    response = alice.post(
        f"/forms/{form.public_id}/files/evidence",
        {
            "file": [
                SimpleUploadedFile("more.png", b"\x89PNG", content_type="image/png"),
                SimpleUploadedFile("again.png", b"\x89PNG", content_type="image/png"),
            ]
        },
        HTTP_HX_REQUEST="true",
    )
    assert response["HX-Retarget"] == "#file-error-evidence"
    assert (
        "At most 3 files can be attached here; remove one to add another. "
        "Not added: more.png, again.png." in html.unescape(response.content.decode())
    )
    assert Upload.objects.filter(form=form, uploaded_by=reviewer).count() == 3


def test_a_reload_shows_the_reviewers_own_uploads_and_submits_them(
    alice: Client, form: Form, reviewer: User, other_reviewer: User
) -> None:
    _upload(form, "receipt", "old.pdf", uploaded_by=reviewer)
    _upload(form, "receipt", "latest.pdf", uploaded_by=reviewer)
    for n in range(5):  # the list takes three
        _upload(form, "evidence", f"e{n}.png", uploaded_by=reviewer)
    _upload(form, "evidence", "bobs.png", uploaded_by=other_reviewer)
    _upload(form, "evidence", "guests.png", guest_email="guest@example.com")
    removed = _upload(form, "receipt", "removed.pdf", uploaded_by=reviewer)
    alice.post(f"/forms/{form.public_id}/uploads/{removed.public_id}/remove")

    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    chips = re.findall(r'<span class="file-name"[^>]*>([^<]*)</span>', page)
    # One file for the single input (the latest), the three latest for the list, in order.
    assert chips == ["latest.pdf", "e2.png", "e3.png", "e4.png"]
    assert "2.0\xa0KB" in page or "2.0 KB" in page
    latest = Upload.objects.get(name="latest.pdf")
    assert 'aria-label="Remove latest.pdf"' in page
    assert f'name="in_receipt" value="{latest.public_id}"' in page

    refs = re.findall(r'name="(in_receipt|in_evidence)" value="([0-9a-f-]{36})"', page)
    data: dict[str, object] = {"action": "approve", "in_decision": "refund", "in_note": ""}
    for key in ("in_receipt", "in_evidence"):
        data[key] = [value for name, value in refs if name == key]
    alice.post(f"/forms/{form.public_id}/decide", data)
    decision = Decision.objects.get(form=form)
    assert decision.inputs["receipt"]["upload_file_id"] == "dify-latest.pdf"
    assert [f["upload_file_id"] for f in decision.inputs["evidence"]] == [
        "dify-e2.png",
        "dify-e3.png",
        "dify-e4.png",
    ]


def test_a_guest_sees_only_the_uploads_made_as_that_guest(client: Client, form: Form) -> None:
    from inbox.views import Decider, form_context

    _upload(form, "receipt", "mine.pdf", guest_email="Guest@Example.com")
    _upload(form, "receipt", "other.pdf", guest_email="other@example.com")
    request = RequestFactory().get("/")
    context = form_context(
        request,  # type: ignore[arg-type]
        form,
        Decider(base_url="/g/", guest_email="guest@example.com"),
    )
    views = [seg["field"] for seg in context["segments"] if "field" in seg] + context["trailing"]
    fields = {fv.spec.name: fv for fv in views}
    assert [u.name for u in fields["receipt"].uploads] == ["mine.pdf"]


def test_the_apps_own_size_limits_apply_by_extension_on_the_page_and_the_server(
    alice: Client, simulator: Any, simulator_dify_app: Any, reviewers_group: Any
) -> None:
    mb = 1024 * 1024
    simulator.set_options(
        size_limits={"image": 1 * mb, "file": 2 * mb, "audio": 3 * mb, "video": 4 * mb}
    )
    app = simulator_dify_app()
    Route.objects.create(app=app, name="default", reminders="").groups.add(reviewers_group)
    form = make_form(app)
    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    # receipt takes images and documents; evidence images and .dwg (the general limit).
    assert '<span class="size-limits">images 1 MB, documents 2 MB</span>' in page
    assert '<span class="size-limits">images 1 MB, .dwg 2 MB</span>' in page
    match = re.search(r'data-upload="receipt" data-size-limits="([^"]+)"', page)
    assert match is not None
    limits = json.loads(html.unescape(match.group(1)))
    assert limits["default"] == 2 * mb and limits["ext"]["png"] == 1 * mb
    assert limits["ext"]["mp4"] == 4 * mb and "pdf" not in limits["ext"]

    # A PNG sent as a document-typed file still gets the image limit (by its extension).
    refused = post_file(
        alice, form, "receipt", "scan.png", b"0" * (mb + 1), "image/png", HTTP_HX_REQUEST="true"
    )
    assert "scan.png: The file is larger than 1 MB" in refused.content.decode()
    accepted = post_file(
        alice,
        form,
        "receipt",
        "scan.pdf",
        b"0" * (mb + 1),
        "application/pdf",
        HTTP_HX_REQUEST="true",
    )
    assert "scan.pdf" in accepted.content.decode() and "larger" not in accepted.content.decode()
    assert [u.name for u in Upload.objects.filter(form=form)] == ["scan.pdf"]


def test_a_file_larger_than_its_inputs_kinds_take_is_dropped_as_it_arrives(
    alice: Client,
    simulator: Any,
    simulator_dify_app: Any,
    reviewers_group: Any,
    settings: Any,
) -> None:
    mb = 1024 * 1024
    simulator.set_options(
        size_limits={"image": 1 * mb, "file": 2 * mb, "audio": 3 * mb, "video": 4 * mb}
    )
    settings.FILE_UPLOAD_HANDLERS = [
        "tests.conftest.BytesSeen",
        "django.core.files.uploadhandler.MemoryFileUploadHandler",
        "django.core.files.uploadhandler.TemporaryFileUploadHandler",
    ]
    BytesSeen.most = 0
    app = simulator_dify_app()
    Route.objects.create(app=app, name="default", reminders="").groups.add(reviewers_group)
    form = make_form(app)
    # receipt takes images and documents: 2 MB at most, not the 4 MB of a video it never takes.
    response = post_file(
        alice,
        form,
        "receipt",
        "scan.pdf",
        b"0" * (3 * mb),
        "application/pdf",
        HTTP_HX_REQUEST="true",
    )
    assert (
        "scan.pdf: the file is larger than 2 MB, the most Dify takes for the kinds of file "
        "accepted here." in response.content.decode()
    )
    assert 0 < BytesSeen.most <= 2 * mb
    assert not Upload.objects.exists()


def test_without_the_apps_parameters_difys_defaults_apply(alice: Client, form: Form) -> None:
    # dify_app points at a closed port: the defaults are shown.
    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    assert '<span class="size-limits">images 10 MB, documents 15 MB</span>' in page


def test_a_file_larger_than_dify_takes_is_dropped_as_it_arrives(
    alice: Client, dify_app: DifyApp, small_dify: Any
) -> None:
    DifyApp.objects.filter(pk=dify_app.pk).update(base_url=small_dify.base_url)
    form = make_form(dify_app)
    big = b"\x89PNG" + b"0" * (3 * 1024 * 1024)
    response = post_file(
        alice, form, "receipt", "scan.png", big, "image/png", HTTP_HX_REQUEST="true"
    )
    assert response["HX-Retarget"] == "#file-error-receipt"
    assert (
        "scan.png: the file is larger than 1 MB, the most Dify takes for the kinds of file "
        "accepted here." in response.content.decode()
    )
    # Never more than the cap went on to memory or a temporary file.
    assert 0 < BytesSeen.most <= 1024 * 1024
    assert not Upload.objects.exists()
    # A file within the cap still goes on to the next check (and to Dify).
    small = post_file(
        alice, form, "receipt", "song.mp3", b"ID3", "audio/mpeg", HTTP_HX_REQUEST="true"
    )
    assert "This kind of file is not accepted here." in small.content.decode()


def test_the_api_refuses_a_file_larger_than_dify_takes_without_keeping_it(
    client: Client, reviewer: User, dify_app: DifyApp, small_dify: Any
) -> None:
    from inbox.models import ApiToken

    DifyApp.objects.filter(pk=dify_app.pk).update(base_url=small_dify.base_url)
    form = make_form(dify_app)
    _token, raw = ApiToken.issue(reviewer)
    big = SimpleUploadedFile("scan.png", b"\x89PNG" + b"0" * (3 * 1024 * 1024), "image/png")
    response = client.post(
        f"/api/v1/forms/{form.public_id}/files",
        {"input": "receipt", "file": big},
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )
    assert response.status_code == 413
    said = (
        "scan.png: the file is larger than 1 MB, the most Dify takes for the kinds of "
        "file accepted here."
    )
    assert response.json()["error"] == {
        "code": "upload_rejected",
        "message": said,
        # The file's own fault: named in `details` too.
        "details": {"file": [said]},
    }
    assert 0 < BytesSeen.most <= 1024 * 1024


def test_more_files_picked_than_an_empty_list_takes_are_told_to_be_fewer(
    alice: Client, form: Form
) -> None:
    response = alice.post(
        f"/forms/{form.public_id}/files/evidence",
        {
            "file": [
                SimpleUploadedFile(f"p{n}.png", b"\x89PNG", content_type="image/png")
                for n in range(4)
            ]
        },
        HTTP_HX_REQUEST="true",
    )
    # Nothing on the list to remove: only fewer to pick.
    assert (
        "At most 3 files can be attached here; choose fewer. Not added: p3.png."
        in html.unescape(response.content.decode())
    )


def test_an_upload_dify_refuses_passes_its_status_and_code_on(
    client: Client, simulator: Any, simulator_dify_app: Any, reviewer: Any, reviewers_group: Any
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    from inbox.models import ApiToken

    app = simulator_dify_app()
    Route.objects.create(app=app, name="default", reminders="").groups.add(reviewers_group)
    form = make_form(app)
    simulator.add_fault("status", "files_upload", status=503, times=None)
    _token, raw = ApiToken.issue(reviewer)
    response = client.post(
        f"/api/v1/forms/{form.public_id}/files",
        {"input": "receipt", "file": SimpleUploadedFile("r.pdf", b"%PDF-1.4", "application/pdf")},
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "dify_error"
    assert error["details"] == {"dify_status": 503, "dify_code": "service_unavailable"}


def test_a_list_with_room_for_fewer_than_were_picked_says_how_many_more_it_takes(
    alice: Client, form: Form, reviewer: User
) -> None:
    for n in range(2):  # the list takes three: room for one more
        _upload(form, "evidence", f"e{n}.png", uploaded_by=reviewer)
    response = alice.post(
        f"/forms/{form.public_id}/files/evidence",
        {
            "file": [
                SimpleUploadedFile("more.png", b"\x89PNG", content_type="image/png"),
                SimpleUploadedFile("again.png", b"\x89PNG", content_type="image/png"),
            ]
        },
        HTTP_HX_REQUEST="true",
    )
    said = html.unescape(response.content.decode())
    assert "Only 1 more file could be added here. Not added: again.png." in said
    assert "remove one" not in said
    # The page's script says the same before sending, with the room it counts.
    page = html.unescape(alice.get(f"/forms/{form.public_id}/").content.decode())
    assert 'data-room-one="You can add 1 more file here; choose fewer."' in page
    assert 'data-room="You can add {room} more files here; choose fewer."' in page


def _drawings_form(app: DifyApp) -> Form:
    definition = full_definition()
    definition["inputs"] = [
        {
            "type": "file-list",
            "output_variable_name": "drawings",
            "allowed_file_types": ["custom"],
            "allowed_file_extensions": [".dwg", ".DXF"],
            "allowed_file_upload_methods": ["local_file"],
            "number_limits": 3,
        }
    ]
    return make_form(app, definition=definition)


def _upload_drawing(
    client: Client,
    simulator_dify_app: Any,
    reviewer: Any,
    reviewers_group: Any,
    name: str,
    content: bytes,
    mime_type: str,
) -> Any:
    """A file for the drawings input of a new form, sent through the API as the browser names
    its type."""
    from inbox.models import ApiToken

    app = simulator_dify_app()
    Route.objects.create(app=app, name="default", reminders="").groups.add(reviewers_group)
    form = _drawings_form(app)
    _token, raw = ApiToken.issue(reviewer)
    return client.post(
        f"/api/v1/forms/{form.public_id}/files",
        {"input": "drawings", "file": SimpleUploadedFile(name, content, mime_type)},
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )


def test_a_custom_extension_the_browser_names_an_image_type_goes_to_dify_as_a_custom_file(
    client: Client, simulator: Any, simulator_dify_app: Any, reviewer: Any, reviewers_group: Any
) -> None:
    # Chromium on Linux names a .dwg "image/vnd.dwg" (the system's MIME list): to Dify, whose
    # kinds have no .dwg, that type would make it an image, refused where only custom files are.
    response = _upload_drawing(
        client, simulator_dify_app, reviewer, reviewers_group, "a.dwg", b"AC1032", "image/vnd.dwg"
    )
    assert response.status_code == 201, response.content
    assert response.json()["type"] == "custom"
    upload = Upload.objects.get()
    # Dify was told no image type, and so detects what the workflow asks for.
    assert (upload.category, upload.mime_type) == ("custom", "application/octet-stream")


def test_an_extension_listed_in_upper_case_is_not_offered_as_dify_matches_no_file_with_it(
    client: Client, simulator: Any, simulator_dify_app: Any, reviewer: Any, reviewers_group: Any
) -> None:
    # Dify compares a file's extension, in lower case, with ".DXF" as written: never a match,
    # so the file would be refused only once the decision reached Dify.
    response = _upload_drawing(
        client, simulator_dify_app, reviewer, reviewers_group, "A.DXF", b"0", "image/vnd.dxf"
    )
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "upload_rejected"
    assert response.json()["error"]["message"] == (
        "This kind of file is not accepted here. Accepted: .dwg."
    )
    assert not Upload.objects.exists()
