from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent


def _production_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SECURE_", "SESSION_", "DEBUG"))
    }
    env.update(
        DATABASE_URL="postgres://inbox:pw@db.internal:5432/inbox",
        SECRET_KEY="k" * 30 + "-production-secret-" + "z" * 20,
        INBOX_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        ALLOWED_HOSTS="inbox.example.com",
        CELERY_BROKER_URL="redis://redis.internal:6379/0",
        INBOX_BASE_URL="https://inbox.example.com",
        EMAIL_HOST="smtp.example.com",
        # Behind the TLS-terminating proxy production expects (.env.example).
        INBOX_TRUSTED_PROXIES="1",
    )
    env.update(extra)
    return env


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_production_settings_pass_the_deploy_check() -> None:
    env = _production_env(CACHE_URL="redis://redis.internal:6379/1")
    done = _manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_the_deploy_check_warns_of_what_would_leak_or_go_nowhere() -> None:
    env = _production_env()
    del env["EMAIL_HOST"], env["INBOX_BASE_URL"]
    done = _manage(env, "check", "--deploy")
    assert "inbox.W002" in done.stderr and "No mail server is set up" in done.stderr
    assert "inbox.W003" in done.stderr
    # Without DATABASE_URL, the development keys published with the source are named.
    env = _production_env()
    del env["DATABASE_URL"], env["SECRET_KEY"], env["INBOX_ENCRYPTION_KEYS"]
    done = _manage(env, "check", "--deploy")
    assert "security.W009" in done.stderr and "inbox.W001" in done.stderr


def test_the_deploy_check_warns_of_https_redirects_with_no_proxy_trusted() -> None:
    # X-Forwarded-Proto is read behind INBOX_TRUSTED_PROXIES proxies only: with none, every
    # request through a TLS-terminating proxy would look like plain HTTP and be redirected.
    done = _manage(_production_env(INBOX_TRUSTED_PROXIES="0"), "check", "--deploy")
    assert "inbox.W008" in done.stderr and "INBOX_TRUSTED_PROXIES" in done.stderr
    done = _manage(
        _production_env(INBOX_TRUSTED_PROXIES="0", SECURE_SSL_REDIRECT="0"), "check", "--deploy"
    )
    assert "inbox.W008" not in done.stderr


def test_without_a_mail_server_an_email_is_not_written_out_but_left_unsent() -> None:
    env = _production_env()
    del env["EMAIL_HOST"]
    done = _manage(
        env,
        "shell",
        "-c",
        "from django.core.mail import send_mail\n"
        "try:\n    send_mail('s', 'http://x/r/secret-link/', 'a@x.org', ['b@x.org'])\n"
        "except Exception as exc:\n    print('refused:', exc)",
    )
    assert "refused: No mail server is set up" in done.stdout, done.stdout + done.stderr
    assert "secret-link" not in done.stdout + done.stderr


def test_a_lower_case_log_level_is_read() -> None:
    done = _manage(_production_env(LOG_LEVEL="warning"), "check")
    assert done.returncode == 0, done.stderr
    # Left empty, as other settings may be: the default.
    done = _manage(_production_env(LOG_LEVEL=""), "check")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LOG_LEVEL", "loud", "LOG_LEVEL must be one of DEBUG, INFO"),
        (
            "INBOX_BASE_URL",
            "inbox.example.com",
            "INBOX_BASE_URL must be the inbox's public address",
        ),
        ("DEBUG", "perhaps", "DEBUG must be a boolean"),
        ("DATABASE_URL", "mysql://x@y/z", "DATABASE_URL must start with postgres:// or sqlite://"),
        ("EMAIL_PORT", "smtp", "EMAIL_PORT must be an integer"),
        (
            "INBOX_ENCRYPTION_KEYS",
            "not-a-fernet-key",
            "INBOX_ENCRYPTION_KEYS must be comma-separated Fernet keys",
        ),
        (
            "INBOX_MARKDOWN_IMAGE_HOSTS",
            "https://images.example.com",
            "INBOX_MARKDOWN_IMAGE_HOSTS must be comma-separated host names",
        ),
        ("TIME_ZONE", "Europe/Pariss", "TIME_ZONE must be a time zone name like Europe/Paris"),
        # Named, and the URL (its password) not repeated.
        ("DATABASE_URL", "postgres://u:pw@db:notaport/inbox", "DATABASE_URL is not a valid URL"),
        ("DATABASE_URL", "postgres://u:p[w@db/inbox", "%-encode special characters"),
        ("EMAIL_TIMEOUT", "soon", "EMAIL_TIMEOUT must be an integer"),
        # A hung mail server would eat the sending task's time limit before it gave up.
        ("EMAIL_TIMEOUT", "50", "EMAIL_TIMEOUT must be at most 30 seconds"),
        # The machine's own zone under a file's name: readers would be shown "localtime".
        ("TIME_ZONE", "localtime", "TIME_ZONE must be a time zone name like Europe/Paris"),
        # A scheme or a port never matches a request's host: every page would be a 400.
        ("ALLOWED_HOSTS", "https://inbox.example.com", "ALLOWED_HOSTS must be comma-separated"),
        ("ALLOWED_HOSTS", "inbox.example.com:443", "ALLOWED_HOSTS must be comma-separated"),
        ("ALLOWED_HOSTS", "", "ALLOWED_HOSTS is empty: with DEBUG off every request"),
    ],
)
def test_a_bad_setting_stops_start_up_with_its_name(name: str, value: str, message: str) -> None:
    done = _manage(
        _production_env(**{name: value}),
        "shell",
        "-c",
        "from inbox import crypto; crypto.encrypt('x')",
    )
    assert done.returncode != 0
    assert message in done.stderr


