"""What the audit trail says of who acted and how: permissions given and taken, the API token
that acted, a guest's link opened and used and from where, every send of a decision, and the
trail's own housekeeping (pruned, exported)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client
from django.utils import translation

from inbox import notify
from inbox.models import ApiToken, AuditEntry, Decision, Form, FormRecipient
from tests.reach.conftest import FILE_DEFINITION, GUEST, GUEST_ZH
from tests.reach.factories import make_form, route, user_change_data
from tests.reach.test_admin import action

RECEIPT = "https://files.example.org/receipt.pdf"


# --- permissions ---


def test_a_permission_given_in_the_admin_outlives_the_administrator_who_gave_it(
    admin_user: User, other_reviewer: User
) -> None:
    admin2 = User.objects.create_superuser("admin2", "admin2@example.com", "pw")
    client = Client()
    client.force_login(admin2)
    retry = Permission.objects.get(codename="retry_decision")
    data = user_change_data(client, other_reviewer, user_permissions=[retry.pk])
    saved = client.post(f"/admin/auth/user/{other_reviewer.pk}/change/", data)
    assert saved.status_code == 302, saved.content.decode()[:3000]
    assert other_reviewer.has_perm("inbox.retry_decision")

    admin2.delete()
    entry = AuditEntry.objects.get(verb="user_permissions_changed")
    assert entry.object_id == str(other_reviewer.pk)
    assert entry.actor is None and entry.actor_label == "admin2"  # kept with its name
    assert entry.details["added"] == ["inbox.retry_decision"]

    # Taken away again (by the other administrator): said too, with who did it.
    client.force_login(admin_user)
    data = user_change_data(client, other_reviewer, user_permissions=[])
    assert client.post(f"/admin/auth/user/{other_reviewer.pk}/change/", data).status_code == 302
    removed = AuditEntry.objects.get(verb="user_permissions_changed", actor=admin_user)
    assert removed.details["removed"] == ["inbox.retry_decision"]


def test_a_group_s_permissions_and_a_permission_s_holders_are_in_the_trail(
    admin_client: Client, admin_user: User, reviewers_group: Group, other_reviewer: User
) -> None:
    add_run = Permission.objects.get(codename="add_run")
    retry = Permission.objects.get(codename="retry_decision")
    saved = admin_client.post(
        f"/admin/auth/group/{reviewers_group.pk}/change/",
        {"name": reviewers_group.name, "permissions": [add_run.pk, retry.pk]},
    )
    assert saved.status_code == 302, saved.content.decode()[:3000]
    entry = AuditEntry.objects.get(verb="group_permissions_changed", actor=admin_user)
    assert entry.object_type == "group" and entry.object_id == str(reviewers_group.pk)
    assert entry.details["added"] == ["inbox.add_run", "inbox.retry_decision"]

    # From the permission's side, and cleared: each holder, and what it lost.
    retry.user_set.add(other_reviewer)
    by_permission = AuditEntry.objects.get(verb="user_permissions_changed")
    assert by_permission.object_id == str(other_reviewer.pk)
    assert by_permission.actor_label == "system"  # outside a request: no one signed in
    assert by_permission.details["added"] == ["inbox.retry_decision"]
    reviewers_group.permissions.clear()
    cleared = AuditEntry.objects.filter(verb="group_permissions_changed").latest("id")
    assert cleared.details["removed"] == ["inbox.add_run", "inbox.retry_decision"]


# --- the API token that acted, or the page ---


def _api_decide(client: Client, form: Form, raw: str) -> Any:
    return client.post(
        f"/api/v1/forms/{form.public_id}/decision",
        json.dumps({"action": "approve", "inputs": {"note": "ok", "receipt": {"url": RECEIPT}}}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )


def test_an_entry_made_through_the_api_names_the_token_and_never_its_secret(
    client: Client, routed_form: Form, reviewer: User, reach_app: Any
) -> None:
    first, first_raw = ApiToken.issue(reviewer)
    second, second_raw = ApiToken.issue(reviewer)
    assert _api_decide(client, routed_form, first_raw).status_code in (200, 201, 202)
    other = make_form(reach_app, definition=routed_form.definition, content=routed_form.content)
    assert _api_decide(client, other, second_raw).status_code in (200, 201, 202)

    made = AuditEntry.objects.filter(verb="decision_made").order_by("id")
    assert [(e.details["via"], e.details["token_id"]) for e in made] == [
        ("api", first.pk),
        ("api", second.pk),
    ]
    assert made[0].details["token_prefix"] == first.prefix == first_raw[:9]
    for entry in AuditEntry.objects.all():
        text = json.dumps(entry.details)
        assert first_raw not in text and second_raw not in text
    # Searching the trail by a token's prefix finds what it did.
    assert AuditEntry.objects.filter(details__token_prefix=second.prefix).exists()


def test_an_entry_made_on_a_page_says_so_and_names_no_token(
    routed_form: Form, reviewer: User
) -> None:
    browser = Client()
    browser.force_login(reviewer)
    response = browser.post(
        f"/forms/{routed_form.public_id}/decide",
        {"action": "approve", "in_note": "ok", "in_receipt": RECEIPT},
    )
    assert response.status_code == 302
    entry = AuditEntry.objects.get(verb="decision_made")
    assert entry.details["via"] == "page" and "token_id" not in entry.details
    assert "recipient" not in entry.details  # not a guest


# --- guests ---


def test_a_guest_s_link_opened_and_used_is_in_the_trail_with_where_from(
    routed_form: Form,
    guest_recipient: FormRecipient,
    guest_link: str,
    settings: Any,
) -> None:
    settings.INBOX_TRUSTED_PROXIES = 1
    browser = Client(HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert browser.get(guest_link).status_code == 200
    # Its live part polls, and the page is opened again: one entry for this browser.
    assert browser.get(f"{guest_link}live").status_code == 200
    assert browser.get(guest_link).status_code == 200
    (opened,) = AuditEntry.objects.filter(verb="guest_link_opened")
    assert opened.object_type == "formrecipient" and opened.actor_label == GUEST
    assert opened.details["recipient"] == guest_recipient.pk
    assert opened.details["ip"] == "203.0.113.9"
    assert opened.details["form"] == str(routed_form.public_id)

    response = browser.post(
        f"{guest_link}decide", {"action": "approve", "in_note": "ok", "in_receipt": RECEIPT}
    )
    assert response.status_code == 302
    made = AuditEntry.objects.get(verb="decision_made")
    assert made.actor_label == GUEST
    assert made.details["recipient"] == guest_recipient.pk
    assert made.details["ip"] == "203.0.113.9" and made.details["via"] == "page"

    # The used link opened in another browser: refused, and said.
    elsewhere = Client(HTTP_X_FORWARDED_FOR="198.51.100.7, 203.0.113.200")
    assert elsewhere.get(guest_link).status_code == 410
    refused = AuditEntry.objects.get(verb="guest_link_refused")
    assert refused.details["reason"] == "used"
    assert refused.details["recipient"] == guest_recipient.pk
    # One trusted proxy: the address it saw, not one the visitor wrote further left.
    assert refused.details["ip"] == "203.0.113.200"


@pytest.fixture
def upload_form(simulator_dify_app: Any, reviewer: User) -> Form:
    app = simulator_dify_app("claim-review")
    route(app, users=[reviewer], recipients=[(GUEST, "en")], allow_guests=True)
    return make_form(
        app,
        definition=FILE_DEFINITION,
        content=FILE_DEFINITION["form_content"],
        expires_in=dt.timedelta(hours=30),
    )


def test_a_guest_s_upload_names_the_recipient_and_address(
    simulator: Any, upload_form: Form
) -> None:
    recipient = upload_form.recipients.get(email=GUEST)
    link = notify.link_path(notify.link_token(recipient))
    browser = Client(REMOTE_ADDR="192.0.2.44")
    pdf = SimpleUploadedFile("r.pdf", b"%PDF-1.4 " + b"0" * 64, content_type="application/pdf")
    response = browser.post(f"{link}files/receipt", {"file": pdf}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200, response.content.decode()[:2000]
    entry = AuditEntry.objects.get(verb="file_uploaded")
    assert entry.actor_label == GUEST and entry.details["via"] == "page"
    assert entry.details["recipient"] == recipient.pk and entry.details["ip"] == "192.0.2.44"
    # Outside a request, an entry says none of it.
    note = AuditEntry.record("note", upload_form)
    assert "recipient" not in note.details and "via" not in note.details


def test_reopening_keeps_when_each_link_was_used(
    routed_form: Form,
    guest_link: str,
    admin_user: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    browser = Client()
    response = browser.post(
        f"{guest_link}decide", {"action": "approve", "in_note": "ok", "in_receipt": RECEIPT}
    )
    assert response.status_code == 302
    recipient = FormRecipient.objects.get(form=routed_form, email=GUEST)
    used_at = recipient.link_used_at
    assert used_at is not None
    decision = Decision.objects.get(form=routed_form)
    with django_capture_on_commit_callbacks(execute=False):
        assert Decision.finish(
            decision.pk,
            status=Decision.Status.FAILED,
            form_status=Form.Status.FAILED,
            reason="refused",
            verb="decision_failed",
        )
        assert decision.reopen_form(actor=admin_user)
    recipient.refresh_from_db()
    assert recipient.link_used_at is None
    entry = AuditEntry.objects.get(verb="form_reopened")
    assert entry.details["links_released"] == [
        {"recipient": recipient.pk, "email": GUEST, "used_at": used_at.isoformat()}
    ]


# --- housekeeping ---


def test_pruning_the_trail_leaves_a_record_of_what_went(routed_form: Form) -> None:
    from django.utils import timezone

    old = AuditEntry.record("note", routed_form)
    AuditEntry.objects.filter(pk=old.pk).update(created_at=timezone.now() - dt.timedelta(days=400))
    out = io.StringIO()
    call_command("prune_records", "--audit-older-than", "300", stdout=out)
    assert not AuditEntry.objects.filter(pk=old.pk).exists()
    entry = AuditEntry.objects.get(verb="records_pruned")
    assert entry.actor_label == "prune_records" and entry.object_type == "retention"
    assert entry.details["audit_entries"] == 1 and entry.details["audit_older_than_days"] == 300
    assert entry.details["audit_entries_before"] < timezone.now().isoformat()
    # A dry run, and a prune that let nothing go, add nothing.
    call_command("prune_records", "--audit-older-than", "300", "--dry-run", stdout=out)
    call_command("prune_records", "--audit-older-than", "300", stdout=out)
    assert AuditEntry.objects.filter(verb="records_pruned").count() == 1


def test_the_retention_task_says_it_pruned(routed_form: Form, settings: Any) -> None:
    from django.utils import timezone

    from inbox import tasks

    old = AuditEntry.record("note", routed_form)
    AuditEntry.objects.filter(pk=old.pk).update(created_at=timezone.now() - dt.timedelta(days=40))
    settings.INBOX_AUDIT_RETENTION_DAYS = 30
    assert tasks.prune_records()["audit_entries"] == 1
    entry = AuditEntry.objects.get(verb="records_pruned")
    assert entry.actor_label == "retention task" and entry.details["audit_entries"] == 1


def test_an_export_of_the_trail_says_who_exported_what(
    admin_client: Client, admin_user: User, routed_form: Form
) -> None:
    entries = list(AuditEntry.objects.order_by("id"))
    response = action(admin_client, "auditentry", "export_csv", [e.pk for e in entries])
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == len(entries) + 1  # not the export's own entry
    entry = AuditEntry.objects.get(verb="audit_exported")
    assert entry.actor == admin_user and entry.object_type == "auditentry"
    assert entry.details["count"] == len(entries)
    assert entry.details["ids"] == [entries[0].pk, entries[-1].pk]


def test_the_decision_admin_shows_every_send_across_retries(
    admin_client: Client, routed_form: Form, reviewer: User
) -> None:
    decision = routed_form.decide(
        action_id="approve", inputs={"note": "ok", "receipt": None}, reviewer=reviewer
    )
    Decision.objects.filter(pk=decision.pk).update(attempts=1)
    AuditEntry.record("delivery_retry_requested", decision, attempts_before_retry=3)
    page = admin_client.get(f"/admin/inbox/decision/{decision.pk}/change/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "Attempts in all" in body
    assert '<div class="readonly">4</div>' in body


def test_the_trail_is_found_by_a_chinese_word_in_its_details(
    admin_client: Client, routed_form: Form
) -> None:
    # SQLite keeps JSON as text with its non-ASCII characters escaped; PostgreSQL as written.
    entry = AuditEntry.record("form_reassigned", routed_form, groups=["上海审核组"])
    AuditEntry.record("note", routed_form, groups=["北京审核组"])
    for term in ("上海审核组", "审核组 上海"):
        page = admin_client.get("/admin/inbox/auditentry/", {"q": term}).content.decode()
        assert f"/admin/inbox/auditentry/{entry.pk}/change/" in page, term
        assert "1 result" in page, term


def test_the_trail_s_csv_export_opens_in_excel_with_its_chinese_intact(
    admin_client: Client, routed_form: Form
) -> None:
    AuditEntry.record("note", routed_form, groups=["上海审核组"])
    entries = list(AuditEntry.objects.order_by("id"))
    response = action(admin_client, "auditentry", "export_csv", [e.pk for e in entries])
    content = b"".join(response.streaming_content)
    # A UTF-8 byte order mark first: without it Excel reads the file as the system's code page.
    assert content.startswith(b"\xef\xbb\xbfcreated_at,")
    assert "上海审核组" in content.decode("utf-8-sig")


def test_an_entry_reads_the_same_whoever_acted_and_in_the_reader_s_language(
    admin_client: Client, routed_form: Form
) -> None:
    """A Chinese guest's decision, and a form recorded while Chinese was active, are written in
    no one's language: an English reader's list and export never show Chinese, and the status
    the decision had then (kept as a code) is named in each reader's language."""
    recipient = FormRecipient.objects.get(form=routed_form, email=GUEST_ZH)
    link = notify.link_path(notify.link_token(recipient))
    guest = Client(HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert '<html lang="zh-hans">' in guest.get(link).content.decode()
    response = guest.post(
        f"{link}decide", {"action": "approve", "in_note": "好", "in_receipt": RECEIPT}
    )
    assert response.status_code == 302
    decision = Decision.objects.get(form=routed_form)
    made = AuditEntry.objects.get(verb="decision_made")
    assert made.actor_label == GUEST_ZH
    assert made.object_repr == f"Approve · {decision.public_id}"
    assert made.details["status"] == "queued"
    with translation.override("zh-hans"):
        resent = AuditEntry.record("form_emails_resent", routed_form)
    assert resent.object_repr == f"Manager approval ({routed_form.public_id})"

    english = admin_client.get("/admin/inbox/auditentry/").content.decode()
    assert f"Approve · {decision.public_id} (Queued)" in english
    # "Queued" in Chinese, and a full-width parenthesis: none in an English reader's list.
    assert "\u6392\u961f\u4e2d" not in english and "\uff08" not in english
    chinese = admin_client.get(
        "/admin/inbox/auditentry/", HTTP_ACCEPT_LANGUAGE="zh-hans"
    ).content.decode()
    assert f"Approve · {decision.public_id}\uff08\u6392\u961f\u4e2d\uff09" in chinese

    entries = list(AuditEntry.objects.order_by("id"))
    exported = action(admin_client, "auditentry", "export_csv", [e.pk for e in entries])
    rows = list(
        csv.DictReader(io.StringIO(b"".join(exported.streaming_content).decode("utf-8-sig")))
    )
    objects = {row["verb"]: row["object"] for row in rows}
    assert objects["decision_made"] == f"Approve · {decision.public_id}"
    assert objects["form_emails_resent"] == f"Manager approval ({routed_form.public_id})"
