"""Celery tasks. Each takes primary keys, re-fetches, and returns quietly when the row is gone."""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import itertools
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import (
    InterfaceError,
    OperationalError,
    connection,
    connections,
    transaction,
)
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.translation import gettext_noop

from inbox.app_check import AppCheck, AppNotFound, check_app, learn_name, refused_before
from inbox.capture import node_outputs_info
from inbox.dify.client import DifyClient, EventStream
from inbox.dify.errors import (
    DifyConnectionError,
    DifyError,
    DifyStatusError,
    FormAlreadySubmitted,
    FormExpired,
    InvalidFormData,
    NotFound,
    TooManyRequests,
    cannot_reach,
)
from inbox.health import MAIL_HEARTBEAT, SWEEP_HEARTBEAT
from inbox.models import (
    APP_NOT_FOUND_REFUSAL,
    KIND_REFUSALS,
    SERVER_CHECK,
    SETUP_REFUSALS,
    UNPUBLISHED_REFUSAL,
    AuditEntry,
    Decision,
    DeliveryPump,
    DifyApp,
    Form,
    Heartbeat,
    RunEvent,
    answered_elsewhere_reason,
    database_now,
    request_follow,
    request_follow_many,
)
from inbox.reasons import Reason

logger = logging.getLogger(__name__)


# --- periodic locks ---


@contextmanager
def periodic_lock(name: str) -> Iterator[bool]:
    """Yield True when this process holds the lock `name`, False when another run holds it.

    PostgreSQL: a session advisory lock, released by the server if the worker dies. SQLite (the
    embedded setup, one machine): an flock on a file next to the database.
    """
    if connection.vendor == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
            row = cursor.fetchone()
        held = bool(row and row[0])
        try:
            yield held
        finally:
            if held:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
        return
    lock_dir = Path(settings.VAR_DIR) / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# Periodic (beat, every minute). Bounded by time so a huge backlog cannot pin the worker;
# whatever is left is taken by the next run.
@shared_task(soft_time_limit=50, time_limit=60)
def sweep_expired_forms(batch_size: int = 500) -> int:
    """Mark pending forms past their expiration time as expired, so nobody tries to answer them."""
    with periodic_lock("sweep_expired_forms") as held:
        if not held:
            logger.info("sweep_expired_forms: another run holds the lock")
            return 0
        return _sweep_expired_forms(batch_size)


def _sweep_expired_forms(batch_size: int) -> int:
    now = timezone.now()
    expired = 0
    ids = list(
        Form.objects.filter(status=Form.Status.PENDING, expiration_time__lte=now).values_list(
            "pk", flat=True
        )[:batch_size]
    )
    runs: set[int] = set()
    for pk in ids:
        with transaction.atomic():
            form = (
                Form.objects.select_for_update()
                .filter(pk=pk, status=Form.Status.PENDING, expiration_time__lte=now)
                .first()
            )
            if form is None:
                continue
            form.status = Form.Status.EXPIRED
            form.save(update_fields=["status", "updated_at"])
            AuditEntry.record("form_expired", form, reason="expiration_time passed")
            expired += 1
            runs.add(form.run_id)
    if expired:
        logger.info("sweep_expired_forms: %d form(s) expired", expired)
        # Dify takes the node's timeout branch now (or within its own sweep): the run's next
        # pause, an escalation say, is read as it comes, not at the reconcile's next look. With
        # no form of ours waiting at the replayed pause, the follower keeps the stream open for
        # Dify's timeout (`stale_pause_seconds`).
        request_follow_many(runs)
    return expired


# --- decision delivery ---

_clients: dict[tuple[int, str, str, float, float], list[DifyClient | None]] = {}
_clients_lock = threading.Lock()
# httpcore's pool looks at each of its connections whenever a request starts or a response
# closes, under one lock: with a hundred connections in one pool, that walk costs more than the
# request. The threads are spread over clients of this many connections instead (each thread
# uses two at a time: the submit and the watch stream beside it).
CONNECTIONS_PER_CLIENT = 16
_thread_slot = threading.local()
_slots = itertools.count()


def _slot() -> int:
    """This thread's number, given out in turn, so consecutive threads use different clients."""
    slot: int | None = getattr(_thread_slot, "n", None)
    if slot is None:
        slot = _thread_slot.n = next(_slots)
    return slot


def delivery_client(app: DifyApp) -> DifyClient:
    """The app's client with the delivery timeout, one of a few shared by the worker's threads
    (see CONNECTIONS_PER_CLIENT); a changed URL, key or timeout gets new ones."""
    timeout = float(settings.INBOX_DELIVERY_TIMEOUT_SECONDS)
    watch_seconds = float(settings.INBOX_DELIVERY_WATCH_SECONDS)
    fingerprint = hashlib.sha256(app.api_key.encode()).hexdigest()[:16]
    key = (app.pk, app.base_url.rstrip("/"), fingerprint, timeout, watch_seconds)
    slot = _slot()
    with _clients_lock:
        clients = _clients.get(key)
        if clients is None:
            for stale in [k for k in _clients if k[0] == app.pk and k != key]:
                del _clients[stale]
            # The pump has up to two batches in flight, each call with a watch stream beside
            # it: enough connections are kept open for all of them, none is reopened per call.
            connections_needed = max(100, 4 * int(settings.INBOX_DELIVERY_BATCH))
            clients = _clients[key] = [None] * math.ceil(
                connections_needed / CONNECTIONS_PER_CLIENT
            )
        index = slot % len(clients)
        client = clients[index]
        if client is None or client.is_closed:
            limit = httpx.Timeout(timeout, connect=min(5.0, timeout))
            # Event streams are only read briefly, to confirm a submit: silence beyond the watch
            # time means no answer to wait for.
            watch = httpx.Timeout(
                timeout,
                connect=min(5.0, timeout),
                read=watch_seconds,
            )
            # The client never repeats a submit; the confirmation reads are not repeated either,
            # the delivery's own retry covers both.
            client = clients[index] = DifyClient(
                app.base_url,
                app.api_key,
                timeout=limit,
                stream_timeout=watch,
                max_retries=0,
                limits=httpx.Limits(
                    max_connections=CONNECTIONS_PER_CLIENT,
                    max_keepalive_connections=CONNECTIONS_PER_CLIENT,
                ),
            )
        return client


def retry_delay(attempt: int, retry_after: float | None = None) -> float:
    """Seconds before attempt `attempt + 1`: exponential from the base, capped, with up to a
    quarter of jitter so decisions failed by one outage do not all come back at once. Dify's
    Retry-After, when it sent one, is the floor."""
    base = float(settings.INBOX_DELIVERY_RETRY_BASE_SECONDS)
    cap = float(settings.INBOX_DELIVERY_RETRY_CAP_SECONDS)
    delay = min(cap, base * (2.0 ** max(attempt - 1, 0)))
    delay -= delay * 0.25 * random.random()
    if retry_after is not None:
        delay = max(delay, min(retry_after, float(settings.INBOX_DELIVERY_RETRY_AFTER_MAX_SECONDS)))
    return delay


def _outage(exc: DifyError) -> bool:
    """Errors that say Dify (or the way to it) is down, not that it refuses this decision: no
    connection, no answer in time, a gateway with nothing behind it. A decision meeting them
    is not failed however long the outage lasts: past its attempts it keeps trying at the
    longest backoff while its form is open (an expired form closes it), and goes at once when
    another delivery to the app gets through (`Decision.release_unreachable`)."""
    if isinstance(exc, DifyConnectionError):
        return True
    return isinstance(exc, DifyStatusError) and exc.status in (502, 503, 504)


def _never_sent(exc: DifyError) -> bool:
    """Errors after which the submit surely did not reach Dify's handler."""
    if isinstance(exc, TooManyRequests):
        return True
    if isinstance(exc, DifyStatusError) and exc.status == 503:
        # Service Unavailable, answered in full: the server (or the proxy before it) did not
        # take the request on. Counted as sent, a 503 followed by a 412 for an answer given in
        # Dify meanwhile would be presumed ours.
        return True
    if isinstance(exc, DifyConnectionError):
        # A refused or timed-out connect (or no free connection) sent nothing.
        return not exc.request_sent
    return False


# Time limits (settings.INBOX_DELIVERY_SOFT_TIME_LIMIT): a submit, a bounded read of the run's
# events after a lost answer, a snapshot after a 412. The soft limit leaves the task time to put
# the decision back in the queue; the hard limit stays below INBOX_DELIVERY_STUCK_SECONDS
# (checked in settings), so the sweep never re-sends a delivery whose worker still runs.
_DELIVERY_SOFT_LIMIT = settings.INBOX_DELIVERY_SOFT_TIME_LIMIT


