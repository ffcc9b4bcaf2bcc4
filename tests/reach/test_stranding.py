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
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
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


# What the delete pages say beforehand equals what the deletion then leaves: the routes it
# leaves asking nobody and the forms it leaves to nobody, as said afterwards and as the
# dashboard counts them.
AHEAD_ROUTES = re.compile(r"Deleting (?:it|them) leaves the routes? (.+?) asking nobody:")
AHEAD_FORMS = re.compile(r"Deleting (?:it|them) leaves (\d+) pending forms? with nobody")
AFTER_ROUTES = re.compile(r"The routes? (.+?) now asks? nobody:")
AFTER_FORMS = re.compile(r"(\d+) pending forms? now ha(?:s|ve) nobody")


def _said(pattern: re.Pattern[str], texts: list[str]) -> str:
    found = [m.group(1) for t in texts for m in [pattern.search(t)] if m]
    assert len(found) <= 1, texts
    return found[0] if found else ""


def _unrouted(client: Client) -> int:
    count = client.get("/dashboard/").context["unrouted"]
    assert isinstance(count, int)
    return count


def _writes(queries: CaptureQueriesContext) -> list[str]:
    """Statements that change the inbox's rows or lock them (a session's save aside)."""
    return [
        q["sql"]
        for q in queries.captured_queries
        if re.match(r"\s*(DELETE|UPDATE|INSERT|SAVEPOINT)\b", q["sql"], re.IGNORECASE)
        and "django_session" not in q["sql"]
    ]


def _preview_then_delete(admin_client: Client, groups: list[Group]) -> tuple[str, str]:
    """Opens the delete page of one group (or the action's confirmation for several), checks
    that nothing was deleted to say what it would leave, deletes, and checks that the same is
    then said and counted. Returns what was said: the routes and the number of forms."""
    unrouted = _unrouted(admin_client)
    routes_before = set(Route.objects.asking_nobody())
    with CaptureQueriesContext(connection) as queries:
        if len(groups) == 1:
            page = admin_client.get(f"/admin/auth/group/{groups[0].pk}/delete/")
        else:
            page = admin_client.post(
                "/admin/auth/group/",
                {"action": "delete_selected", "_selected_action": [g.pk for g in groups]},
            )
    assert page.status_code == 200
    assert not _writes(queries), _writes(queries)
    assert not AuditEntry.objects.filter(verb__in=["form_unassigned", "route_changed"]).exists()
    assert Group.objects.filter(pk__in=[g.pk for g in groups]).count() == len(groups)
    ahead = notes(page)
    # Said in the page itself, above Django's list of what goes with the groups.
    body = html.unescape(page.content.decode())
    assert all(note in body for note in ahead if "nobody" in note)
    routes, forms = _said(AHEAD_ROUTES, ahead), _said(AHEAD_FORMS, ahead)

    if len(groups) == 1:
        deleted = admin_client.post(
            f"/admin/auth/group/{groups[0].pk}/delete/", {"post": "yes"}, follow=True
        )
    else:
        deleted = admin_client.post(
            "/admin/auth/group/",
            {
                "action": "delete_selected",
                "_selected_action": [g.pk for g in groups],
                "post": "yes",
            },
            follow=True,
        )
    assert not Group.objects.filter(pk__in=[g.pk for g in groups]).exists()
    after = notes(deleted)
    assert (_said(AFTER_ROUTES, after), _said(AFTER_FORMS, after)) == (routes, forms)
    assert _unrouted(admin_client) - unrouted == int(forms or 0)
    left = sorted(set(Route.objects.asking_nobody()) - routes_before, key=lambda r: r.name)
    assert routes == ", ".join(f"{r.app} · {r.name}" for r in left)
    return routes, forms


def test_a_route_s_only_group_deleted_is_said_beforehand_as_it_then_is(
    admin_client: Client, finance: tuple[Group, User, User, list[Form]]
) -> None:
    group, *_ = finance
    said = _preview_then_delete(admin_client, [group])
    assert said == ("payroll · finance managers", "3")


def test_a_group_whose_members_are_asked_through_another_group_too(
    admin_client: Client, reach_app: DifyApp
) -> None:
    # carol is in @legal too, which the default route also asks: its forms keep her. A node
    # route asking @finance only loses everyone, though carol is in a routed group still.
    finance, legal = Group.objects.create(name="finance"), Group.objects.create(name="legal")
    carol = User.objects.create_user("carol", "carol@example.com", "pw-carol-123")
    dave = User.objects.create_user("dave", "dave@example.com", "pw-dave-123")
    finance.user_set.add(carol, dave)
    legal.user_set.add(carol)
    route(reach_app, name="finance managers", groups=[finance, legal])
    route(reach_app, node="audit_check", name="audit", groups=[finance])
    for _ in range(3):
        make_form(reach_app)
    make_form(reach_app, node_id="audit_check")
    make_form(reach_app, node_id="audit_check")
    said = _preview_then_delete(admin_client, [finance])
    assert said == ("payroll · audit", "2")


