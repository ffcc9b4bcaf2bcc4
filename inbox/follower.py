"""The follower: reads the event streams of every active run, concurrently, in one asyncio loop.

    python manage.py follow            # as many processes as you like, side by side

Work comes from the database. A run with `follow_wanted` set needs its stream read; a follower
takes a *lease* on it (`lease_owner`, `lease_expires_at`, renewed while it reads), so two
followers never read the same run. Leases are taken with `SELECT ... FOR UPDATE SKIP LOCKED` on
PostgreSQL and a conditional UPDATE on SQLite (whose writers are serialised anyway). A follower
that dies leaves an expired lease and `follow_wanted` still set: another one takes the run over.

Each run is read with `GET /workflow/{id}/events?include_state_snapshot=true&continue_on_pause=true`:

- the snapshot replays what happened so far, so nothing is missed between two streams (a decision
  delivered just before we opened it, a dropped connection); replays are idempotent;
- `continue_on_pause` keeps the stream open across a pause that has no form waiting for a person.
  That is the gap between an accepted submit and Dify's resume task, where the snapshot still
  says `paused` (with the submitted form gone from its reasons): without the flag Dify would
  close the stream right there and we would miss the resume. With it Dify only closes on its
  idle timeout, even after `workflow_finished` (CONTRACT D13), so we close the stream ourselves:
  at `workflow_finished`, at an `error`, and at a pause where a form does wait for a person,
  because we hold no connection while a human thinks. Delivering the decision calls
  `Run.request_follow`, which brings the run back here.
- A stream that ends early (a drop, Dify's 300 s idle close, D14) is reopened with backoff; the
  budget of attempts is reset whenever a stream moved the record on. When it runs out the run
  is marked `needs_reconcile` and the periodic reconcile asks Dify's run detail; so is a run
  whose stream Dify refuses (a 400, 401, 403). When the refusal is about the app (a rotated key,
  a disabled app: `DifyStatusError.refuses_app`) the app is marked refused, and the reconcile
  tries one run of it now and then instead of handing every run back; a stream that opens
  clears the mark. Only a 404 marks its events unavailable. The reconcile hands a run given up
  on back at its next pass the first time, then after 2, 4, 8... minutes (30 at most) for each
  give-up in a row (`Run.give_ups`, `refollow_delay`), while it still asks the run's detail as
  often as any run's: a run whose stream keeps failing costs Dify a few streams an hour. It is
  handed back sooner when its detail shows news (`tasks._reconcile_runs`), and when a stream of
  its app opens after Dify failed the app's streams (`DifyApp.note_reached`). A give-up is logged
  per run at INFO and per app at WARNING, at most once per GIVE_UP_REPORT_SECONDS.
- A run whose app's API key this process cannot decrypt (started without the key another process
  stored it with, mid-rotation) is let go at once for a follower that can, and the app marked
  (`DifyApp.key_unreadable_since`, shown on its pages, the dashboard and /healthz); the other
  apps' runs are followed as usual. The app's runs are taken again after KEY_RETRY_SECONDS, or
  at once when the app is saved again (`Follower._keys_unreadable`).

Database work runs in a small thread pool (Django's ORM is synchronous); the loop itself only
waits on sockets. Leases are taken and renewed on one more thread, of their own: a renewal never
waits behind a backlog of batches, so only a slow or unreachable database stops a stream for want
of one. A `human_input_required` is captured with its full definition in one transaction: GET form
first (asynchronously, outside any transaction), then the insert, so a reviewer never sees a form
whose select options are not resolved yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.conf import settings
from django.db import close_old_connections, connection, connections, transaction
from django.db.models import Q
from django.db.models.functions import Now

from inbox import capture
from inbox.crypto import DecryptionError
from inbox.dify.client import AsyncDifyClient, redact_url
from inbox.dify.errors import (
    DifyError,
    DifyStatusError,
    DifyStreamError,
    FormAlreadySubmitted,
    FormExpired,
    FormNotFound,
    NotFound,
    cannot_reach,
    redact,
)
from inbox.dify.types import FormDefinition, StreamEvent
from inbox.models import DifyApp, Form, Run, refollow_delay

logger = logging.getLogger(__name__)
T = TypeVar("T")
# Open streams per HTTP connection pool.
STREAMS_PER_CLIENT = 50
# Events applied the moment they arrive; the others may wait a little (see `_read_stream`).
URGENT_EVENTS = frozenset(
    {
        "human_input_required",
        "workflow_paused",
        "human_input_form_filled",
        "human_input_form_timeout",
        "workflow_finished",
        "message_end",
        "error",
    }
)


@dataclass
class FollowerSettings:
    max_streams: int = 1000
    poll_seconds: float = 0.25
    lease_seconds: float = 60.0
    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    # How long a stream stays open across a pause that has no form waiting for a person
    # (Dify's resume task normally starts within a second of the submit).
    stale_pause_seconds: float = 60.0
    # How long to keep reading after a pause when one of our decisions was just delivered and
    # Dify has not yet shown its `human_input_form_filled` (parallel forms: the pause that
    # follows can come before it).
    settle_seconds: float = 10.0
    db_threads: int = 8
    # How long progress events (node steps, text chunks) may wait to be applied together
    # (see `_read_stream`).
    hold_seconds: float = 0.5
    # Apply a batch that announces forms while their GET form is in flight, and wait for it
    # (at most `definition_wait_seconds`) before the commit; see `capture.DefinitionsHandoff`.
    fetch_while_applying: bool = True
    definition_wait_seconds: float = 2.0

    @classmethod
    def from_settings(cls, **overrides: Any) -> FollowerSettings:
        values: dict[str, Any] = {
            "max_streams": settings.INBOX_FOLLOWER_MAX_STREAMS,
            "poll_seconds": settings.INBOX_FOLLOWER_POLL_SECONDS,
            "lease_seconds": settings.INBOX_FOLLOWER_LEASE_SECONDS,
            "max_attempts": settings.INBOX_FOLLOWER_MAX_ATTEMPTS,
            "backoff_base": settings.INBOX_FOLLOWER_BACKOFF_SECONDS,
            "stale_pause_seconds": settings.INBOX_FOLLOWER_STALE_PAUSE_SECONDS,
            "settle_seconds": settings.INBOX_FOLLOWER_SETTLE_SECONDS,
            "db_threads": settings.INBOX_FOLLOWER_DB_THREADS,
        }
        values.update(overrides)
        return cls(**values)


def default_owner() -> str:
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# --- leases (synchronous; run in the follower's database threads) ---


@dataclass
class Claim:
    """A run this follower holds the lease of, with what it needs to read the stream."""

    pk: int
    seq: int
    # Fetch again the definitions of the forms we know when they are next listed (see
    # `Run.request_follow` and `_wanted_definitions`); kept until a stream has read the pause or
    # end that lists them, so a stream that failed or dropped before that does not lose it.
    refresh: bool
    workflow_run_id: str
    dify_user: str
    app: DifyApp
    # Follows of the run given up on in a row before this one (`Run.give_ups`).
    give_ups: int = 0
    # Forms of the run whose definition already came from GET form...
    known: set[str] = field(default_factory=set)
    # ... and those fetched again since the current stream opened (a refresh fetches each once).
    fetched_this_stream: set[str] = field(default_factory=set)
    # A stream of the run opened during this lease: Dify shows us its events.
    opened: bool = False
    # What the current stream has shown so far (its order, how far a replay has got).
    stream: capture.StreamState = field(default_factory=capture.StreamState)

    def answered(self, definitions: dict[str, capture.DefinitionResult]) -> None:
        """Note what GET form answered (a definition, or Dify's refusal) for these forms."""
        self.known.update(k for k, v in definitions.items() if isinstance(v, FormDefinition))
        self.fetched_this_stream.update(definitions)


# Leases are written and compared by the database's clock (`Now()`), never by a host's own: a
# follower whose clock runs behind would write leases that others take for expired at once,
# and two followers would read the run.
def _claimable() -> Any:
    return (
        Run.objects.filter(follow_wanted=True)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=Now()))
        .exclude(workflow_run_id="")
        .filter(Run.followable())
    )


