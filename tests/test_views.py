from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from inbox.models import DifyApp

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.smoke


def test_healthz_checks_the_database(client: Client, db: None) -> None:
    response = client.get("/healthz")
    assert response.json() == {"status": "ok"}


def test_healthz_says_what_is_wrong_in_a_503_not_a_500_page(
    client: Client,
    db: None,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from django.db import OperationalError

    class Down:
        def cursor(self) -> Any:
            raise OperationalError(
                "connection to server at 10.0.0.5 failed: Connection refused\n\tIs the server "
                "running on that host?"
            )

    monkeypatch.setattr("inbox.views.connection", Down())
    # Hashed static file names with nothing collected: every page would fail.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"},
    }
    settings.STATIC_ROOT = str(ROOT / "no-such-static-root")
    response = client.get("/healthz")
    assert response.status_code == 503
    # Anyone may ask: the answer names no host (the log line does).
    assert response.json() == {
        "status": "unavailable",
        "problems": [
            "database: not answering",
            "static files: not collected (run collectstatic, then restart web)",
        ],
    }
    # One line per probe (one line of text too), the inbox's own, with the host for whoever
    # reads the log; not a second one from Django's request logger.
    said = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert said == [
        (
            "inbox.views",
            "health check failed: database: connection to server at 10.0.0.5 failed: Connection "
            "refused Is the server running on that host?; static files: not collected (run "
            "collectstatic, then restart web)",
        )
    ]


def test_healthz_is_503_on_a_database_missing_migrations_and_never_a_500_page(
    client: Client, db: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from django.db import connection, transaction
    from django.db.migrations.recorder import MigrationRecorder

    from inbox import health

    # Seen all applied by an earlier probe of this process: read again here.
    monkeypatch.setattr(health, "_migrated", False)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert health._migrated
    monkeypatch.setattr(health, "_migrated", False)
    # New code on an older database: its last migration not applied yet.
    recorder = MigrationRecorder(connection)
    last = recorder.migration_qs.filter(app="inbox").order_by("-name").first()
    assert last is not None
    last.delete()
    caplog.clear()
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "problems": ["database: migrations not applied"],
    }
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said == [
        f"health check failed: database: 1 migration(s) not applied (inbox.{last.name})"
    ]
    # An empty database: none applied.
    recorder.migration_qs.all().delete()
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["problems"] == ["database: migrations not applied"]
    # Every migration recorded, a table missing all the same: said, not a 500 page.
    from django.db.migrations.loader import MigrationLoader

    for app_label, name in MigrationLoader(connection).disk_migrations:
        recorder.record_applied(app_label, name)
    quote = connection.ops.quote_name
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {quote('inbox_run')} RENAME TO {quote('inbox_run_gone')}")
        caplog.clear()
        response = client.get("/healthz")
        transaction.set_rollback(True)
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "problems": ["database: not readable"]}
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and "inbox_run" in said[0]


def test_healthz_names_a_broker_that_does_not_answer_and_asks_it_seldom(
    client: Client, db: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from inbox import health
    from inbox.celery import app

    monkeypatch.setattr(health, "_broker", None)
    # Nothing listens there (Celery reads the variable before its settings).
    down = "redis://:secret-pw@127.0.0.1:9/0"
    monkeypatch.setitem(app.conf, "broker_url", down)
    monkeypatch.setenv("CELERY_BROKER_URL", down)
    response = client.get("/healthz")
    # Decisions still go into the outbox: the process serves, monitoring sees what is wrong.
    assert response.status_code == 200
    assert response.json() == {"status": "degraded", "problems": ["broker: not answering"]}
    assert "health check: broker: " in caplog.text and "127.0.0.1:9" in caplog.text
    assert "secret-pw" not in caplog.text and "127.0.0.1:9" not in response.content.decode()
    # Back: the answer is kept a few seconds (probes do not each open a connection), then
    # asked again.
    failed = health._broker
    assert failed is not None
    monkeypatch.undo()
    monkeypatch.setattr(health, "_broker", failed)
    assert client.get("/healthz").json()["problems"] == ["broker: not answering"]
    monkeypatch.setattr(health, "_broker", (failed[0] - health.BROKER_EVERY, failed[1]))
    assert client.get("/healthz").json() == {"status": "ok"}


def test_healthz_says_when_static_files_were_collected_after_web_started(
    client: Client, db: None, settings: Any, tmp_path: Path
) -> None:
    import json

    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"},
    }
    settings.STATIC_ROOT = str(tmp_path)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["problems"] == [
        "static files: not collected (run collectstatic, then restart web)"
    ]
    # Collected by another process meanwhile: this one (and WhiteNoise in it) read the files
    # as it started, so a restart is what is left to do.
    (tmp_path / "staticfiles.json").write_text(
        json.dumps({"version": "1.1", "paths": {"inbox/app.css": "inbox/app.0123456789ab.css"}})
    )
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["problems"] == [
        "static files: collected after web started (restart web)"
    ]


