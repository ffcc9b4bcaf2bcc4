"""Routes decide who is asked about a form; `Form.objects.for_user` shows each reviewer only
what was routed to them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, Group, User
from django.core import mail
from django.core.exceptions import ValidationError
from django.test import Client

from inbox import notify
from inbox.models import (
    ApiToken,
    AuditEntry,
    ClaimRefused,
    DifyApp,
    Form,
    ReviewerProfile,
    Route,
    parse_offsets,
)
from tests.reach.conftest import GUEST, GUEST_ZH
from tests.reach.factories import make_form, route, user_change_data


def test_a_node_route_wins_over_the_default_and_priority_orders_node_routes(
    reach_app: DifyApp, reviewer: User, other_reviewer: User, outsider: User
) -> None:
    route(reach_app, users=[outsider])
    route(reach_app, node="Finance *", users=[other_reviewer], priority=50)
    route(reach_app, node="finance_check", users=[reviewer], priority=10)
    by_id = make_form(reach_app, node_id="finance_check", node_title="Finance sign-off")
    by_title = make_form(reach_app, node_id="n2", node_title="FINANCE review")
    fallback = make_form(reach_app, node_id="n3", node_title="Legal review")
    assert list(by_id.assigned_users.all()) == [reviewer]
    assert list(by_title.assigned_users.all()) == [other_reviewer]
    assert list(fallback.assigned_users.all()) == [outsider]
    assert by_id.route is not None and by_id.route.node == "finance_check"


def test_inactive_routes_are_skipped(reach_app: DifyApp, reviewer: User, outsider: User) -> None:
    route(reach_app, users=[outsider])
    route(reach_app, node="*", users=[reviewer], is_active=False)
    assert list(make_form(reach_app).assigned_users.all()) == [outsider]


def test_routing_stores_groups_users_and_recipients(
    reach_route: Route, routed_form: Form, reviewer: User
) -> None:
    assert list(routed_form.assigned_users.all()) == [reviewer]
    assert list(routed_form.assigned_groups.all()) == []
    recipients = {r.email: r.language for r in routed_form.recipients.all()}
    assert recipients == {GUEST: "en", GUEST_ZH: "zh-hans"}
    assert routed_form.allow_guests is True
    assert routed_form.reminder_offsets == [86400, 3600]
    entry = AuditEntry.objects.get(verb="form_routed", object_id=str(routed_form.pk))
    assert entry.details == {
        "route": reach_route.pk,
        "users": ["alice"],
        "groups": [],
        "recipients": 2,
        "public_id": str(routed_form.public_id),
        # The run's id too: an auditor finds a run's every entry with one search.
        "run": str(routed_form.run.public_id),
    }


def test_a_recipient_address_with_an_account_is_that_reviewer(
    reach_app: DifyApp, other_reviewer: User
) -> None:
    route(reach_app, recipients=["BOB@example.com"])
    form = make_form(reach_app)
    recipient = form.recipients.get()
    assert recipient.user == other_reviewer and not recipient.is_guest
    assert list(form.assigned_users.all()) == [other_reviewer]
    assert Form.objects.for_user(other_reviewer).filter(pk=form.pk).exists()


def test_email_reviewers_adds_group_members_in_the_routes_language(
    reach_app: DifyApp, reviewers_group: Group, reviewer: User, other_reviewer: User
) -> None:
    route(reach_app, groups=[reviewers_group], email_reviewers=True, language="zh-hans")
    form = make_form(reach_app)
    assert {(r.email, r.language, r.user_id) for r in form.recipients.all()} == {
        ("alice@example.com", "zh-hans", reviewer.pk),
        ("bob@example.com", "zh-hans", other_reviewer.pk),
    }


def test_routing_happens_once(routed_form: Form, other_reviewer: User) -> None:
    Route.objects.filter(pk=routed_form.route_id).update(allow_guests=False)
    routed_form.route.users.add(other_reviewer)  # type: ignore[union-attr]
    routed_form.on_captured()
    assert list(routed_form.assigned_users.values_list("username", flat=True)) == ["alice"]
    routed_form.refresh_from_db()
    assert routed_form.allow_guests is True
    assert AuditEntry.objects.filter(verb="form_routed").count() == 1


def test_a_form_of_an_app_without_routes_is_seen_by_staff_only(
    reach_app: DifyApp, reviewer: User, admin_user: User
) -> None:
    form = make_form(reach_app)
    assert form.route is None and form.routed_at is not None
    assert not Form.objects.for_user(reviewer).exists()
    assert list(Form.objects.for_user(admin_user)) == [form]
    assert AuditEntry.objects.filter(verb="form_unrouted", object_id=str(form.pk)).exists()


@pytest.mark.parametrize(
    ("persona", "sees"),
    [
        ("reviewer", True),  # routed by name
        ("other_reviewer", True),  # routed through the group
        ("outsider", False),
        ("admin_user", True),  # staff see every form
        ("anonymous", False),
    ],
)
def test_for_user_shows_routed_forms_only(
    request: pytest.FixtureRequest,
    reach_app: DifyApp,
    reviewer: User,
    reviewers_group: Group,
    persona: str,
    sees: bool,
) -> None:
    helpers = Group.objects.create(name="helpers")
    user = AnonymousUser() if persona == "anonymous" else request.getfixturevalue(persona)
    if persona == "other_reviewer":
        user.groups.set([helpers])
    route(reach_app, users=[reviewer], groups=[helpers])
    form = make_form(reach_app)
    make_form(reach_app, status=Form.Status.SUBMITTED)
    visible = Form.objects.for_user(user)
    assert visible.filter(pk=form.pk).exists() is sees
    # One row per form even when routed twice (by name and by group).
    assert visible.count() == (2 if sees else 0)


def test_an_inactive_user_sees_nothing(routed_form: Form, reviewer: User) -> None:
    reviewer.is_active = False
    reviewer.save()
    assert not Form.objects.for_user(reviewer).exists()


def test_assigned_to_is_the_named_or_the_holder(
    reach_app: DifyApp, reviewers_group: Group, reviewer: User, other_reviewer: User
) -> None:
    route(reach_app, groups=[reviewers_group], users=[reviewer])
    named = make_form(reach_app)
    route(reach_app, groups=[reviewers_group])
    by_group = make_form(reach_app)
    assert list(Form.objects.assigned_to(reviewer)) == [named]
    assert not Form.objects.assigned_to(other_reviewer).exists()
    by_group.claim(other_reviewer)
    assert list(Form.objects.assigned_to(other_reviewer)) == [by_group]


def test_claim_release_and_the_refusals(
    routed_form: Form, reviewer: User, other_reviewer: User, admin_user: User
) -> None:
    routed_form.claim(reviewer)
    routed_form.claim(reviewer)  # taking it again is harmless
    with pytest.raises(ClaimRefused, match="Alice has already taken this form."):
        routed_form.claim(other_reviewer)
    with pytest.raises(ClaimRefused, match="Only the reviewer who took this form can release"):
        routed_form.release(other_reviewer)
    routed_form.release(admin_user)  # staff may
    routed_form.refresh_from_db()
    assert routed_form.claimed_by is None
    verbs = list(
        AuditEntry.objects.filter(object_type="form", verb__startswith="form_")
        .order_by("id")
        .values_list("verb", "actor_label")
    )
    assert verbs[-2:] == [("form_claimed", "alice"), ("form_released", "admin")]


def test_taking_a_form_redraws_only_its_claim_and_other_pages_hear_of_it(
    routed_form: Form, reviewer: User, admin_user: User
) -> None:
    alice, bob = Client(), Client()
    alice.force_login(reviewer)
    bob.force_login(admin_user)  # staff: sees every form
    base = f"/forms/{routed_form.public_id}/"
    # htmx: the claim panel comes back alone (the form below, with what was typed, stays).
    response = alice.post(base + "claim", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    panel = response.content.decode()
    assert panel.lstrip().startswith('<div class="claim" id="claim">')
    assert "You are handling this" in panel and "You took this form." in panel
    assert "decision-form" not in panel
    # The admin's page was drawn before: its next poll brings the claim, and only the claim.
    live = bob.get(
        base + "live", {"state": "open", "run": "x", "claim": ""}, HTTP_HX_REQUEST="true"
    ).content.decode()
    assert '<div class="claim" id="claim" hx-swap-oob="true">' in live
    assert "Taken by Alice" in live and "Take this form" not in live
    assert 'id="form-body"' not in live
    # Once that page knows, the poll says nothing more about it.
    live = bob.get(
        base + "live",
        {"state": "open", "run": "x", "claim": str(reviewer.pk)},
        HTTP_HX_REQUEST="true",
    ).content.decode()
    assert 'id="claim"' not in live
    # Taking it anyway (a page that had not heard yet): told so, in place.
    refused = bob.post(base + "claim", HTTP_HX_REQUEST="true").content.decode()
    assert "Alice has already taken this form." in refused and "Taken by Alice" in refused


@pytest.mark.parametrize(
    "loss",
    ["removed from group", "group cleared", "groups cleared", "group deleted", "deactivated"],
)
def test_a_holder_who_loses_the_form_is_released_from_it(
    client: Client,
    reach_app: DifyApp,
    reviewers_group: Group,
    other_reviewer: User,
    reviewer: User,
    django_capture_on_commit_callbacks: Any,
    loss: str,
) -> None:
    route(reach_app, groups=[reviewers_group])
    form, kept = make_form(reach_app), make_form(reach_app)
    form.claim(other_reviewer)
    # Held by name too (a reassignment routes it to them): kept, whatever their groups.
    kept.reassign(to_user=other_reviewer)
    with django_capture_on_commit_callbacks(execute=True):
        if loss == "removed from group":
            other_reviewer.groups.remove(reviewers_group)
        elif loss == "group cleared":
            reviewers_group.user_set.clear()
        elif loss == "groups cleared":
            other_reviewer.groups.clear()
        elif loss == "group deleted":
            reviewers_group.delete()
        else:
            other_reviewer.is_active = False
            other_reviewer.save()
    form.refresh_from_db()
    kept.refresh_from_db()
    assert form.claimed_by is None
    assert (kept.claimed_by == other_reviewer) is (loss != "deactivated")
    entry = AuditEntry.objects.filter(verb="form_released", object_id=str(form.pk)).get()
    assert entry.details["reason"] == "lost_access"
    # They no longer open it; the others asked see it free to take.
    client.force_login(other_reviewer)
    assert client.get(f"/forms/{form.public_id}/").status_code in (302, 404)
    if loss in ("removed from group", "groups cleared", "deactivated"):
        client.force_login(reviewer)
        page = client.get(f"/forms/{form.public_id}/").content.decode()
        assert "Taken by" not in page


def test_moving_a_holder_between_groups_in_one_save_keeps_a_form_still_theirs(
    reach_app: DifyApp,
    reviewers_group: Group,
    other_reviewer: User,
    django_capture_on_commit_callbacks: Any,
) -> None:
    second = Group.objects.create(name="second")
    route(reach_app, groups=[reviewers_group, second])
    form = make_form(reach_app)
    form.claim(other_reviewer)
    # As the admin's user page saves groups: the old removed first, then the new added.
    with django_capture_on_commit_callbacks(execute=True):
        other_reviewer.groups.set([second])
    form.refresh_from_db()
    assert form.claimed_by == other_reviewer


def test_a_closed_form_cannot_be_claimed(routed_form: Form, reviewer: User) -> None:
    Form.objects.filter(pk=routed_form.pk).update(status=Form.Status.SUBMITTED, form_token="")
    with pytest.raises(ClaimRefused, match="This form is no longer open."):
        routed_form.claim(reviewer)


def test_reassign_moves_the_form_and_emails_the_new_reviewer(
    routed_form: Form,
    reviewer: User,
    other_reviewer: User,
    admin_user: User,
    django_capture_on_commit_callbacks: object,
) -> None:
    routed_form.reassign(to_user=other_reviewer, actor=admin_user)
    assert list(routed_form.assigned_users.all()) == [other_reviewer]
    assert routed_form.claimed_by == other_reviewer
    assert not Form.objects.for_user(reviewer).filter(pk=routed_form.pk).exists()
    assert Form.objects.for_user(other_reviewer).filter(pk=routed_form.pk).exists()
    assert routed_form.recipients.filter(email="bob@example.com", user=other_reviewer).exists()
    entry = AuditEntry.objects.get(verb="form_reassigned")
    assert entry.actor == admin_user and entry.details["previous"]["users"] == ["alice"]


def _emailed_group_form(app: DifyApp, group: Group, **fields: Any) -> Form:
    """A form of `app`'s default route to `group`, which emails its members, first emails sent."""
    route(app, groups=[group], email_reviewers=True, reminders="24h,1h", **fields)
    form = make_form(app, expires_in=dt.timedelta(hours=30))
    notify.send_form_emails(form.pk)
    mail.outbox.clear()
    return form


