"""Erasing a person: "Anonymise account" in the admin, and `manage.py erase_person`."""

from __future__ import annotations

import re
from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client

from inbox.models import (
    ApiToken,
    AuditEntry,
    Decision,
    DifyApp,
    FormRecipient,
    MessageFile,
    Route,
    RouteRecipient,
    Run,
    Upload,
    UploadTally,
)
from tests.delivery.helpers import make_form


def scan(*needles: str) -> list[str]:
    """Every row of every table holding one of `needles` (any case), as /tmp/snap41/scan.py
    searches a database: "table: row" for each."""
    found = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f'SELECT * FROM "{table}"')
            for row in cursor.fetchall():
                text = " | ".join(str(v) for v in row).lower()
                if any(n.lower() in text for n in needles):
                    found.append(f"{table}: {text[:200]}")
    return found


def _lena(dify_app: DifyApp, capture: Callable[..., Any]) -> tuple[User, Decision]:
    lena = User.objects.create_user(
        "lena.kowalski",
        "lena.k@example.org",
        "pw-lena-123",
        first_name="Lena",
        last_name="Kowalski",
    )
    ApiToken.issue(lena, "laptop")
    form = make_form(dify_app)
    with capture(execute=False):
        decision = form.decide(action_id="approve", inputs={}, reviewer=lena)
    Upload.objects.create(
        form=form,
        input_name="files",
        upload_file_id="up-1",
        name="a.pdf",
        size=3,
        category="document",
        uploaded_by=lena,
        uploaded_by_username="lena.kowalski",
    )
    MessageFile.objects.create(
        app=dify_app,
        dify_user="inbox-lena",
        upload_file_id="mf-1",
        name="b.png",
        size=3,
        category="image",
        uploaded_by=lena,
        uploaded_by_username="lena.kowalski",
    )
    Run.objects.filter(pk=form.run_id).update(started_by=lena, started_by_username="lena.kowalski")
    FormRecipient.objects.create(form=form, email="lena.k@example.org", user=lena)
    return lena, decision


