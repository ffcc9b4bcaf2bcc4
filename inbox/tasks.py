"""Celery tasks. Each takes primary keys, re-fetches, and returns quietly when the row is gone."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from inbox.models import AuditEntry, Form

logger = logging.getLogger(__name__)


# Periodic (beat, every minute). Bounded by time so a huge backlog cannot pin the worker;
# whatever is left is taken by the next run.
@shared_task(soft_time_limit=50, time_limit=60)
def sweep_expired_forms(batch_size: int = 500) -> int:
    """Mark pending forms past their expiration time as expired, so nobody tries to answer them."""
    now = timezone.now()
    expired = 0
    ids = list(
        Form.objects.filter(status=Form.Status.PENDING, expiration_time__lte=now).values_list(
            "pk", flat=True
        )[:batch_size]
    )
    for pk in ids:
        with transaction.atomic():
            form = (
                Form.objects.select_for_update()
                .filter(pk=pk, status=Form.Status.PENDING, expiration_time__lte=now)
                .first()
            )
            if form is None:
                continue
            form.status = Form.Status.EXPIRED
            form.save(update_fields=["status", "updated_at"])
            AuditEntry.record("expired", form, reason="expiration_time passed")
            expired += 1
    if expired:
        logger.info("sweep_expired_forms: %d form(s) expired", expired)
    return expired
