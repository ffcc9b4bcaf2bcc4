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
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
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
    # The form by its public id, as the link's entries (and an upload's) name it.
    assert made.details["form"] == str(routed_form.public_id)
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


def test_every_entry_names_its_form_by_public_id_and_old_ones_are_still_found_by_it(
    admin_client: Client,
    routed_form: Form,
    reviewer: User,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    with django_capture_on_commit_callbacks(execute=False):
        decision = routed_form.decide(
            action_id="approve", inputs={"note": "ok", "receipt": None}, reviewer=reviewer
        )
        assert Decision.finish(
            decision.pk,
            status=Decision.Status.DELIVERED,
            form_status=Form.Status.SUBMITTED,
            verb="decision_delivered",
        )
    public = str(routed_form.public_id)
    for verb in ("decision_made", "decision_delivered"):
        assert AuditEntry.objects.get(verb=verb).details["form"] == public, verb
    # An entry written before: the form by its internal id alone.
    old = AuditEntry.objects.create(
        verb="decision_delivered",
        object_type="decision",
        object_id="999999",
        details={"form": routed_form.pk, "attempts": 1},
    )
    page = admin_client.get("/admin/inbox/auditentry/", {"q": public}).content.decode()
    assert f"/admin/inbox/auditentry/{old.pk}/change/" in page
    # Another form's old entries are not.
    other = AuditEntry.objects.create(
        verb="decision_delivered",
        object_type="decision",
        object_id="999998",
        details={"form": routed_form.pk + 1000},
    )
    assert f"/admin/inbox/auditentry/{other.pk}/change/" not in page


def _age(entry: AuditEntry, days: int) -> None:
    from django.utils import timezone

    AuditEntry.objects.filter(pk=entry.pk).update(
        created_at=timezone.now() - dt.timedelta(days=days)
    )


def test_pruning_keeps_the_proof_of_an_erasure_unless_asked(
    routed_form: Form, admin_user: User
) -> None:
    from inbox.erasure import anonymise_user

    lena = User.objects.create_user("lena", "lena.li@corp.example")
    anonymise_user(lena, actor=admin_user)
    call_command("erase_person", email="zhang.wei@example.com", stdout=io.StringIO())
    proofs = list(AuditEntry.objects.filter(verb__in=["user_anonymised", "person_erased"]))
    assert len(proofs) == 2
    note = AuditEntry.record("note", routed_form)
    for entry in [*proofs, note]:
        _age(entry, 400)
    out, err = io.StringIO(), io.StringIO()
    call_command("prune_records", "--audit-older-than", "300", stdout=out, stderr=err)
    assert not AuditEntry.objects.filter(pk=note.pk).exists()
    assert AuditEntry.objects.filter(pk__in=[p.pk for p in proofs]).count() == 2
    assert AuditEntry.objects.get(verb="records_pruned").details["erasure_records_kept"] is True
    # Asked explicitly, they go too.
    call_command(
        "prune_records",
        "--audit-older-than",
        "300",
        "--with-erasure-records",
        stdout=out,
        stderr=err,
    )
    assert not AuditEntry.objects.filter(pk__in=[p.pk for p in proofs]).exists()


def test_an_audit_retention_shorter_than_the_runs_is_warned_of(settings: Any) -> None:
    from inbox.checks import check_inbox_settings

    def warnings() -> list[str]:
        return [m.id for m in check_inbox_settings() if m.id == "inbox.W009"]

    settings.INBOX_RETENTION_DAYS, settings.INBOX_AUDIT_RETENTION_DAYS = 365, 90
    assert warnings() == ["inbox.W009"]
    message = next(m for m in check_inbox_settings() if m.id == "inbox.W009")
    assert "INBOX_AUDIT_RETENTION_DAYS (90) is shorter than INBOX_RETENTION_DAYS" in message.msg
    # Runs kept for ever, the trail for a while: the same.
    settings.INBOX_RETENTION_DAYS = 0
    assert warnings() == ["inbox.W009"]
    for runs, audit in ((365, 365), (365, 0), (0, 0), (90, 365)):
        settings.INBOX_RETENTION_DAYS, settings.INBOX_AUDIT_RETENTION_DAYS = runs, audit
        assert warnings() == [], (runs, audit)


@pytest.mark.django_db
def test_prune_records_warns_when_the_trail_would_go_before_the_runs(settings: Any) -> None:
    settings.INBOX_RETENTION_DAYS, settings.INBOX_AUDIT_RETENTION_DAYS = 0, 0
    err = io.StringIO()
    call_command(
        "prune_records",
        "--runs-older-than",
        "365",
        "--audit-older-than",
        "30",
        "--dry-run",
        stdout=io.StringIO(),
        stderr=err,
    )
    said = err.getvalue()
    assert "audit entries are kept for 30 days (--audit-older-than)" in said
    assert "runs for 365 days (--runs-older-than)" in said
    err = io.StringIO()
    call_command(
        "prune_records",
        "--runs-older-than",
        "30",
        "--audit-older-than",
        "365",
        stderr=err,
        stdout=io.StringIO(),
    )
    assert err.getvalue() == ""


# --- every verb has a label ---


def _audit_verbs_in_code() -> set[str]:
    """Every verb the inbox's code records or looks for: the argument `verb` of each function
    that takes one (`AuditEntry.record`, `build`, `record_about`, the helpers around them) and
    each `verb=` keyword, resolved through the names and f-strings that make it."""
    import ast
    import itertools
    import pathlib

    import inbox

    root = pathlib.Path(inbox.__file__).parent
    modules = {
        path: ast.parse(path.read_text())
        for path in root.rglob("*.py")
        if "migrations" not in path.parts
    }
    # Where `verb` stands among each recorder's positional parameters (None: keyword only).
    slots: dict[str, int | None] = {}
    for tree in modules.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                positional = [a.arg for a in node.args.posonlyargs + node.args.args]
                if positional[:1] in (["self"], ["cls"]):
                    positional = positional[1:]
                if "verb" in positional or "verb" in [a.arg for a in node.args.kwonlyargs]:
                    slots[node.name] = positional.index("verb") if "verb" in positional else None
    slots.pop("verb_label", None)

    statuses = {str(s) for s in Form.Status.values}

    def strings(node: ast.AST, names: dict[str, set[str]], where: str) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.IfExp):
            return strings(node.body, names, where) | strings(node.orelse, names, where)
        if isinstance(node, ast.Name | ast.Attribute):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if name in ("status", "form_status"):
                return statuses
            if name in names:
                return names[name]
            raise AssertionError(f"{where}: cannot tell which verbs {name!r} holds")
        if isinstance(node, ast.JoinedStr):
            parts = [
                {v.value} if isinstance(v, ast.Constant) else strings(v.value, names, where)  # type: ignore[attr-defined]
                for v in node.values
            ]
            return {"".join(p) for p in itertools.product(*parts)}
        raise AssertionError(f"{where}: cannot read the verb {ast.dump(node)}")

    verbs: set[str] = set()
    for path, tree in modules.items():
        # What each name is given in this module (a constant, a class's `audit_name`, ...).
        names: dict[str, set[str]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name) and isinstance(
                    node.value, ast.Constant | ast.IfExp
                ):
                    try:
                        found = strings(node.value, {}, "")
                    except AssertionError:
                        continue
                    names.setdefault(target.id, set()).update(v for v in found if v)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.relative_to(root)}:{node.lineno}"
            # (A `verb=` computed by a call is a sentence's word, not a code: `worded`.)
            given = [
                kw.value
                for kw in node.keywords
                if kw.arg == "verb" and not isinstance(kw.value, ast.Call)
            ]
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            slot = slots.get(called)
            if slot is not None and len(node.args) > slot:
                given.append(node.args[slot])
            for value in given:
                if isinstance(value, ast.Name) and value.id == "verb":
                    if "verb" not in names:
                        continue  # passed on by a recorder: its callers are read
                verbs |= strings(value, names, where)
    return verbs


