from __future__ import annotations

import getpass
import os
import sys
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.validators import URLValidator

from inbox.models import AuditEntry, DifyApp


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
        parser.add_argument("--inactive", action="store_true", help="Store it switched off")

    stealth_options = ("stdin",)

    def handle(self, *args: Any, **options: Any) -> None:
        base_url = options["base_url"].rstrip("/")
        try:
            URLValidator(schemes=["http", "https"])(base_url)
        except ValidationError:
            raise CommandError(f"--base-url is not an http(s) URL: {base_url!r}") from None
        api_key = _api_key(options["api_key"], options.get("stdin") or sys.stdin)
        if not api_key:
            raise CommandError("The API key must not be empty")
        previous = DifyApp.objects.filter(name=options["name"]).first()
        before = (
            (previous.base_url, previous.api_key, previous.mode) if previous is not None else None
        )
        app, created = DifyApp.objects.update_or_create(
            name=options["name"],
            defaults={
                "base_url": base_url,
                "api_key": api_key,
                "mode": options["mode"],
                "is_active": not options["inactive"],
            },
        )
        AuditEntry.record("created" if created else "updated", app, actor_label="add_dify_app")
        if before is not None and before != (app.base_url, app.api_key, app.mode):
            # As when the admin saves one: a new key, server or kind of app may be what Dify
            # was waiting for, so it is asked again now rather than at the reconcile's next
            # probe.
            app.settings_changed(actor_label="add_dify_app")
        verb = "Created" if created else "Updated"
        self.stdout.write(f"{verb} Dify app {app.name!r} ({app.mode}, key {app.masked_api_key})")
