"""A reviewer's own password: changed while signed in, or reset through an emailed link.

Django's own views and token generator, with the inbox's pages and these rules:

- The reset page says the same whether or not an account has the address (an email is queued
  only for the active accounts that have it, with a password or without one yet: an invited
  reviewer who lost the invitation asks here), and is throttled per address and per client
  address in the sign-in's window (INBOX_PASSWORD_RESETS_PER_EMAIL / _PER_IP), counted either
  way: past a limit it answers 429 with Retry-After, sending nothing.
- An administrator sends a "set your password" link from the admin's user list or an
  account's page (`inbox.admin.UserAdmin`, `tasks.send_password_link`): worded as an
  invitation to an account that has no password and never signed in (`invited`), as a reset
  otherwise.
- Either email is built and sent by the worker (`tasks.send_password_reset`,
  `tasks.send_password_link`, given the account's id only): the link exists nowhere but in the
  email, never in the broker or a log line (`inbox.logs` hides the reset page's address in the
  web servers' lines). It speaks the account's language (`ReviewerProfile`, else the page's,
  else the inbox's default) and links from INBOX_BASE_URL.
- Django's token is made of the account's password hash, an unusable one too: a link sets a
  password for an account without one, and works once (the hash changes as it is used).
- A wrong current password on the change page counts as a failed sign-in of the account
  (`inbox.login`): the change page is no way around the sign-in's brake.
- A reset link sets a password only while its account is active (`ResetTokenGenerator`): one
  made before a deactivation opens nothing while the account is deactivated.
- Each change, reset request, link an administrator sent and reset is in the audit trail
  (`password_changed`, `password_reset_requested`, `password_link_sent`, `password_reset`).
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
from inbox.names import display_name
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
    def get_users(self, email: str) -> Any:
        """Django's, less its test of a usable password: an active account without a password
        yet (an administrator made it without one, and its invitation is lost or lapsed) gets
        its link too. The address is matched as Django matches it."""
        field = get_user_model().get_email_field_name()
        active = get_user_model()._default_manager.filter(
            **{f"{field}__iexact": email, "is_active": True}
        )
        return (u for u in active if _same_address(email, getattr(u, field)))

    def accounts(self) -> list[Any]:
        return list(self.get_users(self.cleaned_data["email"]))


def _same_address(one: str, other: str) -> bool:
    # As Django's `_unicode_ci_compare`: NFKC, then case folded.
    def fold(text: str) -> str:
        return unicodedata.normalize("NFKC", text).casefold()

    return fold(one) == fold(other)


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

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        # An account with no password yet chooses its first one, not a new one.
        context["first"] = bool(
            self.validlink and self.user is not None and not self.user.has_usable_password()
        )
        return context

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


def invited(user: Any) -> bool:
    """Whether an account never had a way in: no usable password, never signed in (an
    administrator made it without one). Its link from an administrator is an invitation."""
    return not user.has_usable_password() and user.last_login is None


def password_reset_email(
    user: Any, language: str, *, by_admin: bool = False
) -> EmailMultiAlternatives:
    """The email with `user`'s link to set a password, in their language (`language` when they
    have none on record), its link from INBOX_BASE_URL. Built where it is sent: its link goes
    nowhere else. Asked for on the reset page, it says so; sent by an administrator, it is an
    invitation to an account that never had a way in (`invited`), else a reset."""
    language = ReviewerProfile.languages_of([user]).get(user.pk) or language
    path = reverse(
        "password_reset_confirm",
        kwargs={
            "uidb64": urlsafe_base64_encode(force_bytes(user.pk)),
            "token": token_generator.make_token(user),
        },
    )
    invitation = by_admin and invited(user)
    with translation.override(language):
        context = {
            "user": user,
            "username": user.get_username(),
            "name": display_name(user),
            "url": settings.INBOX_BASE_URL.rstrip("/") + path,
            "lasts": reset_lasts(),
            "by_admin": by_admin,
            "title": _("Choose your password") if invitation else _("Reset your password"),
        }
        kind = "password_invitation" if invitation else "password_reset"
        return automated_email(kind, context, user.email)


def _may_have_link(user_pk: int) -> Any:
    """The account, if a link may still go to it: active, with an address."""
    user = get_user_model().objects.filter(pk=user_pk, is_active=True).first()
    return user if user is not None and user.email else None


def send_password_reset(user_pk: int, language: str) -> int:
    """Email the account its reset link, if it may still have one (active, with an address; a
    password or none yet). A failed send is logged without the email (its link): asked again,
    it goes."""
    user = _may_have_link(user_pk)
    if user is None:
        return 0
    try:
        return email_sent(password_reset_email(user, language))
    except Exception as exc:
        logger.warning("user %s: password reset email not sent: %s", user_pk, type(exc).__name__)
        return 0


def send_password_link(user_pk: int) -> int:
    """Email the account the link an administrator sent it (`password_reset_email`, by_admin),
    in its language or the inbox's default, if it may still have one: deactivated or without
    an address since, nothing goes. A failed send is logged without the email (its link)."""
    user = _may_have_link(user_pk)
    if user is None:
        return 0
    try:
        return email_sent(password_reset_email(user, settings.LANGUAGE_CODE, by_admin=True))
    except Exception as exc:
        logger.warning("user %s: set-password email not sent: %s", user_pk, type(exc).__name__)
        return 0


def email_sent(message: EmailMultiAlternatives) -> int:
    return message.send()
