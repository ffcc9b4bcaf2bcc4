"""What `/healthz` (inbox.views.healthz) asks besides `SELECT 1`: whether every migration is
applied, whether the broker answers, whether the static files were collected, whether beat and
the workers run the periodic tasks and send the decisions. Each is cheap at every probe: the
migrations are read until they are all applied, the broker at most every BROKER_EVERY seconds,
the heartbeats and late decisions in small indexed queries."""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Count, Min, Q

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


# The heartbeats the periodic tasks record (inbox.models.Heartbeat): the delivery sweep, which
# a worker of the default queue runs, and the reminders, which the mailer runs when emails have
# a queue of their own (INBOX_MAIL_QUEUE).
SWEEP_HEARTBEAT = "sweep_deliveries"
MAIL_HEARTBEAT = "send_reminders"
# A heartbeat this much older than its task's interval says beat or the worker is down: a few
# ticks missed, not one slow run (each run is bounded by its time limit, about a minute).
HEARTBEAT_LATE_SECONDS = 300.0
# When this process first found a heartbeat missing (a new installation, or one whose beat never
# ran): missing longer than a late heartbeat is reported the same way.
_first_missing: dict[str, float] = {}


@dataclass(frozen=True)
class CeleryState:
    """What says the Celery worker, the mailer or beat is down, from the database alone."""

    # Seconds since the delivery sweep or the reminders last ran, when that is late (else None).
    sweep_late: float | None
    mail_late: float | None
    # Decisions the sweep should have sent or recovered by now, and how late the oldest is.
    past_due: int
    past_due_seconds: float

    @property
    def sweep_minutes(self) -> int:
        return int((self.sweep_late or 0) // 60)

    @property
    def mail_minutes(self) -> int:
        return int((self.mail_late or 0) // 60)

    @property
    def past_due_minutes(self) -> int:
        return int(self.past_due_seconds // 60)


def _interval(task: str, default: float) -> float:
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        if entry.get("task") == f"inbox.tasks.{task}":
            schedule = entry.get("schedule")
            if isinstance(schedule, int | float):
                return float(schedule)
    return default


def _late(name: str, at: dt.datetime | None, now: dt.datetime, interval: float) -> float | None:
    """Seconds since the heartbeat `name` when it is late, else None."""
    allowed = max(HEARTBEAT_LATE_SECONDS, 3 * interval)
    if at is None:
        first = _first_missing.setdefault(name, time.monotonic())
        missing = time.monotonic() - first
        return missing if missing > allowed else None
    _first_missing.pop(name, None)
    age = (now - at).total_seconds()
    return age if age > allowed else None


def celery_state() -> CeleryState:
    """Whether the periodic tasks run and the queued decisions go out (three small queries on
    indexed columns: cheap enough for every probe). Raises DatabaseError."""
    from inbox.models import Decision, Heartbeat, database_now

    now = database_now()
    beats = dict(
        Heartbeat.objects.filter(name__in=(SWEEP_HEARTBEAT, MAIL_HEARTBEAT)).values_list(
            "name", "at"
        )
    )
    sweep_every = _interval(SWEEP_HEARTBEAT, 30.0)
    sweep_late = _late(SWEEP_HEARTBEAT, beats.get(SWEEP_HEARTBEAT), now, sweep_every)
    mail_late = _late(
        MAIL_HEARTBEAT, beats.get(MAIL_HEARTBEAT), now, _interval(MAIL_HEARTBEAT, 60.0)
    )
    # What the sweep would have re-sent (queued, its task lost) or recovered (delivering, its
    # worker lost) by now, a tick allowed: a decision later than that waits for no one.
    queued_before = now - dt.timedelta(
        seconds=settings.INBOX_DELIVERY_REQUEUE_AFTER_SECONDS + sweep_every
    )
    started_before = now - dt.timedelta(seconds=settings.INBOX_DELIVERY_STUCK_SECONDS + sweep_every)
    queued = Q(status=Decision.Status.QUEUED, held_for_app=False)
    late_queued = queued & (
        Q(next_attempt_at__lt=queued_before)
        | Q(next_attempt_at__isnull=True, updated_at__lt=queued_before)
    )
    late_delivering = Q(status=Decision.Status.DELIVERING, delivery_started_at__lt=started_before)
    found = Decision.objects.filter(late_queued | late_delivering).aggregate(
        count=Count("pk"),
        due=Min("next_attempt_at", filter=late_queued & Q(next_attempt_at__isnull=False)),
        stored=Min("updated_at", filter=late_queued & Q(next_attempt_at__isnull=True)),
        started=Min("delivery_started_at", filter=late_delivering),
    )
    # How late the oldest is: past its due time (or its storing), the sweep's allowance included.
    lateness = [
        (now - found["due"]).total_seconds() if found["due"] else 0.0,
        (now - found["stored"]).total_seconds() if found["stored"] else 0.0,
        (now - found["started"]).total_seconds() - settings.INBOX_DELIVERY_STUCK_SECONDS
        if found["started"]
        else 0.0,
    ]
    return CeleryState(
        sweep_late=sweep_late,
        mail_late=mail_late,
        past_due=found["count"],
        past_due_seconds=max(lateness),
    )


def celery_problems(state: CeleryState) -> list[str]:
    """What `/healthz` says of the state (in English, as its other problems)."""
    problems = []
    if state.sweep_late is not None:
        problems.append(f"beat/worker: no periodic task ran for {state.sweep_minutes} min")
    elif state.mail_late is not None:
        # Beat runs (the sweep does): the one that sends the emails does not.
        who = "mailer" if settings.INBOX_MAIL_QUEUE else "worker"
        problems.append(f"{who}: no email task ran for {state.mail_minutes} min")
    if state.past_due:
        problems.append(f"decisions: {state.past_due} queued {state.past_due_minutes} min past due")
    return problems