@contextmanager
def _watch_run(client: DifyClient, decision: Decision) -> Iterator[EventStream | None]:
    """The run's live event stream, opened before the submit.

    Dify replays nothing of the past on a resume stream, and a snapshot does not include
    `human_input_form_filled`: once a submit's answer is lost, only a subscriber that was
    already listening learns which action filled the form. So one listens for the length of
    the call, and is read only if the answer is lost."""
    run = decision.form.run
    if not settings.INBOX_DELIVERY_WATCH_RUN or not run.workflow_run_id:
        yield None
        return
    try:
        stream = client.stream_events(run.workflow_run_id, user=run.dify_user)
    except DifyError as exc:
        # Dify away or busy: the submit that follows, to the same server, says so in its own
        # line (`_retry_or_fail`), naming the app and server; not said twice per attempt.
        app = run.app
        logger.log(
            logging.DEBUG if _outage(exc) else logging.INFO,
            "decision %s: not watching the run (app %s at %s): %s",
            decision.pk,
            app.label,
            app.server,
            exc,
        )
        yield None
        return
    try:
        yield stream
    finally:
        stream.close()


def _submit(client: DifyClient, decision: Decision) -> str | None:
    """Send one claimed decision (POST /form/human_input/{token}). None when Dify accepted it,
    for the caller to record; otherwise the outcome, already recorded."""
    form = decision.form
    run = form.run
    try:
        with _watch_run(client, decision) as watch:
            try:
                client.submit_form(
                    form.form_token,
                    inputs=decision.inputs,
                    action=decision.action_id,
                    user=run.dify_user,
                )
            except DifyError as exc:
                return _after_error(decision, exc, watch)
    except SoftTimeLimitExceeded:
        # Out of time mid-call: whether Dify applied it is unknown.
        return _retry_or_fail(
            decision, DifyConnectionError("the delivery ran out of time"), ambiguous=True
        )
    return None


# acks_late (also the project default): the broker keeps the message until the task returns, so
# a worker lost mid-call hands it on. The decision row, not the message, says what is left to do.
@shared_task(
    acks_late=True,
    soft_time_limit=_DELIVERY_SOFT_LIMIT,
    time_limit=settings.INBOX_DELIVERY_TIME_LIMIT,
)
def deliver_decision(
    decision_pk: int, due: str | None = None, accepted: bool = False, handed: int = 0
) -> str:
    """Deliver one decision to Dify and record the outcome. Retries come through here (each
    with its backoff as the countdown, and `due`, the due time it was scheduled for); a
    decision due now goes through `deliver_queued`. `accepted`: Dify answered 200 to an
    attempt whose worker could not record it (the database was away, `_record_accepted`; this
    the `handed`-th time): the delivery is recorded, confirmed, and nothing is sent again."""
    if accepted:
        return _record_handed(decision_pk, handed)
    decision = Decision.start_delivery(
        decision_pk, due=dt.datetime.fromisoformat(due) if due else None
    )
    if decision is None:
        return "skipped"
    outcome = _submit(delivery_client(decision.form.run.app), decision)
    if outcome is not None:
        return outcome
    return _record_accepted([decision])


# After Dify accepted a decision, writing that down is tried again for this long while the
# database is away (a restart), then handed to a new task this many seconds on (doubling each
# time it is handed on again, up to RECORD_REQUEUE_CAP_SECONDS), at most RECORD_HANDOVERS
# times: a database away longer than that (about an hour) leaves it to the stuck sweep.
RECORD_RETRY_SECONDS = 30.0
RECORD_REQUEUE_SECONDS = 5.0
RECORD_REQUEUE_CAP_SECONDS = 300.0
RECORD_HANDOVERS = 16


def _record_handed(decision_pk: int, handed: int) -> str:
    """A decision Dify accepted, handed on by `_record_accepted`: recorded delivered. One
    already recorded (the write went through, its answer was lost, or another worker's did) is
    skipped, but its run is still asked to be followed on, which the write that got through
    may not have come to."""
    try:
        found = _with_database(
            lambda: Decision.objects.select_related("form__run__app").filter(pk=decision_pk).first()
        )
        if found is None:
            return "skipped"
        if found.status in (Decision.Status.QUEUED, Decision.Status.DELIVERING):
            return _record_accepted([found], handed=handed)
        if found.status == Decision.Status.DELIVERED:
            _with_database(request_follow_many, [found.form.run_id])
        return "skipped"
    except (OperationalError, InterfaceError, SoftTimeLimitExceeded) as exc:
        _hand_on([decision_pk], exc, handed + 1)
        return "requeued"


def _hand_on(decision_pks: list[int], exc: BaseException, handed: int) -> None:
    """Give decisions Dify accepted to a new task that records them, later (`_record_handed`)."""
    if handed > RECORD_HANDOVERS:
        for pk in decision_pks:
            logger.error(
                "decision %s: Dify accepted it, the database did not record it (%s) after %d "
                "tries: the stuck-delivery sweep takes it up",
                pk,
                exc,
                handed - 1,
            )
        return
    countdown = min(RECORD_REQUEUE_SECONDS * 2 ** (handed - 1), RECORD_REQUEUE_CAP_SECONDS)
    for pk in decision_pks:
        logger.warning(
            "decision %s: Dify accepted it, the database did not record it (%s): "
            "recorded by a new task in %.0fs",
            pk,
            exc,
            countdown,
        )
        try:
            deliver_decision.apply_async(
                (pk,), {"accepted": True, "handed": handed}, countdown=countdown
            )
        except Exception:
            logger.warning("decision %s: not handed on", pk, exc_info=True)


def _with_database(fn: Any, *args: Any) -> Any:
    """`fn(*args)`, tried again with a fresh connection and a growing pause while the database
    does not answer (OperationalError, InterfaceError), for up to RECORD_RETRY_SECONDS."""
    deadline = time.monotonic() + RECORD_RETRY_SECONDS
    pause = 0.25
    while True:
        try:
            return fn(*args)
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + pause > deadline:
                raise
            logger.warning(
                "database away while recording a delivery (%s): again in %.2fs", exc, pause
            )
            time.sleep(pause)
            pause = min(2 * pause, 4.0)
            # A connection the failure left broken is dropped, for a new one on the next
            # query; never one a caller's transaction is still open on.
            for conn in connections.all(initialized_only=True):
                if not conn.in_atomic_block:
                    conn.close_if_unusable_or_obsolete()


def _record_accepted(accepted: list[Decision], *, handed: int = 0) -> str:
    """Record decisions Dify accepted (200): delivered, their runs followed on, Dify known to
    answer for their apps. A database that stays away past the retries (or a task out of time
    meanwhile) does not leave them `delivering` for the stuck sweep (which would send them
    again, meet a 412 and only presume them delivered): each is handed to a new task that
    records it, confirmed, when it is back."""
    try:
        for app in {d.form.run.app_id: d.form.run.app for d in accepted}.values():
            _with_database(_delivered_for, app)
        settled = _with_database(Decision.finish_delivered, accepted)
        # Every accepted decision's run, not only those settled here: Dify took each (its run
        # went on), and a write whose answer was lost settles nothing when tried again.
        _with_database(request_follow_many, [d.form.run_id for d in accepted])
        # A decision whose last attempt could not reach Dify got through: Dify is back.
        _with_database(
            Decision.release_unreachable, [d.form.run.app_id for d in settled if d.dify_unreachable]
        )
    except (OperationalError, InterfaceError, SoftTimeLimitExceeded) as exc:
        _hand_on([d.pk for d in accepted], exc, handed + 1)
        return "requeued"
    return "delivered"


def _submit_on_thread(decision: Decision) -> str | None:
    """`_submit` on one of the pump's threads. A thread that touched the database (only the
    outcomes other than "accepted" do) closes its connection: the threads do not outlive the
    batch, their connections must not either."""
    try:
        return _submit(delivery_client(decision.form.run.app), decision)
    finally:
        for conn in connections.all(initialized_only=True):
            conn.close()


