"""A reviewer's own password: changed while signed in, or reset through an emailed link.

Django's own views and token generator, with the inbox's pages and these rules:

- The reset page says the same whether or not an account has the address (an email is queued
  only for active accounts with a password that have it), and is throttled per address and per
  client address in the sign-in's window (INBOX_PASSWORD_RESETS_PER_EMAIL / _PER_IP), counted
  either way: past a limit it answers 429 with Retry-After, sending nothing.
- The email is built and sent by the worker (`tasks.send_password_reset`, given the account's
  id only): the link exists nowhere but in the email, never in the broker or a log line
  (`inbox.logs` hides the reset page's address in the web servers' lines). It speaks the
  account's language (`ReviewerProfile`, else the page's) and links from INBOX_BASE_URL.
- A wrong current password on the change page counts as a failed sign-in of the account
  (`inbox.login`): the change page is no way around the sign-in's brake.
- A reset link sets a password only while its account is active (`ResetTokenGenerator`): one
  made before a deactivation opens nothing while the account is deactivated.
- Each change, reset request and reset is in the audit trail (`password_changed`,
  `password_reset_requested`, `password_reset`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import unicodedata
from typing import Any, cast

from django.conf import settings
from django.contrib.auth import forms as auth_forms
from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.contrib.auth.tokens import PasswordResetTokenGenerator
from django.core.mail import EmailMultiAlternatives
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils import translation
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from inbox import login, timefmt
from inbox.middleware import client_ip
from inbox.models import AuditEntry, ReviewerProfile, _not_queued
from inbox.notify import automated_email

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Changing one's password
# ---------------------------------------------------------------------------------------------


class PasswordChangeView(auth_views.PasswordChangeView):
    template_name = "accounts/password_change_form.html"

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        keys = login._keys(request, request.user.get_username())
        if any(login._count(key) >= limit for key, limit in keys):
            form = self.get_form_class()(user=cast(Any, request.user))
            return _refused(self, form, login.refusal_text, login.window_left())
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: Any) -> HttpResponse:
        if form.has_error("old_password", "password_incorrect"):
            for key, _limit in login._keys(self.request, self.request.user.get_username()):
                login._add_failure(key)
        return super().form_invalid(form)

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        AuditEntry.record("password_changed", form.user, actor=form.user)
        return response


class PasswordChangeDoneView(auth_views.PasswordChangeDoneView):
    template_name = "accounts/password_change_done.html"


# ---------------------------------------------------------------------------------------------
# Resetting a forgotten one
# ---------------------------------------------------------------------------------------------


def _reset_keys(request: HttpRequest, email: str) -> list[tuple[str, int]]:
    window, _left = login._window()
    # Folded as Django matches an address to its accounts (`_unicode_ci_compare`): a spelling
    # that finds the same account (a long s, U+017F, for "s") counts as the same address.
    plain = unicodedata.normalize("NFKC", email.strip()).casefold()
    address = hashlib.sha256(plain.encode()).hexdigest()[:24]
    ip = hashlib.sha256(client_ip(request).encode()).hexdigest()[:24]
    return [
        (f"reset:email:{address}:{window}", settings.INBOX_PASSWORD_RESETS_PER_EMAIL),
        (f"reset:ip:{ip}:{window}", settings.INBOX_PASSWORD_RESETS_PER_IP),
    ]


def _reset_refusal(minutes: int) -> str:
    return ngettext(
        "Too many requests for a reset link. Try again in %(minutes)d minute.",
        "Too many requests for a reset link. Try again in %(minutes)d minutes.",
        minutes,
    ) % {"minutes": minutes}


def _refused(view: Any, form: Any, text: Any, left: int) -> HttpResponse:
    """The view's page again, with an empty form, saying how long to wait: 429 with
    Retry-After."""
    message = text(max(1, math.ceil(left / 60)))
    context = view.get_context_data(form=form, throttled=message)
    response = view.render_to_response(context, status=429)
    response["Retry-After"] = str(left)
    return response


class ResetTokenGenerator(PasswordResetTokenGenerator):
    """Django's reset token, also made of whether the account is active: a link made before an
    account was deactivated sets no password while it is (Django's own token stays good
    through a deactivation, and its confirm view does not ask)."""

    def _make_hash_value(self, user: Any, timestamp: int) -> str:
        return f"{super()._make_hash_value(user, timestamp)}{int(bool(user.is_active))}"


token_generator = ResetTokenGenerator()


class PasswordResetForm(auth_forms.PasswordResetForm):
    def accounts(self) -> list[Any]:
        return list(self.get_users(self.cleaned_data["email"]))


class PasswordResetView(auth_views.PasswordResetView):
    form_class = PasswordResetForm
    template_name = "accounts/password_reset_form.html"

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        email = str(request.POST.get("email", ""))[:254]
        keys = _reset_keys(request, email)
        if any(login._count(key) >= limit for key, limit in keys):
            return _refused(self, self.get_form_class()(), _reset_refusal, login.window_left())
        return super().post(request, *args, **kwargs)

    def form_valid(self, form: Any) -> HttpResponse:  # type: ignore[override]
        from inbox.tasks import send_password_reset

        # Counted whatever the address: the limit tells nothing about the accounts.
        for key, _limit in _reset_keys(self.request, form.cleaned_data["email"]):
            login._add_failure(key)
        language = translation.get_language() or settings.LANGUAGE_CODE
        for user in form.accounts():
            AuditEntry.record("password_reset_requested", user, actor_label=client_ip(self.request))
            try:
                send_password_reset.apply_async((user.pk, language))
            except Exception as exc:
                _not_queued(exc, "user %s: password reset email not queued", user.pk)
        return HttpResponseRedirect(self.get_success_url())


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "accounts/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "accounts/password_reset_confirm.html"
    token_generator = token_generator

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        user = form.user
        AuditEntry.record("password_reset", user, actor=user, actor_label=user.get_username())
        # The forgotten password's failed sign-ins no longer hold the account back.
        login.clear_failures(self.request, user.get_username())
        return response


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "accounts/password_reset_complete.html"


def reset_lasts() -> str:
    return timefmt.span(dt.timedelta(seconds=settings.PASSWORD_RESET_TIMEOUT))


def password_reset_email(user: Any, language: str) -> EmailMultiAlternatives:
    """The reset email for `user`, in their language (the page's when they have none on
    record), its link from INBOX_BASE_URL. Built where it is sent: its link goes nowhere else."""
    language = ReviewerProfile.languages_of([user]).get(user.pk) or language
    path = reverse(
        "password_reset_confirm",
        kwargs={
            "uidb64": urlsafe_base64_encode(force_bytes(user.pk)),
            "token": token_generator.make_token(user),
        },
    )
    with translation.override(language):
        context = {
            "user": user,
            "username": user.get_username(),
            "name": user.get_full_name() or user.get_username(),
            "url": settings.INBOX_BASE_URL.rstrip("/") + path,
            "lasts": reset_lasts(),
            "title": _("Reset your password"),
        }
        return automated_email("password_reset", context, user.email)


def send_password_reset(user_pk: int, language: str) -> int:
    """Email the account its reset link, if it may still have one (active, with a password and
    an address). A failed send is logged without the email (its link): asked again, it goes."""
    user = get_user_model().objects.filter(pk=user_pk, is_active=True).first()
    if user is None or not user.has_usable_password() or not user.email:
        return 0
    try:
        return email_sent(password_reset_email(user, language))
    except Exception as exc:
        logger.warning("user %s: password reset email not sent: %s", user_pk, type(exc).__name__)
        return 0


def email_sent(message: EmailMultiAlternatives) -> int:
    return message.send()
