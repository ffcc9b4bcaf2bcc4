"""What `/healthz` (inbox.views.healthz) asks besides `SELECT 1`: whether every migration is
applied, whether the broker answers, whether the static files were collected. Each is cheap at
every probe: the migrations are read until they are all applied, the broker at most every
BROKER_EVERY seconds."""

from __future__ import annotations

import threading
import time
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper

# All applied, once seen: a process's code does not change under it, and migrations are not
# unapplied on a live installation.
_migrated = False


def unapplied_migrations(connection: BaseDatabaseWrapper) -> list[str]:
    """The migrations this code has that the database lacks ("app.name"), none once all were
    seen applied. Raises DatabaseError when the database cannot be read."""
    global _migrated
    if _migrated:
        return []
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    missing = [f"{migration.app_label}.{migration.name}" for migration, _backwards in plan]
    if not missing:
        _migrated = True
    return missing


# The broker's last answer: (when, what was wrong or ""), kept BROKER_EVERY seconds so that
# probes from several load balancers do not open a connection each.
BROKER_EVERY = 5.0
BROKER_TIMEOUT = 2.0
_broker: tuple[float, str] | None = None
_broker_lock = threading.Lock()


def broker_problem() -> str:
    """What kept the Celery broker from taking a connection ("" when it took one)."""
    global _broker
    with _broker_lock:
        now = time.monotonic()
        if _broker is not None and now - _broker[0] < BROKER_EVERY:
            return _broker[1]
        from inbox.celery import app

        said = ""
        try:
            options: dict[str, Any] = {
                "socket_connect_timeout": BROKER_TIMEOUT,
                "socket_timeout": BROKER_TIMEOUT,
            }
            with app.connection_for_write(
                connect_timeout=BROKER_TIMEOUT, transport_options=options
            ) as conn:
                conn.ensure_connection(max_retries=0, timeout=int(BROKER_TIMEOUT))
        except Exception as exc:
            # On one line; kombu masks the broker's password in what it says.
            said = " ".join(str(exc).split())[:500] or type(exc).__name__
        _broker = (time.monotonic(), said)
        return said


def static_files_problem() -> str:
    """Why pages cannot name their static files ("" when they can).

    With hashed names (ManifestStaticFilesStorage), a process reads the manifest once, and
    WhiteNoise lists the files it serves once, both as it starts: files collected later are
    served after a restart only. So the answer says which of the two is to be done."""
    from django.contrib.staticfiles.storage import staticfiles_storage

    try:
        staticfiles_storage.url("inbox/app.css")
        return ""
    except ValueError:
        pass
    # Looked at again at every probe: what to do next changes once collectstatic has run.
    name = getattr(staticfiles_storage, "manifest_name", "")
    try:
        collected = bool(name) and staticfiles_storage.exists(name)
    except (OSError, ValueError):
        collected = False
    if collected:
        return "static files: collected after web started (restart web)"
    return "static files: not collected (run collectstatic, then restart web)"


def note_static_files() -> None:
    """Read the static files' manifest as the process starts, when WhiteNoise lists the files
    it will serve: a manifest written later is then known to be one WhiteNoise lacks."""
    from django.contrib.staticfiles.storage import staticfiles_storage

    try:
        staticfiles_storage.url("inbox/app.css")
    except ValueError:
        pass
