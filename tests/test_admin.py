from __future__ import annotations

import datetime as dt
import html
import json
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone

from inbox.models import AuditEntry, Decision, DifyApp, Form, Run, refollow_delay

pytestmark = pytest.mark.smoke


def test_admin_lists_apps_with_a_masked_key(
    client: Client, admin_user: object, dify_app: DifyApp
) -> None:
    client.force_login(admin_user)
    page = client.get("/admin/inbox/difyapp/").content.decode()
    assert "app-…3456" in page
    assert "app-secret-key-123456" not in page


def test_admin_change_form_never_echoes_the_key(
    client: Client, admin_user: object, dify_app: DifyApp
) -> None:
    client.force_login(admin_user)
    page = client.get(f"/admin/inbox/difyapp/{dify_app.pk}/change/").content.decode()
    assert "app-secret-key-123456" not in page
    assert "Current key: app-…3456" in page


def test_saving_with_an_empty_key_keeps_the_current_one(
    client: Client, admin_user: object, dify_app: DifyApp
) -> None:
    client.force_login(admin_user)
    response = client.post(
        f"/admin/inbox/difyapp/{dify_app.pk}/change/",
        {
            "name": "refunds",
            "base_url": "http://127.0.0.1:9/v1",
            "api_key": "",
            "mode": "workflow",
            "is_active": "on",
        },
    )
    assert response.status_code == 302
    assert DifyApp.objects.get(pk=dify_app.pk).api_key == "app-secret-key-123456"
    # Saved as it was: its settings' date (the reconcile counts a run's 404s from it) stays.
    assert DifyApp.objects.get(pk=dify_app.pk).updated_at == dify_app.updated_at


def test_creating_an_app_requires_a_key(client: Client, admin_user: object) -> None:
    client.force_login(admin_user)
    response = client.post(
        "/admin/inbox/difyapp/add/",
        {"name": "new", "base_url": "http://127.0.0.1:9/v1", "api_key": "", "mode": "workflow"},
    )
    assert "An API key is required." in response.content.decode()
    assert not DifyApp.objects.filter(name="new").exists()


@pytest.mark.parametrize(
    "path", ["run", "form", "decision", "upload", "messagefile", "runevent", "auditentry"]
)
def test_every_model_has_a_working_admin_list(
    client: Client, admin_user: object, path: str
) -> None:
    client.force_login(admin_user)
    assert client.get(f"/admin/inbox/{path}/").status_code == 200
    # And in Chinese, with its labels and filters.
    assert client.get(f"/admin/inbox/{path}/", HTTP_ACCEPT_LANGUAGE="zh-hans").status_code == 200


def test_audit_entries_are_read_only(client: Client, admin_user: object) -> None:
    client.force_login(admin_user)
    assert client.get("/admin/inbox/auditentry/add/").status_code == 403


def _refused(app: DifyApp, refusal: str = "401 unauthorized: Access token is invalid") -> None:
    DifyApp.objects.filter(pk=app.pk).update(
        refused_at=timezone.now(), refusal=refusal, refusal_status=int(refusal[:3])
    )


def test_the_app_list_shows_each_app_s_connection_health_and_filters_by_it(
    client: Client, admin_user: object, dify_app: DifyApp
) -> None:
    DifyApp.objects.create(name="payroll", base_url="http://127.0.0.1:9/v1", api_key="k-1")
    _refused(dify_app)
    client.force_login(admin_user)
    page = client.get("/admin/inbox/difyapp/").content.decode()
    assert "connection to Dify" in page
    assert "Refused since " in page and ": 401 unauthorized: Access token is invalid" in page
    # Never accepted nor refused by Dify yet: not said to be OK.
    assert '<td class="field-health">Not checked yet: test the connection.</td>' in page
    refused = client.get("/admin/inbox/difyapp/?health=refused").content.decode()
    assert "refunds" in refused and "payroll" not in refused
    # The filter says what the column says: an app Dify never answered for is not "OK".
    ok = client.get("/admin/inbox/difyapp/?health=ok").content.decode()
    assert "payroll" not in ok and "refunds" not in ok
    unchecked = client.get("/admin/inbox/difyapp/?health=not_checked").content.decode()
    assert "payroll" in unchecked and "refunds" not in unchecked
    AuditEntry.objects.create(
        verb="app_connection_tested",
        object_type="difyapp",
        object_id=str(DifyApp.objects.get(name="payroll").pk),
        details={"result": "connected", "mode": "workflow"},
    )
    ok = client.get("/admin/inbox/difyapp/?health=ok").content.decode()
    assert "payroll" in ok and "refunds" not in ok
    assert "payroll" not in client.get("/admin/inbox/difyapp/?health=not_checked").content.decode()
    change = client.get(f"/admin/inbox/difyapp/{dify_app.pk}/change/").content.decode()
    assert "401 unauthorized: Access token is invalid" in change
    assert 'name="refusal"' not in change and 'name="refused_at"' not in change


def _change(client: Client, app: DifyApp, api_key: str) -> Any:
    return client.post(
        f"/admin/inbox/difyapp/{app.pk}/change/",
        {
            "name": app.name,
            "base_url": app.base_url,
            "api_key": api_key,
            "mode": "workflow",
            "is_active": "on",
        },
    )