def test_reassigning_a_form_to_its_own_group_keeps_the_members_links_and_reminders(
    reach_app: DifyApp,
    reviewers_group: Group,
    reviewer: User,
    other_reviewer: User,
    admin_user: User,
    django_capture_on_commit_callbacks: Any,
) -> None:
    form = _emailed_group_form(reach_app, reviewers_group)
    form.claim(reviewer)
    before = dict(form.recipients.values_list("email", "next_reminder_at"))
    assert set(before) == {"alice@example.com", "bob@example.com"} and all(before.values())
    # Alice goes on leave: the lead gives the form back to the whole group.
    with django_capture_on_commit_callbacks(execute=True):
        assert form.reassign(groups=[reviewers_group], actor=admin_user)
    notify.send_form_emails(form.pk)
    # Both are still asked through the group: their links stay open, their reminders due.
    after = dict(
        form.recipients.filter(withdrawn_at__isnull=True).values_list("email", "next_reminder_at")
    )
    assert after == before
    assert not mail.outbox  # nobody new to email
    entry = AuditEntry.objects.get(verb="form_reassigned")
    assert entry.details["groups"] == ["reviewers"] and "withdrawn" not in entry.details
    # The reminder goes to both, and the lead can still email them again.
    notify.send_due_emails(form.expiration_time - dt.timedelta(minutes=59))
    assert sorted(m.to[0] for m in mail.outbox) == ["alice@example.com", "bob@example.com"]
    mail.outbox.clear()
    assert notify.resend_form_emails(form) == 2


