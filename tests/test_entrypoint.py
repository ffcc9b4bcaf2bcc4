"""The container entrypoint's commands, run for real (the Docker engine itself is not needed)."""

from __future__ import annotations

import contextlib
import os
import runpy
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.db import connection

from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    if connection.vendor != "postgresql":
        pytest.skip(
            "the entrypoint runs the production configuration: needs PostgreSQL (make test)"
        )
    db = connection.settings_dict
    env = dict(os.environ)
    env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    env["PYTHON"] = sys.executable
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_until(cmd: list[str], env: dict[str, str], marker: str, timeout: float = 60) -> str:
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in "".join(lines):
                return "".join(lines)
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{cmd[1]} never printed {marker!r}:\n{''.join(lines)[-3000:]}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_migrate_command_runs(transactional_db: None) -> None:
    done = subprocess.run(
        ["bin/docker-entrypoint", "migrate"], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def _web(proxies: int, access_log: Path) -> Iterator[str]:
    """`bin/docker-entrypoint web` in production's HTTPS settings behind `proxies` reverse
    proxies, healthy; its address."""
    env = _env()
    env["PORT"] = str(port := _free_port())
    env["WEB_CONCURRENCY"] = "1"
    env["SECURE_SSL_REDIRECT"] = "1"
    # Run from the source tree: the image collects the static files when it is built (the
    # health check answers 503 without them, tests/test_views.py).
    env["INBOX_MANIFEST_STATIC"] = "0"
    # As in production: the probe's address is not one of the site's host names.
    env["ALLOWED_HOSTS"] = "inbox.example.com"
    env["INBOX_TRUSTED_PROXIES"] = str(proxies)
    proc = subprocess.Popen(
        ["bin/docker-entrypoint", "web"],
        cwd=ROOT,
        env=env,
        stdout=access_log.open("w"),
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=2).json() == {"status": "ok"}
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=60)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_web_command_serves_the_health_check(transactional_db: None, tmp_path: Path) -> None:
    access_log = tmp_path / "access.log"
    with _web(1, access_log) as base:
        # Everything else is redirected to HTTPS in production.
        response = httpx.get(f"{base}/", headers={"Host": "inbox.example.com"}, timeout=5)
        assert response.status_code == 301
        assert response.headers["location"].startswith("https://inbox.example.com/")
        # Any other host is refused, the probe's address included.
        assert httpx.get(f"{base}/", timeout=5).status_code == 400
        # Behind the proxy, its X-Forwarded-Proto says the visitor came over HTTPS.
        response = httpx.get(
            f"{base}/accounts/login/",
            headers={"Host": "inbox.example.com", "X-Forwarded-Proto": "https"},
            timeout=5,
        )
        assert response.status_code == 200
        # The access log names the visitor the proxy saw, not only the proxy, and not what the
        # visitor wrote in X-Forwarded-For before it (the left-most entry).
        httpx.get(
            f"{base}/accounts/login/",
            headers={"Host": "inbox.example.com", "X-Forwarded-For": "198.51.100.7, 203.0.113.5"},
            timeout=5,
        )
    lines = access_log.read_text().splitlines()
    assert any(
        line.startswith("203.0.113.5 127.0.0.1 ") and '"GET /accounts/login/ HTTP/1.1"' in line
        for line in lines
    ), lines
    assert not any("198.51.100.7" in line for line in lines), lines


def test_web_without_a_trusted_proxy_takes_no_x_forwarded_proto(
    transactional_db: None, tmp_path: Path
) -> None:
    # INBOX_TRUSTED_PROXIES=0: a visitor reaching gunicorn directly over plain HTTP cannot claim
    # HTTPS, neither to gunicorn (wsgi.url_scheme) nor to Django: still redirected.
    with _web(0, tmp_path / "access.log") as base:
        response = httpx.get(
            f"{base}/accounts/login/",
            headers={"Host": "inbox.example.com", "X-Forwarded-Proto": "https"},
            timeout=5,
        )
        assert response.status_code == 301
        assert response.headers["location"] == "https://inbox.example.com/accounts/login/"


def test_the_web_server_trusts_forwarded_headers_behind_the_proxies_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conf = str(ROOT / "inbox" / "gunicorn_conf.py")
    monkeypatch.delenv("INBOX_TRUSTED_PROXIES", raising=False)
    assert runpy.run_path(conf)["forwarded_allow_ips"] == ""
    monkeypatch.setenv("INBOX_TRUSTED_PROXIES", "2")
    assert runpy.run_path(conf)["forwarded_allow_ips"] == "*"
    monkeypatch.setenv("INBOX_TRUSTED_PROXIES", "0")
    assert runpy.run_path(conf)["forwarded_allow_ips"] == ""


