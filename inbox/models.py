"""The domain: Dify apps, the runs we follow, the forms they pause on and the decisions we deliver."""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import functools
import hashlib
import logging
import re
import typing
import uuid
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, connection, models, transaction
from django.db.models import Exists, OuterRef, Q
from django.db.models.functions import Cast, Coalesce, Lower, Now
from django.urls import reverse
from django.utils import formats, timezone, translation
from django.utils.text import capfirst
from django.utils.translation import gettext, gettext_noop
from django.utils.translation import gettext_lazy as _

from inbox.crypto import DecryptionError, EncryptedTextField, Sealed, readable
from inbox.names import display_name
from inbox.reasons import Reason, stored, translated, worded

if typing.TYPE_CHECKING:
    from inbox.dify.errors import DifyError, DifyStatusError

logger = logging.getLogger(__name__)


def redact_secret(text: str, secret: str | None) -> str:
    """A form token is a bearer secret: it never reaches a stored message."""
    return text.replace(secret, "***") if secret else text


def database_now() -> dt.datetime:
    """The database's clock, the one every host shares.

    Times that processes on different hosts write and compare (a follower's lease, a delivery
    in flight, a decision's due time) are kept by it: a host's own clock may be minutes off.
    A query reads it with `Now()`; this is for code that needs the value itself."""
    if connection.vendor != "postgresql":
        # SQLite runs inside each process of the embedded setup, all on one machine: its clock
        # is that machine's, read here to the microsecond (SQLite's own stops at milliseconds,
        # and would sort before a time from Python written in the same millisecond).
        return dt.datetime.now(dt.UTC)
    with connection.cursor() as cursor:
        # As Django's Now(): CURRENT_TIMESTAMP would stop at the transaction's start.
        cursor.execute("SELECT STATEMENT_TIMESTAMP()")
        now: dt.datetime = cursor.fetchone()[0]
    return now


def mask_secret(value: str | None) -> str:
    """Show enough of a key to recognise it, never enough to use it."""
    if not value:
        return ""
    if len(value) < 20:
        # Its ends would be most of it (a short or home-made key): nothing of it is shown.
        return "•" * 8
    return f"{value[:4]}…{value[-4:]}"


def _not_queued(exc: Exception, message: str, *args: Any) -> None:
    """A task that could not be queued (the sweeps make up for it): one line when the broker is
    away, which is expected during an outage; the traceback for anything else."""
    from kombu.exceptions import OperationalError

    if isinstance(exc, OperationalError | ConnectionError | TimeoutError):
        logger.warning(message + ": %s", *args, exc)
    else:
        logger.warning(message, *args, exc_info=exc)


class DifyApp(models.Model):
    class Mode(models.TextChoices):
        WORKFLOW = "workflow", _("Workflow")
        CHATFLOW = "chatflow", _("Chatflow")

    name = models.CharField(_("name"), max_length=100, unique=True)
    base_url = models.URLField(
        _("API base URL"), max_length=300, help_text=_("Including /v1, e.g. https://api.dify.ai/v1")
    )
    # Sealed when no key of this process opens it: the app's rows still load (pages, the admin
    # where it is entered again), and every call to Dify refuses it (`DifyClient.for_app`).
    api_key = EncryptedTextField(_("API key"), seal_unreadable=True)
    mode = models.CharField(_("mode"), max_length=16, choices=Mode.choices, default=Mode.WORKFLOW)
    is_active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))
    # Connection health. Set when Dify refuses the app's key or the app itself (401, 403, an
    # app-level 400: `DifyStatusError.refuses_app`), cleared by the next call Dify accepts that
    # can tell it is over (`note_accepted`). Only a change is written (a filtered UPDATE), never
    # every call; `save()` leaves them alone.
    refused_at = models.DateTimeField(_("refused since"), null=True, blank=True, editable=False)
    # Dify's answer ("401 unauthorized: Access token is invalid"), for administrators.
    refusal = models.CharField(_("refusal"), max_length=300, blank=True, editable=False)
    # Its HTTP status alone: what reviewers are shown.
    refusal_status = models.PositiveSmallIntegerField(
        null=True, blank=True, editable=False, verbose_name=_("refusal status")
    )
    # Dify's code ("app_unavailable"): what was refused, so the reconcile asks with a call that
    # can tell whether it is over (`tasks._ask_about_app`).
    refusal_code = models.CharField(
        max_length=64, blank=True, editable=False, verbose_name=_("refusal code")
    )
    # When the reconcile last asked Dify again (see `next_refusal_probe`).
    refusal_checked_at = models.DateTimeField(
        null=True, blank=True, editable=False, verbose_name=_("refusal checked at")
    )
    # The last "Test the connection" that found no Dify answering as one should (a wrong URL, a
    # server down, a 404 or 5xx), and what it found. Not a refusal: nothing waits on it. Cleared
    # by the next call Dify answers (`note_accepted`) and by new settings.
    test_failed_at = models.DateTimeField(
        null=True, blank=True, editable=False, verbose_name=_("connection test failed at")
    )
    test_failure = models.CharField(
        _("connection test failure"), max_length=300, blank=True, editable=False
    )
    # What Dify's /info called the app when its key last showed it sees the app's runs (or when
    # it was first read, before the app had any): a 404 for a run is taken for "this run is
    # gone" only while the key is still this app's (`app_check`), and the admin warns when a
    # new key's /info names another app.
    dify_name = models.CharField(_("name in Dify"), max_length=200, blank=True, editable=False)
    # The last time the follower, the reconcile or a delivery found no Dify answering for the
    # app (no connection, no answer in time, a 5xx: `errors.cannot_reach`), since when that
    # lasts, what it was and who saw it. Not a refusal: the key is not in question, and what
    # waits is sent once Dify answers. Cleared by the next call Dify answers (`note_reached`),
    # and by new settings.
    contact_failed_since = models.DateTimeField(
        null=True, blank=True, editable=False, verbose_name=_("not reachable since")
    )
    contact_failed_at = models.DateTimeField(
        null=True, blank=True, editable=False, verbose_name=_("last contact failure at")
    )
    contact_failure = models.CharField(
        _("contact failure"), max_length=300, blank=True, editable=False
    )
    # "follower", "reconcile" or "delivery".
    contact_failure_source = models.CharField(
        max_length=16, blank=True, editable=False, verbose_name=_("contact failure seen by")
    )
    # The HTTP status of a 5xx; None for no connection or no answer in time.
    contact_failure_status = models.PositiveSmallIntegerField(
        null=True, blank=True, editable=False, verbose_name=_("contact failure status")
    )
    # A follower found it cannot decrypt the app's API key with its INBOX_ENCRYPTION_KEYS (one
    # started without the key another process stored it with, mid-rotation): since when, when
    # last (said again each time it lets the app's runs go, every `follower.KEY_RETRY_SECONDS`
    # while they wait), and which follower. Only a recent mark counts (`key_unreadable_now`):
    # a follower that stopped says nothing any more. Cleared when a follower reads the key, and
    # by new settings. Not a fault of Dify, nor of the key: of that process's settings.
    key_unreadable_since = models.DateTimeField(
        null=True, blank=True, editable=False, verbose_name=_("API key unreadable since")
    )
    key_unreadable_at = models.DateTimeField(
        null=True, blank=True, editable=False, verbose_name=_("API key last found unreadable at")
    )
    key_unreadable_by = models.CharField(
        _("API key unreadable by"),
        max_length=100,
        blank=True,
        default="",
        db_default="",
        editable=False,
    )

    # What the connection-health fields are; a plain save() writes the others only.
    HEALTH_FIELDS = (
        "refused_at",
        "refusal",
        "refusal_status",
        "refusal_code",
        "refusal_checked_at",
        "test_failed_at",
        "test_failure",
        "dify_name",
        "contact_failed_since",
        "contact_failed_at",
        "contact_failure",
        "contact_failure_source",
        "contact_failure_status",
        "key_unreadable_since",
        "key_unreadable_at",
        "key_unreadable_by",
    )

    class Meta:
        ordering = ["name"]
        verbose_name = _("Dify app")
        verbose_name_plural = _("Dify apps")

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.base_url = self.base_url.rstrip("/")
        if self.pk is not None and not self._state.adding and kwargs.get("update_fields") is None:
            # The health fields are written by workers as Dify answers them; an administrator
            # saving a form loaded a moment earlier must not put back what they held then.
            kwargs["update_fields"] = [
                f.name
                for f in self._meta.concrete_fields
                if not f.primary_key and f.name not in self.HEALTH_FIELDS
            ]
        super().save(*args, **kwargs)

    @property
    def masked_api_key(self) -> str:
        if self.api_key_sealed:
            # Most often a process started without the newest key (mid-rotation), not a lost key.
            return gettext("not readable with this process's INBOX_ENCRYPTION_KEYS")
        return mask_secret(self.api_key)

    @property
    def server(self) -> str:
        """Where the app's Dify answers: scheme, host and port of its base URL (never a user
        or password it may hold). Apps on one server are down together in an outage."""
        return server_of(self.base_url)

    @property
    def api_key_sealed(self) -> bool:
        """No key in INBOX_ENCRYPTION_KEYS opens the stored key (see `crypto.Sealed`)."""
        return isinstance(self.api_key, Sealed)

    @property
    def label(self) -> str:
        """The app as a log line names it: its name and id (never its key)."""
        return f"{self.name!r} (id {self.pk})"

    def readable_api_key(self) -> str:
        """The key; DecryptionError naming the app when no key of this process opens it."""
        return readable(self.api_key, of=f"the app {self.label}")

    # A follower's mark that it cannot read the app's key counts while this recent: it says it
    # again every 30 s while the app's runs wait (`follower.KEY_RETRY_SECONDS`).
    KEY_UNREADABLE_FRESH = dt.timedelta(minutes=2)

    @property
    def key_unreadable_now(self) -> bool:
        """A follower running now cannot decrypt the key with its INBOX_ENCRYPTION_KEYS, and
        the app's runs wait for one that can (see `key_unreadable_since`)."""
        return (
            self.key_unreadable_at is not None
            and self.key_unreadable_at >= timezone.now() - self.KEY_UNREADABLE_FRESH
        )

    @classmethod
    def key_unreadable_q(cls, prefix: str = "") -> Q:
        """`key_unreadable_now` as a filter (by the database's clock, which wrote the mark)."""
        return Q(**{f"{prefix}key_unreadable_at__gte": Now() - cls.KEY_UNREADABLE_FRESH})

    @classmethod
    def note_key_unreadable(cls, pks: Iterable[int], by: str) -> set[int]:
        """A follower (`by`) cannot decrypt these apps' keys: marked, or the mark said again.
        Returns the apps not marked before."""
        pks = list(pks)
        started = set(
            cls.objects.filter(pk__in=pks, key_unreadable_since__isnull=True).values_list(
                "pk", flat=True
            )
        )
        cls.objects.filter(pk__in=pks).update(
            key_unreadable_since=Coalesce("key_unreadable_since", Now()),
            key_unreadable_at=Now(),
            key_unreadable_by=by[:100],
        )
        return started

    @classmethod
    def note_key_readable(cls, pks: Iterable[int]) -> int:
        """A follower read these apps' keys: a mark is over (free when there is none)."""
        return cls.objects.filter(pk__in=list(pks), key_unreadable_at__isnull=False).update(
            key_unreadable_since=None, key_unreadable_at=None, key_unreadable_by=""
        )

    @property
    def api_key_fingerprint(self) -> str | None:
        """The first 8 hex digits of the key's SHA-256: tells a new key from the same one typed
        again in the audit trail, and gives nothing of the key away. None when unreadable."""
        if self.api_key_sealed or not self.api_key:
            return None
        return hashlib.sha256(str(self.api_key).encode()).hexdigest()[:8]

    def audit_values(self) -> dict[str, Any]:
        """What the trail keeps before and after a change of the app (the admin's and
        `add_dify_app`'s): where its key and tokens go, and whether it starts runs. The key
        only as its fingerprint."""
        return {
            "name": self.name,
            "base_url": self.base_url.rstrip("/"),
            "mode": self.mode,
            "is_active": self.is_active,
            "api_key": self.api_key_fingerprint,
        }

    # --- connection health ---

    def note_refused(self, exc: DifyStatusError, source: str) -> bool:
        """Dify refused this app (`exc.refuses_app`): record it, unless it is known already.
        True when this starts a refusal. `source` says which call saw it, for the audit trail.

        Only for the settings this instance was loaded with: once an administrator saved new
        ones (a new key), a refusal of a call made with the old ones is old news."""
        message = redact_secret(str(exc), self.api_key)[:300]
        if self.refused_at is not None and self.refusal == message:
            return False
        # The database's clock: the reconcile, on another host, counts its probes from it.
        now = database_now()
        mine = DifyApp.objects.filter(pk=self.pk, updated_at=self.updated_at)
        code = exc.code[:64]
        started = mine.filter(refused_at__isnull=True).update(
            refused_at=now,
            refusal=message,
            refusal_status=exc.status,
            refusal_code=code,
            refusal_checked_at=now,
        )
        if not started:
            # Refused already: only a different answer is news (403 after 401, say).
            mine.filter(refused_at__isnull=False).exclude(refusal=message).update(
                refusal=message, refusal_status=exc.status, refusal_code=code
            )
        self.refusal, self.refusal_status, self.refusal_code = message, exc.status, code
        if started:
            self.refused_at = self.refusal_checked_at = now
            AuditEntry.record("app_refused", self, refusal=message, source=source)
            if code in KIND_REFUSALS:
                # A setting here, not a refusal of the app: only a start of the mode set up
                # here is refused; its runs' forms, events and decisions go through (CONTRACT
                # 7.10).
                logger.warning(
                    "Dify says the app %s is not a %s (%s, seen by the %s): its mode here must "
                    "be set to match to start runs; its runs' forms and decisions go through",
                    self.name,
                    self.mode,
                    message,
                    source,
                )
            else:
                logger.warning(
                    "Dify refuses the app %s (%s, seen by the %s): its runs wait until it "
                    "accepts the key again",
                    self.name,
                    message,
                    source,
                )
        return bool(started)

    def note_accepted(
        self, source: str, *, kind: bool = False, published: bool = False, runs: bool = False
    ) -> bool:
        """Dify accepted a call with this app's key: a refusal on record is over, if the call
        can tell. Any call proves the key (401, 403). Only a call that proves it ends a refusal
        of the app's kind (`kind`: a start, /info naming the mode set up here) or of an app with
        nothing published (`published`: a start, /parameters): a run's events and detail,
        uploads and submits go through either way. Only a call that answered for one of the
        app's own runs or forms (`runs`: a run's detail or events, a submit, `app_check`) ends
        404s for the whole app (`APP_NOT_FOUND_REFUSAL`): another app's key answers /info,
        starts and uploads too. True when this clears the refusal. Free when this instance
        knows of none the call can judge, so it may be called after every successful call."""
        if self.test_failed_at is not None:
            # Dify answered: whatever the last connection test found is over.
            self._clear_test_failure()
        self.note_reached(source)
        if self.refused_at is None:
            return False
        unjudged = set() if kind else set(KIND_REFUSALS)
        if not published:
            unjudged.add(UNPUBLISHED_REFUSAL)
        if not runs:
            unjudged.add(APP_NOT_FOUND_REFUSAL)
        was = self.refusal_code
        if self.refusal_code in unjudged:
            return False
        # What is on record may be newer than what this instance knows (a start found the app
        # of another kind meanwhile): a refusal the call cannot judge stays.
        cleared = self._clear_refusal(
            DifyApp.objects.filter(pk=self.pk, updated_at=self.updated_at).exclude(
                refusal_code__in=unjudged
            )
        )
        if cleared:
            AuditEntry.record("app_accepted", self, source=source)
            logger.info("Dify accepts the app %s again (seen by the %s)", self.name, source)
            if was == APP_NOT_FOUND_REFUSAL:
                # Its runs' events were a 404 too meanwhile: what the follower gave up on, or
                # took for a run whose events it may not read, is read again now.
                self._follow_unseen_runs()
        return cleared

    @property
    def mode_mismatch(self) -> bool:
        """Dify refused a start as not of the kind of app set up here (`KIND_REFUSALS`): a
        setting of the app here to correct, not a refusal of the app. Only starts are of one
        mode; a run's events and detail, its forms and their submits are the same for both
        (CONTRACT 7.10), so nothing of its runs waits on it."""
        return self.refused_at is not None and self.refusal_code in KIND_REFUSALS

    @property
    def unpublished(self) -> bool:
        """Dify says the app is not available (`app_unavailable`: nothing published, no
        workflow). Only starts need a published workflow; the runs it has go on, their forms
        arrive and their decisions go, so nothing of them waits on it."""
        return self.refused_at is not None and self.refusal_code == UNPUBLISHED_REFUSAL

    @property
    def unpublished_text(self) -> str:
        """What a start page says of an app Dify calls unavailable, in the active language."""
        return gettext(
            "Dify says this app is not available: it may have no published workflow. Runs of it "
            "can start once an administrator publishes it in Dify."
        )

    @property
    def mode_mismatch_text(self) -> str:
        """What the admin, the dashboard and the run page say of a `mode_mismatch`, in the
        active language."""
        other = (
            DifyApp.Mode.WORKFLOW if self.mode == DifyApp.Mode.CHATFLOW else DifyApp.Mode.CHATFLOW
        )
        return gettext("Dify says this app is a %(dify)s, not a %(kind)s: set Mode to match.") % {
            "dify": other.label,
            "kind": self.get_mode_display(),
        }

    def note_dify_name(self, name: str) -> None:
        """What Dify's /info calls the app, read while its key is known to be this app's."""
        name = (name or "")[:200]
        if name and name != self.dify_name:
            DifyApp.objects.filter(pk=self.pk).update(dify_name=name)
            self.dify_name = name

    @property
    def streams_failing(self) -> bool:
        """What is on record is the follower's: Dify answered its streams with a 5xx (its
        event endpoint down while other calls may work)."""
        return self.contact_failure_source == "follower" and self.contact_failure_status is not None

    def note_unreachable(self, exc: DifyError, source: str) -> bool:
        """A call for this app found no Dify answering (`errors.cannot_reach`): record it, for
        the admin, the dashboard, /healthz and the run and form pages. True when this starts a
        spell. Written at most every CONTACT_NOTE_EVERY, not at every failed call (an outage
        fails every run's stream); only for the settings this instance was loaded with."""
        from inbox.dify.errors import DifyStatusError

        message = redact_secret(str(exc), self.api_key)[:300]
        status = exc.status if isinstance(exc, DifyStatusError) else None
        now = database_now()
        mine = DifyApp.objects.filter(pk=self.pk, updated_at=self.updated_at)
        fields = {
            "contact_failed_at": now,
            "contact_failure": message,
            "contact_failure_source": source[:16],
            "contact_failure_status": status,
        }
        started = mine.filter(contact_failed_since__isnull=True).update(
            contact_failed_since=now, **fields
        )
        if not started:
            mine.filter(contact_failed_at__lt=now - CONTACT_NOTE_EVERY).update(**fields)
        if started or self.contact_failed_since is None:
            self.contact_failed_since = now
        self.contact_failed_at = now
        self.contact_failure, self.contact_failure_source = message, source[:16]
        self.contact_failure_status = status
        if started:
            logger.warning(
                "Dify cannot be reached for the app %s (%s, seen by the %s): what waits on it is "
                "sent once it answers",
                self.name,
                message,
                source,
            )
            if status is None:
                # No connection, no answer in time: most likely the whole server is away, and
                # its other apps with it. They are asked at once (`tasks.check_server`).
                self._check_server(source, away=True)
        return bool(started)

    def _check_server(self, source: str, *, away: bool) -> None:
        """Have the other active apps on this app's server asked whether Dify answers for them
        (`tasks.check_server`), now that this one was found `away` or answering again. Not for
        what such a check itself found, which would ask again and again. Queued at once, with
        what was found (the task needs nothing of this transaction); a broker that is down
        loses little: the reconcile finds the others in its time."""
        if source == SERVER_CHECK:
            return
        from inbox.tasks import check_server

        try:
            check_server.apply_async((self.pk, away))
        except Exception as exc:
            _not_queued(exc, "app %s: server check not queued", self.pk)

    def note_reached(self, source: str) -> bool:
        """Dify answered a call for this app: a contact failure on record is over, and the runs
        the follower gave up on meanwhile are handed back to it at once (each with a state
        snapshot), rather than after their growing wait (`refollow_delay`). True when this
        clears one. Free when this instance knows of none, so it may follow every call.

        A 5xx on the follower's streams is Dify's event endpoint failing, which its other calls
        do not prove over: only a stream that opens ends it (`source` "follower"), or a call
        once no run of the app waits for its stream any more."""
        if self.contact_failed_at is None:
            return False
        rows = DifyApp.objects.filter(pk=self.pk, contact_failed_at__isnull=False)
        given_up = (
            Run.objects.filter(app_id=self.pk, give_ups__gt=0, events_unavailable=False)
            .exclude(status__in=Run.FINAL_STATUSES)
            .exclude(workflow_run_id="")
        )
        if source != "follower" and given_up.exists():
            if self.streams_failing:
                return False
            # What is on record may be newer than what this instance knows.
            rows = rows.exclude(
                contact_failure_source="follower", contact_failure_status__isnull=False
            )
        since = self.contact_failed_since
        # Away as a whole (not only its event streams failing): its server may be back.
        was_down = not self.streams_failing
        cleared = rows.update(**CONTACT_CLEARED)
        if not cleared:
            return False
        self.contact_failed_since = self.contact_failed_at = self.contact_failure_status = None
        self.contact_failure = self.contact_failure_source = ""
        logger.info("Dify answers for the app %s again (seen by the %s)", self.name, source)
        if was_down:
            # Its server is back: the other apps found away with it are asked now.
            self._check_server(source, away=False)
        # What the follower gave up on while Dify did not answer is worth reading now: once a
        # stream opens, or after an outage (not after one call's failure, seen a moment ago).
        outage = since is not None and database_now() - since >= CONTACT_NOTE_EVERY
        if source != "follower" and not outage:
            return True
        pks = list(
            given_up.filter(needs_reconcile=True, follow_wanted=False).values_list("pk", flat=True)
        )
        if pks:
            Run.objects.filter(pk__in=pks).update(give_ups=0, refollow_after=None)
            request_follow_many(pks)
        return True

    def _clear_contact_failure(self) -> None:
        DifyApp.objects.filter(pk=self.pk, contact_failed_at__isnull=False).update(
            **CONTACT_CLEARED
        )
        self.contact_failed_since = self.contact_failed_at = self.contact_failure_status = None
        self.contact_failure = self.contact_failure_source = ""

    def note_test_failed(self, error: Exception) -> None:
        """A connection test found no Dify answering as one should, for a reason other than a
        refusal (`note_refused`): kept to be shown with the app until Dify answers a call."""
        now = database_now()
        message = redact_secret(str(error), self.api_key)[:300]
        DifyApp.objects.filter(pk=self.pk).update(test_failed_at=now, test_failure=message)
        self.test_failed_at, self.test_failure = now, message

    def _clear_test_failure(self) -> None:
        DifyApp.objects.filter(pk=self.pk, test_failed_at__isnull=False).update(
            test_failed_at=None, test_failure=""
        )
        self.test_failed_at, self.test_failure = None, ""

    def is_dify_mode(self, mode: Any) -> bool:
        """Whether the `mode` Dify's /info names is the kind of app set up here."""
        return bool(mode) and mode == DIFY_MODES.get(self.mode)

    def note_probed(self, now: dt.datetime) -> None:
        """The reconcile asked Dify again and was refused: the next try waits longer."""
        DifyApp.objects.filter(pk=self.pk, refused_at__isnull=False).update(refusal_checked_at=now)
        self.refusal_checked_at = now

    def next_refusal_probe(self) -> dt.datetime | None:
        """When the reconcile may ask Dify again about a refused app. The wait doubles with
        each refusal: 1, 2, 4... minutes after `refused_at`, then every REFUSAL_PROBE_MAX."""
        if self.refused_at is None:
            return None
        checked = self.refusal_checked_at or self.refused_at
        return checked + min(max(checked - self.refused_at, REFUSAL_PROBE_MIN), REFUSAL_PROBE_MAX)

    def settings_changed(self, *, actor: Any = None, actor_label: str = "") -> int:
        """An administrator saved a new key or URL (in the admin, or with `add_dify_app`):
        what Dify refused is worth asking again now. Clears the refusal and hands the runs the
        follower gave up on, or whose events the old settings could not see, back to it (each
        stream opened with a state snapshot, so their forms come in). Returns how many."""
        # A failed connection test was of the old settings, and so was a contact failure.
        self._clear_test_failure()
        self._clear_contact_failure()
        # A follower that could not read the old key is asked to read the new one at once.
        DifyApp.note_key_readable([self.pk])
        if self._clear_refusal(DifyApp.objects.filter(pk=self.pk)):
            AuditEntry.record(
                "app_accepted", self, actor=actor, actor_label=actor_label, source="new settings"
            )
        # Runs whose events the old settings could not see (404: another app's key, another
        # server) may be visible to the new ones.
        followed = self._follow_unseen_runs()
        # Nor does a decision's backoff (a key this process could not read, a server away).
        Decision.send_waiting_now(self)
        return followed

    def _follow_unseen_runs(self) -> int:
        """The open runs the follower gave up on, or whose events Dify would not show (404),
        are read again (each stream opened with a state snapshot, so their forms come in), and
        marked again if Dify still will not show them. Returns how many."""
        open_runs = (
            Run.objects.filter(app=self, follow_wanted=False)
            .exclude(status__in=Run.FINAL_STATUSES)
            .exclude(workflow_run_id="")
        )
        pks = list(
            open_runs.filter(Q(needs_reconcile=True) | Q(events_unavailable=True)).values_list(
                "pk", flat=True
            )
        )
        Run.objects.filter(pk__in=pks, events_unavailable=True).update(events_unavailable=False)
        # What the follower gave up on was read with the old settings: no wait carries over.
        Run.objects.filter(pk__in=pks).update(give_ups=0, refollow_after=None)
        return request_follow_many(pks)

    def _clear_refusal(self, rows: models.QuerySet[DifyApp]) -> bool:
        cleared = rows.filter(refused_at__isnull=False).update(
            refused_at=None,
            refusal="",
            refusal_status=None,
            refusal_code="",
            refusal_checked_at=None,
        )
        self.refused_at = self.refusal_checked_at = self.refusal_status = None
        self.refusal = self.refusal_code = ""
        # The decisions held while Dify refused the app go now. (One held after this read is
        # released by `sweep_deliveries`, which finds its app accepted.)
        Decision.release_held([self.pk])
        return bool(cleared)


