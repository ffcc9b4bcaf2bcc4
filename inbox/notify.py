"""Reach: the emails about a form (the request, reminders, the closing notice, the notice that
it is gone from the workflow, the notice that a decision could not be delivered) and the signed
links in them.

A link is signed for one recipient of one form with Django's signing framework and expires with
the form. A form without an expiry bounds its links' age instead (INBOX_LINK_MAX_AGE_SECONDS); the
recipient of such a link that is too old may ask for a new one while the form still waits for
them. A link carries our ids only: Dify's `form_token` never leaves the database, so an email
forwarded or logged somewhere gives no way to answer the form in Dify behind our back.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import uuid
import zoneinfo
from dataclasses import dataclass
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core import signing
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import formats, timezone, translation

from inbox import timefmt
from inbox.markdown import excerpt, strip_html_tags
from inbox.middleware import valid_time_zone
from inbox.models import AuditEntry, Decision, Form, FormRecipient, ReviewerProfile, Run
from inbox.names import display_name

logger = logging.getLogger(__name__)

LINK_SALT = "inbox.notify.form-link"

# Forms that closed longer ago than this get no closing notice: news that old is noise.
NOTICE_STALE_AFTER = dt.timedelta(days=2)
# A first email or a notice (a closing or gone notice, a failed decision's) that could not be
# sent is tried again after these waits, the last one over and over: a first email while its form
# still asks (a mail server down for hours delays it, never drops it), a notice up to
# MAX_NOTICE_ATTEMPTS times.
SEND_RETRY = (
    dt.timedelta(minutes=1),
    dt.timedelta(minutes=5),
    dt.timedelta(minutes=15),
    dt.timedelta(minutes=30),
)
MAX_NOTICE_ATTEMPTS = 10
# A reminder that could not be sent is tried again this much later (while the form is open).
REMINDER_RETRY = dt.timedelta(minutes=5)
# An email being sent holds its row this long (`next_send_at`, or a reminder's
# `next_reminder_at`, a failed decision's `failure_notice_next_at`): longer than any task that
# sends may run (their hard time limits: send_form_emails 150 s, send_reminders 120 s,
# send_failure_notice 75 s), so the row of a worker killed mid-send is taken up again by a later
# sweep instead of passing for sent.
SEND_CLAIM = dt.timedelta(minutes=5)
CLOSED_STATUSES = (Form.Status.SUBMITTED, Form.Status.ANSWERED_ELSEWHERE, Form.Status.EXPIRED)
# Closed for good: a first email not sent by then is given up (and logged once), and those
# emailed get a notice: a closing notice (`closed`), or for a form gone from the workflow
# (`Run.gone_from_dify`) one that says so (`gone`).
ENDED_STATUSES = (*CLOSED_STATUSES, Form.Status.GONE)


# ---------------------------------------------------------------------------------------------
# Signed links
# ---------------------------------------------------------------------------------------------


def _email_tag(email: str) -> str:
    # Binds the link to the address as well as the row id, so a row deleted and its id reused
    # (SQLite reuses the highest id) does not open someone else's form.
    return hashlib.sha256(email.lower().encode()).hexdigest()[:12]


def link_token(recipient: FormRecipient) -> str:
    form = recipient.form
    expires = int(form.expiration_time.timestamp()) if form.expiration_time else None
    payload = {
        "f": form.public_id.hex,
        "r": recipient.pk,
        "m": _email_tag(recipient.email),
        "x": expires,
    }
    return signing.dumps(payload, salt=LINK_SALT, compress=True)


def link_path(token: str) -> str:
    return reverse("inbox:guest_form", args=[token])


def link_url(recipient: FormRecipient) -> str:
    return settings.INBOX_BASE_URL.rstrip("/") + link_path(link_token(recipient))


@dataclass(frozen=True)
class LinkCheck:
    """What a link is worth: `ok` with its recipient, or why not: `invalid`, `expired` (the
    form's expiry passed) or `lapsed` (a link to a form without an expiry, older than
    INBOX_LINK_MAX_AGE_SECONDS; its recipient may ask for a new one)."""

    state: str
    recipient: FormRecipient | None = None

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def _signed_at(token: str) -> int:
    # TimestampSigner's "payload:timestamp:signature", the timestamp in base 62. Read only
    # once `signing.loads` has checked the signature over both.
    return signing.b62_decode(token.rsplit(":", 2)[-2])


def link_max_age() -> dt.timedelta:
    return dt.timedelta(seconds=settings.INBOX_LINK_MAX_AGE_SECONDS)


def check_link(token: str, *, now: dt.datetime | None = None) -> LinkCheck:
    """Verify a link's signature and find its recipient, then its time: a link to a form with
    an expiry is good until then, however old (the expiry bounds it); one to a form without an
    expiry is good for INBOX_LINK_MAX_AGE_SECONDS. Says nothing about why a valid looking link
    has no recipient: forged and deleted are the same to the visitor."""
    now = now or timezone.now()
    try:
        data = signing.loads(token, salt=LINK_SALT)
        signed_at = _signed_at(token)
    except (signing.BadSignature, ValueError, IndexError):
        return LinkCheck("invalid")
    if not isinstance(data, dict):
        return LinkCheck("invalid")
    try:
        public_id = uuid.UUID(str(data["f"]))
        pk = int(data["r"])
        expires = data.get("x")
    except (KeyError, TypeError, ValueError):
        return LinkCheck("invalid")
    recipient = (
        FormRecipient.objects.select_related("form__run__app", "user")
        .filter(pk=pk, form__public_id=public_id)
        .first()
    )
    if recipient is None or _email_tag(recipient.email) != data.get("m"):
        return LinkCheck("invalid")
    if isinstance(expires, int):
        if now.timestamp() >= expires:
            return LinkCheck("expired", recipient)
    elif now.timestamp() - signed_at > link_max_age().total_seconds():
        return LinkCheck("lapsed", recipient)
    form = recipient.form
    if form.expiration_time is not None and now >= form.expiration_time:
        return LinkCheck("expired", recipient)
    return LinkCheck("ok", recipient)


def masked_address(email: str) -> str:
    """An address as a page may show it to whoever holds a link: j***@example.com."""
    # The last @: a quoted local part may hold one too ("jane@doe"@example.com).
    local, at, domain = email.rpartition("@")
    return f"{local[:1]}***{at}{domain}" if at else "***"


# ---------------------------------------------------------------------------------------------
# Emails
# ---------------------------------------------------------------------------------------------


_SCRIPTS = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)


def plain_excerpt(content: str, length: int = 600) -> str:
    """Dify's Markdown as a short plain text: no HTML tags, no scripts' text, no placeholders.
    Other text in angle brackets stays, as on the form page (which shows raw HTML as text)."""
    return excerpt(strip_html_tags(_SCRIPTS.sub(" ", content or "")), length)


def _decider(form: Form) -> Decision | None:
    return (
        form.decisions.select_related("reviewer")
        .filter(status__in=Decision.ACTIVE_STATUSES)
        .order_by("-created_at")
        .first()
    )


def _reopened(form: Form) -> bool:
    """Whether the pending form was given back for a new decision after one failed for good."""
    if form.status != Form.Status.PENDING:
        return False
    # Asked once per form object: a form's first emails all go with the same one.
    cached: bool | None = getattr(form, "_inbox_reopened", None)
    if cached is None:
        cached = form.decisions.filter(status=Decision.Status.FAILED).exists()
        form._inbox_reopened = cached  # type: ignore[attr-defined]
    return cached


def _back(form: Form) -> bool:
    """Whether the pending form's run was taken for gone and came back (`Run.back_in_dify`):
    those emailed about it may have been told it was no longer available."""
    if form.status != Form.Status.PENDING:
        return False
    cached: bool | None = getattr(form, "_inbox_back", None)
    if cached is None:
        cached = AuditEntry.objects.filter(
            verb="run_back", object_type=Run._meta.model_name, object_id=str(form.run_id)
        ).exists()
        form._inbox_back = cached  # type: ignore[attr-defined]
    return cached


def build_email(
    recipient: FormRecipient,
    kind: str,
    *,
    now: dt.datetime | None = None,
    decision: Decision | None = None,
) -> EmailMultiAlternatives:
    """The email of `kind` (`request`, `reminder`, `link`, `closed`, `gone`, `failed`) for a
    recipient,
    in their language: plain text and HTML from templates/emails/. Each carries a link signed as
    it is built, so a reminder's link is as fresh as the reminder. Dify's content goes in as
    plain text only. `failed` tells the maker of `decision`, which failed for good, that it was
    not delivered; `recipient` may then be unsaved (a reviewer emailed about nothing else): it
    carries the page's address, not a signed link."""
    now = now or timezone.now()
    form = recipient.form
    if kind == "closed":
        decision = _decider(form)
    elif kind != "failed":
        decision = None
    late = _late(form) if kind == "closed" else None
    zone = reading_zone(recipient)
    with (
        translation.override(recipient.language),
        timezone.override(zoneinfo.ZoneInfo(zone) if zone else None),
    ):
        expires = form.expiration_time
        context: dict[str, Any] = {
            "recipient": recipient,
            "form": form,
            "title": form.node_title or form.node_id,
            "app": form.run.app.name,
            "excerpt": plain_excerpt(
                form.content or str((form.definition or {}).get("form_content") or "")
            ),
            "expires": expires,
            "expires_text": formats.date_format(timezone.localtime(expires), "DATETIME_FORMAT")
            if expires
            else "",
            "time_zone": timezone.get_current_timezone_name(),
            "time_left": timefmt.relative(expires, now) if expires else "",
            "link_lasts": timefmt.span(link_max_age()),
            "url": form_page_url(form) if recipient.pk is None else link_url(recipient),
            # Back in the workflow after it was taken for gone (`Run.back_in_dify`).
            "back": kind == "request" and _back(form),
            # Given back for a new decision after one that could not be delivered.
            "reopened": kind == "request" and _reopened(form),
            # Why the decision failed, in the reader's language where the inbox wrote it.
            # A guest is told neither Dify's words nor its status (as on their page).
            "reason": decision.last_error_text
            if kind == "failed" and decision and not recipient.is_guest
            else "",
            "as_guest": recipient.is_guest,
            "guests_may_answer": form.allow_guests,
            "status": form.status,
            # A reminder while a reviewer has taken the form names who (a guest reads only
            # that a reviewer is), unless it is the reader.
            "handler": _handler(form, recipient) if kind == "reminder" else "",
            "handled": kind == "reminder" and _handled_by_another(form, recipient),
            **_ending(form, recipient, decision, late),
        }
        return automated_email(kind, context, recipient.email)


