from __future__ import annotations

import getpass
import os
import sys
from typing import Any

import httpx
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.validators import URLValidator
from django.db import transaction

from inbox.app_check import (
    look_alike,
    mode_warning,
    other_app_warning,
    server_of,
    shared_key_warning,
)
from inbox.dify.client import DifyClient
from inbox.dify.errors import DifyError, DifyStatusError
from inbox.models import AuditEntry, DifyApp, Form, Run


def _api_key(given: str | None, stdin: Any) -> str:
    if given is not None:
        return given.strip()
    if os.environ.get("DIFY_API_KEY"):
        return os.environ["DIFY_API_KEY"].strip()
    if stdin.isatty():
        return getpass.getpass("API key: ").strip()
    return str(stdin.readline()).strip()


class Command(BaseCommand):
    help = "Create or update a Dify app connection (the API key is stored encrypted)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--base-url", required=True, help="API base URL including /v1")
        parser.add_argument(
            "--api-key",
            help="The app's key. Better left out: a command line is seen by every user of the "
            "machine and kept in shell history. Without it, the key is read from the "
            "environment variable DIFY_API_KEY, else asked for (or read from standard input).",
        )
        parser.add_argument("--mode", choices=[m.value for m in DifyApp.Mode], default="workflow")
        active = parser.add_mutually_exclusive_group()
        active.add_argument(
            "--inactive", action="store_true", help="Store it switched off (runs no longer start)"
        )
        active.add_argument(
            "--activate",
            action="store_true",
            help="Switch an existing app that was deactivated back on. Without it (or "
            "--inactive), an existing app stays as active or inactive as it is.",
        )
        parser.add_argument(
            "--move",
            action="store_true",
            help="Let an existing app with open runs or pending forms move to another server "
            "(another scheme, host or port in --base-url): its forms' tokens and the decisions "
            "on them go to the new server from then on. Without it, such a move is refused.",
        )

    stealth_options = ("stdin",)

    def handle(self, *args: Any, **options: Any) -> None:
        # As the admin's form takes it: spaces at its ends would make a look-alike of another
        # app, which the admin could not save and the API would not find.
        name = options["name"].strip()
        if not name:
            raise CommandError("The app's name must not be empty")
        limit = DifyApp._meta.get_field("name").max_length or 100
        if len(name) > limit:
            raise CommandError(f"The app's name is longer than {limit} characters")
        base_url = options["base_url"].rstrip("/")
        try:
            URLValidator(schemes=["http", "https"])(base_url)
        except ValidationError:
            raise CommandError(f"--base-url is not an http(s) URL: {base_url!r}") from None
        api_key = _api_key(options["api_key"], options.get("stdin") or sys.stdin)
        if not api_key:
            raise CommandError("The API key must not be empty")
        moved = ""
        with transaction.atomic():
            app = DifyApp.objects.select_for_update().filter(name=name).first()
            created = app is None
            if app is None:
                other = look_alike(name)
                if other is not None:
                    raise CommandError(
                        f"An app named {other.name!r} exists already: {name!r} differs from it "
                        "only by case or spaces, and would read the same in every list. Give "
                        f"{other.name!r} exactly to change that app, or choose another name."
                    )
                app = DifyApp(name=name, is_active=not options["inactive"])
                before: dict[str, Any] = {}
            else:
                before = app.audit_values()
                moved = self._move(app, base_url, allowed=options["move"])
                # Switched off by an administrator: switched on again only when asked.
                if options["inactive"]:
                    app.is_active = False
                elif options["activate"]:
                    app.is_active = True
            app.base_url = base_url
            app.api_key = api_key
            app.mode = options["mode"]
            after = app.audit_values()
            # As the admin records a change: the verbs, fields and values it writes.
            changed = sorted(name for name, value in after.items() if before.get(name) != value)
            if created or changed:
                # Saved only when something changed: the app's `updated_at` dates its settings
                # (the reconcile counts a run's 404s from it), which a script that runs this
                # again and again with the same values must not move.
                app.save()
            if created or changed:
                AuditEntry.record(
                    "app_created" if created else "app_changed",
                    app,
                    actor_label="add_dify_app",
                    fields=changed,
                    values={
                        name: {"after": after[name]}
                        if created
                        else {"before": before.get(name), "after": after[name]}
                        for name in changed
                    },
                )
        if not created and {"api_key", "base_url", "mode"} & set(changed):
            # As when the admin saves one: a new key, server or kind of app may be what Dify
            # was waiting for, so it is asked again now rather than at the reconcile's next
            # probe.
            app.settings_changed(actor_label="add_dify_app")
        verb = "Created" if created else ("Updated" if changed else "Unchanged:")
        self.stdout.write(f"{verb} Dify app {app.name!r} ({app.mode}, key {app.masked_api_key})")
        if moved:
            self.stdout.write(moved)
        # A new key or URL (or a new app: every field is new then).
        new_place = bool({"api_key", "base_url"} & set(changed))
        if new_place or "mode" in changed:
            # As the admin warns on saving a new key or URL: only warnings, the app is saved.
            # The command line has no "Test the connection" button: its calls are made here,
            # and they warn as the button does when /info names another kind of app.
            tested, mode = self._test_connection(app)
            for warning in (
                tested,
                mode_warning(app, mode) if mode is not None else None,
                other_app_warning(app) if new_place and not tested else None,
            ):
                if warning:
                    self.stderr.write(f"Warning: {warning}")
            if not tested:
                self.stdout.write("Connection test: Dify answered /info and /parameters.")
            if new_place and (warning := shared_key_warning(app)):
                self.stderr.write(f"Warning: {warning}")
        if not app.is_active:
            said = (
                "The app is inactive"
                if created or options["inactive"]
                else "The app stays inactive, as it was"
            )
            self.stdout.write(f"{said}: no runs of it start. Pass --activate to switch it on.")

    @staticmethod
    def _test_connection(app: DifyApp) -> tuple[str, Any]:
        """The admin's "Test the connection": GET /info and /parameters with the app's key (a
        short timeout, no retries). What is wrong ("" when Dify answered both), and the mode
        /info named (None when it was not asked or did not answer)."""
        if app.api_key_sealed:
            return "", None
        base_url = app.base_url.rstrip("/")
        try:
            with DifyClient(
                base_url, app.api_key, timeout=httpx.Timeout(5.0), max_retries=0
            ) as client:
                info = client.get_info()
                client.get_parameters()
        except DifyStatusError as exc:
            # Recorded on the app as the admin's test records it: shown in its list.
            if exc.refuses_app:
                app.note_refused(exc, "connection test")
            else:
                app.note_test_failed(exc)
            if exc.status in (401, 403):
                return (
                    f"the connection test failed: Dify refused the key ({exc}). Its runs "
                    "cannot start until the right key is entered."
                ), None
            if exc.status == 404 and not base_url.endswith("/v1"):
                return (
                    f"the connection test failed: Dify answered 404 ({exc}): does the base URL "
                    f"end in /v1 ({base_url}/v1)?"
                ), None
            return f"the connection test failed: Dify did not answer as expected ({exc}).", None
        except DifyError as exc:
            app.note_test_failed(exc)
            # The client's messages never include the key.
            return f"the connection test failed: could not reach Dify at {base_url} ({exc}).", None
        app.note_accepted(
            "connection test", kind=app.is_dify_mode(info.get("mode")), published=True
        )
        return "", str(info.get("mode") or "")

    @staticmethod
    def _move(app: DifyApp, base_url: str, *, allowed: bool) -> str:
        """What a new base URL does to an existing app, said before it is saved: "" for the
        same one. To another server (scheme, host or port: the admin form's rule), the app's
        open runs and pending forms go with it, and their tokens are sent there from then on:
        refused unless `allowed` (--move) while it has any."""
        old = app.base_url.rstrip("/")
        if old == base_url:
            return ""
        if server_of(old) == server_of(base_url):
            return f"Base URL: {old} -> {base_url} (the same server)"
        runs = Run.objects.filter(app=app).exclude(status__in=Run.FINAL_STATUSES).count()
        forms = Form.objects.filter(run__app=app, status=Form.Status.PENDING).count()
        said = (
            f"{app.name!r} moves from {server_of(old)} to {server_of(base_url)} "
            f"(base URL {old} -> {base_url}); it has {runs} open run(s) and {forms} pending "
            "form(s)"
        )
        if not (runs or forms):
            return f"{said}."
        if not allowed:
            raise CommandError(
                f"{said}: their forms' tokens, and the decisions made on them, would be sent to "
                "the new server. Nothing was changed. Pass --move to move the app anyway; an "
                "app of the other server is better added under another name."
            )
        return f"{said}: their forms' tokens and decisions are sent to the new server from now on."
