"""Whether a 404 is about one run or form, or about the whole app.

Dify answers 404 for a run or a form token of another app than the key's (CONTRACT 1), so the
key of another app pasted in the admin makes every run and form of the app a 404, as does a
wrong base URL or a proxy answering 404 for the app. Such 404s are the app's problem, as a
revoked key is: they must not close the app's runs and forms for good. `check_app` tells them
apart from a run or form deleted in Dify, by asking Dify about the app itself:

- its /info: a 404 there is the whole app's (a refusal, as below); an /info naming another app
  than the one this key last showed (`DifyApp.dify_name`) is another app's key;
- the app's other runs, most recent first (`REFERENCES` of them): one Dify still answers for
  proves the key is this app's, so the 404 was of the one run or form; every one a 404 is a
  key that sees none of the app's runs.

An app-wide 404 is recorded as a refusal of the app (`DifyApp.note_refused`, code
`APP_NOT_FOUND_REFUSAL`): the admin shows it, the app's runs and the decisions made meanwhile
wait, and they go on once a call answers for one of the app's runs again (the reconcile asks
with `check_app`, with its growing interval) or an administrator saves new settings.
"""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.db.models import CharField, Exists, OuterRef, Subquery
from django.db.models.functions import Cast
from django.utils.translation import gettext as _

from inbox.dify import DifyClient
from inbox.dify.errors import DifyError, DifyStatusError, NotFound
from inbox.models import APP_NOT_FOUND_REFUSAL, DIFY_MODES, AuditEntry, DifyApp, Run

logger = logging.getLogger(__name__)

# The app's other runs asked about before its 404s are taken for the whole app's.
REFERENCES = 3


class AppNotFound(NotFound):
    """Not an answer of Dify's: the inbox's reading of 404s that cover the whole app (see the
    module). It refuses the app, as a 401 does."""

    @property
    def refuses_app(self) -> bool:
        return True


@dataclass(frozen=True)
class AppCheck:
    """`works`: the key sees this app (a 404 was of the one run or form); `refused`: the 404s
    are the whole app's (recorded as a refusal of the app); `unknown`: Dify could not be asked
    (away, failing), so nothing is concluded."""

    verdict: str
    detail: str = ""

    @property
    def works(self) -> bool:
        return self.verdict == "works"

    @property
    def refused(self) -> bool:
        return self.verdict == "refused"


def reference_runs(app: DifyApp, *, besides: list[int] | None = None) -> list[Run]:
    """The app's runs Dify should still know, most recent first: named by Dify, neither taken
    for gone nor found missing on their own since the app's settings last changed."""
    trail = AuditEntry.objects.filter(
        object_type="run", object_id=Cast(OuterRef("pk"), CharField())
    )
    runs = (
        Run.objects.filter(app=app)
        .exclude(workflow_run_id="")
        .exclude(pk__in=besides or [])
        .exclude(Exists(trail.filter(verb="run_gone")))
        .exclude(Exists(trail.filter(verb="run_not_found", created_at__gt=app.updated_at)))
        .order_by("-created_at", "-pk")
    )
    return list(runs[:REFERENCES])


def check_app(
    app: DifyApp,
    *,
    source: str,
    first: Run | None = None,
    besides: Run | None = None,
    client: DifyClient | None = None,
    info: dict[str, Any] | None = None,
) -> AppCheck:
    """Ask Dify whether this app's key still sees the app (see the module). `first`: a run to
    ask about before the others (a decision's own run); `besides`: the run whose 404 is in
    question. A whole-app 404 is recorded as the app's refusal (`note_refused`); a key shown
    to be this app's ends such a refusal (`note_accepted`) and keeps /info's name. `info`:
    what /info answered a moment ago, when the caller asked already."""
    client = client or DifyClient.for_app(app)
    try:
        info = info if info is not None else client.get_info()
    except NotFound as exc:
        return _refused(app, exc, f"GET /info: {exc}", source)
    except DifyError as exc:
        if isinstance(exc, DifyStatusError) and exc.refuses_app:
            app.note_refused(exc, source)
            return AppCheck("refused", str(exc))
        return AppCheck("unknown", str(exc))
    name = str(info.get("name") or "")[:200]
    said = f"/info names the app “{name or '?'}” (mode {info.get('mode') or '?'})"
    runs = [first] if first is not None and first.workflow_run_id else []
    runs += reference_runs(
        app, besides=[r.pk for r in (first, besides) if r is not None and r.pk is not None]
    )
    missing = 0
    last: NotFound | None = None
    for run in runs:
        try:
            client.get_run(run.workflow_run_id)
        except NotFound as exc:
            missing += 1
            last = exc
            continue
        except DifyError as exc:
            if isinstance(exc, DifyStatusError) and exc.refuses_app:
                app.note_refused(exc, source)
                return AppCheck("refused", str(exc))
            return AppCheck("unknown", str(exc))
        return _works(app, name, source)
    if last is not None:
        return _refused(
            app,
            last,
            f"none of {missing} run(s) of this app asked about is known to this key; {said}",
            source,
        )
    # No other run to ask about: /info's name is all there is, held against the name it gave
    # while the key saw the app's runs (`learn_name`), or else the app's name here.
    if app.dify_name and name != app.dify_name:
        return _refused(
            app,
            NotFound(404, "not_found", ""),
            f"{said}, which was “{app.dify_name}” before",
            source,
        )
    # Strictly alike: a 404 taken for the run's or form's own closes it for good, and a name
    # here with words around Dify's ("refund-approval-stg" for "refund") is no proof of the key.
    if not app.dify_name and not same_name(name, app.name, qualified=False):
        return _refused(
            app,
            NotFound(404, "not_found", ""),
            f"{said}, not “{app.name}” as here, and no other run of it tells whether the key "
            "is this app's (testing the connection takes the name)",
            source,
        )
    return _works(app, name, source)