# Refusals of the app itself, not its key: Dify says the app is not of the kind set up here (a
# workflow, a chatflow), or that it has nothing published.
KIND_REFUSALS = frozenset({"not_workflow_app", "not_chat_app"})
UNPUBLISHED_REFUSAL = "app_unavailable"
# Both: what Dify refuses of the app as set up here, while its key still works. A run's events
# and detail, its forms and their submits still go through for such an app.
SETUP_REFUSALS = KIND_REFUSALS | {UNPUBLISHED_REFUSAL}
# Not a code of Dify's: 404s that cover the whole app (its /info, or every run of it the key is
# asked about, or an /info naming another app), which the inbox reads as a refusal of the app
# (the key of another app, a wrong base URL, a proxy answering 404), not as runs gone
# (`app_check`). Only a call that answers for one of the app's runs ends it.
APP_NOT_FOUND_REFUSAL = "app_not_found"
# Why a run Dify answered 404 for, while its key still saw the app, ended (`Run.gone_from_dify`).
GONE_REASON = Reason(
    gettext_noop(
        "Dify no longer knows this run (404): it was deleted there, or Dify's data was reset."
    )
)
# Why a run an administrator wrote off ended (`Run.close_here`).
CLOSED_HERE_REASON = Reason(
    gettext_noop(
        "Closed here by an administrator: Dify no longer has this run, or will not answer for it."
    )
)
NOT_SENT_CLOSED_HERE = Reason(
    gettext_noop(
        "Not sent: an administrator closed its run here (Dify no longer has the run, or will not "
        "answer for it) while the decision waited to be sent."
    )
)
# The `mode` Dify's /info names for each kind of app (the spec's AppInfoResponse).
DIFY_MODES: dict[str, str] = {
    DifyApp.Mode.WORKFLOW: "workflow",
    DifyApp.Mode.CHATFLOW: "advanced-chat",
}


def server_of(url: str) -> str:
    """Scheme, host and port of a base URL ("http://dify.example.com:8080"), without the
    user and password it may hold."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}".lower()


# The source of what `tasks.check_server` records: an app asked because another app on its
# server was found away or back.
SERVER_CHECK = "server check"
# How often a contact failure that goes on is written again (`DifyApp.note_unreachable`).
CONTACT_NOTE_EVERY = dt.timedelta(seconds=15)
CONTACT_CLEARED: dict[str, Any] = {
    "contact_failed_since": None,
    "contact_failed_at": None,
    "contact_failure": "",
    "contact_failure_source": "",
    "contact_failure_status": None,
}
# How long the reconcile waits before asking Dify again about a refused app, at first and at most.
REFUSAL_PROBE_MIN = dt.timedelta(minutes=1)
REFUSAL_PROBE_MAX = dt.timedelta(minutes=30)
# The reconcile hands a run the follower gave up on back to it at its next pass the first time,
# then 2, 4, 8... minutes after each give-up in a row, and every REFOLLOW_MAX at most.
REFOLLOW_MAX = dt.timedelta(minutes=30)


def refollow_delay(give_ups: int) -> dt.timedelta:
    """How long a run the follower has given up on `give_ups` times in a row waits before the
    reconcile hands it back."""
    if give_ups <= 1:
        return dt.timedelta(0)
    return min(dt.timedelta(minutes=2 ** min(give_ups - 1, 16)), REFOLLOW_MAX)


class RunQuerySet(models.QuerySet["Run"]):
    def for_user(self, user: Any) -> RunQuerySet:
        """The runs this user may see: staff see all; others the runs they started and the runs
        of forms they may see (Form.objects.for_user)."""
        if user is None or not user.is_authenticated or not user.is_active:
            return self.none()
        if user.is_staff:
            return self
        visible_forms = Form.objects.for_user(user).filter(run_id=OuterRef("pk"))
        return self.filter(Q(started_by=user) | Q(Exists(visible_forms)))

    def may_start(self, user: Any) -> bool:
        """Starting runs needs the `inbox.add_run` permission (superusers have every one;
        reviewers and staff get it through a group or their own permissions): being staff
        alone opens the admin, not Dify's apps."""
        return bool(
            user is not None
            and user.is_authenticated
            and user.is_active
            and user.has_perm("inbox.add_run")
        )


class Run(models.Model):
    class Status(models.TextChoices):
        STARTING = "starting", _("Starting")
        RUNNING = "running", _("Running")
        PAUSED = "paused", _("Paused")
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")
        STOPPED = "stopped", _("Stopped")
        PARTIAL_SUCCEEDED = "partial-succeeded", _("Partially succeeded")

    FINAL_STATUSES = frozenset({"succeeded", "failed", "stopped", "partial-succeeded"})

    public_id = models.UUIDField(
        default=uuid.uuid4, unique=True, editable=False, verbose_name=_("public id")
    )
    app = models.ForeignKey(
        DifyApp, on_delete=models.PROTECT, related_name="runs", verbose_name=_("app")
    )
    workflow_run_id = models.CharField(_("workflow run id"), max_length=64, blank=True)
    task_id = models.CharField(_("task id"), max_length=64, blank=True)
    conversation_id = models.CharField(max_length=64, blank=True, verbose_name=_("conversation id"))
    message_id = models.CharField(max_length=64, blank=True, verbose_name=_("message id"))
    # The Dify end user of this run. Dify scopes uploads and event streams by it, so it is chosen
    # once and every later call for the run (upload, submit, resume) uses the same value.
    dify_user = models.CharField(_("Dify user"), max_length=255)
    inputs = models.JSONField(default=dict, blank=True, verbose_name=_("inputs"))
    query = models.TextField(blank=True, verbose_name=_("query"))
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.STARTING, verbose_name=_("status")
    )
    outputs = models.JSONField(default=dict, blank=True, verbose_name=_("outputs"))
    answer = models.TextField(
        blank=True, help_text=_("Chatflow answer text, aggregated."), verbose_name=_("answer")
    )
    # Why the run failed: Dify's own words as it said them, or the inbox's in English (the
    # admin, the audit trail and the API read it so), with `error_parts` keeping the inbox's
    # message and its values for a page in the reader's language (`error_text`).
    error = models.TextField(blank=True, verbose_name=_("error"))
    error_parts = models.JSONField(default=dict, blank=True, verbose_name=_("error parts"))
    timeline = models.JSONField(default=list, blank=True, verbose_name=_("timeline"))
    # The start inputs' labels as the app declared them when the run started ({variable:
    # label}), so its page names them as the start form did, without asking Dify again.
    input_labels = models.JSONField(default=dict, blank=True, verbose_name=_("input labels"))
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="started_runs",
        verbose_name=_("started by"),
    )
    # Their username as it was when they started it: kept once the account is deleted.
    started_by_username = models.CharField(
        max_length=150, blank=True, verbose_name=_("started by (username)")
    )

    class Source(models.TextChoices):
        UI = "ui", _("Inbox page")
        API = "api", _("JSON API")
        INGEST = "ingest", _("Ingested from Dify")

    source = models.CharField(
        max_length=16, default="ui", choices=Source.choices, verbose_name=_("source")
    )
    # Following: a run that needs its stream read has follow_wanted set; a follower takes a lease.
    follow_wanted = models.BooleanField(
        default=True, db_index=True, verbose_name=_("follow wanted")
    )
    follow_snapshot = models.BooleanField(default=False, verbose_name=_("follow snapshot"))
    lease_owner = models.CharField(max_length=64, blank=True, verbose_name=_("lease owner"))
    # Written and compared by the database's clock (see `database_now`), not a follower's own.
    lease_expires_at = models.DateTimeField(
        null=True, blank=True, verbose_name=_("lease expires at")
    )
    # Follows in a row that the follower gave up on (the stream refused, or failing through
    # all its reconnects), and when the reconcile may hand the run back to the follower: the
    # wait doubles with each (see `refollow_delay`), so a run whose stream keeps failing costs
    # Dify a few streams an hour, not one a minute. A follow that reaches a pause or the end
    # clears both; a decision's or an administrator's request to follow does not wait for it.
    give_ups = models.PositiveSmallIntegerField(default=0, verbose_name=_("give ups"))
    refollow_after = models.DateTimeField(null=True, blank=True, verbose_name=_("refollow after"))
    # Bumped by every request_follow. A follower clears follow_wanted on release only when this
    # is still what it claimed, so a request made while it was reading is never lost.
    follow_seq = models.PositiveIntegerField(default=0, verbose_name=_("follow seq"))
    # The follower gave up on the stream (its reconnects ran out, Dify refused it): the periodic
    # reconcile asks Dify (run detail) what became of the run.
    needs_reconcile = models.BooleanField(default=False, verbose_name=_("needs reconcile"))
    # Dify refuses this run's event stream (404: another end user's run, or one not started
    # through the API, e.g. an ingested WebApp run): it is tracked through run detail only.
    events_unavailable = models.BooleanField(default=False, verbose_name=_("events unavailable"))
    # When the reconcile last asked Dify about this run.
    checked_at = models.DateTimeField(null=True, blank=True, verbose_name=_("checked at"))
    # When an event of this run was last applied.
    last_event_at = models.DateTimeField(null=True, blank=True, verbose_name=_("last event at"))
    created_at = models.DateTimeField(
        auto_now_add=True, db_index=True, verbose_name=_("created at")
    )
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))
    finished_at = models.DateTimeField(null=True, blank=True, verbose_name=_("finished at"))
    # A start sent again under the same key (an API client's retry, a page posted twice) is the
    # same start: it finds this run instead of starting another in Dify. The key is the caller's
    # own, scoped to them; the digest is of what they asked, so the key is not reused for another
    # start. Released when Dify surely started nothing, kept when that is not known.
    submission_key = models.CharField(
        max_length=64, blank=True, default="", verbose_name=_("submission key")
    )
    submission_digest = models.CharField(
        max_length=64, blank=True, default="", verbose_name=_("submission digest")
    )

    objects = RunQuerySet.as_manager()

    class Meta:
        verbose_name = _("run")
        verbose_name_plural = _("runs")
        ordering = ["-created_at"]
        # What the admin's actions need beyond seeing the records (which are never edited).
        permissions = [("stop_run", _("Can stop runs in Dify"))]
        constraints = [
            models.UniqueConstraint(
                fields=["app", "workflow_run_id"],
                condition=~Q(workflow_run_id=""),
                name="run_unique_workflow_run_id_per_app",
            ),
            models.UniqueConstraint(
                fields=["submission_key"],
                condition=~Q(submission_key=""),
                name="run_unique_submission_key",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "updated_at"]),
            # The followers' work queue, polled several times a second: only wanted runs.
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(follow_wanted=True),
                name="run_follow_queue",
            ),
            # A chatflow's conversation: its messages on a run's page, the next one's start.
            models.Index(
                fields=["app", "conversation_id"],
                condition=~Q(conversation_id=""),
                name="run_conversation",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.app.name} · {self.workflow_run_id or self.public_id}"

    def get_absolute_url(self) -> str:
        """The run's page (the admin's "view on site")."""
        return reverse("inbox:run", args=[self.public_id])

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINAL_STATUSES

    @property
    def not_sent(self) -> bool:
        """A start that ended before Dify named a run (Dify refused it, `conversation_not_found`
        among them, or it failed first): kept, but no message of its conversation."""
        return self.is_finished and not self.workflow_run_id

    @property
    def error_text(self) -> str:
        """`error` in the active language, as a page shows it (Dify's own words as they are)."""
        return translated(self.error, self.error_parts)

    @property
    def error_detail(self) -> str:
        """Dify's own words for an `error` said in the inbox's words instead (a start refused
        as the app has nothing published), for staff: "" otherwise."""
        parts = self.error_parts if isinstance(self.error_parts, dict) else {}
        detail = parts.get("detail") if parts.get("message") else None
        return detail if isinstance(detail, str) else ""

    def gone_from_dify(self, *, source: str) -> int:
        """Dify no longer knows this run (its detail is a 404 to a key it accepts): it was
        deleted there, or Dify's data was reset. The run ends as failed, saying so, and its
        forms still waiting for an answer close as gone, so nobody decides what cannot be
        sent. A form whose decision is on its way is left to its delivery (which meets the
        same 404 and says so). Returns how many forms closed."""
        reason = GONE_REASON
        with transaction.atomic():
            run = Run.objects.select_for_update().filter(pk=self.pk).first()
            if run is None or run.is_finished:
                return 0
            now = timezone.now()
            Run.objects.filter(pk=run.pk).update(
                status=Run.Status.FAILED,
                error=reason,
                error_parts=reason.parts(),
                finished_at=now,
                follow_wanted=False,
                needs_reconcile=False,
                checked_at=now,
                updated_at=now,
            )
            # A form whose decision failed for good closes too: nothing sent for it, again or
            # anew, could arrive (its failed decision stays, as the record of what was decided).
            forms = list(
                Form.objects.select_for_update().filter(
                    run=run,
                    status__in=(
                        Form.Status.PENDING,
                        Form.Status.NOT_ANSWERABLE,
                        Form.Status.FAILED,
                    ),
                )
            )
            Form.objects.filter(pk__in=[f.pk for f in forms]).update(
                status=Form.Status.GONE, form_token="", updated_at=now, checked_at=now
            )
            AuditEntry.record("run_gone", run, reason=reason, source=source, forms=len(forms))
            for form in forms:
                AuditEntry.record(
                    "form_gone", form, previous=form.status, reason=reason, source=source
                )
        logger.warning("run %s: %s (seen by the %s)", self.pk, reason, source)
        self.refresh_from_db()
        return len(forms)

    def close_here(self, *, actor: Any) -> int | None:
        """An administrator writes the run off: Dify no longer has it, or will not answer for
        it again (its server retired, its data lost). Closed here alone, nothing asked of Dify:
        it ends as failed, saying so, and its forms still waiting for an answer (or whose
        decision failed for good) close as gone, their recipients told as for a run gone from
        Dify. A decision waiting to be sent (again) fails first, saying why (its maker is told,
        as of any failed decision); one a worker is sending right now is waited for: None then,
        and nothing changes. Returns how many forms closed (0 for a run that had ended)."""
        reason = CLOSED_HERE_REASON
        with transaction.atomic():
            run = Run.objects.select_for_update().filter(pk=self.pk).first()
            if run is None or run.is_finished:
                return 0
            forms = list(Form.objects.select_for_update().filter(run=run))
            if Decision.objects.filter(form__run=run, status=Decision.Status.DELIVERING).exists():
                return None
            for waiting in Decision.objects.filter(
                form__run=run, status=Decision.Status.QUEUED
            ).values_list("pk", flat=True):
                Decision.finish(
                    waiting,
                    status=Decision.Status.FAILED,
                    form_status=Form.Status.FAILED,
                    reason=NOT_SENT_CLOSED_HERE,
                    verb="decision_failed",
                    source="closed here",
                )
            forms = list(Form.objects.filter(run=run))
            now = timezone.now()
            Run.objects.filter(pk=run.pk).update(
                status=Run.Status.FAILED,
                error=reason,
                error_parts=reason.parts(),
                finished_at=now,
                follow_wanted=False,
                needs_reconcile=False,
                checked_at=now,
                updated_at=now,
            )
            closing = [
                form
                for form in forms
                if form.status
                in (Form.Status.PENDING, Form.Status.NOT_ANSWERABLE, Form.Status.FAILED)
            ]
            Form.objects.filter(pk__in=[f.pk for f in closing]).update(
                status=Form.Status.GONE, form_token="", updated_at=now, checked_at=now
            )
            AuditEntry.record(
                "run_closed_here", run, actor=actor, reason=reason, forms=len(closing)
            )
            for form in closing:
                AuditEntry.record(
                    "form_gone",
                    form,
                    actor=actor,
                    previous=form.status,
                    reason=reason,
                    source="closed here",
                )
        logger.info("run %s: closed here by %s: %s", self.pk, actor, reason)
        self.refresh_from_db()
        return len(closing)

    @property
    def was_gone(self) -> bool:
        """Ended by `gone_from_dify` (a 404 for its detail), not by Dify."""
        return self.status == Run.Status.FAILED and self.error == GONE_REASON

    def back_in_dify(self, *, source: str, actor: Any = None, follow: bool = True) -> bool:
        """Dify answers for a run taken for gone (`gone_from_dify`): the 404s were not of the
        run after all (settings put right since, an outage the checks could not tell apart).
        It is open again and followed with a state snapshot: its forms that closed as gone wait
        again without a token (`not_answerable`) until the snapshot hands out fresh ones, which
        make them pending (`capture`), and a form Dify no longer waits at is settled by the
        same snapshot or the run's end. Those emailed about its forms are emailed again once
        they are pending (they may have been told the form was gone). `follow=False` leaves
        the follow to the caller, which reads the snapshot itself first (an ingest). True when
        it was reopened."""
        with transaction.atomic():
            run = Run.objects.select_for_update().filter(pk=self.pk).first()
            if run is None or not run.was_gone:
                return False
            Run.objects.filter(pk=run.pk).update(
                status=Run.Status.RUNNING,
                error="",
                error_parts={},
                finished_at=None,
                needs_reconcile=False,
                give_ups=0,
                refollow_after=None,
                events_unavailable=False,
                updated_at=timezone.now(),
            )
            forms = list(run.forms.filter(status=Form.Status.GONE).values_list("pk", flat=True))
            Form.objects.filter(pk__in=forms).update(
                status=Form.Status.NOT_ANSWERABLE, updated_at=timezone.now()
            )
            # Those emailed about it are emailed again once it waits again with a token (the
            # sweep sends the first emails of pending forms): those told it was gone read
            # "nothing more is needed from you", and the reminders of all stopped as it went.
            # Their reminders start over from that email, and a closing notice is owed anew.
            FormRecipient.objects.filter(form_id__in=forms, sent_at__isnull=False).update(
                sent_at=None,
                send_attempts=0,
                next_send_at=None,
                last_error="",
                reminders_sent=[],
                next_reminder_at=None,
                closed_notice_at=None,
                notice_attempts=0,
            )
            AuditEntry.record("run_back", run, actor=actor, source=source, forms=len(forms))
        logger.warning(
            "run %s: Dify answers for it again: reopened (%d form(s)), seen by the %s",
            self.pk,
            len(forms),
            source,
        )
        self.refresh_from_db()
        if follow:
            self.request_follow(snapshot=True)
        return True

    # --- capture (the event logic lives in inbox/capture.py) ---

    def apply_event(
        self, event: Any, *, definition: Any = None, fetch_definitions: bool = True
    ) -> Any:
        """Apply one stream event (a dict as Dify sends it, or a StreamEvent). Idempotent and
        order-tolerant; see `apply_events`. Returns a `capture.Applied`."""
        definitions = None
        if definition is not None:
            form_id = (event.get("data") or {}).get("form_id") if isinstance(event, dict) else None
            definitions = {str(form_id or getattr(event, "form_id", "")): definition}
        return self.apply_events(
            [event], definitions=definitions, fetch_definitions=fetch_definitions
        )

    def apply_events(
        self,
        events: Any,
        *,
        definitions: Any = None,
        fetch_definitions: bool = True,
        source: str = "stream",
        stream: Any = None,
    ) -> Any:
        """Apply stream events in order, in one transaction under this run's row lock: status,
        timeline, answer, outputs, and a Form per `human_input_required` (unique on form_id,
        token encrypted; a replay with a fresh token updates the token). Forms whose definition
        was not passed in `definitions` (form_id -> FormDefinition or the DifyError of GET
        form) are fetched afterwards with GET form, outside the transaction, unless
        `fetch_definitions` is False (the follower fetches them itself, asynchronously).
        `stream` (a `capture.StreamState`) carries what earlier batches of the same stream
        showed; without it the events read as a stream of their own."""
        from inbox import capture

        events = list(events)
        if fetch_definitions and any(
            capture.event_dict(e).get("event") == "workflow_finished" for e in events
        ):
            # The end closes the forms still open here; Dify says which were answered.
            checked = capture.check_forms(self.app, capture.open_form_tokens(self))
            definitions = {**checked, **(definitions or {})}
        applied = capture.apply_events(
            self, events, definitions=definitions, source=source, stream=stream
        )
        if fetch_definitions and applied.needs_definition:
            capture.fetch_definitions(self, applied.needs_definition)
        self.refresh_from_db()
        return applied

    @property
    def labelled_inputs(self) -> list[tuple[str, Any]]:
        """The run's inputs as (label, value): the app's label where it gave one, else the
        variable's name."""
        labels = self.input_labels if isinstance(self.input_labels, dict) else {}
        inputs = self.inputs if isinstance(self.inputs, dict) else {}
        return [(str(labels.get(name) or name), value) for name, value in inputs.items()]

    def awaits_evidence(self) -> bool:
        """A decision on one of its forms was delivered by presumption and Dify's events have
        not settled it yet (`Decision.unsettled_presumptions`), or one of its forms was
        answered in Dify with an action not known here (`Form.answer_unknown`)."""
        return (
            Decision.unsettled_presumptions().filter(form__run_id=self.pk).exists()
            or Form.answer_unknown().filter(run_id=self.pk).exists()
        )

    @staticmethod
    def evidence_awaited() -> Q:
        """`awaits_evidence`, as a condition on runs."""
        return Q(Exists(Decision.unsettled_presumptions().filter(form__run_id=OuterRef("pk")))) | Q(
            Exists(Form.answer_unknown().filter(run_id=OuterRef("pk")))
        )

    @classmethod
    def followable(cls) -> Q:
        """The runs a stream may still tell something: those not finished, and the finished
        ones that await evidence of whose answer Dify took (`awaits_evidence`)."""
        return ~Q(status__in=cls.FINAL_STATUSES) | cls.evidence_awaited()

    def request_follow(self, snapshot: bool = False) -> bool:
        """Ask a follower to (re)open this run's event stream and read it to the next pause or
        the end. Call it whenever the run may have moved on in Dify: after a decision was
        delivered, after a form was answered or expired elsewhere, after an ingest.

        The follower always opens `GET /workflow/{id}/events` with `include_state_snapshot=true`
        (and `continue_on_pause=true`), because a stream opened after the run moved on would
        miss the events in between (CONTRACT 6.1 "Race"); replays are idempotent. `snapshot=True`
        additionally asks it to fetch the definitions of the forms the replay lists again (GET
        form), since after a decision the variables that select options and defaults resolve
        from may have changed. Returns False for a finished run: it has nothing more to say,
        unless a decision on one of its forms was delivered by presumption and is not settled
        yet (`awaits_evidence`): Dify's events may still say whose answer it took (newer builds
        replay a finished run's event log), and nothing but a stream can tell.
        """
        if self.is_finished and not self.awaits_evidence():
            return False
        fields: dict[str, Any] = {
            "follow_wanted": True,
            "follow_seq": models.F("follow_seq") + 1,
            "updated_at": timezone.now(),
        }
        if snapshot:
            fields["follow_snapshot"] = True
        # An UPDATE, not save(): the follower writes this row concurrently.
        updated = Run.objects.filter(pk=self.pk).filter(Run.followable()).update(**fields)
        if updated:
            self.follow_wanted = True
            self.follow_snapshot = self.follow_snapshot or snapshot
        return bool(updated)


