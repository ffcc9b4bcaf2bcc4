"""A reviewer working through a long inbox keeps their place: back from a form, the list comes
back at that form's place (the row after it once decided), and the pending forms that arrived
since their last visit are marked new."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from inbox.models import DifyApp, Form, ReviewerProfile
from tests.review.conftest import make_form, make_run

pytestmark = pytest.mark.smoke


def _pending(app: DifyApp, count: int) -> list[Form]:
    """`count` pending forms, listed in this order (soonest to expire first)."""
    return [
        make_form(app, node_title=f"Form {n:02}", expires_in=dt.timedelta(hours=1 + n))
        for n in range(count)
    ]


def _decide(form: Form, reviewer: User) -> None:
    form.decide(action_id="approve", inputs={"note": "ok", "decision": "refund"}, reviewer=reviewer)


def _place(page: str) -> str | None:
    """The public id of the row at the reviewer's place, checking it is the only one."""
    found = re.findall(r'<li class="row [^"]*\bselected\b[^"]*" id="place" data-id="([^"]+)"', page)
    assert len(found) <= 1 and page.count('" id="place"') <= 1
    if found:
        assert page.count('aria-current="true"') == 1
        assert f'href="/forms/{found[0]}/" aria-current="true"' in page
    return found[0] if found else None


def test_back_from_a_decided_form_the_list_selects_the_row_after_it(
    alice: Client, dify_app: DifyApp, reviewer: User
) -> None:
    a, b, c, d = _pending(dify_app, 4)
    # The form page's way back carries its own id (never its token), to its place.
    form_page = alice.get(f"/forms/{b.public_id}/").content.decode()
    assert f'href="/?after={b.public_id}#place" data-inbox-back' in form_page
    assert b.form_token not in form_page
    # Opened and left undecided: the list comes back on that very row.
    assert _place(alice.get("/", {"after": str(b.public_id)}).content.decode()) == str(b.public_id)
    # Decided: its row has left the Pending tab, and the row after it is the place.
    _decide(b, reviewer)
    page = alice.get("/", {"after": str(b.public_id)}).content.decode()
    assert _place(page) == str(c.public_id)
    # The list's own links start from its top again: the place is not carried on.
    assert re.search(r'(href|hx-get)="[^"]*after=', page) is None
    # The last form decided: the row before it.
    _decide(d, reviewer)
    assert _place(alice.get("/", {"after": str(d.public_id)}).content.decode()) == str(c.public_id)
    # In the list's own order (newest first, the row after the decided one is an older one).
    page = alice.get("/", {"after": str(b.public_id), "sort": "newest"}).content.decode()
    assert _place(page) == str(a.public_id)
    # Nothing left: the empty state says so, and is the place.
    _decide(a, reviewer)
    _decide(c, reviewer)
    page = alice.get("/", {"after": str(c.public_id)}).content.decode()
    assert _place(page) is None
    assert '<p class="empty-title" id="place">Nothing is waiting for you.</p>' in page
    # Without `after`, no place.
    assert 'id="place"' not in alice.get("/").content.decode()


