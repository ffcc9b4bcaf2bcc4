"""Sign-in with a brake on password guessing.

Failed sign-ins are counted per client address and per username over a window (the cache,
as the guest links' rate limits are). Past either limit the sign-in page answers 429 with
Retry-After, and the password is not even checked: a guesser learns nothing more until the
window ends. A success clears the username's count. The first refusal of a window is logged
and, for a username that exists, written to the audit trail.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.core.exceptions import NON_FIELD_ERRORS
from django.http import HttpRequest, HttpResponse
from django.utils.translation import ngettext

from inbox.views_reach import _client_ip

logger = logging.getLogger(__name__)


def _window() -> tuple[int, int]:
    """The current window's number and the seconds left in it."""
    span = settings.INBOX_LOGIN_WINDOW_SECONDS
    now = time.time()
    return int(now // span), max(1, math.ceil(span - now % span))


def _keys(request: HttpRequest, username: str) -> list[tuple[str, int]]:
    window, _left = _window()
    user = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:24]
    ip = hashlib.sha256(_client_ip(request).encode()).hexdigest()[:24]
    return [
        (f"login:fail:user:{user}:{window}", settings.INBOX_LOGIN_FAILURES_PER_USER),
        (f"login:fail:ip:{ip}:{window}", settings.INBOX_LOGIN_FAILURES_PER_IP),
    ]


def _count(key: str) -> int:
    # A cache that is down counts nothing (inbox.cache): sign-ins go on.
    return int(cache.get(key) or 0)


def _add_failure(key: str) -> None:
    try:
        if not cache.add(key, 1, timeout=settings.INBOX_LOGIN_WINDOW_SECONDS * 2):
            cache.incr(key)
    except ValueError:
        # Evicted between add and incr: counted again from one.
        cache.set(key, 1, timeout=settings.INBOX_LOGIN_WINDOW_SECONDS * 2)


def window_left() -> int:
    return _window()[1]


def refusal_text(minutes: int) -> str:
    return ngettext(
        "Too many failed sign-ins. Try again in %(minutes)d minute.",
        "Too many failed sign-ins. Try again in %(minutes)d minutes.",
        minutes,
    ) % {"minutes": minutes}


def clear_failures(request: HttpRequest, username: str) -> None:
    """The username's failed sign-ins of this window no longer count (a success)."""
    user_key, _limit = _keys(request, username)[0]
    cache.delete(user_key)


class LoginView(auth_views.LoginView):
    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        username = str(request.POST.get("username", ""))[:150]
        keys = _keys(request, username)
        if any(_count(key) >= limit for key, limit in keys):
            return self._refused(request, username)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: Any) -> HttpResponse:
        # The right password of a deactivated account is told so (LoginForm), not counted as
        # a guess.
        if not form.has_error(NON_FIELD_ERRORS, "inactive"):
            username = str(self.request.POST.get("username", ""))[:150]
            for key, _limit in _keys(self.request, username):
                _add_failure(key)
        return super().form_invalid(form)

    def form_valid(self, form: Any) -> HttpResponse:
        clear_failures(self.request, str(self.request.POST.get("username", ""))[:150])
        return super().form_valid(form)

    def _refused(self, request: HttpRequest, username: str) -> HttpResponse:
        _window_no, left = _window()
        message = refusal_text(max(1, math.ceil(left / 60)))
        noted = f"login:refused:{_keys(request, username)[0][0]}"
        if cache.add(noted, 1, timeout=left + 1):
            logger.warning(
                "sign-in refused for a while: too many failures (from %s)", _client_ip(request)
            )
            user = get_user_model().objects.filter(username__iexact=username.strip()).first()
            if user is not None:
                from inbox.models import AuditEntry

                AuditEntry.record(
                    "login_throttled", user, actor_label=_client_ip(request), retry_after=left
                )
        context = self.get_context_data(form=self.get_form_class()(request), throttled=message)
        response = self.render_to_response(context, status=429)
        response["Retry-After"] = str(left)
        return response
