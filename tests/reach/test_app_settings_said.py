"""What the Dify app admin, the dashboard, the run page, the API and /healthz say of an app's
settings: a save tests them as "Test the connection" does, a new app is not "OK" before anything
was tested, a mode set up here that Dify's does not match is not a refusal of the app, a plain
chat app is no usable app, and decisions sent on after a key's save are not "Not answering"."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from django.contrib.auth.models import User
from django.contrib.messages import constants, get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from inbox.dify.errors import BadRequest
from inbox.models import ApiToken, AuditEntry, Decision, DifyApp, Form
from tests.reach.factories import make_form, make_run

MISMATCH = "Dify says this app is a Workflow, not a Chatflow: set Mode to match."


def notes(response: Any) -> list[tuple[int, str]]:
    return [(m.level, str(m)) for m in get_messages(response.wsgi_request)]


def fields(app: DifyApp, **changed: Any) -> dict[str, Any]:
    data = {
        "name": app.name,
        "base_url": app.base_url,
        "mode": app.mode,
        "is_active": "on",
        "api_key": "",
    }
    return {**data, **changed}


def save(client: Client, app: DifyApp, **changed: Any) -> Any:
    change = reverse("admin:inbox_difyapp_change", args=[app.pk])
    return client.post(change, {**fields(app, **changed), "_continue": "1"}, follow=True)


def health_cell(page: Any) -> str:
    body = page.content.decode()
    start = body.index('<div class="readonly">', body.index("field-health"))
    return body[start : body.index("</div>", start)]


# --- A5: a save tests the new settings as "Test the connection" does ---


def test_saving_a_mistyped_key_says_dify_refused_it_and_the_app_shows_refused(
    admin_client: Client, simulator: Any, simulator_dify_app: Any
) -> None:
    app = simulator_dify_app("refund-approval")
    page = save(admin_client, app, api_key="app-sim-aproval")
    said = notes(page)
    warnings = [text for level, text in said if level == constants.WARNING]
    assert any(
        text.startswith("refund-approval: Dify did not answer as expected: 401")
        for text in warnings
    ), said
    assert not [text for _level, text in said if "connected" in text], said
    app.refresh_from_db()
    assert app.refused_at is not None and app.refusal_status == 401
    # The change page shown after the save says so, never "OK".
    assert "Refused since" in health_cell(page)
    assert "app-sim-aproval" not in page.content.decode()
    entry = AuditEntry.objects.get(verb="app_connection_tested")
    assert entry.details["result"].startswith("401")


def test_saving_a_base_url_without_v1_or_of_no_server_says_so_and_is_not_ok(
    admin_client: Client, simulator: Any, simulator_dify_app: Any
) -> None:
    app = simulator_dify_app("refund-approval")
    key = app.api_key
    page = save(admin_client, app, base_url=app.base_url.removesuffix("/v1"))
    said = notes(page)
    assert any(
        level == constants.WARNING and "Dify did not answer as expected: 404" in text
        for level, text in said
    ), said
    assert "The connection test of " in health_cell(page)
    app.refresh_from_db()
    # Another server: the key is typed again.
    page = save(admin_client, app, base_url="http://127.0.0.1:9/v1", api_key=key)
    said = notes(page)
    assert any(
        level == constants.WARNING and "Dify did not answer as expected:" in text
        for level, text in said
    ), said
    assert "could not connect" in health_cell(page)
    assert key not in page.content.decode()


def test_saving_a_working_key_says_connected_and_the_app_is_ok(
    admin_client: Client, simulator: Any, simulator_dify_app: Any
) -> None:
    app = simulator_dify_app("refund-approval")
    page = save(admin_client, app, api_key=app.api_key)
    said = notes(page)
    assert any(
        level == constants.SUCCESS and text.startswith("refund-approval: connected.")
        for level, text in said
    ), said
    assert health_cell(page).endswith("OK")


# --- A6: the add page ---


def test_the_add_page_shows_no_health_and_asks_for_the_key(admin_client: Client, db: None) -> None:
    from django.contrib import admin

    body = admin_client.get(reverse("admin:inbox_difyapp_add")).content.decode()
    assert "field-health" not in body and ">OK<" not in body
    assert "Leave empty to keep" not in body
    assert "API key, from Dify: the app → API Access." in body
    # An app not saved yet has nothing checked.
    model_admin = admin.site._registry[DifyApp]
    assert model_admin.health(DifyApp(name="x")) == "Not checked yet: test the connection."


# --- B2: a mode set up here that Dify's does not match ---


def _mismatched(simulator_dify_app: Any) -> DifyApp:
    # A workflow in Dify, set up here as a chatflow: a start met `not_chat_app`.
    app = simulator_dify_app("refund-approval", mode="chatflow")
    assert app.note_refused(
        BadRequest(
            400, "not_chat_app", "Please check if your app mode matches the right API route."
        ),
        "start",
    )
    return app


def test_a_mode_mismatch_is_said_as_such_and_not_as_a_refusal_of_the_app(
    admin_client: Client,
    admin_user: User,
    simulator: Any,
    simulator_dify_app: Any,
    reviewers_group: Any,
) -> None:
    app = _mismatched(simulator_dify_app)
    run = make_run(app)
    make_form(app, run=run)
    listing = reverse("admin:inbox_difyapp_changelist")
    body = admin_client.get(listing).content.decode()
    assert MISMATCH in body and "Refused since" not in body
    assert "refund-approval" in admin_client.get(listing + "?health=mode_mismatch").content.decode()
    assert "refund-approval" not in admin_client.get(listing + "?health=refused").content.decode()
    # /healthz names it apart, not as refused.
    problems = json.loads(admin_client.get("/healthz").content).get("problems", [])
    assert not [p for p in problems if "refused" in p], problems
    assert "dify: 1 app(s) set up with another mode than Dify's" in problems
    # The dashboard: no "forms cannot arrive", the mode to set.
    dashboard = admin_client.get("/dashboard/").content.decode()
    assert "Dify has refused" not in dashboard and "cannot arrive" not in dashboard
    assert MISMATCH in dashboard
    # The run page: not refused; staff are told the mode to set.
    page = admin_client.get(reverse("inbox:run", args=[run.public_id])).content.decode()
    assert "Dify is refusing this app" not in page and MISMATCH in page
    # The API's run: its touch with Dify is fine.
    _token, raw = ApiToken.issue(admin_user)
    got = admin_client.get(f"/api/v1/runs/{run.public_id}", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert got.json()["dify"]["state"] == "ok", got.json()["dify"]
    # The inbox list raises no banner of a refused app.
    assert "Dify is refusing" not in admin_client.get("/").content.decode()
    # In Chinese too.
    zh = admin_client.get(listing, HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert (
        "Dify 表示此应用是\u201c工作流\u201d\uff0c而不是\u201c对话流\u201d\uff1a请将\u201c模式\u201d设为一致\u3002"
        in zh
    )


def test_saving_an_app_with_a_mode_dify_s_does_not_match_warns(
    admin_client: Client, simulator: Any, simulator_dify_app: Any
) -> None:
    app = simulator_dify_app("refund-approval")
    said = notes(save(admin_client, app, mode="chatflow"))
    assert (constants.WARNING, f"refund-approval: {MISMATCH}") in said, said


# --- A7: a plain chat app ---


def test_a_plain_chat_app_is_said_to_be_unusable_not_connected(
    admin_client: Client, simulator: Any, simulator_dify_app: Any
) -> None:
    app = simulator_dify_app("faq-bot", mode="chatflow")
    page = admin_client.post(
        reverse("admin:inbox_difyapp_changelist"),
        {"action": "test_connection", "_selected_action": [str(app.pk)]},
        follow=True,
    )
    said = [text for _level, text in notes(page)]
    assert said == [
        "faq-bot: Dify says this is a “chat” app. Such apps have no Human Input node, so they "
        "cannot be used here: only Workflow and Chatflow apps can."
    ]
    body = admin_client.get(reverse("admin:inbox_difyapp_changelist")).content.decode()
    assert "no Human Input node" in body and "set the mode" not in body.lower()
    assert AuditEntry.objects.get(verb="app_connection_tested").details["result"] == "unusable"


# --- B4: decisions sent on after a key's save ---


def test_decisions_due_now_after_a_save_are_not_said_to_be_not_answered(
    admin_client: Client, simulator: Any, simulator_dify_app: Any
) -> None:
    app = simulator_dify_app("refund-approval")
    form = make_form(app, status=Form.Status.SUBMITTING)
    # Held while Dify refused the old key, released by the save of the new one: due now.
    decision = Decision.objects.create(
        form=form, action_id="approve", attempts=1, next_attempt_at=timezone.now()
    )
    listing = reverse("admin:inbox_difyapp_changelist")
    body = admin_client.get(listing).content.decode()
    assert "1 decision for this app is being sent to Dify now." in body
    assert "Not answering" not in body
    # One waiting out a backoff after Dify failed it is.
    Decision.objects.filter(pk=decision.pk).update(
        next_attempt_at=timezone.now() + dt.timedelta(minutes=5)
    )
    assert "Not answering: 1 decision is being sent again." in (
        admin_client.get(listing).content.decode()
    )


def test_a_start_dify_refuses_for_its_mode_says_which_mode_to_set(
    admin_client: Client, simulator: Any, simulator_dify_app: Any
) -> None:
    # A chatflow in Dify, set up here as a workflow: Dify answers `not_workflow_app`.
    app = simulator_dify_app("support-chat", mode="workflow")
    page = admin_client.post(
        reverse("inbox:app_start", args=[app.pk]),
        {"in_customer_tier": "gold", "submission_key": "s"},
    ).content.decode()
    assert (
        "Dify did not start the run: Dify says this app is a Chatflow, not a Workflow: set Mode "
        "to match." in page
    )
    assert "API route" not in page
    app.refresh_from_db()
    assert app.mode_mismatch


# --- Whatever a wrong base URL points at: said as its status, never in its own words ---


class _Internal(BaseHTTPRequestHandler):
    """An internal service an administrator's base URL points at: its answers hold secrets."""

    def do_GET(self) -> None:
        if self.path.startswith("/html/"):
            status, ctype = 403, "text/html"
            body = b"<html><body>Internal console. AWS_SECRET_ACCESS_KEY=AKIA-SECRET</body></html>"
        elif self.path.startswith("/plain/"):
            # Dify's envelope in its shape, not said to be JSON.
            status, ctype = 403, "text/plain"
            body = b'{"code": "forbidden", "message": "PLAIN-SECRET redis=hunter2"}'
        elif self.path.startswith("/bare/"):
            status, ctype = 403, "application/json"
            body = b'{"message": "BARE-SECRET db=prod-primary"}'
        else:  # /json/: a 200 JSON with a name, not the fields of Dify's /info
            status, ctype = 200, "application/json"
            body = b'{"name": "JSON-SECRET db=prod-primary", "mode": "workflow", "secret": "s3"}'
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_new_app_s_test_never_shows_words_of_an_answer_that_is_not_dify_s(
    admin_client: Client, db: None, caplog: Any
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Internal)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        said: list[tuple[int, str]] = []
        for name, path in [("html", "/html/v1"), ("plain", "/plain/v1"), ("bare", "/bare/v1")]:
            page = admin_client.post(
                reverse("admin:inbox_difyapp_add"),
                {
                    "name": name,
                    "base_url": root + path,
                    "api_key": "app-whatever",
                    "mode": "workflow",
                    "is_active": "on",
                },
                follow=True,
            )
            said += notes(page)
        page = admin_client.post(
            reverse("admin:inbox_difyapp_add"),
            {
                "name": "json",
                "base_url": root + "/json",
                "api_key": "app-whatever",
                "mode": "workflow",
                "is_active": "on",
            },
            follow=True,
        )
        said += notes(page)
    finally:
        server.shutdown()
        server.server_close()
    texts = [text for _level, text in said]
    assert "html: Dify did not answer as expected: 403: not an answer from Dify (text/html)" in (
        texts
    ), said
    assert "plain: Dify did not answer as expected: 403: not an answer from Dify (text/plain)" in (
        texts
    ), said
    assert (
        "bare: Dify did not answer as expected: 403: not an answer from Dify (application/json)"
        in texts
    ), said
    assert (
        "json: Dify did not answer as expected: GET /info: 200, not an answer from Dify "
        "(application/json)" in texts
    ), said
    assert not [text for text in texts if "connected" in text or "calls" in text], said
    trail = json.dumps(list(AuditEntry.objects.values_list("details", flat=True)))
    apps = json.dumps(list(DifyApp.objects.values()), default=str)
    for secret in ("SECRET", "hunter2", "prod-primary", "<html"):
        assert secret not in " ".join(texts)
        assert secret not in trail
        assert secret not in apps
        assert secret not in caplog.text