def automated_email(kind: str, context: dict[str, Any], to: str) -> EmailMultiAlternatives:
    """The email `emails/<kind>` (its subject, text and HTML templates) rendered with `context`
    in the active language, to `to`, marked as sent by a machine."""
    subject = " ".join(render_to_string(f"emails/{kind}_subject.txt", context).split())
    message = EmailMultiAlternatives(
        subject,
        render_to_string(f"emails/{kind}.txt", context),
        to=[to],
        # Out-of-office replies to an automated notice only clutter the sender's mailbox.
        headers={"Auto-Submitted": "auto-generated", "X-Auto-Response-Suppress": "All"},
    )
    message.attach_alternative(render_to_string(f"emails/{kind}.html", context), "text/html")
    return message


def _ending(
    form: Form, recipient: FormRecipient, decision: Decision | None, late: Decision | None
) -> dict[str, Any]:
    """How the form ended as `recipient` may be told it (emails/_closed_what.txt)."""
    return {
        # Expired because its run was stopped or failed meanwhile, not by its timeout.
        "run_end": form.closed_by_run_end,
        # A decision made here that Dify refused because the form had closed there first;
        # `too_late_own`: it was this recipient's, who is told so (with what they chose).
        "too_late": late is not None,
        "too_late_own": late is not None and _made_by(late, recipient),
        "too_late_action": form.action_title(late.action_id) if late is not None else "",
        "action": form.filled_action_text
        or (form.action_title(decision.action_id) if decision else ""),
        # A guest is told neither reviewers' names nor other recipients' addresses.
        "decider": decision.decider_label_for(
            recipient.email if recipient.is_guest else None, sentence_start=True
        )
        if decision
        else "",
    }