@shared_task(
    acks_late=True,
    soft_time_limit=settings.INBOX_DELIVERY_PUMP_SOFT_TIME_LIMIT,
    time_limit=settings.INBOX_DELIVERY_PUMP_TIME_LIMIT,
)
def deliver_queued(helper: bool = False) -> dict[str, int]:
    """The delivery pump (`_pump`). One that fails (a database error, a bug) calls another in a
    few seconds: it had cleared the pump's request, so the decisions due now would otherwise
    wait for the lost-task sweep (minutes)."""
    try:
        return _pump(helper)
    except Exception:
        if not helper:
            try:
                deliver_queued.apply_async(countdown=PUMP_RESTART_SECONDS)
            except Exception:
                logger.warning("delivery pump: no other pump called", exc_info=True)
        raise


# How long after a failed pump the next one starts.
PUMP_RESTART_SECONDS = 5.0


def _pump(helper: bool) -> dict[str, int]:
    """The delivery pump: claim the due decisions a batch at a time and send each batch at once
    (a thread per decision), until none is due. Two batches are in flight at most, so the
    database work of one (its claim, then recording its outcomes) overlaps the calls of the
    other. Each decision goes through the same claim, submit and outcomes as
    `deliver_decision`; only the bookkeeping of the common case, Dify accepting, is shared by
    the batch.

    A backlog (a full batch claimed) calls `INBOX_DELIVERY_PUMPS - 1` helpers: pumps in other
    tasks that claim from the same queue (rows are locked as they are picked, so no decision
    goes to two of them) and stop when it is drained; one pump is bound to one core."""
    if not helper:
        DeliveryPump.started()
    counts: dict[str, int] = {}
    deadline = time.monotonic() + float(settings.INBOX_DELIVERY_PUMP_SECONDS)
    batch_size = int(settings.INBOX_DELIVERY_BATCH)
    in_flight: deque[tuple[list[Decision], list[Future[str | None]]]] = deque()
    parallel = connection.features.has_select_for_update_skip_locked
    helpers_wanted = int(settings.INBOX_DELIVERY_PUMPS) - 1 if parallel and not helper else 0
    claiming = True
    claims = 0
    with ThreadPoolExecutor(2 * batch_size, thread_name_prefix="deliver") as pool:
        while claiming or in_flight:
            if claiming and not parallel and claims and time.monotonic() > deadline:
                # SQLite sends from this thread, one call after another, and claims one
                # decision at a time: none is claimed (an attempt counted, marked delivering)
                # that the task's time limit could stop before it is sent.
                claiming = False
                if not helper:
                    DeliveryPump.wake()
                continue
            if claiming and len(in_flight) < 2:
                claims += 1
                claimed, closed, drained = Decision.claim_due(batch_size if parallel else 1)
                if helpers_wanted and len(claimed) == batch_size and not drained:
                    _call_helpers(helpers_wanted)
                    helpers_wanted = 0
                for pk in closed:
                    # Its form closed or expired while it waited: settled there, no call.
                    settled_as = deliver_decision(pk)
                    counts[settled_as] = counts.get(settled_as, 0) + 1
                if drained:
                    # Whatever comes due from now on wakes another pump; what another pump
                    # holds, it sends.
                    claiming = False
                elif time.monotonic() > deadline:
                    # A long backlog: the rest goes to a new task, so this thread is free soon
                    # (a helper just stops: the new pump calls its own).
                    claiming = False
                    if not helper:
                        DeliveryPump.wake()
                if not claimed and not closed and claiming:
                    # Every due decision free of other pumps waits on a form another
                    # transaction holds for a moment.
                    time.sleep(0.05)
                if claimed and (not parallel or (len(claimed) == 1 and not in_flight)):
                    # A lone decision (the usual case) is sent from this thread; so is every
                    # batch on SQLite, whose one writer at a time gains nothing from threads.
                    outcomes = [_submit(delivery_client(d.form.run.app), d) for d in claimed]
                    _record_batch(claimed, outcomes, counts)
                elif claimed:
                    futures = [pool.submit(_submit_on_thread, d) for d in claimed]
                    in_flight.append((claimed, futures))
                continue
            claimed, futures = in_flight.popleft()
            _record_batch(claimed, [f.result() for f in futures], counts)
    if counts:
        logger.info("deliver_queued: %s", counts)
    return counts


def _call_helpers(count: int) -> None:
    for _ in range(count):
        try:
            deliver_queued.apply_async(kwargs={"helper": True})
        except Exception:
            # This pump still sends the whole backlog, only alone.
            logger.warning("delivery pump: helper not called", exc_info=True)
            return


def _record_batch(
    claimed: list[Decision], outcomes: list[str | None], counts: dict[str, int]
) -> None:
    """The decisions Dify accepted, recorded together; the other outcomes are recorded already."""
    accepted = [d for d, outcome in zip(claimed, outcomes, strict=True) if outcome is None]
    recorded = _record_accepted(accepted) if accepted else "delivered"
    for outcome in outcomes:
        key = outcome or recorded
        counts[key] = counts.get(key, 0) + 1


def _delivered_for(app: DifyApp) -> None:
    """Dify accepted a decision for this app: its key is good. A submit goes through whatever
    the app's kind and whether anything is published, so the decisions held for the app are due
    again even while a refusal about those stays on record. Free for an app in good health."""
    # Dify answered: a contact failure on record is over (free when none is).
    app.note_reached("delivery")
    if app.refused_at is not None and not app.note_accepted("delivery", runs=True):
        Decision.release_held([app.pk])


def _after_error(decision: Decision, exc: DifyError, watch: EventStream | None) -> str:
    run_pk = decision.form.run_id
    if isinstance(exc, InvalidFormData):
        # Dify's validation: nothing changed there, the reviewer fixes the values and resends.
        Decision.finish(
            decision.pk,
            status=Decision.Status.REJECTED,
            form_status=Form.Status.PENDING,
            reason=exc.message or Reason(gettext_noop("Dify did not accept the values.")),
            verb="decision_rejected",
            code=exc.code,
        )
        return "rejected"
    if isinstance(exc, FormAlreadySubmitted):
        return _settle_already_submitted(decision)
    if isinstance(exc, FormExpired):
        Decision.finish(
            decision.pk,
            status=Decision.Status.REJECTED,
            form_status=Form.Status.EXPIRED,
            reason=Reason(gettext_noop("The form expired in Dify before the decision arrived.")),
            verb="decision_rejected",
            code=exc.code,
        )
        request_follow(run_pk)
        return "expired"
    if isinstance(exc, NotFound):
        return _after_not_found(decision, exc)
    if isinstance(exc, DifyStatusError) and exc.refuses_app:
        return _hold_for_app(decision, exc)
    if isinstance(exc, DifyStatusError) and exc.permanent:
        _fail(
            decision,
            _refused_reason(exc),
            code=exc.code,
        )
        return "failed"
    if cannot_reach(exc):
        # No Dify answering for the app: shown with it (admin, dashboard, /healthz, pages).
        decision.form.run.app.note_unreachable(exc, "delivery")
    ambiguous = not _never_sent(exc)
    if ambiguous and watch is not None:
        # The answer was lost; Dify's own event on the run says whether the submit landed.
        filled = _filled_from_stream(watch, decision.form)
        if filled is not None:
            return _settle_filled(decision, filled, confirmed_by="live events")
    retry_after = exc.retry_after if isinstance(exc, DifyStatusError) else None
    return _retry_or_fail(decision, exc, retry_after=retry_after, ambiguous=ambiguous)


def _after_not_found(decision: Decision, exc: NotFound) -> str:
    """Dify does not know the form's token. Final (the form is gone in Dify) only while the key
    still sees the app, which its run's detail, its other runs and its /info tell
    (`check_app`); 404s for the whole app (another app's key, a wrong URL, a proxy) hold the
    decision as a refusal of the app does, and one Dify could not be asked about is tried
    again."""
    run = decision.form.run
    app = run.app
    if refused_before(app):
        # Held already for 404s of the whole app: the reconcile asks Dify, at its interval.
        return _hold_for_app(decision, AppNotFound(404, APP_NOT_FOUND_REFUSAL, ""), noted=True)
    check = check_app(app, source="delivery", first=run)
    if check.refused:
        # Recorded by the check (a 404 for the app, or /info refusing its key).
        return _hold_for_app(decision, AppNotFound(404, APP_NOT_FOUND_REFUSAL, ""), noted=True)
    if not check.works:
        return _retry_or_fail(decision, exc)
    _fail(
        decision,
        Reason(
            gettext_noop(
                "Dify does not know this form (404), while it still answers for the app: its "
                "run was deleted there, or the form was never one Dify lets us answer."
            )
        ),
        code=exc.code,
    )
    return "failed"


