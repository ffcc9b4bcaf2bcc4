"""Reviewer pages: the inbox and the form page (with its uploads, decision and live parts).

The form page is drawn by `*_response` functions that take the Form and a `Decider` (who is
deciding, and the URL the page's endpoints hang off), so a guest page reached through a signed
link reuses the same rendering with its own Decider. The reviewer views below are thin wrappers:
fetch through `_get_form_for_user`, call the shared function.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import logging
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape
from typing import Any, cast

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.db.models import Count, Exists, F, Max, OuterRef, Q, QuerySet, Value
from django.db.models.functions import Left
from django.forms.utils import ErrorDict, ErrorList
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import dateformat, timezone
from django.utils.formats import get_format
from django.utils.safestring import SafeString, mark_safe
from django.utils.timezone import get_current_timezone
from django.utils.translation import get_language, gettext_lazy, ngettext, pgettext
from django.utils.translation import gettext as _
from django.views.csrf import csrf_failure as django_csrf_failure
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import reswap, retarget, trigger_client_event
from django_htmx.middleware import HtmxDetails

from inbox import presence, timefmt
from inbox.dify.files import (
    AUDIO,
    CATEGORY_EXTENSIONS,
    DOCUMENT,
    IMAGE,
    VIDEO,
    size_limit_for,
)
from inbox.forms import (
    RUN_ID_START,
    DecisionForm,
    FileRefsField,
    InputSpec,
    answered_content,
    existing_decision,
    input_specs,
    inputs_from_dify,
    is_upload_id,
    joined,
    not_delivered,
    other_files,
    page_text,
    small_int,
    unmatchable_extensions,
)
from inbox.markdown import PLACEHOLDER, quick_excerpt, split_content
from inbox.models import (
    KIND_REFUSALS,
    SETUP_REFUSALS,
    UNPUBLISHED_REFUSAL,
    AuditEntry,
    Decision,
    DifyApp,
    Form,
    FormNotOpen,
    FormRecipient,
    ReviewerProfile,
    Route,
    Run,
    Upload,
    assigned_to_q,
    routing_is_dense,
    run_end_closing,
)
from inbox.names import display_name, full_name, people_named
from inbox.reasons import is_cjk, labelled, worded
from inbox.runs import turn_number, turn_of
from inbox.templatetags.inbox_tags import status_label
from inbox.uploads import (
    UploadRejected,
    size_limit_label,
    too_large,
    upload_limits,
    upload_to_dify,
)
from inbox.views_runs import output_items, timeline_items

logger = logging.getLogger(__name__)


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def refused_for_htmx(
    request: HtmxHttpRequest, message: str, *, status: int, reload: bool = False
) -> HttpResponse:
    """An error answer to a page's htmx request, worded for the page's error alert (base.html).

    htmx swaps nothing of a 4xx or 5xx answer, so the button would just come back; app.js
    swaps an error answer that names its place. The page stays as it was, with what was typed.
    `reload`: the page itself is out of date, and the message links to it."""
    context = {
        "message": message,
        "reload_url": request.htmx.current_url_abs_path if reload else "",
    }
    response = render(request, "base.html#request_error", context, status=status)
    return reswap(retarget(response, "#request-error-text"), "innerHTML")


def csrf_failure(request: HtmxHttpRequest, reason: str = "") -> HttpResponse:
    """Django's refusal of a post without this site's CSRF token (CSRF_FAILURE_VIEW). A page's
    htmx post was sent with the token the page was drawn with: the page is out of date (open
    for long, or its reader signed in again since, which changes the token)."""
    if getattr(request, "htmx", False):
        message = _(
            "Nothing was sent: this page is out of date (it was open a long time, or you "
            "signed in again since). Copy anything you typed, then reload the page and try again."
        )
        return refused_for_htmx(request, message, status=403, reload=True)
    return django_csrf_failure(request, reason)


# ---------------------------------------------------------------------------------------------
# The inbox
# ---------------------------------------------------------------------------------------------

PAGE_SIZE = 50

# The tabs of the inbox and the form statuses each one shows.
TABS: list[tuple[str, Any, tuple[str, ...]]] = [
    ("pending", gettext_lazy("Pending"), ("pending",)),
    ("submitted", gettext_lazy("Submitted"), ("submitting", "submitted")),
    ("expired", gettext_lazy("Expired"), ("expired",)),
    # Forms answered outside the inbox, those only Dify's own channels (email, its console)
    # can answer, and those whose run Dify no longer knows.
    (
        "elsewhere",
        gettext_lazy("Outside the inbox"),
        ("answered_elsewhere", "not_answerable", "gone"),
    ),
    ("failed", gettext_lazy("Failed"), ("failed",)),
]
TAB_STATUSES = {key: statuses for key, _label, statuses in TABS}


def status_q(statuses: tuple[str, ...], now: dt.datetime) -> Q:
    """Forms of `statuses` as a reader sees them now: a pending form whose time has run out is
    expired already, though the sweep may take up to a minute to record it. (The tabs' counts
    go by the recorded status, and catch up with the sweep.)"""
    q = Q(status__in=statuses)
    if "pending" in statuses and "expired" not in statuses:
        q &= ~Q(status="pending") | Q(expiration_time__isnull=True) | Q(expiration_time__gt=now)
    elif "expired" in statuses and "pending" not in statuses:
        q |= Q(status="pending", expiration_time__lte=now)
    return q


SORTS: dict[str, Any] = {
    "time_left": gettext_lazy("Time left"),
    "newest": gettext_lazy("Newest"),
    "oldest": gettext_lazy("Oldest"),
    "decided": gettext_lazy("Recently decided"),
}
# The tabs of decided forms read most recently decided first by default: what colleagues just
# did. The others, soonest to expire first.
DECIDED_TABS = ("submitted", "elsewhere")


def default_sort(status: str) -> str:
    return "decided" if status in DECIDED_TABS else "time_left"


def ordering(sort: str, status: str = "") -> list[Any]:
    if sort == "decided":
        # A form on its way to Dify has no decision time yet: it is the one decided last, so
        # it comes first on the Submitted tab. Elsewhere a form with none (one Dify still asks,
        # one gone) comes after those answered. On PostgreSQL each tab's order, over exactly
        # its statuses (TABS), is a partial index of migration 0041; change them together.
        if status == "elsewhere":
            return [F("decided_at").desc(nulls_last=True), "-id"]
        return [F("decided_at").desc(nulls_first=True), "-id"]
    if sort == "newest":
        return ["-created_at", "-id"]
    if sort == "oldest":
        return ["created_at", "id"]
    # Soonest to expire first; forms that never expire go last.
    return [F("expiration_time").asc(nulls_last=True), "id"]


@dataclass
class InboxFilters:
    status: str = "pending"
    app: int | None = None
    node: str = ""
    q: str = ""
    sort: str = "time_left"
    page: int = 1
    # "Assigned to me": forms the user holds or that were routed to them by name.
    mine: bool = False
    user: Any = None

    @classmethod
    def from_query(cls, query: Any, user: Any = None) -> InboxFilters:
        status = query.get("status", "pending")
        status = status if status in TAB_STATUSES or status == "all" else "pending"
        sort = query.get("sort") or default_sort(status)
        app = query.get("app", "")
        page = query.get("page", "1")
        return cls(
            status=status,
            app=small_int(app),
            node=query.get("node", "").strip()[:128],
            q=query.get("q", "").strip()[:200],
            sort=sort if sort in SORTS else default_sort(status),
            page=small_int(page) or 1,
            mine=query.get("mine") == "1" and user is not None,
            user=user,
        )

    @property
    def is_narrowed(self) -> bool:
        return bool(self.app or self.node or self.q or self.mine)

    def apply(self, forms: QuerySet[Form], *, with_status: bool = True) -> QuerySet[Form]:
        if self.app:
            forms = forms.filter(run__app_id=self.app)
        if self.node:
            app, node = split_node(self.node)
            forms = forms.filter(node_id=node)
            if app is not None:
                forms = forms.filter(run__app_id=app)
        if self.q:
            found = Q(node_title__icontains=self.q) | Q(content__icontains=self.q)
            if RUN_ID_START.fullmatch(self.q) and any(c.isdigit() for c in self.q):
                # The start of the run id a row shows ("Run 41f2c79e", as a colleague names
                # it). Its runs are found first, so the forms' search stays on its indexes.
                runs = Run.objects.filter(workflow_run_id__startswith=self.q.lower())
                found |= Q(run_id__in=list(runs.values_list("pk", flat=True)[:RUNS_FOUND_CAP]))
            # The app's name, as every row's chip shows it ("refund-approval"), and the people
            # a row names: who the form is assigned to, who decided it, who started its run, by
            # username or by the name the page shows ("Alice Smith", "王芳", as the Runs search
            # finds them: `people_named`). The apps and the people are few and found first, in
            # one query, so a search that names none adds nothing to the forms' (which then
            # stays on its indexes).
            apps: list[int] = []
            people: list[int] = []
            for kind, pk in named_in_search(self.q):
                (apps if kind == "app" else people).append(pk)
            if apps:
                found |= Q(run__app_id__in=apps)
            if people:
                found |= (
                    Q(
                        pk__in=Form.assigned_users.through.objects.filter(
                            user_id__in=people
                        ).values("form_id")
                    )
                    | Q(pk__in=Decision.objects.filter(reviewer_id__in=people).values("form_id"))
                    | Q(run_id__in=Run.objects.filter(started_by_id__in=people).values("pk"))
                )
            forms = forms.filter(found)
        if self.mine:
            forms = forms.filter(assigned_to_q(self.user))
        if with_status and self.status != "all":
            forms = forms.filter(status_q(TAB_STATUSES[self.status], timezone.now()))
        return forms


RUNS_FOUND_CAP = 200
# The apps and people a search names, at most (a search naming more is no search for one).
NAMED_FOUND_CAP = 200


def named_in_search(q: str) -> list[tuple[str, int]]:
    """("app", pk) for each app whose name holds `q`, ("person", pk) for each account it names
    by username or by the name the pages show (`people_named`): one query."""
    apps = (
        DifyApp.objects.filter(name__icontains=q)
        .annotate(kind=Value("app"))
        .order_by()
        .values_list("kind", "pk")
    )
    people = (
        get_user_model()
        .objects.filter(Q(username__iexact=q) | Q(pk__in=people_named(q).values("pk")))
        .annotate(kind=Value("person"))
        .order_by()
        .values_list("kind", "pk")
    )
    return list(apps.union(people, all=True)[:NAMED_FOUND_CAP])


def _change_token(request: HttpRequest) -> str:
    """What the list poll compares: the newest change among the forms this user may see.

    One indexed MAX(updated_at); a new form or any status change moves it. Routing narrows
    `for_user`, which narrows this with it.
    """
    latest = Form.objects.for_user(request.user).aggregate(latest=Max("updated_at"))["latest"]
    return latest.isoformat() if latest else "0"


# Tab counts stop here and show as "1000+": an exact count reads every visible form (hundreds
# of milliseconds at 100k), a capped one stops at the cap, and nobody works a tab that long.
COUNT_CAP = 1000


def _tab_counts(
    request: HttpRequest,
    filters: InboxFilters,
    token: str,
    *,
    allow_last: bool = False,
    new_since: dt.datetime | None = None,
) -> tuple[dict[str, int], bool, int]:
    """Forms per tab, counted up to COUNT_CAP + 1 and cached until any form changes.

    The change token moves with every new form or status change, so a cached count is never
    stale, and reloads, tab switches and pages reuse it. All tabs in one statement: each count
    is a subquery that stops after COUNT_CAP + 1 rows.

    A count reads far more forms than a page: where most forms are the reviewer's it stops
    early in each status index, and each form is probed; where few are (a team routed one form
    in ten) it reads far down the index, and hashing the team's routing once is cheaper.

    `new_since`: the pending forms that arrived since then are counted too, in the same
    statement ("3 new": `ReviewerProfile.looked_at_list`).

    Returns the counts, whether they are current, and the new forms. `allow_last`: when the forms changed
    since the last count, return that last count (not current) rather than count again; the
    page then asks for the current one (`tabs`) once it is shown, so a list never waits for a
    recount (a tenth of a second at 100k forms) and every change still reaches the tabs.
    """
    new = new_since.isoformat() if new_since else ""
    narrowing = f"{filters.app or ''}\n{filters.node}\n{filters.q}\n{filters.mine}\n{new}".encode()
    narrow = hashlib.sha256(narrowing).hexdigest()[:16]
    key = f"inbox:counts:{request.user.pk}:{token}:{narrow}"
    last_key = f"inbox:counts-last:{request.user.pk}:{narrow}"
    cached = cache.get_many([key, last_key] if allow_last else [key])
    counts: dict[str, int] | None = cached.get(key)
    if counts is not None:
        return counts, True, counts.pop(NEW_COUNT, 0)
    if allow_last and cached.get(last_key) is not None:
        counts = cached[last_key]
        return counts, False, counts.pop(NEW_COUNT, 0)
    user = request.user
    dense = not user.is_staff and routing_is_dense(user)
    visible = Form.objects.for_user(user, probe=dense)
    base = filters.apply(visible, with_status=False).order_by()
    parts: list[str] = []
    params: list[Any] = []
    for _key, _label, statuses in TABS:
        sql, part_params = (
            base.filter(status__in=statuses).values("pk")[: COUNT_CAP + 1].query.sql_with_params()
        )
        # Django compiled `sql` with placeholders; its values travel in `params`.
        parts.append(f"(SELECT COUNT(*) FROM ({sql}) AS capped)")  # noqa: S608
        params.extend(part_params)
    if new_since is not None:
        arrived = base.filter(status=Form.Status.PENDING, created_at__gt=new_since)
        sql, part_params = arrived.values("pk")[: COUNT_CAP + 1].query.sql_with_params()
        parts.append(f"(SELECT COUNT(*) FROM ({sql}) AS capped)")  # noqa: S608
        params.extend(part_params)
    select = "SELECT " + ", ".join(parts)
    with connection.cursor() as cursor:
        if not dense or connection.vendor != "postgresql":
            cursor.execute(select, params)
            row = cursor.fetchone()
        else:
            # Each count stops after COUNT_CAP + 1 forms, early in the status index, which
            # a plain index scan does. The planner, expecting to read far more, prefers a
            # bitmap scan that reads every index entry of the status first (30k pending
            # forms at 100k: twice the time). So bitmap scans are off while this statement
            # is planned, and the statement puts the setting back (no transaction, one
            # extra query). Not for a sparse reviewer: there the bitmap scan wins.
            cursor.execute(
                "SELECT current_setting('enable_bitmapscan'), "
                "set_config('enable_bitmapscan', 'off', false)"
            )
            previous = cursor.fetchone()[0]
            try:
                cursor.execute(
                    f"{select}, set_config('enable_bitmapscan', %s, false)",
                    [*params, previous],
                )
                row = cursor.fetchone()[:-1]
            except Exception:
                # In autocommit the setting stayed; inside a transaction, its rollback
                # undoes it (and refuses this statement, hence the suppress).
                with contextlib.suppress(DatabaseError):
                    cursor.execute("SELECT set_config('enable_bitmapscan', %s, false)", [previous])
                raise
    counts = {
        tab: int(n) for (tab, _label, _statuses), n in zip(TABS, row[: len(TABS)], strict=True)
    }
    arrived_count = int(row[len(TABS)]) if new_since is not None else 0
    stored = {**counts, NEW_COUNT: arrived_count}
    cache.set_many({key: stored, last_key: stored}, timeout=300)
    return counts, True, arrived_count


# The key of the cached counts that holds the new forms' (not a tab).
NEW_COUNT = "_new"


def _capped(counts: dict[str, int], status: str) -> bool:
    if status == "all":
        return any(n > COUNT_CAP for n in counts.values())
    return counts[status] > COUNT_CAP


def _tabs_context(
    counts: dict[str, int],
    current: bool,
    status: str,
    offset: int,
    shown: int,
    has_next: bool,
    new: int = 0,
) -> dict[str, Any]:
    """The tabs and the pager's range. Not `current`: the tabs ask for the current counts
    when they are shown, and the answer replaces both. `new`: the pending forms arrived since
    the reviewer's last visit, said beside the Pending tab ("3 new")."""
    total = _total_text(counts, status, _capped(counts, status), offset, shown, has_next)
    return {
        "tabs": [
            {
                "key": k,
                "label": label,
                "count": _count_text(counts[k]),
                **(_new_text(new) if k == "pending" and new else {}),
            }
            for k, label, _s in TABS
        ],
        "counts_current": current,
        "total": total,
        "first_index": offset + 1,
        "last_index": offset + shown,
        "shown": shown,
    }