def test_reassigning_to_a_group_emails_its_members_and_withdraws_only_those_no_longer_asked(
    reach_app: DifyApp,
    reviewers_group: Group,
    reviewer: User,
    other_reviewer: User,
    outsider: User,
    admin_user: User,
    django_capture_on_commit_callbacks: Any,
) -> None:
    # Routed to mallory and a guest; the route emails its reviewers.
    route(
        reach_app,
        users=[outsider],
        recipients=[GUEST],
        email_reviewers=True,
        allow_guests=True,
        reminders="24h,1h",
    )
    form = make_form(reach_app, expires_in=dt.timedelta(hours=30))
    notify.send_form_emails(form.pk)
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert form.reassign(groups=[reviewers_group], actor=admin_user)
    notify.send_form_emails(form.pk)  # the task queued
    # The group's members, never emailed, are now; mallory and the guest are asked no more.
    assert sorted(m.to[0] for m in mail.outbox) == ["alice@example.com", "bob@example.com"]
    open_links = form.recipients.filter(withdrawn_at__isnull=True)
    assert sorted(open_links.values_list("email", flat=True)) == [
        "alice@example.com",
        "bob@example.com",
    ]
    assert all(open_links.values_list("next_reminder_at", flat=True))
    closed = form.recipients.filter(withdrawn_at__isnull=False, next_reminder_at__isnull=True)
    assert sorted(closed.values_list("email", flat=True)) == [GUEST, "mallory@example.com"]
    entry = AuditEntry.objects.get(verb="form_reassigned")
    assert entry.details["withdrawn"] == [GUEST, "mallory@example.com"]
    assert entry.details["emailed"] == ["alice@example.com", "bob@example.com"]


