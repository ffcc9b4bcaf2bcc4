"""The staff dashboard: pending per app and node, time to decision, expiries and failures,
drawn as inline SVG on the server."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone

from inbox.models import Decision, DifyApp, Form, Route, RouteRecipient
from inbox.views_reach import _duration, bar_rows, percentile
from tests.reach.factories import make_form, route


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert percentile(values, 0.5) == 10.0
    assert percentile(values, 0.95) == 19.0
    assert percentile([5.0], 0.95) == 5.0
    assert percentile([], 0.5) is None


def test_bars_scale_to_the_largest_value() -> None:
    chart = bar_rows([("a", 10, "10"), ("b", 5, "5"), ("c", 0, "0")])
    widths = [bar["width"] for bar in chart["bars"]]
    assert widths[0] == 2 * widths[1] and widths[2] == 0
    assert chart["height"] == 3 * 26


def decided(app: DifyApp, minutes: float, days_ago: float = 1, **kwargs: object) -> Form:
    form = make_form(app, status=Form.Status.SUBMITTED, **kwargs)
    decided_at = timezone.now() - dt.timedelta(days=days_ago)
    Form.objects.filter(pk=form.pk).update(
        created_at=decided_at - dt.timedelta(minutes=minutes), decided_at=decided_at
    )
    return form


def test_the_dashboard_draws_the_numbers(
    client: Client, admin_user: User, reach_app: DifyApp, dify_app: DifyApp
) -> None:
    route(reach_app)
    for _ in range(3):
        make_form(reach_app, node_id="approve", node_title="Approve payout")
    make_form(dify_app, node_id="refund", node_title="Refund check")
    for minutes in (10, 20, 30, 40):
        decided(reach_app, minutes)
    decided(reach_app, 600, days_ago=20)  # in the 30 days only
    make_form(reach_app, status=Form.Status.EXPIRED, expires_in=dt.timedelta(hours=-2))
    failed = make_form(reach_app, status=Form.Status.FAILED)
    Decision.objects.create(form=failed, action_id="approve", status=Decision.Status.FAILED)
    client.force_login(admin_user)
    page = client.get("/dashboard/")
    assert page.status_code == 200
    body = page.content.decode()
    assert body.count("<svg ") == 3 and "<script" not in body.split("<main", 1)[1]
    # Pending per app and node: the longest bar is payroll's three.
    pending_chart = body.split('id="pending-title"')[1].split('id="timing-title"')[0]
    bars = re.findall(r'<rect class="bar" x="220" y="\d+" width="([\d.]+)"', pending_chart)
    assert bars == ["360.0", "120.0"]  # 3 and 1 pending, on a 360-unit scale
    assert "<title>payroll · Approve payout: 3</title>" in body
    assert "<title>refunds · Refund check: 1</title>" in body
    # Time to decision: 7 days has the four quick ones, 30 days also the slow one.
    assert re.search(
        r"<td>Last 7 days</td><td class=\"num\">4</td><td class=\"num\">20 min</td><td class=\"num\">40 min</td>",
        body,
    )
    assert re.search(
        r"<td>Last 30 days</td><td class=\"num\">5</td><td class=\"num\">30 min</td><td class=\"num\">10.0 h</td>",
        body,
    )
    assert re.search(r"<strong>4</strong>pending forms<", body)
    assert re.search(r"<strong>1</strong><a [^>]*>failed deliveries", body)
    assert re.search(r"<strong>1</strong>expired, last 7 days", body)
    # Per day: each column says which number is which, and a table gives them all as text.
    now = timezone.now()
    counts: dict[str, list[int]] = {}
    counts.setdefault(timezone.localdate(now - dt.timedelta(days=1)).isoformat(), [0, 0])[0] += 4
    counts.setdefault(timezone.localdate(now - dt.timedelta(hours=2)).isoformat(), [0, 0])[1] += 1
    daily = body.split('id="daily-title"')[1]
    for day, (decided_n, expired_n) in counts.items():
        assert f"<title>{day}: {decided_n} decided, {expired_n} expired</title>" in daily
        row = f'<tr><td>{day}</td><td class="num">{decided_n}</td><td class="num">{expired_n}</td>'
        assert row in daily
    assert daily.count("<tr><td>") == 30


def test_the_dashboard_is_staff_only(client: Client, reviewer: User) -> None:
    assert client.get("/dashboard/")["Location"] == "/accounts/login/?next=/dashboard/"
    client.force_login(reviewer)
    assert client.get("/dashboard/").status_code == 404


def test_the_dashboard_speaks_chinese(client: Client, admin_user: User) -> None:
    client.force_login(admin_user)
    body = client.get("/dashboard/", HTTP_ACCEPT_LANGUAGE="zh-Hans").content.decode()
    assert "仪表盘" in body and "决定用时" in body and "没有等待决定的表单。" in body


def test_the_dashboard_s_durations_and_long_names_read_as_chinese(
    client: Client, admin_user: User, reach_app: DifyApp
) -> None:
    route(reach_app)
    make_form(
        reach_app,
        node_id="n",
        node_title="经理审批 超过五百欧元的退款申请需要两级审核以及财务部门的最终确认",
    )
    for minutes in (10, 20):
        decided(reach_app, minutes)
    client.force_login(admin_user)
    body = client.get("/dashboard/", HTTP_ACCEPT_LANGUAGE="zh-Hans").content.decode()
    # As the pages' relative times say them: no space between the number and its unit.
    assert '<td class="num">10分钟</td><td class="num">20分钟</td>' in body
    # A name too long for the chart ends in one ellipsis, not three full stops.
    [label] = re.findall(r'<text x="0" y="\d+">([^<]*)</text>', body.split('id="timing-title"')[0])
    assert len(label) == 34 and label.endswith("…") and "..." not in body


def test_the_dashboard_counts_decisions_on_their_way_and_those_that_wait(
    client: Client, admin_user: User, reach_app: DifyApp
) -> None:
    route(reach_app)

    def decision(**fields: object) -> Decision:
        form = make_form(reach_app, status=Form.Status.SUBMITTING)
        return Decision.objects.create(form=form, action_id="approve", **fields)

    decision(status=Decision.Status.QUEUED)
    decision(status=Decision.Status.DELIVERING, attempts=1)
    decision(status=Decision.Status.QUEUED, attempts=3, dify_unreachable=True)
    decision(status=Decision.Status.QUEUED, held_for_app=True)
    client.force_login(admin_user)
    body = client.get("/dashboard/").content.decode()
    assert re.search(r"<strong>4</strong><a [^>]*>decisions on their way to Dify</a>", body)
    assert "1 being retried · 1 held: Dify refuses its app" in body
    assert 'class="card figure warn"><strong>4</strong>' in body


def test_forms_nobody_is_asked_to_decide_are_counted(
    client: Client, admin_user: User, reach_app: DifyApp
) -> None:
    group = Group.objects.create(name="payroll-team")
    route(reach_app, groups=[group])
    make_form(reach_app)  # asked of a group with no one in it, and of no address
    client.force_login(admin_user)
    body = client.get("/dashboard/").content.decode()
    assert re.search(r"<strong>1</strong><a [^>]*>pending forms nobody is asked to decide", body)


def test_a_form_reassigned_to_a_reviewer_deactivated_since_is_asked_of_nobody(
    client: Client, admin_user: User, other_reviewer: User, reach_app: DifyApp
) -> None:
    route(reach_app)
    form = make_form(reach_app)
    form.reassign(to_user=other_reviewer, actor=admin_user)
    # Bob has an email link, open while his account is.
    assert form.recipients.get().user == other_reviewer
    assert not Form.objects.asked_of_nobody().exists()
    other_reviewer.is_active = False
    other_reviewer.save()
    assert list(Form.objects.asked_of_nobody()) == [form]
    client.force_login(admin_user)
    body = client.get("/dashboard/").content.decode()
    assert re.search(r"<strong>1</strong><a [^>]*>pending forms nobody is asked to decide", body)


def _finance(reach_app: DifyApp) -> tuple[Group, User, User]:
    """@finance (carol, dave), the app's route, emailing its reviewers."""
    finance = Group.objects.create(name="finance")
    carol = User.objects.create_user("carol", "carol@example.com", "pw-carol-123")
    dave = User.objects.create_user("dave", "dave@example.com", "pw-dave-123")
    finance.user_set.add(carol, dave)
    route(reach_app, groups=[finance], email_reviewers=True)
    return finance, carol, dave


