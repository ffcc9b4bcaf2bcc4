from __future__ import annotations

import contextlib
import contextvars
import time
import zoneinfo
from collections.abc import Callable, Iterator
from typing import Any, cast

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import resolve_url
from django.utils import timezone, translation
from django.utils.cache import add_never_cache_headers
from django.utils.translation import gettext as _
from django_htmx.http import HttpResponseClientRefresh


def valid_time_zone(name: str) -> str:
    """`name` if it is an IANA zone this machine knows, else ""."""
    if not name or len(name) > 64:
        return ""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return ""
    return name


def browser_time_zone(request: HttpRequest) -> str:
    """The zone the reader's browser gave (the `tz` cookie set by the page's script), or ""."""
    return valid_time_zone(request.COOKIES.get("tz", ""))


class TimezoneMiddleware:
    """Show times in the reviewer's zone: the `tz` cookie set by the browser, else the default."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        name = browser_time_zone(request)
        timezone.activate(zoneinfo.ZoneInfo(name)) if name else timezone.deactivate()
        return self.get_response(request)


_actor: contextvars.ContextVar[Any] = contextvars.ContextVar("inbox_actor", default=None)


def current_actor() -> Any:
    """The signed-in user of the request being answered (None outside one): for the audit
    trail of changes Django makes on its own, such as a user's groups saved in the admin."""
    return _actor.get()


# What every audit entry recorded while answering a request says of how it came (None outside
# one): `via` ("api", "page"), the API token that acted, a guest's recipient and address.
_audit_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "inbox_audit_context", default=None
)


def audit_context() -> dict[str, Any]:
    """The details `AuditEntry.build` adds to each entry recorded now ({} outside a request)."""
    return dict(_audit_context.get() or {})


@contextlib.contextmanager
def audit_context_of(**details: Any) -> Iterator[dict[str, Any]]:
    """Inside the block, each audit entry also carries `details` (and what the block it is in
    gave): how the request came, said once where it is known, not at each verb."""
    context = {**(_audit_context.get() or {}), **details}
    token = _audit_context.set(context)
    try:
        yield context
    finally:
        _audit_context.reset(token)


def add_audit_context(**details: Any) -> None:
    """Add to the details of the entries the rest of this request records (nothing outside a
    request, or outside `audit_context_of`)."""
    context = _audit_context.get()
    if context is not None:
        context.update(details)


class CurrentActorMiddleware:
    """The request's user for the trail (`current_actor`), and a fresh `audit_context` for each
    request: an action on the inbox's pages is recorded `via: "page"`; the API says its own
    (`inbox.api.api_view`). The admin's entries say neither: an administrator's is the admin's."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = _actor.set(getattr(request, "user", None))
        try:
            with audit_context_of():
                return self.get_response(request)
        finally:
            _actor.reset(token)

    def process_view(
        self, request: HttpRequest, view: Any, args: Any, kwargs: Any
    ) -> HttpResponse | None:
        match = request.resolver_match
        if match is not None and match.namespace == "inbox":
            add_audit_context(via="page")
        return None


class PrivatePagesMiddleware:
    """A signed-in reviewer's pages are never kept by a browser or a proxy (`no-store`): what
    they show changes under them (a form decided elsewhere, one they decided a moment ago), and
    Back must ask again rather than show a form as still waiting, its buttons live. A response
    that says how it may be cached already (static files, guest pages) keeps its own."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        user = getattr(request, "user", None)
        if (
            user is not None
            and user.is_authenticated
            and "Cache-Control" not in response
            and response.get("Content-Type", "").startswith("text/html")
        ):
            add_never_cache_headers(response)
        return response


# Where the inbox keeps the client's address in the request's WSGI environ (`request.META`), for
# the web server's access log (inbox/gunicorn_conf.py: `%({inbox.client_addr}e)s`).
CLIENT_ADDR_ENVIRON_KEY = "inbox.client_addr"