def test_a_group_s_members_are_not_emailed_when_the_form_s_route_does_not_email_reviewers(
    reach_app: DifyApp,
    reviewers_group: Group,
    reviewer: User,
    outsider: User,
    admin_user: User,
    django_capture_on_commit_callbacks: Any,
) -> None:
    route(reach_app, users=[outsider])
    form = make_form(reach_app)
    with django_capture_on_commit_callbacks(execute=True):
        assert form.reassign(groups=[reviewers_group], actor=admin_user)
    notify.send_form_emails(form.pk)
    assert not form.recipients.exists() and not mail.outbox
    assert Form.objects.for_user(reviewer).filter(pk=form.pk).exists()


def test_reassigning_to_someone_withdrawn_earlier_emails_them_again(
    reach_app: DifyApp,
    reviewers_group: Group,
    reviewer: User,
    other_reviewer: User,
    outsider: User,
    admin_user: User,
    django_capture_on_commit_callbacks: Any,
) -> None:
    form = _emailed_group_form(reach_app, reviewers_group)
    # Given to mallory alone: alice and bob are withdrawn.
    with django_capture_on_commit_callbacks(execute=True):
        form.reassign(to_user=outsider, actor=admin_user)
    notify.send_form_emails(form.pk)
    bobs = form.recipients.get(email="bob@example.com")
    assert bobs.withdrawn_at is not None
    mail.outbox.clear()
    # Then to bob: his link opens again and he gets a new first email, his reminders with it.
    with django_capture_on_commit_callbacks(execute=True):
        form.reassign(to_user=other_reviewer, actor=admin_user)
    notify.send_form_emails(form.pk)  # the task queued
    assert [m.to[0] for m in mail.outbox] == ["bob@example.com"]
    bobs.refresh_from_db()
    assert bobs.withdrawn_at is None and bobs.sent_at is not None and bobs.next_reminder_at
    assert bobs.still_asked()
    assert sorted(
        form.recipients.filter(withdrawn_at__isnull=True).values_list("email", flat=True)
    ) == ["bob@example.com"]
    entry = AuditEntry.objects.filter(verb="form_reassigned").latest("pk")
    assert entry.details["emailed"] == ["bob@example.com"]
    assert entry.details["withdrawn"] == ["mallory@example.com"]


