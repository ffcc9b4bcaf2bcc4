"""Routes and forms left without anyone to ask: a route saved with only empty groups, and the
accounts and groups whose change leaves routes asking nobody and forms nobody can answer are
said in the admin, with the forms counted and linked."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import translation

from inbox.models import AuditEntry, DifyApp, Form, Route
from tests.reach.factories import make_form, route, user_change_data


def notes(response: Any) -> list[str]:
    return [html.unescape(str(m)) for m in get_messages(response.wsgi_request)]


def _route_add(reach_app: DifyApp, **fields: Any) -> dict[str, Any]:
    return {
        "app": reach_app.pk,
        "name": "vendor onboarding",
        "node": "*",
        "priority": 1,
        "language": "en",
        "is_active": "on",
        "recipients-TOTAL_FORMS": "0",
        "recipients-INITIAL_FORMS": "0",
        **fields,
    }


def test_a_route_to_a_group_with_no_active_member_asks_nobody(
    admin_client: Client, reach_app: DifyApp, reviewer: User
) -> None:
    legal = Group.objects.create(name="legal")
    response = admin_client.post(
        reverse("admin:inbox_route_add"), _route_add(reach_app, groups=[legal.pk]), follow=True
    )
    said = notes(response)
    assert any("The route “vendor onboarding” asks nobody" in n for n in said), said
    assert "Groups with no active member ask nobody, though the route lists them: @legal." in said
    # A deactivated member asks no one either.
    made = Route.objects.get(name="vendor onboarding")
    gone = User.objects.create_user("gone", "gone@example.com", "pw-gone-123", is_active=False)
    legal.user_set.add(gone)
    response = admin_client.post(
        reverse("admin:inbox_route_change", args=[made.pk]),
        _route_add(reach_app, groups=[legal.pk], users=[reviewer.pk], priority=2),
        follow=True,
    )
    said = notes(response)
    assert not any("asks nobody:" in n for n in said), said  # alice is asked
    assert "Groups with no active member ask nobody, though the route lists them: @legal." in said
    # An active member: nothing said.
    legal.user_set.add(reviewer)
    response = admin_client.post(
        reverse("admin:inbox_route_change", args=[made.pk]),
        _route_add(reach_app, groups=[legal.pk], priority=3),
        follow=True,
    )
    assert not [n for n in notes(response) if "nobody" in n]


@pytest.fixture
def finance(reach_app: DifyApp) -> tuple[Group, User, User, list[Form]]:
    """@finance (carol, dave), asked by the route "finance managers", three forms waiting."""
    group = Group.objects.create(name="finance")
    carol = User.objects.create_user("carol", "carol@example.com", "pw-carol-123")
    dave = User.objects.create_user("dave", "dave@example.com", "pw-dave-123")
    group.user_set.add(carol, dave)
    route(reach_app, name="finance managers", groups=[group], email_reviewers=True)
    return group, carol, dave, [make_form(reach_app) for _ in range(3)]


FORMS_LINK = "/admin/inbox/form/?status__exact=pending&asked=nobody"


def test_the_last_reviewer_of_a_group_taken_off_or_deactivated_is_said(
    admin_client: Client, finance: tuple[Group, User, User, list[Form]]
) -> None:
    _group, carol, dave, forms = finance
    # carol taken off the group: dave is still asked, nothing to say.
    saved = admin_client.post(
        f"/admin/auth/user/{carol.pk}/change/",
        user_change_data(admin_client, carol, groups=[]),
        follow=True,
    )
    assert not [n for n in notes(saved) if "nobody" in n]
    assert not carol.groups.exists()
    # dave deactivated: the route asks nobody, the three forms have nobody.
    saved = admin_client.post(
        f"/admin/auth/user/{dave.pk}/change/",
        user_change_data(admin_client, dave, is_active=False),
        follow=True,
    )
    [warning] = [n for n in notes(saved) if "nobody" in n]
    assert warning.startswith(
        "The route payroll · finance managers now asks nobody: its forms will wait where only "
        "administrators see them. 3 pending forms now have nobody who can answer them. "
    )
    link = re.search(r'<a href="([^"]+)">Reassign them from the Forms list.</a>', warning)
    assert link is not None and link.group(1) == FORMS_LINK
    listed = admin_client.get(link.group(1)).content.decode()
    assert all(f"/admin/inbox/form/{f.pk}/change/" in listed for f in forms)
    # Saving again changes nothing more: nothing said again.
    again = admin_client.post(
        f"/admin/auth/user/{dave.pk}/change/",
        user_change_data(admin_client, dave, first_name="David"),
        follow=True,
    )
    assert not [n for n in notes(again) if "nobody" in n]


def test_deleting_the_group_says_what_it_leaves_before_and_after(
    admin_client: Client, finance: tuple[Group, User, User, list[Form]]
) -> None:
    group, _carol, _dave, forms = finance
    page = admin_client.get(f"/admin/auth/group/{group.pk}/delete/")
    body = html.unescape(page.content.decode())
    assert (
        "Deleting it leaves the route payroll · finance managers asking nobody: its forms will "
        "wait where only administrators see them." in body
    )
    assert "Deleting it leaves 3 pending forms with nobody who can answer them." in body
    # Named as people read them, not "User_groups object (5)".
    assert "Group membership: carol · @finance" in body
    assert f"Form reviewer group: {forms[0]} · @finance" in body
    assert "object (" not in body
    # Measured, not done: the group, its rows and the trail are as they were.
    assert Group.objects.filter(pk=group.pk).exists()
    assert group.user_set.count() == 2 and forms[0].assigned_groups.get() == group
    assert not AuditEntry.objects.filter(verb__in=["form_unassigned", "route_changed"]).exists()
    deleted = admin_client.post(
        f"/admin/auth/group/{group.pk}/delete/", {"post": "yes"}, follow=True
    )
    said = notes(deleted)
    [warning] = [n for n in said if "nobody" in n]
    assert warning.startswith(
        "The route payroll · finance managers now asks nobody: its forms will wait where only "
        "administrators see them. 3 pending forms now have nobody who can answer them. "
    )
    assert FORMS_LINK in warning
    assert set(Form.objects.asked_of_nobody()) == set(forms)


def test_a_group_s_page_lists_its_members(
    admin_client: Client, finance: tuple[Group, User, User, list[Form]]
) -> None:
    group, _carol, dave, _forms = finance
    dave.is_active = False
    dave.save()
    body = admin_client.get(f"/admin/auth/group/{group.pk}/change/").content.decode()
    assert "carol, dave (deactivated)" in body
    empty = Group.objects.create(name="legal")
    body = html.unescape(admin_client.get(f"/admin/auth/group/{empty.pk}/change/").content.decode())
    assert "Nobody: the routes and forms of this group ask no one." in body


def test_what_a_change_leaves_is_said_in_chinese(
    admin_client: Client, finance: tuple[Group, User, User, list[Form]]
) -> None:
    group, *_ = finance
    admin_client.cookies["django_language"] = "zh-hans"
    with translation.override("zh-hans"):
        deleted = admin_client.post(
            f"/admin/auth/group/{group.pk}/delete/", {"post": "yes"}, follow=True
        )
        [warning] = [n for n in notes(deleted) if "href" in n]
    text = re.sub(r"<[^>]+>", "", warning)
    assert text == (
        "路由 payroll · finance managers 现在没有指定任何人\uff1a它的表单只有管理员能看到\uff0c会一直等待。"
        "3 个待处理表单现在没有任何人能回答。请在表单列表中改派它们。"
    )
    assert FORMS_LINK in warning