def test_forms_of_a_group_whose_reviewers_left_or_were_deactivated_are_asked_of_nobody(
    client: Client, admin_user: User, reach_app: DifyApp
) -> None:
    finance, carol, dave = _finance(reach_app)
    forms = [make_form(reach_app) for _ in range(3)]
    # Each form emailed carol and dave: their links are rows, never withdrawn below.
    assert all(f.recipients.filter(user__isnull=False).count() == 2 for f in forms)
    forms[0].claim(carol)
    forms[1].claim(dave)
    assert not Form.objects.asked_of_nobody().exists()
    finance.user_set.remove(carol)
    assert not Form.objects.asked_of_nobody().exists()  # dave is still asked
    dave.is_active = False
    dave.save()
    pending = Form.objects.filter(status=Form.Status.PENDING)
    assert set(pending.asked_of_nobody()) == set(forms)
    client.force_login(admin_user)
    body = client.get("/dashboard/").content.decode()
    assert re.search(r"<strong>3</strong><a [^>]*>pending forms nobody is asked to decide", body)
    listed = client.get("/admin/inbox/form/?asked=nobody").content.decode()
    assert all(f"/admin/inbox/form/{f.pk}/change/" in listed for f in forms)
    # The group deleted under them: still nobody's.
    finance.delete()
    assert set(pending.asked_of_nobody()) == set(forms)
    # Staff see every form: a link of one who is staff still opens it.
    carol.is_staff = True
    carol.save()
    assert not Form.objects.asked_of_nobody().exists()