def _hold_for_app(decision: Decision, exc: DifyStatusError, *, noted: bool = False) -> str:
    """Dify refuses the app (a revoked key, an unpublished app), not the decision: it waits for
    the app to be accepted again, which an administrator's new key, Dify's next accepted call or
    another decision's delivery says (`DifyApp.note_accepted`, `settings_changed`,
    `_delivered_for`). A refusal that keeps coming back while other calls are accepted (a key
    that may read but not submit) fails after the attempts."""
    app = decision.form.run.app
    if not noted:
        app.note_refused(exc, "delivery")
    reason = _refused_reason(exc)
    if exc.code == APP_NOT_FOUND_REFUSAL:
        reason = Reason(
            gettext_noop(
                "Dify answers 404 for this app as a whole (the key of another app, a wrong URL "
                "or a proxy?), not for this form alone: the decision waits until Dify answers "
                "for the app again."
            )
        )
    if decision.attempts >= settings.INBOX_DELIVERY_MAX_ATTEMPTS:
        _fail(decision, reason, code=exc.code)
        return "failed"
    if not Decision.hold_for_app(decision.pk, error=reason):
        return "skipped"
    logger.warning(
        "decision %s: held until Dify accepts the app %s again: %s", decision.pk, app, exc
    )
    if not DifyApp.objects.filter(pk=app.pk, refused_at__isnull=False).exists():
        # Accepted again between the refusal and the hold, or the refusal was of settings an
        # administrator has replaced since: nothing would release it.
        Decision.release_held([app.pk])
    return "held"


def _refused_reason(exc: DifyStatusError) -> Reason:
    return Reason(
        gettext_noop("Dify refused the decision (%(status)s %(code)s): %(message)s"),
        status=exc.status,
        code=exc.code,
        message=exc.message,
    )


def _fail(decision: Decision, reason: str, **details: Any) -> None:
    Decision.finish(
        decision.pk,
        status=Decision.Status.FAILED,
        form_status=Form.Status.FAILED,
        reason=reason,
        verb="decision_failed",
        **details,
    )
    logger.warning("decision %s: delivery failed: %s", decision.pk, reason)


def _retry_or_fail(
    decision: Decision,
    exc: DifyError,
    *,
    retry_after: float | None = None,
    ambiguous: bool | None = None,
) -> str:
    if ambiguous is None:
        ambiguous = not _never_sent(exc)
    text = str(exc)
    if decision.attempts >= settings.INBOX_DELIVERY_MAX_ATTEMPTS and not _outage(exc):
        if ambiguous or decision.maybe_applied:
            # The last call may have landed; a later retry by an administrator is checked
            # against Dify's answer (412) like any other.
            Decision.objects.filter(pk=decision.pk).update(maybe_applied=True)
        _fail(
            decision,
            Reason(
                gettext_noop(
                    "Dify could not be reached after %(n)d attempts. Last error: %(error)s"
                ),
                n=decision.attempts,
                error=text,
            ),
            error=text,
        )
        return "failed"
    delay = retry_delay(decision.attempts, retry_after)
    # No connection at all: sent again as soon as another delivery to the app gets through.
    # (A 503 reached a server that said to wait: its backoff stands.)
    unreachable = isinstance(exc, DifyConnectionError) and not exc.request_sent
    Decision.schedule_retry(
        decision.pk, error=text, delay=delay, ambiguous=ambiguous, unreachable=unreachable
    )
    app = decision.form.run.app
    logger.info(
        "decision %s: attempt %d failed (%s), app %s at %s, retry in %.2fs",
        decision.pk,
        decision.attempts,
        text,
        app.label,
        app.server,
        delay,
    )
    return "retry"