def client_ip(request: HttpRequest) -> str:
    """The client's address: the connection's, or behind `INBOX_TRUSTED_PROXIES` reverse proxies
    the `X-Forwarded-For` entry the outermost of them wrote (entries further left are whatever
    the client sent, and can be forged). Sign-in throttling, guest links' rate limits, the audit
    trail and the access log all read this one."""
    hops = settings.INBOX_TRUSTED_PROXIES
    if hops:
        forwarded = [
            part.strip()
            for part in str(request.META.get("HTTP_X_FORWARDED_FOR", "")).split(",")
            if part.strip()
        ]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    return str(request.META.get("REMOTE_ADDR") or "unknown")


class ClientAddressMiddleware:
    """Put the client's address as `client_ip` resolves it in the request's environ, so the
    access log names it rather than the `X-Forwarded-For` header as sent. First of all, so every
    request the inbox answers has it (the health check's too)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.META[CLIENT_ADDR_ENVIRON_KEY] = client_ip(request)
        return self.get_response(request)


class HealthCheckMiddleware:
    """Answer `/healthz` before anything checks the Host header or redirects to HTTPS: the
    container's health check and load balancers probe by address over plain HTTP, with a Host
    that ALLOWED_HOSTS rightly refuses. It still proves the database answers."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        # As WhiteNoise lists the static files it will serve: the health check then knows files
        # collected later for ones this process does not serve.
        from inbox.health import note_static_files

        note_static_files()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/healthz" and request.method in ("GET", "HEAD"):
            from inbox.views import healthz

            return healthz(request)
        return self.get_response(request)


def supported_language(code: str | None) -> str:
    """`code` as one of LANGUAGES ("zh-Hans" -> "zh-hans"), or "" when it names none."""
    try:
        return translation.get_supported_language_variant(code or "")
    except LookupError:
        return ""


# The chosen language a request was given (`speak_chosen_language`), for the response to keep
# in the browser's language cookie.
_KEEP_LANGUAGE = "_inbox_keep_language"


# Their chosen language ("" for none) and when it was read, for a browser that keeps no
# language cookie (none chosen to keep there): the database is asked again after
# CHOSEN_LANGUAGE_RECHECK_SECONDS, not on every page and poll, so a language an administrator
# chooses reaches such a browser within that time (and at once on signing in).
_CHOSEN_SESSION_KEY = "inbox_language_chosen"
CHOSEN_LANGUAGE_RECHECK_SECONDS = 60


def speak_chosen_language(request: HttpRequest, user: Any, *, fresh: bool = True) -> None:
    """Answer `request` in the language `user` (or an administrator) chose for them, if they
    chose one, and keep it in the browser (`ReviewerLanguageMiddleware` sets the cookie): on
    signing in (`fresh`: read again), and on a page asked for without a language cookie (as
    read in this session less than CHOSEN_LANGUAGE_RECHECK_SECONDS ago)."""
    from inbox.models import ReviewerProfile

    session = getattr(request, "session", None)
    known = session.get(_CHOSEN_SESSION_KEY) if session is not None else None
    now = time.time()
    if (
        not fresh
        and isinstance(known, list)
        and len(known) == 2
        and 0 <= now - known[1] < CHOSEN_LANGUAGE_RECHECK_SECONDS
    ):
        language = known[0]
    else:
        language = ReviewerProfile.chosen_language_of(user) or ""
        if session is not None:
            session[_CHOSEN_SESSION_KEY] = [language, now]
    if language:
        translation.activate(language)
        request.LANGUAGE_CODE = language
        setattr(request, _KEEP_LANGUAGE, language)


