"""What a guest (someone outside, asked by email, reading through their link) is told: the
workflow's state in words they know, without Dify's name, status codes or Dify's own English
messages, and what happens next. Reviewers keep the technical detail."""

from __future__ import annotations

import datetime as dt
import html
import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings

from inbox import notify
from inbox.models import Decision, Form
from tests.reach.conftest import FILE_DEFINITION, GUEST, GUEST_ZH
from tests.reach.factories import make_form, route

REFUSED = "Dify refused the decision (%(status)s %(code)s): %(message)s"


def _link(form: Form, email: str) -> str:
    return notify.link_path(notify.link_token(form.recipients.get(email=email)))


def _body(page: str) -> str:
    """The form's body (its state card), as the poll redraws it."""
    start = page.index('<section id="form-body"')
    return page[start : page.index("</section>", start)]


def _decided(form: Form, *, status: str, form_status: str, **fields: Any) -> Decision:
    decision = form.decide(action_id="approve", inputs={"note": ""}, guest_email=GUEST_ZH)
    Decision.objects.filter(pk=decision.pk).update(status=status, **fields)
    closed = form_status == Form.Status.EXPIRED  # a closed form keeps no token
    Form.objects.filter(pk=form.pk).update(
        status=form_status, **({"form_token": ""} if closed else {})
    )
    return decision


def _reviewer_page(client: Client, reviewer: User, form: Form) -> str:
    other = Client()
    other.force_login(reviewer)
    other.cookies["django_language"] = "en"  # a browser of theirs in English
    return other.get(f"/forms/{form.public_id}/").content.decode()


def test_an_attempt_that_failed_is_told_a_guest_without_dify_or_its_codes(
    client: Client, routed_form: Form, reviewer: User
) -> None:
    _decided(
        routed_form,
        status=Decision.Status.QUEUED,
        form_status=Form.Status.SUBMITTING,
        attempts=2,
        last_error="503 service_unavailable: Service Unavailable",
    )
    page = client.get(_link(routed_form, GUEST_ZH)).content.decode()
    body = _body(page)
    assert (
        "\u51b3\u5b9a\u5df2\u6392\u961f\uff0c\u6b63\u5728\u53d1\u9001\u5230\u5de5\u4f5c\u6d41"
        in body
    )
    assert "Dify" not in body and not re.search(r"\b503\b", body)
    assert "Service Unavailable" not in body
    assert "attempt-detail" not in body
    # Sentences are joined without a space in Chinese.
    assert (
        "\u201cApprove\u201d\u3002\u7b2c 2 \u6b21\u5c1d\u8bd5\u3002" in body
    )  # “Approve”。第 2 次尝试。
    # A time within the last minute: "just now".
    text = re.sub(r"<[^>]+>", "", page)
    assert "\u521a\u521a\u6536\u5230" in text and "\u73b0\u5728" not in text  # 刚刚收到, not 现在

    # A reviewer still sees the step as Dify's and what Dify said.
    reviewer_body = _body(_reviewer_page(client, reviewer, routed_form))
    assert "on its way to Dify" in reviewer_body
    assert "503 service_unavailable: Service Unavailable" in reviewer_body


def test_a_decision_dify_refused_for_good_tells_a_guest_what_happens_next(
    client: Client, routed_form: Form, reviewer: User
) -> None:
    values = {"status": 400, "code": "invalid_param", "message": "Invalid value for field cause"}
    _decided(
        routed_form,
        status=Decision.Status.FAILED,
        form_status=Form.Status.FAILED,
        attempts=1,
        last_error=REFUSED % values,
        last_error_parts={"message": REFUSED, "values": values},
    )
    client.cookies["django_language"] = "en"
    body = _body(client.get(_link(routed_form, GUEST_ZH)).content.decode())
    assert "The decision could not be delivered." in body
    assert "The people who run the workflow can see this" in body
    assert "Dify" not in body and "invalid_param" not in body and "Invalid value" not in body

    reviewer_body = _body(_reviewer_page(client, reviewer, routed_form))
    assert "Dify refused the decision (400 invalid_param): Invalid value for field cause" in (
        html.unescape(reviewer_body)
    )