def _filled_data(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        return {}
    data = payload.get("data")
    return data if isinstance(data, dict) else payload


def _filled_info(data: dict[str, Any]) -> dict[str, Any]:
    """What a `human_input_form_filled` says of the answer, as the form records it."""
    submitted = data.get("submitted_data")
    return {
        "filled_action_id": str(data.get("action_id") or ""),
        "filled_action_text": str(data.get("action_text") or "")[:255],
        "rendered_content": str(data.get("rendered_content") or ""),
        "filled_data": submitted if isinstance(submitted, dict) else {},
    }


def _filled_from_stream(stream: EventStream, form: Form) -> dict[str, Any] | None:
    """Read a run's events (bounded in time) for the `human_input_form_filled` of this form's
    node, or the node's `node_finished` outputs naming the action (newer Dify builds replay
    both from the run's start, this form's announcement and the pause on it first). The
    evidence found is named under "evidence"."""
    deadline = time.monotonic() + float(settings.INBOX_DELIVERY_WATCH_SECONDS)
    # The form this stream last announced at the node: a fill names the node only, and one
    # that follows another form's announcement (a loop, replayed from the run's start) is that
    # form's, not this one's; so are the node outputs that follow that fill.
    announced: str | None = None
    other = False
    try:
        for event in stream:
            data = event.data or {}
            ours = announced in (None, form.form_id) and not other
            if event.event == "human_input_form_filled":
                if data.get("node_id") == form.node_id and data.get("action_id"):
                    if ours:
                        return {**_filled_info(data), "evidence": "human_input_form_filled"}
                    announced, other = None, True
            elif (
                event.event == "node_finished"
                and data.get("node_id") == form.node_id
                and (found := node_outputs_info(data.get("outputs"))) is not None
            ):
                if ours:
                    return {**found, "evidence": "node_finished"}
                announced, other = None, False
            elif event.event == "human_input_required" and data.get("node_id") == form.node_id:
                announced, other = data.get("form_id"), False
            elif event.event == "workflow_finished":
                break
            if time.monotonic() > deadline:
                break
    except DifyError as exc:
        # A silent stream ends in a read timeout: no fill seen in time.
        logger.info("form %s: run events: %s", form.pk, exc)
    return None


def _find_filled_event(decision: Decision) -> dict[str, Any] | None:
    """What Dify showed of the answer that filled the decision's form: the follower's record
    on the form, a stored `human_input_form_filled` event, or the run's event stream read with
    a state snapshot (newer Dify builds replay the retained event log there: the fill, and the
    Human Input node's outputs). Read even for a decision never known to have reached Dify: an
    attempt whose success this database never recorded (one restored from a backup taken while
    the decision was on its way) shows there as our own action and values."""
    form = Form.objects.select_related("run__app").get(pk=decision.form_id)
    if form.filled_action_id:
        return {
            "filled_action_id": form.filled_action_id,
            "filled_action_text": form.filled_action_text,
            "rendered_content": form.rendered_content,
            "filled_data": form.filled_data if isinstance(form.filled_data, dict) else {},
            "evidence": "human_input_form_filled",
        }
    # Events carry the node, not the form id. Capture stores a fill under the form it gave it
    # to (`filled:<form_id>:<action>`), or under the node when it knew no form there: this
    # form's, else the node's latest, never another form's (the same node in a loop).
    stored = list(
        RunEvent.objects.filter(run=form.run, event="human_input_form_filled")
        .filter(
            Q(key__startswith=f"filled:{form.form_id}:")
            | Q(key__startswith=f"filled:{form.node_id}:")
        )
        .order_by("-id")
        .values_list("key", "payload")[:20]
    )
    stored.sort(key=lambda row: not row[0].startswith(f"filled:{form.form_id}:"))
    for _key, payload in stored:
        data = _filled_data(payload)
        if data.get("node_id") == form.node_id and data.get("action_id"):
            return {**_filled_info(data), "evidence": "human_input_form_filled"}
    if not form.run.workflow_run_id:
        return None
    try:
        # Past the pauses (a replayed log holds the pause on this very form before its fill),
        # to the run's end or the time allowed: Dify said the form is answered, so none of them
        # waits on it.
        stream = delivery_client(form.run.app).stream_events(
            form.run.workflow_run_id,
            user=form.run.dify_user,
            include_state_snapshot=True,
            continue_on_pause=True,
            # What Dify replays comes at once: a silence (an older build's snapshot of a run
            # paused further on) ends the read.
            read_timeout=float(settings.INBOX_DELIVERY_WATCH_SECONDS),
        )
    except DifyError as exc:
        logger.info("decision %s: could not read the run's events: %s", decision.pk, exc)
        return None
    with stream:
        return _filled_from_stream(stream, form)


def _settle_filled(decision: Decision, filled: dict[str, Any], *, confirmed_by: str) -> str:
    """Dify's events show which answer filled the form: ours (our action, and our values where
    Dify shows them: delivered) or another one (answered elsewhere)."""
    run_pk = decision.form.run_id
    filled = {k: v for k, v in filled.items() if k != "evidence"}
    if decision.matches_answer(filled):
        Decision.finish(
            decision.pk,
            status=Decision.Status.DELIVERED,
            form_status=Form.Status.SUBMITTED,
            verb="decision_delivered",
            filled=filled,
            confirmed_by=confirmed_by,
        )
        request_follow(run_pk)
        return "delivered"
    return _answered_elsewhere(decision, filled)


def _answered_elsewhere(decision: Decision, filled: dict[str, Any] | None) -> str:
    form = Form.objects.get(pk=decision.form_id)
    if filled is not None and filled["filled_action_id"]:
        reason = answered_elsewhere_reason(
            form, filled["filled_action_id"], filled["filled_action_text"]
        )
    else:
        reason = answered_elsewhere_reason(form)
    Decision.finish(
        decision.pk,
        status=Decision.Status.REJECTED,
        form_status=Form.Status.ANSWERED_ELSEWHERE,
        reason=reason,
        verb="decision_rejected",
        filled=filled,
        code="human_input_form_submitted",
    )
    request_follow(form.run_id)
    return "answered_elsewhere"


def _settle_already_submitted(decision: Decision) -> str:
    """Dify says the form was already submitted (412).

    Never sent before this attempt: someone answered in Dify first. If an earlier attempt may
    have landed (its answer was lost, or its worker died mid-call), Dify's events decide when
    they are known: our action, delivered; another one, answered elsewhere. When they are not
    (Dify replays no `human_input_form_filled` to a late reader, so a lost answer seen by nobody
    leaves no trace), the submit is presumed ours: the form closed within seconds of our own
    unanswered call, and the audit entry says it was presumed. Dify's events, once the
    follower reads the run on, confirm it or correct it (`Decision.settle_presumption`).

    Dify's evidence naming exactly this decision (its action, and its values where Dify shows
    them) settles it as delivered even when no attempt is known to have reached Dify: one did,
    whose success this database never recorded (restored from a backup taken while the
    decision was on its way). Without such evidence, a decision never known to have been sent
    is refused as answered elsewhere (presuming it ours would hide a real answer given in
    Dify); should the run's events show it later, the capture corrects it to delivered
    (`Decision.correct_rejection`), and the notices of a form answered elsewhere wait a little
    for them (`INBOX_ELSEWHERE_NOTICE_HOLD_SECONDS`)."""
    filled = _find_filled_event(decision)
    if filled is not None:
        return _settle_filled(
            decision, filled, confirmed_by=str(filled.get("evidence") or "human_input_form_filled")
        )
    if not decision.maybe_applied:
        return _answered_elsewhere(decision, None)
    presume_delivered(decision.pk)
    request_follow(decision.form.run_id)
    return "delivered"


def presume_delivered(decision_pk: int) -> bool:
    """Record a delivering decision as delivered by presumption: its earlier attempt's answer
    was lost and Dify shows no other answer (`_settle_already_submitted`). False when the
    decision was already settled (a duplicate task got there first)."""
    return Decision.finish(
        decision_pk,
        status=Decision.Status.DELIVERED,
        form_status=Form.Status.SUBMITTED,
        verb="decision_delivered",
        presumed=True,
        confirmed_by="presumed: an earlier attempt's answer was lost; Dify shows no other answer",
    )


# Periodic (beat, every 30 s). Bounded by a batch and the time limit; the rest waits a tick.
@shared_task(soft_time_limit=50, time_limit=60)
def sweep_deliveries(batch_size: int = 500) -> dict[str, int]:
    """Recover deliveries left `delivering` by a dead worker and re-send queued decisions whose
    task was lost. Both go back through `deliver_decision`; a 412 keeps a landed one from
    counting twice."""
    # Beat and a worker are alive (inbox.health.celery_state): said even when another run holds
    # the lock.
    Heartbeat.beat(SWEEP_HEARTBEAT)
    with periodic_lock("sweep_deliveries") as held:
        if not held:
            logger.info("sweep_deliveries: another run holds the lock")
            return {"stuck": 0, "resent": 0, "released": 0}
        # The database's clock, which delivery_started_at and next_attempt_at are kept by: a
        # worker whose clock is behind the beat's did not start its delivery minutes ago.
        now = database_now()
        started_before = now - dt.timedelta(seconds=settings.INBOX_DELIVERY_STUCK_SECONDS)
        stuck = 0
        for pk in Decision.objects.filter(
            status=Decision.Status.DELIVERING, delivery_started_at__lt=started_before
        ).values_list("pk", flat=True)[:batch_size]:
            stuck += Decision.recover_stuck(pk, started_before=started_before)
        due_before = now - dt.timedelta(seconds=settings.INBOX_DELIVERY_REQUEUE_AFTER_SECONDS)
        resent = 0
        for pk in (
            Decision.objects.filter(status=Decision.Status.QUEUED, held_for_app=False)
            .filter(
                Q(next_attempt_at__lt=due_before)
                | Q(next_attempt_at__isnull=True, updated_at__lt=due_before)
            )
            .values_list("pk", flat=True)[:batch_size]
        ):
            resent += Decision.resend_lost(pk, due_before=due_before)
        # A decision held for an app that Dify accepted meanwhile (the release missed it), or
        # whose form expired while it waited.
        released = Decision.release_held()
        if stuck or resent or released:
            logger.info(
                "sweep_deliveries: %d stuck recovered, %d lost re-sent, %d held released",
                stuck,
                resent,
                released,
            )
        return {"stuck": stuck, "resent": resent, "released": released}


# Periodic (beat, every 5 min). Each GET is short, the batch is bounded; the limit covers a
# batch of slow answers.
@shared_task(soft_time_limit=240, time_limit=270)
def reconcile_pending_forms(batch_size: int | None = None) -> dict[str, int]:
    """Ask Dify about pending forms not checked recently (GET form): a 412 finds forms answered
    in Dify directly (web app, email) or expired there, which the follower may not have seen."""
    with periodic_lock("reconcile_pending_forms") as held:
        if not held:
            logger.info("reconcile_pending_forms: another run holds the lock")
            return {}
        return _reconcile(batch_size or settings.INBOX_RECONCILE_BATCH)


def _askable_forms(now: dt.datetime) -> QuerySet[Form]:
    """Pending forms Dify can be asked about (GET form): with a token, not expired here, and of
    an app whose key Dify accepts. Those of a refused key wait for `reconcile_runs` to find it
    accepted; a form of an app refused as set up here (its kind, nothing published) still
    answers."""
    return (
        Form.objects.filter(status=Form.Status.PENDING)
        .exclude(form_token="")
        .filter(Q(expiration_time__isnull=True) | Q(expiration_time__gt=now))
        .filter(
            Q(run__app__refused_at__isnull=True)
            | Q(run__app__refusal_code__in=sorted(SETUP_REFUSALS))
        )
    )


def _reconcile(batch_size: int) -> dict[str, int]:
    now = timezone.now()
    cutoff = now - dt.timedelta(seconds=settings.INBOX_RECONCILE_AFTER_SECONDS)
    forms = list(
        _askable_forms(now)
        .filter(Q(checked_at__lt=cutoff) | Q(checked_at__isnull=True, created_at__lt=cutoff))
        .select_related("run__app")
        .order_by(F("checked_at").asc(nulls_first=True), "created_at")[:batch_size]
    )
    counts = {"checked": 0, "answered_elsewhere": 0, "expired": 0, "errors": 0}
    unreachable: set[int] = set()
    for form in forms:
        app = form.run.app
        if app.pk in unreachable:
            continue
        outcome = _ask_about_form(form, "reconcile")
        if outcome in ("refused", "unreachable"):
            # Its app's other forms wait for the next pass.
            counts["errors"] += 1
            unreachable.add(app.pk)
            continue
        if outcome in ("answered_elsewhere", "expired"):
            counts[outcome] += 1
        elif outcome == "error":
            counts["errors"] += 1
        counts["checked"] += 1
    return counts


def _ask_about_form(form: Form, source: str) -> str:
    """GET form: closes a form Dify says was answered there or expired, and stamps it as asked
    about. Returns "answered_elsewhere", "expired", "open" (nothing new), "closed" (closed here
    meanwhile), "refused" (Dify refuses its app), "unreachable" (Dify down or busy for the app)
    or "error" (an answer Dify will give again)."""
    app = form.run.app
    # An inactive app's forms may still be decided, and are asked about; what its Dify (often
    # a server retired) fails to answer is no news worth a warning at every pass.
    level = logging.WARNING if app.is_active else logging.INFO
    try:
        delivery_client(app).get_form(form.form_token)
    except FormAlreadySubmitted:
        # Dify answered: a contact failure on record is over (free when none is).
        app.note_reached(source)
        closed = form.close_in_dify(
            Form.Status.ANSWERED_ELSEWHERE,
            reason="GET form: human_input_form_submitted",
            source=source,
        )
        _stamp_checked(form)
        return "answered_elsewhere" if closed else "closed"
    except FormExpired:
        app.note_reached(source)
        closed = form.close_in_dify(
            Form.Status.EXPIRED, reason="GET form: human_input_form_expired", source=source
        )
        _stamp_checked(form)
        return "expired" if closed else "closed"
    except DifyError as exc:
        if isinstance(exc, DifyStatusError) and exc.refuses_app:
            # Said once, for the app (`note_refused` logs it).
            if not app.note_refused(exc, source):
                logger.log(level, "%s: app %s: Dify refuses it: %s", source, app, exc)
            return "refused"
        logger.log(level, "%s: form %s: %s", source, form.pk, exc)
        _stamp_checked(form)
        if cannot_reach(exc):
            # No Dify answering for the app, as the follower, the run reconcile and deliveries
            # record it: the admin, the dashboard, /healthz and the pages say so. Not a 404,
            # which is an answer (about the form, or the whole app: `check_app`).
            app.note_unreachable(exc, source)
        if not isinstance(exc, DifyStatusError) or not exc.permanent:
            # Dify may be down or busy for this app. The form is stamped as asked about all
            # the same, so the next pass starts with the others: a form Dify keeps failing on
            # (a 5xx on its GET alone) does not stand in front of them for good, and an outage
            # costs one call per app and pass.
            return "unreachable"
        return "error"
    app.note_reached(source)
    _stamp_checked(form)
    return "open"


def _stamp_checked(form: Form) -> None:
    Form.objects.filter(pk=form.pk).update(checked_at=timezone.now())


# A reviewer opened the page of a pending form: one GET form now, not at the reconcile's next
# pass, so a form answered in Dify's own pages meanwhile reads so within seconds (the page's
# live poll shows it) rather than after the reviewer decided it.
@shared_task(soft_time_limit=60, time_limit=75)
def check_form(form_pk: int) -> str:
    """Ask Dify about one pending form (GET form), unless it was asked about in the last
    INBOX_CHECK_ON_VIEW_SECONDS or its app's key is refused."""
    now = timezone.now()
    recently = now - dt.timedelta(seconds=settings.INBOX_CHECK_ON_VIEW_SECONDS)
    form = (
        _askable_forms(now)
        .filter(pk=form_pk)
        .exclude(checked_at__gte=recently)
        .select_related("run__app")
        .first()
    )
    if form is None:
        return "skipped"
    return _ask_about_form(form, "check on view")


# An app's Dify was found away (no connection, no answer in time), or answering again: the
# other apps on its server most likely are too (`DifyApp._check_server`). One short call each.
@shared_task(soft_time_limit=60, time_limit=75)
def check_server(app_pk: int, away: bool) -> dict[str, int]:
    """Ask Dify's /info for each other active app on the server of `app_pk`, which was found
    `away` (no connection) or answering again: while it is away, those not marked yet; once it
    answers, those still marked. Each app is marked or cleared on its own answer
    (`note_unreachable`, `note_reached`), never on another's: an app with no open run, which
    no other call would ask about, shows with its server. Any answer from Dify (a 4xx too)
    means it is there."""
    app = DifyApp.objects.filter(pk=app_pk).first()
    if app is None:
        return {}
    others = [
        other
        for other in DifyApp.objects.filter(is_active=True, contact_failed_at__isnull=away).exclude(
            pk=app.pk
        )
        if other.server == app.server and not other.api_key_sealed
    ]
    counts = {"reachable": 0, "unreachable": 0}
    for other in others:
        try:
            with DifyClient(
                other.base_url, other.api_key, timeout=httpx.Timeout(5.0), max_retries=0
            ) as client:
                client.get_info()
        except DifyError as exc:
            if cannot_reach(exc):
                other.note_unreachable(exc, SERVER_CHECK)
                counts["unreachable"] += 1
                continue
        other.note_reached(SERVER_CHECK)
        counts["reachable"] += 1
    if others:
        logger.info("check_server: %s (after app %s): %s", app.server, app, counts)
    return counts


# --- emails: requests, reminders, closing notices ---


# A form's first emails, queued when its capture commits. Sending goes through Django's email
# backend (SMTP in production): the limits cover a slow mail server and a long recipient list.
@shared_task(soft_time_limit=120, time_limit=150)
def send_form_emails(form_pk: int) -> int:
    """Email every recipient of a pending form that has not been emailed yet."""
    from inbox import notify

    return notify.send_form_emails(form_pk)


# A decision that failed for good: its maker is told (once; the sweep makes up for a lost task).
@shared_task(soft_time_limit=60, time_limit=75)
def send_failure_notice(decision_pk: int) -> int:
    """Email the person who made a decision that failed for good that it was not delivered."""
    from inbox import notify

    return notify.send_failure_notice(decision_pk)


# A password reset asked for: the link is made here, so it exists nowhere but in the email.
@shared_task(soft_time_limit=60, time_limit=75)
def send_password_reset(user_pk: int, language: str) -> int:
    """Email an account the link to choose a new password (inbox.accounts)."""
    from inbox import accounts

    return accounts.send_password_reset(user_pk, language)


# A set-password link an administrator sent (the admin's users): made here too, from the id.
@shared_task(soft_time_limit=60, time_limit=75)
def send_password_link(user_pk: int) -> int:
    """Email an account the link to set its password, as an administrator asked (an invitation
    to an account that never had one; inbox.accounts)."""
    from inbox import accounts

    return accounts.send_password_link(user_pk)


# Periodic (beat, every minute). Bounded by batches and the time limit; the rest waits a tick.
@shared_task(soft_time_limit=100, time_limit=120)
def send_reminders(batch_size: int = 500) -> dict[str, int]:
    """First emails that never went out, reminders before expiry for forms nobody answered,
    and a notice to each recipient once their form is decided or expires."""
    from inbox import notify

    # Beat and whoever sends the emails (the mailer, with INBOX_MAIL_QUEUE) are alive.
    Heartbeat.beat(MAIL_HEARTBEAT)
    with periodic_lock("send_reminders") as held:
        if not held:
            logger.info("send_reminders: another run holds the lock")
            return {}
        return notify.send_due_emails(timezone.now(), batch_size=batch_size)


# Periodic (beat, hourly): sessions past their expiry, which Django keeps until told.
@shared_task(soft_time_limit=100, time_limit=120)
def clear_expired_sessions() -> None:
    from importlib import import_module

    from django.conf import settings

    import_module(settings.SESSION_ENGINE).SessionStore.clear_expired()


# Periodic (beat, daily): the record let go after the days the operator set (inbox.retention).
@shared_task(soft_time_limit=3300, time_limit=3600)
def prune_records() -> dict[str, int]:
    from dataclasses import asdict

    from django.conf import settings

    from inbox.retention import audit_shorter_than_runs, prune

    runs, audit = settings.INBOX_RETENTION_DAYS, settings.INBOX_AUDIT_RETENTION_DAYS
    if not runs and not audit:
        return {}
    if audit_shorter_than_runs(runs, audit):
        logger.warning(
            "prune_records: INBOX_AUDIT_RETENTION_DAYS (%g) is shorter than "
            "INBOX_RETENTION_DAYS (%g, 0: for ever): decisions kept lose their audit entries",
            audit,
            runs,
        )
    with periodic_lock("prune_records") as held:
        if not held:
            return {}
        pruned = asdict(
            prune(runs_older_than_days=runs, audit_older_than_days=audit, by="retention task")
        )
    logger.info("prune_records: %s", pruned)
    return pruned


# --- runs no stream is reading ---


# Periodic (beat, every minute). A batch of GET run detail calls, each short; the limit covers
# a batch of slow answers. Whatever is left waits a tick.
@shared_task(soft_time_limit=100, time_limit=120)
def reconcile_runs(batch_size: int | None = None) -> dict[str, int]:
    """Ask Dify's run detail about runs no follower is reading: the ones whose stream the
    follower gave up on, and every open run now and then. A finished run is closed with Dify's
    final status (its open forms expire); a run that moved on, or a paused run whose forms we
    may not know (a given-up stream, forms answerable only in Dify's own channels), is handed
    back to the follower with a state snapshot. The runs of an app whose key Dify refuses wait,
    and one of them asks for all, with a growing interval (`_refused_apps`)."""
    with periodic_lock("reconcile_runs") as held:
        if not held:
            logger.info("reconcile_runs: another run holds the lock")
            return {}
        return _reconcile_runs(batch_size or settings.INBOX_RUN_RECONCILE_BATCH)


# How long after Dify first said it does not know a run (404) a second 404 takes it for gone.
RUN_GONE_AFTER = dt.timedelta(minutes=10)
# How often the runs of an inactive app are asked about (its server retired, say: every pass
# would fail the same way), unless a decision of theirs is on its way or just arrived.
INACTIVE_RECONCILE_EVERY = dt.timedelta(hours=1)


def _level(app: DifyApp) -> int:
    """How loud to say what Dify fails to answer for the app: an inactive app's (its server
    retired, say) is no news worth a warning at every pass."""
    return logging.WARNING if app.is_active else logging.INFO


def _warn_if_unfollowed(now: dt.datetime) -> None:
    """Said every minute while runs wait for a follower that never comes: nothing else would
    tell, as the runs only look slow."""
    from inbox.follower import unfollowed

    count, since = unfollowed()
    if count:
        logger.warning(
            "%d run(s) have waited %d min for a follower and none takes them: is "
            "`manage.py follow` running?",
            count,
            (now - since).total_seconds() // 60 if since else 0,
        )


def _reconcile_runs(batch_size: int) -> dict[str, int]:
    from inbox import capture
    from inbox.models import Form, Run

    now = timezone.now()
    counts = {
        "checked": 0,
        "finished": 0,
        "followed": 0,
        "never_started": 0,
        "errors": 0,
        # Runs of apps Dify refuses, left waiting (see `_refused_apps`).
        "held": 0,
        # Runs the follower gave up on in a row, not handed back to it yet (`Run.refollow_after`).
        "waiting": 0,
    }
    _warn_if_unfollowed(now)
    stale_start = now - dt.timedelta(seconds=settings.INBOX_RUN_START_TIMEOUT_SECONDS)
    for run in Run.objects.filter(status=Run.Status.STARTING, workflow_run_id="").filter(
        created_at__lt=stale_start
    )[:batch_size]:
        updated = Run.objects.filter(
            pk=run.pk, status=Run.Status.STARTING, workflow_run_id=""
        ).update(
            status=Run.Status.FAILED,
            error=gettext_noop("The run did not start: Dify never gave it a run id."),
            follow_wanted=False,
            finished_at=now,
        )
        if updated:
            AuditEntry.record("run_never_started", run)
            counts["never_started"] += 1
    cutoff = now - dt.timedelta(seconds=settings.INBOX_RUN_RECONCILE_AFTER_SECONDS)
    # A run paused where no form can be answered here (an email, Dify's console) has nobody
    # here whose decision would have it followed on: asked about more often, so its next pause
    # (or its end) shows within about a minute of the answer there, not five.
    outside = now - dt.timedelta(seconds=settings.INBOX_RUN_RECONCILE_OUTSIDE_SECONDS)
    waits_outside = Q(
        status=Run.Status.PAUSED,
        updated_at__lt=outside,
    ) & (Q(checked_at__isnull=True) | Q(checked_at__lt=outside))
    waits_outside &= Q(
        Exists(Form.objects.filter(run=OuterRef("pk"), status=Form.Status.NOT_ANSWERABLE))
    ) & ~Q(
        Exists(
            Form.objects.filter(
                run=OuterRef("pk"),
                status__in=(Form.Status.PENDING, Form.Status.SUBMITTING, Form.Status.SUBMITTED),
            )
        )
    )
    # A run the follower gave up on that has no form here anyone could answer: its detail is
    # asked about as often, since a pause (or any change of status) it shows hands it back to
    # the follower at once; a run that waits at a form of ours is asked as any run is.
    unseen = (
        Q(needs_reconcile=True, refollow_after__gt=Now())
        & (Q(checked_at__isnull=True) | Q(checked_at__lt=outside))
        & ~Q(
            Exists(
                Form.objects.filter(
                    run=OuterRef("pk"), status__in=sorted(capture.AWAITING_STATUSES)
                )
            )
        )
    )
    due = (
        Run.objects.exclude(status__in=Run.FINAL_STATUSES)
        .exclude(workflow_run_id="")
        .filter(follow_wanted=False)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=Now()))
        .filter(
            # A run the follower gave up on is asked about at the next pass, and again whenever
            # it may be handed back to the follower (see `Run.refollow_after`); in between, as
            # often as any other run.
            Q(needs_reconcile=True, refollow_after__isnull=True)
            | Q(needs_reconcile=True, refollow_after__lte=Now())
            | Q(checked_at__lt=cutoff, updated_at__lt=cutoff)
            | Q(checked_at__isnull=True, updated_at__lt=cutoff)
            | waits_outside
            | unseen
        )
        .filter(
            Q(app__is_active=True)
            | Q(checked_at__isnull=True)
            | Q(checked_at__lt=now - INACTIVE_RECONCILE_EVERY)
            | Q(
                Exists(
                    Form.objects.filter(
                        run=OuterRef("pk"),
                        status__in=(Form.Status.SUBMITTING, Form.Status.SUBMITTED),
                    )
                )
            )
        )
        .select_related("app")
        .order_by("-needs_reconcile", F("checked_at").asc(nulls_first=True), "pk")
    )
    refused = {app.pk: app for app in DifyApp.objects.filter(refused_at__isnull=False)}
    # A refused key refuses the runs' detail and events too: those runs wait, and one of them
    # asks for all. An app refused as set up here (its kind, nothing published) still answers
    # for the runs it has, which are read as any others while the app itself is asked about.
    holding = {pk for pk, app in refused.items() if app.refusal_code not in SETUP_REFUSALS}
    # When a refusal was seen and last asked about are kept by the database's clock (whichever
    # host saw it); the probes are counted by it too.
    db_now = database_now()
    probes = _refused_apps(due, refused, holding, db_now, counts)
    probe_pks = {run.pk for run in probes}
    runs = probes + list(due.exclude(app_id__in=holding)[:batch_size])
    unreachable: set[int] = set()
    refused_now: set[int] = set()
    # What Dify said of each app whose run was a 404 this pass (`check_app`).
    checks: dict[int, AppCheck] = {}
    # One instance per app in a pass: what one run's call found about the app (a contact
    # failure, Dify answering again) is known to the next run's.
    apps: dict[int, DifyApp] = dict(refused)
    accepted: set[int] = set()
    for run in runs:
        if run.app_id in refused_now:
            counts["held"] += 1
            continue
        if run.app_id in unreachable:
            continue
        probing = run.pk in probe_pks
        run.app = apps.setdefault(run.app_id, run.app)
        try:
            detail = DifyClient.for_app(run.app).get_run(run.workflow_run_id)
        except NotFound:
            # The key sees no such run: it was deleted (or Dify's data reset), or the key is
            # another app's, or a proxy answers 404 for the app. Dify is asked about the app
            # (once a pass): 404s for the whole app hold its runs as a refusal does; only while
            # the key still sees the app is the run itself not found.
            if run.app_id not in checks:
                checks[run.app_id] = check_app(run.app, source="reconcile", besides=run)
            check = checks[run.app_id]
            if not check.works:
                counts["errors"] += 1
                Run.objects.filter(pk=run.pk).update(checked_at=timezone.now())
                if check.refused:
                    if probing:
                        run.app.note_probed(db_now)
                        logger.log(
                            _level(run.app),
                            "reconcile_runs: app %s: Dify still refuses it (since %s): %s; "
                            "next try after %s",
                            run.app,
                            run.app.refused_at.isoformat() if run.app.refused_at else "?",
                            run.app.refusal,
                            (run.app.next_refusal_probe() or db_now).isoformat(),
                        )
                    refused_now.add(run.app_id)
                else:
                    logger.log(_level(run.app), "reconcile_runs: app %s: %s", run.app, check.detail)
                    unreachable.add(run.app_id)
                continue
            # Said twice, RUN_GONE_AFTER apart, with no new settings between, the run is taken
            # for gone and its waiting forms close: nothing sent for them could arrive.
            seen_before = AuditEntry.objects.filter(
                verb="run_not_found",
                object_type="run",
                object_id=str(run.pk),
                created_at__lt=now - RUN_GONE_AFTER,
                created_at__gt=run.app.updated_at,
            ).exists()
            if seen_before and run.app.refused_at is None:
                run.gone_from_dify(source="reconcile")
                counts["gone"] = counts.get("gone", 0) + 1
            else:
                Run.objects.filter(pk=run.pk).update(
                    checked_at=timezone.now(), needs_reconcile=False
                )
                # Once, until it is taken for gone (or new settings ask again): not a line a
                # minute in the trail for as long as the question stays open.
                if not AuditEntry.objects.filter(
                    verb="run_not_found",
                    object_type="run",
                    object_id=str(run.pk),
                    created_at__gt=run.app.updated_at,
                ).exists():
                    AuditEntry.record("run_not_found", run)
            counts["errors"] += 1
            continue
        except DifyError as exc:
            counts["errors"] += 1
            if isinstance(exc, DifyStatusError) and exc.refuses_app:
                if probing:
                    _probe_failed(run.app, exc, db_now)
                    continue
                # Said once, for the app (`note_refused` logs it); its other runs wait.
                if not run.app.note_refused(exc, "reconcile"):
                    logger.log(
                        _level(run.app), "reconcile_runs: app %s: Dify refuses it: %s", run.app, exc
                    )
                refused_now.add(run.app_id)
                continue
            logger.log(_level(run.app), "reconcile_runs: run %s: %s", run.pk, exc)
            if cannot_reach(exc):
                run.app.note_unreachable(exc, "reconcile")
            # Asked about, if not answered: the next pass starts with the app's other runs, so
            # a run Dify keeps failing on (a 5xx on its detail alone) does not stand in front
            # of them for good.
            Run.objects.filter(pk=run.pk).update(checked_at=timezone.now())
            if probing:
                # Which says nothing about what Dify refused: the app itself is asked instead.
                _ask_about_app(run.app, db_now)
            elif not isinstance(exc, DifyStatusError) or not exc.permanent:
                unreachable.add(run.app_id)
            continue
        # Dify answers for this app (again): its other runs are asked about from the next pass.
        if run.app_id not in accepted:
            accepted.add(run.app_id)
            run.app.note_accepted("reconcile", runs=True)
        # The key sees the app's runs: what /info calls the app now is what a later 404 is
        # held against (`check_app`). Asked once per app.
        learn_name(run.app)
        counts["checked"] += 1
        shown = run.status
        capture.apply_run_detail(run, detail)
        awaiting = list(
            run.forms.filter(status__in=sorted(capture.AWAITING_STATUSES)).values_list(
                "status", flat=True
            )
        )
        # The follower gave up on this run again and again: it waits to be handed back (its run
        # detail still says when it ends), and keeps its mark until then, unless the detail
        # shows news its stream would bring: Dify's status is not the one shown here (it
        # started, paused or resumed), or the run is paused with no form waiting here (a form
        # nobody could decide yet). A stream of the app that opens meanwhile hands it back too
        # (`DifyApp.note_reached`).
        waiting = bool(
            run.needs_reconcile
            and not detail.is_finished
            and run.refollow_after is not None
            and run.refollow_after > db_now
            and detail.status == shown
            and not (detail.status == "paused" and not awaiting)
        )
        Run.objects.filter(pk=run.pk).update(checked_at=timezone.now(), needs_reconcile=waiting)
        if detail.is_finished:
            counts["finished"] += 1
            continue
        if run.events_unavailable:
            continue
        if waiting:
            counts["waiting"] += 1
            continue
        # A running run nobody reads, or a pause whose forms we may not know: read it again.
        # A pause on forms answerable only in Dify (email, console) is looked at each time,
        # since nothing else tells us when someone answers there.
        if (
            detail.status == "running"
            or run.needs_reconcile
            or not awaiting
            or "not_answerable" in awaiting
        ) and run.request_follow(snapshot=True):
            counts["followed"] += 1
    return counts