def request_follow_many(run_pks: Iterable[int]) -> int:
    """`request_follow` for the runs of a batch of settled forms, in one UPDATE."""
    pks = sorted(set(run_pks))
    if not pks:
        return 0
    return (
        Run.objects.filter(pk__in=pks)
        .exclude(status__in=Run.FINAL_STATUSES)
        .update(
            follow_wanted=True,
            follow_seq=models.F("follow_seq") + 1,
            follow_snapshot=True,
            updated_at=timezone.now(),
        )
    )


def request_follow(run: Run | int) -> None:
    """After a form is settled the run moves on in Dify: have the follower reopen its stream
    with a state snapshot, so it catches the next pause or the end."""
    if not isinstance(run, Run):
        found = Run.objects.filter(pk=run).first()
        if found is None:
            return
        run = found
    run.request_follow(snapshot=True)


def answered_elsewhere_reason(form: Form, action_id: str = "", action_text: str = "") -> Reason:
    """Why a decision was not taken: Dify's form had been answered another way first."""
    if action_id:
        return Reason(
            gettext_noop(
                "This form was answered in Dify before this decision arrived: %(action)s."
            ),
            action=action_text or form.action_title(action_id),
        )
    return Reason(gettext_noop("This form was answered in Dify before this decision arrived."))


class FormNotOpen(Exception):
    """A decision was refused because the form is no longer open to one.

    `message` is written for the reviewer in the active language ("Bob already decided this
    form at 14:02: Approve"); `reason` is the same in English, as a decision stores it;
    `decision` is the decision that got there first, when there is one.
    """

    def __init__(self, reason: Reason, *, decision: Decision | None = None) -> None:
        self.reason = reason
        self.message = translated(reason, reason.parts())
        super().__init__(self.message)
        self.decision = decision

    def __str__(self) -> str:
        return self.message


def _when(value: Any) -> str:
    """A time as a reviewer reads it: the clock time today, the date too on another day."""
    local = timezone.localtime(value)
    zone = timezone.get_current_timezone_name()
    if local.date() == timezone.localdate():
        return f"{formats.date_format(local, 'H:i')} {zone}"
    # The clock as on other days, not the format's "7:28 p.m.", whose period doubles the
    # sentence's; the zone named, as every time the inbox shows is (an API client reads the
    # server's).
    return f"{formats.date_format(local, 'SHORT_DATE_FORMAT')} {formats.date_format(local, 'H:i')} {zone}"


# --- routing: who is asked about a form ---

_OFFSET_UNITS = {"d": 86400, "h": 3600, "m": 60}
# A reminder is sent that long before expiry (or, for a form that never expires, after the first
# email) at most: a larger one would only be a typo, and a date out of any calendar.
MAX_OFFSET_SECONDS = 366 * 86400


class OffsetTooLong(ValueError):
    """A part of a reminder schedule longer than `MAX_OFFSET_SECONDS`."""


# As typed with a Chinese input method: full-width letters, digits, commas and spaces read as
# their ASCII forms (as NFKC folds them), and the enumeration comma "、" as a comma.
_HALF_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {
    0x3000: " ",
    0x3001: ",",
}


def offsets_text(offsets: list[int]) -> str:
    """Seconds before expiry as a route's reminders are typed: [86400, 3120] → "1d, 52m"."""
    parts = []
    for seconds in offsets:
        for unit, size in _OFFSET_UNITS.items():
            if seconds and seconds % size == 0:
                parts.append(f"{seconds // size}{unit}")
                break
        else:
            parts.append(f"{seconds}s")
    return ", ".join(parts)


def parse_offsets(text: str) -> list[int]:
    """`"24h,1h"` as seconds before expiry, largest first; with a full-width comma or "、" too.
    Raises ValueError on a bad part (`OffsetTooLong` for one over a year)."""
    offsets: set[int] = set()
    for part in (text or "").translate(_HALF_WIDTH).replace(" ", "").split(","):
        if not part:
            continue
        unit = part[-1].lower()
        number = part[:-1]
        # ASCII digits only: "²".isdigit() is true, and int() refuses it.
        if unit not in _OFFSET_UNITS or not (number.isascii() and number.isdigit()):
            raise ValueError(part)
        seconds = int(number) * _OFFSET_UNITS[unit]
        if seconds <= 0:
            raise ValueError(part)
        if seconds > MAX_OFFSET_SECONDS:
            raise OffsetTooLong(part)
        offsets.add(seconds)
    return sorted(offsets, reverse=True)


def validate_offsets(text: str) -> None:
    try:
        parse_offsets(text)
    except OffsetTooLong as exc:
        raise ValidationError(
            _("“%(part)s” is more than a year; reminders are at most 366d before expiry.")
            % {"part": exc.args[0]}
        ) from None
    except ValueError as exc:
        raise ValidationError(
            _("“%(part)s” is not a time before expiry; write e.g. 2d, 24h or 30m, comma-separated.")
            % {"part": exc.args[0]}
        ) from None


@functools.lru_cache(maxsize=256)
def title_pattern(pattern: str) -> re.Pattern[str]:
    """A node title pattern as its help text promises: `*` any run of characters, `?` any one,
    every other character itself (fnmatch would read "[EU]" as a set), in any case."""
    parts = (re.escape(c) if c not in "*?" else (".*" if c == "*" else ".") for c in pattern)
    return re.compile("".join(parts).casefold(), re.DOTALL)


class RouteQuerySet(models.QuerySet["Route"]):
    def asking_nobody(self, *, without_groups: typing.Iterable[int] = ()) -> RouteQuerySet:
        """Active routes whose forms would wait where only administrators see them: no active
        reviewer by name, no group with an active member, no email address. EXISTS, so a route
        is one row.

        `without_groups`: as if those groups (ids) were deleted, which takes only their rows
        with them (what a group's delete page says beforehand, deleting nothing)."""
        users = Route.users.through.objects.filter(route_id=OuterRef("pk"), user__is_active=True)
        groups = Route.groups.through.objects.filter(
            route_id=OuterRef("pk"), group__user__is_active=True
        )
        gone = list(without_groups)
        if gone:
            groups = groups.exclude(group_id__in=gone)
        addresses = RouteRecipient.objects.filter(route_id=OuterRef("pk"))
        return (
            self.filter(is_active=True)
            .exclude(Exists(users))
            .exclude(Exists(groups))
            .exclude(Exists(addresses))
        )


class Route(models.Model):
    """Who is asked about the forms of an app: reviewers who see them in the inbox, addresses
    that get an email, and when to remind them. The route without a node is the app's default,
    used when no node route matches."""

    app = models.ForeignKey(
        DifyApp, on_delete=models.CASCADE, related_name="routes", verbose_name=_("app")
    )
    name = models.CharField(_("name"), max_length=100)
    node = models.CharField(
        _("node"),
        max_length=255,
        blank=True,
        help_text=_(
            "A node id, or a pattern for node titles (* and ? as wildcards, any case). Empty: "
            "the app's default route, used when no other route matches."
        ),
    )
    priority = models.PositiveIntegerField(
        _("priority"),
        default=100,
        help_text=_("Node routes of an app are tried lowest first; the first that matches wins."),
    )
    groups = models.ManyToManyField(
        "auth.Group", blank=True, related_name="inbox_routes", verbose_name=_("reviewer groups")
    )
    users = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="inbox_routes",
        verbose_name=_("reviewers"),
    )
    email_reviewers = models.BooleanField(
        _("email the reviewers"),
        default=False,
        help_text=_("Also email every routed reviewer (users and group members) with an address."),
    )
    language = models.CharField(
        _("language of reviewer emails"),
        max_length=16,
        choices=settings.LANGUAGES,
        default=settings.LANGUAGE_CODE,
        help_text=_(
            "For reviewers who have not used the inbox yet; the others get their emails in "
            "their own language, as their reviewer profile gives it."
        ),
    )
    allow_guests = models.BooleanField(
        _("guests may answer"),
        default=False,
        help_text=_(
            "Recipients without an account may answer through the link in their email. "
            "Otherwise the link only works for people who sign in."
        ),
    )
    reminders = models.CharField(
        _("reminders"),
        max_length=100,
        blank=True,
        default="24h,1h",
        validators=[validate_offsets],
        help_text=_(
            "Times before expiry to remind those who have not answered, e.g. 24h,1h. A form "
            "that never expires is reminded of that long after its first email instead."
        ),
    )
    is_active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    objects = RouteQuerySet.as_manager()

    class Meta:
        ordering = ["app__name", "priority", "id"]
        verbose_name = _("route")
        verbose_name_plural = _("routes")
        constraints = [
            models.UniqueConstraint(
                fields=["app"],
                condition=Q(node=""),
                name="route_one_default_per_app",
                violation_error_message=_(
                    "This app already has a default route (one without a node). Give this "
                    "route a node id or title pattern, or add these reviewers to the default "
                    "route."
                ),
            )
        ]

    def __str__(self) -> str:
        # Outside the f-string, so makemessages finds it.
        default = gettext("default")
        return f"{self.app} · {self.node or default} · {self.name}"

    def audit_values(self) -> dict[str, Any]:
        """Who may decide, as the trail keeps it before and after a change: who gained or lost
        it, not only that "users" changed. Read from the database, not from what was prefetched
        before a change."""
        return {
            "users": sorted(self.users.values_list("username", flat=True)),
            "groups": sorted(self.groups.values_list("name", flat=True)),
            "recipients": sorted(self.recipients.values_list("email", flat=True)),
            "allow_guests": self.allow_guests,
            "is_active": self.is_active,
        }

    @property
    def is_default(self) -> bool:
        return not self.node

    def clean(self) -> None:
        super().clean()
        if not self.node or not self.is_active or not self.app_id:
            return
        # Two active routes for the same node: the one tried first always wins, and the other
        # would never ask anyone, whatever its reviewers.
        same = (
            Route.objects.filter(app_id=self.app_id, is_active=True, node__iexact=self.node)
            .exclude(pk=self.pk)
            .first()
        )
        if same is not None:
            raise ValidationError(
                {
                    "node": _(
                        "The route “%(name)s” of this app already routes this node: only one of "
                        "the two would ever be used. Change that route's reviewers, or give this "
                        "one another node."
                    )
                    % {"name": same.name}
                }
            )

    @property
    def reminder_offsets(self) -> list[int]:
        try:
            return parse_offsets(self.reminders)
        except ValueError:
            return []

    def matches(self, node_id: str, node_title: str) -> bool:
        if not self.node:
            return True
        if self.node == node_id:
            return True
        return title_pattern(self.node).fullmatch(node_title.casefold()) is not None

    @classmethod
    def for_node(cls, app_id: int, node_id: str, node_title: str) -> Route | None:
        """The app's first active node route that matches, else its default route."""
        routes = list(cls.objects.filter(app_id=app_id, is_active=True).order_by("priority", "id"))
        for route in routes:
            if route.node and route.matches(node_id, node_title):
                return route
        return next((route for route in routes if not route.node), None)


# Who a route asks, as the rows Django makes for its reviewers and groups: named in the admin's
# list of what deleting an app or a route takes with it ("Route reviewer: alice"), in place of
# Django's "Route_users object (1)". Not a schema change: such rows have no migration options.
def _route_reviewer_str(self: Any) -> str:
    return str(self.user.get_username())


def _route_group_str(self: Any) -> str:
    return str(self.group.name)


for _through, _name, _plural, _str in (
    (Route.users.through, _("route reviewer"), _("route reviewers"), _route_reviewer_str),
    (Route.groups.through, _("route reviewer group"), _("route reviewer groups"), _route_group_str),
):
    _through._meta.verbose_name = _name
    _through._meta.verbose_name_plural = _plural
    _through.__str__ = _str  # type: ignore[method-assign]


class RouteRecipient(models.Model):
    """An address a route emails; it may belong to no account (a guest)."""

    route = models.ForeignKey(
        Route, on_delete=models.CASCADE, related_name="recipients", verbose_name=_("route")
    )
    email = models.EmailField(_("email"))
    language = models.CharField(
        _("language"), max_length=16, choices=settings.LANGUAGES, default=settings.LANGUAGE_CODE
    )

    class Meta:
        ordering = ["email"]
        verbose_name = _("email recipient")
        verbose_name_plural = _("email recipients")
        constraints = [
            models.UniqueConstraint(fields=["route", "email"], name="route_recipient_unique")
        ]

    def __str__(self) -> str:
        return self.email