class ReviewerLanguageMiddleware:
    """A signed-in reviewer's language (`ReviewerProfile.language`), and their browser's time
    zone, for their pages and the emails sent to them.

    - Chosen (by them with the language switch, or by an administrator), their language goes
      with them to every browser: signing in (`signals.signed_in`) opens the inbox in it, and so
      does a page asked for without a language cookie; the response keeps it in that cookie.
    - The switch, used while signed in, makes the language it sets their choice. A language
      cookie the browser had before (the switch used there) becomes their choice if they have
      none.
    - Otherwise the language LocaleMiddleware picked from their browser's Accept-Language is
      kept as a guess, until they or an administrator choose one: a guess never replaces a
      choice, so another browser does not change the language of their emails.

    One write per session and change, not per request."""

    SESSION_KEY = "inbox_language_saved"
    ZONE_SESSION_KEY = "inbox_time_zone_saved"

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    @staticmethod
    def _reviewer(request: HttpRequest) -> Any:
        """The reviewer signed in through the session (not an API token), and not on a guest
        link (a link forwarded to a reviewer opens in its recipient's language, not theirs);
        else None."""
        user = getattr(request, "user", None)
        match = getattr(request, "resolver_match", None)
        on_guest_link = match is not None and (match.url_name or "").startswith("guest_")
        if (
            user is not None
            and user.is_authenticated
            and request.session.session_key
            and not on_guest_link
        ):
            return user
        return None

    @staticmethod
    def _cookie_language(request: HttpRequest) -> str:
        return supported_language(request.COOKIES.get(settings.LANGUAGE_COOKIE_NAME))

    def process_view(
        self, request: HttpRequest, view: Any, args: Any, kwargs: Any
    ) -> HttpResponse | None:
        # No language chosen in this browser: the reviewer's own, if they chose one, rather than
        # the one the browser asks for.
        user = self._reviewer(request)
        if user is not None and not self._cookie_language(request):
            speak_chosen_language(request, user, fresh=False)
        return None

    def __call__(self, request: HttpRequest) -> HttpResponse:
        from inbox.models import ReviewerProfile

        response = self.get_response(request)
        user = self._reviewer(request)
        if user is None:
            return response
        match = getattr(request, "resolver_match", None)
        switched = ""
        if match is not None and match.url_name == "set_language":
            cookie = response.cookies.get(settings.LANGUAGE_COOKIE_NAME)
            switched = supported_language(cookie.value if cookie is not None else "")
        kept = getattr(request, _KEEP_LANGUAGE, "")
        language, how = "", ReviewerProfile.ASKED_BY_BROWSER
        if switched:
            language, how = switched, ReviewerProfile.CHOSEN
            request.session[_CHOSEN_SESSION_KEY] = [switched, time.time()]
        elif kept:
            # Their chosen language, kept in this browser from now on; nothing new to save.
            response.set_cookie(
                settings.LANGUAGE_COOKIE_NAME,
                kept,
                max_age=settings.LANGUAGE_COOKIE_AGE,
                path=settings.LANGUAGE_COOKIE_PATH,
                domain=settings.LANGUAGE_COOKIE_DOMAIN,
                secure=settings.LANGUAGE_COOKIE_SECURE,
                httponly=settings.LANGUAGE_COOKIE_HTTPONLY,
                samesite=settings.LANGUAGE_COOKIE_SAMESITE,
            )
        else:
            language = supported_language(translation.get_language())
            if language and language == self._cookie_language(request):
                how = ReviewerProfile.KEPT_IN_BROWSER
            if request.session.get(self.SESSION_KEY) == language:
                language = ""
        zone = browser_time_zone(request)
        if zone and request.session.get(self.ZONE_SESSION_KEY) == zone:
            zone = ""
        if language or zone:
            ReviewerProfile.remember(user, language, zone, how=how)
            if language:
                request.session[self.SESSION_KEY] = language
            if zone:
                request.session[self.ZONE_SESSION_KEY] = zone
        return response