def _refused_apps(
    due: Any,
    refused: dict[int, DifyApp],
    holding: set[int],
    now: dt.datetime,
    counts: dict[str, int],
) -> list[Any]:
    """The runs that ask Dify again about the apps it refuses, one per app at most, each when
    the app's backoff allows (`DifyApp.next_refusal_probe`: 1, 2, 4... up to 30 minutes). The
    other runs of those apps wait, with one warning per app, so a revoked key costs a call and
    a log line per app and pass, not one per run. An app with no run waiting, or refused for
    what a run's detail does not tell (`SETUP_REFUSALS`, not in `holding`: its runs are read
    as any others), is asked about itself instead (`_ask_about_app`), so its mark goes away once
    Dify accepts it, whoever fixed it."""
    if not refused:
        return []
    waiting = dict(
        due.filter(app_id__in=holding)
        .order_by()
        .values("app_id")
        .annotate(n=Count("pk"))
        .values_list("app_id", "n")
    )
    probes = []
    for app in refused.values():
        count = waiting.get(app.pk, 0)
        next_probe = app.next_refusal_probe()
        if next_probe is not None and now < next_probe:
            counts["held"] += count
            if count:
                logger.log(
                    _level(app),
                    "reconcile_runs: app %s: Dify refuses it since %s (%s); %d run(s) wait, "
                    "next try after %s",
                    app,
                    app.refused_at.isoformat() if app.refused_at else "?",
                    app.refusal,
                    count,
                    next_probe.isoformat(),
                )
            continue
        probe = due.filter(app_id=app.pk).first() if count else None
        if probe is not None:
            counts["held"] += count - 1
            probes.append(probe)
        elif count or app.is_active:
            counts["held"] += count
            _ask_about_app(app, now)
    return probes


