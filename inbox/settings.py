"""Settings for Dify Approval Inbox, read from the environment.

Defaults give the embedded setup (SQLite, a file-system Celery broker, console email) so a fresh
checkout runs with no services. Production sets DATABASE_URL, CELERY_BROKER_URL, SECRET_KEY,
ALLOWED_HOSTS, INBOX_ENCRYPTION_KEYS and the email settings.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from inbox.env import (
    env_allowed_hosts,
    env_bool,
    env_float,
    env_hosts,
    env_int,
    env_list,
    env_str,
    env_time_zone,
    parse_database_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("INBOX_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
# Published with the source: Django's deploy check (security.W009) knows it by its prefix.
_INSECURE_KEY = "django-insecure-embedded-key-change-me-in-production-0123456789abcdef"
SECRET_KEY = env_str("SECRET_KEY", _INSECURE_KEY if DEBUG or not env_str("DATABASE_URL") else "")
if not SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set when DATABASE_URL is set")
# Earlier keys, comma-separated, still accepted after SECRET_KEY changes: links already emailed
# and sessions signed with them keep working while they last. Sign with the new key, keep the
# old one here until nothing signed with it is still good: a link to a form with an expiry lasts
# until that expiry, however far off, so INBOX_LINK_MAX_AGE_SECONDS alone can be too short;
# `manage.py secret_key_fallbacks` says until when.
SECRET_KEY_FALLBACKS = [
    k.strip() for k in env_str("SECRET_KEY_FALLBACKS", "").split(",") if k.strip()
]
ALLOWED_HOSTS = env_allowed_hosts("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
if not ALLOWED_HOSTS and not DEBUG:
    raise ImproperlyConfigured(
        "ALLOWED_HOSTS is empty: with DEBUG off every request would be refused (400); name the "
        "host names the inbox is reached by, like inbox.example.com"
    )
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# A page's htmx post refused by the check is told so in the page (the full page otherwise).
CSRF_FAILURE_VIEW = "inbox.views.csrf_failure"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "inbox",
]

MIDDLEWARE = [
    # The client's address for the access log, before anything can answer.
    "inbox.middleware.ClientAddressMiddleware",
    "inbox.middleware.HealthCheckMiddleware",
    "inbox.middleware.ContentSecurityPolicyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After the session's user is known, before the CSRF check reads the body (in process_view).
    "inbox.middleware.UploadSizeMiddleware",
    "inbox.middleware.PrivatePagesMiddleware",
    "inbox.middleware.CurrentActorMiddleware",
    "inbox.middleware.DifyDeadlineMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "inbox.middleware.HtmxReloadMiddleware",
    "inbox.middleware.TimezoneMiddleware",
    "inbox.middleware.ReviewerLanguageMiddleware",
]

ROOT_URLCONF = "inbox.urls"
WSGI_APPLICATION = "inbox.wsgi.application"
ASGI_APPLICATION = "inbox.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.template.context_processors.tz",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    }
]

_database_url = env_str("DATABASE_URL", "")
if _database_url:
    DATABASES = {"default": parse_database_url("DATABASE_URL", _database_url)}
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "inbox.sqlite3",
            # WAL lets the web, worker and follower processes read while one writes.
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "inbox:index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en"
LANGUAGES = [("en", _("English")), ("zh-hans", _("Simplified Chinese"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env_time_zone("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if env_bool("INBOX_MANIFEST_STATIC", not DEBUG and bool(_database_url))
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# Uploads are streamed on to Dify; never keep a large file in memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
FILE_UPLOAD_TEMP_DIR = env_str("FILE_UPLOAD_TEMP_DIR", "") or None
# An upload request that does not say how many files it holds (the API's take one; a form's input
# and a chatflow's message their own number) holds at most this many of the largest size Dify
# takes; the files past that are dropped as they arrive (inbox.uploads.SizeCapHandler).
INBOX_UPLOAD_FILES_PER_REQUEST = env_int("INBOX_UPLOAD_FILES_PER_REQUEST", 10, minimum=1)
# Files one person (a reviewer, or a guest by address) may send to Dify for one form, those removed
# or replaced since included: Dify keeps every file (it has no delete). Never fewer than twice
# what the form's file inputs hold, so each file can be replaced once. And files one person may
# upload per minute, across forms, pages and API tokens alike (inbox.uploads.upload_to_dify).
INBOX_UPLOADS_PER_FORM = env_int("INBOX_UPLOADS_PER_FORM", 30, minimum=1)
INBOX_UPLOADS_PER_MINUTE = env_int("INBOX_UPLOADS_PER_MINUTE", 30, minimum=1)
# Files one person may send to Dify with chatflow messages in a day (in TIME_ZONE), and their
# megabytes in all, pages and API tokens alike (inbox.uploads.upload_message_file): Dify keeps
# every file, and a message's files belong to no form whose budget would bound them.
INBOX_MESSAGE_FILES_PER_DAY = env_int("INBOX_MESSAGE_FILES_PER_DAY", 200, minimum=1)
INBOX_MESSAGE_FILES_MB_PER_DAY = env_int("INBOX_MESSAGE_FILES_MB_PER_DAY", 1000, minimum=1)

DEVELOPMENT_ENCRYPTION_KEY = "ZW1iZWRkZWQtZGV2LWtleS1ub3QtZm9yLXByb2R1Y3Q="
# API keys of Dify apps (and form tokens) are encrypted with these Fernet keys. The first one
# encrypts; all of them decrypt, so a key can be rotated by putting a new one in front.
INBOX_ENCRYPTION_KEYS = env_list("INBOX_ENCRYPTION_KEYS", [])
if not INBOX_ENCRYPTION_KEYS:
    if _database_url and not DEBUG:
        raise ImproperlyConfigured("INBOX_ENCRYPTION_KEYS must be set when DATABASE_URL is set")
    # Embedded default: a fixed development key. Never used when DATABASE_URL is set (the deploy
    # check warns of it: `inbox.checks`).
    INBOX_ENCRYPTION_KEYS = [DEVELOPMENT_ENCRYPTION_KEY]
# Read now, so that a key that is no key stops start-up with the variable's name rather than
# the first page that decrypts something.
try:
    for _key in INBOX_ENCRYPTION_KEYS:
        Fernet(_key.encode())
except (ValueError, TypeError):
    raise ImproperlyConfigured(
        "INBOX_ENCRYPTION_KEYS must be comma-separated Fernet keys (generate one with: python -c "
        "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
    ) from None

# Celery: the embedded default is a file-system broker that needs no server.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    _broker_dir = VAR_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
# Emails (a form's first emails, reminders, closing and failure notices) go to this queue when it is set,
# so a worker of their own (`bin/docker-entrypoint mailer`) sends them and a slow mail server
# never holds the slots decisions are delivered from. Unset: they share the default queue.
# The `worker` role consumes both queues unless WORKER_QUEUES names others.
INBOX_MAIL_QUEUE = env_str("INBOX_MAIL_QUEUE", "")
if INBOX_MAIL_QUEUE:
    CELERY_TASK_ROUTES = {
        "inbox.tasks.send_form_emails": {"queue": INBOX_MAIL_QUEUE},
        "inbox.tasks.send_reminders": {"queue": INBOX_MAIL_QUEUE},
        "inbox.tasks.send_failure_notice": {"queue": INBOX_MAIL_QUEUE},
        "inbox.tasks.send_password_reset": {"queue": INBOX_MAIL_QUEUE},
        "inbox.tasks.send_password_link": {"queue": INBOX_MAIL_QUEUE},
    }
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = TIME_ZONE
# What a task prints (the embedded demo's console email backend prints each email) is logged as
# information, not as a warning.
CELERY_WORKER_REDIRECT_STDOUTS_LEVEL = "INFO"
# Celery's Django fixup closes the database connection around every task unless this is set; a
# new PostgreSQL connection (a server process forked) per task costs more than most tasks do.
# Connections are kept as for web requests instead: inbox/celery.py drops a broken or aged one
# (CONN_MAX_AGE, health checks) before each task, and the fixup recycles them every this many.
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000, minimum=0)

# Decision delivery (inbox.tasks.deliver_decision). A failed attempt that may succeed later
# (connection error, timeout, 429, 5xx) is retried after base * 2**(attempt-1) seconds, at most
# the cap, less up to a quarter of jitter; a Retry-After from Dify is honoured. After the last
# attempt the decision is `failed` and waits for an administrator's "retry delivery".
INBOX_DELIVERY_MAX_ATTEMPTS = env_int("INBOX_DELIVERY_MAX_ATTEMPTS", 12, minimum=1)
INBOX_DELIVERY_RETRY_BASE_SECONDS = env_float("INBOX_DELIVERY_RETRY_BASE_SECONDS", 2.0, minimum=0)
INBOX_DELIVERY_RETRY_CAP_SECONDS = env_float("INBOX_DELIVERY_RETRY_CAP_SECONDS", 900.0, minimum=0)
# Longest Retry-After we wait for; a longer one is cut to this.
INBOX_DELIVERY_RETRY_AFTER_MAX_SECONDS = env_float(
    "INBOX_DELIVERY_RETRY_AFTER_MAX_SECONDS", 3600.0, minimum=0
)
# How long one submit may take before it counts as a timeout (connect stays short).
INBOX_DELIVERY_TIMEOUT_SECONDS = env_float("INBOX_DELIVERY_TIMEOUT_SECONDS", 30.0, minimum=0.1)
# The run's live events are watched during each submit, so that an answer lost on the way back
# can be confirmed from Dify's own `human_input_form_filled`; read for at most this long.
INBOX_DELIVERY_WATCH_RUN = env_bool("INBOX_DELIVERY_WATCH_RUN", True)
INBOX_DELIVERY_WATCH_SECONDS = env_float("INBOX_DELIVERY_WATCH_SECONDS", 5.0, minimum=0.1)
# A decision `delivering` for longer than this was left by a dead worker: the sweep re-queues
# it. Must exceed the delivery task's hard time limit (timeout + confirmation reads + margin).
INBOX_DELIVERY_STUCK_SECONDS = env_float("INBOX_DELIVERY_STUCK_SECONDS", 300.0, minimum=0)
# The delivery task's time limits follow from the above: a submit, a bounded read of the run's
# events after a lost answer, and after a 412 one snapshot (open + bounded read).
INBOX_DELIVERY_SOFT_TIME_LIMIT = int(
    2 * INBOX_DELIVERY_TIMEOUT_SECONDS + 2 * INBOX_DELIVERY_WATCH_SECONDS + 5
)
INBOX_DELIVERY_TIME_LIMIT = INBOX_DELIVERY_SOFT_TIME_LIMIT + 5
if INBOX_DELIVERY_STUCK_SECONDS <= INBOX_DELIVERY_TIME_LIMIT:
    raise ImproperlyConfigured(
        "INBOX_DELIVERY_STUCK_SECONDS must exceed the delivery task's time limit, "
        f"{INBOX_DELIVERY_TIME_LIMIT} s with these delivery timeouts"
    )
# The delivery pump (inbox.tasks.deliver_queued) claims this many due decisions at a time and
# sends them at once, each on its own thread; it stops claiming after the pump time and wakes
# another pump for what is left, so one task never holds a worker thread for long.
INBOX_DELIVERY_BATCH = env_int("INBOX_DELIVERY_BATCH", 32, minimum=1)
INBOX_DELIVERY_PUMP_SECONDS = env_float("INBOX_DELIVERY_PUMP_SECONDS", 20.0, minimum=1)
# Pumps sharing a backlog (PostgreSQL only): each its own task, so with the default prefork pool
# each its own process and core.
INBOX_DELIVERY_PUMPS = env_int("INBOX_DELIVERY_PUMPS", 2, minimum=1)
INBOX_DELIVERY_PUMP_SOFT_TIME_LIMIT = int(
    INBOX_DELIVERY_PUMP_SECONDS + INBOX_DELIVERY_SOFT_TIME_LIMIT + 5
)
INBOX_DELIVERY_PUMP_TIME_LIMIT = INBOX_DELIVERY_PUMP_SOFT_TIME_LIMIT + 5
# A queued decision this far past its due time lost its task (broker restart, publish failure):
# the sweep sends it again. A duplicate task is harmless, the first to claim the decision wins.
INBOX_DELIVERY_REQUEUE_AFTER_SECONDS = env_float(
    "INBOX_DELIVERY_REQUEUE_AFTER_SECONDS", 120.0, minimum=0
)
# Pending forms not checked in Dify for this long are asked about (GET form), at most a batch
# per run, to find those answered in Dify directly.
INBOX_RECONCILE_AFTER_SECONDS = env_float("INBOX_RECONCILE_AFTER_SECONDS", 900.0, minimum=0)
INBOX_RECONCILE_BATCH = env_int("INBOX_RECONCILE_BATCH", 100, minimum=1)
# A reviewer opening a pending form's page asks Dify about it (GET form) at most this often, so a
# form answered in Dify's own pages reads so within seconds. 0: on every opening.
INBOX_CHECK_ON_VIEW_SECONDS = env_float("INBOX_CHECK_ON_VIEW_SECONDS", 60.0, minimum=0)
# A form found answered in Dify without Dify saying how waits this long for the run's events
# (read once more) before its closing notices go: they may show how it was answered, or that
# the answer was a decision made here whose delivery this database never recorded.
INBOX_ELSEWHERE_NOTICE_HOLD_SECONDS = env_float(
    "INBOX_ELSEWHERE_NOTICE_HOLD_SECONDS", 120.0, minimum=0
)

# The follower (`manage.py follow`, inbox/follower.py): how many streams one process reads at
# once, how often it looks for work, how long its lease on a run lasts (renewed every third of
# it), how many times a stream that ends early is reopened (backoff from the base, doubling)
# before the reconcile takes over, how long a stream stays open across a pause that no form
# waits at (Dify's resume after a submit), and its database threads.
INBOX_FOLLOWER_MAX_STREAMS = env_int("INBOX_FOLLOWER_MAX_STREAMS", 1000, minimum=1)
INBOX_FOLLOWER_POLL_SECONDS = env_float("INBOX_FOLLOWER_POLL_SECONDS", 0.25, minimum=0.01)
INBOX_FOLLOWER_LEASE_SECONDS = env_float("INBOX_FOLLOWER_LEASE_SECONDS", 60.0, minimum=1)
INBOX_FOLLOWER_MAX_ATTEMPTS = env_int("INBOX_FOLLOWER_MAX_ATTEMPTS", 6, minimum=1)
INBOX_FOLLOWER_BACKOFF_SECONDS = env_float("INBOX_FOLLOWER_BACKOFF_SECONDS", 0.5, minimum=0)
INBOX_FOLLOWER_STALE_PAUSE_SECONDS = env_float(
    "INBOX_FOLLOWER_STALE_PAUSE_SECONDS", 60.0, minimum=0.1
)
# After a pause, how long to read on for the fill of a form Dify settled without us seeing it.
INBOX_FOLLOWER_SETTLE_SECONDS = env_float("INBOX_FOLLOWER_SETTLE_SECONDS", 10.0, minimum=0)
INBOX_FOLLOWER_DB_THREADS = env_int(
    "INBOX_FOLLOWER_DB_THREADS", 8 if _database_url else 2, minimum=1
)
# Runs no stream of ours is reading are checked against Dify's run detail at most this often
# (paused runs, given-up streams), a batch per reconcile tick.
INBOX_RUN_RECONCILE_AFTER_SECONDS = env_float("INBOX_RUN_RECONCILE_AFTER_SECONDS", 300.0, minimum=0)
INBOX_RUN_RECONCILE_BATCH = env_int("INBOX_RUN_RECONCILE_BATCH", 200, minimum=1)
# ... and a run paused where no form can be answered here (by email, in Dify's console) this often.
# How long a web request (a page, an API call) waits for Dify in all, retries included.
INBOX_DIFY_REQUEST_DEADLINE_SECONDS = env_float(
    "INBOX_DIFY_REQUEST_DEADLINE_SECONDS", 45.0, minimum=1
)
INBOX_RUN_RECONCILE_OUTSIDE_SECONDS = env_float(
    "INBOX_RUN_RECONCILE_OUTSIDE_SECONDS", 60.0, minimum=0
)
# A run still `starting` this long after it was created never got a run id from Dify (the web
# process died mid-start): it is marked failed.
INBOX_RUN_START_TIMEOUT_SECONDS = env_float("INBOX_RUN_START_TIMEOUT_SECONDS", 600.0, minimum=1)

# Periodic tasks, run by `celery beat`. Each task holds a lock while it runs, so a slow run and
# the next tick cannot overlap.
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "sweep-expired-forms": {"task": "inbox.tasks.sweep_expired_forms", "schedule": 60.0},
    "clear-expired-sessions": {"task": "inbox.tasks.clear_expired_sessions", "schedule": 3600.0},
    "sweep-deliveries": {
        "task": "inbox.tasks.sweep_deliveries",
        "schedule": env_float("INBOX_DELIVERY_SWEEP_EVERY_SECONDS", 30.0, minimum=0.5),
    },
    "reconcile-pending-forms": {
        "task": "inbox.tasks.reconcile_pending_forms",
        "schedule": env_float("INBOX_RECONCILE_EVERY_SECONDS", 300.0, minimum=1),
    },
    "send-reminders": {"task": "inbox.tasks.send_reminders", "schedule": 60.0},
    "reconcile-runs": {
        "task": "inbox.tasks.reconcile_runs",
        "schedule": env_float("INBOX_RUN_RECONCILE_EVERY_SECONDS", 60.0, minimum=1),
    },
    # Does nothing unless INBOX_RETENTION_DAYS or INBOX_AUDIT_RETENTION_DAYS is set.
    "prune-records": {"task": "inbox.tasks.prune_records", "schedule": 86400.0},
}
# Days a finished run (its forms, decisions, uploads' records, recipients and events) is kept,
# and days an audit entry is kept; 0 keeps them for ever (inbox.retention).
INBOX_RETENTION_DAYS = env_float("INBOX_RETENTION_DAYS", 0.0, minimum=0)
INBOX_AUDIT_RETENTION_DAYS = env_float("INBOX_AUDIT_RETENTION_DAYS", 0.0, minimum=0)

# Email: console in the embedded setup, SMTP when EMAIL_HOST is set. In production with neither
# set, nothing is written out (an email's link is a credential, not for a process's output):
# sending fails, the emails wait as "not sent yet" on the dashboard, and the deploy check warns.
EMAIL_HOST = env_str("EMAIL_HOST", "")
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "inbox.mail.NoMailServerBackend"
    if _database_url and not DEBUG
    else "django.core.mail.backends.console.EmailBackend",
)
# SMTP with STARTTLS on port 587 by default (EMAIL_USE_TLS, on when EMAIL_HOST is set); implicit
# TLS (SMTPS, port 465) with EMAIL_USE_SSL=1, which turns the STARTTLS default off. A plain
# relay on the internal network: EMAIL_USE_TLS=0.
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", bool(EMAIL_HOST) and not EMAIL_USE_SSL)
if EMAIL_USE_SSL and EMAIL_USE_TLS:
    raise ImproperlyConfigured(
        "EMAIL_USE_SSL and EMAIL_USE_TLS are both on: set EMAIL_USE_SSL=1 for implicit TLS (port "
        "465) or EMAIL_USE_TLS=1 for STARTTLS (port 587), not both"
    )
EMAIL_PORT = env_int("EMAIL_PORT", 465 if EMAIL_USE_SSL else 587, minimum=1)
# A client certificate for the mail server, when it asks for one (files in PEM).
EMAIL_SSL_CERTFILE = env_str("EMAIL_SSL_CERTFILE", "") or None
EMAIL_SSL_KEYFILE = env_str("EMAIL_SSL_KEYFILE", "") or None
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
# A mail server that takes the connection and never answers is given up on after this long,
# so the worker that was sending goes back to delivering decisions. Well under the soft time
# limit of the tasks that send (60 s for the shortest, inbox.tasks): one hung connection costs
# a task one email, not all its time.
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 20, minimum=1)
EMAIL_TIMEOUT_MAX = 30
if EMAIL_TIMEOUT > EMAIL_TIMEOUT_MAX:
    raise ImproperlyConfigured(
        f"EMAIL_TIMEOUT must be at most {EMAIL_TIMEOUT_MAX} seconds (got {EMAIL_TIMEOUT}): a "
        "longer wait on a mail server that does not answer eats the sending task's time limit"
    )
# For django.core.mail.backends.filebased.EmailBackend: the folder it writes emails to.
EMAIL_FILE_PATH = env_str("EMAIL_FILE_PATH", "") or None
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Dify Approval Inbox <inbox@localhost>")
INBOX_BASE_URL = env_str("INBOX_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", INBOX_BASE_URL):
    raise ImproperlyConfigured(
        "INBOX_BASE_URL must be the inbox's public address with its scheme, such as "
        "https://inbox.example.com: emailed links are made from it"
    )
# Emailed links expire with their form, however far off; a form without an expiry bounds them
# with this (the page of a link that lapsed offers its recipient a new one).
INBOX_LINK_MAX_AGE_SECONDS = env_int("INBOX_LINK_MAX_AGE_SECONDS", 30 * 86400, minimum=60)
# Guest pages (opened from an emailed link), requests per minute per link and per address; a
# page polls every few seconds, so the limits leave room for a few open tabs. Links that fail
# the signature check have their own, much lower, limit per address.
INBOX_GUEST_RATE_PER_LINK = env_int("INBOX_GUEST_RATE_PER_LINK", 120, minimum=1)
INBOX_GUEST_RATE_PER_IP = env_int("INBOX_GUEST_RATE_PER_IP", 300, minimum=1)
INBOX_GUEST_BAD_LINKS_PER_IP = env_int("INBOX_GUEST_BAD_LINKS_PER_IP", 20, minimum=1)
# Failed sign-ins allowed per username and per client address in a window, before the sign-in
# page refuses (429) until the window ends (inbox.login).
INBOX_LOGIN_FAILURES_PER_USER = env_int("INBOX_LOGIN_FAILURES_PER_USER", 10, minimum=1)
INBOX_LOGIN_FAILURES_PER_IP = env_int("INBOX_LOGIN_FAILURES_PER_IP", 50, minimum=1)
INBOX_LOGIN_WINDOW_SECONDS = env_int("INBOX_LOGIN_WINDOW_SECONDS", 900, minimum=60)
# Password reset emails asked for per address and per client address in the same window, before
# the reset page refuses (429) until the window ends (inbox.accounts): counted whether or not an
# account has that address, so the refusal tells nothing about it.
INBOX_PASSWORD_RESETS_PER_EMAIL = env_int("INBOX_PASSWORD_RESETS_PER_EMAIL", 3, minimum=1)
INBOX_PASSWORD_RESETS_PER_IP = env_int("INBOX_PASSWORD_RESETS_PER_IP", 20, minimum=1)
# Images in form content (Markdown from Dify, often LLM output) are loaded only from these
# hosts, over https; any other image is shown as a link. An image the content chose would tell
# its host who opened the form and when, and carry off whatever a prompt injection put in its
# URL. The Content-Security-Policy header allows images from the same hosts and no others.
# `*.example.com` allows every subdomain of example.com (not example.com itself).
INBOX_MARKDOWN_IMAGE_HOSTS = env_hosts("INBOX_MARKDOWN_IMAGE_HOSTS", wildcards=True)
# Behind N reverse proxies, the visitor's address is N entries from the right of
# X-Forwarded-For (entries further left can be forged by the visitor). 0: REMOTE_ADDR.
INBOX_TRUSTED_PROXIES = env_int("INBOX_TRUSTED_PROXIES", 0, minimum=0)

# The cache holds the guest pages' rate-limit counters, presence and the inbox's tab counts.
# Without CACHE_URL each process has its own memory cache, so with several web processes a limit
# counts per process: production sets CACHE_URL=redis://... to share one.
CACHE_URL = env_str("CACHE_URL", "")
if CACHE_URL:
    if not CACHE_URL.startswith(("redis://", "rediss://", "unix://")):
        raise ImproperlyConfigured("CACHE_URL must be a redis:// (or rediss://, unix://) URL")
    CACHES = {
        "default": {
            # An outage of this Redis degrades pages instead of failing them (inbox.cache).
            "BACKEND": "inbox.cache.TolerantRedisCache",
            "LOCATION": CACHE_URL,
            "KEY_PREFIX": "inbox",
            # A Redis that does not answer is given up on soon, not waited for by every page.
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }

# Security: production (DATABASE_URL set, DEBUG off) defaults to HTTPS everywhere, so
# `manage.py check --deploy` is clean; each can be turned off from the environment.
_PRODUCTION = bool(_database_url) and not DEBUG
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", _PRODUCTION)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # load balancers probe over plain HTTP
# Whether the visitor came over HTTPS, as the reverse proxy in front says in X-Forwarded-Proto:
# read only behind INBOX_TRUSTED_PROXIES proxies, as X-Forwarded-For is (anyone else reaching the
# web port could write it). With none, the connection's own scheme (gunicorn's `wsgi.url_scheme`,
# which trusts the header from the same proxies only: inbox/gunicorn_conf.py).
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if INBOX_TRUSTED_PROXIES else None
# The proxy passes the visitor's Host header on (nginx: `proxy_set_header Host $host;`). One that
# cannot, and sets X-Forwarded-Host instead (overwriting any the visitor sent), needs this on;
# either host must be in ALLOWED_HOSTS.
USE_X_FORWARDED_HOST = env_bool("USE_X_FORWARDED_HOST", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", _PRODUCTION)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if _PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", _PRODUCTION)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", _PRODUCTION)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SILENCED_SYSTEM_CHECKS = env_list("SILENCED_SYSTEM_CHECKS", [])

LOG_LEVEL = (env_str("LOG_LEVEL", "") or "INFO").upper()
if LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    raise ImproperlyConfigured("LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"httpx": {"level": "WARNING"}, "httpcore": {"level": "WARNING"}},
}