class HtmxReloadMiddleware:
    """A part of a page fetched by htmx (a poll, a search) that the server will not give: the
    session ended (a redirect to sign in), or the page is no longer the reader's (403, 404).
    htmx would swap the sign-in page into the part, or ignore the error and poll on forever;
    the browser reloads the page instead, and shows the sign-in page or the reason in full.

    A post from a page whose session ended is not reloaded away: the reader may have typed in
    it. The page is told in its error alert, and the reader reloads when they have what they
    typed. An answer that says where it goes (HX-Retarget) is left as it is."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not getattr(request, "htmx", False) or "HX-Retarget" in response:
            return response
        if request.method == "GET":
            if response.status_code in (403, 404) or self._to_sign_in(response):
                return HttpResponseClientRefresh()
        elif self._to_sign_in(response):
            # XHR would follow the redirect, and htmx swap the sign-in page into the part.
            from inbox.views import HtmxHttpRequest, refused_for_htmx

            message = _(
                "Nothing was sent: you are signed out. Copy anything you typed, then reload "
                "the page to sign in again."
            )
            htmx_request = cast(HtmxHttpRequest, request)
            return refused_for_htmx(htmx_request, message, status=403, reload=True)
        return response

    @staticmethod
    def _to_sign_in(response: HttpResponse) -> bool:
        if response.status_code not in (301, 302):
            return False
        login = resolve_url(settings.LOGIN_URL)
        return str(response.get("Location", "")).split("?", 1)[0] == login


def content_security_policy(image_hosts: list[str]) -> str:
    """The policy every page is served with: nothing runs or loads from anywhere but this site,
    except images from the hosts an administrator allowed for form content.

    Pages and the admin use no inline script, style or eval (htmx is told not to, in
    base.html), so none is allowed: if markup ever slipped past the Markdown sanitizer, it could
    neither run nor send anything out. Images are what form content may still load; they are
    held to the same hosts inbox.markdown lets through, over https only.
    """
    images = " ".join(["'self'", *(f"https://{host}" for host in image_hosts)])
    return "; ".join(
        [
            "default-src 'self'",
            f"img-src {images}",
            "script-src 'self'",
            "style-src 'self'",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


class ContentSecurityPolicyMiddleware:
    """Send the Content-Security-Policy header with every response. A response that set its own
    keeps it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        # Django's debug pages (DEBUG only: a traceback, or the URL patterns tried) are styled
        # and scripted inline; they are left without a policy so they stay readable.
        if settings.DEBUG and response.status_code in (404, 500):
            return response
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = content_security_policy(
                settings.INBOX_MARKDOWN_IMAGE_HOSTS
            )
        return response


