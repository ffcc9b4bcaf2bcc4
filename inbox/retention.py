"""How long the record is kept: finished runs (with their forms, decisions, uploads' records,
recipients and events) and the audit trail, each for as many days as the operator says, then
let go. Nothing is let go unless asked (`INBOX_RETENTION_DAYS`, `INBOX_AUDIT_RETENTION_DAYS`, or
`manage.py prune_records`).

A run is let go only once it has ended and nothing of it is still on its way to Dify: a form
whose decision is being sent keeps its run, however old. The audit trail is kept on its own
terms: its entries name what they were about by id, and outlive it when asked to.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from inbox.models import AuditEntry, Decision, Form, Run, RunEvent

# Runs let go per transaction: a long prune never holds many rows locked at once.
BATCH = 200


@dataclass
class Pruned:
    runs: int = 0
    forms: int = 0
    decisions: int = 0
    events: int = 0
    audit_entries: int = 0


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
) -> Pruned:
    """Let go of what is older than asked (0: keep it). `dry_run`: count only.

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
            if not dry_run:
                # The forms, decisions, uploads' records, recipients and events go with it.
                Run.objects.filter(pk__in=pks).delete()
    if audit_older_than_days > 0:
        cutoff = timezone.now() - dt.timedelta(days=audit_older_than_days)
        cutoffs["audit_entries_before"] = cutoff.isoformat()
        old = AuditEntry.objects.filter(created_at__lt=cutoff)
        pruned.audit_entries = old.count()
        if not dry_run:
            old.delete()
    if not dry_run and (pruned.runs or pruned.audit_entries):
        AuditEntry.record_about(
            "records_pruned",
            "retention",
            actor_label=by,
            **asdict(pruned),
            runs_older_than_days=runs_older_than_days,
            audit_older_than_days=audit_older_than_days,
            **cutoffs,
        )
    return pruned