def test_saving_a_new_key_clears_the_refusal_and_hands_the_given_up_runs_back_at_once(
    client: Client, admin_user: object, dify_app: DifyApp
) -> None:
    given_up = Run.objects.create(
        app=dify_app,
        workflow_run_id="R-1",
        dify_user="u",
        follow_wanted=False,
        needs_reconcile=True,
        status=Run.Status.PAUSED,
        # Given up on many times with the old key: it waits no longer.
        give_ups=5,
        refollow_after=timezone.now() + dt.timedelta(minutes=16),
    )
    finished = Run.objects.create(
        app=dify_app,
        workflow_run_id="R-2",
        dify_user="u",
        follow_wanted=False,
        needs_reconcile=True,
        status=Run.Status.SUCCEEDED,
    )
    _refused(dify_app)
    client.force_login(admin_user)
    assert _change(client, dify_app, "app-new-key-987654").status_code == 302
    app = DifyApp.objects.get(pk=dify_app.pk)
    assert app.api_key == "app-new-key-987654"
    assert (app.refused_at, app.refusal, app.refusal_status) == (None, "", None)
    given_up.refresh_from_db()
    assert given_up.follow_wanted and given_up.follow_snapshot
    assert (given_up.give_ups, given_up.refollow_after) == (0, None)
    assert not Run.objects.get(pk=finished.pk).follow_wanted
    assert AuditEntry.objects.get(verb="app_accepted").details == {"source": "new settings"}
    # The audit trail says who changed the key, never what it is.
    changed = AuditEntry.objects.get(verb="app_changed")
    assert changed.actor == admin_user and changed.details["fields"] == ["api_key"]
    # Only its fingerprint: a new key told from the same one typed again.
    assert changed.details["values"] == {
        "api_key": {
            "before": _fingerprint("app-secret-key-123456"),
            "after": _fingerprint("app-new-key-987654"),
        }
    }
    assert "app-new-key-987654" not in json.dumps(changed.details)
    assert "app-new-key-987654" not in json.dumps(changed.details) + changed.object_repr


def test_saving_without_a_new_key_keeps_the_refusal(
    client: Client, admin_user: object, dify_app: DifyApp
) -> None:
    _refused(dify_app, "403 forbidden: The app's API service has been disabled.")
    client.force_login(admin_user)
    assert _change(client, dify_app, "").status_code == 302
    app = DifyApp.objects.get(pk=dify_app.pk)
    assert app.refusal == "403 forbidden: The app's API service has been disabled."
    assert app.refused_at is not None and app.refusal_status == 403


def test_saving_another_kind_of_app_asks_dify_again(
    client: Client, admin_user: object, dify_app: DifyApp
) -> None:
    # Set up as a workflow; Dify says it is not one.
    DifyApp.objects.filter(pk=dify_app.pk).update(mode="workflow")
    _refused(dify_app, "400 not_workflow_app: Please check if your app mode matches the API route.")
    DifyApp.objects.filter(pk=dify_app.pk).update(refusal_code="not_workflow_app")
    client.force_login(admin_user)
    response = client.post(
        f"/admin/inbox/difyapp/{dify_app.pk}/change/",
        {
            "name": dify_app.name,
            "base_url": dify_app.base_url,
            "api_key": "",
            "mode": "chatflow",
            "is_active": "on",
        },
    )
    assert response.status_code == 302
    app = DifyApp.objects.get(pk=dify_app.pk)
    assert app.mode == "chatflow" and app.refused_at is None and app.refusal_code == ""