def test_a_form_closed_before_the_decision_arrived_is_told_a_guest_without_dify(
    client: Client, routed_form: Form, reviewer: User
) -> None:
    _decided(routed_form, status=Decision.Status.REJECTED, form_status=Form.Status.EXPIRED)
    client.cookies["django_language"] = "en"
    body = html.unescape(_body(client.get(_link(routed_form, GUEST_ZH)).content.decode()))
    assert "It was closed before its deadline (" in body
    assert (
        f"{GUEST_ZH} chose \u201cApprove\u201d, but the form had already closed, so the decision "
        "was not sent. Nothing more is needed from you." in " ".join(body.split())
    )
    assert "Dify" not in body

    reviewer_body = _body(_reviewer_page(client, reviewer, routed_form))
    assert "It closed in Dify before its deadline (" in reviewer_body


@pytest.fixture
def guest_upload_form(simulator_dify_app: Any, reviewer: User) -> Form:
    app = simulator_dify_app("claim-review")
    route(
        app, users=[reviewer], recipients=[(GUEST, "en"), (GUEST_ZH, "zh-hans")], allow_guests=True
    )
    return make_form(
        app,
        definition=FILE_DEFINITION,
        content=FILE_DEFINITION["form_content"],
        expires_in=dt.timedelta(hours=30),
    )


def _upload(client: Client, url: str, name: str, data: bytes, mime: str) -> str:
    response = client.post(
        url, {"file": SimpleUploadedFile(name, data, content_type=mime)}, HTTP_HX_REQUEST="true"
    )
    return html.unescape(response.content.decode())


def test_an_upload_while_dify_fails_says_to_try_again_not_that_the_file_was_refused(
    client: Client, simulator: Any, guest_upload_form: Form, reviewer: User
) -> None:
    simulator.add_fault("status", "files_upload", app="claim-review", status=503, times=None)
    photo = b"\x89PNG\r\n\x1a\n" + b"0" * 64
    guest = _upload(
        client,
        f"{_link(guest_upload_form, GUEST_ZH)}files/receipt",
        "\u7167\u7247_\u53a8\u623f.png",
        photo,
        "image/png",
    )
    # "照片_厨房.png: 服务暂时不可用, 请稍后再试。" with full-width punctuation.
    assert (
        "\u7167\u7247_\u53a8\u623f.png\uff1a\u670d\u52a1\u6682\u65f6\u4e0d\u53ef\u7528\uff0c"
        "\u8bf7\u7a0d\u540e\u518d\u8bd5\u3002" in guest
    )
    assert "Dify" not in guest and "Service Unavailable" not in guest

    reviewer_client = Client()
    reviewer_client.force_login(reviewer)
    said = _upload(
        reviewer_client,
        f"/forms/{guest_upload_form.public_id}/files/receipt",
        "kitchen.png",
        photo,
        "image/png",
    )
    assert "kitchen.png: Dify is temporarily unavailable. Try again in a moment." in said
    assert "Service Unavailable" not in said and "did not accept" not in said


@override_settings(INBOX_UPLOADS_PER_FORM=2)
def test_a_guest_past_the_upload_budget_is_told_so_in_their_language_without_difys_name(
    client: Client, simulator: Any, guest_upload_form: Form
) -> None:
    pdf = b"%PDF-1.4 " + b"0" * 64
    chinese = f"{_link(guest_upload_form, GUEST_ZH)}files/receipt"
    for n in range(2):
        _upload(client, chinese, f"r{n}.pdf", pdf, "application/pdf")
    assert simulator.stats()["uploads"] == 2
    said = _upload(client, chinese, "r2.pdf", pdf, "application/pdf")
    # "您已为此表单上传了 2 个文件, 已达每人上限; 已移除或被替换的文件也计算在内。无法再上传。" (full-width)
    assert (
        "\u60a8\u5df2\u4e3a\u6b64\u8868\u5355\u4e0a\u4f20\u4e86 2 \u4e2a\u6587\u4ef6\uff0c"
        "\u5df2\u8fbe\u6bcf\u4eba\u4e0a\u9650\uff1b\u5df2\u79fb\u9664\u6216\u88ab\u66ff\u6362"
        "\u7684\u6587\u4ef6\u4e5f\u8ba1\u7b97\u5728\u5185\u3002\u65e0\u6cd5\u518d\u4e0a\u4f20"
        "\u3002" in said
    )
    assert "Dify" not in said
    assert simulator.stats()["uploads"] == 2

    english = Client()
    english.cookies["django_language"] = "en"
    url = f"{_link(guest_upload_form, GUEST)}files/receipt"
    for n in range(2):  # another address: a budget of its own
        _upload(english, url, f"e{n}.pdf", pdf, "application/pdf")
    said = _upload(english, url, "e2.pdf", pdf, "application/pdf")
    assert (
        "You have uploaded 2 files for this form, the most one person may; files removed or "
        "replaced count too. No more can be uploaded." in said
    )
    assert "Dify" not in said
    assert simulator.stats()["uploads"] == 4