def test_the_forms_django_allows_in_allowed_hosts_are_read() -> None:
    env = _production_env(
        ALLOWED_HOSTS="inbox.example.com, .example.org,10.0.0.5,[::1],*",
        TIME_ZONE="Asia/Shanghai",
    )
    done = _manage(env, "check")
    assert done.returncode == 0, done.stderr


def test_an_email_backend_that_cannot_be_imported_stops_migrate() -> None:
    done = _manage(
        _production_env(EMAIL_BACKEND="django.core.mail.backends.smpt.EmailBackend"), "check"
    )
    assert done.returncode != 0
    assert "inbox.E001" in done.stderr and "cannot be imported" in done.stderr
    # Importable, but no backend: refused as early.
    done = _manage(_production_env(EMAIL_BACKEND="django.core.mail.send_mail"), "check")
    assert done.returncode != 0
    assert "inbox.E001" in done.stderr and "is not an email backend class" in done.stderr


def test_the_deploy_check_warns_when_emailed_links_would_be_refused() -> None:
    done = _manage(
        _production_env(INBOX_BASE_URL="https://approvals.example.net"), "check", "--deploy"
    )
    assert "inbox.W004" in done.stderr and "'approvals.example.net'" in done.stderr
    env = _production_env(INBOX_BASE_URL="https://inbox.example.com:8443/approvals")
    done = _manage(env, "check", "--deploy")
    assert "inbox.W004" not in done.stderr


def test_production_requires_a_secret_key_and_encryption_keys() -> None:
    env = _production_env()
    del env["SECRET_KEY"]
    done = _manage(env, "check")
    assert "SECRET_KEY must be set when DATABASE_URL is set" in done.stderr
    env = _production_env()
    del env["INBOX_ENCRYPTION_KEYS"]
    done = _manage(env, "check")
    assert "INBOX_ENCRYPTION_KEYS must be set when DATABASE_URL is set" in done.stderr


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def test_the_image_lock_pins_what_the_tests_ran_without_the_tools() -> None:
    """The image installs requirements.prod.lock: the same versions the suite runs on (a subset
    of requirements.lock), without the test and lint tools."""
    everything, image = _pins(ROOT / "requirements.lock"), _pins(ROOT / "requirements.prod.lock")
    drifted = {n: (v, everything.get(n)) for n, v in image.items() if everything.get(n) != v}
    assert not drifted, (
        f"{drifted}: regenerate with `uv pip compile pyproject.toml --python-version 3.11 "
        "-c requirements.lock -o requirements.prod.lock`"
    )
    for package in ("django", "celery", "psycopg", "httpx", "gunicorn", "whitenoise"):
        assert package in image
    for tool in ("pytest", "playwright", "mypy", "ruff"):
        assert tool not in image
    assert "requirements.prod.lock" in (ROOT / "Dockerfile").read_text()


def test_every_setting_read_from_the_environment_is_documented() -> None:
    import re

    source = (ROOT / "inbox" / "settings.py").read_text()
    names = set(re.findall(r"env_\w+\(\s*\"([A-Z][A-Z0-9_]+)\"", source))
    assert len(names) > 40
    readme = (ROOT / "README.md").read_text()
    missing = sorted(n for n in names if f"`{n}`" not in readme)
    assert not missing, f"README.md's settings tables lack {missing}"


def test_every_json_api_call_is_documented() -> None:
    import re

    from inbox.urls import urlpatterns

    readme = (ROOT / "README.md").read_text()
    routes = {str(p.pattern) for p in urlpatterns if str(p.pattern).startswith("api/v1/")}
    assert len(routes) >= 8
    documented = {re.sub(r"\{\w+\}", "X", r) for r in re.findall(r"`\w+ /(api/v1/[^` ?]*)", readme)}
    missing = sorted(r for r in routes if re.sub(r"<[\w:]+>", "X", r) not in documented)
    assert not missing, f"README.md's JSON API table lacks {missing}"