DOWN_CACHE = {
    "default": {
        "BACKEND": "inbox.cache.TolerantRedisCache",
        # Nothing listens there: every call to the cache fails at once.
        "LOCATION": "redis://127.0.0.1:9/0",
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
}


def test_pages_go_on_without_the_shared_cache_and_healthz_says_degraded(
    client: Client, reviewer: Any, dify_app: Any, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from inbox.models import Form, Run

    run = Run.objects.create(app=dify_app, dify_user="u", workflow_run_id="w-1", status="paused")
    form = Form.objects.create(
        run=run,
        form_id="f-1",
        form_token="t-1",
        node_title="Approve",
        definition={
            "form_content": "Refund?",
            "inputs": [],
            "user_actions": [{"id": "ok", "title": "OK", "button_style": "primary"}],
        },
    )
    settings.CACHES = DOWN_CACHE
    client.force_login(reviewer)
    # The inbox (its tab counts), a form page (presence, its checks) and the health check:
    # each answers, the cache's outage logged rather than a 500.
    assert client.get("/").status_code == 200
    assert client.get(f"/forms/{form.public_id}/").status_code == 200
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "degraded", "problems": ["cache: not answering"]}
    assert "cache unavailable, pages go on without it" in caplog.text
    assert "127.0.0.1:9" not in health.content.decode()


def test_pages_answer_503_while_the_database_does_not_answer(reviewer: Any) -> None:
    from django.db import OperationalError, connection

    def down(*args: Any) -> Any:
        raise OperationalError("connection to server at 10.0.0.5 failed: Connection refused")

    client = Client(raise_request_exception=False)
    client.force_login(reviewer)
    with connection.execute_wrapper(down):
        response = client.get("/")
        api = client.get("/api/v1/forms", HTTP_AUTHORIZATION="Bearer x")
    assert response.status_code == 503 and response["Retry-After"] == "30"
    page = response.content.decode()
    assert "The inbox cannot reach its database just now." in page and "10.0.0.5" not in page
    assert (api.status_code, api.json()["error"]["code"]) == (503, "unavailable")
    # Any other failure is still the 500 page.
    with connection.execute_wrapper(lambda *args: 1 / 0):
        assert client.get("/").status_code == 500


def test_inbox_requires_login(client: Client, db: None) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_login_page_speaks_chinese_when_the_browser_asks(client: Client, db: None) -> None:
    page = client.get("/accounts/login/", HTTP_ACCEPT_LANGUAGE="zh-Hans").content.decode()
    assert "登录" in page


def test_a_reviewer_sees_the_inbox(client: Client, reviewer: object) -> None:
    client.force_login(reviewer)
    page = client.get("/").content.decode()
    assert "Nothing is waiting for you." in page


POLICY = (
    "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)


def test_every_page_is_served_with_the_content_security_policy(
    client: Client, admin_user: object, dify_app: DifyApp
) -> None:
    assert client.get("/accounts/login/")["Content-Security-Policy"] == POLICY
    assert client.get("/admin/login/")["Content-Security-Policy"] == POLICY
    client.force_login(admin_user)
    for url in (
        "/",
        "/dashboard/",
        "/admin/",
        "/admin/inbox/difyapp/",
        f"/admin/inbox/difyapp/{dify_app.pk}/change/",
        "/forms/00000000-0000-0000-0000-000000000000/",  # a 404
    ):
        assert client.get(url)["Content-Security-Policy"] == POLICY, url


def test_images_from_the_allowed_hosts_are_allowed_by_the_policy(
    client: Client, db: None, settings: Any
) -> None:
    settings.INBOX_MARKDOWN_IMAGE_HOSTS = ["images.example.com", "*.cdn.example.org"]
    policy = client.get("/accounts/login/")["Content-Security-Policy"]
    assert "; img-src 'self' https://images.example.com https://*.cdn.example.org; " in policy


def test_no_page_template_has_inline_script_or_style() -> None:
    # The policy allows neither; emails are not pages and keep their inline styles.
    offending = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path in (ROOT / "templates").rglob("*.html")
        if "emails" not in path.parts
        for match in re.finditer(
            r"<script(?![^>]*\ssrc=)[^>]*>|<style\b|\sstyle=|\son\w+=", path.read_text()
        )
    ]
    assert offending == []


def test_djangos_debug_pages_are_left_without_a_policy(
    client: Client, db: None, settings: Any
) -> None:
    # Styled and scripted inline, and only ever shown with DEBUG on.
    settings.DEBUG = True
    response = client.get("/no-such-page/")
    assert response.status_code == 404 and "Content-Security-Policy" not in response
    assert client.get("/accounts/login/")["Content-Security-Policy"] == POLICY


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("language", "heading"),
    [("en", "The form could not be sent."), ("zh-hans", "表单未能发送。")],
)
def test_a_form_refused_by_the_csrf_check_gets_our_page_in_the_reader_s_language(
    language: str, heading: str
) -> None:
    browser = Client(enforce_csrf_checks=True, headers={"accept-language": language})
    response = browser.post("/accounts/login/", {"username": "alice", "password": "x"})
    assert response.status_code == 403
    page = response.content.decode()
    assert heading in page and "/static/inbox/app.css" in page
    # Django's own page styles itself inline, which the Content-Security-Policy blocks.
    assert "<style" not in page and "style=" not in page


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("language", "text"),
    [
        ("en", "Nothing was sent: this page is out of date"),
        ("zh-hans", "未发送任何内容：此页面已过时"),  # noqa: RUF001
    ],
)
def test_an_htmx_post_refused_by_the_csrf_check_is_told_to_reload_in_the_page(
    language: str, text: str
) -> None:
    # The page stays, with what was typed in it: the refusal goes to its error alert, with a
    # link to reload the page it came from.
    browser = Client(enforce_csrf_checks=True, headers={"accept-language": language})
    response = browser.post(
        "/r/some-link/decide",
        {"action": "approve"},
        HTTP_HX_REQUEST="true",
        HTTP_HX_CURRENT_URL="http://testserver/r/some-link/",
    )
    assert response.status_code == 403
    assert (response["HX-Retarget"], response["HX-Reswap"]) == ("#request-error-text", "innerHTML")
    part = response.content.decode()
    assert part.startswith(f"<p>{text}") and '<a href="/r/some-link/">' in part
    assert "<html" not in part
    # A page on another site is not linked to.
    elsewhere = browser.post(
        "/r/some-link/decide",
        HTTP_HX_REQUEST="true",
        HTTP_HX_CURRENT_URL="https://elsewhere.example/",
    )
    assert elsewhere.status_code == 403 and "<a " not in elsewhere.content.decode()


