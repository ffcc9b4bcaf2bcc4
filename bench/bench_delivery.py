"""Decision delivery: throughput through one worker, and recovery from a 30 s Dify outage.

- Healthy: 1,000 decisions on 1,000 forms (1,000 runs paused in the simulator), all queued
  through `Form.decide` before one Celery worker process starts; delivered, duplicates (POSTs
  beyond one per form, as the simulator counts them), lost, throughput. Goal >= 200/s. Run
  twice: with the run's events watched during each submit (the default) and without.
- Outage: 100 decisions queued while the simulator is unreachable (a relay in front of it refuses
  connections) for 30 s, with the production backoff settings; time from Dify's return until
  every decision is delivered, and the same counts.

Needs PostgreSQL and Redis: `bin/with-services -- .venv/bin/python -m bench delivery`.
`BENCH_KEEP_WORKER_LOG=1` keeps the worker's log (`bench-worker-*.log` in the temp directory).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
APP = "refund-approval"
HEALTHY = int(os.environ.get("BENCH_DELIVERY_DECISIONS", "1000"))
OUTAGE = int(os.environ.get("BENCH_DELIVERY_OUTAGE_DECISIONS", "100"))
OUTAGE_SECONDS = float(os.environ.get("BENCH_DELIVERY_OUTAGE_SECONDS", "30"))
# One worker process; its pool and concurrency, as a deployment would set them.
# As the production image runs it (bin/docker-entrypoint): the default prefork pool, 4 processes.
POOL = os.environ.get("BENCH_DELIVERY_POOL", "prefork")
CONCURRENCY = int(os.environ.get("BENCH_DELIVERY_CONCURRENCY", "4"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _simulator() -> Iterator[tuple[str, int]]:
    """The simulator in its own process (as Dify would be), instant node work, no recording."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inbox.simulator",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--time-scale",
            "0",
            "--resume-delay",
            "0.01",
            "--idle-timeout",
            "5",
            "--ping-interval",
            "1",
        ],
        cwd=ROOT,
    )
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{root}/_sim/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the simulator did not start")
            time.sleep(0.1)
        yield root, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@contextmanager
