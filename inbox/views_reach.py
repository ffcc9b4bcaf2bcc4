"""Reach and govern: the pages behind emailed links (guests), claiming forms, the staff dashboard.

A guest page is the reviewer's form page drawn by `inbox.views` with a guest `Decider`, so
validation, uploads and the live poll behave exactly as for a signed-in reviewer. What differs is
the access check: a signed link (see `inbox.notify`) instead of `Form.objects.for_user`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.cache import cache
from django.db.models import Count, Min, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import reswap, retarget, trigger_client_event

from inbox import notify, timefmt
from inbox.middleware import add_audit_context, browser_time_zone, client_ip
from inbox.models import AuditEntry, ClaimRefused, Decision, DifyApp, Form, FormRecipient
from inbox.views import (
    Decider,
    HtmxHttpRequest,
    _get_form_for_user,
    decide_response,
    form_page_response,
    live_response,
    refused_for_htmx,
    remove_upload_response,
    upload_response,
)

# ---------------------------------------------------------------------------------------------
# Rate limits (Django's cache: shared by all processes when it is Redis)
# ---------------------------------------------------------------------------------------------

WINDOW = 60


def _window() -> int:
    """The number of the current rate-limit window (fixed windows of WINDOW seconds)."""
    return int(time.time() // WINDOW)


def _window_left() -> int:
    """Whole seconds until the current window ends (at least one)."""
    return max(1, math.ceil(WINDOW - time.time() % WINDOW))


def _hit(key: str, limit: int, window: int | None = None) -> bool:
    """Count one request against `key` in the current minute (or in `window`, as `_window`
    numbered it); True when over the limit."""
    bucket = f"reach:rate:{key}:{_window() if window is None else window}"
    if cache.add(bucket, 1, timeout=WINDOW * 2):
        return 1 > limit
    try:
        return cache.incr(bucket) > limit
    except ValueError:
        # Evicted between add and incr: start the count again.
        cache.set(bucket, 1, timeout=WINDOW * 2)
        return False


def _unhit(key: str, window: int) -> None:
    """Uncount a request `_hit` counted in `window` (what it was counted for did not happen)."""
    try:
        cache.incr(f"reach:rate:{key}:{window}", -1)
    except ValueError:
        pass  # the window's count is gone (evicted, or the window long over): nothing to undo


def _client_ip(request: HttpRequest) -> str:
    return client_ip(request)


def _link_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------
# Guest pages
# ---------------------------------------------------------------------------------------------

# Recipients whose link this browser used to decide: it keeps showing them the outcome, while
# the same link opened anywhere else is refused as used.
SESSION_USED = "inbox_used_links"
# Recipients whose link this browser opened: the trail has one `guest_link_opened` for each.
SESSION_OPENED = "inbox_opened_links"

_LINK_STATUS = {
    "invalid": 404,
    "expired": 410,
    "lapsed": 410,
    "used": 410,
    "closed": 410,
    "account": 403,
    "other_account": 403,
    "not_allowed": 403,
    "withdrawn": 403,
    "rate_limited": 429,
}


# A form in these states shows a guest who did not decide it only how it ended.
CLOSED_TO_GUESTS = (
    Form.Status.SUBMITTING,
    Form.Status.SUBMITTED,
    Form.Status.FAILED,
    Form.Status.EXPIRED,
    Form.Status.ANSWERED_ELSEWHERE,
)


def _link_page(
    request: HtmxHttpRequest, state: str, extra: dict[str, Any] | None = None
) -> HttpResponse:
    """The page for a link that opens nothing. It shows no data of the form.

    To an htmx request (the page's poll, a button on it), the part that replaces the open
    page's content: its form or button is of no more use. Too many requests is not the page's
    end, only a wait: that goes to the page's error alert, and the page stays."""
    context = {"state": state, **(extra or {})}
    status = _LINK_STATUS[state]
    if request.htmx and state == "rate_limited":
        message = _("Too many requests. Wait a minute, then try again.")
        response = refused_for_htmx(request, message, status=status)
    elif request.htmx:
        response = render(request, "inbox/guest_link.html#card_swap", context, status=status)
        reswap(retarget(response, "#main"), "innerHTML")
    else:
        response = render(request, "inbox/guest_link.html", context, status=status)
    if state == "rate_limited":
        # The windows are fixed: the count starts again when this one ends.
        response["Retry-After"] = str(_window_left())
    return _private(response)


def _private(response: HttpResponse) -> HttpResponse:
    """A page at a guest link's address: the link is a credential, so keep it out of other
    sites' Referer headers and of caches. `same-origin`, not `no-referrer`: with no referrer
    at all, browsers send `Origin: null` on the page's own form posts (the language switch,
    a decision without JavaScript), which the CSRF check rightly refuses."""
    response["Referrer-Policy"] = "same-origin"
    response["Cache-Control"] = "no-store"
    return response


def _lapsed_context(token: str, recipient: FormRecipient) -> dict[str, Any]:
    # The address masked: the page is shown to whoever holds the link, not only its owner.
    return {
        "token": token,
        "address": notify.masked_address(recipient.email),
        "link_lasts": timefmt.span(notify.link_max_age()),
    }


@dataclass
class GuestAccess:
    recipient: FormRecipient
    form: Form
    decider: Decider
    # Only with `allow_lapsed`: the link is too old to open the form; its recipient may ask
    # for a new one.
    lapsed: bool = False


def _guest_access(
    request: HtmxHttpRequest, token: str, *, landing: bool = False, allow_lapsed: bool = False
) -> GuestAccess | HttpResponse:
    """Check the rate limits and the link. Return the guest's access, or the response to send
    instead (a refusal page, or for the landing page a redirect to where the visitor belongs).

    A lapsed link (too old, to a form without an expiry) passes the same checks as a fresh
    one, and then offers a new link instead of the form; `allow_lapsed` returns it as access
    for the view that sends that link. A lapsed link to a form no longer open is expired."""
    ip = _client_ip(request)
    if _hit(f"ip:{ip}", settings.INBOX_GUEST_RATE_PER_IP):
        return _link_page(request, "rate_limited")
    check = notify.check_link(token)
    if check.state == "invalid":
        # Guessing at links: a much lower limit than for a visitor with a valid one.
        if _hit(f"bad:{ip}", settings.INBOX_GUEST_BAD_LINKS_PER_IP):
            return _link_page(request, "rate_limited")
        return _link_page(request, "invalid")
    if _hit(f"link:{_link_key(token)}", settings.INBOX_GUEST_RATE_PER_LINK):
        return _link_page(request, "rate_limited")
    recipient = check.recipient
    if recipient is not None and settings.LANGUAGE_COOKIE_NAME not in request.COOKIES:
        # No language chosen in this browser yet: the one the email was written in, for the
        # form and for every page that says why the link opens nothing (expired, used, ...).
        translation.activate(recipient.language)
        request.LANGUAGE_CODE = recipient.language
    if (
        recipient is None
        or check.state == "expired"
        or (check.state == "lapsed" and not notify.still_asking(recipient.form))
    ):
        return _link_page(request, "expired")
    form = recipient.form
    user = request.user
    if (
        landing
        and user.is_authenticated
        and Form.objects.for_user(user).filter(pk=form.pk).exists()
    ):
        return redirect("inbox:form", public_id=form.public_id)
    if recipient.user_id is not None:
        # The address belongs to an account: its owner signs in and answers as themselves.
        if landing and not user.is_authenticated:
            return redirect_to_login(reverse("inbox:form", args=[form.public_id]))
        if user.is_authenticated and user.pk != recipient.user_id:
            return _link_page(request, "other_account", {"username": user.get_username()})
        if user.is_authenticated and not Form.objects.for_user(user).filter(pk=form.pk).exists():
            # Its owner, signed in, to whom the form no longer goes (taken off its group).
            return _link_page(request, "withdrawn")
        return _link_page(request, "account")
    if not recipient.still_asked():
        # Taken off the route, the route switched off or deleted, the form reassigned, or the
        # address's account deactivated.
        return _link_page(request, "withdrawn")
    if not _route_takes_guests(form):
        return _link_page(request, "not_allowed")
    if recipient.link_used_at is not None and recipient.pk not in request.session.get(
        SESSION_USED, []
    ):
        # A used link opened in another browser: forwarded, or taken. The trail says from where.
        _record_guest("guest_link_refused", request, recipient, ip, reason="used")
        return _link_page(request, "used")
    if (
        form.status in CLOSED_TO_GUESTS
        and recipient.pk not in request.session.get(SESSION_USED, [])
        and not form.decisions.filter(guest_email__iexact=recipient.email).exists()
    ):
        # Decided or closed: how it ended, as the closing notice says it, but no more its
        # content nor the values a reviewer or another guest entered. The guest who decided
        # keeps their own outcome (in the browser they decided in: elsewhere the link is used).
        return _link_page(request, "closed", notify.closing_context(recipient))
    lapsed = check.state == "lapsed"
    if lapsed and not allow_lapsed:
        return _link_page(request, "lapsed", _lapsed_context(token, recipient))
    zone = "" if request.user.is_authenticated else browser_time_zone(request)
    if zone and zone != recipient.time_zone:
        # The zone the guest reads in, for the times of the reminders and notices that follow
        # (the first page of a link has no cookie yet; its polls and posts do). Not that of a
        # reviewer signed in here: the link was forwarded to them.
        # Kept for the address, not only this form: the emails of the guest's other forms,
        # and of those routed to them later, give times in it too.
        FormRecipient.remember_zone(recipient.email, zone)
        recipient.time_zone = zone
    decider = Decider(base_url=notify.link_path(token), guest_email=recipient.email)
    # What the guest does from here (decide, upload) is recorded with the link's recipient and
    # the address it came from.
    add_audit_context(recipient=recipient.pk, ip=ip)
    return GuestAccess(recipient=recipient, form=form, decider=decider, lapsed=lapsed)


def _record_guest(
    verb: str, request: HttpRequest, recipient: FormRecipient, ip: str, **details: Any
) -> None:
    """An entry about a guest link: by whoever is signed in here, else by its recipient."""
    user = request.user
    AuditEntry.record(
        verb,
        recipient,
        actor=user if user.is_authenticated else None,
        actor_label="" if user.is_authenticated else recipient.email,
        form=str(recipient.form.public_id),
        recipient=recipient.pk,
        ip=ip,
        **details,
    )


def _route_takes_guests(form: Form) -> bool:
    """Whether the form's route lets guests answer now: an administrator who stops it letting
    them closes the links already sent, and one who lets them again opens them (the email of a
    form captured meanwhile said answering needs an account; the link now lets them answer)."""
    return form.route is not None and form.route.allow_guests


@require_GET
def guest_form(request: HtmxHttpRequest, token: str) -> HttpResponse:
    access = _guest_access(request, token, landing=True)
    if isinstance(access, HttpResponse):
        return access
    recipient = access.recipient
    if recipient.link_opened_at is None:
        FormRecipient.objects.filter(pk=recipient.pk, link_opened_at__isnull=True).update(
            link_opened_at=timezone.now()
        )
    opened = list(request.session.get(SESSION_OPENED, []))
    if recipient.pk not in opened:
        # Who saw the form: once per link and browser (the page's polls are not views).
        _record_guest("guest_link_opened", request, recipient, _client_ip(request))
        request.session[SESSION_OPENED] = [*opened[-19:], recipient.pk]
    return _private(form_page_response(request, access.form, access.decider))


@require_POST
def guest_decide(request: HtmxHttpRequest, token: str) -> HttpResponse:
    access = _guest_access(request, token)
    if isinstance(access, HttpResponse):
        return access
    response = decide_response(request, access.form, access.decider)
    recipient = access.recipient
    decided = Decision.objects.filter(form=access.form, guest_email=recipient.email).first()
    if decided is not None and request.user.is_authenticated and recipient.link_used_at is None:
        # Decided for the link's recipient by someone signed in here (the link was forwarded
        # to them): the trail says who pressed the button.
        AuditEntry.record(
            "guest_link_used_signed_in",
            decided,
            actor=request.user,
            guest=recipient.email,
            form=str(access.form.public_id),
        )
    if recipient.link_used_at is None and decided is not None:
        # Used: from now on the link shows its outcome only in this browser.
        FormRecipient.objects.filter(pk=recipient.pk).update(link_used_at=timezone.now())
        used = list(request.session.get(SESSION_USED, []))
        request.session[SESSION_USED] = [*used[-19:], recipient.pk]
    return response


@require_POST
def guest_upload(request: HtmxHttpRequest, token: str, input_name: str) -> HttpResponse:
    access = _guest_access(request, token)
    if isinstance(access, HttpResponse):
        return access
    return upload_response(request, access.form, access.decider, input_name)


@require_POST
def guest_remove_upload(request: HtmxHttpRequest, token: str, upload_id: uuid.UUID) -> HttpResponse:
    access = _guest_access(request, token)
    if isinstance(access, HttpResponse):
        return access
    return remove_upload_response(request, access.form, access.decider, upload_id)


@require_GET
def guest_live(request: HtmxHttpRequest, token: str) -> HttpResponse:
    access = _guest_access(request, token)
    if isinstance(access, HttpResponse):
        return access
    return live_response(request, access.form, access.decider)


def _in_whole_minutes(when: dt.datetime | None) -> str:
    """The wait until `when` in words ("in 10 minutes"), rounded up: asking again at the time
    said is never too soon."""
    now = timezone.now()
    wait = math.ceil(((when or now) - now).total_seconds() / 60)
    return timefmt.relative(now + dt.timedelta(minutes=max(wait, 1)), now)


@require_POST
def guest_renew(request: HtmxHttpRequest, token: str) -> HttpResponse:
    """The lapsed link page's "Email me a new link": a fresh link to the recipient's stored
    address (never one typed here), at most once per `notify.RENEW_EVERY`."""
    access = _guest_access(request, token, allow_lapsed=True)
    if isinstance(access, HttpResponse):
        return access
    if not access.lapsed:
        # The link still opens the form: nothing to send.
        return redirect(notify.link_path(token))
    recipient = access.recipient
    renewal = notify.send_new_link(recipient)
    address = notify.masked_address(recipient.email)
    if renewal.outcome == "sent":
        level, tag = messages.SUCCESS, "success"
        message = _("We sent a new link to %(address)s. It may take a few minutes to arrive.") % {
            "address": address
        }
    elif renewal.outcome == "too_soon":
        level, tag = messages.WARNING, "warning"
        message = _(
            "A new link was already sent to %(address)s a few minutes ago, so none was sent "
            "now. Look for it in your inbox and spam folder, or ask again %(when)s."
        ) % {"address": address, "when": _in_whole_minutes(renewal.retry_at)}
    else:
        level, tag = messages.ERROR, "error"
        message = _("The email could not be sent just now. Try again in a few minutes.")
    if request.htmx:
        # htmx swaps only 2xx answers; the outcome is in the part it swaps.
        context = {
            **_lapsed_context(token, recipient),
            "state": "lapsed",
            "renewal": {"tag": tag, "message": message},
        }
        response = _private(render(request, "inbox/guest_link.html#renew", context))
        return trigger_client_event(response, "inbox:announce", {"message": message})
    messages.add_message(request, level, message)
    return redirect(notify.link_path(token))


# ---------------------------------------------------------------------------------------------
# Claim and release
# ---------------------------------------------------------------------------------------------


def _back(request: HttpRequest, form: Form) -> HttpResponse:
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        target = reverse("inbox:form", args=[form.public_id])
    return redirect(target)


@login_required
@require_POST
def form_claim(request: HtmxHttpRequest, public_id: uuid.UUID) -> HttpResponse:
    form = _get_form_for_user(request, public_id)
    try:
        form.claim(request.user)
    except ClaimRefused as exc:
        return _claimed(request, form, exc.message, ok=False)
    return _claimed(request, form, _("You took this form. Others see that you are handling it."))


@login_required
@require_POST
def form_release(request: HtmxHttpRequest, public_id: uuid.UUID) -> HttpResponse:
    form = _get_form_for_user(request, public_id)
    try:
        form.release(request.user)
    except ClaimRefused as exc:
        return _claimed(request, form, exc.message, ok=False)
    return _claimed(request, form, _("You released this form."))


def _claimed(
    request: HtmxHttpRequest, form: Form, message: str, *, ok: bool = True
) -> HttpResponse:
    """The claim panel redrawn in place (htmx): what the reviewer typed in the form below stays
    as it is. Without script, the page again, with the message."""
    if not request.htmx:
        (messages.success if ok else messages.error)(request, message)
        return _back(request, form)
    form.refresh_from_db()
    decider = Decider(base_url=reverse("inbox:form", args=[form.public_id]), reviewer=request.user)
    response = render(
        request,
        "inbox/claim_panel.html",
        {"form": form, "decider": decider, "claim_note": message, "claim_ok": ok},
    )
    return trigger_client_event(response, "inbox:announce", {"message": message})


# ---------------------------------------------------------------------------------------------
# Dashboard
# ---------------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of sorted `values` (None when empty)."""
    if not values:
        return None
    rank = max(1, math.ceil(round(fraction * len(values), 9)))
    return values[min(rank, len(values)) - 1]


def decision_times(since: dt.datetime) -> list[float]:
    """Seconds from arrival to decision of the forms decided since `since`, sorted."""
    rows = Form.objects.filter(decided_at__gte=since).values_list("created_at", "decided_at")
    return sorted(
        (decided - created).total_seconds() for created, decided in rows if decided is not None
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    # Each unit is chosen by the value as it will be shown: 3,599 s is "1.0 h", not "60 min".
    if round(seconds) < 60:
        return _("%(n)d s") % {"n": round(seconds)}
    if round(seconds / 60) < 60:
        return _("%(n)d min") % {"n": round(seconds / 60)}
    if round(seconds / 3600, 1) < 24:
        return _("%(n).1f h") % {"n": seconds / 3600}
    return _("%(n).1f d") % {"n": seconds / 86400}


# Geometry of the charts, in SVG user units; the SVG scales to the page's width.
CHART_WIDTH = 640
LABEL_WIDTH = 220
BAR_HEIGHT = 18
BAR_GAP = 8


def bar_rows(items: list[tuple[str, float, str]]) -> dict[str, Any]:
    """A horizontal bar chart: (label, value, shown value) → rectangles and text positions."""
    top = max((value for _label, value, _text in items), default=0) or 1
    span = CHART_WIDTH - LABEL_WIDTH - 60
    bars = []
    for index, (label, value, text) in enumerate(items):
        y = index * (BAR_HEIGHT + BAR_GAP)
        width = max(1.0, span * value / top) if value else 0.0
        bars.append(
            {
                "label": label,
                "text": text,
                "y": y,
                "text_y": y + BAR_HEIGHT - 5,
                "width": round(width, 1),
                "value_x": round(LABEL_WIDTH + width + 6, 1),
            }
        )
    return {
        "bars": bars,
        "height": max(1, len(items)) * (BAR_HEIGHT + BAR_GAP),
        "width": CHART_WIDTH,
        "label_width": LABEL_WIDTH,
        "bar_height": BAR_HEIGHT,
    }


def daily_columns(now: dt.datetime, days: int = 30) -> dict[str, Any]:
    """Forms decided and expired per day over the last `days` days, as stacked columns."""
    start = timezone.localtime(now).date() - dt.timedelta(days=days - 1)
    decided = [0] * days
    expired = [0] * days
    since = now - dt.timedelta(days=days + 1)
    for value in Form.objects.filter(decided_at__gte=since).values_list("decided_at", flat=True):
        index = (timezone.localtime(value).date() - start).days
        if 0 <= index < days:
            decided[index] += 1
    for value in Form.objects.filter(
        status=Form.Status.EXPIRED, expiration_time__gte=since, expiration_time__lte=now
    ).values_list("expiration_time", flat=True):
        index = (timezone.localtime(value).date() - start).days
        if 0 <= index < days:
            expired[index] += 1
    height = 120
    top = max((d + e for d, e in zip(decided, expired, strict=True)), default=0) or 1
    step = CHART_WIDTH / days
    columns = []
    for index in range(days):
        day = start + dt.timedelta(days=index)
        d_height = round(height * decided[index] / top, 1)
        e_height = round(height * expired[index] / top, 1)
        columns.append(
            {
                "x": round(index * step + 1, 1),
                "width": round(step - 2, 1),
                "day": day.isoformat(),
                "decided": decided[index],
                "expired": expired[index],
                "decided_y": round(height - d_height, 1),
                "decided_height": d_height,
                "expired_y": round(height - d_height - e_height, 1),
                "expired_height": e_height,
            }
        )
    return {
        "columns": columns,
        "height": height,
        "width": CHART_WIDTH,
        "first": start.isoformat(),
        "last": (start + dt.timedelta(days=days - 1)).isoformat(),
        "top": top,
        "total_decided": sum(decided),
        "total_expired": sum(expired),
    }


def _dify_troubles() -> dict[str, Any]:
    """What the dashboard says of Dify: the servers found away (no connection or no answer in
    time: an outage is most often the whole server's, so its apps are named together, with the
    server), the apps Dify answers with server errors (5xx), the apps whose event
    streams Dify fails, and the apps it refuses: their forms cannot arrive. Only active apps
    raise a banner; an inactive one (a server retired, say) is named apart, quietly."""
    from inbox.follower import waiting_for_a_key

    troubled = list(
        DifyApp.objects.filter(Q(refused_at__isnull=False) | Q(contact_failed_at__isnull=False))
    )
    active = [app for app in troubled if app.is_active]
    away: dict[str, list[DifyApp]] = {}
    erring: list[DifyApp] = []
    for app in active:
        if app.refused_at is None and not app.streams_failing:
            if app.contact_failure_status is None:
                # No connection, no answer in time: the server's, most often.
                away.setdefault(app.server, []).append(app)
            else:
                # The server answered, with a 5xx for this app: not the server as a whole.
                erring.append(app)
    servers = []
    for server, apps in sorted(away.items()):
        # Each is marked (`contact_failed_at`), so each has a time; the latest says most.
        times = sorted(
            (
                (app.contact_failed_since or app.contact_failed_at or timezone.now(), app)
                for app in apps
            ),
            key=lambda pair: pair[0],
        )
        servers.append(
            {
                "server": server,
                "count": len(apps),
                "names": ", ".join(app.name for app in apps),
                "since": times[0][0],
                "failure": times[-1][1].contact_failure,
            }
        )
    return {
        "unreachable_servers": servers,
        "erring_apps": erring,
        "streams_failing_apps": [
            app for app in active if app.refused_at is None and app.streams_failing
        ],
        "refused_apps": [
            app for app in active if app.refused_at is not None and not app.mode_mismatch
        ],
        # Not refused: a start of the mode set up here is, and nothing of their runs waits.
        "mode_mismatch_apps": [app for app in active if app.mode_mismatch],
        "inactive_troubled": ", ".join(
            app.name for app in troubled if not app.is_active and not app.mode_mismatch
        ),
        # Apps a running follower cannot decrypt the API key of, with their runs that wait:
        # not Dify's doing, nor the follower missing (`unfollowed` leaves their runs out).
        "key_unreadable_apps": waiting_for_a_key(),
    }


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    if not request.user.is_staff:
        # Not a page for reviewers: as with a form one may not see, it does not exist for them.
        raise Http404
    now = timezone.now()
    pending = list(
        Form.objects.filter(status=Form.Status.PENDING)
        .values("run__app__name", "node_id", "node_title")
        .annotate(n=Count("id"))
        .order_by("-n", "run__app__name", "node_title")[:25]
    )
    pending_chart = bar_rows(
        [
            (
                f"{row['run__app__name']} · {row['node_title'] or row['node_id']}",
                row["n"],
                str(row["n"]),
            )
            for row in pending
        ]
    )
    periods = []
    for days in (7, 30):
        times = decision_times(now - dt.timedelta(days=days))
        periods.append(
            {
                "days": days,
                "count": len(times),
                "median": percentile(times, 0.5),
                "p95": percentile(times, 0.95),
            }
        )
    timing_items = []
    for period in periods:
        timing_items.append(
            (
                _("median, %(days)d days") % {"days": period["days"]},
                period["median"] or 0,
                _duration(period["median"]),
            )
        )
        timing_items.append(
            (
                _("95th percentile, %(days)d days") % {"days": period["days"]},
                period["p95"] or 0,
                _duration(period["p95"]),
            )
        )
    rows = [
        {**period, "median_text": _duration(period["median"]), "p95_text": _duration(period["p95"])}
        for period in periods
    ]
    from inbox.follower import unfollowed
    from inbox.health import celery_state

    # What is on its way to Dify, and what of it waits: retrying (Dify down, busy or its answer
    # lost) and held (Dify refuses the app), and since when the oldest not held waits; and the
    # decisions delivered by presumption that Dify's events have not confirmed yet
    # (`Decision.delivery_presumed`). One query.
    travelling = Q(status__in=(Decision.Status.QUEUED, Decision.Status.DELIVERING))
    on_their_way = Decision.objects.filter(travelling | Decision.presumed()).aggregate(
        on_their_way=Count("pk", filter=travelling),
        retrying=Count(
            "pk",
            filter=Q(status=Decision.Status.QUEUED, attempts__gt=0, held_for_app=False),
        ),
        held=Count("pk", filter=Q(status=Decision.Status.QUEUED, held_for_app=True)),
        oldest=Min("created_at", filter=travelling & Q(held_for_app=False)),
        presumed=Count("pk", filter=Q(status=Decision.Status.DELIVERED)),
    )
    oldest = on_their_way.pop("oldest")
    context = {
        # Runs no follower takes: none is running, and their next forms never arrive.
        "unfollowed": unfollowed()[0],
        # Beat, the workers, the mailer: whether the periodic tasks run and decisions go out.
        "celery": celery_state(),
        **_dify_troubles(),
        "pending": pending,
        "pending_total": Form.objects.filter(status=Form.Status.PENDING).count(),
        "pending_chart": pending_chart,
        "periods": rows,
        "timing_chart": bar_rows(timing_items),
        "daily": daily_columns(now),
        "expired_7": Form.objects.filter(
            status=Form.Status.EXPIRED, expiration_time__gte=now - dt.timedelta(days=7)
        ).count(),
        "expired_30": Form.objects.filter(
            status=Form.Status.EXPIRED, expiration_time__gte=now - dt.timedelta(days=30)
        ).count(),
        # Those still waiting for an administrator (retry, or reopen the form): not one whose
        # form closed since (gone from Dify, reopened and decided again).
        "failed_deliveries": Decision.objects.filter(
            status=Decision.Status.FAILED, form__status=Form.Status.FAILED
        ).count(),
        **on_their_way,
        "oldest_waiting": _duration((now - oldest).total_seconds()) if oldest else "",
        "unsent_emails": FormRecipient.objects.filter(
            sent_at__isnull=True, form__status=Form.Status.PENDING
        ).count(),
        # Asked of nobody: no route took them, or theirs names no one who can answer (its group
        # deleted, its reviewers deactivated, its list empty). Only staff see these forms.
        "unrouted": Form.objects.filter(status=Form.Status.PENDING).asked_of_nobody().count(),
    }
    return render(request, "inbox/dashboard.html", context)
