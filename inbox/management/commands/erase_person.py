"""Erase one person's email address from the inbox's records (see inbox.erasure)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_email

from inbox.erasure import PSEUDONYM, erase_email, new_pseudonym


class Command(BaseCommand):
    help = (
        "Replace an email address (a guest's, or anyone's) by a pseudonym everywhere the inbox "
        "keeps it: form recipients, decisions, uploads, upload tallies, audit entries and the "
        "admin site's change log; the routes that email it stop doing so. A decision still being sent to Dify (or whose "
        "maker is still to be told that it failed) is left as it is: run again once it ended. "
        "Records are changed in batches, each committed: if the command stops before the end, "
        "run it again with the --pseudonym it printed first."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--email", required=True, metavar="ADDRESS")
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would change, change nothing."
        )
        parser.add_argument(
            "--pseudonym",
            default="",
            metavar="ERASED_ADDRESS",
            help="Finish an erasure that stopped before the end, under the pseudonym it printed.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        email = options["email"].strip()
        try:
            validate_email(email)
        except ValidationError as exc:
            raise CommandError(f"Not an email address: {email!r}.") from exc
        pseudonym = options["pseudonym"].strip()
        if pseudonym and not PSEUDONYM.fullmatch(pseudonym):
            raise CommandError(
                f"Not a pseudonym this command gives: {pseudonym!r} "
                "(erased-<12 hexadecimal digits>@erased.invalid)."
            )
        pseudonym = pseudonym or new_pseudonym()
        if not options["dry_run"]:
            self.stdout.write(
                f"Erasing as {pseudonym}. If this stops before the end, run it again with "
                f"--pseudonym {pseudonym}"
            )
        erased = erase_email(email, dry_run=options["dry_run"], pseudonym=pseudonym)
        counts = erased.counts
        verb = "Would replace" if options["dry_run"] else f"Replaced by {erased.pseudonym}"
        self.stdout.write(
            f"{verb}: {counts['recipients']} form recipient(s), {counts['decisions']} "
            f"decision(s), {counts['uploads']} upload(s), {counts['upload_tallies']} upload "
            f"tally(ies), {counts['audit_entries']} audit entr"
            f"{'y' if counts['audit_entries'] == 1 else 'ies'}, "
            f"{counts['admin_log_entries']} admin log entr"
            f"{'y' if counts['admin_log_entries'] == 1 else 'ies'}; "
            f"{'would remove' if options['dry_run'] else 'removed'} "
            f"{counts['route_recipients']} route recipient(s)."
        )
        if erased.in_flight:
            self.stdout.write(
                f"Left as they are: {len(erased.in_flight)} decision(s) still being sent to Dify "
                f"or whose maker is still to be told that they failed ("
                + ", ".join(erased.in_flight)
                + "). Run this command again once they have ended."
            )
        if erased.accounts:
            self.stdout.write(
                "Accounts with this address, not changed here: "
                + ", ".join(erased.accounts)
                + ". Use the admin action “Anonymise account” on them."
            )