def _worker(env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    environ = dict(os.environ)
    environ.update(env or {})
    log = tempfile.NamedTemporaryFile(prefix="bench-worker-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "inbox",
            "worker",
            f"--pool={POOL}",
            f"--concurrency={CONCURRENCY}",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "WARNING",
        ],
        cwd=ROOT,
        env=environ,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        if not os.environ.get("BENCH_KEEP_WORKER_LOG"):
            Path(log.name).unlink(missing_ok=True)


def _start_runs(root: str, api_key: str, count: int, prefix: str) -> list[dict[str, Any]]:
    """Start `count` runs over HTTP; each pauses at the manager's form."""
    from inbox.simulator.testing import parse_sse

    def start(i: int) -> dict[str, Any]:
        user = f"{prefix}-{i}"
        body = {
            "inputs": {"customer_name": "Ada", "order_id": f"SO-{i}", "amount": 120, "reason": "x"},
            "user": user,
            "response_mode": "streaming",
        }
        with http.stream("POST", "/workflows/run", json=body) as response:
            response.raise_for_status()
            events = parse_sse(response.read().decode())
        form = next(e["data"] for e in events if e["event"] == "human_input_required")
        return {"user": user, "run": events[0]["workflow_run_id"], "form": form}

    with (
        httpx.Client(
            base_url=f"{root}/v1",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=30,
            limits=httpx.Limits(max_connections=16),
        ) as http,
        ThreadPoolExecutor(8) as pool,
    ):
        return list(pool.map(start, range(count)))


def _rows(app: Any, started: list[dict[str, Any]]) -> list[Any]:
    """Runs and forms as the capture records them (bulk: no per-row signals)."""
    from inbox.models import Form, Run

    runs = Run.objects.bulk_create(
        [
            Run(
                app=app,
                workflow_run_id=s["run"],
                dify_user=s["user"],
                status=Run.Status.PAUSED,
                follow_wanted=False,
            )
            for s in started
        ]
    )
    forms = []
    for run, s in zip(runs, started, strict=True):
        data = s["form"]
        forms.append(
            Form(
                run=run,
                form_id=data["form_id"],
                form_token=data["form_token"],
                node_id=data["node_id"],
                node_title=data["node_title"],
                definition={"inputs": data["inputs"], "user_actions": data["actions"]},
                expiration_time=dt.datetime.fromtimestamp(data["expiration_time"], dt.UTC),
            )
        )
    return Form.objects.bulk_create(forms)


def _decide(forms: list[Any], reviewer: Any) -> tuple[list[int], float]:
    started = time.perf_counter()
    pks = [
        form.decide(action_id="approve", inputs={"decision_note": "ok"}, reviewer=reviewer).pk
        for form in forms
    ]
    return pks, time.perf_counter() - started


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its live children, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(entry.name) == pid or int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / tick
    except OSError:
        return float("nan")
    return total


def _python_speed() -> float:
    """CPU seconds for ten million additions in a Python loop: how fast this machine runs
    Python (about 0.4 s on a current desktop core)."""
    started = time.process_time()
    total = 0
    for i in range(10_000_000):
        total += i
    return time.process_time() - started


def _wait_delivered(
    pks: list[int], timeout: float, pids: dict[str, int] | None = None
) -> tuple[float, dict[str, float]]:
    """Wait until no decision is open; the seconds it took, and the CPU seconds each process in
    `pids` used from the first delivery on (not the worker's start-up)."""
    from inbox.models import Decision

    started = time.monotonic()
    open_statuses = [Decision.Status.QUEUED, Decision.Status.DELIVERING]
    first: dict[str, float] | None = None
    while time.monotonic() - started < timeout:
        if first is None and pids:
            if Decision.objects.filter(pk__in=pks).exclude(status=Decision.Status.QUEUED).exists():
                first = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        if not Decision.objects.filter(pk__in=pks, status__in=open_statuses).exists():
            break
        time.sleep(0.2)
    used = {}
    if first is not None and pids:
        used = {name: _cpu_seconds(pid) - first[name] for name, pid in pids.items()}
    return time.monotonic() - started, used


def _counts(root: str, forms: list[Any], pks: list[int]) -> dict[str, Any]:
    from django.db.models import Count, Max, Min, Sum

    from inbox.models import Decision

    stats = httpx.get(f"{root}/_sim/stats", timeout=10).json()
    attempts = stats["submit_attempts"]
    applied = stats["submits_applied"]
    decisions = Decision.objects.filter(pk__in=pks)
    agg = decisions.aggregate(
        first=Min("delivery_started_at"), last=Max("delivered_at"), attempts=Sum("attempts")
    )
    return {
        "delivered": decisions.filter(status=Decision.Status.DELIVERED).count(),
        "other": dict(
            decisions.exclude(status=Decision.Status.DELIVERED)
            .values("status")
            .annotate(n=Count("id"))
            .values_list("status", "n")
        ),
        # POSTs that reached a form beyond the first, and forms Dify took more than one answer
        # for (the simulator, like Dify, never does; counted anyway).
        "extra_posts": sum(max(0, attempts.get(f.form_id, 0) - 1) for f in forms),
        "duplicates": sum(max(0, applied.get(f.form_id, 0) - 1) for f in forms),
        "lost": sum(1 for f in forms if applied.get(f.form_id, 0) == 0),
        "first": agg["first"],
        "last": agg["last"],
        "attempts": agg["attempts"] or 0,
    }


# The healthy case is run twice: as installed (the run's events watched during each submit)
# and with the watch off, the setting that trades the confirmation of a lost answer for half
# the calls.
WATCH_SETTINGS = (("on (default)", "true"), ("off", "false"))


def _healthy_once(
    root: str, sim_pid: int, api_key: str, reviewer: Any, watch: str, n: int
) -> dict[str, Any]:
    from inbox.models import DifyApp

    app = DifyApp.objects.create(name=f"bench-healthy-{n}", base_url=f"{root}/v1", api_key=api_key)
    started = _start_runs(root, api_key, HEALTHY, f"bench-h{n}")
    forms = _rows(app, started)
    pks, decide_seconds = _decide(forms, reviewer)
    with _worker({"INBOX_DELIVERY_WATCH_RUN": watch}) as worker:
        wall, cpu = _wait_delivered(
            pks, timeout=600, pids={"worker": worker.pid, "simulator": sim_pid}
        )
    c = _counts(root, forms, pks)
    span = (c["last"] - c["first"]).total_seconds() if c["first"] and c["last"] else float("nan")
    return {
        **c,
        "span": span,
        "rate": c["delivered"] / span if span else float("nan"),
        "wall": wall,
        "decide_rate": HEALTHY / decide_seconds,
        "worker_cpu": cpu.get("worker", float("nan")) / HEALTHY,
        "sim_cpu": cpu.get("simulator", float("nan")) / HEALTHY,
    }


def _healthy(root: str, sim_pid: int, api_key: str, reviewer: Any) -> list[str]:
    from django.conf import settings

    results = [
        (label, _healthy_once(root, sim_pid, api_key, reviewer, watch, n))
        for n, (label, watch) in enumerate(WATCH_SETTINGS)
    ]
    lines = [
        f"Healthy simulator: {HEALTHY:,} decisions on {HEALTHY:,} forms, queued through "
        f"`Form.decide` ({results[0][1]['decide_rate']:,.0f}/s in one thread) before one worker "
        f"(`--pool={POOL} --concurrency={CONCURRENCY}`) starts; the delivery pump sends "
        f"{settings.INBOX_DELIVERY_BATCH} at a time, {settings.INBOX_DELIVERY_PUMPS} pumps sharing "
        "the backlog (`INBOX_DELIVERY_PUMPS`). Run twice: with the run's events watched "
        "during each submit (`INBOX_DELIVERY_WATCH_RUN`, on by default) and without.",
        "",
        "| watch | delivered | duplicates | extra POSTs | lost | not delivered | delivery span "
        "| throughput | worker CPU / delivery | simulator CPU / delivery | wall (incl. worker "
        "start) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results:
        lines.append(
            f"| {label} | {r['delivered']:,} | {r['duplicates']} | {r['extra_posts']} | "
            f"{r['lost']} | {r['other'] or 0} | {r['span']:.2f} s | **{r['rate']:,.0f}/s** | "
            f"{1000 * r['worker_cpu']:.1f} ms | {1000 * r['sim_cpu']:.1f} ms | "
            f"{r['wall']:.1f} s |"
        )
    lines += [
        "",
        "Throughput goal >= 200/s: "
        + "; ".join(
            f"watch {label}: **{'met' if r['rate'] >= 200 else 'not met'}**" for label, r in results
        )
        + ".",
        "",
        "Worker CPU covers the pump task, Celery and the broker client; simulator CPU the "
        "submit, the run resuming and, with the watch on, the event stream opened to watch the "
        "run. PostgreSQL and Redis are not counted. With the watch on, each delivery is two "
        "calls to Dify instead of one, and on two cores the worker and the simulator together "
        "allow at most "
        + ", ".join(
            f"{2 / (r['worker_cpu'] + r['sim_cpu']):,.0f}/s (watch {label})"
            for label, r in results
            if r["worker_cpu"] + r["sim_cpu"] > 0
        )
        + ".",
    ]
    return lines


def _outage(root: str, api_key: str, reviewer: Any) -> list[str]:
    from django.conf import settings

    from inbox.models import DifyApp
    from tests.delivery.relay import Relay

    host, port = root.removeprefix("http://").split(":")
    relay = Relay(host, int(port))
    try:
        app = DifyApp.objects.create(name="bench-outage", base_url=relay.url(), api_key=api_key)
        started = _start_runs(root, api_key, OUTAGE, "bench-o")
        forms = _rows(app, started)
        with _worker():
            relay.down()
            went_down = time.monotonic()
            pks, _ = _decide(forms, reviewer)
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - went_down)))
            relay.up()
            recovered, _ = _wait_delivered(pks, timeout=1800)
        c = _counts(root, forms, pks)
    finally:
        relay.close()
    return [
        f"Outage: {OUTAGE} decisions queued while Dify refuses connections for "
        f"{OUTAGE_SECONDS:.0f} s, production backoff (base "
        f"{settings.INBOX_DELIVERY_RETRY_BASE_SECONDS:g} s, doubling, cap "
        f"{settings.INBOX_DELIVERY_RETRY_CAP_SECONDS:g} s, up to a quarter of jitter).",
        "",
        "| delivered | duplicates | extra POSTs | lost | attempts | time to recover |",
        "|---|---|---|---|---|---|",
        f"| {c['delivered']} | {c['duplicates']} | {c['extra_posts']} | {c['lost']} | "
        f"{c['attempts']} | **{recovered:.1f} s** |",
        "",
        "Time to recover runs from Dify's return to the last decision delivered. The first "
        "retry due after the return gets through, and makes every other retry of the app that "
        "could not reach Dify due at once (`Decision.release_unreachable`): the rest do not "
        "wait out the backoff each of them scheduled while Dify was down.",
    ]


def main() -> str:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inbox.settings")
    if not os.environ.get("DATABASE_URL") or not os.environ.get("CELERY_BROKER_URL", "").startswith(
        "redis://"
    ):
        raise SystemExit(
            "bench delivery needs PostgreSQL and Redis: run it under bin/with-services"
        )
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from inbox.celery import app as celery_app
    from inbox.simulator.scenarios import load_dir

    call_command("migrate", verbosity=0)
    celery_app.control.purge()
    reviewer, _ = User.objects.get_or_create(username="bench-reviewer")
    api_key = load_dir()[APP].api_key
    speed = _python_speed()
    with _simulator() as (root, sim_pid):
        healthy = _healthy(root, sim_pid, api_key, reviewer)
        outage = _outage(root, api_key, reviewer)
    machine = [
        f"Taken on a 2-core machine shared with other work; ten million additions in a Python "
        f"loop took {speed:.2f} s of CPU here (about 0.4 s on a current desktop core), so "
        "CPU-bound figures scale by about that ratio on faster hardware.",
    ]
    return "\n".join(["## Decision delivery", "", *machine, "", *healthy, "", *outage])