class ClaimRefused(Exception):
    """A claim or release was refused; `message` is written for the reviewer."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# How `FormQuerySet.for_user` checks a reviewer's forms (see `probes_routing`): the routed rows
# are counted up to ROUTED_COUNT_CAP; probing wins once routed² >= PROBE_FACTOR * forms.
ROUTED_COUNT_CAP = 100_000
PROBE_FACTOR = 200


def _group_ids_of(user: Any) -> models.QuerySet[Any]:
    """The user's group ids, read from the membership table alone: `user.groups` joins the
    group table too, and inside a per-form probe that join costs a third of an inbox count."""
    from django.contrib.auth import get_user_model

    return get_user_model().groups.through.objects.filter(user_id=user.pk).values("group_id")


def _routed_through_groups(user: Any) -> int:
    """How many forms are routed to the user's groups, counted up to ROUTED_COUNT_CAP and
    cached for five minutes: it only picks the faster query, never what the query returns."""
    from django.core.cache import cache

    key = f"inbox:routed-through-groups:{user.pk}"
    count: int | None = cache.get(key)
    if count is None:
        count = (
            Form.assigned_groups.through.objects.filter(group_id__in=_group_ids_of(user))
            .order_by()[:ROUTED_COUNT_CAP]
            .count()
        )
        cache.set(key, count, 300)
    return count


def _forms_estimate() -> int:
    """About how many forms there are, cached for five minutes: PostgreSQL's own estimate
    (instant, kept by ANALYZE), an exact count elsewhere or before the first ANALYZE."""
    from django.core.cache import cache

    key = "inbox:forms-estimate"
    count: int | None = cache.get(key)
    if count is None:
        count = -1
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples FROM pg_class WHERE oid = %s::regclass",
                    [Form._meta.db_table],
                )
                row = cursor.fetchone()
            count = int(row[0]) if row and row[0] is not None else -1
        if count <= 0:
            count = Form.objects.order_by()[:ROUTED_COUNT_CAP].count()
        cache.set(key, count, 300)
    return count


class RoutedTo(models.Expression):
    """True when a form is routed to the user, by name or through one of their groups: the
    condition of `FormQuerySet.for_user`, written as SQL once. (Holding a form gives no access
    of its own: a holder who loses it, taken off the group, is released, `release_lost_claims`.)

    The same condition built from querysets (two EXISTS over the routing tables, a union, the
    user's groups) costs Django 2.5 ms to assemble and as much again to compile, on every
    page, several times a page; this compiles in microseconds. The form's columns are source
    expressions, so the table alias is the right one wherever the condition is used (a subquery
    under another alias included). `probe`: one EXISTS over a UNION ALL, probed per form
    through the routing indexes, instead of two EXISTS that PostgreSQL hashes whole (see
    `for_user`)."""

    conditional = True
    output_field = models.BooleanField()

    def __init__(self, user_id: int, *, probe: bool) -> None:
        super().__init__()
        self.user_id = user_id
        self.probe = probe
        self.pk: Any = models.F("pk")

    def get_source_expressions(self) -> list[Any]:
        return [self.pk]

    def set_source_expressions(self, exprs: typing.Sequence[Any]) -> None:
        (self.pk,) = exprs

    def as_sql(
        self, compiler: Any, connection: Any, *, member_ids_once: bool = False
    ) -> tuple[str, tuple[Any, ...]]:
        from django.contrib.auth import get_user_model

        quote = connection.ops.quote_name
        form_sql, form_params = compiler.compile(self.pk)
        users = quote(Form.assigned_users.through._meta.db_table)
        groups = quote(Form.assigned_groups.through._meta.db_table)
        members = quote(get_user_model().groups.through._meta.db_table)
        # Only table names and compiled columns are formatted in; the user id is a parameter.
        # Aliases of their own: the form's alias (say U0 inside a subquery) is never shadowed.
        member_ids = f"SELECT member.group_id FROM {members} member WHERE member.user_id = %s"  # noqa: S608
        if member_ids_once:
            # An uncorrelated ARRAY(...) is an InitPlan: the user's groups are read once per
            # statement, and each probe is one index lookup on (form, group), instead of a
            # join with the membership table per form (a third of a capped count's time).
            in_groups = f"= ANY(ARRAY({member_ids}))"
        else:
            in_groups = f"IN ({member_ids})"
        by_user = (
            f"SELECT 1 FROM {users} routed_u "  # noqa: S608
            f"WHERE routed_u.form_id = {form_sql} AND routed_u.user_id = %s"
        )
        by_group = (
            f"SELECT 1 FROM {groups} routed_g "  # noqa: S608
            f"WHERE routed_g.form_id = {form_sql} AND routed_g.group_id {in_groups}"
        )
        if self.probe:
            sql = f"EXISTS({by_user} UNION ALL {by_group})"
        else:
            sql = f"(EXISTS({by_user}) OR EXISTS({by_group}))"
        uid = self.user_id
        return sql, (*form_params, uid, *form_params, uid)

    def as_postgresql(self, compiler: Any, connection: Any) -> tuple[str, tuple[Any, ...]]:
        return self.as_sql(compiler, connection, member_ids_once=self.probe)


def probes_routing(user: Any) -> bool:
    """Whether `for_user` checks this (non-staff) reviewer's forms one at a time through the
    routing indexes, rather than hashing every routing row of their groups first.

    A page of fifty probes about 50 * forms / routed forms before it is full, at about 3 µs
    each; the hash costs about 1 µs per routed row, on every statement. Probing is cheaper once
    routed² >= PROBE_FACTOR * forms: at 100k forms, a team routed 4,500 of them or more (one
    in ten: 27 ms a page instead of 36)."""
    routed = _routed_through_groups(user)
    return routed * routed >= PROBE_FACTOR * _forms_estimate()


def routing_is_dense(user: Any) -> bool:
    """Most forms are routed to this reviewer: a capped count stops early in a status index."""
    return 2 * _routed_through_groups(user) >= _forms_estimate()


class FormQuerySet(models.QuerySet["Form"]):
    def for_user(self, user: Any, *, probe: bool | None = None) -> FormQuerySet:
        """The forms this user may see. Every page and API call goes through here.

        Staff see every form (they route, reassign and audit). A reviewer sees the forms routed
        to them or to one of their groups (a form they hold too: taken off the group, they are
        released from it, `release_lost_claims`; reassigned to them, it is routed to them). EXISTS rather than joins: a
        form routed to a user and two of their groups is still one row, with no DISTINCT.

        Few forms routed to the user's groups: PostgreSQL hashes those routing rows once and
        checks each form against the hash. Many: hashing every routing row costs 50 ms at 100k
        before the first form is read, so one EXISTS over a UNION ALL is probed through the
        (form, user) and (form, group) indexes one form at a time, and a page of fifty, a
        capped count or the newest change stops after a few probes. Both return the same forms;
        `probe` picks one (the tab counts, which read far more forms than a page, do).
        """
        if user is None or not user.is_authenticated or not user.is_active:
            return self.none()
        if user.is_staff:
            return self
        if probe is None:
            probe = probes_routing(user)
        return self.filter(RoutedTo(user.pk, probe=probe))

    def asked_of_nobody(self, *, without_groups: typing.Iterable[int] = ()) -> FormQuerySet:
        """Forms nobody who can answer is asked about: no route took them, or theirs names no
        one (its group deleted or emptied, its reviewers deactivated, its list empty), and no
        email link opens them (`FormRecipient.still_asked`). Only staff see them. EXISTS, so a
        form is one row.

        An account's link opens the form while the account may see it: while it is routed to
        the form by name or through a group (counted by the first two EXISTS already) or is
        staff. A reviewer taken off the group the form went to, or deactivated, keeps their
        link row (not withdrawn) but can answer no more. A guest's link opens it while the
        form's route is on, lets guests answer and still lists the address, and no deactivated
        account owns the address.

        `without_groups`: as if those groups (ids) were deleted. That takes their assignment
        rows and memberships only: a link row stays, and the account's own access (by name,
        another group, staff) is what it was, so it opens the form or not as said above."""
        from django.contrib.auth import get_user_model

        users = Form.assigned_users.through.objects.filter(
            form_id=OuterRef("pk"), user__is_active=True
        )
        groups = Form.assigned_groups.through.objects.filter(
            form_id=OuterRef("pk"), group__user__is_active=True
        )
        gone = list(without_groups)
        if gone:
            groups = groups.exclude(group_id__in=gone)
        listed = RouteRecipient.objects.filter(
            route_id=OuterRef("form__route_id"), email__iexact=OuterRef("email")
        )
        turned_away = get_user_model().objects.filter(
            email__iexact=OuterRef("email"), is_active=False
        )
        guest = Q(
            Exists(listed),
            ~Exists(turned_away),
            user__isnull=True,
            form__route__is_active=True,
            form__route__allow_guests=True,
        )
        links = FormRecipient.objects.filter(
            guest | Q(user__is_active=True, user__is_staff=True),
            form_id=OuterRef("pk"),
            withdrawn_at__isnull=True,
        )
        return self.exclude(Exists(users)).exclude(Exists(groups)).exclude(Exists(links))

    def assigned_to(self, user: Any) -> FormQuerySet:
        """The inbox's "assigned to me": forms the user holds or that were routed to them by
        name (not only through a group)."""
        return self.filter(assigned_to_q(user))


def assigned_to_q(user: Any) -> Q:
    """The condition behind `FormQuerySet.assigned_to`, for querysets typed as plain QuerySet."""
    if user is None or not user.is_authenticated:
        return Q(pk__in=[])
    by_user = Form.assigned_users.through.objects.filter(form_id=OuterRef("pk"), user_id=user.pk)
    return Q(claimed_by=user) | Q(Exists(by_user))


def release_lost_claims(user_ids: typing.Iterable[int], *, actor: Any = None) -> int:
    """Release the open forms these users hold but may no longer see (taken off the group the
    form went to, deactivated, no longer staff): the others asked stop seeing it as taken, and
    the former holder, who cannot open it, is no longer reminded of it. `actor`: the
    administrator whose change caused it, for the trail. Returns how many."""
    from django.contrib.auth import get_user_model

    released = 0
    for user in get_user_model().objects.filter(pk__in=list(user_ids)):
        held = Form.objects.filter(claimed_by=user, status=Form.Status.PENDING)
        if not held.exists():
            continue
        lost = held.exclude(pk__in=Form.objects.for_user(user).values("pk"))
        for form in list(lost.only("pk", "run_id")):
            if Form.objects.filter(pk=form.pk, claimed_by=user).update(
                claimed_by=None, updated_at=timezone.now()
            ):
                AuditEntry.record(
                    "form_released",
                    form,
                    actor=actor,
                    previous=user.get_username(),
                    reason="lost_access",
                )
                released += 1
    return released


def run_end_closing(
    run_status: str, finished_at: dt.datetime | None, expiration_time: dt.datetime | None
) -> str:
    """`Form.closed_by_run_end` of an expired form from its run's status and end and its own
    deadline (an inbox row has these as values, not objects)."""
    if run_status not in ("stopped", "failed"):
        return ""
    if expiration_time is not None and (finished_at is None or expiration_time <= finished_at):
        return ""
    return str(run_status)


class Form(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        SUBMITTING = "submitting", _("Submitting")
        SUBMITTED = "submitted", _("Submitted")
        EXPIRED = "expired", _("Expired")
        ANSWERED_ELSEWHERE = "answered_elsewhere", _("Answered elsewhere")
        NOT_ANSWERABLE = "not_answerable", _("Only answerable in Dify")
        FAILED = "failed", _("Delivery failed")
        # Dify no longer knows its run (deleted there, or Dify's data reset): nothing can be
        # sent (`Run.gone_from_dify`).
        GONE = "gone", _("Gone from Dify")

    # Closed for good: nothing is sent for such a form again, so its token (a bearer
    # capability in Dify) is let go as it closes, and a stream's replay does not bring it back.
    # A form whose delivery failed keeps its token (an administrator may retry or reopen it),
    # and so does one only answerable in Dify (it has none until a token arrives).
    TOKEN_DROPPED = (Status.SUBMITTED, Status.EXPIRED, Status.ANSWERED_ELSEWHERE, Status.GONE)

    public_id = models.UUIDField(
        default=uuid.uuid4, unique=True, editable=False, verbose_name=_("public id")
    )
    run = models.ForeignKey(
        Run, on_delete=models.CASCADE, related_name="forms", verbose_name=_("run")
    )
    form_id = models.CharField(_("Dify form id"), max_length=64, unique=True)
    # A bearer capability: whoever holds it can answer the form. Encrypted, never rendered.
    # Sealed when no key of this process opens it: the form's pages still open, and every call
    # to Dify with it fails as FormTokenUnreadable, nothing sent (a delivery waits for the key).
    form_token = EncryptedTextField(blank=True, default="", seal_unreadable=True)
    node_id = models.CharField(max_length=128, verbose_name=_("node id"))
    node_title = models.CharField(max_length=255, blank=True, verbose_name=_("node title"))
    content = models.TextField(blank=True, verbose_name=_("content"))
    definition = models.JSONField(default=dict, blank=True, verbose_name=_("definition"))
    # When the definition last came from GET form (which resolves variable-sourced select
    # options and defaults); null while only the stream event's copy is stored.
    definition_fetched_at = models.DateTimeField(
        null=True, blank=True, verbose_name=_("definition fetched at")
    )
    approval_channels = models.JSONField(
        default=list, blank=True, verbose_name=_("approval channels")
    )
    expiration_time = models.DateTimeField(
        null=True, blank=True, db_index=True, verbose_name=_("expiration time")
    )
    status = models.CharField(
        max_length=24, choices=Status.choices, default=Status.PENDING, verbose_name=_("status")
    )
    rendered_content = models.TextField(blank=True, verbose_name=_("rendered content"))
    filled_action_id = models.CharField(
        max_length=64, blank=True, verbose_name=_("filled action id")
    )
    filled_action_text = models.CharField(
        max_length=255, blank=True, verbose_name=_("filled action text")
    )
    filled_data = models.JSONField(default=dict, blank=True, verbose_name=_("filled data"))
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="claimed_forms",
        verbose_name=_("claimed by"),
    )
    # Routing, fixed when the form is captured: later route edits do not move existing forms.
    route = models.ForeignKey(
        Route,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="forms",
        verbose_name=_("route"),
    )
    assigned_users = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="assigned_forms",
        verbose_name=_("assigned users"),
    )
    assigned_groups = models.ManyToManyField(
        "auth.Group", blank=True, related_name="assigned_forms", verbose_name=_("assigned groups")
    )
    allow_guests = models.BooleanField(default=False, verbose_name=_("allow guests"))
    reminder_offsets = models.JSONField(
        default=list, blank=True, verbose_name=_("reminder offsets")
    )
    routed_at = models.DateTimeField(null=True, blank=True, verbose_name=_("routed at"))
    created_at = models.DateTimeField(
        auto_now_add=True, db_index=True, verbose_name=_("created at")
    )
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))
    decided_at = models.DateTimeField(null=True, blank=True, verbose_name=_("decided at"))
    # The last time the reconcile asked Dify about this form (GET form), to find forms answered
    # in Dify directly when the follower saw nothing.
    checked_at = models.DateTimeField(null=True, blank=True, verbose_name=_("checked at"))

    objects = FormQuerySet.as_manager()

    class Meta:
        verbose_name = _("form")
        verbose_name_plural = _("forms")
        ordering = ["expiration_time", "created_at"]
        permissions = [
            ("reassign_form", _("Can reassign forms")),
            ("resend_form_emails", _("Can resend the emails of forms")),
        ]
        indexes = [
            models.Index(fields=["status", "expiration_time"]),
            models.Index(fields=["status", "created_at"]),
            # The inbox poll asks "anything newer than what I have?": MAX(updated_at) from an index.
            models.Index(fields=["updated_at"]),
        ]

    def __str__(self) -> str:
        # Its public id (the one its page's address and the API give), not Dify's form id.
        return gettext("%(title)s (%(id)s)") % {
            "title": self.node_title or self.node_id,
            "id": self.public_id,
        }

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.form_token and self.status in self.TOKEN_DROPPED:
            self.form_token = ""
            if kwargs.get("update_fields") is not None:
                kwargs["update_fields"] = [*kwargs["update_fields"], "form_token"]
        if not self._state.adding or self.routed_at is not None:
            super().save(*args, **kwargs)
            return
        # Whatever creates a form (the follower's capture, an ingest, the demo) routes it in
        # the same transaction: a form is never visible before its reviewers are known. The
        # route is chosen first and inserted with the form: inserted once, routed once.
        with transaction.atomic(savepoint=False):
            route = Route.for_node(self.run.app_id, self.node_id, self.node_title)
            for name, value in self._routing(route).items():
                setattr(self, name, value)
            super().save(*args, **kwargs)
            self._assign(route)

    def get_absolute_url(self) -> str:
        """The form's page (the admin's "view on site"); our id, never Dify's token."""
        return reverse("inbox:form", args=[self.public_id])

    @property
    def is_answerable(self) -> bool:
        return bool(self.form_token)

    @property
    def closed_by_run_end(self) -> str:
        """ "stopped" or "failed" for an expired form that closed because its run was stopped or
        failed while it waited (Dify marks a form left waiting at a run's end as expired), not
        because its time ran out: no timeout path was taken. Else "". A form whose time ran out
        before its run failed later on keeps its timeout."""
        if self.status != Form.Status.EXPIRED:
            return ""
        return run_end_closing(self.run.status, self.run.finished_at, self.expiration_time)

    # --- routing and claims ---

    def on_captured(self) -> None:
        """Route a form stored without `save()` (a bulk insert): store who is asked (reviewers,
        groups, email recipients) and queue the emails once the transaction commits. Runs once
        per form; calling it again does nothing."""
        # No savepoint of its own: a failure here undoes what the caller's transaction wrote.
        with transaction.atomic(savepoint=False):
            route = Route.for_node(self.run.app_id, self.node_id, self.node_title)
            routing = self._routing(route)
            # The conditional update is the once-only guard, race-free without a row lock, and
            # stores the route in the same statement.
            if not Form.objects.filter(pk=self.pk, routed_at__isnull=True).update(**routing):
                return
            for name, value in routing.items():
                setattr(self, name, value)
            self._assign(route)

    @staticmethod
    def _routing(route: Route | None) -> dict[str, Any]:
        routing: dict[str, Any] = {"routed_at": timezone.now()}
        if route is not None:
            routing.update(
                route=route,
                allow_guests=route.allow_guests,
                reminder_offsets=route.reminder_offsets,
            )
        return routing

    def _assign(self, route: Route | None) -> None:
        """Who `route` asks, for this form just routed (see `save` and `on_captured`)."""
        from django.contrib.auth import get_user_model

        with transaction.atomic(savepoint=False):
            if route is None:
                AuditEntry.record("form_unrouted", self, reason="no route for the app")
                return
            user_model = get_user_model()
            users = {u.pk: u for u in route.users.filter(is_active=True)}
            groups = list(route.groups.all())
            # email (lower case) -> (address, language, account)
            wanted: dict[str, tuple[str, str, Any]] = {}
            for listed in route.recipients.all():
                wanted.setdefault(listed.email.lower(), (listed.email, listed.language, None))
            if route.email_reviewers:
                reviewers = (
                    user_model.objects.filter(is_active=True)
                    .filter(Q(pk__in=list(users)) | Q(groups__in=groups))
                    .exclude(email="")
                    .distinct()
                )
                spoken = ReviewerProfile.languages_of(reviewers)
                for reviewer in reviewers:
                    wanted.setdefault(
                        reviewer.email.lower(),
                        (reviewer.email, spoken.get(reviewer.pk, route.language), reviewer),
                    )
            # An address that belongs to exactly one active account is that person: they sign
            # in and find the form in their inbox instead of answering as a guest.
            # An address of a deactivated account (and of no active one) is not asked at all:
            # its owner was turned away, and the address would make them a guest.
            accounts: dict[str, list[Any]] = {}
            turned_away: set[str] = set()
            for account in user_model.objects.annotate(email_lower=Lower("email")).filter(
                email_lower__in=[key for key, v in wanted.items() if v[2] is None]
            ):
                if account.is_active:
                    accounts.setdefault(account.email.lower(), []).append(account)
                else:
                    turned_away.add(account.email.lower())
            recipients = []
            skipped = []
            # The zone each address's browser last gave a link's pages (one query).
            zones = FormRecipient.zones_of(wanted)
            for key, (email, language, account) in wanted.items():
                if account is None and key in turned_away and key not in accounts:
                    skipped.append(email)
                    continue
                if account is None and len(accounts.get(key, [])) == 1:
                    account = accounts[key][0]
                    # Asked by address: that person is assigned. (A reviewer emailed as one of
                    # the route's users or groups is assigned through those already, and loses
                    # the form with them.)
                    users.setdefault(account.pk, account)
                    language = ReviewerProfile.languages_of([account]).get(account.pk, language)
                recipients.append(
                    FormRecipient(
                        form=self,
                        email=email,
                        language=language,
                        user=account,
                        time_zone=zones.get(key, ""),
                    )
                )
            # Added, not set: a form is routed once, before anyone could assign it (set() would
            # read the assignments it replaces first).
            self.assigned_users.add(*users.values())
            self.assigned_groups.add(*groups)
            FormRecipient.objects.bulk_create(recipients, ignore_conflicts=True)
            AuditEntry.record(
                "form_routed",
                self,
                route=route.pk,
                users=sorted(u.get_username() for u in users.values()),
                groups=sorted(g.name for g in groups),
                recipients=len(recipients),
                **({"not_asked_deactivated": ", ".join(skipped)} if skipped else {}),
            )
            if recipients and self.is_answerable:
                pk = self.pk
                transaction.on_commit(lambda: FormRecipient.enqueue_emails(pk))

    def held_by_other(self, user: Any) -> Any:
        """The reviewer who took the form, when it is someone other than `user` (who is asked
        to confirm before deciding it, on the pages); else None."""
        if self.claimed_by_id is None or user is None or self.claimed_by_id == user.pk:
            return None
        return self.claimed_by

    def claim(self, user: Any) -> None:
        """Take the form, so others see it is being handled, and asked to confirm before they
        decide it on the pages (the API decides without asking, its form JSON naming the
        holder). Raises ClaimRefused when another reviewer holds it or it no longer takes a
        decision."""
        with transaction.atomic():
            form = Form.objects.select_for_update().get(pk=self.pk)
            if form.status != Form.Status.PENDING:
                raise ClaimRefused(gettext("This form is no longer open."))
            if form.claimed_by_id == user.pk:
                self.claimed_by = user
                return
            if form.claimed_by_id is not None:
                holder = form.claimed_by
                who = display_name(holder) if holder else "?"
                raise ClaimRefused(worded(gettext("%(who)s has already taken this form."), who=who))
            form.claimed_by = user
            form.save(update_fields=["claimed_by", "updated_at"])
            AuditEntry.record("form_claimed", form, actor=user)
        self.claimed_by = user
        self.updated_at = form.updated_at

    def release(self, user: Any) -> None:
        """Give the form back to everyone it is routed to. Only its holder or staff may."""
        with transaction.atomic():
            form = Form.objects.select_for_update().get(pk=self.pk)
            if form.claimed_by_id is None:
                self.claimed_by = None
                return
            if form.claimed_by_id != user.pk and not user.is_staff:
                raise ClaimRefused(gettext("Only the reviewer who took this form can release it."))
            previous = form.claimed_by.get_username() if form.claimed_by else None
            form.claimed_by = None
            form.save(update_fields=["claimed_by", "updated_at"])
            AuditEntry.record("form_released", form, actor=user, previous=previous)
        self.claimed_by = None
        self.updated_at = form.updated_at

    def reassign(
        self,
        *,
        to_user: Any = None,
        groups: Any = None,
        actor: Any = None,
        language: str | None = None,
    ) -> bool:
        """An administrator's reassignment: the form is routed to `to_user` (who also holds it)
        and `groups` instead of whoever had it. Only a form still waiting for a decision here
        (False otherwise, nothing changed): who was asked about a closed one is its record.
        `language`: `to_user`'s email language, when the caller looked it up once for many."""
        groups = list(groups or [])
        users_through = Form.assigned_users.through
        groups_through = Form.assigned_groups.through
        with transaction.atomic():
            # The holder and the run (named in the trail) come with the row (one query, not
            # three); only the form's row is locked.
            form = (
                Form.objects.select_for_update(of=("self",))
                .select_related("claimed_by", "run", "route")
                .defer(*(f"run__{name}" for name in _RUN_BULK_FIELDS))
                .get(pk=self.pk)
            )
            if form.status != Form.Status.PENDING or form.is_expired:
                return False
            had_users = dict(
                users_through.objects.filter(form_id=form.pk).values_list(
                    "user_id", "user__username"
                )
            )
            had_groups = dict(
                groups_through.objects.filter(form_id=form.pk).values_list(
                    "group_id", "group__name"
                )
            )
            previous = {
                "users": sorted(had_users.values()),
                "groups": sorted(had_groups.values()),
                "claimed_by": form.claimed_by.get_username() if form.claimed_by else None,
            }
            # The routing rows written directly rather than through `.set()`, which reads them
            # again before each change: a bulk reassignment of thousands of forms pays per form.
            # Nothing listens to these tables' m2m signals.
            user_ids = {to_user.pk} if to_user is not None else set()
            group_ids = {g.pk for g in groups}
            if set(had_users) - user_ids:
                users_through.objects.filter(form_id=form.pk).exclude(user_id__in=user_ids).delete()
            if user_ids - set(had_users):
                users_through.objects.bulk_create(
                    [users_through(form_id=form.pk, user_id=pk) for pk in user_ids - set(had_users)]
                )
            if set(had_groups) - group_ids:
                groups_through.objects.filter(form_id=form.pk).exclude(
                    group_id__in=group_ids
                ).delete()
            if group_ids - set(had_groups):
                groups_through.objects.bulk_create(
                    [
                        groups_through(form_id=form.pk, group_id=pk)
                        for pk in group_ids - set(had_groups)
                    ]
                )
            form.claimed_by = to_user
            form.save(update_fields=["claimed_by", "updated_at"])
            withdrawn, emailed = form._ask_again(to_user, groups, language)
            # Whose links closed and who is emailed, when anyone: addresses, never a link.
            links: dict[str, Any] = {"withdrawn": withdrawn, "emailed": emailed}
            AuditEntry.record(
                "form_reassigned",
                form,
                actor=actor,
                previous=previous,
                users=[to_user.get_username()] if to_user is not None else [],
                groups=sorted(g.name for g in groups),
                **{name: value for name, value in links.items() if value},
            )
        # What changed, without reading the row again.
        self.status, self.claimed_by, self.updated_at = form.status, to_user, form.updated_at
        self.__dict__.pop("_prefetched_objects_cache", None)
        return True

    def _ask_again(
        self, to_user: Any, groups: list[Any], language: str | None
    ) -> tuple[list[str], list[str]]:
        """The email links of a form `reassign` just routed to `to_user` and `groups`: whoever
        is no longer asked (anyone but `to_user` and the groups' active members; guests too) is
        withdrawn, their link closed and their reminders stopped; those still asked keep their
        link and reminders. `to_user`, and the groups' members when the form's route emails its
        reviewers, are emailed if they have no open link (a link withdrawn by an earlier
        reassignment is opened again, with a new email). Returns the addresses withdrawn and
        those to be emailed, for the trail."""
        from django.contrib.auth import get_user_model

        asked: dict[int, Any] = {}
        if groups:
            members = get_user_model().objects.filter(is_active=True, groups__in=groups).distinct()
            asked = {member.pk: member for member in members}
        if to_user is not None:
            asked[to_user.pk] = to_user
        # Read once, then written only where something changes.
        recipients = list(self.recipients.values_list("pk", "email", "user_id", "withdrawn_at"))
        withdrawn = [
            (pk, email)
            for pk, email, user_id, was_withdrawn in recipients
            if was_withdrawn is None and user_id not in asked
        ]
        if withdrawn:
            FormRecipient.objects.filter(pk__in=[pk for pk, _email in withdrawn]).update(
                withdrawn_at=timezone.now(), next_reminder_at=None
            )
        route = self.route
        emailing = [
            user
            for user in asked.values()
            if user.email and (user is to_user or (route is not None and route.email_reviewers))
        ]
        if not emailing or not self.is_answerable:
            return sorted(email for _pk, email in withdrawn), []
        by_email = {email.lower(): (pk, was) for pk, email, _u, was in recipients}
        new: list[Any] = []
        reopened: dict[int, Any] = {}
        for user in emailing:
            pk, was_withdrawn = by_email.get(user.email.lower(), (None, None))
            if pk is None:
                new.append(user)
            elif was_withdrawn is not None:
                reopened[pk] = user
        if not new and not reopened:
            return sorted(email for _pk, email in withdrawn), []
        asking = new + list(reopened.values())
        if language is not None and asking == [to_user]:
            spoken = {to_user.pk: language}  # looked up once by the caller, for many forms
        else:
            spoken = ReviewerProfile.languages_of(asking)
        fallback = route.language if route is not None else settings.LANGUAGE_CODE
        # The form's row is locked, so the addresses are still missing; ignoring a conflict
        # rather than catching it keeps the transaction usable regardless.
        FormRecipient.objects.bulk_create(
            [
                FormRecipient(
                    form=self,
                    email=user.email,
                    user=user,
                    language=spoken.get(user.pk, fallback),
                )
                for user in new
            ],
            ignore_conflicts=True,
        )
        for pk, user in reopened.items():
            # Asked again after an earlier reassignment withdrew them: a new first email, and
            # the reminders from it.
            FormRecipient.objects.filter(pk=pk).update(
                user=user,
                language=spoken.get(user.pk, fallback),
                withdrawn_at=None,
                sent_at=None,
                send_attempts=0,
                next_send_at=None,
                last_error="",
                reminders_sent=[],
                reminded_at=None,
                next_reminder_at=None,
                closed_notice_at=None,
            )
        pk = self.pk
        transaction.on_commit(lambda: FormRecipient.enqueue_emails(pk))
        return (
            sorted(email for _pk, email in withdrawn),
            sorted(user.email for user in asking),
        )

    @property
    def is_expired(self) -> bool:
        return self.expiration_time is not None and self.expiration_time <= timezone.now()

    @property
    def expired_at(self) -> dt.datetime | None:
        """When the form's time ran out: its `expiration_time`, or, when Dify closed it sooner
        (a timeout of its own), when the inbox recorded that. None for a form not expired."""
        if self.status == self.Status.EXPIRED:
            times = [t for t in (self.expiration_time, self.updated_at) if t is not None]
            return min(times) if times else None
        if self.status == self.Status.PENDING and self.is_expired:
            return self.expiration_time
        return None

    @property
    def status_now(self) -> str:
        """The status as a page shows it: a pending form whose time has run out is expired,
        before the sweep records it so."""
        if self.status == self.Status.PENDING and self.is_expired:
            return str(self.Status.EXPIRED)
        return str(self.status)

    @property
    def status_now_label(self) -> str:
        return str(self.Status(self.status_now).label)

    def action_title(self, action_id: str) -> str:
        """The button text of an action, as the definition (or Dify's filled event) names it."""
        if action_id and action_id == self.filled_action_id and self.filled_action_text:
            return self.filled_action_text
        definition = self.definition if isinstance(self.definition, dict) else {}
        for action in definition.get("user_actions") or definition.get("actions") or []:
            if isinstance(action, dict) and action.get("id") == action_id:
                return str(action.get("title") or action_id)
        return action_id

    def decide(
        self,
        *,
        action_id: str,
        inputs: dict[str, Any],
        reviewer: Any = None,
        guest_email: str = "",
        submission_key: str | None = None,
        signed_in: Any = None,
    ) -> Decision:
        """Record a reviewer's decision and queue its delivery to Dify.

        `signed_in`: for a guest's decision, who was signed in here when it was made (the
        guest's link was forwarded to them); the audit trail names them, with the guest's
        address beside.

        The decision is the outbox: it is stored, with the form moved to `submitting`, in one
        transaction under the form's row lock, and the delivery task is queued only once that
        commits. A repeated post with the same `submission_key` returns the decision it made.
        Raises `FormNotOpen` when the form cannot take a decision (someone got there first, it
        expired, it was answered in Dify). Inputs are trusted: the caller's form class checked
        them against the definition.
        """
        submission_key = submission_key or None
        try:
            with transaction.atomic():
                # The lock serialises concurrent reviewers; the loser waits here, then reads the
                # winner's decision below.
                form = Form.objects.select_for_update().get(pk=self.pk)
                if submission_key:
                    existing = Decision.objects.filter(submission_key=submission_key).first()
                    if existing is not None:
                        if existing.form_id != form.pk:
                            raise ValueError("submission key belongs to another form")
                        return existing
                refusal = form.refusal()
                if refusal is not None:
                    raise refusal
                decider = reviewer if getattr(reviewer, "is_authenticated", False) else None
                decision = Decision.objects.create(
                    form=form,
                    reviewer=decider,
                    reviewer_username=decider.get_username() if decider else "",
                    reviewer_name=display_name(decider) if decider else "",
                    guest_email=guest_email,
                    action_id=action_id,
                    inputs=inputs,
                    submission_key=submission_key,
                    status=Decision.Status.QUEUED,
                    next_attempt_at=database_now(),
                )
                form.status = Form.Status.SUBMITTING
                form.save(update_fields=["status", "updated_at"])
                pressed = signed_in if getattr(signed_in, "is_authenticated", False) else None
                if reviewer is None and pressed is not None:
                    AuditEntry.record(
                        "decision_made",
                        decision,
                        actor=pressed,
                        form=str(form.public_id),
                        action=action_id,
                        guest=guest_email,
                    )
                else:
                    AuditEntry.record(
                        "decision_made",
                        decision,
                        actor=reviewer,
                        actor_label=guest_email,
                        form=str(form.public_id),
                        action=action_id,
                    )
                transaction.on_commit(lambda: Decision.enqueue(decision.pk))
        except IntegrityError:
            # The database constraint caught what the lock did not (a backend without row
            # locks, or the same page posted twice in the same instant).
            if submission_key:
                existing = Decision.objects.filter(submission_key=submission_key).first()
                if existing is not None and existing.form_id == self.pk:
                    return existing
            form = Form.objects.get(pk=self.pk)
            raise form.refusal(force=True) from None
        self.status = form.status
        self.updated_at = form.updated_at
        return decision

    @classmethod
    def enqueue_check(cls, form_pk: int) -> None:
        """Queue one GET form for the form (`tasks.check_form`). A broker that is down loses
        nothing: the form reconcile asks about it in its time."""
        from inbox.tasks import check_form

        try:
            check_form.apply_async((form_pk,))
        except Exception as exc:
            _not_queued(exc, "form %s: check not queued", form_pk)

    @classmethod
    def answer_unknown(cls) -> models.QuerySet[Form]:
        """Forms answered in Dify (not through this inbox) whose action Dify has not shown us
        yet: their run's events, read once more, may still show it (a fill, or the Human Input
        node's outputs, which newer Dify builds replay from the run's start)."""
        return cls.objects.filter(status=cls.Status.ANSWERED_ELSEWHERE, filled_action_id="")

    def learn_answer(
        self, filled: dict[str, Any], *, evidence: str, source: str, at: dt.datetime | None = None
    ) -> list[str]:
        """Dify's events (`evidence`: a `human_input_form_filled`, the Human Input node's
        `node_finished` outputs) show how this form, answered in Dify, was answered: its action
        (id and title), the content with the values in place, the values, and (`at`) when.
        Recorded where not known yet, on the object (the caller saves the fields returned),
        and in the trail once the action is learnt. Call with the run's row locked."""
        action_id = str(filled.get("filled_action_id") or "")[:64]
        if self.status != Form.Status.ANSWERED_ELSEWHERE or not action_id:
            return []
        learnt = not self.filled_action_id
        if self.filled_action_id and self.filled_action_id != action_id:
            return []
        fields: list[str] = []
        values = {
            "filled_action_id": action_id,
            "filled_action_text": str(
                filled.get("filled_action_text") or self.action_title(action_id)
            )[:255],
            "rendered_content": str(filled.get("rendered_content") or ""),
        }
        for name, value in values.items():
            if value and not getattr(self, name):
                setattr(self, name, value)
                fields.append(name)
        data = filled.get("filled_data")
        if isinstance(data, dict) and data and not self.filled_data:
            self.filled_data = data
            fields.append("filled_data")
        if at is not None and (self.decided_at is None or at < self.decided_at):
            self.decided_at = at
            fields.append("decided_at")
        if learnt:
            AuditEntry.record(
                "form_answer_learnt",
                self,
                action=action_id,
                evidence=evidence,
                source=source,
            )
        return fields

    def close_in_dify(self, status: str, *, reason: str, source: str, **filled: str) -> bool:
        """Dify says this pending form is closed (answered there, or expired): record it.

        `filled` may carry what is known of the other answer (`filled_action_id`,
        `filled_action_text`, `rendered_content`). False when the form was no longer pending
        (a reviewer's decision got there first; delivery settles that one)."""
        with transaction.atomic():
            form = Form.objects.select_for_update().filter(pk=self.pk).first()
            if form is None or form.status != Form.Status.PENDING:
                return False
            fields = ["status", "updated_at"]
            for name, value in filled.items():
                if value and not getattr(form, name):
                    setattr(form, name, value)
                    fields.append(name)
            form.status = status
            form.checked_at = timezone.now()
            form.save(update_fields=[*fields, "checked_at"])
            AuditEntry.record(
                f"form_{status}", form, previous="pending", reason=reason, source=source
            )
        request_follow(form.run_id)
        self.refresh_from_db()
        return True

    @typing.overload
    def refusal(
        self, *, force: typing.Literal[True], guest: str | None = None, reader: Any = None
    ) -> FormNotOpen: ...
    @typing.overload
    def refusal(
        self, *, force: bool = False, guest: str | None = None, reader: Any = None
    ) -> FormNotOpen | None: ...
    def refusal(
        self, *, force: bool = False, guest: str | None = None, reader: Any = None
    ) -> FormNotOpen | None:
        """Why this form cannot take a decision now, in the reviewer's words; None if it can.
        `force`: the database refused a decision, so there is a reason even if the form looks
        open (a decision made by another path). `guest`: told to that guest, who is not told
        who else decided (`Decision.decider_label_for`). `reader`: the reviewer told; their own
        decision (made in another tab, say) is theirs ("You already decided"), as a guest's is."""
        status = self.status
        # Past its time or not answerable here, a pending form says so even when forced: its
        # timeout may simply not be recorded yet.
        if force and status == Form.Status.PENDING and not self.is_expired and self.is_answerable:
            status = Form.Status.SUBMITTING
        if status == Form.Status.PENDING:
            if self.is_expired:
                return FormNotOpen(
                    Reason(
                        gettext_noop("This form expired at %(time)s."),
                        time=_when(self.expiration_time),
                    )
                )
            if not self.is_answerable:
                return FormNotOpen(
                    Reason(gettext_noop("This form cannot be answered from the inbox."))
                )
            return None
        winner = (
            self.decisions.select_related("reviewer")
            .filter(status__in=(*Decision.ACTIVE_STATUSES, Decision.Status.FAILED))
            .order_by("-created_at")
            .first()
        )
        if status in (Form.Status.SUBMITTING, Form.Status.SUBMITTED) and winner is not None:
            if winner.made_by(reader, guest):
                return FormNotOpen(
                    Reason(
                        gettext_noop("You already decided this form at %(time)s: %(action)s"),
                        time=_when(winner.created_at),
                        action=self.action_title(winner.action_id),
                    ),
                    decision=winner,
                )
            return FormNotOpen(
                Reason(
                    gettext_noop("%(who)s already decided this form at %(time)s: %(action)s"),
                    who=winner.decider_label_for(guest, sentence_start=True) or gettext("Someone"),
                    time=_when(winner.created_at),
                    action=self.action_title(winner.action_id),
                ),
                decision=winner,
            )
        if status == Form.Status.EXPIRED:
            when = self.expired_at or self.updated_at
            return FormNotOpen(
                Reason(gettext_noop("This form expired at %(time)s."), time=_when(when))
            )
        if status == Form.Status.FAILED and winner is not None:
            return FormNotOpen(
                Reason(
                    gettext_noop(
                        "%(who)s's decision (%(action)s) could not be delivered to Dify; "
                        "an administrator can retry it."
                    ),
                    who=winner.decider_label_for(guest, sentence_start=True) or gettext("Someone"),
                    action=self.action_title(winner.action_id),
                ),
                decision=winner,
            )
        if status == Form.Status.NOT_ANSWERABLE:
            return FormNotOpen(Reason(gettext_noop("This form cannot be answered from the inbox.")))
        if status == Form.Status.GONE:
            return FormNotOpen(
                Reason(gettext_noop("Dify no longer knows this form's run; nothing can be sent."))
            )
        if status == Form.Status.SUBMITTING:
            return FormNotOpen(Reason(gettext_noop("Someone else decided this form first.")))
        if self.filled_action_id:
            return FormNotOpen(
                Reason(
                    gettext_noop("This form was answered in Dify: %(action)s"),
                    action=self.action_title(self.filled_action_id),
                )
            )
        return FormNotOpen(Reason(gettext_noop("This form was answered in Dify.")))


