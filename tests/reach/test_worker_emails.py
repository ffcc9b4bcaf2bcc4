"""The capture's email task through a real broker and a real Celery worker process."""

from __future__ import annotations

import subprocess

import pytest

from inbox.models import DifyApp, FormRecipient, Route
from tests.conftest import wait_until
from tests.reach.conftest import GUEST, GUEST_ZH
from tests.reach.factories import make_form


@pytest.mark.worker
def test_the_capture_queues_emails_that_a_worker_sends(
    celery_worker_process: subprocess.Popen[bytes], reach_route: Route, reach_app: DifyApp
) -> None:
    # transactional: the capture commits, its on_commit hook queues send_form_emails.
    form = make_form(reach_app)
    sent = wait_until(
        lambda: FormRecipient.objects.filter(form=form, sent_at__isnull=False).count() == 2,
        timeout=60,
    )
    assert sent
    recipients = FormRecipient.objects.filter(form=form).order_by("email")
    assert [(r.email, r.send_attempts, r.last_error) for r in recipients] == [
        (GUEST, 1, ""),
        (GUEST_ZH, 1, ""),
    ]
