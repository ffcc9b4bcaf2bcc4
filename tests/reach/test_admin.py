"""The admin console: test connection, stop run, reassign, resend email, audit CSV, routes."""

from __future__ import annotations

import csv
import html
import io
import json
import re
from typing import Any

from django.contrib.auth.models import User
from django.contrib.messages import get_messages
from django.core import mail
from django.test import Client
from django.urls import reverse

from inbox import notify
from inbox.dify.errors import BadRequest
from inbox.models import AuditEntry, DifyApp, Form, Route, RouteRecipient, Run
from tests.reach.conftest import GUEST
from tests.reach.factories import make_form, make_run


def action(client: Client, model: str, name: str, pks: list[int], **extra: Any) -> Any:
    return client.post(
        reverse(f"admin:inbox_{model}_changelist"),
        {"action": name, "_selected_action": [str(pk) for pk in pks], **extra},
        follow=True,
    )


def notes(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_test_connection_calls_info_and_parameters(
    admin_client: Client, simulator: Any, simulator_dify_app: Any
) -> None:
    app = simulator_dify_app("refund-approval")
    response = action(admin_client, "difyapp", "test_connection", [app.pk])
    [message] = notes(response)
    assert message.startswith("refund-approval: connected. Dify calls it “")
    assert "(mode workflow);" in message and "start input(s)" in message
    assert simulator.request_count("info") == 1 and simulator.request_count("parameters") == 1
    # The key stays masked on the page that shows the result.
    assert app.api_key not in response.content.decode()


def test_a_passing_connection_test_sends_the_decisions_waiting_to_retry_now(
    admin_client: Client, admin_user: User, simulator: Any, simulator_dify_app: Any
) -> None:
    import datetime as dt

    from django.utils import timezone

    from inbox.models import Decision

    app = simulator_dify_app("refund-approval")
    # A run Dify knows: the test's check of the app's runs finds the key sees them.
    started = simulator.start_run("refund-approval", user="inbox-run-user-8")
    run = make_run(app, workflow_run_id=started.workflow_run_id, dify_user="inbox-run-user-8")
    form = make_form(app, run=run, status=Form.Status.SUBMITTING)
    later = timezone.now() + dt.timedelta(minutes=15)
    waiting = Decision.objects.create(
        form=form, action_id="approve", attempts=4, next_attempt_at=later
    )
    response = action(admin_client, "difyapp", "test_connection", [app.pk])
    assert "refund-approval: 1 decision waiting to be sent again goes now." in notes(response)
    waiting.refresh_from_db()
    assert waiting.next_attempt_at is not None and waiting.next_attempt_at < later
    entry = AuditEntry.objects.get(verb="app_connection_tested")
    assert entry.actor == admin_user and entry.details["result"] == "connected"
    assert entry.details["sent_now"] == 1


def test_a_connection_test_that_finds_the_app_refused_neither_says_connected_nor_sends(
    admin_client: Client, admin_user: User, simulator: Any, simulator_dify_app: Any
) -> None:
    import datetime as dt

    from django.utils import timezone

    from inbox.models import Decision

    # Dify rebuilt empty (or another app's key): /info answers, but none of the app's runs is
    # known to it, and a decision waits out its backoff.
    app = simulator_dify_app("refund-approval")
    form = make_form(app, status=Form.Status.SUBMITTING)
    later = timezone.now() + dt.timedelta(minutes=15)
    waiting = Decision.objects.create(
        form=form, action_id="approve", attempts=4, next_attempt_at=later
    )
    response = action(admin_client, "difyapp", "test_connection", [app.pk])
    said = notes(response)
    assert len(said) == 1, said
    assert said[0].startswith("refund-approval: Dify knows none of this app's runs with this key")
    assert not [m for m in said if "connected" in m or "goes now" in m], said
    # The decision is not sent again to meet the same 404s: it waits for Dify to answer.
    waiting.refresh_from_db()
    assert waiting.next_attempt_at == later
    app.refresh_from_db()
    assert app.refusal_code == "app_not_found"
    entry = AuditEntry.objects.get(verb="app_connection_tested")
    assert entry.actor == admin_user and entry.details["result"] == "refused"
    assert "none of 1 run(s)" in entry.details["detail"]
    assert "sent_now" not in entry.details
    # The app's list says refused, never "OK" from the test.
    listing = admin_client.get(reverse("admin:inbox_difyapp_changelist")).content.decode()
    assert "Dify answers 404 for the app as a whole" in listing


def test_test_connection_reports_a_bad_key(
    admin_client: Client, simulator: Any, simulator_dify_app: Any
) -> None:
    app = simulator_dify_app("refund-approval")
    DifyApp.objects.filter(pk=app.pk).update(api_key="app-not-a-real-key-000")
    response = action(admin_client, "difyapp", "test_connection", [app.pk])
    [message] = notes(response)
    assert message.startswith("refund-approval: Dify did not answer as expected:")
    assert "401" in message and "app-not-a-real-key-000" not in response.content.decode()


def test_test_connection_records_a_refused_key_and_clears_it_once_dify_accepts_one(
    admin_client: Client, simulator: Any, simulator_dify_app: Any
) -> None:
    app = simulator_dify_app("refund-approval")
    good_key = app.api_key
    DifyApp.objects.filter(pk=app.pk).update(api_key="app-not-a-real-key-000")
    action(admin_client, "difyapp", "test_connection", [app.pk])
    app.refresh_from_db()
    assert (app.refusal, app.refusal_status) == ("401 unauthorized: Access token is invalid", 401)
    listing = admin_client.get(reverse("admin:inbox_difyapp_changelist")).content.decode()
    assert "Refused since" in listing and "app-not-a-real-key-000" not in listing
    DifyApp.objects.filter(pk=app.pk).update(api_key=good_key)
    [message] = notes(action(admin_client, "difyapp", "test_connection", [app.pk]))
    assert message.startswith("refund-approval: connected.")
    app.refresh_from_db()
    assert app.refused_at is None
    assert list(
        AuditEntry.objects.filter(object_type="difyapp")
        .exclude(verb="app_connection_tested")
        .values_list("verb", "details__source")
    ) == [("app_accepted", "connection test"), ("app_refused", "connection test")]
    # Each test is on record, with who ran it.
    tests = AuditEntry.objects.filter(verb="app_connection_tested").order_by("id")
    assert [(e.actor_label, e.details["result"][:3]) for e in tests] == [
        ("admin", "401"),
        ("admin", "con"),
    ]


def test_test_connection_clears_a_refusal_of_the_app_s_kind_only_when_dify_names_that_kind(
    admin_client: Client, simulator: Any, simulator_dify_app: Any
) -> None:
    app = simulator_dify_app("refund-approval")
    # Set up here as a chatflow: Dify refused a start (`not_chat_app`).
    DifyApp.objects.filter(pk=app.pk).update(mode="chatflow")
    app.refresh_from_db()
    assert app.note_refused(
        BadRequest(
            400, "not_chat_app", "Please check if your app mode matches the right API route."
        ),
        "start",
    )
    connected, mismatch = notes(action(admin_client, "difyapp", "test_connection", [app.pk]))
    assert connected.startswith("refund-approval: connected.")
    assert mismatch == (
        "refund-approval: Dify says this app is a Workflow, not a Chatflow: set Mode to match."
    )
    assert DifyApp.objects.get(pk=app.pk).refusal_code == "not_chat_app"
    DifyApp.objects.filter(pk=app.pk).update(mode="workflow")
    [message] = notes(action(admin_client, "difyapp", "test_connection", [app.pk]))
    assert message.startswith("refund-approval: connected.")
    assert DifyApp.objects.get(pk=app.pk).refused_at is None


def test_test_connection_reports_an_unreachable_server(admin_client: Client, db: None) -> None:
    app = DifyApp.objects.create(
        name="gone", base_url="http://127.0.0.1:9/v1", api_key="k-123456789"
    )
    [message] = notes(action(admin_client, "difyapp", "test_connection", [app.pk]))
    assert message.startswith("gone: Dify did not answer as expected:")
    # No answer says nothing about the key.
    assert DifyApp.objects.get(pk=app.pk).refused_at is None


def test_a_failed_connection_test_stays_on_the_app_until_dify_answers(
    admin_client: Client, simulator: Any, simulator_dify_app: Any
) -> None:
    app = simulator_dify_app("refund-approval")
    good_url = app.base_url
    # A wrong path on a real server: Dify's routes are under /v1.
    DifyApp.objects.filter(pk=app.pk).update(base_url=good_url.removesuffix("/v1"))
    [message] = notes(action(admin_client, "difyapp", "test_connection", [app.pk]))
    assert message.startswith("refund-approval: Dify did not answer as expected:")
    app.refresh_from_db()
    assert app.refused_at is None and app.test_failed_at is not None
    assert "404" in app.test_failure and app.api_key not in app.test_failure
    changelist = reverse("admin:inbox_difyapp_changelist")
    listing = admin_client.get(changelist).content.decode()
    assert "The connection test of " in listing and " failed: " in listing
    assert '<td class="field-health">OK</td>' not in listing
    assert (
        "refund-approval" in admin_client.get(changelist + "?health=test_failed").content.decode()
    )
    assert "refund-approval" not in admin_client.get(changelist + "?health=ok").content.decode()
    # The right URL, tested: the app is OK again.
    DifyApp.objects.filter(pk=app.pk).update(base_url=good_url)
    [message] = notes(action(admin_client, "difyapp", "test_connection", [app.pk]))
    assert message.startswith("refund-approval: connected.")
    app.refresh_from_db()
    assert (app.test_failed_at, app.test_failure) == (None, "")
    assert "refund-approval" in admin_client.get(changelist + "?health=ok").content.decode()


def test_new_settings_end_a_failed_connection_test_of_the_old_ones(
    admin_client: Client, db: None
) -> None:
    app = DifyApp.objects.create(
        name="gone", base_url="http://127.0.0.1:9/v1", api_key="k-123456789"
    )
    action(admin_client, "difyapp", "test_connection", [app.pk])
    app.refresh_from_db()
    assert "could not connect" in app.test_failure
    first = app.test_failed_at
    # Another save of the app (its name) keeps what the test found; a new URL ends it.
    change = reverse("admin:inbox_difyapp_change", args=[app.pk])
    data = {"name": "gone", "base_url": app.base_url, "mode": "workflow", "is_active": "on"}
    admin_client.post(change, {**data, "api_key": ""})
    assert DifyApp.objects.get(pk=app.pk).test_failed_at is not None
    # (Another server: the key is typed again, or the save is refused.)
    moved = {**data, "base_url": "http://127.0.0.1:10/v1", "api_key": "k-123456789"}
    assert admin_client.post(change, moved).status_code == 302
    # (The save tests the new settings, as the action does: what it finds is of the new URL.)
    app.refresh_from_db()
    assert app.test_failed_at is not None and first is not None and app.test_failed_at > first
    assert "could not connect" in app.test_failure


def test_stop_run_asks_dify_as_the_runs_own_user(
    admin_client: Client, admin_user: User, simulator: Any, simulator_dify_app: Any
) -> None:
    app = simulator_dify_app("refund-approval")
    started = simulator.start_run("refund-approval", user="inbox-run-user-7")
    run = Run.objects.create(
        app=app,
        workflow_run_id=started.workflow_run_id,
        task_id=started.task_id,
        dify_user="inbox-run-user-7",
        status=Run.Status.RUNNING,
        follow_wanted=False,
    )
    response = action(admin_client, "run", "stop_run", [run.pk])
    assert notes(response) == [
        f"{run}: stop requested; the run's status follows from Dify's events."
    ]
    [exchange] = simulator.exchanges("workflow_stop")
    assert exchange.path == f"/v1/workflows/tasks/{started.task_id}/stop"
    assert json.loads(exchange.request_body)["user"] == "inbox-run-user-7"
    entry = AuditEntry.objects.get(verb="run_stop_requested")
    assert entry.actor == admin_user and entry.details["task_id"] == started.task_id


def test_stop_run_says_why_a_finished_or_paused_run_is_not_stopped(
    admin_client: Client, dify_app: DifyApp
) -> None:
    finished = make_run(dify_app, status=Run.Status.SUCCEEDED, task_id="t-1")
    paused = make_run(dify_app, status=Run.Status.PAUSED, task_id="t-2")
    messages = notes(action(admin_client, "run", "stop_run", [finished.pk, paused.pk]))
    assert sorted(messages) == sorted(
        [
            f"{finished}: not stopped: This run has already ended.",
            f"{paused}: not stopped: This run is waiting at a form, where Dify cannot stop it. "
            "Answer the form, or let it expire.",
        ]
    )
    # Nothing was asked of Dify, and nothing claims it was.
    assert not AuditEntry.objects.filter(verb="run_stop_requested").exists()


def test_reassign_through_the_intermediate_page(
    admin_client: Client, routed_form: Form, other_reviewer: User
) -> None:
    page = action(admin_client, "form", "reassign", [routed_form.pk])
    body = page.content.decode()
    assert "Reassign forms" in body and str(routed_form) in body
    empty = action(admin_client, "form", "reassign", [routed_form.pk], apply="1")
    assert "Choose a reviewer, a group, or both." in empty.content.decode()
    done = action(
        admin_client, "form", "reassign", [routed_form.pk], apply="1", to_user=other_reviewer.pk
    )
    assert notes(done) == ["1 form(s) reassigned."]
    routed_form.refresh_from_db()
    assert routed_form.claimed_by == other_reviewer
    assert list(routed_form.assigned_users.all()) == [other_reviewer]


def test_resend_email(admin_client: Client, routed_form: Form) -> None:
    notify.send_form_emails(routed_form.pk)
    mail.outbox.clear()
    closed = make_form(routed_form.run.app, status=Form.Status.EXPIRED)
    response = action(admin_client, "form", "resend_email", [routed_form.pk, closed.pk])
    assert notes(response) == ["2 email(s) sent; 1 form(s) skipped (closed, or no recipients)."]
    assert sorted(m.to[0] for m in mail.outbox) == sorted([GUEST, "zhang@example.cn"])
    assert AuditEntry.objects.filter(verb="form_emails_resent").count() == 1


def test_the_form_admin_shows_recipients_but_never_the_token(
    admin_client: Client, routed_form: Form
) -> None:
    page = admin_client.get(reverse("admin:inbox_form_change", args=[routed_form.pk]))
    body = page.content.decode()
    assert GUEST in body and "alice" in body
    assert routed_form.form_token not in body


def test_routes_are_edited_with_their_recipients(
    admin_client: Client, reach_app: DifyApp, reviewer: User
) -> None:
    response = admin_client.post(
        reverse("admin:inbox_route_add"),
        {
            "app": reach_app.pk,
            "name": "finance",
            "node": "Finance*",
            "priority": 10,
            "is_active": "on",
            "users": [reviewer.pk],
            "language": "zh-hans",
            "allow_guests": "on",
            "reminders": "24h,1h",
            "recipients-TOTAL_FORMS": "1",
            "recipients-INITIAL_FORMS": "0",
            "recipients-0-email": "cfo@example.org",
            "recipients-0-language": "zh-hans",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    made = Route.objects.get(name="finance")
    assert list(made.users.all()) == [reviewer]
    assert RouteRecipient.objects.get(route=made).email == "cfo@example.org"
    listing = admin_client.get(reverse("admin:inbox_route_changelist")).content.decode()
    assert "Alice (alice), cfo@example.org" in listing
    created = AuditEntry.objects.get(verb="route_created")
    assert created.object_id == str(made.pk)
    assert "recipients" in created.details["fields"] and "node" in created.details["fields"]
    assert created.details["values"]["users"] == {"after": ["alice"]}
    # A change names who gained or lost the right to decide, not only the field.
    other = User.objects.create_user("carol")
    changed = admin_client.post(
        reverse("admin:inbox_route_change", args=[made.pk]),
        {
            "app": reach_app.pk,
            "name": "finance",
            "node": "Finance*",
            "priority": 10,
            "is_active": "on",
            "users": [other.pk],
            "language": "zh-hans",
            "reminders": "24h,1h",
            "recipients-TOTAL_FORMS": "1",
            "recipients-INITIAL_FORMS": "1",
            "recipients-0-id": RouteRecipient.objects.get(route=made).pk,
            "recipients-0-route": made.pk,
            "recipients-0-email": "cfo@example.org",
            "recipients-0-language": "zh-hans",
        },
    )
    assert changed.status_code == 302, changed.content.decode()[:2000]
    entry = AuditEntry.objects.get(verb="route_changed")
    assert entry.details["values"] == {
        "users": {"before": ["alice"], "after": ["carol"]},
        "allow_guests": {"before": True, "after": False},
    }
    response = admin_client.post(
        reverse("admin:inbox_route_delete", args=[made.pk]), {"post": "yes"}
    )
    assert response.status_code == 302
    gone = AuditEntry.objects.get(verb="route_deleted", object_id=str(made.pk))
    # Who it asked, as it was: the trail does not leave a deleted route asking anyone.
    assert gone.details["values"]["users"] == {"before": ["carol"]}
    assert gone.details["values"]["recipients"] == {"before": ["cfo@example.org"]}


def test_a_bad_reminder_setting_is_refused_in_the_admin(
    admin_client: Client, reach_app: DifyApp
) -> None:
    response = admin_client.post(
        reverse("admin:inbox_route_add"),
        {
            "app": reach_app.pk,
            "name": "x",
            "priority": 1,
            "language": "en",
            "reminders": "tomorrow",
            "recipients-TOTAL_FORMS": "0",
            "recipients-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 200
    assert "is not a time before expiry" in response.content.decode()


def test_audit_entries_export_as_csv(admin_client: Client, routed_form: Form) -> None:
    AuditEntry.record("note", routed_form, actor_label="=HYPERLINK(evil)", comment="über")
    entries = list(AuditEntry.objects.order_by("created_at", "id"))
    response = action(admin_client, "auditentry", "export_csv", [e.pk for e in entries])
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="audit.csv"'
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode("utf-8-sig"))))
    assert rows[0] == [
        "created_at",
        "actor",
        "verb",
        "object_type",
        "object_id",
        "object",
        "details",
    ]
    assert [row[2] for row in rows[1:]] == [e.verb for e in entries]
    note = rows[-1]
    # A spreadsheet must not run a formula from a label.
    assert note[1] == "'=HYPERLINK(evil)" and json.loads(note[6])["comment"] == "über"


def test_audit_entries_are_read_only_and_searchable(
    admin_client: Client, routed_form: Form
) -> None:
    entry = AuditEntry.objects.filter(verb="form_routed").get()
    assert admin_client.get(reverse("admin:inbox_auditentry_add")).status_code == 403
    change = admin_client.post(
        reverse("admin:inbox_auditentry_change", args=[entry.pk]), {"verb": "x"}
    )
    assert change.status_code == 403
    found = admin_client.get(reverse("admin:inbox_auditentry_changelist"), {"q": "form_routed"})
    assert "form_routed" in found.content.decode()


def test_a_second_default_route_is_refused_in_words(
    admin_client: Client, reach_app: DifyApp, reach_route: Route
) -> None:
    assert reach_route.is_default
    response = admin_client.post(
        reverse("admin:inbox_route_add"),
        {
            "app": reach_app.pk,
            "name": "another default",
            "priority": 1,
            "language": "en",
            "reminders": "",
            "recipients-TOTAL_FORMS": "0",
            "recipients-INITIAL_FORMS": "0",
        },
        HTTP_ACCEPT_LANGUAGE="en",
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert "This app already has a default route (one without a node)." in page
    assert "route_one_default_per_app" not in page
    assert Route.objects.filter(app=reach_app).count() == 1


def test_an_address_listed_twice_in_another_case_is_refused(
    admin_client: Client, reach_app: DifyApp
) -> None:
    response = admin_client.post(
        reverse("admin:inbox_route_add"),
        {
            "app": reach_app.pk,
            "name": "eu",
            "priority": 1,
            "language": "en",
            "is_active": "on",
            "recipients-TOTAL_FORMS": "2",
            "recipients-INITIAL_FORMS": "0",
            "recipients-0-email": "eu.guest@partner.test",
            "recipients-0-language": "en",
            "recipients-1-email": "Eu.Guest@Partner.test",
            "recipients-1-language": "zh-hans",
        },
    )
    assert response.status_code == 200
    assert "eu.guest@partner.test is on the list twice; keep it once." in response.content.decode()
    assert not Route.objects.exists()


def test_a_route_that_asks_nobody_is_saved_with_a_warning(
    admin_client: Client, reach_app: DifyApp
) -> None:
    response = admin_client.post(
        reverse("admin:inbox_route_add"),
        {
            "app": reach_app.pk,
            "name": "nobody",
            "priority": 1,
            "language": "en",
            "is_active": "on",
            "recipients-TOTAL_FORMS": "0",
            "recipients-INITIAL_FORMS": "0",
        },
        follow=True,
    )
    notes = [str(m) for m in get_messages(response.wsgi_request)]
    assert any("The route “nobody” asks nobody" in note for note in notes), notes


def test_a_route_on_a_node_no_captured_form_came_from_is_saved_with_a_warning(
    admin_client: Client, reach_app: DifyApp, reviewer: User
) -> None:
    def add(node: str, name: str) -> list[str]:
        response = admin_client.post(
            reverse("admin:inbox_route_add"),
            {
                "app": reach_app.pk,
                "name": name,
                "node": node,
                "priority": 1,
                "language": "en",
                "is_active": "on",
                "users": [reviewer.pk],
                "recipients-TOTAL_FORMS": "0",
                "recipients-INITIAL_FORMS": "0",
            },
            follow=True,
        )
        assert Route.objects.filter(name=name).exists()  # saved all the same
        return [n for n in notes(response) if "captured so far" in n]

    # No form of the app yet: nothing is known, nothing said.
    assert add("Manger aproval", "first") == []
    Route.objects.all().delete()
    make_form(reach_app, node_id="approval_1", node_title="Manager approval")
    make_form(reach_app, node_id="payout", node_title="")
    [warning] = add("Manger aproval", "typo")
    assert html.unescape(warning) == (
        "No form of this app captured so far came from a node named “Manger aproval” (by id, "
        "or by title with * and ?). If the route is meant for a node that has asked before, "
        "check the spelling; the nodes seen so far: Manager approval (approval_1), payout."
    )
    # By title in any case, by pattern, by id: nothing said.
    assert add("manager APPROVAL", "title") == []
    assert add("Manager *", "pattern") == []
    assert add("payout", "by id") == []


def test_a_route_listing_only_a_deactivated_reviewer_names_them_and_offers_active_ones(
    admin_client: Client, reach_app: DifyApp, reviewer: User, other_reviewer: User
) -> None:
    other_reviewer.is_active = False
    other_reviewer.save()
    chooser = admin_client.get(reverse("admin:inbox_route_add")).context["adminform"].form
    offered = set(chooser.fields["users"].queryset)
    assert reviewer in offered and other_reviewer not in offered
    made = Route.objects.create(app=reach_app, name="经理审批\uff1a仅杨帆", node="*经理审批")
    made.users.add(other_reviewer)
    page = admin_client.get(reverse("admin:inbox_route_change", args=[made.pk]))
    # Listed already, the deactivated account stays listed (saving does not drop it unsaid).
    assert {reviewer, other_reviewer} <= set(
        page.context["adminform"].form.fields["users"].queryset
    )
    response = admin_client.post(
        reverse("admin:inbox_route_change", args=[made.pk]),
        {
            "app": reach_app.pk,
            "name": made.name,
            "node": made.node,
            "priority": 1,
            "language": "zh-hans",
            "is_active": "on",
            "users": [other_reviewer.pk],
            "recipients-TOTAL_FORMS": "0",
            "recipients-INITIAL_FORMS": "0",
        },
        follow=True,
        HTTP_ACCEPT_LANGUAGE="zh-hans",
    )
    said = [str(m) for m in get_messages(response.wsgi_request)]
    assert "路由\u201c经理审批\uff1a仅杨帆\u201d没有指定任何人" in said[0], said
    assert said[1] == "路由中列出的以下账号已停用\uff0c不会被询问\uff1aBob\uff08bob\uff09\u3002", (
        said
    )


def test_the_admin_finds_forms_runs_decisions_and_routes_by_what_it_shows(
    admin_client: Client, routed_form: Form, reach_route: Route, reviewer: User
) -> None:
    from inbox.models import Decision

    Decision.objects.create(form=routed_form, reviewer=reviewer, action_id="approve")

    def found(name: str, term: str) -> int:
        page = admin_client.get(reverse(f"admin:inbox_{name}_changelist"), {"q": term})
        assert page.status_code == 200
        counted = re.search(r'class="paginator">\s*(\d+) ', page.content.decode())
        assert counted is not None
        return int(counted.group(1))

    assert found("form", str(routed_form.public_id)) == 1
    assert found("form", GUEST) == 1
    assert found("run", str(routed_form.run.public_id)) == 1
    assert found("decision", reviewer.username) == 1
    assert found("route", reviewer.username) == 1
    # A term that is no id is no crash.
    assert found("run", "not-an-id") == 0


def test_seeing_the_records_is_not_acting_on_them(
    client: Client, routed_form: Form, other_reviewer: User, admin_user: User
) -> None:
    """Staff who may only view: no action that changes something is offered or taken."""
    from django.contrib.auth.models import Permission

    from inbox.models import ApiToken

    viewer = User.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    token, _raw = ApiToken.issue(admin_user)
    client.force_login(viewer)
    for model, name in (
        ("form", "reassign"),
        ("form", "resend_email"),
        ("run", "stop_run"),
        ("decision", "retry_delivery"),
        ("difyapp", "test_connection"),
        ("apitoken", "revoke"),
    ):
        page = client.get(reverse(f"admin:inbox_{model}_changelist")).content.decode()
        assert f'value="{name}"' not in page, (model, name)
    action(client, "form", "reassign", [routed_form.pk], apply="1", to_user=other_reviewer.pk)
    action(client, "apitoken", "revoke", [token.pk])
    routed_form.refresh_from_db()
    token.refresh_from_db()
    assert routed_form.claimed_by is None and token.revoked_at is None
    assert not AuditEntry.objects.filter(verb__in=["form_reassigned", "api_token_revoked"])
    # Given the permission, the action is theirs.
    viewer.user_permissions.add(Permission.objects.get(codename="reassign_form"))
    done = action(
        client, "form", "reassign", [routed_form.pk], apply="1", to_user=other_reviewer.pk
    )
    assert notes(done) == ["1 form(s) reassigned."]


def test_a_token_is_never_edited_and_its_revoking_is_on_record(
    admin_client: Client, admin_user: User, reviewer: User
) -> None:
    from inbox.models import ApiToken

    token, raw = ApiToken.issue(reviewer)
    change = reverse("admin:inbox_apitoken_change", args=[token.pk])
    # Not to another account, not back from revoked: read-only.
    refused = admin_client.post(change, {"user": admin_user.pk, "name": "x", "revoked_at": ""})
    assert refused.status_code == 403
    assert ApiToken.objects.get(pk=token.pk).user == reviewer
    done = action(admin_client, "apitoken", "revoke", [token.pk])
    assert notes(done) == ["1 token(s) revoked; their API calls are refused from now on."]
    entry = AuditEntry.objects.get(verb="api_token_revoked")
    assert entry.actor == admin_user and entry.details["owner"] == "alice"
    issued = AuditEntry.objects.get(verb="api_token_issued")
    assert issued.actor is None and issued.actor_label == "create_api_token"
    assert raw not in json.dumps([entry.details, issued.details])


def test_the_token_list_says_how_a_token_is_issued(admin_client: Client) -> None:
    # No token yet, and no Add button (the admin never sees a token whole): the list says how.
    page = admin_client.get(reverse("admin:inbox_apitoken_changelist")).content.decode()
    assert "<code>python manage.py create_api_token USERNAME</code>" in page
    assert "API tokens are issued on the server, not here" in page
    chinese = admin_client.get(
        reverse("admin:inbox_apitoken_changelist"), HTTP_ACCEPT_LANGUAGE="zh-hans"
    ).content.decode()
    assert "<code>python manage.py create_api_token USERNAME</code>" in chinese
    assert "issued on the server" not in chinese


def test_a_closed_form_is_not_reassigned(
    admin_client: Client, routed_form: Form, other_reviewer: User
) -> None:
    Form.objects.filter(pk=routed_form.pk).update(status=Form.Status.SUBMITTED, form_token="")
    done = action(
        admin_client, "form", "reassign", [routed_form.pk], apply="1", to_user=other_reviewer.pk
    )
    assert notes(done) == [
        "1 form(s) skipped: no longer waiting for a decision (decided, expired or closed), so "
        "who was asked stays on record."
    ]
    routed_form.refresh_from_db()
    assert routed_form.claimed_by is None
    assert not AuditEntry.objects.filter(verb="form_reassigned").exists()


def test_the_trail_is_found_by_the_ids_pages_and_the_api_show(
    admin_client: Client, routed_form: Form, reviewer: User
) -> None:
    routed_form.claim(reviewer)
    routed_form.release(reviewer)
    listed = admin_client.get(
        reverse("admin:inbox_auditentry_changelist"), {"q": str(routed_form.public_id)}
    ).content.decode()
    assert "form_claimed" in listed and "form_released" in listed
    # To the second, with the zone.
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+00:00 \(UTC\)", listed)
    released = AuditEntry.objects.get(verb="form_released")
    assert released.details["previous"] == "alice"


def test_an_app_s_key_is_masked_to_staff_who_may_only_see_the_app(
    client: Client, reach_app: DifyApp
) -> None:
    from django.contrib.auth.models import Permission

    viewer = User.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_difyapp"))
    client.force_login(viewer)
    page = client.get(reverse("admin:inbox_difyapp_change", args=[reach_app.pk]))
    body = page.content.decode()
    assert page.status_code == 200 and "payroll" in body
    assert reach_app.api_key not in body and "app-…3456" in body


def _hidden_inputs(page: str) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page):
        fields.setdefault(name, []).append(value)
    return fields


def test_reassigning_all_forms_of_a_filtered_list_goes_past_django_s_field_limit(
    admin_client: Client,
    reach_app: DifyApp,
    reach_route: Route,
    other_reviewer: User,
    settings: Any,
) -> None:
    # Django refuses a POST with more fields than this (1,000 by default): the page must not
    # write one field per selected form.
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 20
    forms = [make_form(reach_app) for _ in range(25)]
    other_app = DifyApp.objects.create(name="travel", base_url="http://127.0.0.1:9/v1", api_key="k")
    elsewhere = make_form(other_app)
    listing = reverse("admin:inbox_form_changelist") + f"?run__app__id__exact={reach_app.pk}"
    page = admin_client.post(
        listing,
        {"action": "reassign", "select_across": "1", "index": "0", "_selected_action": forms[0].pk},
    )
    body = page.content.decode()
    assert "25 forms selected." in body
    assert "…and 5 more forms." in body
    assert body.count("<td>payroll</td>") == 20 and "alice" in body
    assert forms[0].form_token not in body
    action_url = re.search(r'<form method="post" action="([^"]+)"', body)
    assert action_url is not None and "run__app__id__exact" in action_url.group(1)
    fields = _hidden_inputs(body)
    assert fields["select_across"] == ["1"] and len(fields["_selected_action"]) == 1
    done = admin_client.post(
        action_url.group(1).replace("&amp;", "&"),
        {**fields, "apply": "1", "to_user": other_reviewer.pk},
        follow=True,
    )
    assert done.status_code == 200
    assert notes(done) == ["25 form(s) reassigned."]
    assert (
        Form.objects.filter(pk__in=[f.pk for f in forms], claimed_by=other_reviewer).count() == 25
    )
    elsewhere.refresh_from_db()
    assert elsewhere.claimed_by is None


def test_reassigning_costs_a_bounded_number_of_queries_per_form(
    admin_client: Client, reach_app: DifyApp, reach_route: Route, other_reviewer: User
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def cost(n: int) -> int:
        pks = [make_form(reach_app).pk for _ in range(n)]
        with CaptureQueriesContext(connection) as queries:
            done = action(
                admin_client, "form", "reassign", pks, apply="1", to_user=other_reviewer.pk
            )
        assert notes(done) == [f"{n} form(s) reassigned."]
        return len(queries)

    per_form = (cost(15) - cost(5)) / 10
    # Measured 17.1 before (each form read again, its routing read twice, the reviewer's
    # language looked up per form, the email link got or created); 13 now, 2 of them the
    # test's savepoints.
    assert per_form <= 13, per_form


def test_the_forms_list_costs_the_same_queries_however_many_routes_there_are(
    admin_client: Client, reach_app: DifyApp, reach_route: Route
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.reach.factories import route

    make_form(reach_app)

    def cost() -> int:
        with CaptureQueriesContext(connection) as queries:
            page = admin_client.get(reverse("admin:inbox_form_changelist"))
        assert page.status_code == 200
        return len(queries)

    for n in range(3):
        route(reach_app, node=f"few-{n}")
    cost()  # The first page of a session reads what later ones find cached.
    few = cost()
    for n in range(30):
        route(reach_app, node=f"many-{n}")
    # Measured 18 and 48 queries before (Django's filter read each route's app on its own).
    assert cost() == few
    page = admin_client.get(reverse("admin:inbox_form_changelist")).content.decode()
    assert "payroll · many-29 · many-29" in page


def test_the_admin_never_decrypts_a_form_token(
    admin_client: Client, routed_form: Form, monkeypatch: Any
) -> None:
    from inbox import crypto

    token = routed_form.form_token
    assert token
    routed_form.decide(action_id="approve", inputs={}, reviewer=None, guest_email=GUEST)
    opened: list[str] = []
    real = crypto.decrypt

    def decrypt(value: str) -> str:
        opened.append(real(value))
        return opened[-1]

    monkeypatch.setattr(crypto, "decrypt", decrypt)
    pages = [
        reverse("admin:inbox_form_changelist"),
        reverse("admin:inbox_form_change", args=[routed_form.pk]),
        reverse("admin:inbox_decision_changelist"),
    ]
    for url in pages:
        page = admin_client.get(url)
        assert page.status_code == 200, url
        assert token not in page.content.decode()
    # Whether a form has one is asked of the database; the column is never read nor opened.
    assert token not in opened
    assert "Answerable via API" in admin_client.get(pages[1]).content.decode()


def _route_post(route: Route, users: list[int]) -> dict[str, Any]:
    return {
        "app": route.app_id,
        "name": route.name,
        "node": route.node,
        "priority": route.priority,
        "is_active": "on",
        "users": users,
        "language": "en",
        "reminders": route.reminders,
        "recipients-TOTAL_FORMS": "0",
        "recipients-INITIAL_FORMS": "0",
    }


def test_changing_who_a_route_asks_says_its_pending_forms_keep_their_reviewers(
    admin_client: Client, reach_app: DifyApp, reviewer: User, other_reviewer: User
) -> None:
    from tests.reach.factories import route

    asked = route(reach_app, users=[reviewer])
    waiting = make_form(reach_app)
    make_form(reach_app, status=Form.Status.SUBMITTED, form_token="")
    change = reverse("admin:inbox_route_change", args=[asked.pk])
    done = admin_client.post(change, _route_post(asked, [other_reviewer.pk]), follow=True)
    [note] = [html.unescape(n) for n in notes(done) if "keeps" in n]
    assert note.startswith(
        "1 pending form of this route keeps the reviewers it was routed to: a route's change "
        "applies to forms that come in from now on."
    )
    link = re.search(r'href="([^"]+)">Reassign them from the Forms list.</a>', note)
    assert link is not None
    listed = admin_client.get(link.group(1).replace("&amp;", "&")).content.decode()
    assert f"/admin/inbox/form/{waiting.pk}/change/" in listed
    assert listed.count("/change/?_changelist_filters") == 1
    # A change that leaves who is asked alone says nothing of it.
    asked.refresh_from_db()
    again = admin_client.post(
        change, {**_route_post(asked, [other_reviewer.pk]), "priority": 7}, follow=True
    )
    assert not [n for n in notes(again) if "keeps" in n]


def test_the_dashboard_links_the_forms_nobody_is_asked_to_decide_to_that_list(
    admin_client: Client, reach_app: DifyApp, reach_route: Route, reviewer: User
) -> None:
    asked = make_form(reach_app)
    from tests.reach.factories import route

    route(reach_app, users=[], recipients=[])
    nobody = make_form(reach_app)
    body = admin_client.get(reverse("inbox:dashboard")).content.decode()
    link = re.search(r'<a href="([^"]+)">pending forms nobody is asked to decide', body)
    assert link is not None
    listed = admin_client.get(link.group(1).replace("&amp;", "&")).content.decode()
    assert f"/admin/inbox/form/{nobody.pk}/change/" in listed
    assert f"/admin/inbox/form/{asked.pk}/change/" not in listed
    by_name = admin_client.get(reverse("admin:inbox_form_changelist") + "?asked=user")
    assert f"/admin/inbox/form/{asked.pk}/change/" in by_name.content.decode()
    claimed = admin_client.get(
        reverse("admin:inbox_form_changelist") + f"?claimed_by__id__exact={reviewer.pk}"
    ).content.decode()
    assert f"/admin/inbox/form/{asked.pk}/change/" not in claimed
    asked.claim(reviewer)
    claimed = admin_client.get(
        reverse("admin:inbox_form_changelist") + f"?claimed_by__id__exact={reviewer.pk}"
    ).content.decode()
    assert f"/admin/inbox/form/{asked.pk}/change/" in claimed


def test_the_admin_finds_records_by_app_name_and_forms_by_reviewer(
    admin_client: Client,
    routed_form: Form,
    reach_route: Route,
    reviewer: User,
    other_reviewer: User,
) -> None:
    from inbox.models import Decision

    Decision.objects.create(form=routed_form, reviewer=reviewer, action_id="approve")
    routed_form.reassign(to_user=other_reviewer)

    def found(name: str, term: str) -> int:
        page = admin_client.get(reverse(f"admin:inbox_{name}_changelist"), {"q": term})
        counted = re.search(r'class="paginator">\s*(\d+) ', page.content.decode())
        assert counted is not None
        return int(counted.group(1))

    for name in ("form", "run", "route", "decision"):
        assert found(name, "payroll") == 1, name
    assert found("form", other_reviewer.username) == 1
    assert found("form", "nobody-by-that-name") == 0


def test_apps_are_activated_and_deactivated_in_bulk_on_record(
    admin_client: Client, admin_user: User, reach_app: DifyApp, routed_form: Form
) -> None:
    other = DifyApp.objects.create(name="travel", base_url="http://127.0.0.1:9/v1", api_key="k")
    done = action(admin_client, "difyapp", "deactivate", [reach_app.pk, other.pk])
    assert notes(done) == [
        "2 apps deactivated: no new runs start; their pending forms can still be decided."
    ]
    assert not DifyApp.objects.filter(is_active=True).exists()
    entries = AuditEntry.objects.filter(verb="app_changed").order_by("object_repr")
    assert [(e.object_repr, e.actor, e.details["fields"]) for e in entries] == [
        ("payroll", admin_user, ["is_active"]),
        ("travel", admin_user, ["is_active"]),
    ]
    assert entries[0].details["values"] == {"is_active": {"before": True, "after": False}}
    again = action(admin_client, "difyapp", "activate", [reach_app.pk])
    assert notes(again) == ["1 app activated: its runs can be started again."]
    assert DifyApp.objects.get(pk=reach_app.pk).is_active
    # Each app's pending forms are counted in the list.
    listing = admin_client.get(reverse("admin:inbox_difyapp_changelist")).content.decode()
    assert '<td class="field-pending_forms">1</td>' in listing
    assert '<td class="field-pending_forms">0</td>' in listing
    change = admin_client.get(reverse("admin:inbox_difyapp_change", args=[reach_app.pk]))
    assert "Runs already under way go on" in change.content.decode()


def test_a_mode_mismatch_found_by_the_connection_test_shows_in_the_app_s_health(
    admin_client: Client, simulator: Any, simulator_dify_app: Any
) -> None:
    app = simulator_dify_app("refund-approval")
    listing = reverse("admin:inbox_difyapp_changelist")
    fresh = admin_client.get(listing).content.decode()
    assert '<td class="field-health">Not checked yet: test the connection.</td>' in fresh
    DifyApp.objects.filter(pk=app.pk).update(mode="chatflow")
    action(admin_client, "difyapp", "test_connection", [app.pk])
    mismatch = admin_client.get(listing).content.decode()
    assert "Dify says this app is a Workflow, not a Chatflow: set Mode to match." in mismatch
    DifyApp.objects.filter(pk=app.pk).update(mode="workflow")
    assert '<td class="field-health">OK</td>' in admin_client.get(listing).content.decode()


def test_deleting_an_app_with_runs_or_a_user_with_tokens_says_why_not_and_what_instead(
    admin_client: Client, routed_form: Form, reach_app: DifyApp, reviewer: User
) -> None:
    from inbox.models import ApiToken

    ApiToken.issue(reviewer)
    for page in (
        admin_client.get(reverse("admin:inbox_difyapp_delete", args=[reach_app.pk])),
        action(admin_client, "difyapp", "delete_selected", [reach_app.pk]),
    ):
        body = page.content.decode()
        assert "doesn" not in body and "permission" not in body
        assert "An app with runs is not deleted" in body and "Deactivate it instead" in body
    for page in (
        admin_client.get(reverse("admin:auth_user_delete", args=[reviewer.pk])),
        admin_client.post(
            reverse("admin:auth_user_changelist"),
            {"action": "delete_selected", "_selected_action": [reviewer.pk]},
        ),
    ):
        body = page.content.decode()
        assert "doesn" not in body and "permission" not in body
        assert "An account that has had API tokens is not deleted" in body
    refused = admin_client.post(
        reverse("admin:inbox_difyapp_delete", args=[reach_app.pk]), {"post": "yes"}
    )
    assert "An app with runs is not deleted" in refused.content.decode()
    assert DifyApp.objects.filter(pk=reach_app.pk).exists()
    # With nothing on record, deleting goes as before.
    spare = DifyApp.objects.create(name="spare", base_url="http://127.0.0.1:9/v1", api_key="k")
    confirm = admin_client.get(reverse("admin:inbox_difyapp_delete", args=[spare.pk]))
    assert "Are you sure" in confirm.content.decode()