# Run columns a delivery never reads (deferred when a decision is locked with its run).
_RUN_BULK_FIELDS = ("inputs", "query", "outputs", "answer", "error", "error_parts", "timeline")


# Who a form asks, and who is in a group, as the rows Django makes for them: named in the
# admin's list of what deleting a group or an account takes with it ("Form reviewer group:
# Manager approval (…) · @finance"), in place of Django's "Form_assigned_groups object (15)".
# Not a schema change, as for a route's rows above.
def _form_reviewer_str(self: Any) -> str:
    return f"{self.form} · {self.user.get_username()}"


def _form_group_str(self: Any) -> str:
    return f"{self.form} · @{self.group.name}"


def _membership_str(self: Any) -> str:
    return f"{self.user.get_username()} · @{self.group.name}"


_form_throughs: tuple[tuple[Any, Any, Any, Any], ...] = (
    (Form.assigned_users.through, _("form reviewer"), _("form reviewers"), _form_reviewer_str),
    (
        Form.assigned_groups.through,
        _("form reviewer group"),
        _("form reviewer groups"),
        _form_group_str,
    ),
)
for _through, _name, _plural, _str in _form_throughs:
    _through._meta.verbose_name = _name
    _through._meta.verbose_name_plural = _plural
    _through.__str__ = _str  # type: ignore[method-assign]


def name_memberships() -> None:
    """A user's group memberships named likewise ("carol · @finance", not "User_groups object
    (5)"), once the user model is known (`InboxConfig.ready`)."""
    from django.contrib.auth import get_user_model

    through = get_user_model().groups.through
    through._meta.verbose_name = _("group membership")
    through._meta.verbose_name_plural = _("group memberships")
    through.__str__ = _membership_str  # type: ignore[method-assign]


# A delayed task queued without the due time it waited for (sent before tasks carried it) may
# start a little before its decision's due time (Celery counts a countdown by the clocks of the
# host that sent it and the one that runs it): still its turn. One run earlier than this sends
# nothing; the decision goes at the next pump or sweep. Tasks that carry `due` compare no clocks.
_DUE_TOLERANCE = dt.timedelta(seconds=2)
# A form's fields a delivery never reads: its text as shown, and what routing and reminders use.
_FORM_DISPLAY_FIELDS = (
    "content",
    "rendered_content",
    "approval_channels",
    "filled_data",
    "reminder_offsets",
)


# A decision no key of the process opens is looked at again this often (seconds).
KEY_RECHECK_SECONDS = 60.0


def _secrets_readable(form: Form) -> None:
    """DecryptionError, naming the app (and the form), when this process cannot decrypt the
    secrets a delivery of the form's decision needs: its app's API key, its token."""
    app = form.run.app
    app.readable_api_key()
    readable(form.form_token, of=f"form {form.pk} of the app {app.label}")