def test_a_superuser_anonymises_an_account_that_had_tokens_keeping_its_records(
    client: Client,
    admin_user: User,
    dify_app: DifyApp,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    lena, decision = _lena(dify_app, django_capture_on_commit_callbacks)
    assert scan("lena.kowalski", "lena.k@example.org", "Kowalski")
    client.force_login(admin_user)
    data = {"action": "anonymise", "_selected_action": [str(lena.pk)]}
    page = client.post("/admin/auth/user/", data)
    body = page.content.decode()
    assert page.status_code == 200 and "This cannot be undone." in body
    assert f"former-{lena.pk}" in body
    User.objects.get(pk=lena.pk)  # nothing changed yet
    assert User.objects.get(pk=lena.pk).username == "lena.kowalski"

    done = client.post("/admin/auth/user/", {**data, "confirm": "yes"}, follow=True)
    assert "1 account anonymised." in done.content.decode()
    lena.refresh_from_db()
    pseudonym = f"former-{lena.pk}"
    assert (lena.username, lena.first_name, lena.last_name, lena.email) == (pseudonym, "", "", "")
    assert not lena.is_active and not lena.has_usable_password() and lena.last_login is None
    assert not ApiToken.objects.filter(user=lena, revoked_at__isnull=True).exists()
    # The records stay, under the pseudonym.
    decision.refresh_from_db()
    assert (decision.reviewer, decision.reviewer_username, decision.reviewer_name) == (
        lena,
        pseudonym,
        pseudonym,
    )
    assert Upload.objects.get().uploaded_by_username == pseudonym
    assert MessageFile.objects.get().uploaded_by_username == pseudonym
    assert Run.objects.get().started_by_username == pseudonym
    assert AuditEntry.objects.get(verb="decision_made").actor_label == pseudonym
    assert scan("lena.kowalski", "lena.k@example.org", "Kowalski") == []
    entry = AuditEntry.objects.get(verb="user_anonymised")
    assert (entry.actor, entry.object_id, entry.object_repr) == (
        admin_user,
        str(lena.pk),
        pseudonym,
    )
    # Chosen again with someone else: only the one anonymised now is counted.
    mia = User.objects.create_user("mia", email="mia@example.org")
    again = {"action": "anonymise", "_selected_action": [str(lena.pk), str(mia.pk)]}
    done = client.post("/admin/auth/user/", {**again, "confirm": "yes"}, follow=True)
    assert "1 account anonymised." in done.content.decode()
    assert AuditEntry.objects.filter(verb="user_anonymised").count() == 2


def test_a_team_lead_anonymises_only_accounts_holding_no_more_than_they_do(
    client: Client,
    admin_user: User,
    reviewer: User,
    dify_app: DifyApp,
) -> None:
    lead = User.objects.create_user("lead", "lead@example.com", "pw-lead-123", is_staff=True)
    for codename in ("view_user", "change_user"):
        lead.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(lead)
    data = {"action": "anonymise", "_selected_action": [str(admin_user.pk), str(reviewer.pk)]}
    # Without the permission, the action is not offered.
    assert "anonymise" not in client.get("/admin/auth/user/").content.decode()
    client.post("/admin/auth/user/", {**data, "confirm": "yes"})
    assert User.objects.get(pk=reviewer.pk).username == "alice"
    lead.user_permissions.add(Permission.objects.get(codename="anonymise_user"))
    client.post("/admin/auth/user/", {**data, "confirm": "yes"})
    assert User.objects.get(pk=admin_user.pk).username == "admin"
    assert User.objects.get(pk=reviewer.pk).username == f"former-{reviewer.pk}"


def test_erase_person_pseudonymises_a_guest_everywhere_but_a_decision_still_being_sent(
    dify_app: DifyApp, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    guest = "Zhang.Wei@example.com"
    route = Route.objects.get(app=dify_app)
    RouteRecipient.objects.create(route=route, email=guest)
    done, sending = make_form(dify_app), make_form(dify_app, form_id="F-2")
    for form in (done, sending):
        # Routed to the guest (the route lists the address); in two cases on one form too.
        assert FormRecipient.objects.filter(form=form, email=guest).exists()
        FormRecipient.objects.create(form=form, email=guest.lower(), time_zone="Asia/Shanghai")
        UploadTally.objects.create(form=form, who=f"g:{guest.lower()}", files=1, bytes=3)
    Upload.objects.create(
        form=done,
        input_name="files",
        upload_file_id="up-1",
        name="passport.png",
        size=3,
        category="image",
        guest_email=guest,
    )
    with django_capture_on_commit_callbacks(execute=False):
        delivered = done.decide(action_id="approve", inputs={}, guest_email=guest)
        queued = sending.decide(action_id="approve", inputs={}, guest_email=guest)
    Decision.objects.filter(pk=delivered.pk).update(status=Decision.Status.DELIVERED)
    AuditEntry.record("link_opened", done, actor_label=guest, ip="203.0.113.7", guest=guest.lower())

    out = StringIO()
    call_command("erase_person", email="zhang.wei@example.com", dry_run=True, stdout=out)
    assert "Would replace" in out.getvalue()
    assert Decision.objects.get(pk=delivered.pk).guest_email == guest

    out = StringIO()
    call_command("erase_person", email="zhang.wei@example.com", stdout=out)
    said = out.getvalue()
    assert "1 decision(s)" in said and "removed 1 route recipient(s)" in said
    assert "Left as they are: 1 decision(s)" in said and str(queued.public_id) in said
    # Nothing of the guest is left but the decision on its way and its form's recipient row
    # (its failure notice would go there).
    left = scan("zhang.wei@example.com", "203.0.113.7")
    assert left and all(
        row.startswith(("inbox_decision:", "inbox_formrecipient:")) for row in left
    ), left
    assert len(left) == 3
    assert Decision.objects.get(pk=queued.pk).guest_email == guest
    pseudonym = Decision.objects.get(pk=delivered.pk).guest_email
    assert pseudonym.startswith("erased-") and pseudonym.endswith("@erased.invalid")
    assert Upload.objects.get().guest_email == pseudonym
    assert not RouteRecipient.objects.exists()
    assert AuditEntry.objects.get(verb="person_erased").details["pseudonym"] == pseudonym

    # Once the decision has been delivered, a second run erases the rest.
    Decision.objects.filter(pk=queued.pk).update(status=Decision.Status.DELIVERED)
    call_command("erase_person", email="zhang.wei@example.com", stdout=StringIO())
    assert scan("zhang.wei@example.com", "203.0.113.7") == []


class Interrupted(Exception):
    """The process stopped (a proxy's timeout, a restart) between two batches."""


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, model: type, batches: int) -> None:
    """Stop the erasure when it would update `model` for the (batches + 1)th time."""
    from django.db.models.query import QuerySet

    real = QuerySet.update
    done: list[int] = []

    def update(self: QuerySet[Any], **values: Any) -> int:
        if self.model is model:
            if len(done) == batches:
                raise Interrupted
            done.append(1)
        return real(self, **values)

    monkeypatch.setattr(QuerySet, "update", update)


def test_anonymising_commits_in_batches_and_running_it_again_finishes_an_interrupted_one(
    admin_user: User,
    dify_app: DifyApp,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    from inbox import erasure

    lena, _decision = _lena(dify_app, django_capture_on_commit_callbacks)
    for n in range(4):
        Run.objects.create(
            app=dify_app,
            dify_user="u",
            workflow_run_id=f"R-lena-{n}",
            started_by=lena,
            started_by_username="lena.kowalski",
        )
    monkeypatch.setattr(erasure, "BATCH", 2)
    with monkeypatch.context() as stop, pytest.raises(Interrupted):
        _interrupt_after(stop, Run, batches=1)
        erasure.anonymise_user(User.objects.get(pk=lena.pk), actor=admin_user)
    pseudonym = f"former-{lena.pk}"
    # The account was deactivated first; it keeps its name until the end, so a second run
    # still knows what to look for; the first two runs were committed.
    lena.refresh_from_db()
    assert not lena.is_active and lena.username == "lena.kowalski"
    assert not ApiToken.objects.filter(user=lena, revoked_at__isnull=True).exists()
    names = list(Run.objects.order_by("pk").values_list("started_by_username", flat=True))
    assert names == [pseudonym] * 2 + ["lena.kowalski"] * 3
    assert Decision.objects.get().reviewer_username == pseudonym
    assert not AuditEntry.objects.filter(verb="user_anonymised").exists()

    counts = erasure.anonymise_user(User.objects.get(pk=lena.pk), actor=admin_user)
    assert counts["runs"] == 3 and counts["decisions"] == 0 and counts["tokens"] == 0
    assert set(Run.objects.values_list("started_by_username", flat=True)) == {pseudonym}
    assert User.objects.get(pk=lena.pk).username == pseudonym
    assert scan("lena.kowalski", "lena.k@example.org", "Kowalski") == []
    entry = AuditEntry.objects.get(verb="user_anonymised")
    assert entry.object_repr == pseudonym and entry.details["runs"] == 3


def test_erase_person_interrupted_is_finished_under_the_pseudonym_it_printed(
    dify_app: DifyApp,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    from inbox import erasure

    guest = "zhang.wei@example.com"
    for n in range(3):
        with django_capture_on_commit_callbacks(execute=False):
            decision = make_form(dify_app, form_id=f"F-z{n}").decide(
                action_id="approve", inputs={}, guest_email=guest
            )
        Decision.objects.filter(pk=decision.pk).update(status=Decision.Status.DELIVERED)
    monkeypatch.setattr(erasure, "BATCH", 1)
    out = StringIO()
    with monkeypatch.context() as stop, pytest.raises(Interrupted):
        _interrupt_after(stop, Decision, batches=1)
        call_command("erase_person", email=guest, stdout=out)
    printed = re.search(r"run it again with --pseudonym (\S+)", out.getvalue())
    assert printed is not None, out.getvalue()
    pseudonym = printed.group(1)
    assert sorted(Decision.objects.values_list("guest_email", flat=True)) == [
        pseudonym,
        guest,
        guest,
    ]
    assert not AuditEntry.objects.filter(verb="person_erased").exists()

    out = StringIO()
    call_command("erase_person", email=guest, pseudonym=pseudonym, stdout=out)
    assert f"Replaced by {pseudonym}: " in out.getvalue() and "2 decision(s)" in out.getvalue()
    assert set(Decision.objects.values_list("guest_email", flat=True)) == {pseudonym}
    assert scan(guest) == []
    assert AuditEntry.objects.get(verb="person_erased").details["pseudonym"] == pseudonym
    # Only a pseudonym of its own kind: never someone's address.
    with pytest.raises(CommandError):
        call_command("erase_person", email=guest, pseudonym="bob@example.com", stdout=out)


LENA = "lena.li@corp.example"


def _list_on_default_route(admin_client: Client, app: DifyApp, email: str) -> Route:
    """An administrator adds `email` to the app's default route as an email recipient (guests
    allowed), on the route's admin page: the admin's change log says so, with the address."""
    from django.contrib.admin.models import LogEntry

    default = Route.objects.get(app=app, node="")
    saved = admin_client.post(
        f"/admin/inbox/route/{default.pk}/change/",
        {
            "app": app.pk,
            "name": default.name,
            "node": "",
            "priority": default.priority,
            "is_active": "on",
            "groups": [g.pk for g in default.groups.all()],
            "language": "en",
            "allow_guests": "on",
            "email_reviewers": "on",
            "reminders": "",
            "recipients-TOTAL_FORMS": "1",
            "recipients-INITIAL_FORMS": "0",
            "recipients-0-email": email,
            "recipients-0-language": "en",
        },
    )
    assert saved.status_code == 302, saved.content.decode()[:3000]
    assert RouteRecipient.objects.filter(route=default, email=email).exists()
    assert LogEntry.objects.filter(change_message__icontains=email).exists()
    return default


def test_anonymising_takes_the_address_off_routes_and_closes_its_links_guest_or_not(
    admin_client: Client,
    admin_user: User,
    dify_app: DifyApp,
    reviewers_group: Any,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    from django.contrib.admin.models import LogEntry
    from django.core import mail

    from inbox import notify

    default = _list_on_default_route(admin_client, dify_app, LENA)
    # Routed before her account existed: her address was a guest's.
    with django_capture_on_commit_callbacks(execute=False):
        as_guest = make_form(dify_app, form_id="F-guest")
    guest_row = FormRecipient.objects.get(form=as_guest, email=LENA)
    assert guest_row.user is None and guest_row.still_asked()
    lena = User.objects.create_user("lena", LENA, "pw-lena-123", first_name="Lena", last_name="Li")
    lena.groups.add(reviewers_group)
    with django_capture_on_commit_callbacks(execute=False):
        as_reviewer = make_form(dify_app, form_id="F-account")
    account_row = FormRecipient.objects.get(form=as_reviewer, email=LENA)
    assert account_row.user == lena and account_row.still_asked()

    data = {"action": "anonymise", "_selected_action": [str(lena.pk)]}
    page = admin_client.post("/admin/auth/user/", data).content.decode()
    # What goes: the route she is an email recipient of, by name.
    assert "Taken off the email recipients of these routes:" in page
    assert str(default) in page
    done = admin_client.post("/admin/auth/user/", {**data, "confirm": "yes"}, follow=True)
    assert "1 account anonymised." in done.content.decode()

    assert not RouteRecipient.objects.exists()
    changed = AuditEntry.objects.get(verb="route_changed", details__reason="account anonymised")
    assert changed.object_id == str(default.pk) and changed.actor == admin_user
    # Her links, the guest's one too, open nothing more.
    for row in (guest_row, account_row):
        row.refresh_from_db()
        assert row.withdrawn_at is not None and not row.still_asked()
    guest_link = notify.link_path(notify.link_token(guest_row))
    assert Client().get(guest_link).status_code == 403
    assert AuditEntry.objects.get(verb="user_anonymised").details["links_withdrawn"] == 2

    # A form the route routes now does not ask the address at all, nor email it.
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        after = make_form(dify_app, form_id="F-after")
    notify.send_form_emails(after.pk)
    assert not FormRecipient.objects.filter(form=after, email__iexact=LENA).exists()
    assert all(LENA not in message.to for message in mail.outbox)

    # The admin's change log no longer names the address ("Added email recipient ...").
    assert not LogEntry.objects.filter(change_message__icontains=LENA).exists()
    assert LogEntry.objects.filter(change_message__icontains=f"former-{lena.pk}").exists()
    # Only the guest's withdrawn link keeps the address (erase_person erases a guest's).
    left = scan(LENA)
    assert left and all(row.startswith("inbox_formrecipient:") for row in left), left
    assert list(FormRecipient.objects.filter(email__iexact=LENA)) == [guest_row]


def test_the_anonymise_page_says_what_stays_with_counts_and_where_to_read_it(
    client: Client,
    admin_user: User,
    reviewer: User,
    dify_app: DifyApp,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    lena, decision = _lena(dify_app, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=False):
        others = make_form(dify_app).decide(action_id="approve", inputs={}, reviewer=reviewer)
    client.force_login(admin_user)
    data = {"action": "anonymise", "_selected_action": [str(lena.pk)]}
    page = client.post("/admin/auth/user/", data).content.decode()
    text = " ".join(page.split())
    assert "Not changed: what the person typed into their decisions" in text
    assert "the names of the files they uploaded" in text
    assert "the outputs of runs as Dify returned them" in text
    assert "1 decision by this account" in text and "1 upload by this account" in text
    assert "Its address is an email recipient of no route." in text
    decisions = f"/admin/inbox/decision/?reviewer__id__exact={lena.pk}"
    uploads = f"/admin/inbox/upload/?uploaded_by__id__exact={lena.pk}"
    assert f'href="{decisions}"' in page and f'href="{uploads}"' in page
    # The links list hers alone, before and after.
    for _round in range(2):
        listed = client.get(decisions).content.decode()
        assert str(decision.public_id) in listed and str(others.public_id) not in listed
        assert "a.pdf" in client.get(uploads).content.decode()
        client.post("/admin/auth/user/", {**data, "confirm": "yes"})
    assert User.objects.get(pk=lena.pk).username == f"former-{lena.pk}"


def test_erase_person_scrubs_the_address_from_the_admin_change_log(
    admin_client: Client, dify_app: DifyApp
) -> None:
    from django.contrib.admin.models import LogEntry

    guest = "zhang.wei@example.com"
    _list_on_default_route(admin_client, dify_app, guest)
    out = StringIO()
    call_command("erase_person", email=guest, dry_run=True, stdout=out)
    assert "1 admin log entry" in out.getvalue()
    assert LogEntry.objects.filter(change_message__icontains=guest).exists()
    out = StringIO()
    call_command("erase_person", email=guest, stdout=out)
    assert "1 admin log entry" in out.getvalue()
    pseudonym = AuditEntry.objects.get(verb="person_erased").details["pseudonym"]
    entry = LogEntry.objects.get(change_message__icontains=pseudonym)
    assert f"Added email recipient “{pseudonym}”." in entry.get_change_message()
    assert scan(guest) == []


def test_an_account_s_former_addresses_and_names_in_the_trail_are_erased_with_it(
    client: Client, admin_user: User, dify_app: DifyApp
) -> None:
    """`user_created` and `user_changed` keep who an account was, before and after: anonymising
    it replaces all of them, not only its present name and address; erasing an address an
    account once had replaces it in those entries too."""
    nina = User.objects.create_user("nina.old", "nina.old@example.org", first_name="Nina")
    nina.username, nina.email, nina.last_name = "nina.new", "nina.new@example.org", "Novak"
    nina.save()
    changed = AuditEntry.objects.get(verb="user_changed", object_id=str(nina.pk))
    assert changed.details["email"] == ["nina.old@example.org", "nina.new@example.org"]
    assert changed.details["name"] == ["Nina", "Nina Novak"]
    made = AuditEntry.objects.get(verb="user_created", object_id=str(nina.pk))
    assert made.details["username"] == "nina.old"
    # Another account's address, changed: erased by `erase_person`, as a guest's would be.
    omar = User.objects.create_user("omar", "omar.private@example.net")
    omar.email = "omar@example.com"
    omar.save()

    client.force_login(admin_user)
    data = {"action": "anonymise", "_selected_action": [str(nina.pk)], "confirm": "yes"}
    client.post("/admin/auth/user/", data)
    nina.refresh_from_db()
    assert nina.username == f"former-{nina.pk}"
    assert scan("nina.old", "nina.new", "Novak", "Nina") == []
    # Its renaming is recorded once, as the anonymisation, never as a change from its name.
    assert AuditEntry.objects.filter(verb="user_changed", object_id=str(nina.pk)).count() == 1
    assert AuditEntry.objects.filter(verb="user_anonymised").count() == 1

    call_command("erase_person", email="omar.private@example.net", stdout=StringIO())
    assert scan("omar.private") == []
    entry = AuditEntry.objects.get(verb="user_changed", object_id=str(omar.pk))
    before, after = entry.details["email"]
    assert before.startswith("erased-") and after == "omar@example.com"