def test_reminder_offsets_parse_and_validate(reach_app: DifyApp) -> None:
    assert parse_offsets("24h, 1h,30m,2d,1h") == [172800, 86400, 3600, 1800]
    assert parse_offsets("") == []
    bad = Route(app=reach_app, name="x", reminders="24h,soon")
    with pytest.raises(ValidationError) as info:
        bad.full_clean()
    assert info.value.message_dict["reminders"] == [
        "“soon” is not a time before expiry; write e.g. 2d, 24h or 30m, comma-separated."
    ]


def test_reminder_offsets_typed_with_a_chinese_input_method_are_read(reach_app: DifyApp) -> None:
    # The full-width comma and the enumeration comma separate; full-width digits and letters,
    # and the ideographic space, read as their ASCII forms.
    assert parse_offsets("24h\uff0c55m") == [86400, 3300]
    assert parse_offsets("\uff12\uff44\u3001\uff13\uff10\uff2d\u3000") == [172800, 1800]
    Route(app=reach_app, name="x", node="n", reminders="24h\uff0c55m").full_clean()
    route = Route(app=reach_app, name="y", node="m", reminders="24h\uff0c1h")
    assert route.reminder_offsets == [86400, 3600]


def test_a_second_active_route_for_the_same_node_is_refused_as_never_used(
    reach_app: DifyApp, dify_app: DifyApp
) -> None:
    Route.objects.create(app=reach_app, name="Managers", node="manager*", priority=10)
    for node, priority in (("manager*", 10), ("Manager*", 5)):
        twin = Route(app=reach_app, name="Managers again", node=node, priority=priority)
        with pytest.raises(ValidationError) as info:
            twin.full_clean()
        assert info.value.message_dict["node"] == [
            "The route “Managers” of this app already routes this node: only one of the two "
            "would ever be used. Change that route's reviewers, or give this one another node."
        ]
    # Inactive, or another app's, or another node: each may be.
    Route(app=reach_app, name="Spare", node="manager*", is_active=False).full_clean()
    Route(app=dify_app, name="Managers", node="manager*").full_clean()
    Route(app=reach_app, name="Directors", node="director*").full_clean()