@pytest.mark.parametrize(
    ("language", "heading"),
    [("en", "Something went wrong on our side."), ("zh-hans", "我们这边出了问题。")],
)
def test_a_server_error_gets_our_page_in_the_reader_s_language_with_the_database_down(
    client: Client,
    reviewer: object,
    django_db_blocker: Any,
    settings: Any,
    language: str,
    heading: str,
) -> None:
    settings.DEBUG = False
    client.force_login(reviewer)
    client.raise_request_exception = False
    # Every query now fails, as with the database down: the page's own (the reviewer's
    # login) raises, and so would any the error page made.
    with django_db_blocker.block():
        response = client.get("/", headers={"accept-language": language})
    assert response.status_code == 500
    page = response.content.decode()
    assert f'<html lang="{language}">' in page
    assert heading in page and "/static/inbox/app.css" in page
    assert response["Content-Security-Policy"] == POLICY
    # Nothing of what failed is shown.
    assert "Database access not allowed" not in page and "Traceback" not in page
    assert "RuntimeError" not in page


def test_pages_name_their_icon_so_browsers_do_not_ask_for_a_missing_favicon(
    client: Client, reviewer: Any
) -> None:
    from django.contrib.staticfiles import finders

    client.force_login(reviewer)
    page = client.get("/").content.decode()
    assert '<link rel="icon" href="/static/inbox/favicon.svg" type="image/svg+xml">' in page
    assert finders.find("inbox/favicon.svg")