def closing_context(recipient: FormRecipient) -> dict[str, Any]:
    """What a guest's link to a closed form shows, in the active language: how it ended, as
    the closing notice says it, and nothing of its content or of the values entered."""
    form = recipient.form
    return {
        "title": form.node_title or form.node_id,
        "app": form.run.app.name,
        "as_guest": recipient.is_guest,
        "status": form.status,
        **_ending(form, recipient, _decider(form), _late(form)),
    }


def _late(form: Form) -> Decision | None:
    """A decision made here that Dify refused because the expired form had closed there."""
    if form.status != Form.Status.EXPIRED:
        return None
    return (
        form.decisions.select_related("reviewer")
        .filter(status__in=(Decision.Status.REJECTED, Decision.Status.FAILED))
        .order_by("-created_at")
        .first()
    )


def _handled_by_another(form: Form, recipient: FormRecipient) -> bool:
    """Whether a reviewer other than `recipient` has taken the form."""
    return form.claimed_by_id is not None and form.claimed_by_id != recipient.user_id


def _handler(form: Form, recipient: FormRecipient) -> str:
    """The name of the reviewer who has taken the form, for a reviewer other than them; "" for
    a guest (not told reviewers' names) or when nobody has it."""
    holder = form.claimed_by
    if holder is None or recipient.is_guest or not _handled_by_another(form, recipient):
        return ""
    return display_name(holder)


def form_page_url(form: Form) -> str:
    """The form's page, for a signed-in reviewer (no signed link: it opens only with access)."""
    return settings.INBOX_BASE_URL.rstrip("/") + reverse("inbox:form", args=[form.public_id])