def test_a_guest_link_counts_while_it_opens_the_form(reach_app: DifyApp) -> None:
    made = route(reach_app, recipients=["guest@example.net"], allow_guests=True)
    form = make_form(reach_app)
    assert form.recipients.get().user is None
    assert not Form.objects.asked_of_nobody().exists()
    # A route that no longer lets guests answer: the link opens nothing to decide.
    Route.objects.filter(pk=made.pk).update(allow_guests=False)
    assert list(Form.objects.asked_of_nobody()) == [form]
    Route.objects.filter(pk=made.pk).update(allow_guests=True, is_active=False)
    assert list(Form.objects.asked_of_nobody()) == [form]
    Route.objects.filter(pk=made.pk).update(is_active=True)
    assert not Form.objects.asked_of_nobody().exists()
    # Taken off the route's addresses (any case kept counts), or its address's account
    # deactivated.
    made.recipients.update(email="Guest@Example.NET")
    assert not Form.objects.asked_of_nobody().exists()
    made.recipients.all().delete()
    assert list(Form.objects.asked_of_nobody()) == [form]
    RouteRecipient.objects.create(route=made, email="guest@example.net")
    User.objects.create_user("gone", "GUEST@example.net", "pw-gone-123", is_active=False)
    assert list(Form.objects.asked_of_nobody()) == [form]


def test_runs_no_follower_takes_are_said_on_the_dashboard(
    client: Client, admin_user: User, reach_app: DifyApp
) -> None:
    from inbox.models import Run

    client.force_login(admin_user)
    assert "no follower takes" not in client.get("/dashboard/").content.decode()
    run = Run.objects.create(
        app=reach_app, dify_user="u", workflow_run_id="w-1", status="running", follow_wanted=True
    )
    Run.objects.filter(pk=run.pk).update(updated_at=timezone.now() - dt.timedelta(minutes=3))
    body = client.get("/dashboard/").content.decode()
    assert "1 run has waited over two minutes for the follower, and no follower takes it" in body
    body = client.get("/dashboard/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "manage.py follow" in body and "跟踪进程" in body


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (59.4, "59 s"),
        (59.6, "1 min"),
        (3569, "59 min"),
        (3599, "1.0 h"),
        (86219, "23.9 h"),
        (86399, "1.0 d"),
    ],
)
def test_a_duration_takes_the_unit_its_shown_value_needs(seconds: float, shown: str) -> None:
    assert _duration(seconds) == shown