# A run that has wanted following this long with no follower taking it: none is running (a live
# one takes a run within a second, and a dead one's leases lapse after INBOX_FOLLOWER_LEASE_SECONDS).
UNFOLLOWED_AFTER = dt.timedelta(minutes=2)


def unfollowed() -> tuple[int, dt.datetime | None]:
    """How many runs want following and have waited UNFOLLOWED_AFTER for a follower, and since
    when the oldest of them waits: more than none means no follower is running. Not the runs
    of an app a running follower cannot decrypt the API key of (`waiting_for_a_key`): a
    follower is running, and they wait for the key."""
    from django.db.models import Count, Min
    from django.db.models.functions import Coalesce
    from django.utils import timezone

    cutoff = timezone.now() - UNFOLLOWED_AFTER
    waiting = (
        _claimable()
        .filter(
            Q(lease_expires_at__lt=cutoff) | Q(lease_expires_at__isnull=True, updated_at__lt=cutoff)
        )
        .exclude(DifyApp.key_unreadable_q("app__"))
    )
    found = waiting.aggregate(
        count=Count("pk"), since=Min(Coalesce("lease_expires_at", "updated_at"))
    )
    return found["count"], found["since"]


def waiting_for_a_key() -> list[tuple[DifyApp, int]]:
    """The apps a running follower cannot decrypt the API key of (`DifyApp.key_unreadable_now`),
    each with how many of its runs want following: they wait for a follower with the key."""
    from django.db.models import Count

    apps = DifyApp.objects.filter(DifyApp.key_unreadable_q()).annotate(
        waiting=Count(
            "runs",
            filter=Q(runs__follow_wanted=True) & ~Q(runs__status__in=Run.FINAL_STATUSES),
        )
    )
    return [(app, app.waiting) for app in apps]


# A follower that cannot decrypt an app's API key lets the app's runs go at once (for a follower
# that can), and takes them again this long after, or at once when the app is saved again (a
# key entered again): the key is looked at again, not every poll.
KEY_RETRY_SECONDS = 30.0


class Taken(list[Claim]):
    """What `take_leases` took, and the runs it let go because this process cannot decrypt
    their app's API key: app pk -> (the app, how many of its runs)."""

    def __init__(self, claims: Iterable[Claim] = ()) -> None:
        super().__init__(claims)
        self.unreadable: dict[int, tuple[DifyApp, int]] = {}