def reading_zone(recipient: FormRecipient) -> str:
    """The time zone an email to `recipient` gives its times in: their browser's, as the
    inbox's pages last saw it (an account's from its reviewer profile, a guest's from their
    link's pages), else "" for the server's."""
    zone = ""
    if recipient.user_id is not None:
        zone = ReviewerProfile.time_zone_of(recipient.user_id)
    return valid_time_zone(zone or recipient.time_zone)


def retry_wait(attempts: int) -> dt.timedelta:
    """How long after its `attempts`-th failed attempt an email is tried again."""
    return SEND_RETRY[min(max(attempts, 1), len(SEND_RETRY)) - 1]


def _free(now: dt.datetime) -> Q:
    """Rows whose waiting email may be sent now: not held by a send under way, and past the
    wait after a failed attempt."""
    return Q(next_send_at__isnull=True) | Q(next_send_at__lte=now)


def _send(recipient: FormRecipient, kind: str, now: dt.datetime) -> bool:
    try:
        build_email(recipient, kind, now=now).send()
    except SoftTimeLimitExceeded:
        # The task's time is up (a mail server that hangs): the caller gives the row back and
        # the task stops; the next sweep carries on. Never swallowed, or the hard limit would
        # kill the worker mid-send.
        raise
    except Exception as exc:
        # The error may quote the message; it never holds a form token (none is in it).
        logger.warning(
            "form %s: %s email to recipient %s failed: %s",
            recipient.form_id,
            kind,
            recipient.pk,
            exc,
        )
        FormRecipient.objects.filter(pk=recipient.pk).update(last_error=str(exc)[:500])
        return False
    return True


def reminder_time(offset: int, expires: dt.datetime | None, sent_at: dt.datetime) -> dt.datetime:
    """When the reminder of `offset` seconds is due: that long before the form expires, or for
    a form that never expires (nothing to count back from), that long after the first email."""
    if expires is None:
        return sent_at + dt.timedelta(seconds=offset)
    return expires - dt.timedelta(seconds=offset)


# A reminder due within this fraction of its offset after the first email is left out: the
# email just said how much time was left ("expires in 1 day"), and saying it again minutes
# later ("expires in 23 hours") is noise. A 24h reminder goes if the first email is 2.4h old by then.
FIRST_EMAIL_COVERS = 0.1


def covered_by_first_email(offset: int, expires: dt.datetime | None, sent_at: dt.datetime) -> bool:
    """Whether the reminder of `offset` comes so soon after the first email (or before it) that
    the first email said it already."""
    return reminder_time(offset, expires, sent_at) < sent_at + dt.timedelta(
        seconds=offset * FIRST_EMAIL_COVERS
    )


def next_reminder(
    offsets: list[int], expires: dt.datetime | None, sent_at: dt.datetime, done: list[int]
) -> dt.datetime | None:
    """When the next reminder is due: the earliest offset time the first email did not cover
    and not yet done. None when there is none."""
    times = [
        reminder_time(o, expires, sent_at)
        for o in offsets
        if o not in done and not covered_by_first_email(o, expires, sent_at)
    ]
    return min(times) if times else None


def due_reminder(
    offsets: list[int],
    expires: dt.datetime | None,
    sent_at: dt.datetime,
    done: list[int],
    now: dt.datetime,
) -> tuple[int | None, list[int]]:
    """The reminder to send now (an offset in seconds, or None) and every offset it settles.

    After a pause (worker down) several offsets may be due at once: only the latest of them
    goes out (the most urgent, for a form that expires). An offset the first email covered
    (`covered_by_first_email`) is settled silently, since that email already said how much
    time was left.
    """
    if expires is not None and now >= expires:
        return None, []
    due = [o for o in offsets if o not in done and now >= reminder_time(o, expires, sent_at)]
    fresh = [o for o in due if not covered_by_first_email(o, expires, sent_at)]
    if not fresh:
        return None, due
    return max(fresh, key=lambda o: reminder_time(o, expires, sent_at)), due


def send_form_emails(form_pk: int, *, now: dt.datetime | None = None) -> int:
    """Send the first email to every recipient of a pending form not yet emailed."""
    form = Form.objects.select_related("run__app").filter(pk=form_pk).first()
    now = now or timezone.now()
    if form is None or not still_asking(form, now):
        return 0
    sent = 0
    try:
        for recipient in form.recipients.filter(
            _free(now), sent_at__isnull=True, withdrawn_at__isnull=True
        ):
            recipient.form = form
            sent += _send_request(recipient, now)
    except SoftTimeLimitExceeded:
        logger.warning(
            "form %s: out of time sending its first emails; the sweep sends the rest", form_pk
        )
    return sent