@login_required
@require_GET
def tabs(request: HtmxHttpRequest) -> HttpResponse:
    """The tabs with current counts, and the pager's range with them (out of band): asked for
    by a list shown with the last counts. `shown` and `more` describe the page on screen."""
    filters = InboxFilters.from_query(request.GET, request.user)
    new_since = ReviewerProfile.new_since_of(request.user)
    counts, _current, new = _tab_counts(
        request, filters, _change_token(request), new_since=new_since
    )
    try:
        shown = max(0, min(int(request.GET.get("shown", "0")), PAGE_SIZE))
    except ValueError:
        shown = 0
    offset = (filters.page - 1) * PAGE_SIZE
    has_next = request.GET.get("more") == "1"
    context = {
        "filters": filters,
        **_tabs_context(counts, True, filters.status, offset, shown, has_next, new),
        # The range only exists on a page with rows.
        "oob": shown > 0,
    }
    return render(request, "inbox/index.html#tabs", context)


def _count_text(count: int) -> str:
    return f"{COUNT_CAP}+" if count > COUNT_CAP else str(count)


def _new_text(new: int) -> dict[str, str]:
    """The Pending tab's "3 new", shown, and the sentence a screen reader hears instead."""
    shown = _count_text(new)
    return {
        "new": ngettext("%(count)s new", "%(count)s new", new) % {"count": shown},
        "new_said": ngettext(
            "%(count)s form arrived since your last visit.",
            "%(count)s forms arrived since your last visit.",
            new,
        )
        % {"count": shown},
    }


def _total_text(
    counts: dict[str, int], status: str, capped: bool, offset: int, shown: int, has_next: bool
) -> str:
    """The pager's "of N". Past the cap the count is a floor ("1000+", or as far as the pages
    have gone); on the last page it is exact again."""
    last_index = offset + shown
    if shown and not has_next:
        # The last page: exact, whatever the count says (the last count, shown until the
        # current one comes, may be from before forms arrived: never "1-50 of 20").
        return str(last_index)
    if not capped:
        count = sum(counts.values()) if status == "all" else counts[status]
        return str(max(count, last_index + (1 if has_next else 0)))
    floor = sum(min(n, COUNT_CAP) for n in counts.values()) if status == "all" else COUNT_CAP
    return f"{max(floor, last_index)}+"


def inbox_rows(forms: QuerySet[Form]) -> QuerySet[Form]:
    """The API's list: a row's fields as model instances (the API's summary also gives the
    decision time and the run's status); long content and definitions stay in the database."""
    fields = [name for name in ROW_FIELDS if name not in ROW_ANNOTATIONS]
    return (
        forms.select_related("run__app", "claimed_by")
        .only(*fields, "decided_at", "run__status", "run__query", "run__created_at")
        .annotate(content_head=CONTENT_HEAD, run_turn=turn_number("run__"))
    )


@dataclass
class Row:
    """One inbox row, computed in Python: a template loop over fifty rows full of filters and
    translation tags costs more than the queries behind it."""

    id: str
    url: str
    title: str
    app: str
    excerpt: str
    run: str
    status: str
    status_label: str
    created_iso: str
    created_rel: str
    expires_iso: str = ""
    expires_rel: str = ""
    expires_title: str = ""
    urgent: bool = False
    expired: bool = False
    # Who holds the open form ("You are handling this", "Taken by Ann Lee"), or "".
    holder: str = ""
    mine: bool = False
    # A decided form: when, and the action that filled it (in Dify's words), if known.
    decided_iso: str = ""
    decided_rel: str = ""
    decided_title: str = ""
    action: str = ""
    # Who decided (a reviewer here), as every reviewer may be told it; "" when decided in Dify.
    decider: str = ""
    # A pending form that arrived since the reviewer's last visit (`ReviewerProfile.new_since`).
    new: bool = False
    # A chatflow's form: its run's message in the conversation (`turn`, 0 when not known) and
    # the start of what it asked (`query`), in place of the run's id.
    conversation: bool = False
    turn: int = 0
    query: str = ""


@functools.lru_cache(maxsize=4096)
def _formatted(language: str | None, fmt: str, zone: str, value: dt.datetime) -> str:
    """A local time in a format of the language (its month and day words); a page polled again
    and again shows the same times. `zone` is part of the key because aware datetimes compare
    (and hash) by instant: 10:00 in Paris and 17:00 in Shanghai are the same key otherwise."""
    return dateformat.format(value, fmt)


class RowFormat:
    """What every row of a page shares, worked out once per page rather than fifty times:
    status labels, the form URL's shape and the date format, in the request's language."""

    _PLACEHOLDER = uuid.UUID(int=0)

    def __init__(
        self, now: dt.datetime, user_pk: int | None = None, new_since: dt.datetime | None = None
    ) -> None:
        self.now = now
        # Pending forms that arrived after this are new to the reader.
        self.new_since = new_since
        # The reader: a form they hold is theirs ("You are handling this").
        self.user_pk = user_pk
        self.yours = _("You are handling this")
        self.taken_by = _("Taken by %(who)s")
        self.labels = {value: str(label) for value, label in Form.Status.choices}
        # An expired form whose run was stopped or failed while it waited (`Form.closed_by_run_end`).
        self.closed = pgettext("a form closed by its run's end", "Closed")
        self.url_head, self.url_tail = reverse("inbox:form", args=[self._PLACEHOLDER]).split(
            str(self._PLACEHOLDER)
        )
        self.datetime_format = get_format("DATETIME_FORMAT")
        # Both are thread-local lookups; fifty rows would look them up a hundred times each.
        self.language = get_language()
        self.zone = get_current_timezone()
        self.zone_key = str(self.zone)

    def url(self, public_id: uuid.UUID) -> str:
        return f"{self.url_head}{public_id}{self.url_tail}"

    def datetime(self, value: dt.datetime) -> str:
        local = value.astimezone(self.zone)
        # Naming the zone, as `timefmt.absolute` does.
        return f"{_formatted(self.language, self.datetime_format, self.zone_key, local)} {self.zone_key}"

    def relative(self, value: dt.datetime) -> str:
        return timefmt.relative(value, self.now, language=self.language)


