"""Deploy checks (`manage.py check --deploy`) of what the inbox's own settings leave unsafe or
unusable in production."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.core.mail.backends.base import BaseEmailBackend
from django.http.request import validate_host
from django.utils.module_loading import import_string


@register()
def check_inbox_settings(app_configs: Any = None, **kwargs: Any) -> list[Error | Warning]:
    """What would fail only later, when it is used: checked by every management command that
    checks (`migrate` among them, which each deployment runs first)."""
    found: list[Error | Warning] = []
    try:
        backend = import_string(settings.EMAIL_BACKEND)
    except ImportError as exc:
        problem = f"which cannot be imported ({exc})"
    else:
        is_backend = isinstance(backend, type) and issubclass(backend, BaseEmailBackend)
        problem = "" if is_backend else "which is not an email backend class"
    if problem:
        found.append(
            Error(
                f"EMAIL_BACKEND is {settings.EMAIL_BACKEND!r}, {problem}: no email would be sent.",
                hint="Leave EMAIL_BACKEND unset (SMTP when EMAIL_HOST is set), or name a backend "
                "such as django.core.mail.backends.smtp.EmailBackend.",
                id="inbox.E001",
            )
        )
    from inbox.retention import audit_shorter_than_runs, days_text

    runs, audit = settings.INBOX_RETENTION_DAYS, settings.INBOX_AUDIT_RETENTION_DAYS
    if audit_shorter_than_runs(runs, audit):
        found.append(
            Warning(
                f"INBOX_AUDIT_RETENTION_DAYS ({audit:g}) is shorter than INBOX_RETENTION_DAYS "
                f"({runs:g}: runs kept for {days_text(runs)}): the decisions of the runs kept "
                "lose the audit entries that say who made them, how and when they were "
                "delivered.",
                hint="Keep the audit entries at least as long as the runs: set "
                "INBOX_AUDIT_RETENTION_DAYS to INBOX_RETENTION_DAYS or more (0 keeps them for "
                "ever). The entries proving an erasure are kept whatever their age.",
                id="inbox.W009",
            )
        )
    return found


@register(Tags.security, deploy=True)
def check_inbox_deploy(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    found = []
    if settings.DEVELOPMENT_ENCRYPTION_KEY in settings.INBOX_ENCRYPTION_KEYS[:1]:
        found.append(
            Warning(
                "API keys and form tokens are encrypted with the development key published with "
                "the source.",
                hint="Set INBOX_ENCRYPTION_KEYS to a key of your own (Fernet.generate_key()).",
                id="inbox.W001",
            )
        )
    if settings.EMAIL_BACKEND == "inbox.mail.NoMailServerBackend":
        found.append(
            Warning(
                "No mail server is set up: no email (form requests, reminders, notices) is sent.",
                hint="Set EMAIL_HOST (and EMAIL_HOST_USER, EMAIL_HOST_PASSWORD), or EMAIL_BACKEND.",
                id="inbox.W002",
            )
        )
    if settings.INBOX_BASE_URL.split("://", 1)[-1].split("/")[0].split(":")[0] in (
        "127.0.0.1",
        "localhost",
        "[::1]",
    ):
        found.append(
            Warning(
                f"INBOX_BASE_URL is {settings.INBOX_BASE_URL}: emailed links would point there.",
                hint="Set INBOX_BASE_URL to the inbox's public address.",
                id="inbox.W003",
            )
        )
    host = settings.INBOX_BASE_URL.split("://", 1)[-1].split("/")[0].lower()
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.removesuffix(".")  # a fully qualified name, as Django reads the Host header
    if not validate_host(name, settings.ALLOWED_HOSTS):
        found.append(
            Warning(
                f"INBOX_BASE_URL's host {name!r} is not in ALLOWED_HOSTS: emailed links would "
                "be refused (400 Bad Request).",
                hint="Add the host to ALLOWED_HOSTS, or correct INBOX_BASE_URL.",
                id="inbox.W004",
            )
        )
    if str(settings.DATABASES["default"]["ENGINE"]).endswith("sqlite3"):
        found.append(
            Warning(
                "The database is SQLite: the inbox keeps its data in a file on this "
                f"machine ({settings.DATABASES['default']['NAME']}), which web, worker, beat and "
                "the follower in other containers or hosts never see.",
                hint="Set DATABASE_URL to a PostgreSQL database (postgres://user:pass@host:5432/"
                "db) shared by every process; SQLite suits a trial on one machine (make run).",
                id="inbox.W006",
            )
        )
    backend = str(settings.CACHES.get("default", {}).get("BACKEND", ""))
    if not str(settings.DATABASES["default"]["ENGINE"]).endswith("sqlite3") and backend.endswith(
        ("LocMemCache", "DummyCache")
    ):
        found.append(
            Warning(
                "The cache is each process's own memory (CACHE_URL not set): with several web "
                "processes, the sign-in throttling, the upload and guest-link rate limits count "
                "per process (each lets through its own share), and presence, tab counts and "
                "apps' parameters are not shared.",
                hint="Set CACHE_URL to a Redis (redis://host:6379/1) shared by every web process.",
                id="inbox.W007",
            )
        )
    if settings.SECURE_SSL_REDIRECT and not settings.INBOX_TRUSTED_PROXIES:
        found.append(
            Warning(
                "HTTPS redirects are on, and no reverse proxy is trusted (INBOX_TRUSTED_PROXIES "
                "is 0): X-Forwarded-Proto is not read, so behind a TLS-terminating proxy every "
                "request looks like plain HTTP and is redirected again.",
                hint="Set INBOX_TRUSTED_PROXIES to the number of reverse proxies in front; "
                "without one (a trial on plain HTTP), set SECURE_SSL_REDIRECT=0.",
                id="inbox.W008",
            )
        )
    if str(settings.CELERY_BROKER_URL).startswith("filesystem://"):
        found.append(
            Warning(
                "The Celery broker is the file system: tasks go through folders on this "
                "machine, which web, worker and beat in other containers or hosts never see "
                "(decisions would wait for the sweep, emails not be sent).",
                hint="Set CELERY_BROKER_URL to a Redis (redis://host:6379/0) shared by every "
                "process; leave it unset only when all of them run on this one machine.",
                id="inbox.W005",
            )
        )
    return found