def take_leases(
    owner: str,
    limit: int,
    seconds: float,
    skip_apps: dict[int, dt.datetime] | None = None,
) -> Taken:
    """Lease up to `limit` runs that want following and nobody (alive) follows.

    `follow_snapshot` stays set while the run is read: it is cleared when the lease is given
    back done, so a follower that dies before its stream replayed the forms leaves the wish to
    the next one.

    A run whose app's API key this process cannot decrypt is let go at once (for a follower
    that can) and the app marked (`DifyApp.note_key_unreadable`), in `Taken.unreadable`; the
    others are taken all the same. `skip_apps` (app pk -> its `updated_at` then): apps whose
    runs are not taken, until the app is saved again."""
    if limit <= 0:
        return Taken()
    claimable = _claimable()
    if skip_apps:
        skipped = Q()
        for app_pk, updated_at in skip_apps.items():
            skipped |= Q(app_id=app_pk, app__updated_at=updated_at)
        claimable = claimable.exclude(skipped)
    # A read first: most polls find nothing, and on SQLite a write transaction would block
    # every other writer for nothing.
    if not claimable.exists():
        return Taken()
    until = Now() + dt.timedelta(seconds=seconds)
    with transaction.atomic():
        if connection.features.has_select_for_update_skip_locked:
            rows = list(
                claimable.select_for_update(skip_locked=True, of=("self",))
                .order_by("updated_at")
                .values("pk", "follow_seq", "follow_snapshot", "give_ups")[:limit]
            )
            pks = [row["pk"] for row in rows]
            Run.objects.filter(pk__in=pks).update(lease_owner=owner, lease_expires_at=until)
        else:
            # SQLite: the transaction holds the database's write lock from its first statement
            # (transaction_mode IMMEDIATE), so nothing changes between this read and the update;
            # the conditional update says so again.
            rows = list(
                claimable.order_by("updated_at").values(
                    "pk", "follow_seq", "follow_snapshot", "give_ups"
                )[:limit]
            )
            taken = []
            for row in rows:
                if (
                    _claimable()
                    .filter(pk=row["pk"])
                    .update(lease_owner=owner, lease_expires_at=until)
                ):
                    taken.append(row)
            rows = taken
            pks = [row["pk"] for row in rows]
    if not rows:
        return Taken()
    result = Taken()
    try:
        runs = {
            r.pk: r
            for r in Run.objects.filter(pk__in=pks)
            .select_related("app")
            .only("pk", "workflow_run_id", "dify_user", "app")
        }
        # An app's API key this process has no key for (one started without the key another
        # process stored it with, mid-rotation): that app's runs are given back at once, for a
        # follower that can read it, and the others are followed.
        let_go: list[int] = []
        for run in runs.values():
            if run.app.api_key_sealed:
                let_go.append(run.pk)
                app, count = result.unreadable.get(run.app_id, (run.app, 0))
                result.unreadable[run.app_id] = (app, count + 1)
        if let_go:
            Run.objects.filter(pk__in=let_go, lease_owner=owner).update(
                lease_owner="", lease_expires_at=None
            )
            DifyApp.note_key_unreadable(result.unreadable, owner)
            for pk in let_go:
                del runs[pk]
        DifyApp.note_key_readable({run.app_id for run in runs.values()})
    except Exception:
        # The runs cannot be read here: given back at once, for a follower that can, rather
        # than held for the lease's time.
        Run.objects.filter(pk__in=pks, lease_owner=owner).update(lease_expires_at=None)
        raise
    known: dict[int, set[str]] = {}
    for run_pk, form_id in Form.objects.filter(
        run_id__in=pks, definition_fetched_at__isnull=False
    ).values_list("run_id", "form_id"):
        known.setdefault(run_pk, set()).add(form_id)
    result.extend(
        Claim(
            pk=row["pk"],
            seq=row["follow_seq"],
            refresh=row["follow_snapshot"],
            give_ups=row["give_ups"],
            workflow_run_id=runs[row["pk"]].workflow_run_id,
            dify_user=runs[row["pk"]].dify_user,
            app=runs[row["pk"]].app,
            known=known.get(row["pk"], set()),
        )
        for row in rows
        if row["pk"] in runs
    )
    return result


def renew_leases(owner: str, pks: list[int], seconds: float) -> set[int]:
    """Extend our leases; returns the runs still ours (a lease taken over while this process
    stalled past its expiry is no longer ours, and that run must not be read twice)."""
    if not pks:
        return set()
    until = Now() + dt.timedelta(seconds=seconds)
    Run.objects.filter(pk__in=pks, lease_owner=owner).update(lease_expires_at=until)
    return set(Run.objects.filter(pk__in=pks, lease_owner=owner).values_list("pk", flat=True))


def release_lease(owner: str, claim: Claim, outcome: str, attempts: int = 0) -> None:
    """Give the run back. `done`: it reached a pause that waits for a person, or its end.
    `gave_up`: the stream could not be read for now; the reconcile takes over and hands the
    run back later, after a wait that grows with each give-up in a row (`refollow_delay`).
    `gone`: Dify will not show this run's events (404); the reconcile follows it through its
    run detail. Anything else (shutdown, a lost lease): only the lease is dropped, so another
    follower takes it. `attempts`: the streams this follow opened, for the log."""
    mine = Run.objects.filter(pk=claim.pk, lease_owner=owner)
    cleared: dict[str, Any] = {"lease_owner": "", "lease_expires_at": None}
    if claim.opened:
        # A run once refused (a wrong Dify user, since put right) shows its events again: the
        # reconcile may hand it back to the follower again.
        cleared["events_unavailable"] = False
    if outcome in ("done", "gave_up", "gone"):
        # Compare-and-set on follow_seq: a request_follow made while we read keeps the run
        # wanted (and its refresh wish), and it is read once more. A run given up on without
        # its refresh gets one from the reconcile, which asks for a snapshot.
        final: dict[str, Any] = {
            **cleared,
            "follow_wanted": False,
            "follow_snapshot": False,
            "needs_reconcile": outcome != "done",
            "give_ups": 0,
            "refollow_after": None,
        }
        if outcome != "done":
            give_ups = min(claim.give_ups + 1, 1000)
            delay = refollow_delay(give_ups)
            # A run gone from the events endpoint is followed through its run detail: it is not
            # handed back to the follower, and has no wait.
            final.update(
                give_ups=give_ups,
                refollow_after=Now() + delay if outcome == "gave_up" else None,
            )
            if give_ups > 1 and outcome == "gave_up":
                # Per run, at INFO: the follower warns once per app and interval (`_gave_up`).
                logger.info(
                    "follower: run %s: given up on %d times in a row (%d stream(s) this time); "
                    "handed back in %d min",
                    claim.pk,
                    give_ups,
                    attempts,
                    delay.total_seconds() // 60,
                )
        if outcome == "gone":
            final["events_unavailable"] = True
        # A run that ended has nothing more to show: a request made while it was read (the
        # second of two parallel decisions delivered as the first one's follow ended it) is
        # not left wanting a follow for ever. Unless a decision of the run was delivered by
        # presumption and is still unsettled: that request asks for the evidence of whose
        # answer Dify took, which the stream just read may have shown before there was a
        # presumption to settle (the Human Input node's outputs, read while the decision was
        # still on its way), and which a stream read once more shows again where Dify replays
        # the run's log. That read ends the wish (`follow_seq` is then unchanged).
        ended = Q(status__in=Run.FINAL_STATUSES) & ~Run.evidence_awaited()
        if mine.filter(Q(follow_seq=claim.seq) | ended).update(**final):
            return
    mine.update(**cleared)