class Decision(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        DELIVERING = "delivering", _("Delivering")
        DELIVERED = "delivered", _("Delivered")
        REJECTED = "rejected", _("Rejected")
        FAILED = "failed", _("Failed")

    ACTIVE_STATUSES = ("queued", "delivering", "delivered")

    public_id = models.UUIDField(
        default=uuid.uuid4, unique=True, editable=False, verbose_name=_("public id")
    )
    form = models.ForeignKey(
        Form, on_delete=models.CASCADE, related_name="decisions", verbose_name=_("form")
    )
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="decisions",
        verbose_name=_("reviewer"),
    )
    # Who decided as they were named then: the record of who decided outlives their account
    # (deleted, `reviewer` then null). Empty for a guest's decision.
    reviewer_username = models.CharField(
        max_length=150, blank=True, verbose_name=_("reviewer's username")
    )
    reviewer_name = models.CharField(max_length=300, blank=True, verbose_name=_("reviewer's name"))
    guest_email = models.EmailField(blank=True, verbose_name=_("guest email"))
    action_id = models.CharField(max_length=64, verbose_name=_("action id"))
    inputs = models.JSONField(default=dict, blank=True, verbose_name=_("inputs"))
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.QUEUED, verbose_name=_("status")
    )
    attempts = models.PositiveIntegerField(default=0, verbose_name=_("attempts"))
    # Why the last attempt failed or the decision was refused, in English (administrators, the
    # audit trail and the API read it so); `last_error_parts` keeps the message it was made from
    # and its values, for a page in the reviewer's language (`last_error_text`).
    last_error = models.TextField(blank=True, verbose_name=_("last error"))
    last_error_parts = models.JSONField(
        default=dict, blank=True, verbose_name=_("last error parts")
    )
    # The page's one-time key: a double click or a browser resubmit finds the same decision.
    submission_key = models.CharField(
        max_length=64, null=True, blank=True, unique=True, verbose_name=_("submission key")
    )
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))
    # delivery_started_at and next_attempt_at are written and compared by the database's clock
    # (see `database_now`): one process writes them, another on another host compares.
    delivery_started_at = models.DateTimeField(
        null=True, blank=True, verbose_name=_("delivery started at")
    )
    delivered_at = models.DateTimeField(null=True, blank=True, verbose_name=_("delivered at"))
    # When a queued decision is next due: the sweep re-sends a queued decision whose task was lost
    # (broker restart, publish failure) once this is well past.
    next_attempt_at = models.DateTimeField(null=True, blank=True, verbose_name=_("next attempt at"))
    # An attempt ended without a definite answer (timeout, dropped connection, 5xx, a worker
    # killed mid-call): Dify may have applied it. A later 412 "already submitted" is then checked
    # against the run's events before it is called someone else's answer.
    maybe_applied = models.BooleanField(default=False, verbose_name=_("maybe applied"))
    # The last attempt never reached Dify (connection refused, connect timed out): it waits out
    # its backoff only until a delivery to the same app gets through again.
    dify_unreachable = models.BooleanField(default=False, verbose_name=_("dify unreachable"))
    # Dify refused the app's key or the app itself (`DifyStatusError.refuses_app`: a revoked key,
    # an unpublished app): the decision waits, with no due time, until Dify accepts the app again
    # (`release_held`). What an administrator fixes in the app's settings fails no decision.
    held_for_app = models.BooleanField(_("held until Dify accepts its app"), default=False)
    # When its maker was told that it failed for good (`inbox.notify.send_failure_notice`):
    # set once the email went (or was given up, or there was nobody to tell), so it goes once.
    failure_notice_at = models.DateTimeField(
        null=True, blank=True, verbose_name=_("failure notice sent at")
    )
    # The notice's sends so far, and when it may next be sent: while one is being sent, the end
    # of that claim (the task and the sweep never both send it; a worker killed mid-send leaves
    # it to a later sweep); after a failed send, the end of its wait. None: now.
    failure_notice_attempts = models.PositiveIntegerField(
        default=0, verbose_name=_("failure notice attempts")
    )
    failure_notice_next_at = models.DateTimeField(
        null=True, blank=True, verbose_name=_("failure notice next send at")
    )

    class Meta:
        verbose_name = _("decision")
        verbose_name_plural = _("decisions")
        ordering = ["-created_at"]
        permissions = [("retry_decision", _("Can retry the delivery of decisions"))]
        constraints = [
            # At most one decision per form may be on its way or delivered: the database, not
            # only the row lock, refuses a second one.
            models.UniqueConstraint(
                fields=["form"],
                condition=Q(status__in=["queued", "delivering", "delivered"]),
                name="decision_one_active_per_form",
            )
        ]
        indexes = [
            models.Index(fields=["status", "updated_at"]),
            # The delivery pump's queue: the due decisions, oldest first.
            models.Index(fields=["status", "next_attempt_at"], name="decision_due_idx"),
        ]

    def __str__(self) -> str:
        # The button the reviewer chose, its status in the reader's language, the public id.
        return worded(
            gettext("%(action)s (%(status)s) · %(id)s"),
            action=self.action_title,
            status=str(self.get_status_display()),
            id=str(self.public_id),
        )

    def audit_repr(self) -> str:
        """What the audit trail calls the decision: the button and the public id, the same
        whatever its status is then (the entry's details keep that, as a code: `status`)."""
        return f"{self.action_title} · {self.public_id}"

    @property
    def action_title(self) -> str:
        """The chosen action as its button read ("Approve refund"), not its id."""
        return self.form.action_title(self.action_id)

    @property
    def last_error_text(self) -> str:
        """`last_error` in the active language, as a reviewer's page shows it."""
        return translated(self.last_error, self.last_error_parts)

    @property
    def decider_label(self) -> str:
        if self.reviewer_id and self.reviewer:
            return display_name(self.reviewer)
        # A reviewer whose account was deleted since: named as they were when they decided.
        return self.reviewer_name or self.reviewer_username or self.guest_email

    @property
    def by_reviewer(self) -> bool:
        """Decided by a reviewer (signed in), not a guest through an emailed link; still so once
        the reviewer's account is deleted."""
        return bool(self.reviewer_id or self.reviewer_username)

    @property
    def decider_username(self) -> str | None:
        """The deciding reviewer's username (as it is now, or as it was if their account is
        gone); None for a guest."""
        if self.reviewer_id and self.reviewer:
            return str(self.reviewer.get_username())
        return self.reviewer_username or None

    @functools.cached_property
    def delivery_presumed(self) -> bool:
        """Delivered by presumption: an attempt's answer was lost, Dify then said the form was
        already submitted, and nothing Dify showed said whose answer it took
        (`tasks._settle_already_submitted`). Told to readers rather than passed off as
        confirmed. No longer once Dify's events showed our action filling the form
        (`settle_presumption`: a `delivery_confirmed` entry)."""
        if self.status != Decision.Status.DELIVERED or not self.maybe_applied:
            return False
        entries = AuditEntry.objects.filter(object_type="decision", object_id=str(self.pk))
        return (
            entries.filter(
                verb="decision_delivered", details__confirmed_by__startswith="presumed"
            ).exists()
            and not entries.filter(verb="delivery_confirmed").exists()
        )

    @classmethod
    def presumed(cls) -> Q:
        """`delivery_presumed` as a filter: the decisions delivered by presumption that Dify's
        events have neither confirmed nor corrected yet (a correction rejects the decision)."""
        entries = AuditEntry.objects.filter(
            object_type="decision", object_id=Cast(OuterRef("pk"), models.CharField())
        )
        return (
            Q(status=cls.Status.DELIVERED, maybe_applied=True)
            & Q(
                Exists(
                    entries.filter(
                        verb="decision_delivered", details__confirmed_by__startswith="presumed"
                    )
                )
            )
            & ~Q(Exists(entries.filter(verb="delivery_confirmed")))
        )

    @classmethod
    def unsettled_presumptions(cls) -> models.QuerySet[Decision]:
        """The decisions delivered by presumption (`delivery_presumed`) that Dify's events have
        neither confirmed nor contradicted yet, on forms still taken for submitted, as one query
        (a subquery of the follower's)."""
        return cls.objects.filter(cls.presumed(), form__status=Form.Status.SUBMITTED)

    @classmethod
    def presumed_on(cls, form: Form) -> Decision | None:
        """The form's decision delivered by presumption (`delivery_presumed`) whose presumption
        Dify's events have neither confirmed nor contradicted yet; None for any other form."""
        if form.status != Form.Status.SUBMITTED:
            return None
        decision = (
            cls.objects.filter(form=form, status=cls.Status.DELIVERED, maybe_applied=True)
            .order_by("-created_at")
            .first()
        )
        return decision if decision is not None and decision.delivery_presumed else None

    def settle_presumption(
        self, form: Form, filled: dict[str, Any], *, evidence: str, source: str
    ) -> str:
        """Dify's events (`evidence`: a `human_input_form_filled`, the node's `node_finished`
        outputs) show which action filled the form of this decision, delivered by presumption.
        Ours: the presumption is confirmed ("confirmed"). Another one: Dify did not take this
        decision, and the record is corrected as for any decision Dify did not take
        ("corrected"): the decision is rejected, the form answered elsewhere with Dify's
        action, and those emailed about the form (its maker among them) get the closing notice
        anew, which now says how it was answered. Call with the run's row locked (capture);
        `form` is updated in place."""
        action_id = filled.get("filled_action_id") or ""
        if not action_id or form.status != Form.Status.SUBMITTED:
            return ""
        if self.matches_answer(filled):
            AuditEntry.record(
                "delivery_confirmed",
                self,
                form=str(form.public_id),
                confirmed_by=evidence,
                source=source,
            )
            return "confirmed"
        action_text = filled.get("filled_action_text") or form.action_title(action_id)
        now = timezone.now()
        self.status = self.Status.REJECTED
        self.last_error, self.last_error_parts = stored(
            answered_elsewhere_reason(form, action_id, action_text),
            lambda text: redact_secret(text, form.form_token),
        )
        self.delivered_at = None
        self.updated_at = now
        self.save(
            update_fields=["status", "last_error", "last_error_parts", "delivered_at", "updated_at"]
        )
        previous = form.status
        form.status = Form.Status.ANSWERED_ELSEWHERE
        form.filled_action_id = action_id[:64]
        form.filled_action_text = action_text[:255]
        fields = ["status", "filled_action_id", "filled_action_text", "updated_at"]
        if filled.get("rendered_content") and filled["rendered_content"] != form.rendered_content:
            form.rendered_content = filled["rendered_content"]
            fields.append("rendered_content")
        form.updated_at = now
        form.save(update_fields=fields)
        AuditEntry.objects.bulk_create(
            [
                AuditEntry.build(
                    "decision_rejected",
                    self,
                    form=str(form.public_id),
                    attempts=self.attempts,
                    reason=self.last_error,
                    code="human_input_form_submitted",
                    corrected="presumed delivery",
                    evidence=evidence,
                    action=action_id,
                    source=source,
                ),
                AuditEntry.build(
                    "form_answered_elsewhere",
                    form,
                    decision=self.pk,
                    previous=previous,
                    action=action_id,
                    reason=self.last_error,
                    source=source,
                ),
            ]
        )
        # Those told it was decided (its maker, as its maker, was spared that notice) are told
        # how it was answered: the closing notice of a form answered elsewhere.
        FormRecipient.objects.filter(form=form, closed_notice_at__isnull=False).update(
            closed_notice_at=None, notice_attempts=0
        )
        logger.warning(
            "decision %s: presumed delivered, but Dify's %s shows another action (%s): "
            "recorded as answered elsewhere",
            self.pk,
            evidence,
            action_id,
        )
        return "corrected"

    def matches_answer(self, filled: dict[str, Any]) -> bool:
        """Whether the answer Dify's evidence shows filled the form (`filled_action_id`, and
        `filled_data`: the values, where Dify carries them, in a fill's `submitted_data` or the
        node's outputs) is this decision: the same action, and each text value this decision
        sent the same where Dify shows it (files are not compared: Dify writes them its own
        way)."""
        if (filled.get("filled_action_id") or "") != self.action_id:
            return False
        data = filled.get("filled_data")
        ours = self.inputs if isinstance(self.inputs, dict) else {}
        if not isinstance(data, dict):
            return True
        for name, value in ours.items():
            theirs = data.get(name)
            if isinstance(value, str) and isinstance(theirs, str) and value != theirs:
                return False
        return True

    @classmethod
    def refused_as_answered(cls, form: Form) -> Decision | None:
        """The form's last decision, when Dify refused it because the form had been answered
        there already (412 `human_input_form_submitted`) while the inbox knew nothing of how:
        Dify's events, read later, may show that the answer was this very decision (delivered
        by an earlier attempt whose success was never recorded here: a database restored from
        a backup taken while it was on its way). None otherwise."""
        if form.status != Form.Status.ANSWERED_ELSEWHERE:
            return None
        decision = cls.objects.filter(form=form).order_by("-created_at", "-pk").first()
        if decision is None or decision.status != cls.Status.REJECTED:
            return None
        refused = AuditEntry.objects.filter(
            object_type="decision",
            object_id=str(decision.pk),
            verb="decision_rejected",
            details__code="human_input_form_submitted",
        ).exists()
        return decision if refused else None

    def correct_rejection(
        self, form: Form, filled: dict[str, Any], *, evidence: str, source: str
    ) -> bool:
        """Dify's events show the form this decision was refused for (`refused_as_answered`)
        was answered with this decision (`matches_answer`): it was delivered after all. The
        decision becomes delivered, the form submitted with it, the trail says it was
        corrected, and those already told the form was answered elsewhere are told anew how it
        was decided (its maker is spared, as for any decision of theirs). Call with the run's
        row locked (capture); `form` is updated in place. False when it does not match."""
        if form.status != Form.Status.ANSWERED_ELSEWHERE or not self.matches_answer(filled):
            return False
        now = timezone.now()
        updated = Decision.objects.filter(pk=self.pk, status=self.Status.REJECTED).update(
            status=self.Status.DELIVERED,
            last_error="",
            last_error_parts={},
            delivered_at=now,
            updated_at=now,
        )
        if not updated:
            return False
        self.status, self.last_error, self.last_error_parts = self.Status.DELIVERED, "", {}
        self.delivered_at = self.updated_at = now
        previous = form.status
        form.status = Form.Status.SUBMITTED
        form.decided_at = self.created_at
        form.filled_action_id = self.action_id
        form.filled_action_text = str(
            filled.get("filled_action_text") or form.action_title(self.action_id)
        )[:255]
        fields = ["status", "decided_at", "filled_action_id", "filled_action_text", "updated_at"]
        if filled.get("rendered_content") and not form.rendered_content:
            form.rendered_content = str(filled["rendered_content"])
            fields.append("rendered_content")
        data = filled.get("filled_data")
        if isinstance(data, dict) and data and not form.filled_data:
            form.filled_data = data
            fields.append("filled_data")
        form.updated_at = now
        form.save(update_fields=fields)
        AuditEntry.objects.bulk_create(
            [
                AuditEntry.build(
                    "decision_delivered",
                    self,
                    form=form.pk,
                    attempts=self.attempts,
                    confirmed_by=evidence,
                    corrected="answered elsewhere",
                    source=source,
                ),
                AuditEntry.build(
                    "form_submitted",
                    form,
                    decision=self.pk,
                    previous=previous,
                    reason="",
                    source=source,
                ),
            ]
        )
        # Those told it was answered elsewhere are told how it was decided.
        FormRecipient.objects.filter(form=form, closed_notice_at__isnull=False).update(
            closed_notice_at=None, notice_attempts=0
        )
        logger.warning(
            "decision %s: refused as answered elsewhere, but Dify's %s shows its own action "
            "and values: recorded as delivered",
            self.pk,
            evidence,
        )
        return True

    def made_by(self, reviewer: Any, guest_email: str | None) -> bool:
        """Whether this decision is the reader's own: the same account, or, read as a guest
        (`guest_email`), that guest's through their link."""
        if reviewer is not None and getattr(reviewer, "pk", None) is not None:
            return self.reviewer_id == reviewer.pk
        return (
            bool(guest_email)
            and not self.by_reviewer
            and (self.guest_email.lower() == (guest_email or "").lower())
        )

    def decider_label_for(self, guest_email: str | None, *, sentence_start: bool = False) -> str:
        """Who decided, as a reader may be told it. Reviewers (`guest_email` None) read the
        name or the address. A guest, asked by email from outside, reads their own address for
        their own decision, and otherwise only "a reviewer" or "another recipient": the
        reviewers' names and the other recipients' addresses are not theirs to see."""
        if guest_email is None:
            return self.decider_label
        if not self.by_reviewer and self.guest_email.lower() == guest_email.lower():
            return self.guest_email
        label = gettext("a reviewer") if self.by_reviewer else gettext("another recipient")
        return capfirst(label) if sentence_start else label

    # --- delivery: each verb is one short transaction, form row locked before decision row, so
    # no lock is ever held across a call to Dify and two verbs cannot deadlock.

    @classmethod
    def enqueue(
        cls, pk: int, *, countdown: float | None = None, due: dt.datetime | None = None
    ) -> None:
        """Queue the decision's delivery. Due now: wake the delivery pump (`deliver_queued`),
        which sends every due decision in batches. Due later (a retry's backoff): a task of its
        own with that countdown, carrying the due time it was scheduled for (`due`, the
        decision's `next_attempt_at`), so it knows whether it is still the latest. A broker
        that is down loses nothing: the decision is stored and `sweep_deliveries` sends it
        again."""
        from inbox.tasks import deliver_decision

        if not countdown:
            DeliveryPump.wake()
            return
        try:
            deliver_decision.apply_async(
                (pk,), {"due": due.isoformat()} if due is not None else {}, countdown=countdown
            )
        except Exception as exc:
            _not_queued(exc, "decision %s: delivery not queued, the sweep will retry", pk)

    @classmethod
    def claim_due(cls, limit: int) -> tuple[list[Decision], list[int], bool]:
        """Claim up to `limit` due decisions for one attempt each, as `start_delivery` does one:
        `delivering`, attempts + 1, an audit entry each. Rows another pump holds are skipped.
        Returns the claimed decisions (with form, run and app), the due decisions whose form
        closed or expired meanwhile (which `start_delivery` settles one by one), and whether the
        queue is drained: fewer than `limit` due decisions were free, and none was passed over
        for a form another transaction held (its decision is still due, the caller claims
        again)."""
        now = timezone.now()
        db_now = database_now()
        with transaction.atomic():
            # The next ones due that nobody else holds, oldest first, from the (status,
            # next_attempt_at) index alone: however long the queue, only these rows are read.
            # Locked here, so a second pump picks the next ones, not these. (A queued decision
            # with no due time is the sweep's: it is sent again with one.)
            due = list(
                cls.objects.select_for_update(skip_locked=True)
                .filter(status=cls.Status.QUEUED, next_attempt_at__lte=db_now)
                .order_by("next_attempt_at", "pk")
                .values_list("pk", flat=True)[:limit]
            )
            if not due:
                return [], [], True
            batch = (
                cls.objects.select_for_update(skip_locked=True, of=("self", "form"))
                .select_related("form__run__app")
                .defer(
                    *(f"form__run__{name}" for name in _RUN_BULK_FIELDS),
                    *(f"form__{name}" for name in _FORM_DISPLAY_FIELDS),
                )
                .filter(status=cls.Status.QUEUED)
                .order_by("pk")
            )
            try:
                rows: list[Decision] = list(batch.filter(pk__in=due))
                for row in rows:
                    _secrets_readable(row.form)
            except DecryptionError:
                # A form token or API key this process has no key for (a rotation half done):
                # that decision waits, the rest of the batch goes.
                rows = cls._readable(batch, due, db_now)
            drained = len(due) < limit and len(rows) == len(due)
            ready = [
                d
                for d in rows
                if d.form.status == Form.Status.SUBMITTING
                and (d.maybe_applied or not d.form.is_expired)
            ]
            ready_pks = {d.pk for d in ready}
            others = [d.pk for d in rows if d.pk not in ready_pks]
            fields = {
                "status": cls.Status.DELIVERING,
                "attempts": models.F("attempts") + 1,
                "delivery_started_at": db_now,
                "next_attempt_at": None,
                "updated_at": now,
            }
            if connection.features.has_select_for_update_skip_locked:
                # The rows are locked: all of them are ours.
                cls.objects.filter(pk__in=ready_pks).update(**fields)
                claimed = ready
            else:
                # No row locks (SQLite, whose writers take turns): a row another pump claimed
                # since the read no longer matches `queued`.
                claimed = [
                    d
                    for d in ready
                    if cls.objects.filter(pk=d.pk, status=cls.Status.QUEUED).update(**fields)
                ]
            for decision in claimed:
                decision.status = cls.Status.DELIVERING
                decision.attempts += 1
                decision.delivery_started_at = db_now
                decision.next_attempt_at = None
                decision.updated_at = now
            AuditEntry.objects.bulk_create(
                [AuditEntry.build("delivery_started", d, attempt=d.attempts) for d in claimed]
            )
        return claimed, others, drained

    @classmethod
    def _wait_for_key(cls, pk: int, exc: DecryptionError, db_now: dt.datetime) -> None:
        """No encryption key of this process opens the decision's secrets: nothing is sent, no
        attempt counted. It is looked at again within a minute by a task of its own (only a
        decryption, no call to Dify), so a process restarted with the key, or another one
        that has it, sends it then rather than after the longest backoff."""
        logger.error("decision %s: not sent: %s", pk, exc)
        seconds = min(KEY_RECHECK_SECONDS, settings.INBOX_DELIVERY_RETRY_CAP_SECONDS)
        due = db_now + dt.timedelta(seconds=seconds)
        waiting = cls.objects.filter(pk=pk, status=cls.Status.QUEUED).update(
            next_attempt_at=due,
            last_error=(
                f"{exc}: this process lacks the key that encrypted it. The decision is kept and "
                "sent once the key is back in INBOX_ENCRYPTION_KEYS."
            ),
        )
        if waiting:
            transaction.on_commit(lambda: cls.enqueue(pk, countdown=seconds, due=due))

    @classmethod
    def _readable(cls, batch: Any, due: list[int], db_now: dt.datetime) -> list[Decision]:
        """The decisions of `due` whose secrets this process can decrypt, one at a time. The
        others are put off for KEY_RECHECK_SECONDS with the reason, and logged: the decision is
        kept, and goes once a process has the key again."""
        rows: list[Decision] = []
        for pk in due:
            try:
                found = list(batch.filter(pk=pk))
                for row in found:
                    _secrets_readable(row.form)
                rows.extend(found)
            except DecryptionError as exc:
                cls._wait_for_key(pk, exc, db_now)
        return rows

    @classmethod
    def _lock(cls, pk: int, *, with_run: bool = False) -> tuple[Form, Decision] | None:
        """Lock the decision and its form in one statement. Only those two rows (`of`): the run
        and app rows are shared by every form of the run, locking them would serialise
        unrelated deliveries. Every verb locks through here, so all lock in the same order."""
        queryset = cls.objects.select_for_update(of=("self", "form"))
        if with_run:
            # A delivery needs the run's ids and user, not its history: the timeline, outputs
            # and answer can be large and are decoded on every attempt otherwise.
            queryset = queryset.select_related("form__run__app").defer(
                *(f"form__run__{name}" for name in _RUN_BULK_FIELDS)
            )
        else:
            queryset = queryset.select_related("form")
        # No ORDER BY / LIMIT (`first()` would add them): the primary key selects one row.
        decision = next(iter(queryset.filter(pk=pk).order_by()), None)
        if decision is None:
            return None
        return decision.form, decision

    @classmethod
    def start_delivery(cls, pk: int, *, due: dt.datetime | None = None) -> Decision | None:
        """Claim a queued decision for one attempt: `delivering`, attempts + 1. None when there
        is nothing to send (gone, already settled, claimed by another task, form closed, or
        waiting out a newer backoff than the task's `due`)."""
        with transaction.atomic():
            locked = cls._lock(pk, with_run=True)
            if locked is None:
                return None
            form, decision = locked
            if decision.status != cls.Status.QUEUED:
                # A duplicate task (acks_late redelivery, the sweep's re-send): the first one
                # owns it.
                return None
            if decision.held_for_app:
                # Its app is refused: `release_held` makes it due when Dify accepts the app.
                logger.info("decision %s: held until Dify accepts its app again", pk)
                return None
            now = database_now()
            if due is not None:
                # The task knows which backoff it waited out: only a later one is not its turn.
                # No clocks are compared, so a worker whose clock runs ahead is not turned away.
                not_yet = decision.next_attempt_at is not None and decision.next_attempt_at > due
            else:
                # A task from before due times were carried: the clocks, with some slack.
                not_yet = decision.next_attempt_at is not None and (
                    decision.next_attempt_at > now + _DUE_TOLERANCE
                )
            if not_yet:
                # An older task (a redelivered countdown, one from before Dify was back and then
                # failed again): the decision waits out a newer backoff, whose own task sends it.
                logger.info(
                    "decision %s: not due until %s, this task is not its latest",
                    pk,
                    decision.next_attempt_at,
                )
                return None
            if form.status == Form.Status.SUBMITTING and (
                decision.maybe_applied or not form.is_expired
            ):
                try:
                    _secrets_readable(form)
                except DecryptionError as exc:
                    # As the pump does (`_readable`): not an attempt, nothing sent.
                    cls._wait_for_key(pk, exc, now)
                    return None
                decision.status = cls.Status.DELIVERING
                decision.attempts += 1
                decision.delivery_started_at = now
                decision.next_attempt_at = None
                decision.save(
                    update_fields=[
                        "status",
                        "attempts",
                        "delivery_started_at",
                        "next_attempt_at",
                        "updated_at",
                    ]
                )
                AuditEntry.record("delivery_started", decision, attempt=decision.attempts)
                return decision
            if form.status != Form.Status.SUBMITTING:
                decision._settle_with_closed_form(form)
            else:
                # Expired while queued, and nothing of ours can have reached Dify: Dify would
                # answer 412 expired, so it is not asked.
                decision._close(
                    form,
                    status=cls.Status.REJECTED,
                    form_status=Form.Status.EXPIRED,
                    reason=Reason(
                        gettext_noop("The form expired before the decision could be delivered.")
                    ),
                    verb="decision_rejected",
                )
        request_follow(form.run)
        return None

    def _settle_with_closed_form(self, form: Form) -> None:
        """The form moved on (answered in Dify, expired) while this decision waited its turn."""
        if (
            self.maybe_applied
            and form.status in (Form.Status.SUBMITTED, Form.Status.ANSWERED_ELSEWHERE)
            and form.filled_action_id == self.action_id
        ):
            # Dify's own event shows our action filled the form: an earlier attempt landed.
            self._close(
                form,
                status=self.Status.DELIVERED,
                form_status=Form.Status.SUBMITTED,
                reason="",
                verb="decision_delivered",
            )
            return
        refusal = form.refusal()
        self._close(
            form,
            status=self.Status.REJECTED,
            form_status=form.status,
            reason=refusal.reason
            if refusal
            else Reason(gettext_noop("The form is no longer open.")),
            verb="decision_rejected",
        )

    def _close(
        self, form: Form, *, status: str, form_status: str, reason: str, verb: str, **details: Any
    ) -> None:
        """Write a final (or back-to-the-reviewer) outcome. Call with both rows locked."""
        fields, form_fields, entries = self._closing(
            form, status=status, form_status=form_status, reason=reason, verb=verb, **details
        )
        self.save(update_fields=fields)
        form.save(update_fields=form_fields)
        AuditEntry.objects.bulk_create(entries)
        if status == self.Status.FAILED:
            # Its maker is told, once it is written (the sweep sends it if this is lost).
            pk = self.pk
            transaction.on_commit(lambda: Decision.enqueue_failure_notice(pk))

    def _closing(
        self, form: Form, *, status: str, form_status: str, reason: str, verb: str, **details: Any
    ) -> tuple[list[str], list[str], list[AuditEntry]]:
        """`_close`'s changes, made on the objects but not saved: the fields to write on each
        row and the audit entries, so a batch can write them together."""
        now = timezone.now()
        self.status = status
        self.last_error, self.last_error_parts = stored(
            reason, lambda text: redact_secret(text, form.form_token)
        )
        self.next_attempt_at = None
        fields = ["status", "last_error", "last_error_parts", "next_attempt_at", "updated_at"]
        if self.held_for_app:
            # Settled while it waited for its app (answered in Dify, the run stopped).
            self.held_for_app = False
            fields.append("held_for_app")
        if status == self.Status.DELIVERED:
            self.delivered_at = now
            fields.append("delivered_at")
        self.updated_at = now
        form_fields = ["status", "updated_at"]
        if status == self.Status.DELIVERED:
            form.decided_at = self.created_at
            form_fields.append("decided_at")
            if not form.filled_action_id:
                # Dify accepted it: the action that filled the form is ours.
                form.filled_action_id = self.action_id
                form.filled_action_text = form.action_title(self.action_id)
                form_fields += ["filled_action_id", "filled_action_text"]
        previous = form.status
        form.status = form_status
        form.updated_at = now
        entries = [
            AuditEntry.build(
                verb,
                self,
                form=str(form.public_id),
                attempts=self.attempts,
                reason=self.last_error,
                **details,
            )
        ]
        if previous != form_status:
            entries.append(
                AuditEntry.build(
                    f"form_{form_status}",
                    form,
                    decision=self.pk,
                    previous=previous,
                    reason=self.last_error,
                )
            )
        return fields, form_fields, entries

    @classmethod
    def finish_delivered(cls, claimed: Iterable[Decision]) -> list[Decision]:
        """`finish(pk, status=delivered, ...)` for a batch Dify accepted: every row written in
        one transaction, a statement per table. `claimed` are the decisions as `claim_due`
        returned them (with their forms): only what may have changed since is read again,
        under the row locks. Returns the decisions it settled (a decision another task settled
        meanwhile is left alone, as `finish` leaves it)."""
        by_pk = {d.pk: d for d in claimed}
        with transaction.atomic():
            # FOR UPDATE without OF locks a row of each table read: the decision and its form,
            # as `_lock` does, in the same order.
            current = (
                cls.objects.select_for_update()
                .filter(pk__in=sorted(by_pk))
                .filter(status__in=(cls.Status.QUEUED, cls.Status.DELIVERING))
                .order_by("pk")
                .values_list(
                    "pk",
                    "status",
                    "attempts",
                    "form__status",
                    "form__filled_action_id",
                    "form__filled_action_text",
                )
            )
            settled: list[Decision] = []
            for pk, status, attempts, form_status, action_id, action_text in current:
                decision = by_pk[pk]
                decision.status, decision.attempts = status, attempts
                form = decision.form
                form.status = form_status
                form.filled_action_id, form.filled_action_text = action_id, action_text
                settled.append(decision)
            if not settled:
                return []
            entries: list[AuditEntry] = []
            for decision in settled:
                entries += decision._closing(
                    decision.form,
                    status=cls.Status.DELIVERED,
                    form_status=Form.Status.SUBMITTED,
                    reason="",
                    verb="decision_delivered",
                )[2]
            # What `_closing` set is the same on every row but the time the form was decided
            # (its decision's) and the action that filled it: a statement per distinct action,
            # not one per row (nor a CASE per row and column).
            first = settled[0]
            pks = [d.pk for d in settled]
            Decision.objects.filter(pk__in=pks).update(
                status=first.status,
                last_error="",
                last_error_parts={},
                next_attempt_at=None,
                delivered_at=first.delivered_at,
                updated_at=first.updated_at,
            )
            decided_at = models.Subquery(
                Decision.objects.filter(pk__in=pks, form_id=models.OuterRef("pk")).values(
                    "created_at"
                )[:1]
            )
            by_action: dict[tuple[str, str], list[int]] = {}
            for decision in settled:
                form = decision.form
                key = (form.filled_action_id, form.filled_action_text)
                by_action.setdefault(key, []).append(form.pk)
            for (action_id, action_text), form_pks in by_action.items():
                Form.objects.filter(pk__in=form_pks).update(
                    status=Form.Status.SUBMITTED,
                    form_token="",
                    decided_at=decided_at,
                    filled_action_id=action_id,
                    filled_action_text=action_text,
                    updated_at=first.form.updated_at,
                )
            AuditEntry.objects.bulk_create(entries)
        return settled

    @classmethod
    def finish(
        cls,
        pk: int,
        *,
        status: str,
        form_status: str,
        reason: str = "",
        verb: str,
        filled: dict[str, Any] | None = None,
        presumed: bool = False,
        **details: Any,
    ) -> bool:
        """Settle a decision in flight: delivered, rejected (with why) or failed. False when it
        was already settled (a duplicate task got there first). `filled` records what Dify
        showed of the answer that filled the form (action id and text, rendered content).
        `presumed`: delivered by presumption, unless the follower recorded Dify's fill on the
        form meanwhile, which then decides: ours, delivered and confirmed; another action,
        answered elsewhere."""
        with transaction.atomic():
            locked = cls._lock(pk)
            if locked is None:
                return False
            form, decision = locked
            if decision.status not in (cls.Status.QUEUED, cls.Status.DELIVERING):
                return False
            if presumed and form.filled_action_id:
                details["confirmed_by"] = "human_input_form_filled"
                shown = {"filled_action_id": form.filled_action_id, "filled_data": form.filled_data}
                if not decision.matches_answer(shown):
                    status, form_status = cls.Status.REJECTED, Form.Status.ANSWERED_ELSEWHERE
                    verb, details["code"] = "decision_rejected", "human_input_form_submitted"
                    reason = answered_elsewhere_reason(
                        form, form.filled_action_id, form.filled_action_text
                    )
            extra = []
            for name, value in (filled or {}).items():
                if value and not getattr(form, name):
                    setattr(form, name, value)
                    extra.append(name)
            if extra:
                form.save(update_fields=extra)
            if form_status == Form.Status.PENDING and form.status != Form.Status.SUBMITTING:
                # Back to the reviewer only if nothing else closed the form meanwhile.
                form_status = form.status
            decision._close(
                form, status=status, form_status=form_status, reason=reason, verb=verb, **details
            )
        return True

    @classmethod
    def schedule_retry(
        cls, pk: int, *, error: str, delay: float, ambiguous: bool, unreachable: bool = False
    ) -> bool:
        """Put an attempt that may succeed later back in the queue, due in `delay` seconds.
        `unreachable`: it never reached Dify, so `release_unreachable` may send it sooner."""
        with transaction.atomic():
            decision = cls._requeue(
                pk,
                error=error,
                ambiguous=ambiguous,
                next_attempt_at=database_now() + dt.timedelta(seconds=delay),
                dify_unreachable=unreachable,
            )
            if decision is None:
                return False
            AuditEntry.record(
                "delivery_retry_scheduled",
                decision,
                attempt=decision.attempts,
                delay=round(delay, 3),
                error=decision.last_error,
            )
            due = decision.next_attempt_at
            transaction.on_commit(lambda: cls.enqueue(pk, countdown=delay, due=due))
        return True

    @classmethod
    def _requeue(
        cls, pk: int, *, error: str, ambiguous: bool = False, **fields: Any
    ) -> Decision | None:
        """An attempt in flight goes back to `queued` with `fields` set, its error kept (without
        the form's token). None when it is not in flight (settled or taken over meanwhile).
        Call inside a transaction: the rows stay locked until it ends."""
        locked = cls._lock(pk)
        if locked is None:
            return None
        form, decision = locked
        if decision.status != cls.Status.DELIVERING:
            return None
        decision.status = cls.Status.QUEUED
        decision.last_error, decision.last_error_parts = stored(
            error, lambda text: redact_secret(text, form.form_token)
        )
        decision.maybe_applied = decision.maybe_applied or ambiguous
        for name, value in fields.items():
            setattr(decision, name, value)
        decision.save(
            update_fields=[
                "status",
                "last_error",
                "last_error_parts",
                "maybe_applied",
                *fields,
                "updated_at",
            ]
        )
        return decision

    @classmethod
    def release_unreachable(cls, app_ids: Iterable[int]) -> int:
        """A delivery that could not reach Dify before got through for these apps: the decisions
        of theirs that wait out a backoff because Dify could not be reached are due now, and
        the pump is woken for them.
        (Those that reached Dify and were told to wait, 429 or 5xx, keep their backoff.) Their
        own delayed tasks find them settled and skip."""
        ids = sorted(set(app_ids))
        if not ids:
            return 0
        released = cls.objects.filter(
            status=cls.Status.QUEUED,
            dify_unreachable=True,
            next_attempt_at__gt=Now(),
            form__run__app_id__in=ids,
        ).update(next_attempt_at=Now(), dify_unreachable=False, updated_at=timezone.now())
        if released:
            logger.info("Dify answers again: %d waiting decision(s) due now", released)
            DeliveryPump.wake()
        return released

    @classmethod
    def hold_for_app(cls, pk: int, *, error: str) -> bool:
        """Dify refused the app this attempt was made for: the decision waits, queued with no
        due time, until `release_held` finds the app accepted again."""
        with transaction.atomic():
            decision = cls._requeue(
                pk, error=error, next_attempt_at=None, held_for_app=True, dify_unreachable=False
            )
            if decision is None:
                return False
            AuditEntry.record(
                "delivery_held", decision, attempt=decision.attempts, error=decision.last_error
            )
        return True

    @classmethod
    def release_held(cls, app_ids: Iterable[int] | None = None) -> int:
        """The decisions held for these apps (`hold_for_app`) are due now, and the pump is woken
        for them. Without `app_ids`: those of every app whose key Dify no longer refuses (a
        refusal of the app's kind, or of an app with nothing published, does not stop a
        submit), and those whose form expired meanwhile (the attempt settles them without
        asking Dify)."""
        held = cls.objects.filter(status=cls.Status.QUEUED, held_for_app=True)
        if app_ids is None:
            held = held.filter(
                Q(form__run__app__refused_at__isnull=True)
                | Q(form__run__app__refusal_code__in=sorted(SETUP_REFUSALS))
                | Q(form__expiration_time__lte=timezone.now())
            )
        else:
            ids = sorted(set(app_ids))
            if not ids:
                return 0
            held = held.filter(form__run__app_id__in=ids)
        released = held.update(next_attempt_at=Now(), held_for_app=False, updated_at=timezone.now())
        if released:
            logger.info("%d held decision(s) due now", released)
            DeliveryPump.wake()
        return released

    @classmethod
    def send_waiting_now(cls, app: DifyApp) -> int:
        """The app's decisions waiting out a retry's backoff (Dify failed or was away) are due
        now, and the pump is woken for them: an administrator's connection test just found Dify
        answering again, so nobody waits up to the backoff's cap for nothing."""
        waiting = cls.objects.filter(
            status=cls.Status.QUEUED,
            held_for_app=False,
            form__run__app=app,
            next_attempt_at__gt=Now(),
        )
        due = waiting.update(next_attempt_at=Now(), updated_at=timezone.now())
        if due:
            DeliveryPump.wake()
        return due

    @classmethod
    def resend_lost(cls, pk: int, *, due_before: dt.datetime) -> bool:
        """A queued decision long past its due time lost its task: send it again."""
        with transaction.atomic():
            locked = cls._lock(pk)
            if locked is None:
                return False
            _form, decision = locked
            due = decision.next_attempt_at or decision.updated_at
            if decision.status != cls.Status.QUEUED or decision.held_for_app or due >= due_before:
                return False
            # Due again from now: a long broker backlog is not re-sent on every sweep.
            decision.next_attempt_at = database_now()
            decision.save(update_fields=["next_attempt_at", "updated_at"])
            AuditEntry.record(
                "delivery_resent", decision, attempt=decision.attempts, due=due.isoformat()
            )
            transaction.on_commit(lambda: cls.enqueue(pk))
        return True

    @classmethod
    def recover_stuck(cls, pk: int, *, started_before: dt.datetime) -> bool:
        """A delivery left `delivering` by a worker that died mid-call goes back to the queue.
        Its call may have reached Dify, so it is marked as maybe applied."""
        with transaction.atomic():
            locked = cls._lock(pk)
            if locked is None:
                return False
            _form, decision = locked
            if (
                decision.status != cls.Status.DELIVERING
                or decision.delivery_started_at is None
                or decision.delivery_started_at >= started_before
            ):
                return False
            decision.status = cls.Status.QUEUED
            decision.maybe_applied = True
            decision.next_attempt_at = database_now()
            decision.last_error, decision.last_error_parts = stored(
                Reason(gettext_noop("The delivery was interrupted; trying again."))
            )
            decision.save(
                update_fields=[
                    "status",
                    "maybe_applied",
                    "next_attempt_at",
                    "last_error",
                    "last_error_parts",
                    "updated_at",
                ]
            )
            AuditEntry.record(
                "delivery_recovered",
                decision,
                attempt=decision.attempts,
                started_at=decision.delivery_started_at.isoformat(),
            )
            transaction.on_commit(lambda: cls.enqueue(pk))
        return True

    def total_attempts(self) -> int:
        """Every time the decision was sent: this round's `attempts` and those of the rounds
        before each retry an administrator asked (`delivery_retry_requested` keeps them)."""
        earlier = AuditEntry.objects.filter(
            verb="delivery_retry_requested", object_type="decision", object_id=str(self.pk)
        ).values_list("details__attempts_before_retry", flat=True)
        return self.attempts + sum(n for n in earlier if isinstance(n, int))

    def retry_delivery(self, *, actor: Any = None) -> bool:
        """An administrator sends a failed decision again, with a fresh retry budget."""
        with transaction.atomic():
            locked = Decision._lock(self.pk)
            if locked is None:
                return False
            form, decision = locked
            if decision.status != self.Status.FAILED or form.status != Form.Status.FAILED:
                return False
            # A fresh budget (`attempts` counts this round's sends, for the backoff); the
            # rounds before it are kept in the trail, for `total_attempts`.
            earlier = decision.attempts
            decision.status = self.Status.QUEUED
            decision.attempts = 0
            decision.next_attempt_at = database_now()
            decision.save(update_fields=["status", "attempts", "next_attempt_at", "updated_at"])
            form.status = Form.Status.SUBMITTING
            form.save(update_fields=["status", "updated_at"])
            AuditEntry.record(
                "delivery_retry_requested",
                decision,
                actor=actor,
                form=str(form.public_id),
                attempts_before_retry=earlier,
            )
            pk = decision.pk
            transaction.on_commit(lambda: Decision.enqueue(pk))
        self.refresh_from_db()
        return True

    def reopen_form(self, *, actor: Any = None) -> bool:
        """An administrator gives a form whose decision failed for good back to its reviewers
        for a new decision (Dify refused what was sent, and the form still waits there): the
        failed decision stays as the record of what was tried. Not a form past its time."""
        with transaction.atomic():
            locked = Decision._lock(self.pk)
            if locked is None:
                return False
            form, decision = locked
            if (
                decision.status != self.Status.FAILED
                or form.status != Form.Status.FAILED
                or form.is_expired
            ):
                return False
            form.status = Form.Status.PENDING
            form.claimed_by = None
            form.save(update_fields=["status", "claimed_by", "updated_at"])
            # The used links open again, in any browser: the form needs a decision again. When
            # and by whom each was used stays in the trail (`form_reopened`).
            used = form.recipients.filter(link_used_at__isnull=False).order_by("pk")
            released: list[dict[str, Any]] = [
                {"recipient": pk, "email": email, "used_at": when.isoformat() if when else None}
                for pk, email, when in used.values_list("pk", "email", "link_used_at")
            ]
            used.update(link_used_at=None)
            extra: dict[str, Any] = {"links_released": released} if released else {}
            # Those still asked are emailed again ("it needs a decision again") and their
            # reminders start over from that email (`notify._send_request`). Each row is
            # claimed as it is sent, so the task and the sweep send it once.
            asked = [
                r.pk
                for r in form.recipients.filter(withdrawn_at__isnull=True).select_related(
                    "form__route", "user"
                )
                if r.still_asked()
            ]
            form.recipients.filter(pk__in=asked).update(
                sent_at=None,
                send_attempts=0,
                next_send_at=None,
                last_error="",
                reminders_sent=[],
                next_reminder_at=None,
            )
            AuditEntry.record(
                "form_reopened",
                form,
                actor=actor,
                failed_decision=str(decision.public_id),
                recipients=len(asked),
                **extra,
            )
            if asked:
                pk = form.pk
                transaction.on_commit(lambda: FormRecipient.enqueue_emails(pk))
        self.refresh_from_db()
        return True

    @classmethod
    def enqueue_failure_notice(cls, pk: int) -> None:
        """Queue the email telling a failed decision's maker. A broker that is down loses
        nothing: the email sweep sends it."""
        from inbox.tasks import send_failure_notice

        try:
            send_failure_notice.apply_async((pk,))
        except Exception as exc:
            _not_queued(exc, "decision %s: failure notice not queued, the sweep sends it", pk)