def _touching(parts: list[str], i: int, part: str, cjk: tuple[bool, bool]) -> str:
    """A piece of a sentence beside a name: without the space between them when the name's
    end (or start) is Chinese (`cjk`: its last, its first character)."""
    if i > 0 and parts[i - 1] == "%(who)s" and cjk[0]:
        part = part.lstrip(" ")
    if i + 1 < len(parts) and parts[i + 1] == "%(who)s" and cjk[1]:
        part = part.rstrip(" ")
    return part


def rows_html(rows: list[Row], place: int | None = None) -> SafeString:
    """The list's rows as HTML. Built here rather than in a template loop: fifty rows of a
    dozen escaped values each cost a template a third of the page's time. Every value is
    escaped; the words are translated once per page.

    `place`: the index of the row where the reviewer's place is (`?after=`): selected, its
    link `aria-current`, and `#place`, the fragment the links back to the list end with."""
    run_label = _("Run")
    # A new form: "New" shown, and said in full with the row's link.
    new_shown = pgettext("a form arrived since the last visit", "New")
    new_said = _("Arrived since your last visit")
    place_id, current = ' id="place"', ' aria-current="true"'
    # The number where each language wants it ("对话中的第 2 条消息").
    turn_before, _sep, turn_after = _("Message %(number)s of the conversation").partition(
        "%(number)s"
    )
    of_conversation = _("A message of the conversation")
    # Each language puts the time where its grammar wants it ("2分钟前收到").
    arrived_before, _sep, arrived_after = _("Arrived %(when)s").partition("%(when)s")
    expires_before, _sep, expires_after = _("Expires %(when)s").partition("%(when)s")
    expired_label, no_limit = _("Expired"), _("No time limit")
    decided_before, _sep, decided_after = _("Decided %(when)s").partition("%(when)s")
    # With who decided: each language places both ("Alice 于 3 小时前决定").
    decided_by = re.split(r"(%\(when\)s|%\(who\)s)", _("Decided %(when)s by %(who)s"))
    out = []
    for i, r in enumerate(rows):
        # The link is named by the form's title alone, which many rows share ("Manager
        # approval"): it is described by the row's app, time left and status, as shown.
        rid = escape(f"row-{r.id}")
        described = [f"{rid}-app", f"{rid}-status"]
        if r.holder:
            described.append(f"{rid}-holder")
        if r.new:
            described.append(f"{rid}-new")
        here = i == place
        side = ""
        if r.status == "pending":
            described.insert(1, f"{rid}-left")
            if not r.expires_iso:
                side = f'<span class="left muted" id="{rid}-left">{escape(no_limit)}</span>'
            elif r.expired:
                side = f'<span class="left expired" id="{rid}-left">{escape(expired_label)}</span>'
            else:
                expires = escape(r.expires_iso)
                side = (
                    f'<span class="left{" urgent" if r.urgent else ""}" id="{rid}-left" '
                    f'data-expires="{expires}">'
                    f'{escape(expires_before)}<time datetime="{expires}" data-rel '
                    f'title="{escape(r.expires_title)}">{escape(r.expires_rel)}</time>'
                    f"{escape(expires_after)}</span>"
                )
        elif r.decided_iso:
            described.insert(1, f"{rid}-left")
            decided = escape(r.decided_iso)
            when = (
                f'<time datetime="{decided}" data-rel title="{escape(r.decided_title)}">'
                f"{escape(r.decided_rel)}</time>"
            )
            if r.decider:
                who = f'<span class="decider">{escape(r.decider)}</span>'
                # The catalogue spaces the name from Chinese ("%(who)s 于"); a Chinese name
                # touches it ("王芳于"), as `tightened` writes sentences.
                cjk = (is_cjk(r.decider[-1:]), is_cjk(r.decider[:1]))
                said = "".join(
                    when
                    if part == "%(when)s"
                    else who
                    if part == "%(who)s"
                    else escape(_touching(decided_by, i, part, cjk))
                    for i, part in enumerate(decided_by)
                )
            else:
                said = f"{escape(decided_before)}{when}{escape(decided_after)}"
            side = (
                f'<span class="left muted" id="{rid}-left">{said}'
                + (f' · <span class="action">{escape(r.action)}</span>' if r.action else "")
                + "</span>"
            )
        status = escape(r.status)
        out.append(
            f'<li class="row status-{status}{" new" if r.new else ""}{" selected" if here else ""}"'
            f'{place_id if here else ""} data-id="{escape(r.id)}">'
            f'<div class="row-main"><a class="open" href="{escape(r.url)}"'
            f"{current if here else ''} "
            f'aria-describedby="{" ".join(described)}">{escape(r.title)}</a> '
            + (
                f'<span class="chip new" id="{rid}-new" title="{escape(new_said)}">'
                f'<span aria-hidden="true">{escape(new_shown)}</span>'
                f'<span class="visually-hidden">{escape(new_said)}</span></span> '
                if r.new
                else ""
            )
            + f'<span class="chip app" id="{rid}-app">{escape(r.app)}</span> '
            + (
                f'<span class="chip claimed{" mine" if r.mine else ""}" id="{rid}-holder">'
                f"{escape(r.holder)}</span> "
                if r.holder
                else ""
            )
            + f'<p class="excerpt">{escape(r.excerpt)}</p></div>'
            f'<div class="row-meta">{_run_said(r, run_label, turn_before, turn_after, of_conversation)} '
            f'<span class="age">{escape(arrived_before)}<time datetime="{escape(r.created_iso)}" '
            f"data-rel>{escape(r.created_rel)}</time>{escape(arrived_after)}</span></div>"
            f'<div class="row-side">{side} <span class="badge {status}" id="{rid}-status">'
            f"{escape(r.status_label)}</span></div></li>\n"
        )
    return mark_safe("".join(out))  # noqa: S308 - every value above is escaped


def _run_said(r: Row, run_label: str, before: str, after: str, of_conversation: str) -> str:
    """A row's run: its id, or for a chatflow's form the message of the conversation it is
    ("Message 2 of the conversation") with the start of what it asked."""
    if not r.conversation:
        return f'<span class="run">{escape(run_label)} <code>{escape(r.run)}</code></span>'
    said = f"{escape(before)}{r.turn}{escape(after)}" if r.turn else escape(of_conversation)
    query = f' <q class="query">{escape(r.query)}</q>' if r.query else ""
    return f'<span class="run conversation">{said}{query}</span>'


# What a row shows, read as plain values: fifty model instances (with their run and app)
# cost more to build than the query that fills them.
ROW_FIELDS = (
    "id",
    "public_id",
    "node_id",
    "node_title",
    "status",
    "expiration_time",
    "created_at",
    "content_head",
    "run__public_id",
    "run__workflow_run_id",
    "run__app__name",
    "claimed_by_id",
    "claimed_by__username",
    "claimed_by__first_name",
    "claimed_by__last_name",
    "decided_at",
    "filled_action_text",
    "run__status",
    "run__finished_at",
    "run__conversation_id",
    "run_query_head",
    "run_turn",
)
# The start of the content, enough for a row's excerpt.
CONTENT_HEAD = Left("content", 400)
# The start of a chatflow message's query, enough for a row's.
RUN_QUERY_HEAD = Left("run__query", 120)
# Annotations of ROW_FIELDS: computed in the rows' one query.
ROW_ANNOTATIONS = ("content_head", "run_query_head", "run_turn")


def row_annotations() -> dict[str, Any]:
    return {
        "content_head": CONTENT_HEAD,
        "run_query_head": RUN_QUERY_HEAD,
        "run_turn": turn_number("run__"),
    }


def inbox_row(values: dict[str, Any], fmt: RowFormat) -> Row:
    expires = values["expiration_time"]
    created = values["created_at"]
    now = fmt.now
    status = values["status"]
    if status == "pending" and expires is not None and expires <= now:
        status = "expired"  # as the form page says it, before the sweep records it
    holder, mine = "", False
    if status == "pending" and values.get("claimed_by_id"):
        mine = values["claimed_by_id"] == fmt.user_pk
        if mine:
            holder = fmt.yours
        else:
            who = full_name(values["claimed_by__first_name"], values["claimed_by__last_name"])
            holder = worded(fmt.taken_by, who=who or values["claimed_by__username"])
    return Row(
        holder=holder,
        mine=mine,
        new=status == "pending" and fmt.new_since is not None and created > fmt.new_since,
        id=str(values["public_id"]),
        url=fmt.url(values["public_id"]),
        title=values["node_title"] or values["node_id"],
        app=values["run__app__name"],
        excerpt=quick_excerpt(values["content_head"] or ""),
        run=(values["run__workflow_run_id"] or str(values["run__public_id"]))[:8],
        status=status,
        status_label=fmt.closed
        if status == "expired"
        and values["status"] == "expired"
        and run_end_closing(values["run__status"], values["run__finished_at"], expires)
        else fmt.labels.get(status, status),
        created_iso=created.isoformat(),
        created_rel=fmt.relative(created),
        expires_iso=expires.isoformat() if expires else "",
        expires_rel=fmt.relative(expires) if expires else "",
        expires_title=fmt.datetime(expires) if expires else "",
        urgent=timefmt.is_urgent(expires, now),
        expired=expires is not None and expires <= now,
        **_decided(values, status, fmt),
        conversation=bool(values.get("run__conversation_id")),
        turn=values.get("run_turn") or 0,
        query=excerpt_line(values.get("run_query_head") or "", 80),
    )


def _decided(values: dict[str, Any], status: str, fmt: RowFormat) -> dict[str, str]:
    """When a decided (or answered elsewhere) form was decided, with which action and by whom:
    what the Submitted tab's rows tell apart. A form on its way to Dify (`submitting`) has
    neither time nor action recorded yet: its decision's are shown (`with_deciders`)."""
    decided = values.get("decided_at") or values.get("decision_at")
    if status not in ("submitting", "submitted", "answered_elsewhere") or decided is None:
        return {}
    return {
        "decided_iso": decided.isoformat(),
        "decided_rel": fmt.relative(decided),
        "decided_title": fmt.datetime(decided),
        # One line's worth: the form page has the whole title.
        "action": excerpt_line(
            values.get("filled_action_text") or values.get("decision_action") or "", 60
        ),
        "decider": values.get("decider") or "",
    }