class UploadSizeMiddleware:
    """Before anything reads the body (the CSRF check does, for its token): a POST's file
    parts are kept only where a view takes files, from whom it takes them, and no larger than
    what is taken there, as they stream in. Without it Django would write a file of any size
    to a temporary file before the view could refuse it, even from someone not signed in.

    After AuthenticationMiddleware (the session says who is signed in); the CSRF check reads
    the body only in its `process_view`, after every middleware's own part has run.

    - Any other page, and a reviewer's upload page when nobody is signed in: every file part
      is dropped as it begins (`uploads.DropFiles`). A guest's upload is judged by its signed
      link in the view; an API call's by its token, before the view reads the body.
    - A form's file input: each file at most the largest limit of the kinds the input takes,
      the request's files together at most as many as it holds (`uploads.cap_uploads`).
    - A chatflow's message (start, next message): the kinds and number the app's
      `file_upload` takes; a start page's file inputs too, each its own kinds and number. The API's message-file upload is capped by its view, once the
      token is known (the app is named in the body, next to the file)."""

    UPLOAD_VIEWS = frozenset(
        {
            "inbox:form_upload",
            "inbox:guest_upload",
            "api_form_files",
            # A chatflow's message with its files, and the API's upload of such a file.
            "inbox:app_start",
            "inbox:run_continue",
            "api_run_files",
        }
    )
    # Reached without a session: a guest's signed link, an API token (each checked by the view).
    WITHOUT_SESSION = frozenset({"inbox:guest_upload", "api_form_files", "api_run_files"})

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method == "POST":
            self._cap(request)
        return self.get_response(request)

    def _cap(self, request: HttpRequest) -> None:
        from django.urls import Resolver404, resolve

        from inbox.uploads import drop_uploads

        try:
            match = resolve(request.path_info)
            view_name, match_kwargs = match.view_name, match.kwargs
        except Resolver404:
            view_name, match_kwargs = "", {}
        if view_name not in self.UPLOAD_VIEWS or (
            view_name not in self.WITHOUT_SESSION and not request.user.is_authenticated
        ):
            drop_uploads(request)
            return
        if view_name != "api_run_files":
            self._cap_for(request, view_name, match_kwargs)

    @staticmethod
    def _cap_for(request: HttpRequest, view_name: str, kwargs: dict[str, Any]) -> None:
        from inbox import notify
        from inbox.app_check import unusable_mode
        from inbox.dify.errors import DifyError
        from inbox.forms import input_specs
        from inbox.models import DifyApp, Form, Run
        from inbox.runs import app_parameters, start_inputs
        from inbox.uploads import cap_uploads, drop_uploads, file_cap, message_file_spec

        # Only a cap, never an answer: whether the caller may see the form, the app or the run
        # is the view's part. Where no file can be taken, none is kept.
        if view_name in ("inbox:app_start", "inbox:run_continue"):
            app = None
            if "app_id" in kwargs:
                app = DifyApp.objects.filter(pk=kwargs["app_id"], is_active=True).first()
                if app is not None and unusable_mode(app):
                    # A plain chat, completion or agent app: nothing of it starts here (its
                    # start page says so), so no file is kept and Dify is not asked.
                    app = None
            else:
                run = Run.objects.filter(public_id=kwargs["public_id"]).first()
                app = run.app if run is not None else None
            taken: list[Any] = []
            if app is not None:
                try:
                    parameters = app_parameters(app)
                except DifyError:
                    parameters = {}
                if app.mode == DifyApp.Mode.CHATFLOW:
                    taken += [s for s in [message_file_spec(parameters)] if s is not None]
                if "app_id" in kwargs:
                    # A start's file inputs, each as it takes files.
                    taken += [
                        s.file_spec for s in start_inputs(parameters) if s.supported and s.is_file
                    ]
            if not taken:
                drop_uploads(request)
            else:
                files = sum(spec.ui_max_files for spec in taken)
                cap_uploads(request, file_cap(app, taken), files=files)
            return
        form = None
        if "public_id" in kwargs:
            form = (
                Form.objects.filter(public_id=kwargs["public_id"])
                .select_related("run__app")
                .first()
            )
        elif "token" in kwargs:
            recipient = notify.check_link(kwargs["token"]).recipient
            form = recipient.form if recipient is not None else None
        if form is None:
            drop_uploads(request)
            return
        specs = [spec for spec in input_specs(form.definition or {}) if spec.is_file]
        # A page's upload names its input, and takes as many files as it holds; the API's
        # takes one file per call, for any of the form's file inputs.
        files = 1
        if "input_name" in kwargs:
            specs = [spec for spec in specs if spec.name == kwargs["input_name"]]
            files = specs[0].ui_max_files if specs else 1
        if not specs:
            drop_uploads(request)
            return
        cap_uploads(request, file_cap(form.run.app, specs), files=files)


class DifyDeadlineMiddleware:
    """The Dify calls a request makes (reading an app's parameters, ingesting a run, starting,
    stopping) give up together after INBOX_DIFY_REQUEST_DEADLINE_SECONDS, so a Dify that hangs
    is said as unreachable in under a minute rather than after every retry's timeout. Uploads
    keep their own time."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        from inbox.dify.client import deadline

        with deadline(settings.INBOX_DIFY_REQUEST_DEADLINE_SECONDS):
            return self.get_response(request)
