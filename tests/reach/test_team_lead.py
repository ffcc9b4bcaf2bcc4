"""A team lead: staff with the permissions the README lists, not a superuser. They create the
reviewers, groups and routes, reassign and resend, read the trail and the dashboard, and hand
out no more than they hold."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django.urls import reverse

from inbox.models import AuditEntry, DifyApp, Form, Route
from tests.reach.factories import make_form, user_change_data

# The team-lead set the README gives.
LEAD_PERMISSIONS = [
    "auth.add_user",
    "auth.change_user",
    "auth.view_user",
    "auth.add_group",
    "auth.change_group",
    "auth.view_group",
    "inbox.add_route",
    "inbox.change_route",
    "inbox.view_route",
    "inbox.add_routerecipient",
    "inbox.change_routerecipient",
    "inbox.delete_routerecipient",
    "inbox.view_routerecipient",
    "inbox.view_difyapp",
    "inbox.view_form",
    "inbox.reassign_form",
    "inbox.resend_form_emails",
    "inbox.view_auditentry",
    "inbox.add_run",
]


def perms(*names: str) -> list[Permission]:
    found = []
    for name in names:
        app_label, codename = name.split(".")
        found.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return found


@pytest.fixture
def lead(db: None) -> User:
    user = User.objects.create_user("lead", "lead@example.com", "pw-lead-123", is_staff=True)
    user.user_permissions.set(perms(*LEAD_PERMISSIONS))
    return user


@pytest.fixture
def lead_client(lead: User) -> Client:
    client = Client()
    client.force_login(lead)
    return client


def change_user(client: Client, user: User, **changes: Any) -> Any:
    # As a browser posts it: the account's own permissions as they are, unless changed.
    changes.setdefault("user_permissions", list(user.user_permissions.values_list("pk", flat=True)))
    return client.post(
        f"/admin/auth/user/{user.pk}/change/", user_change_data(client, user, **changes)
    )


def test_a_lead_cannot_make_themselves_or_anyone_superuser_or_staff(
    lead_client: Client, lead: User, other_reviewer: User
) -> None:
    page = lead_client.get(f"/admin/auth/user/{lead.pk}/change/").content.decode()
    assert 'name="is_superuser"' not in page and 'name="is_staff"' not in page
    for user in (lead, other_reviewer):
        response = change_user(lead_client, user, is_superuser="on", is_staff="on")
        assert response.status_code == 302
        user.refresh_from_db()
        assert not user.is_superuser
    other_reviewer.refresh_from_db()
    assert not other_reviewer.is_staff
    lead.refresh_from_db()
    assert lead.is_staff
    assert not AuditEntry.objects.filter(verb="user_access_changed").exists()


def test_a_lead_hands_out_only_permissions_they_hold(
    lead_client: Client, lead: User, other_reviewer: User
) -> None:
    [delete_app, retry] = perms("inbox.delete_difyapp", "inbox.retry_decision")
    [add_run] = perms("inbox.add_run")
    page = lead_client.get(f"/admin/auth/user/{lead.pk}/change/").content.decode()
    assert f'value="{add_run.pk}"' in page and f'value="{delete_app.pk}"' not in page
    # To themselves or to someone else: refused, nothing changes.
    for user in (lead, other_reviewer):
        response = change_user(lead_client, user, user_permissions=[delete_app.pk])
        assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
        assert not user.user_permissions.filter(pk=delete_app.pk).exists()
    # One they hold is given.
    response = change_user(lead_client, other_reviewer, user_permissions=[add_run.pk])
    assert response.status_code == 302
    assert list(other_reviewer.user_permissions.all()) == [add_run]
    # An account holding one they lack (given by a superuser) is not theirs to change.
    other_reviewer.user_permissions.add(retry)
    page = lead_client.get(f"/admin/auth/user/{other_reviewer.pk}/change/")
    assert 'name="_save"' not in page.content.decode()


def test_a_lead_adds_accounts_only_to_groups_that_grant_nothing_more(
    lead_client: Client, lead: User, other_reviewer: User
) -> None:
    admins = Group.objects.create(name="admins")
    admins.permissions.set(perms("inbox.change_difyapp"))
    starters = Group.objects.create(name="starters")
    starters.permissions.set(perms("inbox.add_run"))
    for user in (lead, other_reviewer):
        response = change_user(lead_client, user, groups=[admins.pk])
        assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
        assert not user.groups.filter(pk=admins.pk).exists()
    response = change_user(lead_client, other_reviewer, groups=[starters.pk])
    assert response.status_code == 302
    assert list(other_reviewer.groups.values_list("name", flat=True)) == ["starters"]
    # Nor does the lead give a group a permission they lack.
    response = lead_client.post(
        f"/admin/auth/group/{starters.pk}/change/",
        {"name": "starters", "permissions": [p.pk for p in perms("inbox.change_difyapp")]},
    )
    assert response.status_code == 200
    assert set(starters.permissions.all()) == set(perms("inbox.add_run"))
    # A group holding more keeps it when the lead renames it.
    response = lead_client.post(
        f"/admin/auth/group/{admins.pk}/change/", {"name": "administrators", "permissions": []}
    )
    assert response.status_code == 302
    admins.refresh_from_db()
    assert admins.name == "administrators"
    assert set(admins.permissions.all()) == set(perms("inbox.change_difyapp"))


def test_a_lead_cannot_change_a_superuser_or_an_account_holding_more(
    lead_client: Client, admin_user: User, outsider: User
) -> None:
    outsider.user_permissions.set(perms("inbox.change_difyapp"))
    for user in (admin_user, outsider):
        page = lead_client.get(f"/admin/auth/user/{user.pk}/change/")
        assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
        data = {"username": user.username, "email": "taken@example.com"}
        assert lead_client.post(f"/admin/auth/user/{user.pk}/change/", data).status_code == 403
        password = f"/admin/auth/user/{user.pk}/password/"
        assert lead_client.get(password).status_code == 403
        user.refresh_from_db()
        assert user.email != "taken@example.com"


def test_the_lead_set_creates_reviewers_groups_and_routes_reassigns_and_reads_the_trail(
    lead_client: Client,
    lead: User,
    reach_app: DifyApp,
    reach_route: Route,
    other_reviewer: User,
) -> None:
    # A group, with a permission the lead holds.
    [add_run] = perms("inbox.add_run")
    response = lead_client.post(
        "/admin/auth/group/add/", {"name": "payroll-team", "permissions": [add_run.pk]}
    )
    assert response.status_code == 302
    team = Group.objects.get(name="payroll-team")
    # A reviewer, then put in the group.
    response = lead_client.post(
        "/admin/auth/user/add/",
        {
            "username": "carol",
            "password1": "pw-carol-12345!",
            "password2": "pw-carol-12345!",
            "usable_password": "true",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    carol = User.objects.get(username="carol")
    assert (
        change_user(lead_client, carol, groups=[team.pk], email="carol@example.com").status_code
        == 302
    )
    assert list(carol.groups.all()) == [team]
    # A route for the group, with an address.
    response = lead_client.post(
        reverse("admin:inbox_route_add"),
        {
            "app": reach_app.pk,
            "name": "payroll check",
            "node": "Payroll*",
            "priority": 10,
            "is_active": "on",
            "groups": [team.pk],
            "email_reviewers": "on",
            "language": "en",
            "reminders": "24h,1h",
            "recipients-TOTAL_FORMS": "1",
            "recipients-INITIAL_FORMS": "0",
            "recipients-0-email": "payroll@example.com",
            "recipients-0-language": "en",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    assert Route.objects.get(name="payroll check").recipients.count() == 1
    # Reassign a form to the group, and resend its emails.
    form = make_form(reach_app)
    assert lead_client.get(reverse("admin:inbox_form_changelist")).status_code == 200
    changelist = reverse("admin:inbox_form_changelist")
    done = lead_client.post(
        changelist,
        {"action": "reassign", "_selected_action": [form.pk], "apply": "1", "groups": [team.pk]},
        follow=True,
    )
    assert "1 form(s) reassigned." in done.content.decode()
    assert list(Form.objects.get(pk=form.pk).assigned_groups.all()) == [team]
    sent = lead_client.post(
        changelist, {"action": "resend_email", "_selected_action": [form.pk]}, follow=True
    )
    assert "email(s) sent" in sent.content.decode()
    # The trail and the dashboard.
    trail = lead_client.get(reverse("admin:inbox_auditentry_changelist"))
    assert trail.status_code == 200 and "form_reassigned" in str(
        trail.context["cl"].result_list[0].verb
    )
    assert lead_client.get("/dashboard/").status_code == 200