def learn_name(app: DifyApp, client: DifyClient | None = None) -> None:
    """Keep what /info calls the app, now that a call showed its key sees the app's runs
    (`check_app` holds a later /info against it). Once per app: nothing when known, and a
    Dify that does not answer /info leaves it for the next time."""
    if app.dify_name:
        return
    try:
        info = (client or DifyClient.for_app(app)).get_info()
    except DifyError:
        return
    app.note_dify_name(str(info.get("name") or ""))


def same_name(dify: str, here: str, *, qualified: bool = True) -> bool:
    """Whether the app Dify calls `dify` is the app named `here` in the inbox: names alike but
    for case, spaces, dashes and underscores ("Refund approval", "refund-approval"), or, with
    `qualified`, the name here being Dify's whole name with words around it, as an inbox
    serving two Dify servers tells their apps of one name apart ("refund-approval (staging)",
    "refund-approval-stg", "staging refund-approval"). Dify's full name must stand in the
    name here on word boundaries: "refund" is not "refunds-stg", nor "refund-approval"
    "refund" (a name here shorter than Dify's is another app's)."""
    target = _plain(dify)
    if _plain(here) == target:
        return True
    if not qualified or not target:
        return False
    words = _words(here)
    # Dify's name may be written in fewer words here ("RefundApproval-stg"), or in more.
    return any(
        "".join(words[start:end]) == target
        for start in range(len(words))
        for end in range(start + 1, len(words) + 1)
    )


def _plain(name: str) -> str:
    return "".join(c for c in name.casefold() if c.isalnum())


def _words(name: str) -> list[str]:
    """The name's words: its runs of letters and digits (any script)."""
    return re.findall(r"[^\W_]+", name.casefold())


def _works(app: DifyApp, name: str, source: str) -> AppCheck:
    app.note_dify_name(name)
    app.note_accepted(source, runs=True)
    return AppCheck("works")


def _refused(app: DifyApp, seen: NotFound, detail: str, source: str) -> AppCheck:
    exc = AppNotFound(404, APP_NOT_FOUND_REFUSAL, detail)
    if not app.note_refused(exc, source):
        logger.info("%s: app %s: still 404 for the whole app: %s (%s)", source, app, detail, seen)
    return AppCheck("refused", str(exc))


def refused_before(app: DifyApp) -> bool:
    """Whether the app, as this instance loaded it, is held for 404s of the whole app: a call
    meeting another 404 need not ask again (the reconcile does, at its interval)."""
    return app.refused_at is not None and app.refusal_code == APP_NOT_FOUND_REFUSAL


# --- What the admin's save and `add_dify_app` say of an app's new settings (warnings only) ---


