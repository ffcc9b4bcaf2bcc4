"""The malformed-stream corpus (tests/delivery/malformed.py) fed to the real follower.

Each case's stream is served by a loopback server to one run; one follower reads them all at
once. Whatever a stream holds, the follower process keeps running; what it cannot read it skips
and logs with the run, and the form after it is captured from the same stream; a stream that
itself breaks is reopened and, when it keeps breaking, the run is left for the reconcile.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from django.db import connection

from inbox.models import DifyApp, Form, Run
from tests.capture.conftest import FollowerThread
from tests.conftest import wait_until
from tests.delivery.malformed import CASES, definition
from tests.delivery.scripted import Reply, ScriptedDify

pytestmark = pytest.mark.worker


@pytest.fixture
def dify() -> Iterator[ScriptedDify]:
    server = ScriptedDify()
    yield server
    server.close()


def test_the_corpus_has_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20
    assert len({case.name for case in CASES}) == len(CASES)


def test_the_follower_survives_every_malformed_stream(
    transactional_db: None, dify: ScriptedDify, caplog: pytest.LogCaptureFixture
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the follower writes from its own threads: needs PostgreSQL (make test)")
    app = DifyApp.objects.create(name="malformed", base_url=dify.base_url, api_key="k-123")
    runs: dict[str, Run] = {}
    for n, case in enumerate(CASES):
        run_id, form_id, token = f"R-bad-{n}", f"F-bad-{n}", f"tok-bad-{n}"
        dify.on("GET", f"/workflow/{run_id}/events", Reply(raw=case.stream(run_id, form_id, token)))
        dify.on("GET", f"/form/human_input/{token}", Reply(body=definition(form_id, token)))
        runs[case.name] = Run.objects.create(
            app=app,
            workflow_run_id=run_id,
            dify_user=f"u-{n}",
            status=Run.Status.RUNNING,
            follow_wanted=True,
        )

    caplog.set_level(logging.INFO)
    follower = FollowerThread("malformed", max_attempts=2).start()
    try:
        wait_until(
            lambda: (
                not Run.objects.filter(pk__in=[r.pk for r in runs.values()])
                .exclude(follow_wanted=False, lease_owner="")
                .exists()
            ),
            timeout=90,
        )
        assert follower.thread.is_alive()
    finally:
        follower.stop()  # raises what the follower's loop raised, if anything

    problems = []
    for n, case in enumerate(CASES):
        run = Run.objects.get(pk=runs[case.name].pk)
        opened = len(dify.requests("GET", f"/workflow/{run.workflow_run_id}/events"))
        forms = list(Form.objects.filter(run=run).values_list("form_id", "status"))
        if case.continues:
            ok = (
                forms == [(f"F-bad-{n}", "pending")]
                and run.status == "paused"
                and not run.needs_reconcile
                and opened == 1
            )
        else:
            # Reopened, then left to the reconcile.
            ok = run.needs_reconcile and opened >= 2 and not forms
        if not ok:
            problems.append(
                f"{case.name}: forms={forms} status={run.status} "
                f"needs_reconcile={run.needs_reconcile} opened={opened}"
            )
    assert not problems, "\n".join(problems)

    # What was skipped is logged with the run it came from, never with the event's content.
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped
    assert all("R-bad-" in r.getMessage() for r in skipped)
    assert not any("tok-bad-" in r.getMessage() for r in caplog.records)
