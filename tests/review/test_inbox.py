from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from inbox.models import ApiToken, Decision, DifyApp, Form, Route, Run
from tests.reach.factories import route, route_existing
from tests.review.conftest import make_form, make_run

pytestmark = pytest.mark.smoke


def rows(page: str) -> list[str]:
    """The node titles of the listed rows, in order."""
    import re

    return re.findall(r'<a class="open" href="/forms/[^"]+/"[^>]*>([^<]*)</a>', page)


def test_anonymous_visitors_are_sent_to_log_in(client: Client, db: None) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/"


def test_pending_forms_are_listed_soonest_to_expire_first(alice: Client, dify_app: DifyApp) -> None:
    make_form(dify_app, node_title="Later", expires_in=dt.timedelta(days=2))
    make_form(dify_app, node_title="Soon", expires_in=dt.timedelta(minutes=30))
    make_form(dify_app, node_title="Never", expires_in=None)
    make_form(dify_app, node_title="Done", status=Form.Status.SUBMITTED)
    page = alice.get("/").content.decode()
    assert rows(page) == ["Soon", "Later", "Never"]
    # The last hour turns urgent; no expiry is said plainly.
    assert 'class="left urgent"' in page
    assert "No time limit" in page


def test_a_row_shows_app_excerpt_run_age_and_status(alice: Client, dify_app: DifyApp) -> None:
    form = make_form(dify_app, run=make_run(dify_app, workflow_run_id="run-abc"))
    page = alice.get("/").content.decode()
    assert f'href="/forms/{form.public_id}/"' in page
    row = f"row-{form.public_id}"
    assert f'<span class="chip app" id="{row}-app">refunds</span>' in page
    assert "Refund request · Customer Ada asks for a refund of 120 EUR. Choose the outcome:" in page
    assert "<code>run-abc</code>" in page
    assert "Arrived" in page and "in 5 hours" in page  # 5 hours less a moment, rounded
    assert f'<span class="badge pending" id="{row}-status">Pending</span>' in page


def test_a_decided_row_says_when_and_with_which_action(alice: Client, dify_app: DifyApp) -> None:
    form = make_form(dify_app, status=Form.Status.SUBMITTED)
    Form.objects.filter(pk=form.pk).update(
        decided_at=timezone.now() - dt.timedelta(hours=3), filled_action_text="Approve refund"
    )
    page = alice.get("/?status=submitted").content.decode()
    row = f"row-{form.public_id}"
    side = re.search(
        rf'<span class="left muted" id="{row}-left">(.*?)</span> <span class="badge', page
    )
    assert side is not None
    assert re.fullmatch(
        r'Decided <time datetime="[^"]+" data-rel title="[^"]+">3 hours ago</time>'
        r' · <span class="action">Approve refund</span>',
        side.group(1),
    )
    assert f'aria-describedby="{row}-app {row}-left {row}-status"' in page