def still_asking(form: Form, now: dt.datetime | None = None) -> bool:
    """Whether the form still waits for an answer from us: pending, answerable, not expired."""
    now = now or timezone.now()
    return (
        form.status == Form.Status.PENDING
        and form.is_answerable
        and (form.expiration_time is None or form.expiration_time > now)
    )


def _send_request(recipient: FormRecipient, now: dt.datetime) -> int:
    if not recipient.still_asked():
        # Taken off the route, deactivated, or the form reassigned before the first email went
        # (or before an administrator's resend): nothing is sent.
        return 0
    # Claim the row first: the capture's task and the sweep may both get here; one sends. The
    # claim is "being sent until `held`", not "sent": a worker killed mid-send (its task's hard
    # time limit) leaves the row to the sweep once `held` has passed.
    held = now + SEND_CLAIM
    claimed = FormRecipient.objects.filter(
        _free(now), pk=recipient.pk, sent_at__isnull=True
    ).update(next_send_at=held, send_attempts=F("send_attempts") + 1)
    if not claimed:
        return 0
    sent = False
    try:
        sent = _send(recipient, "request", now)
    finally:
        if not sent:
            # Failed, or the task's time ran out: tried again after a wait that grows with the
            # attempts, while the form still asks. Given back only if still ours.
            _release(recipient.pk, held, now)
    if not sent:
        return 0
    form = recipient.form
    offsets = list(form.reminder_offsets or [])
    # Offsets already inside the time left, or about to be, were covered by this email.
    passed = [o for o in offsets if covered_by_first_email(o, form.expiration_time, now)]
    FormRecipient.objects.filter(pk=recipient.pk).update(
        sent_at=now,
        next_send_at=None,
        last_error="",
        reminders_sent=passed,
        next_reminder_at=next_reminder(offsets, form.expiration_time, now, passed),
    )
    return 1


def _release(pk: int, held: dt.datetime, now: dt.datetime) -> None:
    attempts = (
        FormRecipient.objects.filter(pk=pk).values_list("send_attempts", flat=True).first() or 1
    )
    FormRecipient.objects.filter(pk=pk, sent_at__isnull=True, next_send_at=held).update(
        next_send_at=now + retry_wait(attempts)
    )


def send_due_emails(now: dt.datetime | None = None, *, batch_size: int = 500) -> dict[str, int]:
    """The sweep: first emails that never went out, reminders that are due, and closing notices
    for forms that were decided or expired. Each part is bounded by `batch_size`. Stops when
    the task's time is up (SoftTimeLimitExceeded): what is left waits for the next sweep."""
    now = now or timezone.now()
    counts = {"requests": 0, "reminders": 0, "notices": 0, "failures": 0}
    try:
        _sweep(now, batch_size, counts)
    except SoftTimeLimitExceeded:
        logger.warning("email sweep: out of time; the next sweep sends the rest (%s)", counts)
    return counts


def _sweep(now: dt.datetime, batch_size: int, counts: dict[str, int]) -> None:
    # First emails whose task was lost, whose send failed (after its wait) or whose sender died
    # mid-send (once its claim has passed); a minute's grace for the task.
    late = (
        FormRecipient.objects.filter(
            _free(now),
            sent_at__isnull=True,
            created_at__lt=now - dt.timedelta(seconds=60),
            form__status=Form.Status.PENDING,
        )
        .exclude(form__form_token="")
        .filter(Q(form__expiration_time__isnull=True) | Q(form__expiration_time__gt=now))
        .select_related("form__run__app")[:batch_size]
    )
    for recipient in late:
        counts["requests"] += _send_request(recipient, now)

    # First emails still unsent (after failed attempts) when their form closed: given up,
    # which is said once, in the log; the dashboard no longer counts them either.
    unsent = FormRecipient.objects.filter(
        sent_at__isnull=True, next_send_at__isnull=False, form__status__in=ENDED_STATUSES
    ).values_list("pk", "form_id", "next_send_at", "send_attempts", "last_error")[:batch_size]
    for pk, form_id, at, attempts, error in unsent:
        if FormRecipient.objects.filter(pk=pk, next_send_at=at).update(next_send_at=None):
            logger.warning(
                "form %s closed before its first email to recipient %s could be sent; given up "
                "after %s attempts (last error: %s)",
                form_id,
                pk,
                attempts,
                error or "none",
            )

    for recipient in FormRecipient.objects.filter(
        next_reminder_at__lte=now, sent_at__isnull=False
    ).select_related("form__run__app")[:batch_size]:
        counts["reminders"] += _remind(recipient, now)

    # Closing notices, and the notices of forms gone from the workflow. A form found answered
    # in Dify without Dify saying how waits a little for the run's events, read once more: they
    # may say how, or that the answer was a decision made here (`Decision.correct_rejection`),
    # whose recipients are then told it was decided, not answered elsewhere.
    hold = dt.timedelta(seconds=settings.INBOX_ELSEWHERE_NOTICE_HOLD_SECONDS)
    closed = (
        FormRecipient.objects.filter(
            _free(now),
            sent_at__isnull=False,
            closed_notice_at__isnull=True,
            form__status__in=ENDED_STATUSES,
        )
        .exclude(
            form__status=Form.Status.ANSWERED_ELSEWHERE,
            form__filled_action_id="",
            form__updated_at__gt=now - hold,
        )
        .select_related("form__run__app", "user")[:batch_size]
    )
    for recipient in closed:
        counts["notices"] += _notify_closed(recipient, now)

    # Decisions that failed for good whose maker was not told (the task lost, or not yet run,
    # or its send failed and its wait is over).
    failed = Decision.objects.filter(
        Q(failure_notice_next_at__isnull=True) | Q(failure_notice_next_at__lte=now),
        status=Decision.Status.FAILED,
        form__status=Form.Status.FAILED,
        failure_notice_at__isnull=True,
        updated_at__gte=now - NOTICE_STALE_AFTER,
        updated_at__lt=now - dt.timedelta(seconds=60),
    ).values_list("pk", flat=True)[:batch_size]
    for pk in failed:
        counts["failures"] += send_failure_notice(pk, now=now)