class DeliveryPump(models.Model):
    """One row: whether a `deliver_queued` task is on its way.

    Each decision due now wakes the pump, but only the first wakes it with a message: the
    others find it already requested, and the pump takes their decisions when it starts
    (it clears the request before it reads the queue, so a decision stored after that
    read sends a new message). One message for a burst of decisions, not one each."""

    # A request older than this is taken for lost (its message never sent, or dropped with a
    # killed worker) and the next wake sends another.
    STALE_SECONDS = 10.0

    requested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("delivery pump")

    def __str__(self) -> str:
        return f"delivery pump (requested {self.requested_at})"

    @classmethod
    def wake(cls) -> bool:
        """Send the pump a message unless one is already on its way. True if this sent it."""
        from inbox.tasks import deliver_queued

        # The database's clock: the request is written on one host (web, a worker) and found
        # stale or not on another.
        stale = Now() - dt.timedelta(seconds=cls.STALE_SECONDS)
        try:
            woken = (
                cls.objects.filter(pk=1)
                .filter(Q(requested_at__isnull=True) | Q(requested_at__lt=stale))
                .update(requested_at=Now())
            )
            if not woken:
                _row, woken = cls.objects.get_or_create(
                    pk=1, defaults={"requested_at": database_now()}
                )
        except DatabaseError:
            logger.warning("delivery pump: request not recorded, sending anyway", exc_info=True)
            woken = True
        if not woken:
            return False
        try:
            deliver_queued.apply_async()
        except Exception:
            logger.warning(
                "delivery pump not woken, the next decision or the sweep will", exc_info=True
            )
            return False
        return True

    @classmethod
    def started(cls) -> None:
        """The pump runs: a decision stored from now on wakes it again."""
        cls.objects.filter(pk=1).update(requested_at=None)


class Heartbeat(models.Model):
    """When a periodic task last started, one row per task (its name). Beat sends the task, a
    worker runs it: a row that stops moving says one of them is down, which `/healthz` and the
    dashboard report (inbox.health.celery_state)."""

    name = models.CharField(max_length=64, primary_key=True)
    # The database's clock, as every host compares it.
    at = models.DateTimeField()

    class Meta:
        verbose_name = _("heartbeat")

    def __str__(self) -> str:
        return f"{self.name} ({self.at})"

    @classmethod
    def beat(cls, name: str) -> None:
        """Record that the task `name` runs now. Never raises: a heartbeat not recorded is no
        reason for the task itself to fail."""
        try:
            if not cls.objects.filter(pk=name).update(at=Now()):
                cls.objects.update_or_create(pk=name, defaults={"at": database_now()})
        except DatabaseError:
            logger.warning("heartbeat of %s not recorded", name, exc_info=True)


class Upload(models.Model):
    public_id = models.UUIDField(
        default=uuid.uuid4, unique=True, editable=False, verbose_name=_("public id")
    )
    form = models.ForeignKey(
        Form, on_delete=models.CASCADE, related_name="uploads", verbose_name=_("form")
    )
    input_name = models.CharField(max_length=128, verbose_name=_("input name"))
    upload_file_id = models.CharField(_("Dify upload file id"), max_length=64)
    name = models.CharField(max_length=255, verbose_name=_("name"))
    size = models.BigIntegerField(verbose_name=_("size"))
    mime_type = models.CharField(max_length=255, blank=True, verbose_name=_("MIME type"))
    extension = models.CharField(max_length=32, blank=True, verbose_name=_("extension"))

    class Category(models.TextChoices):
        # Dify's file types (`InputSpec.file_type`).
        IMAGE = "image", _("Image")
        DOCUMENT = "document", _("Document")
        AUDIO = "audio", _("Audio")
        VIDEO = "video", _("Video")
        CUSTOM = "custom", _("Other file type")

    category = models.CharField(max_length=16, choices=Category.choices, verbose_name=_("category"))
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        verbose_name=_("uploaded by"),
    )
    # Their username as it was when they uploaded it: kept once the account is deleted.
    uploaded_by_username = models.CharField(
        max_length=150, blank=True, verbose_name=_("uploaded by (username)")
    )
    guest_email = models.EmailField(blank=True, verbose_name=_("guest email"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))

    class Meta:
        verbose_name = _("upload")
        verbose_name_plural = _("uploads")
        ordering = ["created_at"]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def owned(
        cls, form: Form, *, reviewer: Any = None, guest_email: str = ""
    ) -> models.QuerySet[Upload]:
        """The uploads a reviewer (or a guest) made on the form; nobody else's. A decision may
        carry only these: another reviewer's file is theirs to send or drop."""
        uploads = cls.objects.filter(form=form)
        if reviewer is not None and reviewer.is_authenticated:
            return uploads.filter(uploaded_by=reviewer)
        if guest_email:
            return uploads.filter(uploaded_by__isnull=True, guest_email__iexact=guest_email)
        return uploads.none()


class Tally(models.Model):
    """How many files one person has sent to Dify within a scope (a form, a day), and their
    bytes: counted by one conditional UPDATE, so two uploads at once cannot both take the last
    room (the second waits for the first's row and then sees it taken)."""

    files = models.PositiveIntegerField(default=0, verbose_name=_("files"))
    bytes = models.PositiveBigIntegerField(default=0, verbose_name=_("bytes"))

    class Meta:
        abstract = True

    @classmethod
    def _take(cls, scope: dict[str, Any], size: int, **room: Any) -> bool:
        """One more file of `size` bytes in `scope` (the row's key fields), where the row
        still has `room` (filters on its counts): False when it has not."""
        cls._default_manager.bulk_create([cls(**scope)], ignore_conflicts=True)
        taken = cls._default_manager.filter(**scope, **room).update(
            files=models.F("files") + 1, bytes=models.F("bytes") + size
        )
        return taken > 0

    @classmethod
    def _give_back(cls, scope: dict[str, Any], size: int) -> None:
        """Uncount a file `_take` counted in `scope` that was not sent after all."""
        cls._default_manager.filter(**scope, files__gt=0, bytes__gte=size).update(
            files=models.F("files") - 1, bytes=models.F("bytes") - size
        )


class UploadTally(Tally):
    """How many files one person (a reviewer, or a guest by address) has sent to Dify for a form,
    and their bytes. Uploads removed or replaced since count too: Dify keeps their files (it has
    no delete), so the tally only grows, and bounds what one person can leave there (see
    `inbox.uploads.upload_budget`)."""

    form = models.ForeignKey(
        Form, on_delete=models.CASCADE, related_name="upload_tallies", verbose_name=_("form")
    )
    # "u:<user pk>" for a reviewer (pages and API tokens alike), "g:<address>" for a guest.
    who = models.CharField(max_length=320, verbose_name=_("uploader"))

    class Meta:
        verbose_name = _("upload tally")
        verbose_name_plural = _("upload tallies")
        constraints = [
            models.UniqueConstraint(fields=["form", "who"], name="upload_tally_once_per_person")
        ]

    def __str__(self) -> str:
        return f"{self.who}: {self.files}"

    @staticmethod
    def key(reviewer: Any = None, guest_email: str = "") -> str:
        if reviewer is not None and reviewer.is_authenticated:
            return f"u:{reviewer.pk}"
        return f"g:{guest_email.strip().lower()}"

    @classmethod
    def take(cls, form: Form, who: str, size: int, limit: int) -> bool:
        """Count one more file of `size` bytes for `who`, unless they have sent `limit` already:
        False then. One conditional UPDATE, so two uploads at once cannot both take the last
        one (the second waits for the first's row and then sees it taken)."""
        return cls._take({"form": form, "who": who}, size, files__lt=limit)

    @classmethod
    def give_back(cls, form: Form, who: str, size: int) -> None:
        """Uncount a file `take` counted that Dify refused (so it keeps nothing of it)."""
        cls._give_back({"form": form, "who": who}, size)


class MessageFileQuerySet(models.QuerySet["MessageFile"]):
    def unused(self) -> MessageFileQuerySet:
        """Files no run has used: none that Dify named or that is still starting (a start Dify
        refused lets its files go for another)."""
        used = MessageFile.runs.through.objects.filter(
            ~Q(run__workflow_run_id="") | ~Q(run__status=Run.Status.FAILED)
        ).values("messagefile_id")
        return self.exclude(pk__in=used)


class MessageFile(models.Model):
    """A file uploaded to Dify to go with a chatflow's message (a start, or the next message of a
    conversation), or to fill a start input of type file or file-list (`input_name`, its
    variable), under the Dify user the run is asked as (Dify lets only that user use it).
    Uploaded before the run starts; `runs` are the runs that sent it."""

    public_id = models.UUIDField(
        default=uuid.uuid4, unique=True, editable=False, verbose_name=_("public id")
    )
    app = models.ForeignKey(
        DifyApp, on_delete=models.CASCADE, related_name="message_files", verbose_name=_("app")
    )
    dify_user = models.CharField(_("Dify user"), max_length=255)
    # The start input (its variable) the file fills; "" for a chatflow message's file.
    # A database default too: the release before 0034 inserts message files without it.
    input_name = models.CharField(
        _("start input"), max_length=255, blank=True, default="", db_default=""
    )
    runs = models.ManyToManyField(
        Run, blank=True, related_name="message_files", verbose_name=_("runs")
    )
    upload_file_id = models.CharField(_("Dify upload file id"), max_length=64)
    name = models.CharField(max_length=255, verbose_name=_("name"))
    size = models.BigIntegerField(verbose_name=_("size"))
    mime_type = models.CharField(max_length=255, blank=True, verbose_name=_("MIME type"))
    extension = models.CharField(max_length=32, blank=True, verbose_name=_("extension"))
    category = models.CharField(
        max_length=16, choices=Upload.Category.choices, verbose_name=_("category")
    )
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        verbose_name=_("uploaded by"),
    )
    uploaded_by_username = models.CharField(
        max_length=150, blank=True, verbose_name=_("uploaded by (username)")
    )
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))

    objects = MessageFileQuerySet.as_manager()

    class Meta:
        verbose_name = _("message file")
        verbose_name_plural = _("message files")
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        return self.name

    def as_dify(self) -> dict[str, str]:
        """The file as a message's `files` item sends it (CONTRACT 2.1)."""
        return {
            "type": self.category,
            "transfer_method": "local_file",
            "upload_file_id": self.upload_file_id,
        }