def test_every_verb_the_code_records_has_a_label_in_english_and_chinese() -> None:
    from django.utils import translation

    from inbox.audit_words import VERB_LABELS, verb_label

    verbs = _audit_verbs_in_code()
    # The reading finds what it should: the verbs of every kind of call.
    assert {
        "guest_link_refused",  # _record_guest
        "link_renewed",  # notify._audit, through a constant
        "route_deleted",  # the admin's f-string and its audit_name
        "form_expired",  # f"form_{status}"
        "decision_delivered",  # verb= keyword
        "user_permissions_changed",  # verb = ... if ... else ...
        "person_erased",  # record_about
    } <= verbs
    assert sorted(verbs - set(VERB_LABELS)) == []
    with translation.override("en"):
        english = {verb: verb_label(verb) for verb in verbs}
    assert english["guest_link_refused"] == "Guest link refused"
    with translation.override("zh-hans"):
        chinese = {verb: verb_label(verb) for verb in verbs}
    assert chinese["guest_link_refused"] != "guest_link_refused"
    assert [verb for verb in verbs if chinese[verb] == english[verb]] == []


# --- who an account is: made, its address or name changed; groups made and renamed ---


def test_an_account_made_and_its_address_and_name_changed_are_in_the_trail_with_by_whom(
    admin_client: Client, admin_user: User
) -> None:
    added = admin_client.post(
        "/admin/auth/user/add/",
        {
            "username": "carol",
            "usable_password": "true",
            "password1": "a-long-pass-phrase-9",
            "password2": "a-long-pass-phrase-9",
        },
    )
    assert added.status_code == 302, added.content.decode()[:3000]
    carol = User.objects.get(username="carol")
    made = AuditEntry.objects.get(verb="user_created", object_id=str(carol.pk))
    assert made.actor == admin_user and made.actor_label == "admin"
    assert (made.details["username"], made.details["email"]) == ("carol", "")

    # The address her form links go to, and her name, set and then changed: each before → after.
    data = user_change_data(
        admin_client, carol, email="carol@example.com", first_name="Carol", last_name="Chen"
    )
    assert admin_client.post(f"/admin/auth/user/{carol.pk}/change/", data).status_code == 302
    carol.refresh_from_db()
    data = user_change_data(admin_client, carol, email="mallory@evil.example")
    assert admin_client.post(f"/admin/auth/user/{carol.pk}/change/", data).status_code == 302
    first, second = AuditEntry.objects.filter(verb="user_changed").order_by("id")
    assert first.actor == admin_user and first.object_id == str(carol.pk)
    assert first.details["email"] == ["", "carol@example.com"]
    assert first.details["name"] == ["", "Carol Chen"]
    assert second.details["email"] == ["carol@example.com", "mallory@evil.example"]
    assert "name" not in second.details and "username" not in second.details
    # The admin's list of entries says what happened, in English and Chinese.
    english = admin_client.get("/admin/inbox/auditentry/").content.decode()
    assert "Account created" in english and "Account&#x27;s address or name changed" in english
    chinese = admin_client.get(
        "/admin/inbox/auditentry/", HTTP_ACCEPT_LANGUAGE="zh-hans"
    ).content.decode()
    assert "账户已创建" in chinese and "账户的地址或姓名已更改" in chinese


