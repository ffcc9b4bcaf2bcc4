from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from inbox.simulator.server import add_arguments, run


class Command(BaseCommand):
    help = "Run the Dify simulator: a Dify-compatible Service API with the demo scenario apps."

    def add_arguments(self, parser: CommandParser) -> None:
        add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        run(argparse.Namespace(**options))