def test_the_dashboard_says_how_long_decisions_wait_and_when_beat_or_the_workers_are_down(
    client: Client, admin_user: User, reach_app: DifyApp
) -> None:
    from inbox.models import Heartbeat

    route(reach_app)
    now = timezone.now()
    Heartbeat.objects.create(name="sweep_deliveries", at=now)
    Heartbeat.objects.create(name="send_reminders", at=now)
    client.force_login(admin_user)
    body = client.get("/dashboard/").content.decode()
    assert "the oldest waiting" not in body and "No periodic task" not in body
    for minutes in (3, 12):
        form = make_form(reach_app, status=Form.Status.SUBMITTING)
        decision = Decision.objects.create(
            form=form, action_id="approve", status=Decision.Status.QUEUED
        )
        Decision.objects.filter(pk=decision.pk).update(
            created_at=now - dt.timedelta(minutes=minutes),
            updated_at=now - dt.timedelta(minutes=minutes),
        )
    body = client.get("/dashboard/").content.decode()
    assert re.search(r"<strong>2</strong><a [^>]*>decisions on their way to Dify</a>", body)
    assert "the oldest waiting for 12 min" in body
    assert 'class="card figure warn"><strong>2</strong>' in body
    assert "2 decisions are past the time they should have been sent, the oldest by 12 min" in body
    Heartbeat.objects.filter(name="sweep_deliveries").update(at=now - dt.timedelta(minutes=8))
    body = client.get("/dashboard/").content.decode()
    assert "No periodic task has run for 8 minutes: check that Celery beat and a worker" in body
    body = client.get("/dashboard/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "12分钟" in body and "8 分钟" in body and "Celery beat" in body


def _delivered(
    app: DifyApp,
    confirmed_by: str,
    *,
    maybe_applied: bool = True,
    status: str = Decision.Status.DELIVERED,
    confirmed: bool = False,
) -> Decision:
    """A delivered decision as the delivery records it (`confirmed_by` in its trail entry),
    and, `confirmed`, as Dify's events later confirmed it (`Decision.settle_presumption`)."""
    from inbox.models import AuditEntry

    form = make_form(app, status=Form.Status.SUBMITTED)
    decision = Decision.objects.create(
        form=form,
        action_id="approve",
        status=status,
        maybe_applied=maybe_applied,
        delivered_at=timezone.now(),
    )
    AuditEntry.record("decision_delivered", decision, form=form.pk, confirmed_by=confirmed_by)
    if confirmed:
        AuditEntry.record("delivery_confirmed", decision, confirmed_by="human_input_form_filled")
    return decision


PRESUMED = "presumed: an earlier attempt's answer was lost; Dify shows no other answer"


def test_the_dashboard_counts_decisions_presumed_delivered_and_links_to_them(
    client: Client, admin_user: User, reach_app: DifyApp
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    route(reach_app)
    client.force_login(admin_user)
    body = client.get("/dashboard/").content.decode()
    assert re.search(
        r"<strong>0</strong><a href=\"/admin/inbox/decision/\?delivery=presumed\">"
        r"decisions presumed delivered, not confirmed by Dify yet</a></div>",
        body,
    )
    presumed = _delivered(reach_app, PRESUMED)
    others = [
        _delivered(reach_app, PRESUMED, confirmed=True),  # Dify's events named our action
        _delivered(reach_app, PRESUMED, status=Decision.Status.REJECTED),  # ...or another
        _delivered(reach_app, "response", maybe_applied=False),
        _delivered(reach_app, "live events"),  # an answer lost, Dify's own event found
    ]
    assert Decision.objects.get(pk=presumed.pk).delivery_presumed
    assert not any(Decision.objects.get(pk=d.pk).delivery_presumed for d in others)
    body = client.get("/dashboard/").content.decode()
    assert re.search(
        r"<strong>1</strong><a [^>]*\?delivery=presumed\">decisions presumed delivered", body
    )
    assert "Dify's events on their runs confirm or correct it." in body
    # Not on their way: Dify took them, as far as the inbox can tell.
    assert re.search(r"<strong>0</strong><a [^>]*>decisions on their way to Dify</a>", body)
    # The admin's list, filtered to them.
    listing = client.get("/admin/inbox/decision/?delivery=presumed").content.decode()
    assert str(presumed.public_id) in listing
    assert not any(str(d.public_id) in listing for d in others)
    assert "Presumed, not confirmed by Dify yet" in listing
    everything = client.get("/admin/inbox/decision/").content.decode()
    assert all(str(d.public_id) in everything for d in others)
    # In Chinese.
    body = client.get("/dashboard/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "推定已送达、尚未经 Dify 确认的决定" in body
    # Counted in the query that counts those on their way: more of them, no more queries.
    client.get("/dashboard/")  # back in English (the language change is written once)
    with CaptureQueriesContext(connection) as one:
        client.get("/dashboard/")
    _delivered(reach_app, PRESUMED)
    _delivered(reach_app, PRESUMED)
    with CaptureQueriesContext(connection) as three:
        body = client.get("/dashboard/").content.decode()
    assert re.search(r"<strong>3</strong><a [^>]*\?delivery=presumed\">", body)
    assert len(three) == len(one)


def test_the_dashboard_says_an_app_dify_calls_unavailable_is_to_be_published(
    client: Client, admin_user: User, reach_app: DifyApp
) -> None:
    DifyApp.objects.filter(pk=reach_app.pk).update(
        refused_at=timezone.now(),
        refusal="400 app_unavailable: App unavailable, please check your app configurations.",
        refusal_status=400,
        refusal_code="app_unavailable",
    )
    client.force_login(admin_user)
    body = client.get("/dashboard/").content.decode()
    assert "that payroll is not available: it may have no published workflow. Publish it in " in (
        body
    )
    assert (
        "until then no run of it can start, while the forms and decisions of its runs under way "
        "go through."
    ) in body
    assert "new forms of its runs cannot arrive" not in body
    body = client.get("/dashboard/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "Dify 表示 payroll 不可用：它可能没有已发布的工作流。请在 Dify 中发布它" in body  # noqa: RUF001