def test_the_place_follows_the_list_s_filters_and_pages(
    alice: Client, dify_app: DifyApp, reviewer: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("inbox.views.PAGE_SIZE", 2)
    forms = _pending(dify_app, 5)  # pages: 00 01 | 02 03 | 04
    # The last of page 2 decided: the form that was first on page 3 now ends page 2.
    _decide(forms[3], reviewer)
    page = alice.get("/", {"page": "2", "after": str(forms[3].public_id)}).content.decode()
    assert _place(page) == str(forms[4].public_id)
    # The last of the list decided from its own page, which is gone: the list's last page,
    # at its own address, the place kept, on the row before it.
    _decide(forms[4], reviewer)
    moved = alice.get("/", {"page": "3", "after": str(forms[4].public_id)})
    assert moved.status_code == 302
    assert moved["Location"] == f"/?after={forms[4].public_id}&page=2"
    assert _place(alice.get(moved["Location"]).content.decode()) == str(forms[2].public_id)
    # A page the form is not on (an old address): the place's own page.
    page = alice.get("/", {"page": "2", "after": str(forms[1].public_id)})
    assert page.status_code == 302 and page["Location"] == f"/?after={forms[1].public_id}"
    # htmx is answered with the place's page at once, the address kept without `after`.
    part = alice.get("/", {"page": "2", "after": str(forms[1].public_id)}, HTTP_HX_REQUEST="true")
    assert part.status_code == 200 and part["HX-Replace-Url"] == "/"
    assert _place(part.content.decode()) == str(forms[1].public_id)
    # A search: the place in the list searched.
    legal = make_form(dify_app, node_title="Legal review", expires_in=dt.timedelta(hours=9))
    other = make_form(dify_app, node_title="Legal check", expires_in=dt.timedelta(hours=10))
    _decide(legal, reviewer)
    page = alice.get("/", {"q": "Legal", "after": str(legal.public_id)}).content.decode()
    assert _place(page) == str(other.public_id)


def test_the_forms_before_a_place_are_counted_up_to_a_cap(
    alice: Client, dify_app: DifyApp, reviewer: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("inbox.views.PAGE_SIZE", 2)
    monkeypatch.setattr("inbox.views.PLACE_CAP", 3)
    forms = _pending(dify_app, 6)  # pages: 00 01 | 02 03 | 04 05
    # Three forms before it, as many as the cap: the place is found, on its own page.
    moved = alice.get("/", {"after": str(forms[3].public_id)})
    assert moved.status_code == 302 and moved["Location"] == f"/?after={forms[3].public_id}&page=2"
    with CaptureQueriesContext(connection) as queries:
        page = alice.get(moved["Location"]).content.decode()
    assert _place(page) == str(forms[3].public_id)
    # The count reads no further than the cap (and the form itself, and one more).
    [counting] = [q["sql"] for q in queries.captured_queries if '"before"' in q["sql"]]
    assert re.search(r"\bLIMIT 5\)$", counting), counting
    # Deeper than the cap: not looked for. The list opens at the page its address names (the
    # one the reviewer left), or its first, with no row selected.
    page = alice.get("/", {"page": "3", "after": str(forms[4].public_id)})
    assert page.status_code == 200 and _place(page.content.decode()) is None
    assert f"/forms/{forms[4].public_id}/" in page.content.decode()
    page = alice.get("/", {"after": str(forms[5].public_id)})
    assert page.status_code == 200 and _place(page.content.decode()) is None
    assert f"/forms/{forms[0].public_id}/" in page.content.decode()
    # Decided, the form past the cap still counts as far as the cap only.
    _decide(forms[4], reviewer)
    assert _place(alice.get("/", {"after": str(forms[4].public_id)}).content.decode()) is None


def test_no_place_at_a_form_the_reviewer_may_not_see(
    alice: Client, dify_app: DifyApp, reviewer: User
) -> None:
    hidden_app = DifyApp.objects.create(name="payroll", base_url="http://x/v1", api_key="k")
    hidden = make_form(hidden_app, run=make_run(hidden_app))
    _pending(dify_app, 2)
    assert _place(alice.get("/", {"after": str(hidden.public_id)}).content.decode()) is None
    assert alice.get("/", {"after": "not-an-id"}).status_code == 200
    # Nor does "Next form" tell her form from no form at all.
    nowhere = "00000000-0000-4000-8000-000000000000"
    answers = [
        alice.get("/forms/next/", {"after": after, "list": "?q=zzzz"})["Location"]
        for after in (str(hidden.public_id), nowhere)
    ]
    assert answers == ["/?q=zzzz", "/?q=zzzz"]


def test_nothing_left_after_next_form_goes_back_to_the_decided_form_s_place(
    alice: Client, dify_app: DifyApp, reviewer: User
) -> None:
    (only,) = _pending(dify_app, 1)
    _decide(only, reviewer)
    response = alice.get("/forms/next/", {"after": str(only.public_id)})
    assert response["Location"] == f"/?after={only.public_id}#place"


def _profile(user: User) -> ReviewerProfile:
    return ReviewerProfile.objects.get(user=user)


def _row_is_new(page: str, form: Form) -> bool:
    return f'id="row-{form.public_id}-new"' in page


def test_forms_arrived_since_the_last_visit_are_marked_new(
    alice: Client, dify_app: DifyApp, reviewer: User
) -> None:
    old = make_form(dify_app, node_title="Old")
    # The first visit: nothing is new yet; the visit is remembered.
    page = alice.get("/").content.decode()
    assert not _row_is_new(page, old) and "new-count" not in page
    assert _profile(reviewer).list_seen_at is not None
    # What arrives while the first visit lasts is new, as in any visit.
    during = make_form(dify_app, node_title="During")
    page = alice.get("/").content.decode()
    assert _row_is_new(page, during) and not _row_is_new(page, old)
    during.delete()
    # The reviewer last looked an hour ago; a form arrived since, another before.
    now = timezone.now()
    Form.objects.filter(pk=old.pk).update(created_at=now - dt.timedelta(hours=2))
    ReviewerProfile.objects.filter(user=reviewer).update(list_seen_at=now - dt.timedelta(hours=1))
    arrived = make_form(dify_app, node_title="Arrived")
    page = alice.get("/").content.decode()
    assert _row_is_new(page, arrived) and not _row_is_new(page, old)
    row = f"row-{arrived.public_id}"
    assert (
        f'<span class="chip new" id="{row}-new" title="Arrived since your last visit">'
        '<span aria-hidden="true">New</span>'
        '<span class="visually-hidden">Arrived since your last visit</span></span>'
    ) in page
    # Read with the row's link.
    assert f'aria-describedby="{row}-app {row}-left {row}-status {row}-new"' in page
    assert '<span class="new-count" aria-hidden="true">1 new</span>' in page
    assert '<span class="visually-hidden">1 form arrived since your last visit.</span>' in page
    profile = _profile(reviewer)
    assert profile.new_since is not None and profile.new_since < arrived.created_at
    seen = profile.list_seen_at
    # The poll, another form arriving: both are new, and the visit is not moved on by it.
    token = re.search(r'hx-get="\?since=([^"]+)"', page)
    assert token is not None
    since = token.group(1).replace("%3A", ":").replace("%2B", "+")
    later = make_form(dify_app, node_title="Later")
    polled = alice.get("/", {"since": since}, HTTP_HX_REQUEST="true").content.decode()
    assert _row_is_new(polled, arrived) and _row_is_new(polled, later)
    # The counts it asks for then (its own come from before the form arrived) say so.
    tabs = alice.get(reverse("inbox:tabs"), HTTP_HX_REQUEST="true").content.decode()
    assert '<span class="new-count" aria-hidden="true">2 new</span>' in tabs
    # Nor by another tab, a search or a later page.
    for query in ({"status": "all"}, {"q": "Arrived"}, {"page": "2"}):
        alice.get("/", query)
    assert _profile(reviewer).list_seen_at == seen
    # Back in the list within the visit (from a form, a reload): still new, in Chinese too.
    page = alice.get("/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert _row_is_new(page, arrived)
    assert "Arrived since your last visit" not in page and "1 new" not in page
    assert (
        "\u81ea\u60a8\u4e0a\u6b21\u67e5\u770b\u4ee5\u6765\u65b0\u5230" in page
    )  # since last visit
    assert "2 \u4e2a\u65b0\u7684" in page  # 2 new (and the one polled in)
    assert _profile(reviewer).list_seen_at > seen
    # The next visit, over half an hour later: what was there is no longer new.
    ReviewerProfile.objects.filter(user=reviewer).update(
        list_seen_at=timezone.now() - dt.timedelta(minutes=31)
    )
    Form.objects.filter(pk__in=[arrived.pk, later.pk]).update(
        created_at=timezone.now() - dt.timedelta(minutes=40)
    )
    page = alice.get("/").content.decode()
    assert not _row_is_new(page, arrived) and "new-count" not in page


def test_a_decided_form_is_not_marked_new(alice: Client, dify_app: DifyApp, reviewer: User) -> None:
    alice.get("/")
    ReviewerProfile.objects.filter(user=reviewer).update(
        list_seen_at=timezone.now() - dt.timedelta(hours=1)
    )
    decided = make_form(dify_app, status=Form.Status.SUBMITTED)
    page = alice.get("/", {"status": "all"}).content.decode()
    assert f"row-{decided.public_id}" in page and not _row_is_new(page, decided)


def test_new_since_the_last_visit_costs_the_list_one_query(
    alice: Client, dify_app: DifyApp, reviewer: User
) -> None:
    alice.get("/")  # the first visit, and the session's first request
    make_form(dify_app)
    alice.get("/")  # counted
    with CaptureQueriesContext(connection) as look:
        alice.get("/")
    with CaptureQueriesContext(connection) as other:
        alice.get("/", {"status": "expired"})
    # A look moves the visit on as it reads it; another view only reads it. One statement each.
    assert len(look) == len(other) <= 10
    assert sum("reviewerprofile" in q["sql"] for q in look.captured_queries) == 1
    assert sum("reviewerprofile" in q["sql"] for q in other.captured_queries) == 1