def with_deciders(found: list[dict[str, Any]]) -> None:
    """Adds to decided rows who decided (`decider`) and, for a form still on its way to Dify,
    its decision's time and action: one query for a page, a second only when it lists forms
    being sent."""
    decided = [v["id"] for v in found if v["status"] in ("submitting", "submitted")]
    if not decided:
        return
    decisions = {
        d.form_id: d
        for d in Decision.objects.filter(form_id__in=decided, status__in=Decision.ACTIVE_STATUSES)
        .select_related("reviewer")
        .only(
            "form_id",
            "action_id",
            "created_at",
            "reviewer_name",
            "reviewer_username",
            "guest_email",
            "reviewer__username",
            "reviewer__first_name",
            "reviewer__last_name",
        )
    }
    sending = [v["id"] for v in found if v["status"] == "submitting" and v["id"] in decisions]
    forms = (
        {f.pk: f for f in Form.objects.filter(pk__in=sending).only("definition")} if sending else {}
    )
    for values in found:
        decision = decisions.get(values["id"])
        if decision is None:
            continue
        values["decider"] = decision.decider_label
        if values["id"] in forms:
            values["decision_at"] = decision.created_at
            values["decision_action"] = forms[values["id"]].action_title(decision.action_id)


def excerpt_line(text: str, length: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= length else text[: length - 1].rstrip() + "…"


# The header the list's poll sends with `rows_key` of the rows it shows (index.html).
ROWS_HEADER = "X-Inbox-Rows"


def rows_key(rows: list[Row]) -> str:
    """What the reviewer sees of a page of the list, in a few characters: its forms and their
    statuses, in any order. A poll whose answer has the same key changed nothing on screen (a
    form moved on another tab, a count): it is not announced."""
    seen = "\n".join(sorted(f"{r.id} {r.status}" for r in rows))
    return hashlib.blake2b(seen.encode(), digest_size=8).hexdigest()


# How far down a list "Next form" looks for the form after the one just decided.
NEXT_IN_LIST_WINDOW = 500


@login_required
@require_GET
def next_in_list(request: HttpRequest) -> HttpResponse:
    """ "Next form" after a decision: the form after `after` in the list the reviewer came from
    (`list`: that list's query, as the page's script remembers it; the pending forms in the
    default order without it), skipping those another reviewer holds. The decided form keeps
    its place in the list's order, so the next is the one that stood after it; one query over
    the list's ids. Back to the list, saying so, when no form is left."""
    query = QueryDict(request.GET.get("list", "").lstrip("?"))
    filters = InboxFilters.from_query(query, request.user)
    after_id = _uuid_or_none(request.GET.get("after", ""))
    # One the reviewer may see: another's id would be told apart from no form by the answer.
    visible = Form.objects.for_user(request.user)
    after = visible.filter(public_id=after_id).first() if after_id else None
    waiting = status_q(TAB_STATUSES["pending"], timezone.now()) & (
        Q(claimed_by__isnull=True) | Q(claimed_by=request.user)
    )
    listed = filters.apply(Form.objects.for_user(request.user), with_status=False)
    here = Q(pk=after.pk) if after is not None else Q(pk__in=[])
    ids = list(
        listed.filter(waiting | here)
        .order_by(*ordering(filters.sort, "pending"))
        .values_list("pk", flat=True)[:NEXT_IN_LIST_WINDOW]
    )
    position = ids.index(after.pk) + 1 if after is not None and after.pk in ids else 0
    following = [pk for pk in ids[position:] + ids[:position] if after is None or pk != after.pk]
    if following:
        found = Form.objects.only("public_id").get(pk=following[0])
        return redirect("inbox:form", public_id=found.public_id)
    messages.info(request, _("No other form is waiting in this list."))
    # At the decided form's place: the list's empty state, or a form another reviewer holds.
    back = query.copy()
    if after is not None:
        back["after"] = str(after.public_id)
    back_query = f"?{back.urlencode()}" if back else ""
    return redirect(reverse("inbox:index") + back_query + ("#place" if after is not None else ""))


def _uuid_or_none(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


@login_required
@require_GET
def index(request: HtmxHttpRequest) -> HttpResponse:
    since = request.GET.get("since")
    token = _change_token(request)
    if since is not None and request.htmx and token == since:
        # Nothing changed: the poll cost one indexed query and moves no bytes.
        return HttpResponse(status=204)
    filters = InboxFilters.from_query(request.GET, request.user)
    visible = Form.objects.for_user(request.user)
    now = timezone.now()
    new_since = (
        ReviewerProfile.looked_at_list(request.user, now)
        if is_look_at_list(request, filters)
        else ReviewerProfile.new_since_of(request.user)
    )
    counts, counts_current, new = _tab_counts(
        request, filters, token, allow_last=True, new_since=new_since
    )
    capped = _capped(counts, filters.status)
    page = filters.page
    # Back from a form (`?after=`): the list opens at that form's place, on its page.
    place_id = _uuid_or_none(request.GET.get("after", "")) if since is None else None
    place = place_index(filters, visible, place_id, now) if place_id else None
    if place is not None:
        page = place // PAGE_SIZE + 1
    if not capped and counts_current:
        # Past the cap (or with the last count) the number of pages is not known: "Next"
        # shows while another row follows. Otherwise a page past the last is the last.
        total = sum(counts.values()) if filters.status == "all" else counts[filters.status]
        page = min(page, max(1, math.ceil(total / PAGE_SIZE)))
    order = ordering(filters.sort, filters.status)

    def page_rows(page: int) -> list[dict[str, Any]]:
        # The page's forms are chosen on the forms table alone, then joined to their run and
        # app: rows skipped by the offset (a thousand on page twenty) are never joined.
        offset = (page - 1) * PAGE_SIZE
        page_ids = (
            filters.apply(visible).order_by(*order).values("pk")[offset : offset + PAGE_SIZE + 1]
        )
        return list(
            Form.objects.filter(pk__in=page_ids)
            .order_by(*order)
            .annotate(**row_annotations())
            .values(*ROW_FIELDS)
        )

    found = page_rows(page)
    if not found and page > 1:
        # Past the last page with the last counts (its forms were decided meanwhile): counted
        # now, for the last page that has forms.
        page = min(page, max(1, math.ceil(filters.apply(visible).count() / PAGE_SIZE)))
        if page != filters.page:
            found = page_rows(page)
    moved_to = ""
    if page != filters.page:
        # Shown at its own address: a redirect for a page opened there, the address replaced
        # for htmx (the page's links and poll are written from it).
        query = request.GET.copy()
        query.pop("since", None)
        query.pop("page", None)
        if request.htmx:
            # The place is shown in this answer; the address kept is the list's own.
            query.pop("after", None)
        if page > 1:
            query["page"] = str(page)
        moved_to = f"{request.path}?{query.urlencode()}" if query else request.path
        if not request.htmx:
            return redirect(moved_to)
        query._mutable = False
        request.GET = query  # type: ignore[assignment]  # a QueryDict made immutable
    offset = (page - 1) * PAGE_SIZE
    fmt = RowFormat(now, request.user.pk, new_since)
    with_deciders(found[:PAGE_SIZE])
    rows = [inbox_row(values, fmt) for values in found[:PAGE_SIZE]]
    has_next = len(found) > PAGE_SIZE
    # The row in the form's place; past the list's end (the form was its last), the row
    # before it. None: no place asked for, or no row left (the empty state is the place).
    at = min(max(place - offset, 0), len(rows) - 1) if place is not None and rows else None
    context = {
        "filters": filters,
        **_tabs_context(counts, counts_current, filters.status, offset, len(rows), has_next, new),
        "rows": rows,
        "rows_html": rows_html(rows, at),
        "placed": place_id is not None,
        "page": page,
        "has_next": has_next,
        "token": token,
        "rows_key": rows_key(rows),
        "sorts": list(SORTS.items()),
        "empty_title": empty_title(filters),
    }
    if request.htmx and not request.htmx.boosted:
        # A tab, a page or the poll: the sort menu outside the results is brought in line
        # (a tab's default order differs); the filters' own change keeps it as chosen.
        context["sort_oob"] = since is None and request.htmx.trigger != "filters"
        response = render(request, "inbox/index.html#results", context)
        if moved_to:
            response["HX-Replace-Url"] = moved_to
        # Said only when the rows on screen changed: a change the reviewer cannot see (on
        # another tab, another page) moves the counts in silence.
        if since is not None and request.headers.get(ROWS_HEADER) != context["rows_key"]:
            trigger_client_event(
                response, "inbox:announce", {"message": _("The list was updated.")}
            )
        elif since is None and not request.htmx.history_restore_request:
            # The reviewer searched, filtered, sorted or paged: the focus stays where they
            # are, so what the list now holds is read out.
            trigger_client_event(
                response, "inbox:announce", {"message": results_announcement(context)}
            )
        return response
    context["apps"] = list(
        _reviewer_apps(request.user, selected=filters.app)
        .order_by("name")
        .values("id", "name", "is_active", "refused_at", "refusal_status", "refusal_code")
    )
    # Apps whose key Dify refuses: their new forms cannot arrive. Only the status code is
    # shown; Dify's message is for administrators.
    context["refused_apps"] = [
        app
        for app in context["apps"]
        if app["refused_at"] and app["is_active"] and app["refusal_code"] not in KIND_REFUSALS
    ]
    if context["refused_apps"]:
        # The reviewer's own decisions that wait for the fix (`Decision.held_for_app`).
        held = dict(
            Decision.objects.filter(
                status=Decision.Status.QUEUED,
                held_for_app=True,
                reviewer_id=request.user.pk,
                form__run__app_id__in=[app["id"] for app in context["refused_apps"]],
            )
            .order_by()
            .values("form__run__app_id")
            .annotate(n=Count("pk"))
            .values_list("form__run__app_id", "n")
        )
        for app in context["refused_apps"]:
            app["held"] = held.get(app["id"], 0)
    context["node_label"] = _node_label(filters.node, request.user) if filters.node else ""
    return render(request, "inbox/index.html", context)


def is_look_at_list(request: HtmxHttpRequest, filters: InboxFilters) -> bool:
    """Whether this view of the list is the reviewer looking at what waits for them, which
    moves their last visit on (`ReviewerProfile.looked_at_list`): the Pending tab's first page,
    neither searched nor filtered, opened, reloaded or shown by its tab, a link back from a
    form or the back button. Not the list's poll (`since`) nor the counts it asks for (`tabs`),
    which only bring what is shown up to date: a form that arrives while the list is open is
    marked new, and stays marked, until the next visit."""
    htmx = request.htmx
    return (
        request.GET.get("since") is None
        and filters.status == "pending"
        and filters.page == 1
        and not filters.is_narrowed
        and not (htmx and htmx.history_restore_request)
    )


def before_q(sort: str, status: str, form: Mapping[str, Any]) -> Q:
    """The forms listed before `form` (its values: pk and the sort's fields) in the order
    `ordering(sort, status)` gives, as it stands now."""
    pk = form["pk"]
    if sort == "decided":
        decided = form["decided_at"]
        nulls_first = status != "elsewhere"
        if decided is None:
            same = Q(decided_at__isnull=True, pk__gt=pk)
            return same if nulls_first else Q(decided_at__isnull=False) | same
        later = Q(decided_at__gt=decided) | Q(decided_at=decided, pk__gt=pk)
        return Q(decided_at__isnull=True) | later if nulls_first else later
    if sort == "newest":
        created = form["created_at"]
        return Q(created_at__gt=created) | Q(created_at=created, pk__gt=pk)
    if sort == "oldest":
        created = form["created_at"]
        return Q(created_at__lt=created) | Q(created_at=created, pk__lt=pk)
    expires = form["expiration_time"]
    if expires is None:
        return Q(expiration_time__isnull=False) | Q(expiration_time__isnull=True, pk__lt=pk)
    return Q(expiration_time__lt=expires) | Q(expiration_time=expires, pk__lt=pk)


# How many forms may stand before a place (`?after=`) for the list to open there: counting
# them reads that many rows, so a place deeper in a long list (past twenty pages of fifty) is
# not looked for, and the list opens at the page its address names.
PLACE_CAP = 1000


def place_index(
    filters: InboxFilters, visible: QuerySet[Form], public_id: uuid.UUID, now: dt.datetime
) -> int | None:
    """Where in the list (its tab, filters and sort) the reviewer's place is after the form
    `public_id`: the form itself while it still waits in the list (opened, and left
    undecided), else the row after where it stands in the list's order (decided: on the
    Pending tab it has left the list, and the row after it took its place). One query for the
    form, one for the list's forms before it, which stops after PLACE_CAP + 2 rows. None for a
    form the reviewer may not see, or one with more than PLACE_CAP forms before it."""
    form = (
        visible.filter(public_id=public_id)
        .values("pk", "status", "expiration_time", "created_at", "decided_at")
        .first()
    )
    if form is None:
        return None
    # The forms before it, and the form itself, up to PLACE_CAP + 2 of them (in no order: with
    # more than PLACE_CAP before it, any PLACE_CAP + 2 of them count past the cap).
    near = (
        filters.apply(visible)
        .filter(before_q(filters.sort, filters.status, form) | Q(pk=form["pk"]))
        .order_by()
        .values("pk")[: PLACE_CAP + 2]
    )
    found = Form.objects.filter(pk__in=near).aggregate(
        before=Count("pk", filter=~Q(pk=form["pk"])),
        here=Count("pk", filter=Q(pk=form["pk"])),
    )
    if found["before"] > PLACE_CAP:
        return None
    waiting = form["status"] == Form.Status.PENDING and (
        form["expiration_time"] is None or form["expiration_time"] > now
    )
    return int(found["before"]) + (1 if found["here"] and not waiting else 0)


def _reviewer_apps(user: Any, *, selected: int | None = None) -> QuerySet[DifyApp]:
    """The apps a reviewer's forms come from, for the inbox's app filter and its notices of
    apps Dify refuses: staff, every app; a reviewer, the apps routed to them or their groups
    (a route on or off: forms already routed stay), and those of forms routed or reassigned
    to them or their groups, or held by them. Not an app they could never see a form of. The app chosen in the address
    stays listed, so the filter shows what the list is filtered by. Cached a minute."""
    if user.is_staff:
        return DifyApp.objects.all()
    key = f"inbox:apps:{user.pk}"
    ids = cache.get(key)
    if ids is None:
        groups = user.groups.values("pk")
        routed = Route.objects.filter(Q(users=user) | Q(groups__in=groups)).values_list(
            "app_id", flat=True
        )
        given = Form.assigned_users.through.objects.filter(user_id=user.pk).values_list(
            "form__run__app_id", flat=True
        )
        held = Form.objects.filter(claimed_by=user).values_list("run__app_id", flat=True)
        found = set(routed) | set(given.distinct()) | set(held.distinct())
        # Forms routed to their groups by a route that asks others now: asked per app left,
        # which stops at the first such form.
        by_group = Form.assigned_groups.through.objects.filter(
            group_id__in=groups, form__run__app_id=OuterRef("pk")
        )
        found |= set(
            DifyApp.objects.exclude(pk__in=found)
            .filter(Exists(by_group))
            .values_list("pk", flat=True)
        )
        ids = sorted(found)
        cache.set(key, ids, timeout=60)
    return DifyApp.objects.filter(pk__in=[*ids, *([selected] if selected else [])])


def empty_title(filters: InboxFilters) -> str:
    """What a list without rows says first."""
    if filters.is_narrowed:
        return _("No forms match these filters.")
    if filters.status == "pending":
        return _("Nothing is waiting for you.")
    return _("No forms here.")


def results_announcement(context: dict[str, Any]) -> str:
    """What the list holds now, as its pager says it, for a screen reader to hear."""
    shown = len(context["rows"])
    if not shown:
        return str(context["empty_title"])
    if context["page"] == 1 and not context["has_next"]:
        return ngettext("%(count)d form.", "%(count)d forms.", shown) % {"count": shown}
    return _("Forms %(first)s–%(last)s of %(total)s.") % {  # noqa: RUF001 - a range's dash
        "first": context["first_index"],
        "last": context["last_index"],
        "total": context["total"],
    }


def split_node(value: str) -> tuple[int | None, str]:
    """The node filter's value: a node id, or `<app id>:<node id>` when no app is chosen (two
    apps' workflows may both have a node `approval`; each is its own choice)."""
    app, sep, node = value.partition(":")
    app_id = small_int(app) if sep and node else None
    if app_id is not None:
        return app_id, node
    return None, value


def _node_label(value: str, user: Any) -> str:
    app, node_id = split_node(value)
    # Only a title of a form this user may see: the value comes from the address bar.
    forms = Form.objects.for_user(user).filter(node_id=node_id)
    if app is not None:
        forms = forms.filter(run__app_id=app)
    title = forms.exclude(node_title="").values_list("node_title", flat=True).first()
    return title or node_id


@login_required
@require_GET
def node_options(request: HtmxHttpRequest) -> HttpResponse:
    """The node filter's choices, fetched when the filter is first used.

    A DISTINCT over every form is too slow to run on each inbox load, so the list loads on
    demand and is cached for a minute per app.
    """
    app_id = small_int(request.GET.get("app", ""))
    # Per user: the choices come from the forms this user may see.
    key = f"inbox:node-options:{request.user.pk}:{app_id if app_id is not None else 'all'}"
    nodes = cache.get(key)
    if nodes is None:
        forms = Form.objects.for_user(request.user)
        if app_id is not None:
            forms = forms.filter(run__app_id=app_id)
            nodes = list(
                forms.values_list("node_id", "node_title").distinct().order_by("node_title")[:200]
            )
        else:
            # Every app's nodes: each named with its app, and chosen with it.
            nodes = [
                (f"{app_id}:{node_id}", f"{title or node_id} · {app_name}")
                for app_id, app_name, node_id, title in forms.values_list(
                    "run__app_id", "run__app__name", "node_id", "node_title"
                )
                .distinct()
                .order_by("node_title", "run__app__name")[:200]
            ]
        cache.set(key, nodes, timeout=60)
    return render(
        request,
        "inbox/index.html#node_options",
        {"nodes": nodes, "selected": request.GET.get("node", "")},
    )


# ---------------------------------------------------------------------------------------------
# The form page
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decider:
    """Who is answering on a form page, and the URL its page's endpoints hang off.

    `base_url` ends with a slash; the page posts to `decide`, `files/<input>`,
    `uploads/<id>/remove` and polls `live` below it.
    """

    base_url: str
    reviewer: Any = None
    guest_email: str = ""

    @property
    def key(self) -> str:
        return f"u:{self.reviewer.pk}" if self.reviewer is not None else f"g:{self.guest_email}"

    @property
    def label(self) -> str:
        if self.reviewer is not None:
            return display_name(self.reviewer)
        return self.guest_email


def _guest_of(decider: Decider) -> str | None:
    """The guest's address when a guest reads the page; None for a reviewer."""
    return None if decider.reviewer is not None else decider.guest_email


def _presence(form: Form, decider: Decider, state: str) -> dict[str, Any]:
    """Who else has the form open. A reviewer sees their names; a guest (someone outside, asked
    by email) is told only how many others there are: neither the reviewers' names nor the
    other recipients' addresses are theirs to see. `presence_key` says what the line shows, so
    the page's poll redraws it (and a screen reader hears it) only when that changes."""
    others = presence.touch(form.pk, decider.key, decider.label)
    if decider.reviewer is None:
        others = [""] * len(others)
    shown = "\n".join(others) if others and state == "open" else ""
    key = hashlib.blake2b(f"{len(others)}\n{shown}".encode(), digest_size=6).hexdigest()
    return {
        "others": others,
        "others_named": decider.reviewer is not None,
        "presence_key": key if shown else "",
    }


def page_state(form: Form) -> str:
    """What the page shows: `open` (answerable here) or one of the closed states."""
    if form.status == Form.Status.PENDING:
        if not form.is_answerable:
            return "not_answerable"
        return "expired" if form.is_expired else "open"
    if form.status == Form.Status.SUBMITTING:
        return "in_flight"
    return str(form.status)


@dataclass
class FieldView:
    """One input as the template draws it."""

    spec: InputSpec
    bound: Any
    uploads: list[Upload] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    # Bytes per file category the app's Dify takes (see `inbox.uploads.upload_limits`).
    limits: dict[str, int] = field(default_factory=dict)

    @property
    def size_limit_label(self) -> str:
        """The largest file per kind this input takes, as Dify picks it (`size_limit_label`)."""
        return size_limit_label(self.spec, self.limits)

    @property
    def size_limits_json(self) -> str:
        """What the page checks before sending: a limit per extension with its own, else the
        general one (the same choice `upload_size_limit` makes on the server)."""
        if not self.limits:
            return ""
        by_extension = {
            ext: size_limit_for(kind, self.limits)
            for kind in (IMAGE, AUDIO, VIDEO)
            for ext in sorted(CATEGORY_EXTENSIONS[kind])
        }
        return json.dumps({"default": size_limit_for(DOCUMENT, self.limits), "ext": by_extension})

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def can_add_more(self) -> bool:
        return len(self.uploads) + len(self.urls) < self.spec.ui_max_files


def _field_views(dform: DecisionForm) -> dict[str, FieldView]:
    """Every input with its current value; uploads are fetched in one query for the page."""
    values: dict[str, list[str]] = {}
    for spec in dform.specs:
        if spec.is_file:
            field_obj = dform.fields[spec.field_name]
            assert isinstance(field_obj, FileRefsField)
            raw = dform[spec.field_name].value()
            values[spec.name] = field_obj.to_python(raw)
    ids = [ref for refs in values.values() for ref in refs if not ref.startswith("http")]
    uploads = {}
    if ids:
        valid = []
        for ref in ids:
            try:
                valid.append(uuid.UUID(ref))
            except ValueError:
                continue
        uploads = {
            str(u.public_id): u
            for u in Upload.objects.filter(form=dform.form_obj, public_id__in=valid)
        }
    limits: dict[str, int] = {}
    if any(spec.is_file and spec.allows_upload for spec in dform.specs):
        limits = upload_limits(dform.form_obj.run.app)
    views = {}
    for spec in dform.specs:
        view = FieldView(spec=spec, bound=dform[spec.field_name])
        if spec.is_file and spec.allows_upload:
            view.limits = limits
        for ref in values.get(spec.name, []):
            if ref in uploads and uploads[ref].input_name == spec.name:
                view.uploads.append(uploads[ref])
            elif not is_upload_id(ref):
                # A web address, or what was typed for one: drawn back as it was, a line the
                # check refused included, for the reviewer to put right.
                view.urls.append(ref)
        views[spec.name] = view
    return views


def _own_uploads(form: Form, decider: Decider) -> QuerySet[Upload]:
    """The uploads this reviewer (or guest) made on the form; nobody else's."""
    return Upload.owned(form, reviewer=decider.reviewer, guest_email=decider.guest_email)


def _kept_uploads(form: Form, decider: Decider) -> dict[str, list[str]]:
    """The decider's own uploads still on the form, per file input: the latest ones, as many as
    the input takes (one for `file`), in the order they were uploaded."""
    specs = {s.name: s for s in input_specs(form.definition or {}) if s.is_file and s.allows_upload}
    if not specs:
        return {}
    uploads = _own_uploads(form, decider).filter(input_name__in=list(specs))
    kept: dict[str, list[str]] = {}
    for upload in uploads.order_by("-created_at", "-pk"):
        refs = kept.setdefault(upload.input_name, [])
        if len(refs) < specs[upload.input_name].ui_max_files:
            refs.append(str(upload.public_id))
    return {name: refs[::-1] for name, refs in kept.items()}


# Where Dify's refusal of a decision names inputs: "Invalid value for file input 'x': ...",
# "Missing required inputs: x, y" (CONTRACT: submit's `invalid_form_data`).
_NAMED_INPUT = re.compile(r"\binput '([^']+)'")
_MISSING_INPUTS = re.compile(r"Missing required inputs?: ([^.\n]+)")


def _refused_beside(dform: DecisionForm, rejection: str, *, guest: bool) -> None:
    """The inputs Dify's refusal names are marked beside their fields too, to whoever made
    the decision (its values are theirs, shown again): the page's banner alone left them to
    find the field by Dify's variable name."""
    named = set(_NAMED_INPUT.findall(rejection))
    for listed in _MISSING_INPUTS.findall(rejection):
        named.update(name.strip() for name in listed.split(","))
    errors = ErrorDict()
    for spec in dform.specs:
        if spec.name in named:
            errors[spec.field_name] = ErrorList(
                [
                    _("The workflow did not accept this value.")
                    if guest
                    else _("Dify did not accept this value.")
                ]
            )
    # An unbound form's errors are an empty ErrorDict of its own, which these join.
    dform.errors.update(errors)


def form_context(
    request: HtmxHttpRequest,
    form: Form,
    decider: Decider,
    *,
    dform: DecisionForm | None = None,
    notice: str = "",
) -> dict[str, Any]:
    state = page_state(form)
    decision = form.decisions.select_related("reviewer").first()
    rejection = rejected_by = ""
    rejection_own = False
    if dform is None:
        initial = None
        if state == "open" and decision is not None and decision.status == Decision.Status.REJECTED:
            # Dify refused the last decision: show why, and to whoever made it, the values they
            # gave. Another reader starts from their own: what a colleague typed is not theirs
            # to send under their name.
            rejection = decision.last_error_text or _("Dify did not accept the decision.")
            rejection_own = decision.made_by(decider.reviewer, _guest_of(decider))
            if rejection_own:
                initial = inputs_from_dify(form, decision.inputs)
            else:
                rejected_by = decision.decider_label_for(_guest_of(decider))
                initial = _kept_uploads(form, decider)
        elif state == "open":
            # Files this reviewer already sent to Dify are kept across reloads.
            initial = _kept_uploads(form, decider)
        dform = DecisionForm(form, initial_inputs=initial)
        if rejection_own:
            _refused_beside(dform, rejection, guest=decider.reviewer is None)
    fields = _field_views(dform)
    segments: list[dict[str, Any]] = []
    trailing: list[FieldView] = []
    content = form.content or str((form.definition or {}).get("form_content") or "")
    if state == "open":
        parts, rest = split_content(content, [s.name for s in dform.specs])
        segments = [
            {"html": p.html} if p.html is not None else {"field": fields[p.input_name or ""]}
            for p in parts
        ]
        trailing = [fields[name] for name in rest]
    app = form.run.app
    return {
        "form": form,
        "run": form.run,
        "app": app,
        "state": state,
        "app_notice": app_notice(app, state),
        "live_key": _decision_key(state, decision.status, decision.held_for_app)
        if decision
        else state,
        "decider": decider,
        "base": decider.base_url,
        "dform": dform,
        "segments": segments,
        "trailing": trailing,
        "actions": dform.actions,
        # Shown as asked when nothing says how it was answered (expired, answerable only in
        # Dify): an input's place reads as a blank, not as Dify's `{{#$output.x#}}`.
        "content": PLACEHOLDER.sub("—", content) if state != "open" else content,
        "answered": answered_content(form, decision) if state != "open" else "",
        "not_delivered": state != "open" and not_delivered(form, decision),
        "decision": decision,
        "progress_title": progress_title(decision, guest=decider.reviewer is None, app=app)
        if state == "in_flight"
        else "",
        # Someone outside, asked by email: told what happens in their words, without Dify's
        # name, status codes or Dify's own (English) messages, which reviewers still see.
        "as_guest": decider.reviewer is None,
        # Who decided, as this reader may be told it (a guest is not told reviewers' names or
        # other recipients' addresses); the second starts a sentence.
        "decided_by": decision.decider_label_for(_guest_of(decider)) if decision else "",
        "decided_by_start": decision.decider_label_for(_guest_of(decider), sentence_start=True)
        if decision
        else "",
        "settled": settled_words(form, state, decision, decider),
        "rejection": rejection,
        "rejection_own": rejection_own,
        "rejected_by": rejected_by,
        "notice": notice,
        # File types the workflow lists that Dify can never accept: staff (who may change the
        # workflow, or know who does) are told; reviewers and guests are offered the others.
        "unmatchable_extensions": joined(unmatchable_extensions(form.definition or {}))
        if decider.reviewer is not None and decider.reviewer.is_staff
        else "",
        # A new key per page: a second click or a browser resubmit of this page finds the
        # decision the first one made instead of making another.
        "submission_key": uuid.uuid4().hex,
        **_presence(form, decider, state),
        **run_context(form, decider),
    }


def settled_words(form: Form, state: str, decision: Decision | None, decider: Decider) -> str:
    """What the page's alert says instead of what it said about a post once the page's poll
    finds the form no longer open (app.js): decided (by whom, with what, as the body says it;
    this reader's decision after all, or someone else's), else the form's status. "" while
    the form is open."""
    if state == "open":
        return ""
    if decision is not None and (
        state in ("in_flight", "failed")
        or (state == "submitted" and decision.status == Decision.Status.DELIVERED)
    ):
        return worded(
            _(
                "This form has been decided: %(who)s chose “%(action)s”. "
                "There is nothing more to send."
            ),
            who=decision.decider_label_for(_guest_of(decider)),
            action=decision.action_title,
        )
    return _("This form is now: %(status)s. Nothing can be sent for it any more.") % {
        "status": status_label(form, decider.reviewer is None)
    }


def run_context(form: Form, decider: Decider) -> dict[str, Any]:
    """The run panel. The run's other open forms and the run page are offered to a reviewer
    only as far as they may open them. A guest's link opens this one form and nothing else:
    a guest is offered neither (their own emails bring them any other form of theirs), and
    sees only the run's app, status and start, not who started it, its steps or its outputs,
    which may hold far more than the form shows."""
    run = form.run
    reviewer = decider.reviewer is not None
    next_forms: list[Form] = []
    if reviewer:
        next_forms = list(
            Form.objects.for_user(decider.reviewer)
            .filter(run=run, status=Form.Status.PENDING)
            .exclude(pk=form.pk)
            .order_by("created_at")
            .only("public_id", "node_title", "node_id")
        )
    return {
        "run": run,
        "run_version": run.updated_at.isoformat() if run.updated_at else "",
        "timeline": timeline_items((run.timeline or [])[-50:]),
        "outputs": output_items(run) if reviewer and run.is_finished else [],
        "next_forms": next_forms,
        "run_url": _run_url(run) if reviewer else "",
        "run_details": reviewer,
        # A chatflow's form: which message of its conversation the run is (reviewers only:
        # what the message asked may hold more than the form shows).
        "turn": turn_of(run) if reviewer and run.conversation_id else None,
    }


def _run_url(run: Run) -> str:
    for name in ("inbox:run", "inbox:run_detail"):
        try:
            return reverse(name, args=[run.public_id])
        except Exception:  # noqa: S112 - the run page belongs to another part of the app
            continue
    return ""


def form_page_response(request: HtmxHttpRequest, form: Form, decider: Decider) -> HttpResponse:
    context = form_context(request, form, decider)
    if request.htmx and request.GET.get("part") == "body":
        return render(request, "inbox/form.html#body_swap", context)
    _check_in_dify(form)
    return render(request, "inbox/form.html", context)


def _check_in_dify(form: Form) -> None:
    """Someone has a pending form open: ask Dify about it (`tasks.check_form`), at most once
    a INBOX_CHECK_ON_VIEW_SECONDS, so a form answered in Dify's own pages meanwhile turns
    "Answered elsewhere" at the page's next poll, before the reader spends time on it."""
    if form.status != Form.Status.PENDING or not form.form_token:
        return
    every = settings.INBOX_CHECK_ON_VIEW_SECONDS
    if form.checked_at is not None and timezone.now() - form.checked_at < dt.timedelta(
        seconds=every
    ):
        return
    # One task per form and interval however many open it (each process, without a shared
    # cache); the task skips a form asked about meanwhile anyway.
    if every and not cache.add(f"check-form:{form.pk}", 1, timeout=every):
        return
    Form.enqueue_check(form.pk)


def _render_body(
    request: HtmxHttpRequest, context: dict[str, Any], *, status: int = 200
) -> HttpResponse:
    if request.htmx:
        # htmx swaps only 2xx answers; the status of a refused post is in the page itself.
        return render(request, "inbox/form.html#body_swap", context)
    return render(request, "inbox/form.html", context, status=status)


def decide_response(request: HtmxHttpRequest, form: Form, decider: Decider) -> HttpResponse:
    key = (request.POST.get("submission_key") or "").strip()[:64]
    earlier = existing_decision(form, key) if key else None
    if earlier is not None and not _other_choice(earlier, form, request):
        # The same page posted twice (double click, resubmit): show the first decision.
        return _after_decision(request, form, decider)
    if earlier is not None:
        # The page came back (Back, a restored tab) and another choice was made on it: not
        # sent. Said, with what was typed kept to copy, as when someone else got there first.
        form.refresh_from_db()
        notice = str(form.refusal(force=True, guest=_guest_of(decider), reader=decider.reviewer))
        context = form_context(request, form, decider, notice=notice)
        context["unsent"] = _unsent_text(form, request)
        return _render_body(request, context, status=409)
    if page_state(form) != "open":
        # A page opened before someone else decided: say who got there first, and when.
        notice = (
            str(form.refusal(force=True, guest=_guest_of(decider), reader=decider.reviewer))
            if form.status != Form.Status.PENDING
            else ""
        )
        context = form_context(request, form, decider, notice=notice)
        context["unsent"] = _unsent_text(form, request)
        return _render_body(request, context, status=409)
    dform = DecisionForm(form, request.POST, uploads=_own_uploads(form, decider), from_page=True)
    if not dform.is_valid():
        context = form_context(request, form, decider, dform=dform)
        return _render_body(request, context, status=400)
    holder = form.held_by_other(decider.reviewer)
    if holder is not None and request.POST.get("taken_ok") != str(holder.pk):
        # Another reviewer took the form: asked first, with what was typed kept and the same
        # submission key, so the confirmed post makes one decision. A confirmation given for
        # a holder who has since let go, or been replaced, is asked again for the new one.
        context = form_context(request, form, decider, dform=dform)
        context.update(
            confirm_taken=display_name(holder),
            confirm_action=dform.cleaned_data["action"],
            confirm_action_title=form.action_title(dform.cleaned_data["action"]),
            taken_ok=holder.pk,
        )
        if key:
            context["submission_key"] = key
        return _render_body(request, context, status=409)
    try:
        dform.save(
            reviewer=decider.reviewer,
            guest_email=decider.guest_email,
            # A guest's link forwarded to someone signed in here: the trail names who pressed.
            signed_in=request.user if decider.reviewer is None else None,
        )
    except FormNotOpen as exc:
        form.refresh_from_db()
        notice = str(exc)
        if form.status != Form.Status.PENDING:
            # Said again as this reader is told it: a guest is not told who else decided, and
            # a decision of their own (in another tab) is theirs.
            notice = str(
                form.refusal(force=True, guest=_guest_of(decider), reader=decider.reviewer)
            )
        context = form_context(request, form, decider, notice=notice)
        context["unsent"] = _unsent_text(form, request)
        return _render_body(request, context, status=409)
    return _after_decision(request, form, decider)


def _other_choice(decision: Decision, form: Form, request: HttpRequest) -> bool:
    """Whether a page posted again under a decision's key chose another action, gave a text
    input (a paragraph, a select) another value, or a file input other files than the decision
    did (compared as the API compares a decision sent again, `other_files`: in any order). The
    page posts a file input's files as its own hidden upload ids and typed addresses; none
    posted is no file."""
    if request.POST.get("action", "") != decision.action_id:
        return True
    stored = decision.inputs or {}
    files: dict[str, list[str] | None] = {}
    for spec in DecisionForm(form).specs:
        if spec.is_file:
            files[spec.name] = request.POST.getlist(spec.field_name)
            continue
        posted = request.POST.get(spec.field_name)
        if posted is None:
            continue
        if page_text(str(posted)).strip() != str(stored.get(spec.name, "")).strip():
            return True
    return bool(other_files(decision, form, files))


def _unsent_text(form: Form, request: HttpRequest) -> list[dict[str, str]]:
    """The text a refused decision carried (its paragraphs), shown back read-only: the form
    closed under the reviewer, what they wrote is theirs to copy elsewhere."""
    return [
        {"label": spec.label, "value": value}
        for spec in DecisionForm(form).specs
        if spec.kind == "paragraph"
        and (value := str(request.POST.get(spec.field_name, "")).strip())
        and value != spec.default.strip()
    ]


def _after_decision(request: HtmxHttpRequest, form: Form, decider: Decider) -> HttpResponse:
    form.refresh_from_db()
    if request.htmx:
        return render(request, "inbox/form.html#body_swap", form_context(request, form, decider))
    return redirect(decider.base_url, permanent=False)


def upload_response(
    request: HtmxHttpRequest, form: Form, decider: Decider, input_name: str
) -> HttpResponse:
    spec = next((s for s in DecisionForm(form).specs if s.name == input_name), None)
    if spec is None or not spec.is_file:
        raise Http404("No such file input")
    files = request.FILES.getlist("file")
    uploads: list[Upload] = []
    # Files dropped as they arrived, for being larger than Dify takes (`SizeCapHandler`).
    errors: list[str] = too_large(request, guest=decider.reviewer is None)
    if page_state(form) != "open":
        errors = [_("This form can no longer be answered.")]
    elif not files:
        if not errors:
            errors.append(_("Choose a file to upload."))
    else:
        # A single-file input keeps only the last file picked; a list takes each in turn, as
        # many as it has room for (Dify refuses a list over its limit; the page would keep
        # only the newest on a reload, and drop the others without a word).
        picked = files[-1:]
        if spec.kind == "file-list":
            room = max(
                0,
                spec.ui_max_files
                - _own_uploads(form, decider).filter(input_name=spec.name).count(),
            )
            picked = files[:room]
            if len(files) > room and room == spec.ui_max_files:
                # Nothing on the list yet: nothing to remove, only fewer to pick.
                errors.append(
                    ngettext(
                        "At most %(limit)d file can be attached here; choose fewer. Not "
                        "added: %(names)s.",
                        "At most %(limit)d files can be attached here; choose fewer. Not "
                        "added: %(names)s.",
                        spec.ui_max_files,
                    )
                    % {
                        "limit": spec.ui_max_files,
                        "names": joined(f.name or "" for f in files[room:]),
                    }
                )
            elif len(files) > room and room:
                # Room for some of them: the first ones are added, and the reader is told how
                # many more the list took, not to remove one.
                errors.append(
                    ngettext(
                        "Only %(room)d more file could be added here. Not added: %(names)s.",
                        "Only %(room)d more files could be added here. Not added: %(names)s.",
                        room,
                    )
                    % {"room": room, "names": joined(f.name or "" for f in files[room:])}
                )
            elif len(files) > room:
                errors.append(
                    ngettext(
                        "At most %(limit)d file can be attached here; remove one to add "
                        "another. Not added: %(names)s.",
                        "At most %(limit)d files can be attached here; remove one to add "
                        "another. Not added: %(names)s.",
                        spec.ui_max_files,
                    )
                    % {
                        "limit": spec.ui_max_files,
                        "names": joined(f.name or "" for f in files[room:]),
                    }
                )
        for fileobj in picked:
            try:
                uploads.append(
                    upload_to_dify(form, spec, fileobj, decider.reviewer, decider.guest_email)
                )
            except UploadRejected as exc:
                if exc.code == "upload_budget_spent":
                    # Said once, of every file still to go: none of them can be sent.
                    errors.append(exc.message)
                    break
                errors.append(labelled(fileobj.name, exc.message))
    names = joined(upload.name for upload in uploads)
    if not request.htmx:
        for error in errors:
            messages.error(request, error)
        if uploads:
            messages.success(request, _("Uploaded: %(names)s.") % {"names": names})
        return redirect(decider.base_url)
    context = {
        "uploads": uploads,
        "errors": errors,
        "spec": spec,
        "base": decider.base_url,
        "state": "open",
    }
    response = render(request, "inbox/form.html#upload_result", context)
    if not uploads:
        # Nothing to add to the list: show the reason where the errors go and leave the list.
        response = render(request, "inbox/form.html#upload_error", context)
        retarget(response, f"#file-error-{spec.name}")
        reswap(response, "innerHTML")
    if not uploads:
        # The errors are read out by their own place (`#file-error-<name>`, an alert): said
        # once, not again by the page's announcer.
        return response
    message = _("Uploaded: %(names)s.") % {"names": names}
    return trigger_client_event(response, "inbox:announce", {"message": message})


def remove_upload_response(
    request: HtmxHttpRequest, form: Form, decider: Decider, upload_id: uuid.UUID
) -> HttpResponse:
    # Only one's own: another reviewer's upload on the same form is not theirs to take away.
    upload = get_object_or_404(_own_uploads(form, decider), public_id=upload_id)
    if page_state(form) == "open":
        # Dify has no delete for uploads; the file stays there unreferenced, as in Dify's UI.
        upload.delete()
    if request.htmx:
        return trigger_client_event(
            HttpResponse(""),
            "inbox:announce",
            {"message": worded(_("%(name)s removed."), name=upload.name)},
        )
    return redirect(decider.base_url)


def app_notice(app: DifyApp, state: str) -> str:
    """What an open form's page says of its app before the reader decides: "refused" (Dify
    refuses the app's key, 401, or answers 404 for the app as a whole: a decision is held
    until it is fixed; a refusal of the app's setup lets submits through), "unavailable" (Dify
    answers 403: the app is disabled or deleted there, its key not in question; held too),
    "unreachable" (Dify does not answer for it: a decision is sent once it does; a stream
    failing alone does not stop one), or nothing."""
    if state != "open":
        return ""
    if app.refused_at is not None:
        if app.refusal_code in SETUP_REFUSALS:
            return ""
        return "unavailable" if app.refusal_status == 403 else "refused"
    if app.contact_failed_at is not None and not app.streams_failing:
        return "unreachable"
    return ""


def _live_key(form: Form, state: str) -> str:
    """What the page last showed: the state, and while a decision travels, its status too."""
    if state != "in_flight":
        return state
    status, held = form.decisions.values_list("status", "held_for_app").first() or (None, False)
    return _decision_key(state, status, held)


def _decision_key(state: str, status: str | None, held: bool) -> str:
    if state != "in_flight":
        return state
    # A decision held for its app (see `Decision.held_for_app`) shows its own words.
    return f"{state}-{status}-held" if held else f"{state}-{status}"


def live_response(request: HtmxHttpRequest, form: Form, decider: Decider) -> HttpResponse:
    """The page's poll: presence always; the run panel and the body only when they changed.
    While the page stays open, Dify is asked about the form now and then too (at most once a
    INBOX_CHECK_ON_VIEW_SECONDS), so an answer given in Dify meanwhile reaches the page."""
    _check_in_dify(form)
    state = page_state(form)
    live_key = _live_key(form, state)
    run_ctx = run_context(form, decider)
    context = {
        **run_ctx,
        "form": form,
        "base": decider.base_url,
        "state": state,
        "live_key": live_key,
        "app_notice": (notice := app_notice(form.run.app, state)),
        "as_guest": decider.reviewer is None,
        **_presence(form, decider, state),
    }
    parts = [render(request, "inbox/form.html#live", context).content.decode()]
    changed_state = request.GET.get("state", "") != live_key
    message = ""
    if changed_state:
        # Someone decided, the form expired, or our decision moved on: redraw the body.
        full = form_context(request, form, decider)
        parts.append(render(request, "inbox/form.html#body_oob", full).content.decode())
        message = state_announcement(form, full)
    if changed_state or request.GET.get("run", "") != run_ctx["run_version"]:
        parts.append(render(request, "inbox/form.html#run_panel_oob", context).content.decode())
    if not changed_state and state == "open" and request.GET.get("app", "") != notice:
        # Dify stopped or started answering for the app, or refusing it: the notice above the
        # form says so (in its own place; the body and what the reader typed stay).
        parts.append(render(request, "inbox/form.html#app_notice_oob", context).content.decode())
    if request.GET.get("seen", "") != context["presence_key"]:
        # Someone opened or left the form: the presence line (a live region that stays in
        # the page) takes its new words, read out once.
        parts.append(render(request, "inbox/form.html#presence_oob", context).content.decode())
    if (
        not changed_state
        and decider.reviewer is not None
        and request.GET.get("claim", "") != str(form.claimed_by_id or "")
    ):
        # Taken or released by someone else since: the header says so, and offers what is
        # left to do (the body, with what the reviewer typed, is not touched).
        parts.append(
            render(
                request,
                "inbox/claim_panel.html",
                {"form": form, "decider": decider, "oob": True},
            ).content.decode()
        )
        message = claim_announcement(form, decider)
    response = HttpResponse("".join(parts))
    if message:
        trigger_client_event(response, "inbox:announce", {"message": message})
    return response


def state_announcement(form: Form, context: dict[str, Any]) -> str:
    """What the page's poll reads out when the form moved on: the words the page now shows
    (its badge's status, or while the decision travels, the step it is at)."""
    if context["state"] == "in_flight":
        return str(context["progress_title"])
    return _("This form is now: %(status)s.") % {
        "status": status_label(form, context.get("as_guest", False))
    }


def claim_announcement(form: Form, decider: Decider) -> str:
    """What the claim panel now says, read out when someone else took or released the form."""
    if form.status_now != Form.Status.PENDING or decider.reviewer is None:
        return ""
    if form.claimed_by is None:
        return _("No one is handling this form now; you can take it.")
    if form.claimed_by_id == decider.reviewer.pk:
        return _("You are handling this")
    who = display_name(form.claimed_by)
    return worded(_("Taken by %(who)s"), who=who)


def progress_title(
    decision: Decision | None, *, guest: bool = False, app: DifyApp | None = None
) -> str:
    """The step a decision on its way to Dify is at, as the page's body titles it (for a guest,
    the workflow's, without Dify's name). `app`, the form's: a decision held for an app Dify
    calls unavailable is titled so."""
    status = decision.status if decision else None
    if guest:
        if status == Decision.Status.DELIVERING:
            return _("Sending the decision to the workflow…")
        if decision is not None and decision.held_for_app:
            return _("Decision kept: the workflow cannot take it right now.")
        if status == Decision.Status.DELIVERED:
            return _("Delivered to the workflow.")
        return _("Decision queued; it is on its way to the workflow.")
    if status == Decision.Status.DELIVERING:
        return _("Sending the decision to Dify…")
    if decision is not None and decision.held_for_app and app is not None and app.unpublished:
        return _("Decision kept: Dify says this app is not available.")
    if decision is not None and decision.held_for_app:
        return _("Decision kept: Dify refuses this app's connection.")
    if status == Decision.Status.DELIVERED:
        return _("Delivered to Dify.")
    return _("Decision queued; it is on its way to Dify.")


# ---------------------------------------------------------------------------------------------
# Reviewer views: one access helper, then the shared functions above
# ---------------------------------------------------------------------------------------------


def _get_form_for_user(request: HtmxHttpRequest, public_id: uuid.UUID) -> Form:
    return get_object_or_404(
        Form.objects.for_user(request.user).select_related("run__app", "run__started_by"),
        public_id=public_id,
    )


def _reviewer(request: HtmxHttpRequest, form: Form) -> Decider:
    return Decider(base_url=reverse("inbox:form", args=[form.public_id]), reviewer=request.user)


@login_required
@require_GET
def form_page(request: HtmxHttpRequest, public_id: uuid.UUID) -> HttpResponse:
    try:
        form = _get_form_for_user(request, public_id)
    except Http404:
        # Someone the form asked (their emailed link) who may see it no longer: taken off it
        # (a reassignment, a group left). Told so; they knew of the form already.
        taken_off = FormRecipient.objects.filter(
            form__public_id=public_id, user_id=cast(int, request.user.pk)
        ).exists()
        return render(request, "inbox/form_not_found.html", {"taken_off": taken_off}, status=404)
    _note_opened(request, form)
    return form_page_response(request, form, _reviewer(request, form))


# Forms whose opening by the signed-in reviewer the trail has (`form_opened`): this session's
# later views of them ask nothing of the database.
SESSION_OPENED_FORMS = "inbox_opened_forms"
# How many the session keeps: one opened longer ago is looked up in the trail again.
OPENED_FORMS_KEPT = 100


def _note_opened(request: HtmxHttpRequest, form: Form) -> None:
    """A reviewer's first opening of a form is in the trail (`form_opened`), as a guest's of
    their link is (`guest_link_opened`): once per reviewer and form, not at each view or poll
    (the page's polls are `form_live`)."""
    key = str(form.pk)
    opened = list(request.session.get(SESSION_OPENED_FORMS, []))
    if key in opened:
        return
    before = AuditEntry.objects.filter(
        verb="form_opened",
        object_type="form",
        object_id=key,
        actor_id=request.user.pk,
    ).exists()
    if not before:
        AuditEntry.record("form_opened", form, actor=request.user, status=form.status)
    request.session[SESSION_OPENED_FORMS] = [*opened[-(OPENED_FORMS_KEPT - 1) :], key]


@login_required
@require_POST
def form_decide(request: HtmxHttpRequest, public_id: uuid.UUID) -> HttpResponse:
    form = _get_form_for_user(request, public_id)
    return decide_response(request, form, _reviewer(request, form))


@login_required
@require_POST
def form_upload(request: HtmxHttpRequest, public_id: uuid.UUID, input_name: str) -> HttpResponse:
    form = _get_form_for_user(request, public_id)
    return upload_response(request, form, _reviewer(request, form), input_name)


@login_required
@require_POST
def form_remove_upload(
    request: HtmxHttpRequest, public_id: uuid.UUID, upload_id: uuid.UUID
) -> HttpResponse:
    form = _get_form_for_user(request, public_id)
    return remove_upload_response(request, form, _reviewer(request, form), upload_id)


@login_required
@require_GET
def form_live(request: HtmxHttpRequest, public_id: uuid.UUID) -> HttpResponse:
    form = _get_form_for_user(request, public_id)
    return live_response(request, form, _reviewer(request, form))


@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    """The inbox's icon, where a browser looks for it by default."""
    from django.templatetags.static import static

    response = redirect(static("inbox/favicon.svg"), permanent=True)
    response["Cache-Control"] = "max-age=86400"
    return response


def healthz(request: HttpRequest) -> HttpResponse:
    """200 when this process can serve pages: its database answers with every migration this
    code has applied, and (with hashed static file names) the static files were collected.
    503 otherwise, saying which, in one log line rather than a traceback per probe."""
    from inbox import health

    problems = []
    # What the log line adds to the answer: the answer names no host or port (anyone may ask).
    details = []
    waiting = 0
    dify: dict[str, int] = {}
    celery: health.CeleryState | None = None
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        details.append(f"database: {_one_line(exc)}")
        problems.append("database: not answering")
    else:
        try:
            # New code on an older database (migrate not run yet, or failed): pages would fail
            # on the tables and columns it lacks.
            unapplied = health.unapplied_migrations(connection)
            if unapplied:
                problems.append("database: migrations not applied")
                shown = ", ".join(unapplied[:5]) + (" …" if len(unapplied) > 5 else "")
                details.append(f"database: {len(unapplied)} migration(s) not applied ({shown})")
            else:
                from inbox.follower import unfollowed

                waiting, _since = unfollowed()
                # Beat, the workers and the mailer: whether the periodic tasks run and the
                # decisions go out.
                celery = health.celery_state()
                # Apps Dify does not answer for, or refuses: their forms cannot arrive and
                # their decisions wait (the inbox itself is fine: still 200). Not an inactive
                # app's: one switched off (its server retired, say) is no fault to monitor.
                dify = DifyApp.objects.filter(is_active=True).aggregate(
                    unreachable=Count(
                        "pk", filter=Q(refused_at__isnull=True, contact_failed_at__isnull=False)
                    ),
                    refused=Count(
                        "pk",
                        filter=Q(refused_at__isnull=False)
                        & ~Q(refusal_code__in=sorted(SETUP_REFUSALS)),
                    ),
                    # Not refused either: nothing published, so no run of it can start, while
                    # its runs' forms arrive and decisions on them go.
                    unpublished=Count(
                        "pk",
                        filter=Q(refused_at__isnull=False, refusal_code=UNPUBLISHED_REFUSAL),
                    ),
                    # Not refused: Dify refuses only starts of the mode set up here.
                    mode_mismatch=Count(
                        "pk",
                        filter=Q(refused_at__isnull=False, refusal_code__in=sorted(KIND_REFUSALS)),
                    ),
                    # A running follower cannot decrypt the app's key: its runs wait for one
                    # that can (not counted as waiting for a follower, above).
                    follower_keys=Count("pk", filter=DifyApp.key_unreadable_q()),
                )
                # The apps whose key this process cannot decrypt (started without the key
                # another process stored it with): what it would do with them fails.
                dify["keys_here"] = sum(
                    app.api_key_sealed
                    for app in DifyApp.objects.filter(is_active=True).only("pk", "api_key")
                )
        except DatabaseError as exc:
            details.append(f"database: {_one_line(exc)}")
            problems.append("database: not readable")
    static = health.static_files_problem()
    if static:
        problems.append(static)
        details.append(static)
    if problems:
        logger.warning("health check failed: %s", "; ".join(details))
        response = JsonResponse({"status": "unavailable", "problems": problems}, status=503)
        # Said once, above: not again as Django's "Service Unavailable" line at every probe.
        response._has_been_logged = True  # type: ignore[attr-defined]
        return response
    # What keeps the inbox from working fully while this process still serves pages: said as
    # degraded, still 200, so a load balancer keeps sending them here while monitoring sees it.
    degraded = []
    probe = getattr(cache, "unavailable", None)
    if probe is not None and (why := probe()):
        # The shared cache away (inbox.cache).
        logger.warning("health check: cache: %s", why[:500])
        degraded.append("cache: not answering")
    if why := health.broker_problem():
        # Decisions still go into the outbox (202); the sweep sends them once it is back.
        logger.warning("health check: broker: %s", why)
        degraded.append("broker: not answering")
    if waiting:
        from inbox.follower import UNFOLLOWED_AFTER

        minutes = int(UNFOLLOWED_AFTER.total_seconds() // 60)
        degraded.append(f"follower: {waiting} run(s) waiting over {minutes} min for one")
    if celery is not None:
        degraded.extend(health.celery_problems(celery))
    if dify.get("unreachable"):
        degraded.append(f"dify: {dify['unreachable']} app(s) not reachable")
    if dify.get("refused"):
        degraded.append(f"dify: {dify['refused']} app(s) refused")
    if dify.get("unpublished"):
        degraded.append(f"dify: {dify['unpublished']} app(s) not published (no run can start)")
    if dify.get("mode_mismatch"):
        degraded.append(
            f"dify: {dify['mode_mismatch']} app(s) set up with another mode than Dify's"
        )
    if dify.get("keys_here"):
        degraded.append(
            f"keys: {dify['keys_here']} app(s) with an API key this process cannot decrypt"
        )
    if dify.get("follower_keys"):
        degraded.append(
            f"keys: {dify['follower_keys']} app(s) with an API key a follower cannot decrypt"
        )
    if degraded:
        return JsonResponse({"status": "degraded", "problems": degraded})
    return JsonResponse({"status": "ok"})


def _one_line(exc: Exception) -> str:
    """A database error's message on one line (the driver's spans several)."""
    return " ".join(str(exc).split())[:500] or type(exc).__name__