def test_an_app_has_one_default_route(reach_app: DifyApp) -> None:
    from django.db import IntegrityError, transaction

    Route.objects.create(app=reach_app, name="one")
    with pytest.raises(IntegrityError), transaction.atomic():
        Route.objects.create(app=reach_app, name="two")
    Route.objects.create(app=reach_app, name="node", node="approve_*")


def test_the_demo_routes_each_app_to_the_reviewers_and_two_guests(
    reach_app: DifyApp, reviewers_group: Group, reviewer: User
) -> None:
    from inbox.management.commands.seed_demo import Command

    Command().route_demo_app(reach_app)
    Command().route_demo_app(reach_app)  # seeding twice changes nothing
    form = make_form(reach_app)
    assert Form.objects.for_user(reviewer).filter(pk=form.pk).exists()
    assert form.allow_guests is True
    assert {(r.email, r.language, r.user_id) for r in form.recipients.all()} == {
        ("guest@example.com", "en", None),
        ("zhang.wei@example.com", "zh-hans", None),
    }


def test_reviewers_get_emails_in_the_language_they_use_the_inbox_in(
    reach_app: DifyApp,
    reviewers_group: Group,
    reviewer: User,
    other_reviewer: User,
    client: Client,
) -> None:
    # Alice switches the inbox to Chinese; Bob never signed in, so the route's language is his.
    client.force_login(reviewer)
    response = client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    assert response.status_code == 302
    client.get("/")
    assert ReviewerProfile.objects.get(user=reviewer).language == "zh-hans"
    route(reach_app, groups=[reviewers_group], email_reviewers=True, language="en")
    form = make_form(reach_app)
    assert {(r.email, r.language) for r in form.recipients.all()} == {
        ("alice@example.com", "zh-hans"),
        ("bob@example.com", "en"),
    }
    # A reassignment emails the new holder in their language too.
    other = make_form(reach_app, node_id="n9")
    other.recipients.all().delete()
    other.reassign(to_user=reviewer)
    assert other.recipients.get(user=reviewer).language == "zh-hans"