def _ask_about_app(app: DifyApp, now: dt.datetime) -> None:
    """Ask Dify about a refused app itself, with a call that can tell whether what it refused
    is over. /info answers for an app with nothing published and for an app of any kind: an app
    Dify called unavailable is asked for its parameters (refused until a workflow is
    published), one it called of another kind must be named of its kind by /info. For a
    refused key any answer will do."""
    if app.refusal_code == APP_NOT_FOUND_REFUSAL:
        # 404s for the whole app: over once the key sees the app's runs again.
        check = check_app(app, source="reconcile")
        if check.refused:
            app.note_probed(now)
            logger.log(
                _level(app),
                "reconcile_runs: app %s: Dify still refuses it (since %s): %s; next try after %s",
                app,
                app.refused_at.isoformat() if app.refused_at else "?",
                app.refusal,
                (app.next_refusal_probe() or now).isoformat(),
            )
        elif not check.works:
            logger.log(
                _level(app),
                "reconcile_runs: app %s: asked Dify again about it: %s",
                app,
                check.detail,
            )
        return
    client = DifyClient.for_app(app)
    mode = None
    published = False
    try:
        if app.refusal_code == UNPUBLISHED_REFUSAL:
            client.get_parameters()
            published = True
        else:
            mode = client.get_info().get("mode")
    except DifyError as exc:
        _probe_failed(app, exc, now)
        return
    kind = app.is_dify_mode(mode)
    if app.refusal_code in KIND_REFUSALS and not kind:
        app.note_probed(now)
        logger.log(
            _level(app),
            "reconcile_runs: app %s: Dify still refuses it (since %s): %s; its /info names the "
            "mode %r; next try after %s",
            app,
            app.refused_at.isoformat() if app.refused_at else "?",
            app.refusal,
            mode,
            (app.next_refusal_probe() or now).isoformat(),
        )
        return
    app.note_accepted("reconcile", kind=kind, published=published)


def _probe_failed(app: DifyApp, exc: DifyError, now: dt.datetime) -> None:
    """Dify still refuses the app: the next probe waits longer. Any other failure (Dify
    unreachable, busy) says nothing about the app: the next pass asks again."""
    if isinstance(exc, DifyStatusError) and exc.refuses_app:
        app.note_refused(exc, "reconcile")
        app.note_probed(now)
        logger.log(
            _level(app),
            "reconcile_runs: app %s: Dify still refuses it (since %s): %s; next try after %s",
            app,
            app.refused_at.isoformat() if app.refused_at else "?",
            exc,
            (app.next_refusal_probe() or now).isoformat(),
        )
        return
    logger.log(_level(app), "reconcile_runs: app %s: asked Dify again about it: %s", app, exc)
    if cannot_reach(exc):
        app.note_unreachable(exc, "reconcile")