def test_a_reviewer_s_email_link_opens_the_form_only_while_they_may_see_it(
    admin_client: Client, finance: tuple[Group, User, User, list[Form]]
) -> None:
    group, carol, _dave, forms = finance
    # Every form emailed carol and dave; carol is staff, who sees every form: her link keeps
    # the forms answerable, though the route asks nobody.
    assert all(f.recipients.filter(user=carol).exists() for f in forms)
    carol.is_staff = True
    carol.save()
    said = _preview_then_delete(admin_client, [group])
    assert said == ("payroll · finance managers", "")


def test_a_reviewer_s_email_link_alone_does_not_keep_a_form(
    admin_client: Client, reach_app: DifyApp, finance: tuple[Group, User, User, list[Form]]
) -> None:
    group, carol, _dave, forms = finance
    # Their links stay, but a reviewer who no longer sees a form cannot answer it.
    assert all(f.recipients.filter(user=carol).exists() for f in forms)
    said = _preview_then_delete(admin_client, [group])
    assert said == ("payroll · finance managers", "3")
    assert all(f.recipients.filter(user=carol).exists() for f in forms)


def test_a_guest_s_link_keeps_the_forms_while_guests_may_answer(
    admin_client: Client, reach_app: DifyApp
) -> None:
    finance = Group.objects.create(name="finance")
    finance.user_set.add(User.objects.create_user("carol", "carol@example.com", "pw-carol-123"))
    route(reach_app, name="finance", groups=[finance], recipients=["guest@example.net"])
    route(
        reach_app,
        node="audit_check",
        name="audit",
        groups=[finance],
        recipients=["auditor@example.net"],
        allow_guests=True,
    )
    make_form(reach_app)
    make_form(reach_app, node_id="audit_check")
    # Both routes still email an address; the audit form's guest may answer it, the other
    # form's guest may only sign in, which they cannot.
    said = _preview_then_delete(admin_client, [finance])
    assert said == ("", "1")


def test_deleting_several_groups_says_beforehand_what_they_leave_together(
    admin_client: Client, reach_app: DifyApp, finance: tuple[Group, User, User, list[Form]]
) -> None:
    group, carol, _dave, _forms = finance
    # The audit route asks @finance and @legal (carol): neither deleted alone strands it, both
    # together leave it and its form, and the default route and its three forms.
    legal = Group.objects.create(name="legal")
    legal.user_set.add(carol)
    route(reach_app, node="audit_check", name="audit", groups=[group, legal])
    make_form(reach_app, node_id="audit_check")
    page = admin_client.post(
        "/admin/auth/group/", {"action": "delete_selected", "_selected_action": [legal.pk]}
    )
    assert not [n for n in notes(page) if "nobody" in n]
    said = _preview_then_delete(admin_client, [group, legal])
    assert said == ("payroll · audit, payroll · finance managers", "4")


def test_the_bulk_confirmation_warns_as_a_warning_in_both_languages(
    admin_client: Client, reach_app: DifyApp, finance: tuple[Group, User, User, list[Form]]
) -> None:
    group, *_ = finance
    legal = Group.objects.create(name="legal")
    selected = {"action": "delete_selected", "_selected_action": [group.pk, legal.pk]}
    page = admin_client.post("/admin/auth/group/", selected)
    body = html.unescape(page.content.decode())
    assert "Are you sure you want to delete the selected groups?" in body
    warning = body.split('<li class="warning">', 1)[1].split("</li>", 1)[0]
    assert warning.startswith(
        "Deleting them leaves the route payroll · finance managers asking nobody: its forms "
        "will wait where only administrators see them. Deleting them leaves 3 pending forms "
        "with nobody who can answer them. "
    )
    assert FORMS_LINK in warning.replace("&amp;", "&")
    admin_client.cookies["django_language"] = "zh-hans"
    with translation.override("zh-hans"):
        page = admin_client.post("/admin/auth/group/", selected)
        [warning] = [n for n in notes(page) if "href" in n]
    assert re.sub(r"<[^>]+>", "", warning) == (
        "删除这些组后\uff0c路由 payroll · finance managers 将不再指定任何人\uff1a它的表单只有"
        "管理员能看到\uff0c会一直等待。删除这些组后\uff0c3 个待处理表单将没有任何人能回答。"
        "请在表单列表中改派它们。"
    )
    # Nothing was deleted to say it.
    assert Group.objects.filter(pk__in=[group.pk, legal.pk]).count() == 2