class MessageFileTally(Tally):
    """How many files one person has sent to Dify with chatflow messages on one day (in
    TIME_ZONE), and their bytes: the day's budget of `inbox.uploads.upload_message_file`
    (INBOX_MESSAGE_FILES_PER_DAY, INBOX_MESSAGE_FILES_MB_PER_DAY). Only files Dify took count;
    a person's rows of earlier days are let go as a new day's is taken."""

    # "u:<user pk>", as `UploadTally.key` gives it (pages and API tokens alike).
    who = models.CharField(max_length=320, verbose_name=_("uploader"))
    day = models.DateField(verbose_name=_("day"))

    class Meta:
        verbose_name = _("message file tally")
        verbose_name_plural = _("message file tallies")
        constraints = [
            models.UniqueConstraint(fields=["who", "day"], name="message_file_tally_once_a_day")
        ]

    def __str__(self) -> str:
        return f"{self.who} {self.day}: {self.files}"

    @classmethod
    def take(cls, who: str, size: int, *, files: int, limit_bytes: int) -> bool:
        """Count one more file of `size` bytes for `who` today, unless they have sent `files`
        files today already or it would take their bytes past `limit_bytes`: False then. One
        conditional UPDATE, so two uploads at once cannot both take the day's last room."""
        today = timezone.localdate()
        cls.objects.filter(who=who, day__lt=today).delete()
        return cls._take(
            {"who": who, "day": today}, size, files__lt=files, bytes__lte=limit_bytes - size
        )

    @classmethod
    def give_back(cls, who: str, size: int, day: dt.date) -> None:
        """Uncount a file `take` counted on `day` that was not sent after all (refused by the
        rate, or by Dify, which keeps nothing of it)."""
        cls._give_back({"who": who, "day": day}, size)


class FormRecipient(models.Model):
    """An address emailed about a form (a routed reviewer or a guest), and what it was sent.

    The email's link is signed for this row (see `inbox.notify`); it never carries Dify's token.
    """

    form = models.ForeignKey(
        Form, on_delete=models.CASCADE, related_name="recipients", verbose_name=_("form")
    )
    email = models.EmailField(_("email"))
    language = models.CharField(
        _("language"), max_length=16, choices=settings.LANGUAGES, default=settings.LANGUAGE_CODE
    )
    # The account behind the address, if any: its link signs in instead of opening a guest page.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="form_recipients",
        verbose_name=_("user"),
    )
    sent_at = models.DateTimeField(_("sent"), null=True, blank=True)
    send_attempts = models.PositiveIntegerField(default=0, verbose_name=_("send attempts"))
    # When the sweep may next send the email this row waits for (the first email, then the
    # closing notice): after a failed attempt, the end of its wait; while one is being sent, the
    # end of that claim (a worker killed mid-send leaves the row to the sweep then). None: now.
    next_send_at = models.DateTimeField(_("next send at"), null=True, blank=True)
    notice_attempts = models.PositiveIntegerField(
        default=0, verbose_name=_("closing notice attempts")
    )
    last_error = models.TextField(blank=True, verbose_name=_("last error"))
    # Offsets before expiry (seconds) already reminded, or passed over because the first email
    # went out after them.
    reminders_sent = models.JSONField(default=list, blank=True, verbose_name=_("reminders sent"))
    reminded_at = models.DateTimeField(_("reminded"), null=True, blank=True)
    # When the sweep next looks at this row for a reminder; None when none is left.
    next_reminder_at = models.DateTimeField(
        null=True, blank=True, db_index=True, verbose_name=_("next reminder at")
    )
    closed_notice_at = models.DateTimeField(
        null=True, blank=True, verbose_name=_("closed notice at")
    )
    link_opened_at = models.DateTimeField(null=True, blank=True, verbose_name=_("link opened at"))
    # A guest's browser zone, as the link's pages last saw it: later emails give times in it.
    # An account's zone is its reviewer profile's.
    time_zone = models.CharField(_("time zone"), max_length=64, blank=True)
    link_used_at = models.DateTimeField(_("link used"), null=True, blank=True)
    # No longer asked: the form was reassigned to someone else. Its link opens nothing more, and
    # no reminder or notice follows.
    withdrawn_at = models.DateTimeField(_("withdrawn"), null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))

    class Meta:
        ordering = ["form", "email"]
        verbose_name = _("form recipient")
        verbose_name_plural = _("form recipients")
        constraints = [
            models.UniqueConstraint(fields=["form", "email"], name="form_recipient_unique")
        ]
        indexes = [
            # The sweep's "emailed, no closing notice yet": only rows of open forms are in it.
            models.Index(
                fields=["form"],
                condition=Q(sent_at__isnull=False, closed_notice_at__isnull=True),
                name="form_recipient_notice_due",
            ),
            models.Index(
                fields=["created_at"],
                condition=Q(sent_at__isnull=True),
                name="form_recipient_unsent",
            ),
        ]

    def __str__(self) -> str:
        return self.email

    @property
    def is_guest(self) -> bool:
        return self.user_id is None

    def still_asked(self) -> bool:
        """Whether the form still asks this recipient, so their link may open it and reminders
        and notices may reach them. Not once the form was reassigned to someone else; a
        reviewer, while their account is active and they may see the form; a guest, while the
        form's route is on and lists their address, and no deactivated account owns the address
        (its owner was turned away: their address does not make them a guest)."""
        if self.withdrawn_at is not None:
            return False
        if self.user_id is not None:
            user = self.user
            return bool(
                user is not None
                and user.is_active
                and Form.objects.for_user(user).filter(pk=self.form_id).exists()
            )
        route = self.form.route
        if route is None or not route.is_active:
            return False
        email = self.email.lower()
        if email not in {e.lower() for e in route.recipients.values_list("email", flat=True)}:
            return False
        from django.contrib.auth import get_user_model

        return not get_user_model().objects.filter(email__iexact=email, is_active=False).exists()

    @classmethod
    def zones_of(cls, emails: typing.Iterable[str]) -> dict[str, str]:
        """address (lower case) -> the zone its holder's browser last gave a link's pages, for
        the addresses that gave one (one query): a form routed to them later emails them in it.
        `remember_zone` keeps every row of an address alike, so any row says it."""
        keys = {e.lower() for e in emails if e}
        if not keys:
            return {}
        rows = (
            cls.objects.annotate(email_lower=Lower("email"))
            .filter(email_lower__in=keys)
            .exclude(time_zone="")
            .order_by("pk")
            .values_list("email_lower", "time_zone")
        )
        return dict(rows)

    @classmethod
    def remember_zone(cls, email: str, zone: str) -> None:
        """The zone a guest's browser gave: kept on every row of their address, so the emails of
        all their forms (and of forms routed to them later) give times in it."""
        cls.objects.filter(email__iexact=email).exclude(time_zone=zone).update(time_zone=zone)

    @classmethod
    def enqueue_emails(cls, form_pk: int) -> None:
        """Queue the form's emails. A broker that is down loses nothing: the reminder sweep
        sends what was never sent."""
        from inbox.tasks import send_form_emails

        try:
            send_form_emails.apply_async((form_pk,))
        except Exception as exc:
            _not_queued(exc, "form %s: emails not queued, the sweep will send them", form_pk)


class RunEvent(models.Model):
    """A stream event worth keeping (fills, timeouts, the end, errors, anything unknown), without
    any form token. Node events and text chunks live in Run.timeline and Run.answer instead."""

    run = models.ForeignKey(
        Run, on_delete=models.CASCADE, related_name="events", verbose_name=_("run")
    )
    event = models.CharField(max_length=64, verbose_name=_("event"))
    # What makes a replayed event the same event (e.g. "workflow_finished", "filled:<form>:<a>").
    key = models.CharField(max_length=200, blank=True, verbose_name=_("key"))
    payload = models.JSONField(default=dict, blank=True, verbose_name=_("payload"))
    received_at = models.DateTimeField(
        default=timezone.now, db_index=True, verbose_name=_("received at")
    )

    class Meta:
        verbose_name = _("run event")
        verbose_name_plural = _("run events")
        ordering = ["received_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "key"], condition=~Q(key=""), name="runevent_unique_key_per_run"
            )
        ]

    def __str__(self) -> str:
        return f"{self.event} @ {self.received_at:%Y-%m-%d %H:%M:%S}"


# Audit entries held back by `AuditEntry.deferred()` in this context, None outside it.
_deferred_audit: contextvars.ContextVar[list[AuditEntry] | None] = contextvars.ContextVar(
    "deferred_audit", default=None
)


class AuditEntry(models.Model):
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        verbose_name=_("actor"),
    )
    actor_label = models.CharField(max_length=255, blank=True, verbose_name=_("actor label"))
    verb = models.CharField(max_length=64, db_index=True, verbose_name=_("verb"))
    object_type = models.CharField(max_length=64, verbose_name=_("object type"))
    object_id = models.CharField(max_length=64, verbose_name=_("object id"))
    object_repr = models.CharField(max_length=255, blank=True, verbose_name=_("object repr"))
    details = models.JSONField(default=dict, blank=True, verbose_name=_("details"))
    created_at = models.DateTimeField(
        default=timezone.now, db_index=True, verbose_name=_("created at")
    )

    class Meta:
        verbose_name = _("audit entry")
        ordering = ["-created_at", "-id"]
        verbose_name_plural = _("audit entries")
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        from inbox.audit_words import object_label, object_type_label, verb_label

        what = object_label(self) or f"{object_type_label(self.object_type)} {self.object_id}"
        return worded(
            gettext("%(actor)s · %(verb)s · %(object)s"),
            actor=self.actor_label or gettext("system"),
            verb=str(verb_label(self.verb)),
            object=what,
        )

    @classmethod
    def record(
        cls,
        verb: str,
        obj: models.Model,
        *,
        actor: Any = None,
        actor_label: str = "",
        **details: Any,
    ) -> AuditEntry:
        entry = cls.build(verb, obj, actor=actor, actor_label=actor_label, **details)
        pending = _deferred_audit.get()
        if pending is not None:
            pending.append(entry)
        else:
            entry.save(force_insert=True)
        return entry

    @classmethod
    @contextlib.contextmanager
    def deferred(cls) -> Iterator[list[AuditEntry]]:
        """Entries recorded inside the block (by this thread) are written together, in one
        INSERT, when it ends without an error; an error writes none of them. For a transaction
        that records several, each otherwise a round trip of its own (a capture)."""
        pending: list[AuditEntry] = []
        token = _deferred_audit.set(pending)
        try:
            yield pending
        finally:
            _deferred_audit.reset(token)
        if pending:
            AuditEntry.objects.bulk_create(pending)

    @classmethod
    def record_about(
        cls,
        verb: str,
        object_type: str,
        *,
        actor: Any = None,
        actor_label: str = "",
        **details: Any,
    ) -> AuditEntry:
        """An entry about no one object: the trail's own housekeeping (entries let go, the
        trail exported)."""
        if actor is not None and not getattr(actor, "is_authenticated", False):
            actor = None
        label = actor_label or (actor.get_username() if actor is not None else "system")
        return cls.objects.create(
            actor=actor,
            actor_label=label,
            verb=verb,
            object_type=object_type,
            object_id="",
            details=details,
        )

    @classmethod
    def build(
        cls,
        verb: str,
        obj: models.Model,
        *,
        actor: Any = None,
        actor_label: str = "",
        **details: Any,
    ) -> AuditEntry:
        """An unsaved entry, for writing several in one INSERT (`bulk_create`). It carries how
        the request that made it came (`audit_context`: the API token, a guest's address)."""
        from inbox.middleware import audit_context

        details = {**audit_context(), **details}
        if actor is not None and not getattr(actor, "is_authenticated", False):
            actor = None
        label = actor_label or (actor.get_username() if actor is not None else "system")
        # The ids an auditor holds (in a page's address, the API's answers): searchable too.
        public_id = getattr(obj, "public_id", None)
        if public_id is not None:
            details.setdefault("public_id", str(public_id))
        form = getattr(obj, "_state", None) and obj._state.fields_cache.get("form")
        if isinstance(form, Form):
            details.setdefault("form_public_id", str(form.public_id))
        # A form's, a decision's and an upload's entries name their run too: "everything
        # about run X" is one search of the trail.
        run_public_id = _run_public_id(obj)
        if run_public_id is not None:
            details.setdefault("run", run_public_id)
        # A decision's status then, as a code: the admin names it in its reader's language.
        if isinstance(obj, Decision):
            details.setdefault("status", obj.status)
        return cls(
            actor=actor,
            actor_label=label,
            verb=verb,
            object_type=obj._meta.model_name or type(obj).__name__.lower(),
            object_id=str(obj.pk),
            object_repr=_audit_repr(obj),
            details=details,
        )


def _audit_repr(obj: models.Model) -> str:
    """What an entry calls its object, the same whoever acted and in whichever language: written
    with no language active (the inbox's own words in English, as the trail's codes are), and
    from the object's `audit_repr` when it has one (a decision's leaves out its status, which
    changes)."""
    with translation.override(None):
        audit_repr = getattr(obj, "audit_repr", None)
        return str(audit_repr() if callable(audit_repr) else obj)[:255]


def _run_public_id(obj: models.Model) -> str | None:
    """The public id of the run a form, decision or upload belongs to: from the run or form
    already loaded with it, else read once (and kept on the form for its next entries)."""
    if isinstance(obj, Form):
        form: Form | None = obj
    elif isinstance(obj, (Decision, Upload)):
        form = obj._state.fields_cache.get("form")
        if form is None:
            if obj.form_id is None:
                return None
            found = (
                Run.objects.filter(forms__pk=obj.form_id)
                .values_list("public_id", flat=True)
                .first()
            )
            return str(found) if found is not None else None
    else:
        return None
    assert form is not None
    run = form._state.fields_cache.get("run")
    # Not a stand-in built by its pk alone (`Run(pk=...)`: its public id would be a new one).
    if isinstance(run, Run) and not run._state.adding:
        return str(run.public_id)
    known = getattr(form, "_run_public_id", None)
    if known is None and form.run_id is not None:
        found = Run.objects.filter(pk=form.run_id).values_list("public_id", flat=True).first()
        known = str(found) if found is not None else None
        form._run_public_id = known  # type: ignore[attr-defined]
    return known


class ApiToken(models.Model):
    """A per-user bearer token for the JSON API. Only a SHA-256 of the token is stored."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="api_tokens",
        verbose_name=_("user"),
    )
    name = models.CharField(max_length=100, blank=True, verbose_name=_("name"))
    prefix = models.CharField(
        max_length=12,
        help_text=_("The first characters, to recognise it."),
        verbose_name=_("prefix"),
    )
    digest = models.CharField(max_length=64, unique=True, verbose_name=_("digest"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    last_used_at = models.DateTimeField(null=True, blank=True, verbose_name=_("last used at"))
    revoked_at = models.DateTimeField(null=True, blank=True, verbose_name=_("revoked at"))

    class Meta:
        verbose_name = _("API token")
        verbose_name_plural = _("API tokens")
        ordering = ["-created_at"]
        permissions = [("revoke_apitoken", _("Can revoke API tokens"))]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @staticmethod
    def hash(raw: str) -> str:
        import hashlib

        return hashlib.sha256(raw.encode()).hexdigest()

    @classmethod
    def issue(cls, user: Any, name: str = "") -> tuple[ApiToken, str]:
        """Create a token; the raw value is returned once and never stored."""
        import secrets

        raw = "inbx_" + secrets.token_urlsafe(32)
        token = cls.objects.create(user=user, name=name, prefix=raw[:9], digest=cls.hash(raw))
        # Issued by an operator's command, for its owner: the owner is named, not as the actor.
        AuditEntry.record(
            "api_token_issued", token, actor_label="create_api_token", owner=user.get_username()
        )
        return token, raw

    @classmethod
    def of_deactivated_account(cls, raw: str) -> bool:
        """`raw` is a token not revoked whose account is deactivated (refused all the same)."""
        return cls.objects.filter(
            digest=cls.hash(raw), revoked_at__isnull=True, user__is_active=False
        ).exists()

    def revoke(self, actor: Any) -> bool:
        """Refuse the token from now on; True when it was still in use."""
        revoked = bool(
            ApiToken.objects.filter(pk=self.pk, revoked_at__isnull=True).update(
                revoked_at=timezone.now()
            )
        )
        if revoked:
            AuditEntry.record(
                "api_token_revoked", self, actor=actor, owner=self.user.get_username()
            )
        return revoked

    @classmethod
    def authenticate_token(cls, raw: str) -> ApiToken | None:
        """The valid token `raw` is (its user with it), or None: the API keeps which token
        acted, for the trail."""
        token = (
            cls.objects.select_related("user")
            .filter(digest=cls.hash(raw), revoked_at__isnull=True, user__is_active=True)
            .first()
        )
        if token is None:
            return None
        now = timezone.now()
        # Write at most once a minute: a busy API client must not turn every call into a write.
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            cls.objects.filter(pk=token.pk).update(last_used_at=now)
        return token


class ReviewerProfile(models.Model):
    """What the inbox remembers of a reviewer: their language and their browser's time zone, so
    their emails speak that language and give times in that zone, as the pages do.

    Their language is chosen (`language_chosen`) by an administrator here or by them with the
    language switch; chosen, it is theirs in every browser (`ReviewerLanguageMiddleware`) and
    only another choice changes it. Until then it is a guess, the language their browser asks
    for, which the next browser's may replace."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="inbox_profile",
        verbose_name=_("user"),
    )
    language = models.CharField(
        _("language"),
        max_length=16,
        choices=settings.LANGUAGES,
        default=settings.LANGUAGE_CODE,
        help_text=_(
            "Their language: the inbox's pages open in it in every browser they sign in from, "
            "and their emails are written in it. Saving it here makes it their choice."
        ),
    )
    language_chosen = models.BooleanField(
        _("language chosen"),
        default=False,
        db_default=False,
        help_text=_(
            "Set by an administrator or by them with the language switch. Until it is, the "
            "language is the one their browser asks for, and another browser's may replace it."
        ),
    )
    # An IANA name ("Asia/Shanghai"); blank until their browser has said it.
    time_zone = models.CharField(
        _("time zone"),
        max_length=64,
        blank=True,
        help_text=_("As their browser last gave it; emails give times in it. Blank: the server's."),
    )
    # "New since your last visit" (`looked_at_list`): when they last looked at the inbox's
    # list of pending forms, and since when the forms they see now count as new to them.
    list_seen_at = models.DateTimeField(_("last looked at the inbox"), null=True, blank=True)
    new_since = models.DateTimeField(_("forms new to them since"), null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    # Looks at the list this close together are one visit: the forms new at its start stay
    # marked new throughout it (back from each form decided, a reload), not only on its first page.
    VISIT_GAP = dt.timedelta(minutes=30)

    class Meta:
        verbose_name = _("reviewer profile")
        verbose_name_plural = _("reviewer profiles")
        # Erasing a person's account (`inbox.erasure.anonymise_user`): what the inbox remembers
        # of a reviewer goes.
        permissions = [("anonymise_user", _("Can anonymise accounts"))]

    def __str__(self) -> str:
        return f"{self.user} ({self.language})"

    @classmethod
    def languages_of(cls, users: typing.Iterable[Any]) -> dict[int, str]:
        """user pk -> language, for the users who have used the inbox (one query)."""
        pks = [u.pk for u in users]
        if not pks:
            return {}
        return dict(cls.objects.filter(user_id__in=pks).values_list("user_id", "language"))

    # How `remember` was told a language: the reviewer chose it (the language switch), their
    # browser keeps a choice made in it (the language cookie), or their browser asks for it.
    CHOSEN = "chosen"
    KEPT_IN_BROWSER = "cookie"
    ASKED_BY_BROWSER = "browser"

    @classmethod
    def remember(
        cls,
        user: Any,
        language: str | None = None,
        time_zone: str = "",
        *,
        how: str = ASKED_BY_BROWSER,
    ) -> None:
        """Keep what was given: a language, a time zone, or both.

        A language the reviewer chose (`CHOSEN`) is theirs from now on. One kept in a browser
        (`KEPT_IN_BROWSER`: the switch, used there before) becomes their choice only if they
        have none; one their browser merely asks for is kept only while they have none, and
        never replaces a language chosen (by them, or by an administrator)."""
        if not language and not time_zone:
            return
        chosen = bool(language) and how == cls.CHOSEN
        made_with: dict[str, Any] = {}
        if language:
            made_with = {"language": language, "language_chosen": how != cls.ASKED_BY_BROWSER}
        if time_zone:
            made_with["time_zone"] = time_zone
        profile, made = cls.objects.get_or_create(user=user, defaults=made_with)
        if made:
            return
        now = timezone.now()
        if time_zone:
            cls.objects.filter(pk=profile.pk).update(time_zone=time_zone, updated_at=now)
        if language:
            mine = cls.objects.filter(pk=profile.pk)
            if not chosen:
                mine = mine.filter(language_chosen=False)
            mine.update(
                language=language, language_chosen=made_with["language_chosen"], updated_at=now
            )

    @classmethod
    def chosen_language_of(cls, user: Any) -> str:
        """The language the reviewer (or an administrator) chose for them, or "" if none."""
        return (
            cls.objects.filter(user_id=user.pk, language_chosen=True)
            .values_list("language", flat=True)
            .first()
            or ""
        )

    @classmethod
    def looked_at_list(cls, user: Any, now: dt.datetime) -> dt.datetime | None:
        """The reviewer looks at their pending forms (`views.index`): a look more than
        VISIT_GAP after their last one starts a visit, whose forms arrived since that last
        look are new to them; their very first look starts their first visit (what arrives while
        it lasts is new). Returns since when forms are new.

        One statement: the update reads the row's old values and returns the new one."""
        table = cls._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET "  # noqa: S608 - the model's own table name
                # The first look starts the first visit: what arrives while it lasts is new.
                "new_since = CASE WHEN list_seen_at IS NULL THEN %s "
                "WHEN list_seen_at < %s THEN list_seen_at ELSE new_since END, "
                "list_seen_at = %s WHERE user_id = %s RETURNING new_since",
                [
                    connection.ops.adapt_datetimefield_value(now),
                    connection.ops.adapt_datetimefield_value(now - cls.VISIT_GAP),
                    connection.ops.adapt_datetimefield_value(now),
                    user.pk,
                ],
            )
            row = cursor.fetchone()
        if row is None:
            # Their first look at all (the profile is made after the first page, by
            # `ReviewerLanguageMiddleware`): nothing is new yet. Made here first, it is in the
            # page's language, as the middleware would keep it (not the default, which would
            # then choose the language of their emails).
            language = translation.get_language() or settings.LANGUAGE_CODE
            if language not in dict(settings.LANGUAGES):
                language = settings.LANGUAGE_CODE
            profile, made = cls.objects.get_or_create(
                user=user, defaults={"list_seen_at": now, "new_since": now, "language": language}
            )
            if not made:
                cls.objects.filter(pk=profile.pk).update(list_seen_at=now, new_since=now)
            return now
        value = row[0]
        if isinstance(value, str):  # SQLite's RETURNING gives the stored text
            value = dt.datetime.fromisoformat(value)
        if value is not None and timezone.is_naive(value):
            value = timezone.make_aware(value, dt.UTC)
        return value

    @classmethod
    def new_since_of(cls, user: Any) -> dt.datetime | None:
        """Since when forms are new to the reviewer, without looking (a poll, another page)."""
        return cls.objects.filter(user_id=user.pk).values_list("new_since", flat=True).first()

    @classmethod
    def time_zone_of(cls, user: Any) -> str:
        """Their browser's zone, or "" when it never said one."""
        if user is None:
            return ""
        pk = getattr(user, "pk", user)
        return cls.objects.filter(user_id=pk).values_list("time_zone", flat=True).first() or ""