def test_worker_command_starts_a_worker(transactional_db: None) -> None:
    env = _env()
    env["WORKER_CONCURRENCY"] = "1"
    out = _run_until(["bin/docker-entrypoint", "worker"], env, "ready.")
    assert "inbox.tasks.sweep_expired_forms" in out


def test_beat_command_starts_the_scheduler(transactional_db: None, tmp_path: Path) -> None:
    env = _env()
    env["BEAT_SCHEDULE_FILE"] = str(tmp_path / "schedule")
    _run_until(["bin/docker-entrypoint", "beat"], env, "beat: Starting")


def test_follower_command_starts_a_follower(transactional_db: None) -> None:
    out = _run_until(["bin/docker-entrypoint", "follower"], _env(), ": started")
    assert "follower" in out


def _queues(banner: str) -> list[str]:
    """The queue names a worker's start-up banner lists under `[queues]`."""
    listed = banner.split("[queues]", 1)[1].split("[tasks]", 1)[0]
    return sorted(line.split()[1] for line in listed.splitlines() if line.strip().startswith("."))


def test_with_a_mail_queue_the_worker_takes_both_queues_unless_told(
    transactional_db: None,
) -> None:
    env = _env()
    env.update(WORKER_CONCURRENCY="1", INBOX_MAIL_QUEUE="mail")
    # Alone, it sends the emails too: setting the queue loses none.
    assert _queues(_run_until(["bin/docker-entrypoint", "worker"], env, "ready.")) == [
        "celery",
        "mail",
    ]
    # Beside a mailer (compose.yaml), it delivers decisions only.
    env["WORKER_QUEUES"] = "celery"
    assert _queues(_run_until(["bin/docker-entrypoint", "worker"], env, "ready.")) == ["celery"]


def test_the_mailer_sends_the_emails_queued_for_it(transactional_db: None) -> None:
    env = _env()
    env.update(INBOX_MAIL_QUEUE="mail", MAILER_CONCURRENCY="1")
    # Queued by another process with the same setting: routed to the mail queue.
    queued = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from inbox.tasks import send_form_emails as t; "
            "r = t.delay(0); print(t.app.amqp.router.route({}, t.name)['queue'].name)",
        ],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "inbox.settings"},
        capture_output=True,
        text=True,
    )
    assert queued.returncode == 0, queued.stderr
    assert queued.stdout.split() == ["mail"]
    # The banner lists every task by name: the marker is the message's own log line.
    out = _run_until(["bin/docker-entrypoint", "mailer"], env, "succeeded in")
    assert _queues(out) == ["mail"]
    assert any(
        "inbox.tasks.send_form_emails[" in line and "succeeded in" in line
        for line in out.splitlines()
    )


def test_the_mailer_refuses_to_start_without_its_queue(transactional_db: None) -> None:
    env = _env()
    env.pop("INBOX_MAIL_QUEUE", None)
    done = subprocess.run(
        ["bin/docker-entrypoint", "mailer"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "set INBOX_MAIL_QUEUE" in done.stderr


@pytest.mark.parametrize("role", ["web", "worker", "mailer", "beat", "follower", "migrate"])
def test_the_image_refuses_to_start_on_files_of_its_own_unless_told(
    role: str, tmp_path: Path
) -> None:
    """Without DATABASE_URL and CELERY_BROKER_URL each container would run on a SQLite file
    and a file queue of its own, in silence."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(PYTHON=sys.executable, INBOX_MAIL_QUEUE="mail", INBOX_VAR_DIR=str(tmp_path))
    env.pop("INBOX_EMBEDDED", None)
    done = subprocess.run(
        ["bin/docker-entrypoint", role], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"{role}: set DATABASE_URL and CELERY_BROKER_URL (")
    assert "INBOX_EMBEDDED=1" in done.stderr
    # One of them missing is named alone.
    done = subprocess.run(
        ["bin/docker-entrypoint", role],
        cwd=ROOT,
        env={**env, "CELERY_BROKER_URL": "redis://127.0.0.1:9/0"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stderr.startswith(f"{role}: set DATABASE_URL (")
    assert not list(tmp_path.iterdir())


def test_the_embedded_setup_runs_in_the_image_when_asked_for(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(PYTHON=sys.executable, INBOX_VAR_DIR=str(tmp_path), INBOX_EMBEDDED="1")
    done = subprocess.run(
        ["bin/docker-entrypoint", "migrate"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "inbox.sqlite3").exists()
