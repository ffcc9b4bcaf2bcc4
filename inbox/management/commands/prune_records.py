"""Let go of finished runs and audit entries older than asked (see inbox.retention)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from inbox.retention import ERASURE_VERBS, audit_shorter_than_runs, days_text, prune


class Command(BaseCommand):
    help = (
        "Delete runs that ended more than --runs-older-than days ago (with their forms, "
        "decisions, uploads' records, recipients, events and the files sent with their start or "
        "messages; never one whose decision is still being sent, nor a file a run kept still "
        "uses) with files no run used for a day, and audit entries (and the admin site's change "
        "log) older than --audit-older-than days, but for the entries proving an erasure "
        f"({', '.join(ERASURE_VERBS)}) unless given --with-erasure-records. Defaults: "
        "INBOX_RETENTION_DAYS and INBOX_AUDIT_RETENTION_DAYS (0: keep). Warns when the audit "
        "entries would go before the runs they explain."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--runs-older-than", type=float, metavar="DAYS")
        parser.add_argument("--audit-older-than", type=float, metavar="DAYS")
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would go, delete nothing."
        )
        parser.add_argument(
            "--with-erasure-records",
            action="store_true",
            help="Let the entries proving an erasure (an account anonymised, an address "
            "erased) go with the other audit entries of their age; they stay otherwise.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        runs = options["runs_older_than"]
        audit = options["audit_older_than"]
        # Where each value came from, as the message says it: the option given, or the setting.
        runs_from = "INBOX_RETENTION_DAYS" if runs is None else "--runs-older-than"
        audit_from = "INBOX_AUDIT_RETENTION_DAYS" if audit is None else "--audit-older-than"
        runs = settings.INBOX_RETENTION_DAYS if runs is None else runs
        audit = settings.INBOX_AUDIT_RETENTION_DAYS if audit is None else audit
        if runs < 0 or audit < 0:
            raise CommandError("Days must be 0 (keep) or more.")
        if not runs and not audit:
            self.stdout.write(
                f"Nothing to prune: {runs_from} and {audit_from} are 0 (keep everything)."
            )
            return
        if audit_shorter_than_runs(runs, audit):
            self.stderr.write(
                f"Warning: audit entries are kept for {days_text(audit)} ({audit_from}), runs "
                f"for {days_text(runs)} ({runs_from}): the decisions of the runs kept longer "
                "lose the entries that say who made them, how and when they were delivered. "
                "Keep the audit entries at least as long as the runs."
            )
        pruned = prune(
            runs_older_than_days=runs,
            audit_older_than_days=audit,
            dry_run=options["dry_run"],
            with_erasure_records=options["with_erasure_records"],
        )
        verb = "Would delete" if options["dry_run"] else "Deleted"
        self.stdout.write(
            f"{verb} {pruned.runs} run(s) with {pruned.forms} form(s), {pruned.decisions} "
            f"decision(s) and {pruned.events} event(s), {pruned.message_files} message file(s); "
            f"{pruned.audit_entries} audit entr{'y' if pruned.audit_entries == 1 else 'ies'} and "
            f"{pruned.admin_log_entries} admin log entr"
            f"{'y' if pruned.admin_log_entries == 1 else 'ies'}."
        )