def test_an_earlier_secret_key_email_timeout_and_email_folder_are_read() -> None:
    env = _production_env(
        SECRET_KEY_FALLBACKS="old-key-" + "a" * 40 + ", older-key-" + "b" * 40,
        EMAIL_TIMEOUT="7",
        EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
        EMAIL_FILE_PATH="/tmp/inbox-mail",
    )
    done = _manage(
        env,
        "shell",
        "-c",
        "from django.conf import settings as s; "
        "print(len(s.SECRET_KEY_FALLBACKS), s.SECRET_KEY_FALLBACKS[1][:10], s.EMAIL_TIMEOUT, "
        "s.EMAIL_FILE_PATH)",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].split() == [
        "2",
        "older-key-",
        "7",
        "/tmp/inbox-mail",
    ]


def test_the_deploy_check_warns_of_a_broker_on_this_machine_alone() -> None:
    env = _production_env()
    env.pop("CELERY_BROKER_URL", None)
    done = _manage(env, "check", "--deploy")
    assert "inbox.W005" in done.stderr and "The Celery broker is the file system" in done.stderr
    done = _manage(_production_env(CELERY_BROKER_URL="redis://redis:6379/0"), "check", "--deploy")
    assert "inbox.W005" not in done.stderr


def test_the_deploy_check_names_sqlite_and_the_file_broker() -> None:
    # The image started without DATABASE_URL and CELERY_BROKER_URL (as `docker run --env-file`
    # with .env.example's values once did): each process on files of its own.
    env = _production_env()
    del env["DATABASE_URL"], env["CELERY_BROKER_URL"]
    done = _manage(env, "check", "--deploy")
    assert "inbox.W006" in done.stderr and "The database is SQLite" in done.stderr
    assert "inbox.W005" in done.stderr and "The Celery broker is the file system" in done.stderr
    done = _manage(_production_env(), "check", "--deploy")
    assert "inbox.W005" not in done.stderr and "inbox.W006" not in done.stderr


def test_the_env_example_names_the_database_and_the_broker() -> None:
    example = (ROOT / ".env.example").read_text()
    assert "\nDATABASE_URL=postgres://" in example
    assert "\nCELERY_BROKER_URL=redis://" in example


def test_the_deploy_check_warns_of_a_cache_each_process_keeps_alone() -> None:
    # PostgreSQL without CACHE_URL (as `docker run --env-file .env` once ran): each web process
    # counted sign-in failures and rate limits on its own.
    done = _manage(_production_env(), "check", "--deploy")
    assert "inbox.W007" in done.stderr and "CACHE_URL not set" in done.stderr
    env = _production_env(CACHE_URL="redis://redis.internal:6379/1")
    assert "inbox.W007" not in _manage(env, "check", "--deploy").stderr
    # The embedded setup (SQLite, one machine) is told about SQLite, not the cache.
    env = _production_env()
    del env["DATABASE_URL"]
    assert "inbox.W007" not in _manage(env, "check", "--deploy").stderr
    example = (ROOT / ".env.example").read_text()
    assert "\nCACHE_URL=redis://" in example


def _email_settings(**extra: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    done = _manage(
        _production_env(**extra),
        "shell",
        "-c",
        "from django.conf import settings as s; "
        "print(s.EMAIL_USE_SSL, s.EMAIL_USE_TLS, s.EMAIL_PORT, s.EMAIL_SSL_CERTFILE)",
    )
    lines = done.stdout.strip().splitlines()
    return done, lines[-1].split() if lines else []


def test_smtp_over_implicit_tls_can_be_set_and_starttls_is_the_default() -> None:
    # The default with EMAIL_HOST: STARTTLS on port 587.
    done, shown = _email_settings()
    assert shown == ["False", "True", "587", "None"], done.stderr
    # Implicit TLS (port 465): STARTTLS off unless asked for, the port 465 unless named.
    done, shown = _email_settings(EMAIL_USE_SSL="1", EMAIL_SSL_CERTFILE="/etc/ssl/client.pem")
    assert shown == ["True", "False", "465", "/etc/ssl/client.pem"], done.stderr
    done, shown = _email_settings(EMAIL_USE_SSL="1", EMAIL_PORT="2465", EMAIL_USE_TLS="0")
    assert shown == ["True", "False", "2465", "None"], done.stderr
    # A plain relay.
    done, shown = _email_settings(EMAIL_USE_TLS="0", EMAIL_PORT="25")
    assert shown == ["False", "False", "25", "None"], done.stderr
    # Both: refused at start-up, naming them.
    done, _shown = _email_settings(EMAIL_USE_SSL="1", EMAIL_USE_TLS="1")
    assert done.returncode != 0
    assert "EMAIL_USE_SSL and EMAIL_USE_TLS are both on" in done.stderr


def test_the_host_can_be_read_from_x_forwarded_host_when_asked() -> None:
    code = "from django.conf import settings as s; print(s.USE_X_FORWARDED_HOST)"
    done = _manage(_production_env(), "shell", "-c", code)
    assert done.stdout.split()[-1] == "False", done.stderr
    done = _manage(_production_env(USE_X_FORWARDED_HOST="1"), "shell", "-c", code)
    assert done.stdout.split()[-1] == "True", done.stderr
    example = (ROOT / ".env.example").read_text()
    assert "proxy_set_header Host $host" in example