# --- An app Dify calls unavailable (nothing published) ---


def test_an_app_dify_calls_unavailable_is_said_to_be_published_in_dify(
    admin_client: Client, simulator: Any, simulator_dify_app: Any
) -> None:
    app = simulator_dify_app("refund-approval")
    unavailable = "App unavailable, please check your app configurations."
    simulator.add_fault(
        "status",
        "parameters",
        app="refund-approval",
        times=None,
        status=400,
        code="app_unavailable",
        message=unavailable,
    )
    listing = reverse("admin:inbox_difyapp_changelist")
    page = admin_client.post(
        listing, {"action": "test_connection", "_selected_action": [str(app.pk)]}, follow=True
    )
    assert notes(page) == [
        (
            constants.ERROR,
            "refund-approval: Dify says the app is not available: it may have no published "
            "workflow. Publish it in Dify, then test the connection again. "
            f"(400 app_unavailable: {unavailable})",
        )
    ]
    app.refresh_from_db()
    assert app.unpublished
    # The app's list says what it means and what to do, beside Dify's words.
    body = admin_client.get(listing).content.decode()
    assert f"400 app_unavailable: {unavailable}" in body
    assert (
        "Dify says the app is not available: it may have no published workflow. Publish it in "
        "Dify (or check its configuration there). Until then no run of it can start, while the "
        "forms and decisions of its runs under way go through."
    ) in body
    body = admin_client.get(listing, HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "Dify 表示该应用不可用：它可能没有已发布的工作流。请在 Dify 中发布它" in body  # noqa: RUF001
