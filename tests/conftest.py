from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.files.uploadhandler import FileUploadHandler
from django.db import connection
from django.test import override_settings

from inbox.models import DifyApp, Route

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def _own_broker_per_test_process() -> None:
    """Under pytest-xdist each test process has its own database (pytest-django's suffix); its
    Celery messages get their own Redis database too, so a worker one process starts never runs
    another's tasks against the wrong database, and a purge empties only its own queue: the
    configured database number plus one plus the process's number (bin/with-services's Redis
    has 256). Set before anything connects, and in the environment for the workers and
    followers the tests start."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    parts = urlsplit(settings.CELERY_BROKER_URL)
    if not worker.startswith("gw") or parts.scheme not in ("redis", "rediss"):
        return
    configured = parts.path.strip("/")
    db = (int(configured) if configured.isdigit() else 0) + 1 + int(worker[2:])
    own = urlunsplit(parts._replace(path=f"/{db}"))
    os.environ["CELERY_BROKER_URL"] = settings.CELERY_BROKER_URL = own
    from inbox.celery import app

    app.conf.broker_url = own


_own_broker_per_test_process()


@pytest.fixture(autouse=True)
def _closed_forms_keep_no_token(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test that used the database: no form closed for good still holds its Dify
    token, whichever path closed it (`Form.TOKEN_DROPPED`). Set up the database first, so this
    looks before the test's data is rolled back or flushed."""
    uses_db = request.node.get_closest_marker("django_db") or {
        "db",
        "transactional_db",
    } & set(request.fixturenames)
    if not uses_db or not _is_pytest_function(request):
        yield
        return
    request.getfixturevalue("_django_db_helper")
    yield
    from inbox.models import Form

    kept = list(
        Form.objects.filter(status__in=Form.TOKEN_DROPPED)
        .exclude(form_token="")
        .values_list("form_id", "status")
    )
    assert not kept, f"closed forms still hold their token: {kept}"


def _is_pytest_function(request: pytest.FixtureRequest) -> bool:
    # A Django TestCase manages its own database.
    from pytest_django.django_compat import is_django_unittest

    return not is_django_unittest(request)


