"""How long the record is kept: finished runs (with their forms, decisions, uploads' records,
recipients, events and the files sent with their start or messages) and the audit trail (with
the admin site's change log), each for as many days as the operator says, then let go. Nothing is let go unless asked (`INBOX_RETENTION_DAYS`, `INBOX_AUDIT_RETENTION_DAYS`, or
`manage.py prune_records`).

A run is let go only once it has ended and nothing of it is still on its way to Dify: a form
whose decision is being sent keeps its run, however old. The audit trail is kept on its own
terms: its entries name what they were about by id, and outlive it when asked to. Kept
shorter than the runs, it leaves decisions that no entry explains any more: a system check
(`inbox.W009`) and `prune_records` say so (`audit_shorter_than_runs`). The entries that prove an
erasure (`ERASURE_VERBS`: an account anonymised, an address erased) stay whatever their age,
unless `prune_records --with-erasure-records` is asked to let them go too.

A file uploaded for a start input or a chatflow message (`MessageFile`: its name is often
personal, "contract_<name>.pdf") goes with the last run that used it, never while a run still
here uses it; one no run ever used (a start given up or refused) goes once it is
`UNUSED_FILE_DAYS` old, and the daily file tallies of days gone by go too, whenever runs are
pruned.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

from django.contrib.admin.models import LogEntry
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from inbox.models import (
    AuditEntry,
    Decision,
    Form,
    MessageFile,
    MessageFileTally,
    Run,
    RunEvent,
)

# The entries that prove a person was erased (inbox.erasure): kept by the audit retention.
ERASURE_VERBS = ("user_anonymised", "person_erased")


def audit_shorter_than_runs(runs_days: float, audit_days: float) -> bool:
    """Whether audit entries would go before the runs (with their decisions) they explain:
    the trail kept for fewer days than the runs, or for a while when runs are kept for ever."""
    return audit_days > 0 and (runs_days <= 0 or audit_days < runs_days)


def days_text(days: float) -> str:
    """`days` as a setting or option gives them: "30 days", or "ever" for 0."""
    if days <= 0:
        return "ever"
    return f"{days:g} day{'' if days == 1 else 's'}"


# Runs let go per transaction: a long prune never holds many rows locked at once.
BATCH = 200
# Days a file uploaded for a start or a message is kept while no run has used it.
UNUSED_FILE_DAYS = 1


@dataclass
class Pruned:
    runs: int = 0
    forms: int = 0
    decisions: int = 0
    events: int = 0
    message_files: int = 0
    audit_entries: int = 0
    admin_log_entries: int = 0


def prunable_runs(older_than_days: float) -> Q:
    """Runs ended more than `older_than_days` ago with nothing still being sent."""
    cutoff = timezone.now() - dt.timedelta(days=older_than_days)
    busy = Decision.objects.filter(
        status__in=(Decision.Status.QUEUED, Decision.Status.DELIVERING)
    ).values("form__run_id")
    return (
        Q(status__in=Run.FINAL_STATUSES)
        & Q(ended__lt=cutoff)
        & ~Q(pk__in=busy)
        & ~Q(pk__in=Form.objects.filter(status=Form.Status.SUBMITTING).values("run_id"))
    )


def prune(
    *,
    runs_older_than_days: float = 0,
    audit_older_than_days: float = 0,
    dry_run: bool = False,
    by: str = "prune_records",
    with_erasure_records: bool = False,
) -> Pruned:
    """Let go of what is older than asked (0: keep it). `dry_run`: count only. The entries
    proving an erasure (`ERASURE_VERBS`) stay, unless `with_erasure_records`.

    What was let go is itself in the trail (`records_pruned`, by `by`: the command or the
    daily task): how many of each, and the cutoffs. Written after the deletion, it is newer
    than any cutoff and stays."""
    pruned = Pruned()
    cutoffs: dict[str, str] = {}
    if runs_older_than_days > 0:
        cutoffs["runs_ended_before"] = (
            timezone.now() - dt.timedelta(days=runs_older_than_days)
        ).isoformat()
        runs = Run.objects.annotate(ended=Coalesce("finished_at", "updated_at")).filter(
            prunable_runs(runs_older_than_days)
        )
        last = 0
        while True:
            pks = list(runs.filter(pk__gt=last).order_by("pk").values_list("pk", flat=True)[:BATCH])
            if not pks:
                break
            last = pks[-1]
            pruned.runs += len(pks)
            pruned.forms += Form.objects.filter(run_id__in=pks).count()
            pruned.decisions += Decision.objects.filter(form__run_id__in=pks).count()
            pruned.events += RunEvent.objects.filter(run_id__in=pks).count()
            # Files sent with these runs and with no run beyond them.
            files = MessageFile.objects.filter(runs__in=pks).distinct()
            if dry_run:
                pruned.message_files += files.exclude(
                    runs__in=Run.objects.exclude(pk__in=pks)
                ).count()
                continue
            file_pks = list(files.values_list("pk", flat=True))
            with transaction.atomic():
                # The forms, decisions, uploads' records, recipients and events go with it.
                Run.objects.filter(pk__in=pks).delete()
                pruned.message_files += _let_go_of_files(file_pks)
        unused = MessageFile.objects.filter(
            runs__isnull=True,
            created_at__lt=timezone.now() - dt.timedelta(days=UNUSED_FILE_DAYS),
        )
        if dry_run:
            pruned.message_files += unused.count()
        else:
            pruned.message_files += _let_go_of_files(list(unused.values_list("pk", flat=True)))
            MessageFileTally.objects.filter(day__lt=timezone.localdate()).delete()
    if audit_older_than_days > 0:
        cutoff = timezone.now() - dt.timedelta(days=audit_older_than_days)
        cutoffs["audit_entries_before"] = cutoff.isoformat()
        old = AuditEntry.objects.filter(created_at__lt=cutoff)
        if not with_erasure_records:
            old = old.exclude(verb__in=ERASURE_VERBS)
        pruned.audit_entries = old.count()
        # The admin site's own change log names what was changed (`object_repr`: a username,
        # a file's name) and whom by: kept as long as the audit trail.
        old_log = LogEntry.objects.filter(action_time__lt=cutoff)
        pruned.admin_log_entries = old_log.count()
        if not dry_run:
            old.delete()
            old_log.delete()
    if not dry_run and any(asdict(pruned).values()):
        AuditEntry.record_about(
            "records_pruned",
            "retention",
            actor_label=by,
            **asdict(pruned),
            runs_older_than_days=runs_older_than_days,
            audit_older_than_days=audit_older_than_days,
            erasure_records_kept=not with_erasure_records,
            **cutoffs,
        )
    return pruned


def _let_go_of_files(pks: list[int]) -> int:
    """Delete those of these message files that no run uses (now that their runs are gone):
    locked first, as a start claiming its upload locks it, so a run that takes one meanwhile
    keeps it."""
    if not pks:
        return 0
    with transaction.atomic():
        list(MessageFile.objects.select_for_update().filter(pk__in=pks).order_by("pk"))
        free = MessageFile.objects.filter(pk__in=pks, runs__isnull=True)
        _, gone = MessageFile.objects.filter(
            pk__in=list(free.values_list("pk", flat=True))
        ).delete()
        return gone.get(MessageFile._meta.label, 0)
