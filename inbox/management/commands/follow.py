from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from inbox.follower import run_follower


class Command(BaseCommand):
    help = (
        "Follow the event streams of active Dify runs until stopped (SIGINT/SIGTERM). Any "
        "number of followers may run side by side: each run is read by one of them at a time."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--owner", default=None, help="Lease owner name (default host:pid)")
        parser.add_argument("--max-streams", type=int, default=None)
        parser.add_argument("--poll-seconds", type=float, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        overrides = {
            key: options[key]
            for key in ("max_streams", "poll_seconds")
            if options.get(key) is not None
        }
        run_follower(options["owner"], **overrides)