# --- the loop ---


@dataclass
class _End:
    """The reader's last word: the stream ended (cleanly or not)."""

    error: BaseException | None = None


@dataclass
class _GiveUps:
    """The runs of one app given up on since its last warning (`Follower._gave_up`)."""

    app: str
    runs: set[int] = field(default_factory=set)
    error: str = ""
    warned_at: float = -math.inf


@dataclass
class _KeyWait:
    """An app whose API key this follower cannot decrypt: its runs are not taken until
    `retry_at` (monotonic), or until the app is saved again (its `updated_at` changes)."""

    label: str
    updated_at: dt.datetime
    retry_at: float
    runs: int = 0


@dataclass
class StreamResult:
    # paused (a form waits for a person), finished, error (an `error` event), dropped (ended
    # early), stalled (a pause with nobody waiting never moved on), gone (Dify does not know
    # the run: 404), refused (Dify refuses the app for now: 400, 401, 403).
    kind: str
    progressed: bool = False
    detail: str = ""
    # The refusal, for `refused`; for `dropped`, what kept the stream from opening (a stream
    # that opened and then ended early reached Dify).
    error: DifyError | None = None


class Follower:
    def __init__(
        self, owner: str | None = None, config: FollowerSettings | None = None, **overrides: Any
    ) -> None:
        self.owner = owner or default_owner()
        self.config = config or FollowerSettings.from_settings(**overrides)
        self.executor = ThreadPoolExecutor(
            max_workers=self.config.db_threads, thread_name_prefix="follower-db"
        )
        # Leases are taken and renewed on a thread (and connection) of their own: in the pool
        # above, a renewal would wait behind every batch queued before it, and under a backlog
        # longer than the lease (a follower starting with many runs to replay, a slow database)
        # each run's stream would be stopped for want of a renewal, then taken and opened again.
        self.lease_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="follower-lease")
        # Streams are spread over several HTTP clients per app (see AsyncDifyClient.for_app).
        self.http_shards = max(1, math.ceil(self.config.max_streams / STREAMS_PER_CLIENT))
        self.tasks: dict[int, asyncio.Task[None]] = {}
        # When each run's lease may run out, by this process's clock, counted from the moment
        # the take or renewal that set it was sent: a stream is stopped before then unless a
        # renewal came back, so a slow renewal never leaves two followers reading a run.
        self.held_until: dict[int, float] = {}
        self.side_tasks: set[asyncio.Task[Any]] = set()
        # Batches waiting in a database thread for their GET form (see `_apply_while_fetching`).
        self.waiting_batches = 0
        self.stats = {"claimed": 0, "events": 0, "batches": 0, "reconnects": 0, "forms": 0}
        # The runs given up on per app since its last warning, and when that was (monotonic):
        # one WARNING per app and `GIVE_UP_REPORT_SECONDS`, however many runs (`_gave_up`).
        self.given_up: dict[int, _GiveUps] = {}
        # The apps whose API key this process cannot decrypt, by pk (`_keys_unreadable`).
        self.key_waits: dict[int, _KeyWait] = {}
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- database calls, off the loop ---

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, functools.partial(_db_call, fn, *args, **kwargs)
        )

    async def lease_db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`db` on the lease thread: taking and renewing leases never queue behind batches."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.lease_executor, functools.partial(_db_call, fn, *args, **kwargs)
        )

    # --- lifecycle ---

    def stop(self) -> None:
        """Ask the loop to stop (thread-safe)."""
        if self.loop is not None and self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)

    def wake(self) -> None:
        """Poll for work now instead of at the next tick (thread-safe)."""
        if self.loop is not None and self._wake is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._wake.set)

    # A database that is down: tried again after a pause that doubles up to this, with one
    # log line per try and the traceback only at the first failure and every ten minutes.
    LEASE_BACKOFF_MAX = 30.0
    LEASE_TRACEBACK_EVERY = 600.0

    _lease_failures = 0
    _lease_retry_at = 0.0
    _lease_traceback_at = 0.0

    def _lease_failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self._lease_failures += 1
        pause = min(
            self.config.poll_seconds * 2 ** min(self._lease_failures, 16), self.LEASE_BACKOFF_MAX
        )
        self._lease_retry_at = now + pause
        if isinstance(exc, DecryptionError):
            # A known condition, said in one line: its traceback would add nothing.
            self._lease_traceback_at = now + self.LEASE_TRACEBACK_EVERY
        if self._lease_failures == 1 or now >= self._lease_traceback_at:
            self._lease_traceback_at = now + self.LEASE_TRACEBACK_EVERY
            logger.exception("follower %s: could not take leases", self.owner)
        else:
            logger.warning(
                "follower %s: could not take leases (%d tries; next in %.1f s): %s",
                self.owner,
                self._lease_failures,
                pause,
                f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
            )

    def _skipped_apps(self) -> dict[int, dt.datetime]:
        """The apps whose runs are not taken now: their key was unreadable a moment ago."""
        now = time.monotonic()
        return {pk: w.updated_at for pk, w in self.key_waits.items() if now < w.retry_at}

    def _keys_unreadable(self, taken: Taken, skipped: dict[int, dt.datetime]) -> None:
        """After a take: the apps whose key this process cannot decrypt wait KEY_RETRY_SECONDS
        (their runs were let go for a follower that can); said once per app in one line, then
        at INFO at each try. An app whose runs were taken, its key read, is said back."""
        now = time.monotonic()
        for app_pk, (app, runs) in taken.unreadable.items():
            wait = self.key_waits.get(app_pk)
            self.key_waits[app_pk] = _KeyWait(
                app.label, app.updated_at, now + KEY_RETRY_SECONDS, runs
            )
            if wait is None:
                logger.warning(
                    "follower %s: app %s: its API key cannot be decrypted with this process's "
                    "INBOX_ENCRYPTION_KEYS: %d run(s) let go for a follower that can read it "
                    "(tried again in %d s, or at once when the key is entered again); restart "
                    "this follower with the key the API key was stored with",
                    self.owner,
                    app.label,
                    runs,
                    KEY_RETRY_SECONDS,
                )
            else:
                logger.info(
                    "follower %s: app %s: its API key still cannot be decrypted: %d run(s) wait",
                    self.owner,
                    app.label,
                    runs,
                )
        followed = {claim.app.pk for claim in taken}
        for app_pk in list(self.key_waits):
            if app_pk in taken.unreadable:
                continue
            if app_pk in followed:
                logger.info(
                    "follower %s: app %s: its API key can be read again: its runs are followed",
                    self.owner,
                    self.key_waits[app_pk].label,
                )
                del self.key_waits[app_pk]
            elif app_pk not in skipped:
                # Looked at again, and none of its runs wanted following.
                del self.key_waits[app_pk]

    # At most one warning per app in this long about the streams given up on.
    GIVE_UP_REPORT_SECONDS = 60.0

    def _gave_up(self, claim: Claim, detail: str) -> None:
        """A run's stream given up on: said per run at INFO, and per app at WARNING at once if
        the app had no such warning in the last GIVE_UP_REPORT_SECONDS, otherwise with the
        others at the interval's end (`report_give_ups`): an outage gives one line per app,
        not one per run."""
        now = time.monotonic()
        report = self.given_up.setdefault(claim.app.pk, _GiveUps(str(claim.app)))
        report.runs.add(claim.pk)
        report.error = detail
        if now >= report.warned_at + self.GIVE_UP_REPORT_SECONDS:
            self._warn_give_ups(report, now)

    def report_give_ups(self, *, everything: bool = False) -> None:
        """Warn about the apps whose interval ended with runs given up on since their last
        warning (`everything`: all of them, at shutdown)."""
        now = time.monotonic()
        for report in self.given_up.values():
            if report.runs and (
                everything or now >= report.warned_at + self.GIVE_UP_REPORT_SECONDS
            ):
                self._warn_give_ups(report, now)

    def _warn_give_ups(self, report: _GiveUps, now: float) -> None:
        logger.warning(
            "follower: app %s: %d run stream(s) failing: %s; the reconcile takes over (runs %s)",
            report.app,
            len(report.runs),
            report.error,
            ", ".join(str(pk) for pk in sorted(report.runs)[:20])
            + (" …" if len(report.runs) > 20 else ""),
        )
        report.runs.clear()
        report.warned_at = now

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        logger.info("follower %s: started (up to %d streams)", self.owner, self.config.max_streams)
        renew_every = max(self.config.lease_seconds / 3.0, 0.05)
        last_renew = time.monotonic()
        watch = asyncio.create_task(self._watch_leases(), name="leases")
        self.side_tasks.add(watch)
        try:
            while not self._stop.is_set():
                free = self.config.max_streams - len(self.tasks)
                if free > 0 and time.monotonic() >= self._lease_retry_at:
                    asked = time.monotonic()
                    skipped = self._skipped_apps()
                    try:
                        claims = await self.lease_db(
                            take_leases, self.owner, free, self.config.lease_seconds, skipped
                        )
                    except Exception as exc:
                        self._lease_failed(exc)
                        claims = Taken()
                    else:
                        self._keys_unreadable(claims, skipped)
                        if self._lease_failures:
                            logger.info(
                                "follower %s: takes leases again, after %d failed tries",
                                self.owner,
                                self._lease_failures,
                            )
                        self._lease_failures = 0
                    for claim in claims:
                        self.stats["claimed"] += 1
                        self.held_until[claim.pk] = asked + self._lease_margin_seconds()
                        task = asyncio.create_task(self._follow(claim), name=f"run-{claim.pk}")
                        self.tasks[claim.pk] = task
                        task.add_done_callback(functools.partial(self._forget, claim.pk))
                if time.monotonic() - last_renew >= renew_every and self.tasks:
                    last_renew = time.monotonic()
                    await self._renew()
                self.report_give_ups()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        _first(self._stop.wait(), self._wake.wait()), self.config.poll_seconds
                    )
        finally:
            await self._shutdown()

    def _forget(self, pk: int, task: asyncio.Task[None]) -> None:
        if self.tasks.get(pk) is task:
            del self.tasks[pk]
            self.held_until.pop(pk, None)

    def _lease_margin_seconds(self) -> float:
        """How long after a take or renewal is sent its lease is counted on: its length, less a
        margin for this loop's own delays (a fifth of it, at most 5 s)."""
        lease = self.config.lease_seconds
        return lease - min(lease / 5.0, 5.0)

    async def _watch_leases(self) -> None:
        """`_stop_lapsing` several times a second, beside the loop (which waits on renewals)."""
        every = min(self.config.poll_seconds, 0.5)
        while True:
            self._stop_lapsing()
            await asyncio.sleep(every)

    def _stop_lapsing(self) -> None:
        """Stop reading runs whose lease no renewal has extended in time (the database slow or
        out of reach): another follower may take them as soon as the lease runs out, and the
        run is read by one follower at a time."""
        now = time.monotonic()
        for pk, until in list(self.held_until.items()):
            if now < until:
                continue
            del self.held_until[pk]
            task = self.tasks.get(pk)
            if task is not None and not task.done():
                logger.warning(
                    "follower %s: the lease of run %s was not renewed in time; its stream stops "
                    "so that no other follower reads it at the same time",
                    self.owner,
                    pk,
                )
                task.cancel()

    async def _renew(self) -> None:
        pks = list(self.tasks)
        asked = time.monotonic()
        try:
            still_mine = await self.lease_db(
                renew_leases, self.owner, pks, self.config.lease_seconds
            )
        except Exception:
            logger.exception("follower %s: could not renew leases", self.owner)
            return
        for pk in still_mine:
            if pk in self.tasks and pk in self.held_until:
                self.held_until[pk] = asked + self._lease_margin_seconds()
        for pk in set(pks) - still_mine:
            task = self.tasks.get(pk)
            if task is not None:
                logger.warning("follower %s: lost the lease of run %s", self.owner, pk)
                task.cancel()

    async def _shutdown(self) -> None:
        tasks = list(self.tasks.values()) + list(self.side_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.report_give_ups(everything=True)
        with contextlib.suppress(Exception):
            await AsyncDifyClient.close_cached()
        await asyncio.get_running_loop().run_in_executor(None, self._close_db_threads)
        logger.info(
            "follower %s: stopped (%s)",
            self.owner,
            ", ".join(f"{name} {count}" for name, count in self.stats.items()),
        )

    def _close_db_threads(self) -> None:
        """Close each pool thread's database connection, from that thread (Django connections
        belong to their thread): one job per thread, held at a barrier so no thread takes two;
        then the lease thread's."""
        n = self.config.db_threads
        barrier = threading.Barrier(n)

        def close() -> None:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=5)
            connections.close_all()

        for future in [self.executor.submit(close) for _ in range(n)]:
            with contextlib.suppress(Exception):
                future.result(timeout=10)
        self.executor.shutdown(wait=True)
        with contextlib.suppress(Exception):
            self.lease_executor.submit(connections.close_all).result(timeout=10)
        self.lease_executor.shutdown(wait=True)

    # --- one run ---

    async def _follow(self, claim: Claim) -> None:
        outcome, attempts = "released", 0
        try:
            outcome, attempts = await self._follow_run(claim)
        except asyncio.CancelledError:
            outcome = "released"
            raise
        except Exception:
            logger.exception("follower: run %s failed", claim.pk)
            outcome = "gave_up"
        finally:
            try:
                await asyncio.shield(self.db(release_lease, self.owner, claim, outcome, attempts))
            except Exception:
                logger.exception("follower: could not release run %s", claim.pk)

    async def _follow_run(self, claim: Claim) -> tuple[str, int]:
        client = AsyncDifyClient.for_app(claim.app, shard=claim.pk % self.http_shards)
        attempts = 0
        while True:
            result = await self._read_stream(claim, client)
            if result.kind in ("paused", "finished"):
                return "done", 0
            if result.kind == "gone":
                logger.warning(
                    "follower: run %s: Dify refuses its events: %s", claim.pk, result.detail
                )
                return "gone", attempts
            if result.kind == "refused":
                if isinstance(result.error, DifyStatusError) and result.error.refuses_app:
                    await self.db(claim.app.note_refused, result.error, "follower")
                logger.info(
                    "follower: run %s: Dify refuses its events for now (%s); the reconcile "
                    "takes over",
                    claim.pk,
                    result.detail,
                )
                self._gave_up(claim, result.detail)
                return "gave_up", attempts + 1
            if result.kind == "error" and await self._settle_from_detail(claim, client):
                return "done", 0
            attempts = 1 if result.progressed else attempts + 1
            if attempts > self.config.max_attempts:
                logger.info(
                    "follower: run %s: giving up after %d attempts (%s); the reconcile takes over",
                    claim.pk,
                    attempts - 1,
                    result.detail or result.kind,
                )
                if result.error is not None and cannot_reach(result.error):
                    # Dify not answering the app's streams: shown with the app until one opens.
                    await self.db(claim.app.note_unreachable, result.error, "follower")
                self._gave_up(claim, result.detail or result.kind)
                return "gave_up", attempts
            self.stats["reconnects"] += 1
            delay = min(self.config.backoff_cap, self.config.backoff_base * 2 ** (attempts - 1))
            await asyncio.sleep(delay * (0.75 + 0.25 * random.random()))

    async def _settle_from_detail(self, claim: Claim, client: AsyncDifyClient) -> bool:
        """After an `error` event: Dify's run detail says whether the run really ended."""
        try:
            detail = await client.get_run(claim.workflow_run_id)
        except DifyError as exc:
            logger.info("follower: run %s: no run detail: %s", claim.pk, exc)
            return False
        if not detail.is_finished:
            return False
        # The open forms are asked about here, on the event loop: a database thread would wait
        # on Dify for them (during an outage, while other runs' batches and leases queue).
        tokens = await self.db(capture.open_form_tokens, claim.pk)
        checked = await self._get_forms(claim, client, tokens, failures=True)
        await self.db(capture.apply_run_detail, claim.pk, detail, checked=checked)
        return True

    async def _read_stream(self, claim: Claim, client: AsyncDifyClient) -> StreamResult:
        claim.fetched_this_stream.clear()
        claim.stream = capture.StreamState()
        stream = client.stream_events(
            claim.workflow_run_id,
            user=claim.dify_user,
            include_state_snapshot=True,
            continue_on_pause=True,
        )
        try:
            await stream.open()
        except DifyStatusError as exc:
            await stream.close()
            # 404: another user's run, a console run, or one this key cannot see. Retrying
            # will not change that.
            if isinstance(exc, NotFound):
                return StreamResult("gone", detail=str(exc))
            # 401, 403, 400: a rotated key, a disabled app. Retrying now fails the same way,
            # but it is about the app, not the run, and ends when someone fixes it: the
            # reconcile tries again later. 5xx and 429 are not permanent: reconnect.
            if exc.permanent:
                return StreamResult("refused", detail=str(exc), error=exc)
            return StreamResult("dropped", detail=str(exc), error=exc)
        except DifyError as exc:
            await stream.close()
            return StreamResult("dropped", detail=str(exc), error=exc)
        claim.opened = True
        if claim.app.contact_failed_at is not None:
            # Dify shows a stream of the app again: a contact failure on record is over, and
            # the app's runs given up on meanwhile are handed back now (`note_reached`). As
            # loaded with the lease, so an app in good health costs no query here.
            await self.db(claim.app.note_reached, "follower")
        if claim.app.refused_at is not None:
            # Dify takes the key again, and it sees this app's runs (all a stream tells: not the
            # app's kind, nor whether anything is published); read from the app as loaded with
            # the lease, so an app in good health costs no query here.
            await self.db(claim.app.note_accepted, "follower", runs=True)
        queue: asyncio.Queue[StreamEvent | _End] = asyncio.Queue()

        async def read() -> None:
            try:
                async for event in stream:
                    queue.put_nowait(event)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # handed to the applier below
                queue.put_nowait(_End(exc))
            else:
                queue.put_nowait(_End())

        reader = asyncio.create_task(read(), name=f"read-{claim.pk}")
        progressed = False
        # Set while the run sits in a pause that nobody waits at: then we keep reading for a
        # bounded time only.
        wait_until: float | None = None
        settle_only = False
        # Progress events (node steps; an LLM's text chunks, dozens a second per run) only add
        # to the run's timeline: they are held for up to `hold_seconds` and applied together
        # with what follows, so that a transaction per event does not crowd out the events
        # that matter. Those (a form, a pause, a fill, the end, an error) are applied the moment
        # they arrive, with whatever was held before them.
        held: list[StreamEvent] = []
        flush_at: float | None = None
        try:
            while True:
                deadlines = [d for d in (wait_until, flush_at) if d is not None]
                timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
                batch: list[StreamEvent | _End] = []
                timed_out = False
                try:
                    batch.append(await asyncio.wait_for(queue.get(), timeout))
                except TimeoutError:
                    timed_out = True
                    if not held:
                        if settle_only:
                            return StreamResult("paused", progressed)
                        return StreamResult("stalled", progressed, "a pause with no form waiting")
                while not queue.empty():
                    batch.append(queue.get_nowait())
                events = held + [e for e in batch if isinstance(e, StreamEvent)]
                end = next((e for e in batch if isinstance(e, _End)), None)
                if (
                    end is not None
                    and isinstance(end.error, DifyStreamError)
                    and end.error.event is not None
                ):
                    # The stream raises Dify's `error` event rather than handing it out: it is
                    # recorded on the run like any other event before the stream ends.
                    events.append(end.error.event)
                due = timed_out or (flush_at is not None and time.monotonic() >= flush_at)
                if end is None and not due and all(e.event not in URGENT_EVENTS for e in events):
                    held = events
                    if flush_at is None:
                        flush_at = time.monotonic() + self.config.hold_seconds
                    continue
                held, flush_at = [], None
                if events:
                    applied = await self._apply(claim, client, events)
                    progressed = progressed or applied.changed
                    if applied.finished:
                        return StreamResult("finished", progressed)
                    if applied.paused:
                        if applied.awaiting_human and not applied.settling:
                            return StreamResult("paused", progressed)
                        settle_only = applied.awaiting_human
                        if wait_until is None:
                            wait_until = time.monotonic() + (
                                self.config.settle_seconds
                                if settle_only
                                else self.config.stale_pause_seconds
                            )
                    elif any(e.event not in capture.CHUNK_EVENTS for e in events):
                        wait_until = None
                        settle_only = False
                if end is not None:
                    if isinstance(end.error, DifyStreamError):
                        return StreamResult("error", progressed, str(end.error))
                    if end.error is not None:
                        return StreamResult("dropped", progressed, repr(end.error))
                    # The body ended without an end event: a drop or Dify's idle close.
                    return StreamResult("dropped", progressed, "the stream ended early")
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            await stream.close()

    async def _apply(
        self, claim: Claim, client: AsyncDifyClient, events: list[StreamEvent]
    ) -> capture.Applied:
        wanted = self._wanted_definitions(claim, events)
        raws = [e.raw for e in events]
        if any(e.event == "workflow_finished" for e in events):
            # The end closes the forms still open here; GET form says which were answered in
            # Dify (a stream opened after the end carries no fills). A GET that got no answer
            # is passed on too: that form is left to the reconcile, not closed on a guess.
            wanted = {**await self.db(capture.open_form_tokens, claim.pk), **wanted}
            definitions = await self._get_forms(claim, client, wanted, failures=True)
            applied = await self.db(
                capture.apply_events,
                Run(pk=claim.pk),
                raws,
                definitions=definitions,
                stream=claim.stream,
            )
        elif wanted and self._may_fetch_while_applying():
            applied, definitions = await self._apply_while_fetching(claim, client, raws, wanted)
        else:
            definitions = await self._get_forms(claim, client, wanted)
            applied = await self.db(
                capture.apply_events,
                Run(pk=claim.pk),
                raws,
                definitions=definitions,
                stream=claim.stream,
            )
        self.stats["events"] += len(events)
        self.stats["batches"] += 1
        self.stats["forms"] += len(applied.forms_created)
        claim.answered(definitions)
        if applied.unlisted:
            # Settled in Dify while no stream of ours was open: GET form says how.
            for form_pk, result in (await self._get_forms_by_pk(client, applied.unlisted)).items():
                if isinstance(result, FormAlreadySubmitted | FormExpired):
                    await self.db(capture.store_definition, form_pk, result)
        if applied.needs_definition:
            task = asyncio.create_task(
                self._retry_definitions(client, dict(applied.needs_definition))
            )
            self.side_tasks.add(task)
            task.add_done_callback(self.side_tasks.discard)
        return applied

    def _may_fetch_while_applying(self) -> bool:
        """Whether a batch may wait in its transaction for the GET forms made meanwhile
        (`capture.DefinitionsHandoff`): on PostgreSQL (SQLite would hold its one write lock
        for the wait), and while at least half of the database threads stay free for other
        runs' batches."""
        return (
            self.config.fetch_while_applying
            and connection.vendor == "postgresql"
            and self.waiting_batches < max(1, self.config.db_threads // 2)
        )

    async def _apply_while_fetching(
        self,
        claim: Claim,
        client: AsyncDifyClient,
        raws: list[dict[str, Any]],
        wanted: dict[str, str],
    ) -> tuple[capture.Applied, dict[str, capture.DefinitionResult]]:
        handoff = capture.DefinitionsHandoff(wanted, timeout=self.config.definition_wait_seconds)

        async def fetch() -> None:
            results: dict[str, capture.DefinitionResult] = {}
            try:
                results = await self._get_forms(claim, client, wanted)
            finally:
                # Always answered, even when cancelled: the database thread waits for it.
                handoff.give(results)

        fetching = asyncio.create_task(fetch(), name=f"get-forms-{claim.pk}")
        self.waiting_batches += 1
        try:
            applied = await self.db(
                capture.apply_events, Run(pk=claim.pk), raws, handoff=handoff, stream=claim.stream
            )
        finally:
            self.waiting_batches -= 1
            # Still running only when the batch gave up waiting or failed: its answer would
            # be applied by nobody (the forms' definitions are fetched again later).
            fetching.cancel()
        return applied, handoff.applied or {}

    def _wanted_definitions(self, claim: Claim, events: list[StreamEvent]) -> dict[str, str]:
        """form_id -> token for every form the batch announces that we have no definition of
        yet (GET form, concurrently). Dify's own refusals (412, 404) are passed on; a connection
        problem leaves the form to be captured from the event and fetched again later.

        With `claim.refresh`, forms we know are fetched again too, once each (an announcement
        and its pause reason may come in two batches), up to the pause or end that lists them.
        A fill or a timeout sets it again: the run moved on, and the variables the forms still
        waiting resolve their select options and defaults from may have changed with it (the
        answer of a parallel form). Dify resumes a moment after a submit, so a stream opened
        for the decision often replays the pause before the resume, then sees the pause again.
        """
        wanted: dict[str, str] = {}
        for event in events:
            if event.event in ("human_input_form_filled", "human_input_form_timeout"):
                claim.refresh = True
                claim.fetched_this_stream.clear()
                continue
            for fields in capture.pending_forms_in([event]):
                if not fields.form_token:
                    continue
                if fields.form_id not in claim.known or (
                    claim.refresh and fields.form_id not in claim.fetched_this_stream
                ):
                    wanted[fields.form_id] = fields.form_token
            if event.event in ("workflow_paused", "workflow_finished"):
                claim.refresh = False
        return wanted

    async def _get_forms(
        self,
        claim: Claim,
        client: AsyncDifyClient,
        wanted: dict[str, str],
        *,
        failures: bool = False,
    ) -> dict[str, capture.DefinitionResult]:
        """What GET form answered for each form_id -> token. `failures`: also the error of a
        GET that got no answer, which is otherwise left out (the form is fetched again later)."""
        if not wanted:
            return {}
        results = await asyncio.gather(
            *(client.get_form(token) for token in wanted.values()), return_exceptions=True
        )
        found: dict[str, capture.DefinitionResult] = {}
        for form_id, result in zip(wanted, results, strict=True):
            if isinstance(
                result, FormDefinition | FormAlreadySubmitted | FormExpired | FormNotFound
            ):
                found[form_id] = result
            elif isinstance(result, BaseException):
                logger.info(
                    "follower: run %s: GET form failed: %s",
                    claim.pk,
                    _describe(result, secrets=wanted.values()),
                )
                if failures and isinstance(result, DifyError):
                    found[form_id] = result
        return found

    async def _get_forms_by_pk(
        self, client: AsyncDifyClient, wanted: dict[int, str]
    ) -> dict[int, Any]:
        results = await asyncio.gather(
            *(client.get_form(token) for token in wanted.values()), return_exceptions=True
        )
        for form_pk, result in zip(wanted, results, strict=True):
            # Only a 412 settles the form; anything else leaves it pending for the reconcile.
            if isinstance(result, BaseException) and not isinstance(
                result, FormAlreadySubmitted | FormExpired
            ):
                logger.info(
                    "follower: form %s: GET form failed: %s",
                    form_pk,
                    _describe(result, secrets=wanted.values()),
                )
        return dict(zip(wanted, results, strict=True))

    async def _retry_definitions(self, client: AsyncDifyClient, wanted: dict[int, str]) -> None:
        try:
            for attempt in range(3):
                await asyncio.sleep(self.config.backoff_base * 2**attempt)
                for form_pk, token in list(wanted.items()):
                    try:
                        result: capture.DefinitionResult = await client.get_form(token)
                    except (FormAlreadySubmitted, FormExpired, FormNotFound) as exc:
                        result = exc
                    except DifyError:
                        continue
                    await self.db(capture.store_definition, form_pk, result)
                    del wanted[form_pk]
                if not wanted:
                    return
        except Exception as exc:
            # A side task nobody awaits: said here, or only as "Task exception was never
            # retrieved" at exit. The forms keep the event's definition; a replay fetches again.
            logger.error(
                "follower: fetching the definitions of forms %s failed: %s",
                sorted(wanted),
                _describe(exc, secrets=wanted.values()),
            )


def _describe(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """An error for a log line. The client's errors never hold a form token; any other may (a
    URL, a request in its message), so the tokens in play are redacted from it."""
    if isinstance(exc, DifyError):
        return str(exc)
    return f"{type(exc).__name__}: {redact_url(redact(str(exc), secrets))}"


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


_db_checks = threading.local()
# How often a database thread checks its connection (see `_db_call`).
DB_CHECK_SECONDS = 1.0


def _db_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    # As Django does around a request: drop a connection that broke or outlived its age. With
    # CONN_HEALTH_CHECKS that costs a `SELECT 1` round trip, so each thread does it at most
    # once a second (and after a call that failed) rather than before every call.
    now = time.monotonic()
    if (
        getattr(_db_checks, "failed", True)
        or now - getattr(_db_checks, "at", 0.0) >= DB_CHECK_SECONDS
    ):
        close_old_connections()
        _db_checks.at = now
    _db_checks.failed = True
    result = fn(*args, **kwargs)
    _db_checks.failed = False
    return result


def run_follower(owner: str | None = None, **overrides: Any) -> None:
    """Run a follower until SIGINT/SIGTERM."""
    import signal

    follower = Follower(owner, **overrides)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, follower.stop)
        await follower.run()

    asyncio.run(main())
