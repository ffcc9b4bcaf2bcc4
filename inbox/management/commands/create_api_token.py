from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext

from inbox.models import ApiToken


class Command(BaseCommand):
    help = "Issue a JSON API token for a user and print it (it is shown only this once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label to recognise the token by")

    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        username = options["username"]
        try:
            user = user_model.objects.get(**{user_model.USERNAME_FIELD: username})
        except user_model.DoesNotExist:
            raise CommandError(
                gettext("No user named '%(username)s'.") % {"username": username}
            ) from None
        if not user.is_active:
            # Every call with it would be refused: no token is issued.
            raise CommandError(
                gettext(
                    "The account '%(username)s' is deactivated: the API refuses its tokens, so "
                    "none was issued. Activate it first (admin: Users, Active)."
                )
                % {"username": username}
            )
        _token, raw = ApiToken.issue(user, options["name"])
        self.stdout.write(raw)