def test_the_decided_tabs_list_the_latest_decided_first_and_name_the_decider(
    alice: Client, dify_app: DifyApp, reviewer: User, other_reviewer: User
) -> None:
    now = timezone.now()
    # Expiring in the opposite order to their decisions: the old default order is undone.
    for title, hours_ago, expires_in, who in [
        ("Decided long ago", 5, 1, reviewer),
        ("Decided lately", 1, 3, other_reviewer),
        ("Decided between", 3, 2, reviewer),
    ]:
        form = make_form(
            dify_app,
            node_title=title,
            status=Form.Status.SUBMITTED,
            expires_in=dt.timedelta(hours=expires_in),
        )
        Decision.objects.create(
            form=form, action_id="approve", reviewer=who, status=Decision.Status.DELIVERED
        )
        Form.objects.filter(pk=form.pk).update(
            decided_at=now - dt.timedelta(hours=hours_ago), filled_action_text="Approve"
        )
    sending = make_form(dify_app, node_title="Being sent", status=Form.Status.SUBMITTING)
    Decision.objects.create(form=sending, action_id="reject", reviewer=other_reviewer)
    page = alice.get("/?status=submitted").content.decode()
    assert rows(page) == ["Being sent", "Decided lately", "Decided between", "Decided long ago"]
    assert '<option value="decided" selected>Recently decided</option>' in page
    # Who decided, when and how; also for the form still on its way to Dify.
    row = f"row-{sending.public_id}"
    side = re.search(
        rf'<span class="left muted" id="{row}-left">(.*?)</span> <span class="badge', page
    )
    assert side is not None
    assert re.fullmatch(
        r'Decided <time datetime="[^"]+" data-rel title="[^"]+">just now</time> by '
        r'<span class="decider">Bob</span> · <span class="action">Reject</span>',
        side.group(1),
    ), side.group(1)
    assert 'by <span class="decider">Alice</span> · <span class="action">Approve</span>' in page
    chinese = alice.get("/?status=submitted", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    # A Latin name is spaced from the Chinese, as the catalogue writes it; a Chinese one touches it.
    assert '<span class="decider">Bob</span> \u4e8e<time' in chinese
    # Another order is still there to choose; the pending tab keeps its own default.
    assert rows(alice.get("/?status=submitted&sort=oldest").content.decode())[0] == (
        "Decided long ago"
    )
    assert '<option value="time_left" selected>' in alice.get("/").content.decode()
    # The API lists them the same way.
    raw = ApiToken.issue(reviewer)[1]
    listed = alice.get("/api/v1/forms?status=submitted", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert [f["node_title"] for f in listed.json()["results"]] == rows(page)


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the tabs' indexes exist on PostgreSQL only"
)
@pytest.mark.parametrize("who", ["reviewer", "admin_user"])
@pytest.mark.parametrize(
    ("address", "index"),
    [
        ("/?status=submitted", "form_submitted_decided"),
        ("/?status=elsewhere", "form_elsewhere_decided"),
        ("/?status=submitted&page=2", "form_submitted_decided"),
        ("/api/v1/forms?status=submitted", "form_submitted_decided"),
        ("/api/v1/forms?status=elsewhere&page=2", "form_elsewhere_decided"),
        ("/api/v1/forms?status=not_answerable&sort=decided", "form_elsewhere_decided"),
    ],
)
def test_the_decided_tabs_read_their_page_along_their_index(
    client: Client,
    dify_app: DifyApp,
    request: pytest.FixtureRequest,
    who: str,
    address: str,
    index: str,
) -> None:
    """Migration 0041's partial indexes give each tab's order over each tab's statuses, so a
    page is read along one of them, not by sorting every decided form: the statements the page
    and the API send, EXPLAINed with sorting and table scans priced out (on a table this small
    the planner would read it whole; a statement no index orders still sorts, at that price)."""
    user: User = request.getfixturevalue(who)
    now = timezone.now()
    for n, status in enumerate(["submitted", "submitting", "answered_elsewhere", "gone"] * 30):
        make_form(
            dify_app, status=status, decided_at=now - dt.timedelta(minutes=n) if n % 3 else None
        )
    client.force_login(user)
    token = ApiToken.issue(user)[1]
    with CaptureQueriesContext(connection) as sent:
        assert client.get(address, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200
    # The page's (its rows' ids chosen in a subquery, U0) and the API's statements.
    ordered = [q["sql"] for q in sent.captured_queries if '."decided_at" DESC' in q["sql"]]
    assert ordered
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        for sql in ordered:
            cursor.execute("EXPLAIN " + sql)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert f"Index Scan using {index} on inbox_form" in plan or (
                f"Index Only Scan using {index} on inbox_form" in plan
            ), plan


def test_a_form_closed_by_its_run_s_stop_reads_closed_not_expired(
    alice: Client, dify_app: DifyApp
) -> None:
    stopped = make_form(dify_app, status=Form.Status.EXPIRED)
    Run.objects.filter(pk=stopped.run_id).update(status="stopped", finished_at=timezone.now())
    timed_out = make_form(dify_app, status=Form.Status.EXPIRED, expires_in=-dt.timedelta(hours=1))
    page = alice.get("/?status=expired").content.decode()
    assert f'<span class="badge expired" id="row-{stopped.public_id}-status">Closed</span>' in page
    assert (
        f'<span class="badge expired" id="row-{timed_out.public_id}-status">Expired</span>' in page
    )


def test_in_chinese_the_time_comes_before_arrived_and_expires(
    alice: Client, dify_app: DifyApp
) -> None:
    from django.utils import translation

    form = make_form(dify_app, expires_in=dt.timedelta(hours=48))
    Form.objects.filter(pk=form.pk).update(created_at=timezone.now() - dt.timedelta(minutes=2))
    alice.cookies["django_language"] = "zh-hans"
    page = alice.get("/").content.decode()
    # "2分钟前收到", "48小时后过期": the time first, as Chinese says it.
    assert re.search(r"<time [^>]*data-rel>2分钟前</time>收到</span>", page)
    assert re.search(r"<time [^>]*>48小时后</time>过期</span>", page)
    form_page = alice.get(f"/forms/{form.public_id}/").content.decode()
    assert re.search(r"<time [^>]*>2分钟前</time>收到", form_page)
    translation.activate("en")


def test_sorting_newest_and_oldest(alice: Client, dify_app: DifyApp) -> None:
    for title in ("one", "two", "three"):
        make_form(dify_app, node_title=title)
    assert rows(alice.get("/?sort=newest").content.decode()) == ["three", "two", "one"]
    assert rows(alice.get("/?sort=oldest").content.decode()) == ["one", "two", "three"]


def test_tabs_count_each_status_and_filter_by_it(alice: Client, dify_app: DifyApp) -> None:
    make_form(dify_app, node_title="p1")
    make_form(dify_app, node_title="s1", status=Form.Status.SUBMITTED)
    make_form(dify_app, node_title="s2", status=Form.Status.SUBMITTING)
    make_form(dify_app, node_title="x1", status=Form.Status.EXPIRED)
    make_form(dify_app, node_title="e1", status=Form.Status.ANSWERED_ELSEWHERE)
    make_form(dify_app, node_title="f1", status=Form.Status.FAILED)
    page = alice.get("/").content.decode()
    for label, count in [
        ("Pending", 1),
        ("Submitted", 2),
        ("Expired", 1),
        ("Outside the inbox", 1),  # answered elsewhere, or answerable only in Dify
        ("Failed", 1),
    ]:
        assert f'{label} <span class="count">{count}</span>' in page
    assert sorted(rows(alice.get("/?status=submitted").content.decode())) == ["s1", "s2"]
    assert rows(alice.get("/?status=failed").content.decode()) == ["f1"]


def test_a_form_whose_time_ran_out_is_listed_as_expired_before_the_sweep(
    alice: Client, dify_app: DifyApp
) -> None:
    import datetime as dt

    from django.utils import timezone

    make_form(dify_app, node_title="waiting")
    make_form(
        dify_app,
        node_title="ran out",
        expires_in=None,
        expiration_time=timezone.now() - dt.timedelta(seconds=5),
    )
    assert rows(alice.get("/").content.decode()) == ["waiting"]
    expired = alice.get("/?status=expired").content.decode()
    assert rows(expired) == ["ran out"]
    assert ">Expired</span>" in expired and ">Pending</span>" not in expired.split('id="rows"')[-1]


def test_filters_by_app_node_and_search(alice: Client, dify_app: DifyApp) -> None:
    other_app = DifyApp.objects.create(name="hiring", base_url="http://127.0.0.1:9/v1", api_key="k")
    route(other_app, groups=Group.objects.filter(name="reviewers"))
    make_form(dify_app, node_title="Refund check", node_id="refund")
    make_form(other_app, node_title="Offer approval", node_id="offer", content="Salary band B")
    assert rows(alice.get(f"/?app={other_app.pk}").content.decode()) == ["Offer approval"]
    assert rows(alice.get("/?node=refund").content.decode()) == ["Refund check"]
    assert rows(alice.get("/?q=salary").content.decode()) == ["Offer approval"]
    assert rows(alice.get("/?q=REFUND").content.decode()) == ["Refund check"]
    # The app's name, as each row's chip shows it, finds its forms.
    assert rows(alice.get("/?q=HIR").content.decode()) == ["Offer approval"]
    assert rows(alice.get("/?q=refunds").content.decode()) == ["Refund check"]
    empty = alice.get("/?q=nothing-matches").content.decode()
    assert "No forms match these filters." in empty
    # The run id a row shows finds its run's forms, as a colleague names them.
    named = make_form(
        dify_app,
        node_title="Named by its run",
        run=make_run(dify_app, workflow_run_id="41f2c79e-aaaa"),
    )
    page = alice.get("/?q=41F2C79E").content.decode()
    assert rows(page) == ["Named by its run"] and "<code>41f2c79e</code>" in page
    assert named.run.workflow_run_id.startswith("41f2c79e")


def test_the_search_finds_the_people_a_form_names_by_their_names(
    alice: Client, dify_app: DifyApp, reviewers_group: Group
) -> None:
    wang = User.objects.create_user("wang", first_name="芳", last_name="王")
    carol = User.objects.create_user("carol", first_name="Carol", last_name="Jones")
    dave = User.objects.create_user("dave", first_name="Dave", last_name="Brown")
    for person in (wang, carol, dave):
        person.groups.add(reviewers_group)
    make_form(dify_app, node_title="Assigned").assigned_users.add(wang)
    decided = make_form(dify_app, node_title="Decided", status=Form.Status.SUBMITTED)
    Decision.objects.create(form=decided, action_id="approve", reviewer=carol)
    make_form(dify_app, node_title="Started", run=make_run(dify_app, started_by=dave))
    make_form(dify_app, node_title="Nobody's")

    def found(q: str) -> list[str]:
        return sorted(rows(alice.get("/", {"q": q, "status": "all"}).content.decode()))

    # Who it is assigned to, who decided it and who started its run: by the name the pages
    # show, in either order or part of it, or by username.
    assert found("王芳") == found("芳") == found("wang") == ["Assigned"]
    assert found("Carol Jones") == found("jones carol") == found("CAROL") == ["Decided"]
    assert found("Dave Brown") == found("dave") == ["Started"]
    # The API's search is the inbox's.
    _token, raw = ApiToken.issue(User.objects.get(username="alice"))
    listed = alice.get(
        "/api/v1/forms", {"q": "Carol Jones", "status": "all"}, HTTP_AUTHORIZATION=f"Bearer {raw}"
    ).json()
    assert [f["node_title"] for f in listed["results"]] == ["Decided"]
    # Finding the form by its decider costs the queries finding it by its title does: the
    # apps and people a search names are found in one query.
    from django.core.cache import cache

    counts = []
    for q in ("Carol Jones", "Decided"):
        cache.clear()
        with CaptureQueriesContext(connection) as queries:
            alice.get("/", {"q": q, "status": "all"})
        counts.append(len(queries))
    assert counts[0] == counts[1], counts


def test_node_options_load_on_demand(alice: Client, dify_app: DifyApp) -> None:
    make_form(dify_app, node_title="Refund check", node_id="refund")
    page = alice.get(
        f"/nodes/?app={dify_app.pk}&node=refund", HTTP_HX_REQUEST="true"
    ).content.decode()
    assert '<option value="refund" selected>Refund check</option>' in page


def test_two_apps_nodes_of_the_same_id_are_two_choices_under_all_apps(
    alice: Client, dify_app: DifyApp
) -> None:
    other_app = DifyApp.objects.create(name="hiring", base_url="http://127.0.0.1:9/v1", api_key="k")
    route(other_app, groups=Group.objects.filter(name="reviewers"))
    make_form(dify_app, node_title="Owner approval", node_id="approval")
    make_form(other_app, node_title="Cost-centre approval", node_id="approval")
    page = alice.get("/nodes/", HTTP_HX_REQUEST="true").content.decode()
    assert f'<option value="{other_app.pk}:approval">Cost-centre approval · hiring</option>' in page
    assert f'<option value="{dify_app.pk}:approval">Owner approval · refunds</option>' in page
    assert rows(alice.get(f"/?node={dify_app.pk}:approval").content.decode()) == ["Owner approval"]
    # A node id alone (an app chosen, the API) still matches it in every app.
    assert sorted(rows(alice.get("/?node=approval").content.decode())) == [
        "Cost-centre approval",
        "Owner approval",
    ]


def test_the_node_filter_names_no_node_of_a_form_the_reader_may_not_see(
    alice: Client, dify_app: DifyApp
) -> None:
    hidden = DifyApp.objects.create(name="board", base_url="http://127.0.0.1:9/v1", api_key="k")
    make_form(hidden, node_title="Board vote on the merger", node_id="board_vote")
    page = alice.get("/?node=board_vote").content.decode()
    assert "Board vote on the merger" not in page
    assert '<option value="board_vote" selected>board_vote</option>' in page


def test_pages_of_fifty(alice: Client, dify_app: DifyApp) -> None:
    run = make_run(dify_app)
    now = timezone.now()
    Form.objects.bulk_create(
        Form(
            run=run,
            form_id=f"bulk-{i}",
            node_id="n",
            node_title=f"form {i:03}",
            expiration_time=now + dt.timedelta(minutes=90 + i),
        )
        for i in range(60)
    )
    route_existing(Form.objects.filter(run=run))  # bulk_create skips the routing save() does
    first = alice.get("/").content.decode()
    assert len(rows(first)) == 50 and "1–50 of 60" in first and 'rel="next"' in first  # noqa: RUF001
    second = alice.get("/?page=2").content.decode()
    assert rows(second) == [f"form {i:03}" for i in range(50, 60)]
    assert "51–60 of 60" in second and 'rel="prev"' in second  # noqa: RUF001


def test_a_page_past_the_last_goes_to_the_last(
    alice: Client, dify_app: DifyApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    from inbox import views

    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    forms = [
        make_form(dify_app, node_title=f"p{i}", expires_in=dt.timedelta(hours=1 + i))
        for i in range(5)
    ]
    third = alice.get("/?page=3&sort=expiry").content.decode()
    assert rows(third) == ["p4"]
    poll = re.search(r'hx-get="(\?[^"]*since=[^"]+)"', third)
    assert poll is not None
    # The forms of that page and the one before are decided elsewhere meanwhile.
    Form.objects.filter(pk__in=[f.pk for f in forms[2:]]).update(
        status=Form.Status.SUBMITTED, form_token="", updated_at=timezone.now()
    )
    polled = alice.get("/" + poll.group(1).replace("&amp;", "&"), HTTP_HX_REQUEST="true")
    body = polled.content.decode()
    # Not "Nothing is waiting for you" while two forms wait: the last page that has them.
    assert rows(body) == ["p0", "p1"] and "Nothing is waiting" not in body
    assert polled["HX-Replace-Url"] == "/?sort=expiry"
    assert "page=3" not in body
    # Opened at its address, the page past the last is sent to the last, whether the counts
    # were the current ones or the last.
    moved = alice.get("/?page=9&sort=expiry")
    assert moved.status_code == 302 and moved["Location"] == "/?sort=expiry"
    for i in range(4):
        make_form(dify_app, node_title=f"q{i}")
    from django.core.cache import cache

    cache.clear()  # no last counts to show: the page counts now, and knows the last page
    moved = alice.get("/?page=9&sort=expiry")
    assert moved.status_code == 302 and moved["Location"] == "/?sort=expiry&page=3"


def test_the_list_poll_answers_204_when_nothing_changed(alice: Client, dify_app: DifyApp) -> None:
    make_form(dify_app, node_title="first")
    page = alice.get("/").content.decode()
    import re

    token = re.search(r'hx-get="\?since=([^"]+)"', page)
    assert token is not None
    since = token.group(1).replace("%3A", ":").replace("%2B", "+")
    with CaptureQueriesContext(connection) as queries:
        unchanged = alice.get("/", {"since": since}, HTTP_HX_REQUEST="true")
    assert unchanged.status_code == 204
    # Session, user, and the one MAX(updated_at).
    assert len(queries) == 3, [q["sql"] for q in queries.captured_queries]
    make_form(dify_app, node_title="second")
    changed = alice.get("/", {"since": since}, HTTP_HX_REQUEST="true")
    assert changed.status_code == 200
    assert rows(changed.content.decode()) == ["first", "second"]
    assert changed["HX-Trigger"].startswith('{"inbox:announce"')


def test_the_poll_announces_a_change_only_when_the_rows_shown_changed(
    alice: Client, dify_app: DifyApp
) -> None:
    make_form(dify_app, node_title="late", status=Form.Status.EXPIRED)
    page = alice.get("/", {"status": "expired"}).content.decode()
    since = re.search(r'hx-get="\?status=expired&amp;since=([^"]+)"', page)
    shown = re.search(r'hx-headers=\'\{"X-Inbox-Rows": "([0-9a-f]+)"\}\'', page)
    assert since is not None and shown is not None
    token = since.group(1).replace("%3A", ":").replace("%2B", "+")
    poll = {"status": "expired", "since": token}
    headers = {"HTTP_HX_REQUEST": "true", "HTTP_X_INBOX_ROWS": shown.group(1)}
    # A form arrives on the Pending tab: the Expired list is redrawn (its counts changed), and
    # nothing is said.
    arrived = make_form(dify_app, node_title="arrived")
    quiet = alice.get("/", poll, **headers)
    assert quiet.status_code == 200 and rows(quiet.content.decode()) == ["late"]
    assert "HX-Trigger" not in quiet
    # It expires: a row appears where the reviewer looks, and that is said.
    Form.objects.filter(pk=arrived.pk).update(
        status=Form.Status.EXPIRED, form_token="", updated_at=timezone.now()
    )
    said = alice.get("/", poll, **headers)
    assert sorted(rows(said.content.decode())) == ["arrived", "late"]
    assert said["HX-Trigger"].startswith('{"inbox:announce"')
    # A row whose status changed in place is a change on screen too.
    page = alice.get("/", {"status": "all"}).content.decode()
    shown = re.search(r'"X-Inbox-Rows": "([0-9a-f]+)"', page)
    assert shown is not None
    Form.objects.filter(pk=arrived.pk).update(
        status=Form.Status.SUBMITTED, form_token="", updated_at=timezone.now()
    )
    moved = alice.get(
        "/",
        {"status": "all", "since": "0"},
        HTTP_HX_REQUEST="true",
        HTTP_X_INBOX_ROWS=shown.group(1),
    )
    assert moved["HX-Trigger"].startswith('{"inbox:announce"')


def test_an_htmx_filter_change_returns_only_the_results(alice: Client, dify_app: DifyApp) -> None:
    make_form(dify_app)
    part = alice.get("/?status=pending", HTTP_HX_REQUEST="true").content.decode()
    assert part.lstrip().startswith('<section id="results"')
    assert "<html" not in part


def test_the_inbox_costs_the_same_queries_for_one_or_many_forms(
    alice: Client, dify_app: DifyApp
) -> None:
    alice.get("/")  # a session's first request also remembers the reviewer's language, once
    make_form(dify_app)
    with CaptureQueriesContext(connection) as one:
        alice.get("/")
    for _ in range(20):
        app = DifyApp.objects.create(name=f"a{_}", base_url="http://x/v1", api_key="k")
        route(app, groups=Group.objects.filter(name="reviewers"))
        make_form(dify_app, run=make_run(app))
    with CaptureQueriesContext(connection) as many:
        alice.get("/")
    assert len(one) == len(many) <= 10


def test_the_inbox_lists_only_forms_routed_to_the_user(
    client: Client, outsider: User, reviewer: User, dify_app: DifyApp
) -> None:
    # dify_app routes its forms to the "reviewers" group: alice is in it, the outsider is not.
    make_form(dify_app, node_title="Visible")
    client.force_login(outsider)
    assert rows(client.get("/").content.decode()) == []
    client.force_login(reviewer)
    assert rows(client.get("/").content.decode()) == ["Visible"]


def test_the_inbox_speaks_chinese(alice: Client, dify_app: DifyApp) -> None:
    make_form(dify_app)
    page = alice.get("/", HTTP_ACCEPT_LANGUAGE="zh-Hans").content.decode()
    assert "待处理" in page


def test_the_inbox_says_whose_key_dify_refuses_with_the_status_code_only(
    alice: Client, dify_app: DifyApp
) -> None:
    make_form(dify_app)
    assert "Dify is refusing" not in alice.get("/").content.decode()
    DifyApp.objects.filter(pk=dify_app.pk).update(
        refused_at=timezone.now(),
        refusal="401 unauthorized: Access token is invalid",
        refusal_status=401,
    )
    page = alice.get("/").content.decode()
    assert (
        "Dify is refusing the API key of refunds (it answered 401); new forms from this app "
        "cannot arrive until an administrator fixes it."
    ) in page
    assert "Access token is invalid" not in page
    assert "wait to be sent" not in page and "waits to be sent" not in page
    # Alice's decisions made meanwhile wait for the fix, and she is told so.
    alice_user = User.objects.get(username="alice")
    for form in (make_form(dify_app), make_form(dify_app)):
        Form.objects.filter(pk=form.pk).update(status="submitting")
        Decision.objects.create(
            form=form, action_id="approve", reviewer=alice_user, held_for_app=True
        )
    page = alice.get("/").content.decode()
    assert "Your decisions on 2 of its forms wait to be sent; they go once this is fixed." in page
    chinese = alice.get("/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "wait to be sent" not in chinese and "2 个表单" in chinese
    # An app Dify refuses as set up here (its kind, nothing published) is not a key problem.
    DifyApp.objects.filter(pk=dify_app.pk).update(
        refusal="400 not_workflow_app: Please check if your app mode matches the right API route.",
        refusal_status=400,
    )
    page = alice.get("/").content.decode()
    assert (
        "Dify is refusing the app refunds as it is set up here (it answered 400); new forms from "
        "this app cannot arrive until an administrator fixes it."
    ) in page
    assert "API key" not in page
    # Not for an app switched off here: nothing is expected from it.
    DifyApp.objects.filter(pk=dify_app.pk).update(is_active=False)
    assert "Dify is refusing" not in alice.get("/").content.decode()


def test_empty_inbox_says_new_forms_will_appear(alice: Client) -> None:
    page = alice.get("/").content.decode()
    assert "Nothing is waiting for you." in page
    assert "New forms appear here by themselves" in page


@pytest.mark.parametrize("probe", [False, True], ids=["hashed", "probed"])
def test_both_visibility_queries_show_the_same_forms(
    probe: bool, dify_app: DifyApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`for_user` picks its query by how many forms the user's groups have; either returns
    exactly the forms routed to the user, to one of their groups, or held by them."""
    from django.core.cache import cache

    from inbox import models
    from inbox.models import Run

    monkeypatch.setattr(models, "PROBE_FACTOR", 0 if probe else 10**9)
    cache.clear()
    team, other_team = Group.objects.create(name="team"), Group.objects.create(name="other")
    ana = User.objects.create_user("ana")
    ana.groups.add(team, Group.objects.create(name="second"))
    ben = User.objects.create_user("ben")
    ben.groups.add(other_team)
    forms = {name: make_form(dify_app, node_title=name) for name in "abcdefg"}
    for form in forms.values():
        form.assigned_groups.clear()
        form.assigned_users.clear()
    forms["a"].assigned_groups.add(team)
    forms["b"].assigned_users.add(ana)
    forms["c"].assigned_groups.add(team, Group.objects.get(name="second"))
    forms["c"].assigned_users.add(ana)  # routed three ways: still one row
    forms["d"].assigned_groups.add(other_team)
    # Held, but routed to nobody ana is: holding gives no access of its own.
    Form.objects.filter(pk=forms["e"].pk).update(claimed_by=ana)
    forms["f"].assigned_users.add(ben)
    seen = {
        user.username: sorted(Form.objects.for_user(user).values_list("node_title", flat=True))
        for user in (ana, ben)
    }
    assert seen == {"ana": ["a", "b", "c"], "ben": ["d", "f"]}
    sql = str(Form.objects.for_user(ana).query)
    assert ("UNION ALL" in sql) is probe
    runs = sorted(Run.objects.for_user(ana).values_list("forms__node_title", flat=True))
    assert runs == ["a", "b", "c"]


def test_tab_counts_stop_at_the_cap_and_pages_go_on_past_it(
    alice: Client, dify_app: DifyApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inbox import views

    monkeypatch.setattr(views, "COUNT_CAP", 3)
    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    for i in range(7):
        make_form(dify_app, node_title=f"p{i}", expires_in=dt.timedelta(hours=1 + i))
    make_form(dify_app, node_title="s0", status=Form.Status.SUBMITTED)
    first = alice.get("/").content.decode()
    assert 'Pending <span class="count">3+</span>' in first
    assert 'Submitted <span class="count">1</span>' in first
    assert rows(first) == ["p0", "p1"] and "1–2 of 3+" in first and 'rel="next"' in first  # noqa: RUF001
    third = alice.get("/?page=3").content.decode()
    assert rows(third) == ["p4", "p5"] and "5–6 of 6+" in third and 'rel="next"' in third  # noqa: RUF001
    # The last page knows the total again.
    last = alice.get("/?page=4").content.decode()
    assert rows(last) == ["p6"] and "7–7 of 7" in last and 'rel="next"' not in last  # noqa: RUF001
    everything = alice.get("/?status=all").content.decode()
    assert "1–2 of 4+" in everything  # noqa: RUF001  (3 pending counted, 1 submitted)
    assert 'Pending <span class="count">3+</span>' in everything


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="trigram indexes exist on PostgreSQL only"
)
def test_search_is_served_by_the_trigram_indexes(reviewer: User, dify_app: DifyApp) -> None:
    """The migration's UPPER(...) gin_trgm_ops indexes match the SQL the search generates."""
    from inbox.views import InboxFilters

    make_form(dify_app, node_title="Refund check", content="refund of 4242 EUR")
    forms = InboxFilters(q="refund of 4242", status="all").apply(Form.objects.all())

    def plan_of(forms: Any) -> str:
        sql, params = forms.order_by().values("pk").query.sql_with_params()
        with connection.cursor() as cursor:
            # A tiny table would be read whole, or walked along another index.
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("SET LOCAL enable_indexscan = off")
            cursor.execute("EXPLAIN " + sql, params)
            return "\n".join(row[0] for row in cursor.fetchall())

    plan = plan_of(forms)
    assert "inbox_form_title_trgm" in plan and "inbox_form_content_trgm" in plan, plan
    assert [f.node_title for f in forms] == ["Refund check"]
    # A run id's start too: its runs are found first, the forms' search keeps its indexes.
    plan = plan_of(InboxFilters(q="4242ab", status="all").apply(Form.objects.all()))
    assert "inbox_form_title_trgm" in plan and "inbox_form_content_trgm" in plan, plan


def test_the_expiry_tooltip_is_in_each_reviewers_time_zone(
    alice: Client, dify_app: DifyApp
) -> None:
    """Formatted times are cached; the same instant still reads differently in two zones."""
    import re

    expires = dt.datetime(2031, 3, 4, 9, 30, tzinfo=dt.UTC)
    form = make_form(dify_app, node_title="tz")
    Form.objects.filter(pk=form.pk).update(expiration_time=expires)

    def tooltip(zone: str) -> str:
        alice.cookies["tz"] = zone
        page = alice.get("/").content.decode()
        found = re.search(r'data-rel title="([^"]+)"', page)
        assert found is not None, page
        return found.group(1)

    paris = tooltip("Europe/Paris")  # formatted and cached first
    shanghai = tooltip("Asia/Shanghai")  # the same instant: must not reuse Paris's words
    assert "10:30 a.m." in paris, paris
    assert "5:30 p.m." in shanghai, shanghai


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the planner setting exists on PostgreSQL only"
)
@pytest.mark.parametrize("dense", [True, False], ids=["dense", "sparse"])
def test_counting_the_tabs_leaves_the_planner_settings_as_they_were(
    alice: Client, dify_app: DifyApp, monkeypatch: pytest.MonkeyPatch, dense: bool
) -> None:
    """For a reviewer most forms are routed to, the tab counts turn bitmap scans off while
    they are planned, and put them back; the counts are the same either way."""
    from inbox import views

    monkeypatch.setattr(views, "routing_is_dense", lambda user: dense)
    make_form(dify_app, node_title="one")
    with connection.cursor() as cursor:
        cursor.execute("SET enable_bitmapscan = on")

    def bitmap_scans() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SHOW enable_bitmapscan")
            return str(cursor.fetchone()[0])

    assert bitmap_scans() == "on"
    page = alice.get("/").content.decode()  # a cold cache: the tabs are counted
    assert 'Pending <span class="count">1</span>' in page
    assert bitmap_scans() == "on"


def test_after_a_change_the_list_shows_at_once_and_the_tabs_fetch_current_counts(
    alice: Client, dify_app: DifyApp
) -> None:
    """A list never waits for a recount: with the last counts on it, the tabs ask for the
    current ones as soon as they are shown, and the pager's range comes with them."""
    import html
    import re

    make_form(dify_app, node_title="first")
    first = alice.get("/?sort=newest").content.decode()
    # Nothing counted before: counted now, and nothing left to ask for.
    assert 'Pending <span class="count">1</span>' in first
    assert 'hx-trigger="load"' not in first and "1–1 of 1" in first  # noqa: RUF001

    make_form(dify_app, node_title="second")
    second = alice.get("/?sort=newest").content.decode()
    assert rows(second) == ["second", "first"]  # the rows are current
    assert 'Pending <span class="count">1</span>' in second  # the tabs, not yet
    # The range is of the rows on screen, not the last count: never "1-2 of 1".
    assert "1–2 of 2" in second  # noqa: RUF001
    found = re.search(r'<nav class="tabs" id="tabs"[^>]*hx-get="([^"]+)" hx-trigger="load"', second)
    assert found is not None, second
    url = html.unescape(found.group(1))
    assert url.startswith("/tabs/?") and "sort=newest" in url and "shown=2" in url

    tabs = alice.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert 'Pending <span class="count">2</span>' in tabs
    assert 'hx-trigger="load"' not in tabs
    assert 'id="pager-range" hx-swap-oob="true">1–2 of 2<' in tabs  # noqa: RUF001
    # The tab links still lead to the list, without the page's description.
    assert 'hx-get="/?sort=newest&amp;status=submitted"' in tabs
    # Counted once, the next load has them.
    assert 'hx-trigger="load"' not in alice.get("/?sort=newest").content.decode()


def test_the_tabs_need_a_login_and_count_only_what_the_user_may_see(
    alice: Client, dify_app: DifyApp
) -> None:
    assert Client().get("/tabs/").status_code == 302
    make_form(dify_app, node_title="mine")
    hidden = make_form(dify_app, node_title="not routed")
    hidden.assigned_groups.clear()
    tabs = alice.get("/tabs/?shown=abc", HTTP_HX_REQUEST="true").content.decode()
    assert 'Pending <span class="count">1</span>' in tabs
    # No rows on the page that asked: no range to replace.
    assert "pager-range" not in tabs


def said(response: Any) -> str:
    trigger = response.headers.get("HX-Trigger")
    return str(json.loads(trigger)["inbox:announce"]["message"]) if trigger else ""


def test_a_search_filter_tab_or_page_change_says_what_the_list_now_holds(
    alice: Client, dify_app: DifyApp
) -> None:
    for n in range(3):
        make_form(dify_app, node_title=f"refund {n}")
    htmx = {"HTTP_HX_REQUEST": "true"}
    assert said(alice.get("/", {"status": "pending"}, **htmx)) == "3 forms."
    assert said(alice.get("/", {"q": "refund 1"}, **htmx)) == "1 form."
    assert said(alice.get("/", {"q": "nothing like it"}, **htmx)) == "No forms match these filters."
    assert said(alice.get("/", {"status": "submitted"}, **htmx)) == "No forms here."
    assert (
        said(alice.get("/", {"q": "nothing like it"}, HTTP_ACCEPT_LANGUAGE="zh-hans", **htmx))
        == "没有符合筛选条件的表单。"
    )
    assert said(alice.get("/", HTTP_ACCEPT_LANGUAGE="zh-hans", **htmx)) == "3 个表单。"
    # The page loaded whole says nothing: it is read as a page.
    assert "HX-Trigger" not in alice.get("/")


def test_a_page_of_a_longer_list_is_announced_with_its_range(
    alice: Client, dify_app: DifyApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inbox import views

    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    for n in range(3):
        make_form(dify_app, node_title=f"form {n}")
    htmx = {"HTTP_HX_REQUEST": "true"}
    assert said(alice.get("/", **htmx)) == "Forms 1–2 of 3."  # noqa: RUF001
    second = alice.get("/", {"page": "2"}, HTTP_ACCEPT_LANGUAGE="zh-hans", **htmx)
    assert said(second) == "第 3–3 个表单，共 3 个。"  # noqa: RUF001


def test_a_row_s_link_is_described_by_its_app_time_left_and_status(
    alice: Client, dify_app: DifyApp
) -> None:
    other = DifyApp.objects.create(name="hiring", base_url="http://127.0.0.1:9/v1", api_key="k")
    route = Route.objects.create(app=other, name="default", reminders="")
    route.groups.add(*Group.objects.all())
    first = make_form(dify_app, node_title="Manager approval")
    second = make_form(other, node_title="Manager approval", expires_in=None)
    page = alice.get("/").content.decode()
    for form, app, left in ((first, "refunds", "Expires"), (second, "hiring", "No time limit")):
        link = re.search(
            rf'<a class="open" href="/forms/{form.public_id}/" aria-describedby="([^"]+)"', page
        )
        assert link is not None
        described = ""
        for ref in link.group(1).split():
            found = re.search(rf'id="{ref}"[^>]*>(.*?)</span>', page)
            assert found is not None, ref
            described += re.sub(r"<[^>]+>", "", found.group(1)) + " "
        assert app in described and left in described and "Pending" in described


def test_the_app_filter_lists_the_apps_a_reviewer_s_forms_come_from(
    alice: Client, dify_app: DifyApp, admin_user: User
) -> None:
    # An app routed to another team only: its forms never reach Alice, so neither does its
    # name in her filter, nor the notice that Dify refuses it.
    payroll = DifyApp.objects.create(
        name="payroll",
        base_url="http://127.0.0.1:9/v1",
        api_key="app-payroll-key-123456",
        refused_at=timezone.now(),
        refusal="401 unauthorized: Access token is invalid",
        refusal_status=401,
    )
    Route.objects.create(app=payroll, name="payroll team", reminders="").groups.add(
        Group.objects.create(name="payroll team")
    )
    make_form(payroll)
    page = alice.get("/").content.decode()
    assert f'<option value="{dify_app.pk}">refunds</option>' in page
    assert ">payroll</option>" not in page and "Dify is refusing" not in page
    # Asked for in the address, it is shown as chosen (the list is empty for her all the same).
    chosen = alice.get("/", {"app": payroll.pk, "status": "all"}).content.decode()
    assert f'<option value="{payroll.pk}" selected>payroll</option>' in chosen
    # Staff see every app.
    staff = Client()
    staff.force_login(admin_user)
    assert ">payroll</option>" in staff.get("/").content.decode()
    # Her app's route now asks another team: the forms already routed to her group stay in
    # her list, and so does their app in her filter.
    make_form(dify_app)  # routed to her group as it arrives
    refunds_route = Route.objects.get(app=dify_app)
    refunds_route.groups.set([Group.objects.get(name="payroll team")])
    from django.core.cache import cache

    cache.clear()
    page = alice.get("/").content.decode()
    assert f'<option value="{dify_app.pk}">refunds</option>' in page


def test_each_row_says_who_is_handling_its_form(
    alice: Client, dify_app: DifyApp, reviewer: User, other_reviewer: User
) -> None:
    mine, bobs, free = make_form(dify_app), make_form(dify_app), make_form(dify_app)
    mine.claim(reviewer)
    bobs.claim(other_reviewer)
    page = alice.get("/").content.decode()
    assert (
        f'<span class="chip claimed mine" id="row-{mine.public_id}-holder">You are handling this</span>'
        in page
    )
    assert (
        f'<span class="chip claimed" id="row-{bobs.public_id}-holder">Taken by Bob</span>' in page
    )
    assert f"row-{free.public_id}-holder" not in page
    # Read with the link, as the rest of the row is.
    assert f'-status row-{bobs.public_id}-holder"' in page
    chinese = alice.get("/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "Taken by" not in chinese and "You are handling this" not in chinese


def test_next_form_in_your_list_is_the_one_after_the_decided_one_held_by_nobody_else(
    alice: Client, dify_app: DifyApp, reviewer: User, other_reviewer: User
) -> None:
    # The list soonest to expire first: a, b (held by Bob), c, d (another title).
    a, b, c = (make_form(dify_app, expires_in=dt.timedelta(hours=h)) for h in (1, 2, 3))
    d = make_form(dify_app, expires_in=dt.timedelta(hours=4), node_title="Legal review")
    Form.objects.filter(pk=b.pk).update(claimed_by=other_reviewer)
    a.decide(action_id="approve", inputs={"note": "ok", "decision": "refund"}, reviewer=reviewer)

    def next_after(form: Form, listed: str = "") -> str:
        response = alice.get("/forms/next/", {"after": str(form.public_id), "list": listed})
        assert response.status_code == 302
        return str(response["Location"])

    # After the decided one, skipping the form Bob holds.
    assert next_after(a) == f"/forms/{c.public_id}/"
    # In the list the reviewer came from (its search, its sort).
    assert next_after(a, "q=Legal") == f"/forms/{d.public_id}/"
    assert next_after(d, "sort=newest") == f"/forms/{c.public_id}/"
    # Past the list's end it starts again at its top; with nothing left, back to the list.
    assert next_after(d) == f"/forms/{c.public_id}/"
    assert next_after(d, "q=Legal") == f"/?q=Legal&after={d.public_id}#place"
    # The decided form's page offers it.
    page = alice.get(f"/forms/{a.public_id}/").content.decode()
    assert f'data-next-in-list href="/forms/next/?after={a.public_id}"' in page


def test_a_chinese_decider_s_name_touches_the_chinese_around_it() -> None:
    from inbox.views import _touching

    parts = ["", "%(who)s", " \u4e8e", "%(when)s", "\u51b3\u5b9a"]
    assert _touching(parts, 2, parts[2], (True, True)) == "\u4e8e"
    assert _touching(parts, 2, parts[2], (False, False)) == " \u4e8e"


def test_the_inbox_and_the_run_page_say_an_app_dify_answers_403_for_is_not_accepted(
    alice: Client, dify_app: DifyApp
) -> None:
    form = make_form(dify_app)
    DifyApp.objects.filter(pk=dify_app.pk).update(
        refused_at=timezone.now(),
        refusal="403 forbidden: The app no longer exists.",
        refusal_status=403,
        refusal_code="forbidden",
    )
    page = alice.get("/").content.decode()
    assert (
        "Dify does not accept the app refunds (it answered 403): it may have been disabled or "
        "deleted there. New forms from this app cannot arrive until Dify accepts it again."
    ) in page
    assert "API key" not in page
    page = alice.get("/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "\u4e0d\u63a5\u53d7\u5e94\u7528 refunds" in page  # 不接受应用 refunds
    assert "\u5bc6\u94a5" not in page  # 密钥
    page = alice.get(f"/runs/{form.run.public_id}/").content.decode()
    assert (
        "Dify does not accept this app: it may have been disabled or deleted there. New forms "
        "of this run cannot arrive until Dify accepts it again."
    ) in page
    assert "API key" not in page


UNAVAILABLE = "400 app_unavailable: App unavailable, please check your app configurations."


def test_the_pages_say_an_app_dify_calls_unavailable_is_to_be_published(
    alice: Client, dify_app: DifyApp, reviewer: User
) -> None:
    form = make_form(dify_app)
    DifyApp.objects.filter(pk=dify_app.pk).update(
        refused_at=timezone.now(),
        refusal=UNAVAILABLE,
        refusal_status=400,
        refusal_code="app_unavailable",
    )
    # The inbox: no run of it can start, while the forms of its runs under way still arrive.
    page = alice.get("/").content.decode()
    assert (
        "Dify says the app refunds is not available: it may have no published workflow. No run "
        "of it can start until an administrator publishes it in Dify; the forms of its runs "
        "under way still arrive, and decisions on them are sent."
    ) in page
    assert "as it is set up here" not in page and "cannot arrive" not in page
    assert "App unavailable" not in page  # Dify's words are for administrators
    page = alice.get("/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "Dify 表示应用 refunds 不可用：它可能没有已发布的工作流。" in page  # noqa: RUF001
    # The run page: its forms still arrive, so it is no refusal of the run.
    run_page = f"/runs/{form.run.public_id}/"
    page = alice.get(run_page).content.decode()
    assert (
        "Dify says this app is not available: it may have no published workflow. No run of it "
        "can start until an administrator publishes it in Dify; this run's forms still "
        "arrive, and decisions on them are sent."
    ) in page
    assert "cannot arrive" not in page and "Dify answered 400." not in page
    assert "App unavailable" not in page
    page = alice.get(run_page, HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "此运行的表单仍会送达" in page
    # Staff are told what to do, with Dify's words.
    staff = Client()
    staff.force_login(User.objects.create_user("root", is_staff=True, is_superuser=True))
    page = staff.get(run_page).content.decode()
    assert "Publish the app in Dify: the inbox notices by itself" in page
    assert "App unavailable, please check your app configurations." in page
    # The form page says nothing before one decides (a submit needs nothing published); a
    # decision Dify held for it says what it waits for.
    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    assert 'id="app-notice"></div>' in page
    Form.objects.filter(pk=form.pk).update(status=Form.Status.SUBMITTING)
    Decision.objects.create(form=form, action_id="approve", reviewer=reviewer, held_for_app=True)
    page = alice.get(f"/forms/{form.public_id}/").content.decode()
    assert "Decision kept: Dify says this app is not available." in page
    assert (
        "It is sent as soon as Dify makes the app available again (Dify says it is not: it may "
        "have no published workflow), once an administrator publishes it in Dify."
    ) in page
    assert "fixes its key or settings" not in page and "refuses this app" not in page
    page = alice.get(f"/forms/{form.public_id}/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "管理员在 Dify 中发布该应用" in page and "Decision kept" not in page