@override_settings(INBOX_UPLOADS_PER_MINUTE=1)
def test_a_guest_uploading_too_fast_is_told_in_their_language(
    client: Client, simulator: Any, guest_upload_form: Form, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("inbox.views_reach._window", lambda: 12345)
    monkeypatch.setattr("inbox.views_reach._window_left", lambda: 13)
    pdf = b"%PDF-1.4 " + b"0" * 64
    chinese = f"{_link(guest_upload_form, GUEST_ZH)}files/receipt"
    _upload(client, chinese, "a.pdf", pdf, "application/pdf")
    said = _upload(client, chinese, "b.pdf", pdf, "application/pdf")
    # "b.pdf: 您上传文件过于频繁。请 13 秒后再试。" (full-width colon; the seconds the wait
    # lasts, as an API client's Retry-After says them)
    assert (
        "b.pdf\uff1a\u60a8\u4e0a\u4f20\u6587\u4ef6\u8fc7\u4e8e\u9891\u7e41\u3002"
        "\u8bf7 13 \u79d2\u540e\u518d\u8bd5\u3002" in said
    )
    assert simulator.stats()["uploads"] == 1


def test_a_heic_photo_is_refused_with_the_extensions_an_image_may_have(
    client: Client, guest_upload_form: Form
) -> None:
    said = _upload(
        client,
        f"{_link(guest_upload_form, GUEST_ZH)}files/receipt",
        "IMG_0042.HEIC",
        b"\x00\x00\x00\x18ftypheic",
        "application/octet-stream",  # as a phone's browser may send it
    )
    # "IMG_0042.HEIC: 此处不接受这类文件。可接受: 文档 (CSV、DOCX…)、图片 (GIF、…、WEBP)。"
    assert (
        "IMG_0042.HEIC\uff1a\u6b64\u5904\u4e0d\u63a5\u53d7\u8fd9\u7c7b\u6587\u4ef6\u3002"
        "\u53ef\u63a5\u53d7\uff1a\u6587\u6863\uff08CSV\u3001DOCX" in said
    )
    assert (
        "\u56fe\u7247\uff08GIF\u3001JPEG\u3001JPG\u3001PNG\u3001SVG\u3001WEBP\uff09\u3002" in said
    )


def test_a_guest_is_told_a_files_limit_without_difys_name(
    client: Client, routed_form: Form, reviewer: User
) -> None:
    client.cookies["django_language"] = "en"
    page = client.get(_link(routed_form, GUEST)).content.decode()
    limits = re.search(r'data-larger-than="([^"]*)"', page)
    assert limits is not None
    assert limits.group(1) == "The file is larger than {limit}, the limit for this kind of file."
    reviewer_page = _reviewer_page(client, reviewer, routed_form)
    assert "the most Dify takes for this kind of file" in reviewer_page


def test_a_decision_dify_refused_is_told_another_guest_in_tight_chinese(
    client: Client, routed_form: Form, reviewer: User
) -> None:
    # A reviewer's decision, refused: the form is open again for the guests asked.
    decision = routed_form.decide(action_id="approve", inputs={"note": "x"}, reviewer=reviewer)
    Decision.objects.filter(pk=decision.pk).update(
        status=Decision.Status.REJECTED, last_error="400 invalid_form_data: note too short"
    )
    Form.objects.filter(pk=routed_form.pk).update(status=Form.Status.PENDING)
    page = client.get(_link(routed_form, GUEST_ZH)).content.decode()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", _body(page)))
    # "这是一位审批人作出的决定。": a Chinese phrase takes no spaces around it.
    assert "\u8fd9\u662f\u4e00\u4f4d\u5ba1\u6279\u4eba\u4f5c\u51fa\u7684\u51b3\u5b9a" in text
    assert "note too short" not in text and "Dify" not in text


@pytest.mark.parametrize(
    ("status", "guest_words", "guest_words_zh", "reviewer_words"),
    [
        (Form.Status.GONE, "No longer available", "\u5df2\u4e0d\u53ef\u7528", "Gone from Dify"),
        (
            Form.Status.NOT_ANSWERABLE,
            "Answered another way",
            "\u4ee5\u5176\u4ed6\u65b9\u5f0f\u4f5c\u7b54",
            "Only answerable in Dify",
        ),
    ],
)
def test_a_guest_reads_the_status_badge_without_dify(
    client: Client,
    routed_form: Form,
    reviewer: User,
    status: str,
    guest_words: str,
    guest_words_zh: str,
    reviewer_words: str,
) -> None:
    Form.objects.filter(pk=routed_form.pk).update(status=status, form_token="")
    badge = re.compile(r'<span id="form-status"[^>]*>([^<]*)</span>')
    client.cookies["django_language"] = "en"
    page = client.get(_link(routed_form, GUEST)).content.decode()
    assert badge.findall(page) == [guest_words]
    assert "Dify" not in page.split("<main", 1)[1]
    zh = Client()
    zh.cookies["django_language"] = "zh-hans"
    assert badge.findall(zh.get(_link(routed_form, GUEST_ZH)).content.decode()) == [guest_words_zh]
    # A reviewer keeps the status's own name.
    assert badge.findall(_reviewer_page(client, reviewer, routed_form)) == [reviewer_words]


def test_a_guest_is_told_before_deciding_that_the_workflow_cannot_take_decisions_now(
    client: Client, routed_form: Form, reviewer: User
) -> None:
    from django.utils import timezone

    from inbox.models import DifyApp

    app = routed_form.run.app
    # Dify refuses the app's key: the decision is kept until someone fixes it.
    DifyApp.objects.filter(pk=app.pk).update(
        refused_at=timezone.now(),
        refusal="401 unauthorized: Access token is invalid",
        refusal_status=401,
        refusal_code="unauthorized",
    )
    body = _body(client.get(_link(routed_form, GUEST)).content.decode())
    assert "The workflow cannot take decisions at the moment" in body
    assert "Dify" not in body and not re.search(r"\b401\b", body)
    body = _body(Client().get(_link(routed_form, GUEST_ZH)).content.decode())
    # 工作流目前无法接收决定 ... 您的决定会被保留
    assert "\u5de5\u4f5c\u6d41\u76ee\u524d\u65e0\u6cd5\u63a5\u6536\u51b3\u5b9a" in body
    assert "\u60a8\u7684\u51b3\u5b9a\u4f1a\u88ab\u4fdd\u7559" in body
    assert "Dify" not in body
    reviewer_body = _body(_reviewer_page(client, reviewer, routed_form))
    assert "API key at the moment. You can still decide" in reviewer_body

    # Dify cannot be reached: the decision is sent as soon as it answers again.
    now = timezone.now()
    DifyApp.objects.filter(pk=app.pk).update(
        refused_at=None,
        contact_failed_at=now,
        contact_failed_since=now,
        contact_failure="GET /workflows/run/x: connection refused (ConnectError)",
        contact_failure_source="delivery",
    )
    body = _body(Client().get(_link(routed_form, GUEST)).content.decode())
    assert "The workflow cannot be reached at the moment" in body
    assert "Dify" not in body and "ConnectError" not in body
    body = _body(Client().get(_link(routed_form, GUEST_ZH)).content.decode())
    assert "\u76ee\u524d\u65e0\u6cd5\u8fde\u63a5\u5de5\u4f5c\u6d41" in body  # 目前无法连接工作流
    reviewer_body = _body(_reviewer_page(client, reviewer, routed_form))
    assert "The inbox cannot reach Dify for this app at the moment" in reviewer_body
    assert "ConnectError" not in reviewer_body


def test_file_types_dify_can_never_accept_are_told_staff_not_reviewers_or_guests(
    client: Client, routed_form: Form, reviewer: User, admin_user: User
) -> None:
    definition = routed_form.definition
    receipt = definition["inputs"][-1]
    receipt.update(allowed_file_types=["custom"], allowed_file_extensions=[".dwg", ".DXF"])
    Form.objects.filter(pk=routed_form.pk).update(definition=definition)
    path = f"/forms/{routed_form.public_id}/"
    note = "This form lists file types Dify cannot accept: .DXF. Change them in the workflow."
    # Staff, who may change the workflow or know who does, are told, in their language.
    client.force_login(admin_user)
    client.cookies["django_language"] = "en"
    assert note in html.unescape(client.get(path).content.decode())
    client.cookies["django_language"] = "zh-hans"
    page = html.unescape(client.get(path).content.decode())
    assert "此表单列出了 Dify 无法接受的文件类型\uff1a.DXF\u3002请在工作流中修改它们\u3002" in page
    # A reviewer is offered the file types that work, and not told of the workflow's setup.
    client.force_login(reviewer)
    client.cookies["django_language"] = "en"
    page = html.unescape(client.get(path).content.decode())
    assert "cannot accept" not in page and ".dwg" in page
    # Nor is a guest, who reads of the workflow, never of Dify.
    client.logout()
    page = html.unescape(client.get(_link(routed_form, GUEST)).content.decode())
    assert "cannot accept" not in page and ".dwg" in page


def test_a_file_input_dify_accepts_no_file_for_says_so_instead_of_offering_a_picker(
    client: Client, routed_form: Form, reviewer: User, admin_user: User
) -> None:
    # Custom files only, each listed type one Dify takes no file under: ".pdf" is a document
    # to Dify (refused where only custom files are), ".DXF" is never matched.
    definition = routed_form.definition
    receipt = definition["inputs"][-1]
    receipt.update(allowed_file_types=["custom"], allowed_file_extensions=[".pdf", ".DXF"])
    Form.objects.filter(pk=routed_form.pk).update(definition=definition)
    path = f"/forms/{routed_form.public_id}/"

    def field(page: str) -> str:
        start = page.index('data-name="receipt"')
        return page[start : page.index("</fieldset>", start)]

    # Staff are told every type that is dropped, ".pdf" too.
    client.force_login(admin_user)
    client.cookies["django_language"] = "en"
    page = html.unescape(client.get(path).content.decode())
    assert (
        "This form lists file types Dify cannot accept: .pdf, .DXF. Change them in the workflow."
        in page
    )
    # The single file the form needs cannot be given: no picker offering every file (an empty
    # `accept`) nor a web address box, but why the form cannot be answered here.
    client.force_login(reviewer)
    page = html.unescape(client.get(path).content.decode())
    assert 'accept=""' not in page
    assert 'type="file"' not in field(page) and "url-receipt" not in field(page)
    assert (
        "Dify accepts no file here (every file type the workflow lists is one it cannot take),"
        " and this form needs one, so it cannot be answered here." in field(page)
    )
    client.cookies["django_language"] = "zh-hans"
    page = html.unescape(client.get(path).content.decode())
    assert "\u800c\u6b64\u8868\u5355\u9700\u8981\u4e00\u4e2a\u6587\u4ef6" in field(page)
    # A guest reads of the workflow, not of Dify.
    client.logout()
    page = html.unescape(client.get(_link(routed_form, GUEST)).content.decode())
    assert 'accept=""' not in page and "Dify" not in field(page)
    assert (
        "The workflow accepts no file here, and this form needs one, so it cannot be answered"
        " here." in field(page)
    )
    page = html.unescape(client.get(_link(routed_form, GUEST_ZH)).content.decode())
    assert (
        "\u5de5\u4f5c\u6d41\u5728\u6b64\u4e0d\u63a5\u53d7\u4efb\u4f55\u6587\u4ef6"  # 工作流在此不接受任何文件
        in field(page)
    )

    # A file list may stay empty: the reader is told to leave it so.
    receipt.update(type="file-list", number_limits=2)
    Form.objects.filter(pk=routed_form.pk).update(definition=definition)
    client.force_login(reviewer)
    client.cookies["django_language"] = "en"
    page = html.unescape(client.get(path).content.decode())
    assert 'type="file"' not in field(page) and 'accept=""' not in page
    assert (
        "Dify accepts no file here (every file type the workflow lists is one it cannot take):"
        " leave it empty." in field(page)
    )
    assert "cannot be answered here" not in field(page)
    client.logout()
    page = html.unescape(client.get(_link(routed_form, GUEST)).content.decode())
    assert "The workflow accepts no file here: leave it empty." in field(page)


def test_an_app_dify_no_longer_accepts_is_not_told_as_a_refused_key(
    client: Client, routed_form: Form, reviewer: User
) -> None:
    from django.utils import timezone

    from inbox.models import DifyApp

    app = routed_form.run.app
    # Dify answers 403 for a deleted or disabled app (CONTRACT 1): its key is not in question.
    DifyApp.objects.filter(pk=app.pk).update(
        refused_at=timezone.now(),
        refusal="403 forbidden: The app no longer exists.",
        refusal_status=403,
        refusal_code="forbidden",
    )
    reviewer_body = _body(_reviewer_page(client, reviewer, routed_form))
    assert (
        "Dify does not accept this app at the moment: it may have been disabled or deleted "
        "there. You can still decide: your decision is stored and sent once Dify accepts the "
        "app again."
    ) in reviewer_body
    assert "API key" not in reviewer_body
    zh = Client()
    zh.force_login(reviewer)
    zh.cookies["django_language"] = "zh-hans"
    zh_body = _body(zh.get(f"/forms/{routed_form.public_id}/").content.decode())
    # "Dify does not accept this app: it may have been disabled or deleted" in Chinese.
    assert (
        "Dify \u76ee\u524d\u4e0d\u63a5\u53d7\u6b64\u5e94\u7528\uff1a\u5b83\u53ef\u80fd\u5df2"
        "\u5728 Dify \u4e2d\u88ab\u505c\u7528\u6216\u5220\u9664"
    ) in zh_body
    assert "\u5bc6\u94a5" not in zh_body  # 密钥
    # A guest is told neither of Dify nor of a setting to fix: the app may be gone for good.
    body = _body(Client().get(_link(routed_form, GUEST)).content.decode())
    assert (
        "The workflow cannot take decisions at the moment. You can still decide: your "
        "decision is kept and sent once it can."
    ) in body
    # (As a number of its own: the page's ids are random hex, which may hold "403".)
    assert "setting" not in body and "Dify" not in body and not re.search(r"\b403\b", body)
    body = _body(Client().get(_link(routed_form, GUEST_ZH)).content.decode())
    assert "\u5de5\u4f5c\u6d41\u76ee\u524d\u65e0\u6cd5\u63a5\u6536\u51b3\u5b9a" in body
    assert "\u8bbe\u7f6e" not in body and "Dify" not in body  # 设置
    # A decision held meanwhile says what it waits for, in the same words.
    _decided(
        routed_form,
        status=Decision.Status.QUEUED,
        form_status=Form.Status.SUBMITTING,
        held_for_app=True,
    )
    reviewer_body = _body(_reviewer_page(client, reviewer, routed_form))
    assert (
        "It is sent as soon as Dify accepts the app again (it may have been disabled or "
        "deleted there)."
    ) in reviewer_body
    assert "fixes its key" not in reviewer_body


def test_a_guest_decision_held_for_an_app_dify_calls_unavailable_waits_for_it_to_be_published(
    client: Client, routed_form: Form, reviewer: User
) -> None:
    from django.utils import timezone

    from inbox.models import DifyApp

    DifyApp.objects.filter(pk=routed_form.run.app.pk).update(
        refused_at=timezone.now(),
        refusal="400 app_unavailable: App unavailable, please check your app configurations.",
        refusal_status=400,
        refusal_code="app_unavailable",
    )
    # Nothing said before deciding: a submit needs nothing published.
    body = _body(Client().get(_link(routed_form, GUEST)).content.decode())
    assert "cannot take decisions" not in body
    # The English guest decides; Dify's submit met the refusal, and the decision is held.
    decision = routed_form.decide(action_id="approve", inputs={"note": ""}, guest_email=GUEST)
    Decision.objects.filter(pk=decision.pk).update(held_for_app=True)
    Form.objects.filter(pk=routed_form.pk).update(status=Form.Status.SUBMITTING)
    body = _body(Client().get(_link(routed_form, GUEST)).content.decode())
    assert (
        "It is sent as soon as the workflow is available again, once the people who run it "
        "publish it. Nothing needs to be decided again."
    ) in body
    assert "fix a setting" not in body and "Dify" not in body and "app_unavailable" not in body
    # As the Chinese guest's decision, read through their link.
    Decision.objects.filter(pk=decision.pk).update(guest_email=GUEST_ZH)
    body = _body(Client().get(_link(routed_form, GUEST_ZH)).content.decode())
    assert "负责该工作流的人员将其发布" in body and "Dify" not in body
    # A reviewer reads of Dify and of publishing the app there.
    reviewer_body = _body(_reviewer_page(client, reviewer, routed_form))
    assert "once an administrator publishes it in Dify" in reviewer_body