def _remind(recipient: FormRecipient, now: dt.datetime) -> int:
    form = recipient.form
    this_time = recipient.next_reminder_at
    if (
        form.status == Form.Status.SUBMITTING
        and recipient.sent_at is not None
        and (form.expiration_time is None or form.expiration_time > now)
        and recipient.still_asked()
    ):
        # A decision is on its way: no reminder now, but Dify may still refuse it and give the
        # form back (a 400 `invalid_form_data`), so the schedule is kept and looked at again.
        FormRecipient.objects.filter(pk=recipient.pk, next_reminder_at=this_time).update(
            next_reminder_at=now + REMINDER_RETRY
        )
        return 0
    if not still_asking(form, now) or recipient.sent_at is None or not recipient.still_asked():
        # Decided, expired or closed in Dify: no more reminders; the closing notice follows.
        # Or no longer asked (taken off the route, deactivated, the form reassigned): nothing.
        FormRecipient.objects.filter(pk=recipient.pk).update(next_reminder_at=None)
        return 0
    done = list(recipient.reminders_sent or [])
    offsets = list(form.reminder_offsets or [])
    offset, settled = due_reminder(offsets, form.expiration_time, recipient.sent_at, done, now)
    done = sorted(set(done) | set(settled), reverse=True)
    following = next_reminder(offsets, form.expiration_time, recipient.sent_at, done)
    mine = FormRecipient.objects.filter(pk=recipient.pk, next_reminder_at=this_time)
    if offset is None:
        # Only offsets the first email covered, or none due: settled without an email.
        mine.update(reminders_sent=done, next_reminder_at=following)
        return 0
    # Claim by the due time we read (a concurrent sweep, which the lock makes rare, sends
    # none), as "being sent until `held`": a worker killed mid-send leaves the reminder due
    # again once `held` has passed, rather than passing for sent.
    held = now + SEND_CLAIM
    if not mine.update(next_reminder_at=held):
        return 0
    mine = FormRecipient.objects.filter(pk=recipient.pk, next_reminder_at=held)
    due = reminder_time(offset, form.expiration_time, recipient.sent_at)
    sent = False
    try:
        # The time left as of when the reminder was due ("in 1 hour" for the 1 h reminder, not
        # "in 59 minutes" because the sweep came a little later), but never more than a sweep's
        # interval before now (after a pause, the time actually left).
        sent = _send(recipient, "reminder", max(due, now - _sweep_every()))
    finally:
        if sent:
            mine.update(reminders_sent=done, next_reminder_at=following)
        else:
            # Not sent (the mail server down, say, or the task's time up): this reminder is due
            # again at the next sweep after a pause, while the form is still open, rather than
            # lost. The offsets it settled silently stay settled.
            mine.update(
                reminders_sent=[o for o in done if o != offset],
                next_reminder_at=now + REMINDER_RETRY,
            )
    if not sent:
        return 0
    FormRecipient.objects.filter(pk=recipient.pk).update(reminded_at=now)
    return 1


def _sweep_every() -> dt.timedelta:
    """How often the beat runs the email sweep (`send-reminders`)."""
    entry = settings.CELERY_BEAT_SCHEDULE.get("send-reminders") or {}
    return dt.timedelta(seconds=float(entry.get("schedule", 60.0)))  # type: ignore[arg-type]