def test_healthz_is_ok_with_a_shared_cache_that_answers(
    client: Client, db: None, settings: Any
) -> None:
    import os

    if not os.environ.get("REDIS_URL"):
        pytest.skip("needs the Redis bin/with-services starts (make test runs it)")
    settings.CACHES = {
        **DOWN_CACHE,
        "default": {**DOWN_CACHE["default"], "LOCATION": os.environ["REDIS_URL"]},
    }
    from django.core.cache import cache

    cache.set("probe", 1)
    assert cache.get("probe") == 1
    assert client.get("/healthz").json() == {"status": "ok"}


def test_runs_no_follower_takes_are_told_by_healthz_and_the_reconcile_log(
    client: Client, dify_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import datetime as dt

    from django.utils import timezone

    from inbox import tasks
    from inbox.models import Run

    long_ago = timezone.now() - dt.timedelta(minutes=5)
    # Wanted by the follower five minutes ago, and never taken: no follower is running.
    waiting = Run.objects.create(
        app=dify_app, dify_user="u", workflow_run_id="w-1", status="running", follow_wanted=True
    )
    # Wanted a moment ago: a live follower would be taking it now.
    Run.objects.create(
        app=dify_app, dify_user="u", workflow_run_id="w-2", status="running", follow_wanted=True
    )
    Run.objects.filter(pk=waiting.pk).update(updated_at=long_ago)
    assert client.get("/healthz").json() == {
        "status": "degraded",
        "problems": ["follower: 1 run(s) waiting over 2 min for one"],
    }
    tasks.reconcile_runs()
    assert "1 run(s) have waited 5 min for a follower" in caplog.text
    # A follower that holds it (its lease running) is alive: nothing to say.
    Run.objects.filter(pk=waiting.pk).update(
        lease_owner="f-1", lease_expires_at=timezone.now() + dt.timedelta(seconds=60)
    )
    assert client.get("/healthz").json() == {"status": "ok"}


def test_a_failed_login_ties_both_fields_to_its_error(client: Client, db: None) -> None:
    page = client.post(
        "/accounts/login/", {"username": "nobody", "password": "wrong"}
    ).content.decode()
    error = re.search(r'<p class="error" id="login-error" role="alert" tabindex="-1">', page)
    assert error is not None
    for name in ("username", "password"):
        field = re.search(rf'<input [^>]*name="{name}"[^>]*>', page)
        assert field is not None
        assert 'aria-invalid="true"' in field.group(0)
        assert 'aria-describedby="login-error"' in field.group(0)
    # A first visit has no error to point at.
    page = client.get("/accounts/login/").content.decode()
    assert "aria-invalid" not in page and "login-error" not in page


def test_messages_open_the_main_content(client: Client, dify_app: DifyApp, reviewer: Any) -> None:
    from tests.review.conftest import make_form

    form = make_form(dify_app)
    client.force_login(reviewer)
    # Without script, taking a form comes back to its page with a message.
    page = client.post(f"/forms/{form.public_id}/claim", follow=True).content.decode()
    main = page.index('<main id="main"')
    assert main < page.index('<div class="messages" role="status">') < page.index("</main>")
    assert "You took this form." in page[main:]


def test_the_default_icon_address_leads_to_the_inbox_s_icon(client: Client, db: None) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 301
    assert response["Location"].endswith("/inbox/favicon.svg")
    from django.contrib.staticfiles import finders

    assert finders.find("inbox/favicon.svg")


def _heartbeats(**ages: float) -> None:
    """Heartbeats (inbox.models.Heartbeat) that many minutes old, by task name."""
    import datetime as dt

    from django.utils import timezone

    from inbox.models import Heartbeat

    for name, minutes in ages.items():
        Heartbeat.objects.update_or_create(
            name=name, defaults={"at": timezone.now() - dt.timedelta(minutes=minutes)}
        )


def test_healthz_says_when_beat_or_the_workers_ran_no_periodic_task(
    client: Client, db: None, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inbox import health, tasks
    from inbox.models import Heartbeat

    # The sweep and the reminders record that they ran.
    tasks.sweep_deliveries()
    tasks.send_reminders()
    assert set(Heartbeat.objects.values_list("name", flat=True)) == {
        "sweep_deliveries",
        "send_reminders",
    }
    assert client.get("/healthz").json() == {"status": "ok"}
    # A tick late is no outage; five minutes without one is.
    _heartbeats(sweep_deliveries=2, send_reminders=2)
    assert client.get("/healthz").json() == {"status": "ok"}
    _heartbeats(sweep_deliveries=7, send_reminders=7)
    assert client.get("/healthz").json() == {
        "status": "degraded",
        "problems": ["beat/worker: no periodic task ran for 7 min"],
    }
    # Beat and the worker run, the mailer does not.
    settings.INBOX_MAIL_QUEUE = "mail"
    _heartbeats(sweep_deliveries=0)
    assert client.get("/healthz").json() == {
        "status": "degraded",
        "problems": ["mailer: no email task ran for 7 min"],
    }
    # Never recorded (beat never started): said once this process has waited as long.
    Heartbeat.objects.all().delete()
    assert client.get("/healthz").json() == {"status": "ok"}
    monkeypatch.setitem(health._first_missing, "sweep_deliveries", time.monotonic() - 360)
    assert client.get("/healthz").json() == {
        "status": "degraded",
        "problems": ["beat/worker: no periodic task ran for 6 min"],
    }


def test_healthz_says_when_decisions_wait_past_their_time(
    client: Client, dify_app: DifyApp, settings: Any
) -> None:
    import datetime as dt

    from django.utils import timezone

    from inbox.models import Decision
    from tests.delivery.helpers import make_form

    _heartbeats(sweep_deliveries=0, send_reminders=0)
    settings.INBOX_DELIVERY_REQUEUE_AFTER_SECONDS = 60
    settings.INBOX_DELIVERY_STUCK_SECONDS = 300
    now = timezone.now()

    def decision(**fields: Any) -> Decision:
        form = make_form(dify_app, status="submitting")
        return Decision.objects.create(form=form, action_id="approve", **fields)

    # Due a moment ago, on a retry's schedule, held for its app, delivering for a minute: none
    # is late.
    decision(status=Decision.Status.QUEUED)
    decision(status=Decision.Status.QUEUED, next_attempt_at=now + dt.timedelta(minutes=5))
    held = decision(status=Decision.Status.QUEUED, held_for_app=True)
    decision(status=Decision.Status.DELIVERING, delivery_started_at=now - dt.timedelta(minutes=1))
    Decision.objects.filter(pk=held.pk).update(updated_at=now - dt.timedelta(hours=1))
    assert client.get("/healthz").json() == {"status": "ok"}
    # Queued nine minutes ago, and its task lost with no sweep to send it again; one
    # delivering for twenty minutes, its worker killed.
    late = decision(status=Decision.Status.QUEUED)
    Decision.objects.filter(pk=late.pk).update(updated_at=now - dt.timedelta(minutes=9))
    decision(status=Decision.Status.DELIVERING, delivery_started_at=now - dt.timedelta(minutes=20))
    assert client.get("/healthz").json() == {
        "status": "degraded",
        "problems": ["decisions: 2 queued 15 min past due"],
    }
