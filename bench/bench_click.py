"""Click to Dify: from a reviewer's decide POST to the moment Dify receives the submit.

One decision at a time, on a quiet system: the reviewer's POST to the form page's decide view
(Django's test client in this process: every middleware, the form validation, `Form.decide`
storing the Decision and moving the form to `submitting`, the htmx answer; no browser and no
network hop in front of Django) → the commit wakes the delivery pump (`deliver_queued`) on Redis
→ one Celery worker process claims the decision, opens the run's event stream and POSTs the
form to the Dify simulator
(its own process) → the simulator notes when the POST arrived (`submit_received_at` in
`/_sim/stats`). The time from the click to that arrival is the measure; goal p95 <= 100 ms with a
healthy Dify. Both clocks are the same machine's wall clock.

Needs PostgreSQL and Redis: `bin/with-services -- .venv/bin/python -m bench click`.
"""

from __future__ import annotations

import os
import statistics
import time

import httpx

from bench.bench_delivery import APP, CONCURRENCY, POOL, _rows, _simulator, _start_runs, _worker

SAMPLES = int(os.environ.get("BENCH_CLICK_SAMPLES", "250"))
WARMUP = 10  # first clicks: the worker's first connections, template and URL caches


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def _row(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"| {name} | {_pct(ms, 50):.1f} ms | {_pct(ms, 95):.1f} ms | {_pct(ms, 99):.1f} ms | "
        f"{max(ms):.1f} ms | {statistics.fmean(ms):.1f} ms |"
    )


def _wait_delivered(pk: int, timeout: float = 30.0) -> float:
    from inbox.models import Decision

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Decision.objects.filter(pk=pk).values_list("status", flat=True).first()
        if status == Decision.Status.DELIVERED:
            return time.time()
        if status not in (Decision.Status.QUEUED, Decision.Status.DELIVERING):
            raise RuntimeError(f"decision {pk} ended {status}")
        time.sleep(0.002)
    raise RuntimeError(f"decision {pk} not delivered within {timeout:.0f} s")


def main() -> str:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inbox.settings")
    if not os.environ.get("DATABASE_URL") or not os.environ.get("CELERY_BROKER_URL", "").startswith(
        "redis://"
    ):
        raise SystemExit("bench click needs PostgreSQL and Redis: run it under bin/with-services")
    # Pages are rendered in process without collectstatic; the manifest storage would refuse.
    os.environ["INBOX_MANIFEST_STATIC"] = "false"
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client
    from django.test.utils import setup_test_environment

    from inbox.celery import app as celery_app
    from inbox.models import Decision, DifyApp
    from inbox.simulator.scenarios import load_dir

    setup_test_environment()  # the test client's host name is allowed
    call_command("migrate", verbosity=0)
    celery_app.control.purge()
    user, _ = User.objects.get_or_create(
        username="bench-clicker", defaults={"first_name": "Clara", "is_staff": True}
    )
    client = Client()
    client.force_login(user)
    api_key = load_dir()[APP].api_key
    total = SAMPLES + WARMUP
    load_before = os.getloadavg()[0]
    with _simulator() as (root, _pid):
        app = DifyApp.objects.create(
            name=f"bench-click-{int(time.time())}", base_url=f"{root}/v1", api_key=api_key
        )
        forms = _rows(app, _start_runs(root, api_key, total, f"bench-click-{app.pk}"))
        clicks: dict[str, float] = {}
        picked: dict[int, float] = {}
        answered: list[float] = []
        delivered: list[float] = []
        with _worker():
            # The worker is ready when a first decision comes back delivered.
            for i, form in enumerate(forms):
                started = time.time()
                response = client.post(
                    f"/forms/{form.public_id}/decide",
                    {
                        "action": "approve",
                        "in_decision_note": "Refund granted.",
                        "submission_key": f"click-{form.public_id}",
                    },
                    HTTP_HX_REQUEST="true",
                )
                done = time.time()
                # The answer shows the decision queued, on its way, or already delivered.
                if response.status_code != 200 or b"decision-form" in response.content:
                    raise RuntimeError(f"the decide view answered {response.status_code}")
                pk = Decision.objects.get(form=form).pk
                landed = _wait_delivered(pk, timeout=120 if i == 0 else 30)
                if i >= WARMUP:
                    clicks[form.form_id] = started
                    picked[pk] = started
                    answered.append(done - started)
                    delivered.append(landed - started)
                time.sleep(0.02)
        received = httpx.get(f"{root}/_sim/stats", timeout=10).json()["submit_received_at"]
    to_dify = [received[form_id] - started for form_id, started in clicks.items()]
    began = dict(Decision.objects.filter(pk__in=picked).values_list("pk", "delivery_started_at"))
    to_worker = [began[pk].timestamp() - started for pk, started in picked.items()]
    p95 = _pct(to_dify, 95) * 1000
    return "\n".join(
        [
            "## Click to Dify",
            "",
            f"{SAMPLES} decisions, one at a time (after {WARMUP} warm-up clicks), each on its own "
            f"paused `{APP}` run in the Dify simulator (its own process, node work instant). The "
            "click is the reviewer's htmx POST to the form page's decide view, served by Django's "
            "test client in the benchmark process; the decision goes through PostgreSQL and Redis "
            f"to one Celery worker process (`--pool={POOL} --concurrency={CONCURRENCY}`), which "
            "opens the run's event stream and POSTs the form to the simulator. "
            "Numbers taken on a 2-core machine shared with other work (load average "
            f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end).",
            "",
            "| from the click to | p50 | p95 | p99 | max | mean |",
            "|---|---|---|---|---|---|",
            _row("the decide view's answer (decision stored)", answered),
            _row("the worker starting the delivery (decision `delivering`)", to_worker),
            _row("**the simulator receiving the submit POST**", to_dify),
            _row("the decision recorded as delivered", delivered),
            "",
            f"Goal p95 <= 100 ms to Dify with a healthy Dify: **{p95:.0f} ms, "
            f"{'met' if p95 <= 100 else 'not met'}**.",
        ]
    )
