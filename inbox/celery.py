"""The Celery application: decisions are delivered, emails sent and sweeps run from here."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inbox.settings")

app = Celery("inbox")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.task_prerun.connect
def _drop_stale_connections(task: Any = None, **kwargs: Any) -> None:
    """As Django does before each request: a connection that broke or outlived CONN_MAX_AGE is
    closed, the others are reused (CELERY_DB_REUSE_MAX keeps Celery from closing them all).
    Not for an eager task (CELERY_TASK_ALWAYS_EAGER): it runs inside its caller, whose connection
    and open transaction are not the task's to close."""
    from django.db import close_old_connections

    if task is not None and getattr(task.request, "is_eager", False):
        return

    close_old_connections()