def test_an_account_made_or_renamed_outside_the_admin_is_in_the_trail_too(db: None) -> None:
    call_command("createsuperuser", interactive=False, username="root", email="root@example.com")
    made = AuditEntry.objects.get(verb="user_created")
    assert made.actor_label == "system"
    assert made.details["email"] == "root@example.com" and made.details["is_superuser"] is True
    root = User.objects.get(username="root")
    root.username = "root2"
    root.email = "ROOT@example.org"
    root.save()
    changed = AuditEntry.objects.get(verb="user_changed")
    assert changed.details["username"] == ["root", "root2"]
    assert changed.details["email"] == ["root@example.com", "ROOT@example.org"]
    # Saving what did not change, or its last sign-in, records nothing.
    root.save()
    root.save(update_fields=["last_login"])
    assert AuditEntry.objects.filter(verb="user_changed").count() == 1


def test_a_group_made_and_renamed_is_in_the_trail_with_by_whom(
    admin_client: Client, admin_user: User
) -> None:
    assert admin_client.post("/admin/auth/group/add/", {"name": "finance"}).status_code == 302
    group = Group.objects.get(name="finance")
    made = AuditEntry.objects.get(verb="group_created")
    assert made.actor == admin_user and made.object_id == str(group.pk)
    assert made.details["name"] == "finance"
    saved = admin_client.post(f"/admin/auth/group/{group.pk}/change/", {"name": "finance-eu"})
    assert saved.status_code == 302
    renamed = AuditEntry.objects.get(verb="group_renamed")
    assert renamed.actor == admin_user and renamed.details["name"] == ["finance", "finance-eu"]
    Group.objects.filter(pk=group.pk).get().save()  # unchanged: nothing more
    assert AuditEntry.objects.filter(verb="group_renamed").count() == 1


# --- a reviewer opening a form ---


def test_a_reviewer_s_first_opening_of_a_form_is_in_the_trail_once(
    routed_form: Form, reviewer: User, admin_user: User
) -> None:
    browser = Client()
    browser.force_login(reviewer)
    page = f"/forms/{routed_form.public_id}/"
    assert browser.get(page).status_code == 200
    (opened,) = AuditEntry.objects.filter(verb="form_opened")
    assert opened.actor == reviewer and opened.object_id == str(routed_form.pk)
    assert opened.details["public_id"] == str(routed_form.public_id)
    assert opened.details["via"] == "page"
    # Opened again, and its live part polled: nothing more written, nor asked of the trail.
    with CaptureQueriesContext(connection) as second:
        assert browser.get(page).status_code == 200
    with CaptureQueriesContext(connection) as third:
        assert browser.get(page).status_code == 200
    assert browser.get(f"{page}live").status_code == 200
    assert len(second) == len(third)
    assert not any("inbox_auditentry" in q["sql"] for q in second.captured_queries)
    # In another browser: the trail has it already.
    elsewhere = Client()
    elsewhere.force_login(reviewer)
    assert elsewhere.get(page).status_code == 200
    assert AuditEntry.objects.filter(verb="form_opened").count() == 1
    # Another reviewer's first opening is theirs.
    admin_browser = Client()
    admin_browser.force_login(admin_user)
    assert admin_browser.get(page).status_code == 200
    assert [e.actor for e in AuditEntry.objects.filter(verb="form_opened").order_by("id")] == [
        reviewer,
        admin_user,
    ]


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