@pytest.fixture(autouse=True, scope="session")
def _plain_static_storage() -> Iterator[None]:
    # Production uses WhiteNoise's manifest storage, which needs collectstatic; tests do not.
    storages = {**settings.STORAGES}
    storages["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
    with override_settings(STORAGES=storages):
        yield


@pytest.fixture
def reviewers_group(db: None) -> Group:
    return Group.objects.create(name="reviewers")


@pytest.fixture
def reviewer(db: None, reviewers_group: Group) -> User:
    user = User.objects.create_user(
        "alice", "alice@example.com", "pw-alice-123", first_name="Alice"
    )
    user.groups.add(reviewers_group)
    return user


@pytest.fixture
def other_reviewer(db: None, reviewers_group: Group) -> User:
    user = User.objects.create_user("bob", "bob@example.com", "pw-bob-123", first_name="Bob")
    user.groups.add(reviewers_group)
    return user


@pytest.fixture
def outsider(db: None) -> User:
    return User.objects.create_user("mallory", "mallory@example.com", "pw-mallory-123")


@pytest.fixture
def admin_user(db: None) -> User:
    return User.objects.create_superuser("admin", "admin@example.com", "pw-admin-123")


@pytest.fixture
def dify_app(db: None, reviewers_group: Group) -> DifyApp:
    app = DifyApp.objects.create(
        name="refunds", base_url="http://127.0.0.1:9/v1", api_key="app-secret-key-123456"
    )
    # As an administrator would set it up: the app's forms go to the "reviewers" group. Forms
    # are routed when they are created, so every form of this app is seen by alice and bob.
    route = Route.objects.create(app=app, name="default", reminders="")
    route.groups.add(reviewers_group)
    return app


def _uses_postgres() -> bool:
    return connection.vendor == "postgresql"


@pytest.fixture
def celery_worker_process(transactional_db: None) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker process on the real broker, sharing the test database."""
    if not _uses_postgres() or not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("needs PostgreSQL and Redis (run through bin/with-services, as make test does)")
    from inbox.celery import app

    # Messages an earlier test queued (a page opened, a form captured) must not reach it.
    app.control.purge()
    db = connection.settings_dict
    env = dict(os.environ)
    env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    # Production settings with no mail server send nothing; this worker writes its emails out.
    env.setdefault("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "inbox",
            "worker",
            "--pool=solo",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "INFO",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll until predicate() is truthy; fail with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


# --- The Dify simulator (inbox/simulator): one server per test process, state reset per test ---

# Short enough that tests never wait long, long enough for slow CI machines.
SIMULATOR_TEST_OPTIONS: dict[str, Any] = {
    "idle_timeout": 5.0,
    "ping_interval": 1.0,
    "resume_delay": 0.02,
    "time_scale": 0.0,
}


@pytest.fixture(scope="session")
def simulator_server() -> Iterator[Any]:
    from inbox.simulator.testing import running_simulator

    with running_simulator(**SIMULATOR_TEST_OPTIONS) as handle:
        yield handle


@pytest.fixture
def simulator(simulator_server: Any) -> Any:
    """A running Dify simulator (`inbox.simulator.testing.SimulatorHandle`), reset for this test."""
    simulator_server.reset()
    return simulator_server


@pytest.fixture
def simulator_dify_app(db: None, simulator: Any) -> Any:
    """`simulator_dify_app("refund-approval")`: a DifyApp row pointing at that simulator app."""

    def make(app_name: str = "refund-approval", **fields: Any) -> DifyApp:
        spec = simulator.apps[app_name]
        fields.setdefault("mode", "workflow" if spec.mode == "workflow" else "chatflow")
        return DifyApp.objects.create(
            name=fields.pop("name", app_name),
            base_url=simulator.base_url,
            api_key=simulator.api_key(app_name),
            **fields,
        )

    return make


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    """Each test starts with an empty cache: on SQLite a new row may reuse a primary key of an
    earlier test's row, and cached values are keyed by primary keys."""
    from django.core.cache import cache

    cache.clear()
    yield


@pytest.fixture(autouse=True)
def _no_heartbeat_missing_yet() -> None:
    """Each test starts as a web process that just started: a heartbeat missing since an earlier
    test (the suite takes minutes) is not taken for beat being down."""
    from inbox import health

    health._first_missing.clear()


@pytest.fixture(autouse=True)
def _default_language() -> Iterator[None]:
    """Each test starts in the default language: a request the test client sends in another
    one (LocaleMiddleware activates it in this thread and leaves it there) must not change
    what the next test's code renders outside a request."""
    from django.utils import translation

    translation.activate(settings.LANGUAGE_CODE)
    yield
    translation.activate(settings.LANGUAGE_CODE)


class BytesSeen(FileUploadHandler):
    """After the size cap, before Django's own handlers: the most bytes of one file that got
    past the cap (what could have reached memory or a temporary file)."""

    most = 0

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self.seen = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.seen += len(raw_data)
        BytesSeen.most = max(BytesSeen.most, self.seen)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


@pytest.fixture
def small_dify(settings: Any) -> Any:
    """A Dify whose every kind of file may be 1 MB at most (GET /parameters), and a counter of
    what gets past the size cap."""
    from tests.delivery.scripted import Reply, ScriptedDify

    dify = ScriptedDify()
    limits = {
        key: 1
        for key in (
            "image_file_size_limit",
            "file_size_limit",
            "audio_file_size_limit",
            "video_file_size_limit",
        )
    }
    dify.on("GET", "/parameters", Reply(body={"system_parameters": limits}))
    settings.FILE_UPLOAD_HANDLERS = [
        "tests.conftest.BytesSeen",
        "django.core.files.uploadhandler.MemoryFileUploadHandler",
        "django.core.files.uploadhandler.TemporaryFileUploadHandler",
    ]
    BytesSeen.most = 0
    yield dify
    dify.close()