def test_a_refused_app_says_how_many_decisions_wait_for_its_fix(
    client: Client, admin_user: User, dify_app: DifyApp
) -> None:
    _refused(dify_app)
    run = Run.objects.create(app=dify_app, workflow_run_id="R-held", status="paused")
    for n in range(2):
        form = Form.objects.create(
            run=run, form_id=f"F-held-{n}", form_token=f"t-{n}", node_id="n", status="submitting"
        )
        Decision.objects.create(
            form=form, action_id="approve", reviewer=admin_user, held_for_app=True
        )
    client.force_login(admin_user)
    page = client.get("/admin/inbox/difyapp/").content.decode()
    assert "(2 decisions wait to be sent.)" in page
    page = client.get("/admin/inbox/difyapp/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "decisions wait" not in page and "（2 个决定等待发送。）" in page  # noqa: RUF001


def test_an_app_dify_does_not_answer_for_is_not_shown_as_ok(
    client: Client, admin_user: User, dify_app: DifyApp
) -> None:
    run = Run.objects.create(app=dify_app, workflow_run_id="R-down", status="paused")
    for n in range(3):
        form = Form.objects.create(
            run=run, form_id=f"F-down-{n}", form_token=f"t-{n}", node_id="n", status="submitting"
        )
        Decision.objects.create(
            form=form,
            action_id="approve",
            reviewer=admin_user,
            attempts=1 if n < 2 else 0,
            dify_unreachable=n < 2,  # the third is simply queued, never tried yet
            next_attempt_at=timezone.now() + dt.timedelta(minutes=1),
        )
    client.force_login(admin_user)
    page = client.get("/admin/inbox/difyapp/").content.decode()
    assert "Not reachable: 2 decisions wait for Dify to answer." in page
    # Dify takes the connection and does not answer in time (it hangs): not OK either.
    Decision.objects.update(dify_unreachable=False)
    page = client.get("/admin/inbox/difyapp/").content.decode()
    assert "Not answering: 2 decisions are being sent again." in page
    assert '<td class="field-health">OK</td>' not in page
    # Nor while they are being sent again, for their second time (whether Dify answers this
    # time is not known yet: said as it is).
    Decision.objects.filter(attempts=1).update(status=Decision.Status.DELIVERING, attempts=2)
    page = client.get("/admin/inbox/difyapp/").content.decode()
    assert "2 decisions for this app are being sent to Dify now." in page
    assert '<td class="field-health">OK</td>' not in page
    Decision.objects.update(status=Decision.Status.DELIVERED)
    page = client.get("/admin/inbox/difyapp/").content.decode()
    assert "Not reachable:" not in page and '<td class="field-health">OK</td>' in page


def test_the_reconcile_hands_a_given_up_run_back_later_with_each_give_up_in_a_row() -> None:
    minutes = [refollow_delay(n).total_seconds() / 60 for n in (0, 1, 2, 3, 4, 5, 6, 7, 1000)]
    assert minutes == [0, 0, 2, 4, 8, 16, 30, 30, 30]


@pytest.mark.parametrize(
    ("state", "says"),
    [
        ({"status": Run.Status.SUCCEEDED}, "Ended: nothing more to read."),
        (
            {"lease_owner": "host:1:ab", "lease_expires_at": "soon"},
            "Read now by the follower host:1:ab.",
        ),
        ({"follow_wanted": True}, "Waiting for a follower to read it."),
        ({"events_unavailable": True, "needs_reconcile": True}, "Dify does not show"),
        (
            {"needs_reconcile": True, "give_ups": 1, "refollow_after": "past"},
            "gave up on its stream 1 time in a row. The reconcile hands it back at its next pass.",
        ),
        (
            {"needs_reconcile": True, "give_ups": 3, "refollow_after": "soon"},
            "gave up on its stream 3 times in a row. The reconcile hands it back no later than",
        ),
        ({}, "No stream open: it waits for a person"),
    ],
)
def test_a_run_s_admin_page_says_who_reads_its_events_or_why_nobody_does(
    client: Client, admin_user: object, dify_app: DifyApp, state: dict[str, Any], says: str
) -> None:
    when = {
        "soon": timezone.now() + dt.timedelta(minutes=4),
        "past": timezone.now() - dt.timedelta(seconds=1),
    }
    values = {k: when.get(v, v) if isinstance(v, str) else v for k, v in state.items()}
    fields: dict[str, Any] = {"status": Run.Status.PAUSED, "follow_wanted": False, **values}
    run = Run.objects.create(app=dify_app, workflow_run_id="R-9", dify_user="u", **fields)
    client.force_login(admin_user)
    page = client.get(f"/admin/inbox/run/{run.pk}/change/").content.decode()
    assert says in page
    # A time is not the end of a sentence: "6:47 a.m." would end in "a.m..".
    assert "a.m.." not in page and "p.m.." not in page


def _records(app: DifyApp, user: User) -> dict[str, Any]:
    run = Run.objects.create(app=app, workflow_run_id="R-rec", dify_user="u", status="paused")
    form = Form.objects.create(
        run=run, form_id="F-rec", form_token="tok-secret-rec", node_id="n", status="failed"
    )
    decision = Decision.objects.create(
        form=form, action_id="approve", reviewer=user, status=Decision.Status.FAILED
    )
    return {"run": run, "form": form, "decision": decision}


@pytest.mark.parametrize("model", ["run", "form", "decision"])
def test_runs_forms_and_decisions_are_shown_in_the_admin_never_edited_added_or_deleted(
    client: Client, admin_user: User, dify_app: DifyApp, model: str
) -> None:
    record = _records(dify_app, admin_user)[model]
    client.force_login(admin_user)
    base = f"/admin/inbox/{model}/"
    page = client.get(f"{base}{record.pk}/change/")
    assert page.status_code == 200
    body = page.content.decode()
    assert f"View {model}" in body and 'name="_save"' not in body
    assert "tok-secret-rec" not in body
    # A hand-made POST changes nothing.
    assert client.post(f"{base}{record.pk}/change/", {"status": "queued"}).status_code == 403
    assert type(record).objects.get(pk=record.pk).status == record.status
    assert client.get(f"{base}add/").status_code == 403
    assert client.post(f"{base}{record.pk}/delete/", {"post": "yes"}).status_code == 403
    assert type(record).objects.filter(pk=record.pk).exists()


def test_a_run_and_a_form_link_to_their_own_pages_from_the_admin(
    client: Client, admin_user: User, dify_app: DifyApp
) -> None:
    records = _records(dify_app, admin_user)
    client.force_login(admin_user)
    for model in ("run", "form"):
        record = records[model]
        body = client.get(f"/admin/inbox/{model}/{record.pk}/change/").content.decode()
        assert "View on site" in body
    assert records["run"].get_absolute_url() == f"/runs/{records['run'].public_id}/"
    assert records["form"].get_absolute_url() == f"/forms/{records['form'].public_id}/"


def test_the_admin_s_actions_still_act_on_read_only_records(
    client: Client, admin_user: User, dify_app: DifyApp
) -> None:
    records = _records(dify_app, admin_user)
    client.force_login(admin_user)
    # From the list of failed decisions, as an administrator finds them: the one retried
    # leaves that list, and is still counted as retried, none as skipped.
    response = client.post(
        "/admin/inbox/decision/?status__exact=failed",
        {"action": "retry_delivery", "_selected_action": [records["decision"].pk]},
        follow=True,
    )
    assert "1 decision(s) queued for delivery again; 0 skipped" in response.content.decode()
    records["decision"].refresh_from_db()
    assert records["decision"].status == Decision.Status.QUEUED
    # The stop action asks Dify (here: nobody listens on the app's address) and says so.
    Run.objects.filter(pk=records["run"].pk).update(task_id="T-1", status="running")
    response = client.post(
        "/admin/inbox/run/",
        {"action": "stop_run", "_selected_action": [records["run"].pk]},
        follow=True,
    )
    assert "R-rec: not stopped: POST /workflows/tasks/T-1/stop" in response.content.decode()


def test_the_admin_reads_in_chinese(client: Client, admin_user: User, dify_app: DifyApp) -> None:
    """Every model and column of the records an administrator reads has its Chinese name."""
    _records(dify_app, admin_user)
    client.force_login(admin_user)
    index = client.get("/admin/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    for name in ("运行", "表单", "决定", "上传", "运行事件", "审计记录", "API 令牌"):
        assert f">{name}</a>" in index, name
    page = client.get("/admin/inbox/decision/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    for column in ("操作", "状态", "尝试次数", "最后错误"):
        assert column in page, column
    for untranslated in ("Action id", "Attempts", "Last error", "decision 来"):
        assert untranslated not in page, untranslated


def test_moving_an_app_to_another_server_asks_for_its_key_again(
    client: Client, admin_user: User, dify_app: DifyApp
) -> None:
    client.force_login(admin_user)

    def change(base_url: str, api_key: str = "") -> Any:
        return client.post(
            f"/admin/inbox/difyapp/{dify_app.pk}/change/",
            {
                "name": dify_app.name,
                "base_url": base_url,
                "api_key": api_key,
                "mode": "workflow",
                "is_active": "on",
            },
        )

    # The kept key would go to whoever answers there: refused without the key typed.
    refused = change("http://elsewhere.example:5309/v1")
    assert refused.status_code == 200
    assert "Enter the API key again to move this app to another server" in (
        refused.content.decode()
    )
    assert DifyApp.objects.get(pk=dify_app.pk).base_url == "http://127.0.0.1:9/v1"
    # Another path on the same server keeps the key; another server with the key typed is taken.
    assert change("http://127.0.0.1:9/api/v1").status_code == 302
    assert change("http://elsewhere.example:5309/v1", "app-new-key").status_code == 302
    moved = DifyApp.objects.get(pk=dify_app.pk)
    assert (moved.base_url, moved.api_key) == ("http://elsewhere.example:5309/v1", "app-new-key")


# --- What the trail keeps of an app's change, and of what deletions take with them ---


def _fingerprint(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()[:8]


def test_an_app_s_change_keeps_its_old_and_new_server_and_a_fingerprint_of_a_new_key(
    client: Client, admin_user: User, dify_app: DifyApp
) -> None:
    client.force_login(admin_user)
    moved = client.post(
        f"/admin/inbox/difyapp/{dify_app.pk}/change/",
        {
            "name": "refunds",
            "base_url": "http://localhost:9/v1",
            "api_key": "app-new-key-777",
            "mode": "chatflow",
        },
    )
    assert moved.status_code == 302
    entry = AuditEntry.objects.get(verb="app_changed")
    assert entry.actor == admin_user
    assert entry.details["fields"] == ["api_key", "base_url", "is_active", "mode"]
    assert entry.details["values"] == {
        "base_url": {"before": "http://127.0.0.1:9/v1", "after": "http://localhost:9/v1"},
        "mode": {"before": "workflow", "after": "chatflow"},
        "is_active": {"before": True, "after": False},
        "api_key": {
            "before": _fingerprint("app-secret-key-123456"),
            "after": _fingerprint("app-new-key-777"),
        },
    }
    assert "app-new-key-777" not in json.dumps(entry.details)
    # The same key typed again: named as a field of the form, but no new fingerprint.
    _change(client, dify_app, "app-new-key-777")
    again = AuditEntry.objects.filter(verb="app_changed").order_by("-id")[0]
    assert "api_key" not in again.details["values"]
    assert again.details["values"]["is_active"] == {"before": False, "after": True}


def test_deleting_an_app_records_the_routes_it_takes_with_it(
    admin_client: Client, admin_user: User, reviewer: User
) -> None:
    from tests.reach.factories import route

    app = DifyApp.objects.create(name="tmp-app", base_url="http://127.0.0.1:9/v1", api_key="k")
    made = route(app, node="n1", users=[reviewer], recipients=["ann@example.com"])
    made.groups.add(Group.objects.create(name="finance"))
    # The confirmation names what goes with the app as it reads, not as Django's rows.
    confirm = admin_client.get(f"/admin/inbox/difyapp/{app.pk}/delete/").content.decode()
    assert "Route reviewer: alice" in confirm and "Route reviewer group: finance" in confirm
    assert "object (" not in confirm
    deleted = admin_client.post(f"/admin/inbox/difyapp/{app.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 302
    # Which server's app it was, as a change keeps it: with the same names on two servers,
    # the trail tells them apart.
    entry = AuditEntry.objects.get(verb="app_deleted", object_id=str(app.pk))
    assert entry.actor == admin_user
    assert entry.details["values"] == {
        "name": {"before": "tmp-app"},
        "base_url": {"before": "http://127.0.0.1:9/v1"},
        "mode": {"before": "workflow"},
        "is_active": {"before": True},
        "api_key": {"before": _fingerprint("k")},
    }
    gone = AuditEntry.objects.get(verb="route_deleted", object_id=str(made.pk))
    assert gone.actor == admin_user
    assert gone.details["reason"] == "app deleted" and gone.details["app"] == "tmp-app"
    assert gone.details["values"]["users"] == {"before": ["alice"]}
    assert gone.details["values"]["recipients"] == {"before": ["ann@example.com"]}


def test_deleting_an_account_or_a_group_records_the_routes_and_holds_it_changes(
    admin_client: Client, admin_user: User, reviewer: User, other_reviewer: User
) -> None:
    from django.contrib.auth.models import Group

    from tests.reach.factories import make_form, route

    app = DifyApp.objects.create(name="contracts", base_url="http://127.0.0.1:9/v1", api_key="k")
    editors = Group.objects.create(name="editors")
    asks = route(app, users=[reviewer, other_reviewer], groups=[editors])
    form = make_form(app)
    form.claim(reviewer)
    assert (
        admin_client.post(f"/admin/auth/user/{reviewer.pk}/delete/", {"post": "yes"}).status_code
        == 302
    )
    changed = AuditEntry.objects.get(verb="route_changed", object_id=str(asks.pk))
    assert changed.actor == admin_user
    assert changed.details["reason"] == "user deleted"
    assert changed.details["values"] == {"users": {"before": ["alice", "bob"], "after": ["bob"]}}
    released = AuditEntry.objects.get(verb="form_released", object_id=str(form.pk))
    assert released.actor == admin_user
    assert (released.details["previous"], released.details["reason"]) == ("alice", "user deleted")
    assert released.details["run"] == str(form.run.public_id)

    assert (
        admin_client.post(f"/admin/auth/group/{editors.pk}/delete/", {"post": "yes"}).status_code
        == 302
    )
    changed = AuditEntry.objects.filter(verb="route_changed", object_id=str(asks.pk)).order_by(
        "-id"
    )[0]
    assert changed.actor == admin_user and changed.details["reason"] == "group deleted"
    assert changed.details["values"] == {"groups": {"before": ["editors"], "after": []}}
    # The waiting form lost both: who was left to ask, each time.
    lost = AuditEntry.objects.filter(verb="form_unassigned", object_id=str(form.pk)).order_by("id")
    assert [(e.details["removed"], e.details["reason"]) for e in lost] == [
        ({"users": ["alice"]}, "user deleted"),
        ({"groups": ["editors"]}, "group deleted"),
    ]
    assert (lost[0].details["users"], lost[0].details["groups"]) == (["bob"], ["editors"])
    assert (lost[1].details["users"], lost[1].details["groups"]) == (["bob"], [])
    assert not lost[1].details["nobody_left"] and lost[1].actor == admin_user
    assert lost[1].details["run"] == str(form.run.public_id)
    # The last one gone: the form is left to the administrators, and the trail says so.
    admin_client.post(f"/admin/auth/user/{other_reviewer.pk}/delete/", {"post": "yes"})
    last = AuditEntry.objects.filter(verb="form_unassigned", object_id=str(form.pk)).latest("id")
    assert last.details["removed"] == {"users": ["bob"]} and last.details["nobody_left"]


# --- Who made a record, once their account is gone; finding a run's records ---


def _upload(form: Form, **fields: Any) -> Any:
    from inbox.models import Upload

    fields.setdefault("input_name", "files")
    fields.setdefault("size", 10)
    fields.setdefault("category", "document")
    return Upload.objects.create(form=form, upload_file_id="up-1", **fields)


def test_a_deleted_account_s_runs_and_uploads_still_name_it(
    admin_client: Client, reviewer: User, simulator: Any, simulator_dify_app: Any
) -> None:
    from inbox.runs import start_run
    from inbox.simulator.testing import sample_inputs

    run = start_run(
        simulator_dify_app(),
        inputs=sample_inputs(simulator.apps["refund-approval"]),
        dify_user="inbox-alice",
        started_by=reviewer,
        source="ui",
    )
    assert run.started_by_username == "alice"
    form = Form.objects.create(run=run, form_id="F-up", form_token="t", node_id="n")
    upload = _upload(form, name="contract1.pdf", uploaded_by=reviewer, uploaded_by_username="alice")
    _upload(form, name="guest.png", guest_email="zhang.wei@example.com", category="image")
    reviewer.delete()
    run.refresh_from_db()
    upload.refresh_from_db()
    assert (run.started_by, run.started_by_username) == (None, "alice")
    assert (upload.uploaded_by, upload.uploaded_by_username) == (None, "alice")
    runs = admin_client.get("/admin/inbox/run/").content.decode()
    assert "alice (account deleted)" in runs
    assert (
        "alice (account deleted)"
        in admin_client.get(f"/admin/inbox/run/{run.pk}/change/").content.decode()
    )
    uploads = admin_client.get("/admin/inbox/upload/").content.decode()
    assert "alice (account deleted)" in uploads and "zhang.wei@example.com" in uploads
    for q, found, not_found in (
        ("alice", "contract1.pdf", "guest.png"),
        ("zhang.wei@example.com", "guest.png", "contract1.pdf"),
        (str(form.public_id), "contract1.pdf", "nothing-else"),
    ):
        page = admin_client.get("/admin/inbox/upload/", {"q": q}).content.decode()
        assert found in page and not_found not in page, q
    assert (
        "alice (account deleted)"
        in admin_client.get("/admin/inbox/run/", {"q": "alice"}).content.decode()
    )


def test_the_api_names_who_started_a_run_once_their_account_is_gone(
    client: Client, admin_user: User, dify_app: DifyApp
) -> None:
    from inbox.models import ApiToken

    staff = User.objects.create_user("carol", password="pw-carol-123", is_staff=True)
    run = Run.objects.create(
        app=dify_app, dify_user="u", started_by=None, started_by_username="erin", source="ui"
    )
    _, raw = ApiToken.issue(staff, "t")
    body = client.get(f"/api/v1/runs/{run.public_id}", HTTP_AUTHORIZATION=f"Bearer {raw}").json()
    assert body["started_by"] == "erin"


def test_the_migration_names_who_started_runs_and_made_uploads(
    admin_user: User, reviewer: User, dify_app: DifyApp
) -> None:
    import importlib

    from django.apps import apps

    run = Run.objects.create(app=dify_app, dify_user="u", started_by=reviewer)
    form = Form.objects.create(run=run, form_id="F-m", form_token="t", node_id="n")
    upload = _upload(form, name="a.pdf", uploaded_by=admin_user)
    migration = importlib.import_module("inbox.migrations.0027_kept_usernames")
    migration.name_starters_and_uploaders(apps, None)
    run.refresh_from_db()
    upload.refresh_from_db()
    assert (run.started_by_username, upload.uploaded_by_username) == ("alice", "admin")


def test_a_run_s_decisions_forms_and_entries_are_found_by_its_public_ids(
    admin_client: Client, admin_user: User, dify_app: DifyApp
) -> None:
    from inbox.models import Upload

    records = _records(dify_app, admin_user)
    run, form, decision = records["run"], records["form"], records["decision"]
    other_run = Run.objects.create(app=dify_app, workflow_run_id="R-other", dify_user="u")
    other_form = Form.objects.create(run=other_run, form_id="F-other", node_id="n", status="failed")
    other = {
        "decision": Decision.objects.create(
            form=other_form, action_id="approve", guest_email="guest@example.com"
        )
    }
    for q in (decision.public_id, form.public_id, run.public_id):
        page = admin_client.get("/admin/inbox/decision/", {"q": str(q)}).content.decode()
        assert str(decision.public_id) in page and str(other["decision"].public_id) not in page, q
    page = admin_client.get("/admin/inbox/form/", {"q": str(run.public_id)}).content.decode()
    assert "1 form" in page or "1 result" in page
    assert f"/admin/inbox/form/{form.pk}/change/" in page
    # Made by a reviewer, or by a guest.
    by = admin_client.get("/admin/inbox/decision/", {"made_by": "guest"}).content.decode()
    assert str(other["decision"].public_id) in by and str(decision.public_id) not in by
    by = admin_client.get("/admin/inbox/decision/", {"made_by": "reviewer"}).content.decode()
    assert str(decision.public_id) in by and str(other["decision"].public_id) not in by
    # A form's and a decision's entries name their run: one search of the trail finds them.
    # Read afresh, as the verbs read them: the run's id is looked up.
    AuditEntry.record("form_reopened", Form.objects.get(pk=form.pk))
    AuditEntry.record("decision_made", Decision.objects.get(pk=decision.pk))
    Upload.objects.create(
        form=form, input_name="f", upload_file_id="u", name="x", size=1, category="image"
    )
    AuditEntry.record("file_uploaded", Upload.objects.get(form=form))
    trail = admin_client.get("/admin/inbox/auditentry/", {"q": str(run.public_id)})
    verbs = {entry.verb for entry in trail.context["cl"].result_list}
    assert {"form_reopened", "decision_made", "file_uploaded"} <= verbs
    # Each list of dated records has its date hierarchy.
    for model in ("decision", "upload"):
        assert (
            admin_client.get(f"/admin/inbox/{model}/").context["cl"].date_hierarchy == "created_at"
        )


def test_the_admin_shows_the_trail_s_codes_by_their_labels_in_english_and_chinese(
    admin_client: Client, admin_user: User, dify_app: DifyApp
) -> None:
    records = _records(dify_app, admin_user)
    Run.objects.filter(pk=records["run"].pk).update(source="api")
    _upload(records["form"], name="scan.png", category="image")
    AuditEntry.record("user_deleted", admin_user, actor=admin_user)
    AuditEntry.record("form_reopened", records["form"], actor=admin_user)
    english = admin_client.get("/admin/inbox/auditentry/").content.decode()
    for label in ("Account deleted", "Form given back for a new decision", "Dify app", "User"):
        assert label in english, label
    zh = {"HTTP_ACCEPT_LANGUAGE": "zh-hans"}
    chinese = admin_client.get("/admin/inbox/auditentry/", **zh).content.decode()
    for label in ("账户已删除", "表单已退回重新决定", "Dify 应用", "用户"):
        assert label in chinese, label
    for code in (">user_deleted<", ">form_reopened<", ">difyapp<"):
        assert code not in chinese, code
    # The filter keeps the stored code in its address.
    assert '<a href="?verb=user_deleted">' in chinese
    filtered = admin_client.get("/admin/inbox/auditentry/", {"verb": "user_deleted"})
    assert [e.verb for e in filtered.context["cl"].result_list] == ["user_deleted"]
    run_page = admin_client.get(
        f"/admin/inbox/run/{records['run'].pk}/change/", **zh
    ).content.decode()
    assert "JSON API" in run_page
    uploads = admin_client.get("/admin/inbox/upload/", **zh).content.decode()
    assert "图片" in uploads and ">image<" not in uploads
    # Detail times to the second, with their zone, as the trail's.
    for record in (records["decision"], records["run"]):
        model = record._meta.model_name
        page = admin_client.get(f"/admin/inbox/{model}/{record.pk}/change/", **zh)
        assert page.status_code == 200
        second = timezone.localtime(record.created_at).strftime("%Y-%m-%d %H:%M:%S")
        assert f"{second} +00:00 (UTC)" in page.content.decode(), model


# --- Two Dify servers in one inbox: apps that share a server and key, searches by server ---


def _add_app(client: Client, **fields: str) -> Any:
    return client.post(
        "/admin/inbox/difyapp/add/",
        {"mode": "workflow", "is_active": "on", **fields},
        follow=True,
    )


def test_saving_an_app_with_another_app_s_server_and_key_warns_and_the_list_shows_fingerprints(
    admin_client: Client, dify_app: DifyApp
) -> None:
    # The settings of the existing app under another name: saved, with a warning naming it.
    page = _add_app(
        admin_client,
        name="refunds-dup",
        base_url="http://127.0.0.1:9/v1/",
        api_key="app-secret-key-123456",
    ).content.decode()
    # (The admin writes a message with a capital.)
    assert "Refunds-dup: “refunds” already uses this server (http://127.0.0.1:9)" in page
    assert "app-secret-key-123456" not in page
    # The same key on another server (a staging Dify sharing it) is another app.
    page = _add_app(
        admin_client,
        name="refunds-staging",
        base_url="http://localhost:9/v1",
        api_key="app-secret-key-123456",
    ).content.decode()
    assert "already uses this server" not in page
    # The list shows each key's fingerprint beside its mask: the two that share one are seen.
    listing = admin_client.get("/admin/inbox/difyapp/").content.decode()
    assert listing.count(_fingerprint("app-secret-key-123456")) == 3
    assert "app-secret-key-123456" not in listing
    zh = admin_client.get("/admin/inbox/difyapp/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert "\u5bc6\u94a5\u6307\u7eb9" in zh.content.decode()  # the column, in Chinese


def test_an_app_name_differing_only_by_case_or_spaces_is_refused_in_the_admin(
    admin_client: Client, dify_app: DifyApp
) -> None:
    page = _add_app(
        admin_client, name=" Refunds ", base_url="http://127.0.0.1:9/v1", api_key="k-2"
    ).content.decode()
    assert "The app “refunds” already has this name but for case or spaces" in page
    assert DifyApp.objects.count() == 1
    # Its own name in another case is the app's to take.
    renamed = admin_client.post(
        f"/admin/inbox/difyapp/{dify_app.pk}/change/",
        {"name": "Refunds", "base_url": dify_app.base_url, "mode": "workflow", "api_key": ""},
    )
    assert renamed.status_code == 302
    assert DifyApp.objects.get().name == "Refunds"


def test_runs_forms_and_decisions_are_searched_by_their_app_s_server(
    admin_client: Client, dify_app: DifyApp, reviewer: User
) -> None:
    from tests.reach.factories import make_form

    staging = DifyApp.objects.create(
        name="refunds-stg", base_url="http://127.0.0.1:8713/v1", api_key="app-stg"
    )
    here, there = make_form(dify_app), make_form(staging)
    for form in (here, there):
        Decision.objects.create(form=form, action_id="approve", reviewer=reviewer)
    for model, shown in (
        ("run", lambda form: str(form.run)),
        ("form", lambda form: f"/admin/inbox/form/{form.pk}/change/"),
        ("decision", lambda form: str(form.decisions.get().public_id)),
    ):
        page = admin_client.get(f"/admin/inbox/{model}/", {"q": "8713"}).content.decode()
        assert shown(there) in page, model
        assert shown(here) not in page, model


def test_message_files_are_shown_in_the_admin_as_uploads_are_and_on_their_run_s_page(
    admin_client: Client, admin_user: User, reviewer: User, dify_app: DifyApp
) -> None:
    from inbox.models import MessageFile

    run = _records(dify_app, admin_user)["run"]
    other = Run.objects.create(app=dify_app, workflow_run_id="R-other", dify_user="u")
    sent = MessageFile.objects.create(
        app=dify_app,
        dify_user="inbox-alice",
        upload_file_id="dify-up-77",
        name="parcel.png",
        size=2048,
        mime_type="image/png",
        extension=".png",
        category="image",
        uploaded_by=reviewer,
        uploaded_by_username="alice",
    )
    sent.runs.add(run)
    MessageFile.objects.create(
        app=dify_app,
        dify_user="inbox-bob",
        upload_file_id="dify-up-78",
        name="notes.txt",
        size=10,
        category="document",
    )
    listed = admin_client.get("/admin/inbox/messagefile/").content.decode()
    assert "parcel.png" in listed and "notes.txt" in listed and "inbox-alice" in listed
    for q, found in (
        ("alice", ["parcel.png"]),
        (str(run.public_id), ["parcel.png"]),
        ("dify-up-78", ["notes.txt"]),
        (str(other.public_id), []),
    ):
        page = admin_client.get("/admin/inbox/messagefile/", {"q": q})
        assert [f.name for f in page.context["cl"].result_list] == found, q
    filtered = admin_client.get("/admin/inbox/messagefile/", {"category": "image"})
    assert [f.name for f in filtered.context["cl"].result_list] == ["parcel.png"]
    # Shown, never edited, added or deleted; the runs it went with are links.
    page = admin_client.get(f"/admin/inbox/messagefile/{sent.pk}/change/").content.decode()
    assert "View message file" in page and 'name="_save"' not in page
    assert f"/admin/inbox/run/{run.pk}/change/" in page and "dify-up-77" in page
    assert admin_client.get("/admin/inbox/messagefile/add/").status_code == 403
    response = admin_client.post(f"/admin/inbox/messagefile/{sent.pk}/change/", {"name": "x"})
    assert response.status_code == 403
    assert admin_client.post(f"/admin/inbox/messagefile/{sent.pk}/delete/").status_code == 403
    assert MessageFile.objects.get(pk=sent.pk).name == "parcel.png"
    # The run's page lists the files its message was sent with; in Chinese too.
    page = admin_client.get(f"/admin/inbox/run/{run.pk}/change/").content.decode()
    assert "Message files" in page
    assert f"/admin/inbox/messagefile/{sent.pk}/change/" in page and "notes.txt" not in page
    zh = admin_client.get(
        f"/admin/inbox/run/{run.pk}/change/", HTTP_ACCEPT_LANGUAGE="zh-hans"
    ).content.decode()
    assert "parcel.png" in zh and "\u56fe\u7247" in zh


def test_runs_and_decisions_are_found_by_their_start_inputs_message_and_values(
    admin_client: Client, dify_app: DifyApp
) -> None:
    """A subject-access request: the person a run is about is named in its start inputs or its
    message, and a reviewer's values (a note, an IBAN) in the decision."""
    run = Run.objects.create(
        app=dify_app,
        dify_user="u",
        workflow_run_id="R-sar",
        inputs={"customer_name": "Erika Mustermann3", "city": "上海"},
    )
    chat = Run.objects.create(
        app=dify_app, dify_user="u", workflow_run_id="R-chat", query="Refund for Hans Kundenmann"
    )
    other = Run.objects.create(
        app=dify_app, dify_user="u", workflow_run_id="R-other", inputs={"customer_name": "Ada"}
    )
    form = Form.objects.create(run=run, form_id="F-sar", node_id="n", status="submitted")
    decision = Decision.objects.create(
        form=form,
        action_id="reject",
        inputs={
            "decision_note": "Rejected Erika Mustermann3",
            "payout_note": "DE89370400440532013000",
        },
    )
    other_form = Form.objects.create(run=other, form_id="F-other", node_id="n", status="submitted")
    Decision.objects.create(form=other_form, action_id="approve", inputs={"note": "fine"})

    def found(model: str, q: str) -> set[int]:
        page = admin_client.get(f"/admin/inbox/{model}/", {"q": q})
        assert page.status_code == 200
        return {row.pk for row in page.context["cl"].result_list}

    assert found("run", "Mustermann3") == {run.pk}
    assert found("run", "Erika Mustermann3") == {run.pk}
    assert found("run", "上海") == {run.pk}
    assert found("run", "Kundenmann") == {chat.pk}
    assert found("decision", "Mustermann3") == {decision.pk}
    assert found("decision", "DE89370400440532013000") == {decision.pk}


def test_a_reviewer_s_profile_shows_when_they_last_looked_at_the_list_and_never_changes_it(
    client: Client, admin_user: User
) -> None:
    from inbox.models import ReviewerProfile

    reviewer = User.objects.create_user("dora")
    seen = timezone.now() - dt.timedelta(hours=2)
    profile = ReviewerProfile.objects.create(
        user=reviewer, language="en", list_seen_at=seen, new_since=seen
    )
    client.force_login(admin_user)
    page = client.get(f"/admin/inbox/reviewerprofile/{profile.pk}/change/").content.decode()
    assert "Last looked at the inbox" in page
    assert 'name="list_seen_at' not in page and 'name="new_since' not in page

    response = client.post(
        f"/admin/inbox/reviewerprofile/{profile.pk}/change/",
        {
            "user": reviewer.pk,
            "language": "zh-hans",
            "time_zone": "Asia/Shanghai",
            "list_seen_at_0": "2020-01-01",
            "list_seen_at_1": "00:00:00",
            "new_since_0": "2020-01-01",
            "new_since_1": "00:00:00",
        },
    )
    assert response.status_code == 302
    profile.refresh_from_db()
    assert (profile.language, profile.time_zone) == ("zh-hans", "Asia/Shanghai")
    assert (profile.list_seen_at, profile.new_since) == (seen, seen)


def test_an_app_dify_answers_403_for_is_said_to_be_perhaps_gone_with_how_to_close_its_runs(
    client: Client, admin_user: object, dify_app: DifyApp
) -> None:
    _refused(dify_app, "403 forbidden: The app no longer exists.")
    client.force_login(admin_user)
    page = html.unescape(client.get("/admin/inbox/difyapp/").content.decode())
    assert (
        ": 403 forbidden: The app no longer exists. Dify answers 403: the app may have been "
        "disabled or deleted there. Runs it will never answer for again can be written off: "
        "Runs → “Close here”."
    ) in page
    page = html.unescape(
        client.get("/admin/inbox/difyapp/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    )
    assert "\u8fd0\u884c \u2192\u201c\u5728\u6b64\u5173\u95ed\u201d" in page  # 运行 →“在此关闭”
    # A refused key is not said to be a deleted app.
    _refused(dify_app)
    page = client.get("/admin/inbox/difyapp/").content.decode()
    assert "disabled or deleted" not in page


# --- Times in one unambiguous form: to the second, with the UTC offset and the zone's name ---


def test_every_admin_page_and_list_shows_its_times_to_the_second_with_offset_and_zone(
    client: Client, admin_user: User, dify_app: DifyApp
) -> None:
    from inbox.models import ApiToken, FormRecipient, MessageFile, ReviewerProfile, RunEvent

    records = _records(dify_app, admin_user)
    form, run, decision = records["form"], records["run"], records["decision"]
    moment = dt.datetime(2026, 12, 7, 21, 49, 1, tzinfo=dt.UTC)  # 05:49:01 next day in Shanghai
    Form.objects.filter(pk=form.pk).update(
        expiration_time=moment, decided_at=moment, checked_at=moment, created_at=moment
    )
    FormRecipient.objects.create(
        form=form, email="g@example.net", sent_at=moment, link_opened_at=moment
    )
    Run.objects.filter(pk=run.pk).update(created_at=moment)
    Decision.objects.filter(pk=decision.pk).update(created_at=moment)
    upload = _upload(form, name="scan.png")
    type(upload).objects.filter(pk=upload.pk).update(created_at=moment)
    sent = MessageFile.objects.create(
        app=dify_app, dify_user="u", upload_file_id="mf-1", name="b.png", size=3
    )
    MessageFile.objects.filter(pk=sent.pk).update(created_at=moment)
    token, _raw = ApiToken.issue(admin_user, "laptop")
    ApiToken.objects.filter(pk=token.pk).update(created_at=moment, last_used_at=moment)
    event = RunEvent.objects.create(run=run, event="ping")
    RunEvent.objects.filter(pk=event.pk).update(received_at=moment)
    profile = ReviewerProfile.objects.create(user=admin_user, list_seen_at=moment)
    User.objects.filter(pk=admin_user.pk).update(date_joined=moment)
    AuditEntry.objects.all().update(created_at=moment)
    entry = AuditEntry.record("form_reopened", form, actor=admin_user)
    AuditEntry.objects.filter(pk=entry.pk).update(created_at=moment)
    client.force_login(admin_user)
    client.cookies["tz"] = "Asia/Shanghai"
    said = "2026-12-08 05:49:01 +08:00 (Asia/Shanghai)"
    pages = {
        "form": f"/admin/inbox/form/{form.pk}/change/",
        "form list": "/admin/inbox/form/",
        "run": f"/admin/inbox/run/{run.pk}/change/",
        "run list": "/admin/inbox/run/",
        "decision": f"/admin/inbox/decision/{decision.pk}/change/",
        "decision list": "/admin/inbox/decision/",
        "upload": f"/admin/inbox/upload/{upload.pk}/change/",
        "message file": f"/admin/inbox/messagefile/{sent.pk}/change/",
        "api token": f"/admin/inbox/apitoken/{token.pk}/change/",
        "api token list": "/admin/inbox/apitoken/",
        "run event": f"/admin/inbox/runevent/{event.pk}/change/",
        "run event list": "/admin/inbox/runevent/",
        "profile": f"/admin/inbox/reviewerprofile/{profile.pk}/change/",
        "user": f"/admin/auth/user/{admin_user.pk}/change/",
        "audit entry": f"/admin/inbox/auditentry/{entry.pk}/change/",
        "audit list": "/admin/inbox/auditentry/",
    }
    for name, url in pages.items():
        page = client.get(url)
        assert page.status_code == 200, name
        body = page.content.decode()
        assert said in body, name
        # Never an abbreviation shared by several zones, nor Django's minutes without a zone.
        assert "CST" not in body and "a.m." not in body, name
    # The form's page: each of its times, and its recipients' (the inline).
    body = client.get(pages["form"]).content.decode()
    assert body.count(said) >= 6
    # A list still sorts by a time column.
    listed = client.get("/admin/inbox/form/", {"o": "-7"})
    assert listed.status_code == 200


# --- From a form, a decision and a run to their trail ---


def test_a_form_s_page_links_its_decisions_and_trail_a_decision_s_and_a_run_s_theirs(
    admin_client: Client, admin_user: User, dify_app: DifyApp
) -> None:
    records = _records(dify_app, admin_user)
    form, run, decision = records["form"], records["run"], records["decision"]
    AuditEntry.record("form_reopened", form, actor=admin_user)
    AuditEntry.record("decision_failed", decision, actor=admin_user)
    AuditEntry.record("note", run)

    def trail_of(public_id: Any) -> str:
        return f'href="/admin/inbox/auditentry/?q={public_id}"'

    body = admin_client.get(f"/admin/inbox/form/{form.pk}/change/").content.decode()
    assert f'href="/admin/inbox/decision/{decision.pk}/change/"' in body
    assert str(decision.public_id) in body
    assert trail_of(form.public_id) in body
    body = admin_client.get(f"/admin/inbox/decision/{decision.pk}/change/").content.decode()
    assert f'href="/admin/inbox/form/{form.pk}/change/"' in body
    assert trail_of(decision.public_id) in body
    body = admin_client.get(f"/admin/inbox/run/{run.pk}/change/").content.decode()
    assert trail_of(run.public_id) in body
    assert f'href="/admin/inbox/form/?q={run.public_id}"' in body
    assert f'href="/admin/inbox/decision/?q={run.public_id}"' in body
    # Each link finds what it says: the form's search finds its own entries and its decision's.
    listed = admin_client.get("/admin/inbox/auditentry/", {"q": str(form.public_id)})
    verbs = {e.verb for e in listed.context["cl"].result_list}
    assert {"form_reopened", "decision_failed"} <= verbs and "note" not in verbs
    listed = admin_client.get("/admin/inbox/decision/", {"q": str(run.public_id)})
    assert list(listed.context["cl"].result_list) == [decision]
    listed = admin_client.get("/admin/inbox/form/", {"q": str(run.public_id)})
    assert list(listed.context["cl"].result_list) == [form]
    # In Chinese too.
    body = admin_client.get(
        f"/admin/inbox/form/{form.pk}/change/", HTTP_ACCEPT_LANGUAGE="zh-hans"
    ).content.decode()
    assert f"{trail_of(form.public_id)}>审计记录</a>" in body