def test_the_language_is_remembered_once_per_session_and_not_for_api_tokens(
    reviewer: User, client: Client
) -> None:
    client.force_login(reviewer)
    client.get("/", HTTP_ACCEPT_LANGUAGE="zh-Hans,zh;q=0.9")
    assert ReviewerProfile.objects.get(user=reviewer).language == "zh-hans"
    ReviewerProfile.objects.all().delete()
    client.get("/runs/", HTTP_ACCEPT_LANGUAGE="zh-Hans,zh;q=0.9")
    assert not ReviewerProfile.objects.exists()  # already saved in this session
    # The inbox's list keeps when they last looked at it on the profile: one made there is in
    # the page's language, not the default (their emails' language).
    client.get("/", HTTP_ACCEPT_LANGUAGE="zh-Hans,zh;q=0.9")
    assert ReviewerProfile.objects.get(user=reviewer).language == "zh-hans"
    _token, raw = ApiToken.issue(other_reviewer_for_api := User.objects.create_user("carol"))
    api = Client()
    response = api.get("/api/v1/forms", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 200
    assert "sessionid" not in response.cookies
    assert not ReviewerProfile.objects.filter(user=other_reviewer_for_api).exists()


def test_a_group_member_emailed_by_the_route_loses_the_form_with_the_group(
    reach_app: DifyApp, reviewers_group: Group, other_reviewer: User
) -> None:
    route(reach_app, groups=[reviewers_group], email_reviewers=True)
    form = make_form(reach_app)
    assert list(form.assigned_users.all()) == []  # asked through the group, not by name
    other_reviewer.groups.remove(reviewers_group)
    assert not Form.objects.for_user(other_reviewer).filter(pk=form.pk).exists()


def test_a_listed_address_of_a_reviewer_is_emailed_in_their_language(
    reach_app: DifyApp, other_reviewer: User
) -> None:
    from inbox.models import ReviewerProfile

    ReviewerProfile.remember(other_reviewer, "zh-hans")
    route(reach_app, recipients=[("bob@example.com", "en")])
    form = make_form(reach_app)
    assert form.recipients.get().language == "zh-hans"


@pytest.mark.parametrize(
    ("pattern", "title", "matches"),
    [
        ("Approve [EU] refund", "Approve [EU] refund", True),
        ("Approve [EU] refund", "Approve E refund", False),
        ("approve * refund", "Approve [EU] refund", True),
        ("Refund ?", "refund 7", True),
        ("Refund ?", "refund 70", False),
        ("a.b", "axb", False),
    ],
)
def test_a_title_pattern_has_two_wildcards_and_nothing_else(
    reach_app: DifyApp, pattern: str, title: str, matches: bool
) -> None:
    made = Route(app=reach_app, name="x", node=pattern)
    assert made.matches("some_node", title) is matches


def test_a_change_of_a_reviewer_s_groups_is_in_the_trail_with_who_made_it(
    admin_client: Client, admin_user: User, reviewers_group: Group, other_reviewer: User
) -> None:
    second = Group.objects.create(name="second")
    data = user_change_data(admin_client, other_reviewer, groups=[second.pk])
    saved = admin_client.post(f"/admin/auth/user/{other_reviewer.pk}/change/", data)
    assert saved.status_code == 302, saved.content.decode()[:3000]
    entries = AuditEntry.objects.filter(
        verb="user_groups_changed", object_id=str(other_reviewer.pk), actor=admin_user
    )
    assert sorted(tuple(sorted(e.details.items())) for e in entries) == [
        (("added", ["second"]),),
        (("removed", ["reviewers"]),),
    ]
    # Deleting a group says so for each of its members.
    second.delete()
    gone = AuditEntry.objects.filter(verb="user_groups_changed", details__reason="group deleted")
    assert [e.object_id for e in gone] == [str(other_reviewer.pk)]


def test_deactivating_and_deleting_a_reviewer_are_in_the_trail_with_who_did_it(
    admin_client: Client,
    admin_user: User,
    reviewer: User,
    routed_form: Form,
    django_capture_on_commit_callbacks: Any,
) -> None:
    routed_form.claim(reviewer)
    with django_capture_on_commit_callbacks(execute=True):
        saved = admin_client.post(
            f"/admin/auth/user/{reviewer.pk}/change/",
            user_change_data(admin_client, reviewer, is_active=False),
        )
    assert saved.status_code == 302, saved.content.decode()[:3000]
    changed = AuditEntry.objects.get(verb="user_access_changed", object_id=str(reviewer.pk))
    assert (changed.actor, changed.details) == (admin_user, {"is_active": [True, False]})
    # The form they held goes back to the others, and the trail says whose change it was.
    released = AuditEntry.objects.get(verb="form_released", object_id=str(routed_form.pk))
    assert released.actor == admin_user and released.details["reason"] == "lost_access"
    # A save that changes no access writes nothing more.
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            f"/admin/auth/user/{reviewer.pk}/change/",
            user_change_data(admin_client, reviewer, first_name="Alicia"),
        )
    assert AuditEntry.objects.filter(verb="user_access_changed").count() == 1
    deleted = admin_client.post(f"/admin/auth/user/{reviewer.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 302
    gone = AuditEntry.objects.get(verb="user_deleted", object_id=str(reviewer.pk))
    assert gone.actor == admin_user and gone.object_repr == "alice"