def _notify_closed(recipient: FormRecipient, now: dt.datetime) -> int:
    """The notice to `recipient` that their form closed, or is gone from the workflow."""
    form = recipient.form
    unsettled = FormRecipient.objects.filter(pk=recipient.pk, closed_notice_at__isnull=True)
    gone = form.status == Form.Status.GONE
    kind = "gone" if gone else "closed"
    decision = _gone_decider(form) if gone else _decider(form)
    if (
        form.updated_at < now - NOTICE_STALE_AFTER
        # No longer asked when it closed: how it ended is not theirs to hear.
        or not recipient.still_asked()
        # They made the decision; telling them about it is noise.
        or (decision is not None and _made_by(decision, recipient))
    ):
        unsettled.update(closed_notice_at=now, next_reminder_at=None, next_send_at=None)
        return 0
    # Claimed as "being sent until `held`" (the sweep's query skips it until then), stamped
    # once it went: a failed send is tried again after a wait, a worker killed mid-send leaves
    # it to a later sweep.
    held = now + SEND_CLAIM
    claimed = unsettled.filter(_free(now)).update(
        next_send_at=held, next_reminder_at=None, notice_attempts=F("notice_attempts") + 1
    )
    if not claimed:
        return 0
    mine = FormRecipient.objects.filter(
        pk=recipient.pk, closed_notice_at__isnull=True, next_send_at=held
    )
    sent = False
    try:
        sent = _send(recipient, kind, now)
    finally:
        if sent:
            mine.update(closed_notice_at=now, next_send_at=None)
        else:
            attempts = recipient.notice_attempts + 1
            if attempts >= MAX_NOTICE_ATTEMPTS and mine.update(
                closed_notice_at=now, next_send_at=None
            ):
                logger.warning(
                    "form %s: %s notice to recipient %s given up after %s attempts",
                    form.pk,
                    "gone" if gone else "closing",
                    recipient.pk,
                    attempts,
                )
            else:
                mine.update(next_send_at=now + retry_wait(attempts))
    return int(sent)


def _gone_decider(form: Form) -> Decision | None:
    """The decision a gone form was left with: the one that failed for good (its maker was told
    so, `send_failure_notice`), unless an administrator gave the form back since, which asked
    its maker again like everyone else. None when the form went while it asked."""
    failed = (
        form.decisions.select_related("reviewer")
        .filter(status=Decision.Status.FAILED)
        .order_by("-created_at")
        .first()
    )
    if failed is None:
        return None
    given_back = AuditEntry.objects.filter(
        verb="form_reopened",
        object_type=Form._meta.model_name,
        object_id=str(form.pk),
        details__failed_decision=str(failed.public_id),
    ).exists()
    return None if given_back else failed


def _made_by(decision: Decision, recipient: FormRecipient) -> bool:
    """Whether `recipient` made `decision` (signed in with their account, or by their link)."""
    return bool(
        (decision.reviewer_id is not None and decision.reviewer_id == recipient.user_id)
        or (decision.guest_email and decision.guest_email.lower() == recipient.email.lower())
    )


def _failure_recipient(decision: Decision) -> FormRecipient | None:
    """Who is told that `decision` failed: the guest whose link made it (their row), or the
    reviewer who made it (their row when the form emailed them, else their account's address,
    language and zone). None for an account gone, deactivated or without an address."""
    form = decision.form
    if decision.guest_email:
        return (
            form.recipients.select_related("user")
            .filter(email__iexact=decision.guest_email)
            .first()
        )
    user = decision.reviewer
    if user is None or not user.is_active or not user.email:
        return None
    row = form.recipients.filter(Q(user=user) | Q(email__iexact=user.email)).first()
    if row is not None:
        return row
    language = ReviewerProfile.languages_of([user]).get(user.pk, settings.LANGUAGE_CODE)
    return FormRecipient(form=form, email=user.email, user=user, language=language)