def server_of(url: str) -> str:
    """Scheme, host and port of a base URL: where its key and its forms' tokens are sent. An
    app moved to another server is one whose `server_of` changes (another path on the same
    server is not a move)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def look_alike(name: str, *, besides: int | None = None) -> DifyApp | None:
    """Another app whose name differs from `name` only by case or spaces at its ends (not one
    of exactly that name): two rows that read the same in every list, and that a stripped name
    (the admin's, the API's) would take for one another."""
    plain = name.strip().casefold()
    apps = DifyApp.objects.exclude(name=name).only("pk", "name")
    if besides is not None:
        apps = apps.exclude(pk=besides)
    for app in apps:
        if app.name.strip().casefold() == plain:
            return app
    return None


def info_name(app: DifyApp) -> str | None:
    """What Dify's /info calls the app, asked with its settings as they are now (a short
    timeout, no retries); None when Dify does not answer as it should ("Test the connection"
    says what is wrong)."""
    try:
        with DifyClient(
            app.base_url, app.api_key, timeout=httpx.Timeout(5.0), max_retries=0
        ) as client:
            return str(client.get_info().get("name") or "")
    except DifyError:
        return None


def name_warning(app: DifyApp, name: str) -> str | None:
    """Whether /info's `name` is the app's as known before (or, for an app never seen in Dify,
    its name here): the key of another app is taken by Dify, and would make every run and form
    of this app a 404. The warning, or None."""
    if not name:
        return None
    if app.dify_name:
        if name == app.dify_name:
            return None
        message = _(
            "%(app)s: Dify now calls the app “%(name)s”; it called it “%(before)s” "
            "before. If this is the key of another app, Dify will know none of this "
            "app's runs and forms: they wait until the right key is entered."
        )
    elif same_name(name, app.name):
        return None
    else:
        message = _(
            "%(app)s: Dify calls the app “%(name)s”, not “%(app)s” as it is named here. "
            "If this is the key of another app, Dify will know none of this app's runs "
            "and forms: they wait until the right key is entered."
        )
    return message % {"app": app.name, "name": name, "before": app.dify_name}


# Kinds of Dify app without a workflow, so without a Human Input node: nothing of theirs can
# be captured or decided here, whatever the mode set up here.
UNUSABLE_MODES = frozenset({"chat", "completion", "agent-chat"})
# The kinds of app set up here, by the mode Dify's /info names them: "Workflow", "Chatflow".
DIFY_KINDS = {dify: DifyApp.Mode(here).label for here, dify in DIFY_MODES.items()}


def last_tested_mode() -> Subquery:
    """For annotating apps: the kind of app /info named at the app's last connection test that
    reached Dify (the admin's "Test the connection", and its save of new settings), or None.
    Compared with the mode set now where it matters: setting the mode ends a mismatch."""
    return Subquery(
        AuditEntry.objects.filter(
            object_type="difyapp",
            object_id=Cast(OuterRef("pk"), CharField()),
            verb="app_connection_tested",
            details__result__in=["connected", "unusable"],
        )
        .order_by("-created_at", "-id")
        .values("details__mode")[:1]
    )


def unusable_mode(app: DifyApp) -> str:
    """The kind of app Dify named at `app`'s last connection test when that is one the inbox
    cannot use (`UNUSABLE_MODES`: a plain chat, completion or agent app, with no Human Input
    node), else "". Read from `tested_mode` when the app was annotated with
    `last_tested_mode()` (the lists), else asked of the trail."""
    if hasattr(app, "tested_mode"):
        mode = app.tested_mode
    else:
        mode = (
            AuditEntry.objects.filter(
                object_type="difyapp",
                object_id=str(app.pk),
                verb="app_connection_tested",
                details__result__in=["connected", "unusable"],
            )
            .order_by("-created_at", "-id")
            .values_list("details__mode", flat=True)
            .first()
        )
    return mode if isinstance(mode, str) and mode in UNUSABLE_MODES else ""


def unusable_warning(app: DifyApp, mode: Any) -> str | None:
    """Whether the `mode` Dify's /info names is a kind of app the inbox cannot use (a plain
    chat, completion or agent app): what to say, or None."""
    if mode not in UNUSABLE_MODES:
        return None
    return _(
        "%(app)s: Dify says this is a “%(mode)s” app. Such apps have no Human Input node, so "
        "they cannot be used here: only Workflow and Chatflow apps can."
    ) % {"app": app.name, "mode": mode}


def mode_warning(app: DifyApp, mode: Any) -> str | None:
    """Whether the `mode` Dify's /info names is the kind of app set up here ("Test the
    connection", the admin's save, `add_dify_app`): the warning, or None."""
    if app.is_dify_mode(mode):
        return None
    if unusable := unusable_warning(app, mode):
        return unusable
    if mode in DIFY_KINDS:
        return _(
            "%(app)s: Dify says this app is a %(dify)s, not a %(kind)s: set Mode to match."
        ) % {"app": app.name, "dify": DIFY_KINDS[mode], "kind": app.get_mode_display()}
    return _(
        "%(app)s: Dify names its mode “%(mode)s”, which is not a %(kind)s as set up here; set "
        "the mode to match."
    ) % {"app": app.name, "mode": mode or "?", "kind": app.get_mode_display()}


def other_app_warning(app: DifyApp) -> str | None:
    """The name check of a new key or URL (the admin's save, `add_dify_app`): /info asked
    with the app's settings now, held against the name it gave before (`name_warning`).
    Nothing is asked of Dify beyond /info, and a Dify that does not answer says nothing."""
    if app.api_key_sealed:
        return None
    name = info_name(app)
    return name_warning(app, name) if name is not None else None


def same_server_and_key(app: DifyApp) -> list[DifyApp]:
    """The other apps that send the same key to the same server: one Dify app recorded twice
    here, whose runs the inbox could capture under either. Keys compared decrypted, in
    constant time; never shown (the apps list shows their fingerprints)."""
    if app.api_key_sealed or not app.api_key:
        return []
    server = server_of(app.base_url)
    key = str(app.api_key).encode()
    return [
        other
        for other in DifyApp.objects.exclude(pk=app.pk).order_by("name")
        if server_of(other.base_url) == server
        and not other.api_key_sealed
        and hmac.compare_digest(str(other.api_key).encode(), key)
    ]


def shared_key_warning(app: DifyApp) -> str | None:
    """The warning when another app already uses this app's server and key, or None."""
    others = same_server_and_key(app)
    if not others:
        return None
    return _(
        "%(app)s: %(others)s already uses this server (%(server)s) and this API key: Dify "
        "takes them for one app, and its runs could be recorded here under either. Give each "
        "app here the key of its own Dify app."
    ) % {
        "app": app.name,
        "others": ", ".join(f"“{other.name}”" for other in others),
        "server": server_of(app.base_url),
    }