def send_failure_notice(decision_pk: int, *, now: dt.datetime | None = None) -> int:
    """Tell the maker of a decision that failed for good (Dify refused it, or could not be
    reached after every attempt) that it was not delivered, and that the inbox's administrators
    can send it again or reopen the form. Once: the decision is claimed before the email goes
    (as "being sent until `held`"), so the task and the sweep never both send it, and stamped
    once it went; a failed send is tried again by the sweep after `retry_wait`, up to
    MAX_NOTICE_ATTEMPTS times. Not for a decision sent again or whose form moved on meanwhile
    (looked at before each attempt), nor news older than NOTICE_STALE_AFTER."""
    now = now or timezone.now()
    held = now + SEND_CLAIM
    claimed = Decision.objects.filter(
        Q(failure_notice_next_at__isnull=True) | Q(failure_notice_next_at__lte=now),
        pk=decision_pk,
        status=Decision.Status.FAILED,
        form__status=Form.Status.FAILED,
        failure_notice_at__isnull=True,
    ).update(failure_notice_next_at=held, failure_notice_attempts=F("failure_notice_attempts") + 1)
    if not claimed:
        return 0
    mine = Decision.objects.filter(
        pk=decision_pk, failure_notice_at__isnull=True, failure_notice_next_at=held
    )
    decision = (
        Decision.objects.select_related("form__run__app", "reviewer").filter(pk=decision_pk).first()
    )
    recipient = None
    if decision is not None and decision.updated_at >= now - NOTICE_STALE_AFTER:
        recipient = _failure_recipient(decision)
    if decision is None or recipient is None:
        # News too old, or nobody to tell: settled without an email.
        mine.update(failure_notice_at=now, failure_notice_next_at=None)
        return 0
    recipient.form = decision.form
    sent = False
    try:
        build_email(recipient, "failed", now=now, decision=decision).send()
        sent = True
    except SoftTimeLimitExceeded:
        # The task's time is up (a mail server that hangs): the claim is given back below and
        # the sweep tries again.
        raise
    except Exception as exc:
        # The error may quote the message; it never holds a form token (none is in it).
        logger.warning("decision %s: failure notice not sent: %s", decision_pk, exc)
    finally:
        if sent:
            mine.update(failure_notice_at=now, failure_notice_next_at=None)
        else:
            attempts = decision.failure_notice_attempts
            if attempts >= MAX_NOTICE_ATTEMPTS and mine.update(
                failure_notice_at=now, failure_notice_next_at=None
            ):
                logger.warning(
                    "decision %s: failure notice given up after %s attempts",
                    decision_pk,
                    attempts,
                )
            else:
                mine.update(failure_notice_next_at=now + retry_wait(attempts))
    return int(sent)


def resend_form_emails(form: Form) -> int:
    """The admin's "resend email": every recipient of a pending form gets the email again."""
    if not still_asking(form, timezone.now()):
        return 0
    asked = [r.pk for r in form.recipients.filter(withdrawn_at__isnull=True) if r.still_asked()]
    form.recipients.filter(pk__in=asked).update(
        sent_at=None, send_attempts=0, next_send_at=None, last_error=""
    )
    return send_form_emails(form.pk)


# ---------------------------------------------------------------------------------------------
# A new link, asked for from a lapsed one
# ---------------------------------------------------------------------------------------------

# One new link per recipient this often at most: whoever holds an old link can press the button,
# and the recipient's mailbox must not be theirs to fill.
RENEW_EVERY = dt.timedelta(minutes=10)
RENEWED = "link_renewed"
RENEWAL_FAILED = "link_renewal_failed"


@dataclass(frozen=True)
class Renewal:
    """What asking for a new link did: `sent`, `too_soon` (possible again at `retry_at`), or
    `failed` (the mail server refused; asking again may work)."""

    outcome: str
    retry_at: dt.datetime | None = None


def _audit(verb: str, recipient: FormRecipient, now: dt.datetime, **details: Any) -> None:
    entry = AuditEntry.build(
        verb, recipient, actor_label=recipient.email, form=str(recipient.form.public_id), **details
    )
    # The time the limit counts from: the caller's clock, not the column default's.
    entry.created_at = now
    entry.save(force_insert=True)


def send_new_link(recipient: FormRecipient, *, now: dt.datetime | None = None) -> Renewal:
    """Email `recipient` a fresh link to their form, at most once per RENEW_EVERY, with an
    audit entry for each request and each failure. The caller has checked that the form is
    open and still asks this recipient."""
    now = now or timezone.now()
    with transaction.atomic():
        # The row lock orders two presses of the button: the second sees the first's entry.
        if not FormRecipient.objects.select_for_update().filter(pk=recipient.pk).exists():
            return Renewal("failed")
        last = (
            AuditEntry.objects.filter(
                object_type=FormRecipient._meta.model_name,
                object_id=str(recipient.pk),
                verb__in=[RENEWED, RENEWAL_FAILED],
                created_at__gt=now - RENEW_EVERY,
            )
            # Written in this order (the failure after the send), whatever each web host's
            # clock said: the last one written is the one that counts.
            .order_by("-id")
            .values_list("verb", "created_at")
            .first()
        )
        if last is not None and last[0] == RENEWED:
            return Renewal("too_soon", retry_at=last[1] + RENEW_EVERY)
        _audit(RENEWED, recipient, now)
    # Sent outside the lock: a slow mail server holds up nobody else's work on the row.
    if not _send(recipient, "link", now):
        # Not counted against the limit: nothing reached the recipient.
        _audit(RENEWAL_FAILED, recipient, now)
        return Renewal("failed")
    return Renewal("sent")
