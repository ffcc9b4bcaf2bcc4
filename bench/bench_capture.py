"""Capture: how fast a pause becomes a form, and 1,000 runs through one follower.

Both parts run the simulator in its own process (as Dify would be), the follower as its own
process (`python manage.py follow`, production settings) and PostgreSQL:
`bin/with-services -- .venv/bin/python -m bench capture`.

1. **Pause -> form committed with its definition.** Runs of `refund-approval` at the scenario's
   real pace (about 0.9 s of node work and text chunks before the manager's form), one started
   every `BENCH_CAPTURE_SPACING` seconds. Two sides, in alternating rounds so a busy moment of
   the machine hits both alike:

   - *follower*: the run is started with `runs.start_run` (as the start page does) and the
     follower reads it; the end is the moment PostgreSQL delivers the commit of the `Form` row
     with its definition (a trigger, created for the benchmark only, sends a NOTIFY from that
     row; notifications are delivered at commit); shown beside it, not judged, the same forms
     ended at PostgreSQL's own commit timestamp (`track_commit_timestamp`);
   - *bare reader*: httpx alone, the same start and the same stream
     (`GET /workflow/{id}/events` with the snapshot), then one `GET /form/human_input/{token}`;
     the end is that GET's answer.

   The start of both is the moment the simulator created and announced the form (its own clock,
   read back from its control API), so neither side's own reading is in its start time. A sample
   counts only when the event arrived live (the follower's stored token is the one the live
   event carried, not a snapshot's fresh one), i.e. its stream was already open at the pause.

2. **Concurrency.** `BENCH_CAPTURE_RUNS` runs started with `start_run` and streaming at once
   (the scenario slowed down with the simulator's `time_scale`, so that every stream is open
   before the first pause) through one follower process: forms captured vs. issued by the
   simulator, duplicates, peak RSS of the follower (psutil, every 20 ms), CPU time per event
   applied (the follower's user+sys CPU over the phase / the events it applied, as it logs them
   when it stops), wall time from the first start to the last form committed.

1b. The same with every `GET form` answered `BENCH_CAPTURE_GET_DELAY` seconds later (the
   simulator's delay fault, both sides), `BENCH_CAPTURE_SLOW_PAUSES` pauses per side: what the
   follower adds to a GET that takes as long as a Dify on another machine.

1c. The pause's transaction alone: the batch that brings the form, applied in the benchmark's
   process with nothing else running, and its statements replayed by psycopg alone (one round
   trip each, then pipelined): the floor under part 1, split between PostgreSQL and Python.

Env vars for a quick try: BENCH_CAPTURE_PAUSES (1000), BENCH_CAPTURE_ROUND (50),
BENCH_CAPTURE_SPACING (0.1 s), BENCH_CAPTURE_RUNS (1000), BENCH_CAPTURE_TIME_SCALE (90),
BENCH_CAPTURE_GET_DELAY (0.02 s), BENCH_CAPTURE_SLOW_PAUSES (300).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
APP = "refund-approval"
PAUSES = int(os.environ.get("BENCH_CAPTURE_PAUSES", "1000"))
ROUND = int(os.environ.get("BENCH_CAPTURE_ROUND", "50"))
SPACING = float(os.environ.get("BENCH_CAPTURE_SPACING", "0.1"))
RUNS = int(os.environ.get("BENCH_CAPTURE_RUNS", "1000"))
TIME_SCALE = float(os.environ.get("BENCH_CAPTURE_TIME_SCALE", "90"))
# The latency part again with every GET form answered this much later (a Dify not on loopback).
GET_DELAY = float(os.environ.get("BENCH_CAPTURE_GET_DELAY", "0.02"))
SLOW_PAUSES = int(os.environ.get("BENCH_CAPTURE_SLOW_PAUSES", "300"))
START_THREADS = 8
WARMUP = 10
INPUTS = {"customer_name": "Ada", "order_id": "SO-1", "amount": 120, "reason": "Broken."}
CHANNEL = "bench_capture_form"
MB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoadAverage:
    """The machine's 1-minute load average, sampled every second: the numbers below are only
    as good as the machine was quiet."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(1.0)

    def __enter__(self) -> LoadAverage:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def describe(self) -> str:
        if not self.samples:
            return "n/a"
        return f"{min(self.samples):.1f} to {max(self.samples):.1f} (median {statistics.median(self.samples):.1f})"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


# --- processes ----------------------------------------------------------------------------------


@contextmanager
def _simulator() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "inbox.simulator", "--port", str(port), "--log-level", "warning"],
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
        yield root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class FollowerProcess:
    """`python manage.py follow` in its own process group, its log in a temporary file."""

    def __init__(self) -> None:
        self.log = tempfile.NamedTemporaryFile(
            prefix="bench-follower-", suffix=".log", delete=False
        )
        env = dict(os.environ, PYTHONUNBUFFERED="1", DJANGO_SETTINGS_MODULE="inbox.settings")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "follow"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.process = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + 60
        while ": started" not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the follower did not start:\n{self.text()[-2000:]}")
            time.sleep(0.1)

    def text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def cpu(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> dict[str, int]:
        """Stop it (SIGTERM, as a deployment would) and return the counts it logs."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        text = self.text()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)
        match = re.search(r": stopped \(([^)]*)\)", text)
        if match is None:
            raise RuntimeError(f"the follower did not log its counts:\n{text[-2000:]}")
        counts = {}
        for part in match.group(1).split(", "):
            name, _, value = part.rpartition(" ")
            counts[name] = int(value)
        errors = [line for line in text.splitlines() if " ERROR " in line]
        if errors:
            counts["error_lines"] = len(errors)
        return counts


class PeakRSS:
    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- commit notifications -----------------------------------------------------------------------


class CommitListener:
    """Receives, in a thread of its own, the NOTIFY a trigger sends for every Form row written
    with its definition; PostgreSQL delivers it when that transaction commits. Keeps the first
    arrival time per form_id."""

    def __init__(self, conninfo: str) -> None:
        import psycopg

        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.conn.execute(f"LISTEN {CHANNEL}")
        self.seen: dict[str, float] = {}
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for note in self.conn.notifies(timeout=0.2):
                now = time.time()
                self.count += 1
                self.seen.setdefault(note.payload, now)

    def wait_for(self, form_ids: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not form_ids <= self.seen.keys() and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.conn.close()


def _install_trigger() -> None:
    from django.db import connection

    from inbox.models import Form

    table = connection.ops.quote_name(Form._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            CREATE OR REPLACE FUNCTION {CHANNEL}() RETURNS trigger AS $$
            BEGIN
                PERFORM pg_notify('{CHANNEL}', NEW.form_id);
                RETURN NEW;
            END $$ LANGUAGE plpgsql
            """
        )
        cursor.execute(f"DROP TRIGGER IF EXISTS {CHANNEL} ON {table}")
        cursor.execute(
            f"CREATE TRIGGER {CHANNEL} AFTER INSERT OR UPDATE OF definition_fetched_at "
            f"ON {table} FOR EACH ROW WHEN (NEW.definition_fetched_at IS NOT NULL) "
            f"EXECUTE FUNCTION {CHANNEL}()"
        )


def _drop_trigger() -> None:
    from django.db import connection

    from inbox.models import Form

    table = connection.ops.quote_name(Form._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TRIGGER IF EXISTS {CHANNEL} ON {table}")
        cursor.execute(f"DROP FUNCTION IF EXISTS {CHANNEL}()")


# --- the simulator's side of a sample -----------------------------------------------------------


def _announced(root: str, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """run id -> its first form as the simulator made it (id, creation time, live token)."""
    found = {}
    with httpx.Client(base_url=root, timeout=30) as http:
        for run_id in run_ids:
            forms = http.get(f"/_sim/runs/{run_id}").raise_for_status().json()["forms"]
            if forms:
                found[run_id] = forms[0]
    return found


# --- part 1: latency ----------------------------------------------------------------------------


def _follower_round(
    app: Any, root: str, listener: CommitListener, n: int, tag: str
) -> tuple[list[float], list[float], int]:
    from inbox.models import Form
    from inbox.runs import start_run

    run_ids = []
    started = time.monotonic()
    for i in range(n):
        run = start_run(app, inputs=INPUTS, dify_user=f"bench-f-{tag}-{i}", source="api")
        run_ids.append(run.workflow_run_id)
        time.sleep(max(0.0, started + (i + 1) * SPACING - time.monotonic()))
    deadline = time.monotonic() + 60
    announced: dict[str, dict[str, Any]] = {}
    while len(announced) < n and time.monotonic() < deadline:
        announced = _announced(root, run_ids)
        if len(announced) < n:
            time.sleep(0.2)
    listener.wait_for({f["form_id"] for f in announced.values()}, timeout=60)
    tokens = dict(
        Form.objects.filter(form_id__in=[f["form_id"] for f in announced.values()]).values_list(
            "form_id", "form_token"
        )
    )
    commits = _commit_times([f["form_id"] for f in announced.values()])
    samples, at_commit, late = [], [], 0
    for form in announced.values():
        committed = listener.seen.get(form["form_id"])
        if committed is None:
            raise AssertionError(f"form {form['form_id']} was not committed within 60 s")
        if tokens.get(form["form_id"]) != form["form_token"]:
            late += 1  # the follower's stream opened after the pause: the snapshot's token
            continue
        samples.append(committed - form["created_at"])
        if form["form_id"] in commits:
            at_commit.append(commits[form["form_id"]] - form["created_at"])
    return samples, at_commit, late


def _commit_times(form_ids: list[str]) -> dict[str, float]:
    """form_id -> when PostgreSQL committed the form's row as it stands (its own clock, the
    machine's, as the simulator's). Needs `track_commit_timestamp` (bin/with-services sets it);
    empty without. A row written again later would show the later commit: never earlier."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW track_commit_timestamp")
        if cursor.fetchone()[0] != "on":
            return {}
        cursor.execute(
            "SELECT form_id, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 "
            "FROM inbox_form WHERE form_id = ANY(%s)",
            [form_ids],
        )
        return {form_id: at for form_id, at in cursor.fetchall() if at is not None}


async def _bare_one(
    http: httpx.AsyncClient, delay: float, user: str
) -> tuple[str, float, str] | None:
    await asyncio.sleep(delay)
    body = {"inputs": INPUTS, "user": user, "response_mode": "streaming"}
    run_id = ""
    async with http.stream("POST", "/workflows/run", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                run_id = json.loads(line[5:]).get("workflow_run_id") or ""
                if run_id:
                    break
    params = {"user": user, "include_state_snapshot": "true", "continue_on_pause": "true"}
    async with http.stream("GET", f"/workflow/{run_id}/events", params=params) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if event.get("event") == "human_input_required":
                token = event["data"]["form_token"]
                definition = await http.get(f"/form/human_input/{token}")
                definition.raise_for_status()
                definition.json()
                return run_id, time.time(), token
    return None


async def _bare_async(root: str, api_key: str, n: int, tag: str) -> list[tuple[str, float, str]]:
    async with httpx.AsyncClient(
        base_url=f"{root}/v1",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=httpx.Timeout(60.0),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
    ) as http:
        results = await asyncio.gather(
            *(_bare_one(http, i * SPACING, f"bench-b-{tag}-{i}") for i in range(n))
        )
    return [r for r in results if r is not None]


def _bare_round(root: str, api_key: str, n: int, tag: str) -> tuple[list[float], int]:
    got = asyncio.run(_bare_async(root, api_key, n, tag))
    if len(got) != n:
        raise AssertionError(f"the bare reader saw {len(got)} of {n} forms")
    announced = _announced(root, [run_id for run_id, _, _ in got])
    samples, late = [], 0
    for run_id, done, token in got:
        form = announced[run_id]
        if token != form["form_token"]:
            late += 1
            continue
        samples.append(done - form["created_at"])
    return samples, late


def _latency(
    app: Any, root: str, api_key: str, conninfo: str, pauses: int = PAUSES, get_delay: float = 0.0
) -> tuple[list[str], dict[str, Any]]:
    if get_delay:
        # Every GET form held by the simulator before it answers, for both sides alike.
        fault = {"kind": "delay", "route": "form_get", "times": None, "delay": get_delay}
        httpx.post(f"{root}/_sim/faults", json=fault, timeout=10).raise_for_status()
    try:
        return _latency_rounds(app, root, api_key, conninfo, pauses, get_delay)
    finally:
        if get_delay:
            httpx.delete(f"{root}/_sim/faults", timeout=10).raise_for_status()


def _latency_rounds(
    app: Any, root: str, api_key: str, conninfo: str, pauses: int, get_delay: float
) -> tuple[list[str], dict[str, Any]]:
    follower = FollowerProcess()
    listener = CommitListener(conninfo)
    ours: list[float] = []
    ours_commit: list[float] = []
    bare: list[float] = []
    late = {"follower": 0, "bare": 0}
    ratios = []
    try:
        # Warm-up: connections, imports, caches on both sides; not counted.
        _follower_round(app, root, listener, WARMUP, "w")
        _bare_round(root, api_key, WARMUP, "w")
        rounds = max(1, pauses // ROUND)
        for r in range(rounds):
            n = ROUND if r < rounds - 1 else pauses - ROUND * (rounds - 1)
            pair: dict[str, list[float]] = {}
            # Alternate which side goes first as well.
            for side in ("follower", "bare") if r % 2 == 0 else ("bare", "follower"):
                if side == "follower":
                    samples, at_commit, missed = _follower_round(app, root, listener, n, str(r))
                    ours_commit += at_commit
                else:
                    samples, missed = _bare_round(root, api_key, n, str(r))
                late[side] += missed
                pair[side] = samples
            ours += pair["follower"]
            bare += pair["bare"]
            if pair["follower"] and pair["bare"]:
                ratios.append(_percentile(pair["follower"], 95) / _percentile(pair["bare"], 95))
            print(
                f"  round {r + 1}/{rounds}: follower p50 {statistics.median(pair['follower']) * 1000:.1f} ms,"
                f" bare p50 {statistics.median(pair['bare']) * 1000:.1f} ms",
                flush=True,
            )
    finally:
        listener.close()
        counts = follower.stop()
    p = {
        (side, q): _percentile(values, q) * 1000
        for side, values in (("follower", ours), ("commit", ours_commit), ("bare", bare))
        if values
        for q in (50, 95, 99)
    }
    ratio50 = p["follower", 50] / p["bare", 50]
    ratio95 = p["follower", 95] / p["bare", 95]
    table = [
        "| side | p50 | p95 | p99 | samples |",
        "|---|---|---|---|---|",
        f"| follower (`manage.py follow`, PostgreSQL) | {p['follower', 50]:.1f} ms | "
        f"{p['follower', 95]:.1f} ms | {p['follower', 99]:.1f} ms | {len(ours):,} |",
        f"| bare httpx reader + one GET | {p['bare', 50]:.1f} ms | {p['bare', 95]:.1f} ms | "
        f"{p['bare', 99]:.1f} ms | {len(bare):,} |",
        f"| ratio | **{ratio50:.2f}x** | **{ratio95:.2f}x** | "
        f"{p['follower', 99] / p['bare', 99]:.2f}x | |",
    ]
    if ours_commit:
        # The same forms, ended at the commit's own timestamp: without the NOTIFY's trip to
        # this process and the wait for its GIL. Shown beside, not judged.
        table += [
            f"| follower, ended at PostgreSQL's commit timestamp | {p['commit', 50]:.1f} ms | "
            f"{p['commit', 95]:.1f} ms | {p['commit', 99]:.1f} ms | {len(ours_commit):,} |",
            f"| its ratio | {p['commit', 50] / p['bare', 50]:.2f}x | "
            f"{p['commit', 95] / p['bare', 95]:.2f}x | {p['commit', 99] / p['bare', 99]:.2f}x | |",
        ]
    table.append("")
    dropped = (
        f"Samples dropped because the event was a snapshot replay, not live: follower "
        f"{late['follower']}, bare {late['bare']}."
    )
    if get_delay:
        lines = [
            f"### The same with a Dify that takes {get_delay * 1000:.0f} ms to answer GET form "
            f"({len(ours):,} + {len(bare):,} pauses)",
            "",
            f"As above, but the simulator holds every `GET /form/human_input/{{token}}` for "
            f"{get_delay * 1000:.0f} ms before it answers (its own delay fault, for both sides), "
            "as a Dify on another machine that resolves the form's variables would. The "
            "follower's transaction runs while its GET is in flight, so what it adds to the "
            "GET shows here.",
            "",
            *table,
            f"Follower minus bare: p50 {p['follower', 50] - p['bare', 50]:.1f} ms, p95 "
            f"{p['follower', 95] - p['bare', 95]:.1f} ms. The goal is judged on loopback, "
            f"above. {dropped}",
        ]
        if counts.get("error_lines"):
            lines.append(f"The follower logged {counts['error_lines']} ERROR lines.")
        return lines, {"ratio95": ratio95}
    info = {"ratio95": ratio95, "bare": (p["bare", 50], p["bare", 95])}
    lines = [
        f"### Pause -> form committed with its definition ({len(ours):,} + {len(bare):,} pauses)",
        "",
        f"`{APP}` at the scenario's real pace, a run started every {SPACING:g} s (about "
        f"{0.9 / SPACING:.0f} streams open at a time), {max(1, pauses // ROUND)} rounds of "
        f"{ROUND} per side, alternating (and alternating which side goes first). From the "
        "simulator creating and announcing the form to: the commit of the `Form` row with its "
        "definition, as PostgreSQL notifies it (follower); the answer of `GET /form/human_input/"
        "{token}` (bare httpx reader of the same stream). Both sides start their runs the same "
        "way (read to the first event, close) and read `GET /workflow/{id}/events` with the "
        "state snapshot.",
        "",
        *table,
        f"p95 ratio goal <= 1.5x: **{'met' if ratio95 <= 1.5 else 'not met'}** "
        f"(median of the rounds' own p95 ratios: {statistics.median(ratios):.2f}x). {dropped}",
    ]
    if counts.get("error_lines"):
        lines.append(f"The follower logged {counts['error_lines']} ERROR lines.")
    return lines, info


# --- part 1c: the pause's transaction alone -----------------------------------------------------


def _transaction_alone(
    app: Any, conninfo: str, bare_p: tuple[float, float], samples: int = 200
) -> list[str]:
    """The batch that brings the form, applied `samples` times in this process with nothing else
    running: no stream, no event loop, no other run; GET form's answer already in (the handoff's
    usual case). What the follower's transaction costs at best, against the bare reader's whole
    path (`bare_p`: its p50 and p95, ms)."""
    import uuid

    import psycopg
    from django.db import connection

    from inbox import capture
    from inbox.dify.client import DifyClient
    from inbox.follower import FollowerSettings
    from inbox.models import Form, Run

    # One run at the scenario's pace, as the follower receives it: each event with its arrival.
    client = DifyClient.for_app(app)
    arrivals: list[tuple[float, dict[str, Any]]] = []
    with client.run_workflow(inputs=INPUTS, user="bench-alone") as stream:
        for event in stream:
            arrivals.append((time.monotonic(), event.raw))
            if event.event == "workflow_paused":
                break
    at, announcement = next(
        (t, raw) for t, raw in arrivals if raw.get("event") == "human_input_required"
    )
    definition = client.get_form(announcement["data"]["form_token"])
    # The follower holds progress events for up to `hold_seconds` and applies them with the
    # event that matters: the batch is what arrived in that window, up to the pause.
    hold = FollowerSettings().hold_seconds
    before = [raw for t, raw in arrivals if t < at - hold]
    batch = [raw for t, raw in arrivals if t >= at - hold]
    form_id = announcement["data"]["form_id"]
    batch_text = json.dumps(batch)

    statements: list[float] = []
    sent: list[tuple[str, Any]] = []

    def timed(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            statements.append(time.perf_counter() - started)
            sent.append((sql, params))

    took, sql, counts, runs = [], [], [], []
    for i in range(samples + 20):
        run = Run.objects.create(
            app=app,
            workflow_run_id=str(uuid.uuid4()),
            dify_user="bench-alone",
            follow_wanted=False,
        )
        runs.append(run.pk)
        capture.apply_events(run, before)
        fresh = f"bench-alone-{uuid.uuid4().hex}"
        events = json.loads(batch_text.replace(form_id, fresh))
        handoff = capture.DefinitionsHandoff([fresh])
        handoff.give({fresh: definition})
        statements.clear()
        sent.clear()
        started = time.perf_counter()
        with connection.execute_wrapper(timed):
            capture.apply_events(Run(pk=run.pk), events, handoff=handoff)
        if i >= 20:  # the first ones warm Django's and PostgreSQL's caches
            took.append(time.perf_counter() - started)
            sql.append(sum(statements))
            counts.append(len(statements))
    # The last sample's statements again, as sent, by psycopg alone in a transaction rolled
    # back (so each replay inserts the same form): what PostgreSQL and the wire cost without
    # Django, one round trip each, then all in one pipeline.
    Form.objects.filter(run_id=runs[-1]).delete()
    replay: dict[str, list[float]] = {"one by one": [], "pipelined": []}
    # The replaying thread's own CPU time, per replay: psycopg building and parsing messages.
    # The rest of the wall time is spent waiting for PostgreSQL and the loopback.
    replay_cpu: dict[str, list[float]] = {how: [] for how in replay}
    with psycopg.connect(conninfo, cursor_factory=psycopg.ClientCursor) as raw:
        for i in range(samples + 20):
            for how, times in replay.items():
                started, cpu = time.perf_counter(), time.thread_time()
                with raw.cursor() as cursor:
                    if how == "pipelined":
                        with raw.pipeline():
                            for statement, params in sent:
                                cursor.execute(statement, params)
                    else:
                        for statement, params in sent:
                            cursor.execute(statement, params)
                raw.rollback()
                if i >= 20:
                    times.append(time.perf_counter() - started)
                    replay_cpu[how].append(time.thread_time() - cpu)
        # PostgreSQL's own time for them: planning and execution as EXPLAIN ANALYZE reports
        # each statement (run, then rolled back), without the wire and without psycopg.
        server: list[float] = []
        for _ in range(50):
            total = 0.0
            with raw.cursor() as cursor:
                for statement, params in sent:
                    cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", params)
                    plan = cursor.fetchone()[0][0]
                    total += plan.get("Planning Time", 0.0) + plan.get("Execution Time", 0.0)
            raw.rollback()
            server.append(total / 1000)
    Run.objects.filter(pk__in=runs).delete()
    p50, p95 = _percentile(took, 50) * 1000, _percentile(took, 95) * 1000
    sql50 = _percentile(sql, 50) * 1000
    one_by_one = _percentile(replay["one by one"], 50) * 1000
    pipelined = _percentile(replay["pipelined"], 50) * 1000
    one_by_one_cpu = _percentile(replay_cpu["one by one"], 50) * 1000
    pipelined_cpu = _percentile(replay_cpu["pipelined"], 50) * 1000
    server50 = _percentile(server, 50) * 1000
    return [
        f"### The pause's transaction alone ({samples} samples)",
        "",
        f"The batch that brings the form ({len(batch)} events: what arrived in the last "
        f"{hold:g} s before the pause, as the follower holds them), applied by "
        "`capture.apply_events` in the benchmark's own process with nothing else running (no "
        "stream, no event loop, no other run), GET form's answer already handed over: "
        f"**p50 {p50:.1f} ms, p95 {p95:.1f} ms**, of which the statements' round trips "
        f"(BEGIN and COMMIT not counted; {statistics.median(counts):.0f} statements) "
        f"{sql50:.1f} ms at p50, the rest Django building queries and objects and our event "
        f"code. The bare reader's whole path (event and GET) in the part above: p50 "
        f"{bare_p[0]:.1f} ms, p95 {bare_p[1]:.1f} ms; 1.5x its p95 is {1.5 * bare_p[1]:.1f} ms. "
        "The follower's path is at least the event's arrival plus this transaction (the GET "
        "runs meanwhile), so the goal needs the transaction well under that; idle, it takes "
        f"{p95 / (1.5 * bare_p[1]):.0%} of it at p95.",
        "",
        "The same statements as sent, replayed by psycopg alone, BEGIN to ROLLBACK: one round "
        f"trip each p50 {one_by_one:.1f} ms (of which psycopg's own CPU time "
        f"{one_by_one_cpu:.1f} ms), all in one pipeline p50 {pipelined:.1f} ms (CPU "
        f"{pipelined_cpu:.1f} ms). PostgreSQL's own time for them, planning and execution as "
        f"EXPLAIN ANALYZE reports each: {server50:.2f} ms at p50. The rest of a replay is the "
        "loopback's round trips and the wake-ups around them; the difference between a replay "
        "and the transaction above is Django's and our Python.",
    ]


# --- part 2: concurrency ------------------------------------------------------------------------


def _concurrency(app: Any, root: str, conninfo: str) -> list[str]:
    from django.db import connections

    from inbox.models import Form, Run
    from inbox.runs import start_run

    httpx.post(f"{root}/_sim/options", json={"time_scale": TIME_SCALE}, timeout=10)
    follower = FollowerProcess()
    listener = CommitListener(conninfo)
    time.sleep(1.0)
    idle_rss = follower.process.memory_info().rss
    cpu_before = follower.cpu()
    peak_streams = 0
    sampling = threading.Event()

    def sample_streams() -> None:
        nonlocal peak_streams
        with httpx.Client(timeout=10) as http:
            while not sampling.is_set():
                with_stats = http.get(f"{root}/_sim/stats").json()
                peak_streams = max(peak_streams, int(with_stats["streams_open"]))
                time.sleep(0.25)

    def start(i: int) -> str:
        try:
            return start_run(
                app, inputs=INPUTS, dify_user=f"bench-c-{i}", source="api"
            ).workflow_run_id
        finally:
            connections.close_all()

    sampler = threading.Thread(target=sample_streams, daemon=True)
    sampler.start()
    try:
        with PeakRSS(follower.process) as rss:
            began = time.monotonic()
            began_at = time.time()
            with ThreadPoolExecutor(START_THREADS) as pool:
                run_ids = list(pool.map(start, range(RUNS)))
            start_wall = time.monotonic() - began
            pks = list(Run.objects.filter(workflow_run_id__in=run_ids).values_list("pk", flat=True))
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                done = Form.objects.filter(
                    run_id__in=pks, definition_fetched_at__isnull=False
                ).count()
                released = Run.objects.filter(pk__in=pks, follow_wanted=True).count() == 0
                if done >= RUNS and released:
                    break
                time.sleep(0.2)
            cpu_after = follower.cpu()
    finally:
        sampling.set()
        sampler.join()
        listener.close()
        counts = follower.stop()
        httpx.post(f"{root}/_sim/options", json={"time_scale": 1.0}, timeout=10)
    announced = _announced(root, run_ids)
    issued = {f["form_id"] for f in announced.values()}
    rows = list(Form.objects.filter(run_id__in=pks).values_list("form_id", flat=True))
    with_definition = Form.objects.filter(
        run_id__in=pks, definition_fetched_at__isnull=False
    ).count()
    committed = [
        listener.seen[f["form_id"]] for f in announced.values() if f["form_id"] in listener.seen
    ]
    wall = max(committed) - began_at if committed else float("nan")
    latencies = [
        listener.seen[f["form_id"]] - f["created_at"]
        for f in announced.values()
        if f["form_id"] in listener.seen
    ]
    captured = len(set(rows) & issued)
    duplicates = len(rows) - len(set(rows))
    events = counts.get("events", 0)
    cpu = cpu_after - cpu_before
    per_event = cpu / events * 1e6 if events else float("nan")
    lines = [
        f"### {RUNS:,} runs streaming at once through one follower",
        "",
        f"{RUNS:,} runs of `{APP}` started with `start_run` from {START_THREADS} threads "
        f"({start_wall:.1f} s), the scenario slowed {TIME_SCALE:g}x so that every stream is "
        f"open before the first pause (about {0.9 * TIME_SCALE:.0f} s of node work and "
        f"text chunks per run); one `manage.py follow` process with its production settings.",
        "",
        "| forms issued | Form rows | distinct form_ids | with definition | duplicates | "
        "missing | streams open at once (peak) |",
        "|---|---|---|---|---|---|---|",
        f"| {len(issued):,} | {len(rows):,} | {len(set(rows)):,} | {with_definition:,} | "
        f"{duplicates} | {len(issued) - captured} | {peak_streams:,} |",
        "",
        "| wall, first start to last form committed | follower peak RSS | idle RSS | events "
        "applied | follower CPU | CPU per event | pause -> commit p50 / p95 |",
        "|---|---|---|---|---|---|---|",
        f"| {wall:.1f} s | **{rss.peak / MB:.0f} MB** | {idle_rss / MB:.0f} MB | {events:,} "
        f"({counts.get('batches', 0):,} batches) | {cpu:.1f} s | **{per_event:.0f} us** | "
        f"{_percentile(latencies, 50) * 1000:.0f} / {_percentile(latencies, 95) * 1000:.0f} ms |",
        "",
        f"All forms captured, none twice: **{'yes' if captured == len(issued) == RUNS and duplicates == 0 else 'no'}**; "
        f"peak RSS goal <= 300 MB: **{'met' if rss.peak <= 300 * MB else 'not met'}**.",
    ]
    if counts.get("error_lines"):
        lines.append(f"The follower logged {counts['error_lines']} ERROR lines.")
    return lines


FINDINGS = [
    "### What this benchmark changed, and where the rest of the time goes",
    "",
    "- A transaction per streamed text chunk (an LLM node sends dozens a second) made the "
    "follower CPU-bound with about ten runs streaming. Progress events (node steps, text "
    "chunks) are now held for up to 0.5 s and applied together; forms, pauses, fills, ends and "
    "errors are applied the moment they arrive, with whatever was held before them.",
    "- httpx's connection pool looks at each of its connections whenever a request starts or a "
    "response closes, so with one pool holding every stream each `GET form` cost in proportion "
    "to the streams open. The follower now spreads its streams over pools of 50.",
    "- Django's connection health check (`SELECT 1`) ran before every database call of the "
    "follower; now at most once a second per thread.",
    "- The batch that announces a form goes to its database thread at the moment `GET form` "
    "starts, not after it answers (`capture.DefinitionsHandoff`; PostgreSQL only, and while at "
    "least half of the database threads stay free): the run is locked, the held events "
    "applied and the form inserted and routed while the GET is in flight; its answer goes "
    "into the insert if it is in by then, else into one UPDATE just before the commit, so the "
    "form still becomes visible once, with its definition and its reviewers. The route is "
    "chosen before the insert and stored with it, the batch's audit entries are written in "
    "one INSERT, and the savepoint around the insert is gone (forms of other runs bearing an "
    "announced id are read with the run's forms): 8 statements from BEGIN to COMMIT instead of "
    "12. Same host, same day, 1,000 pauses per side: before, follower p50 12.0 / p95 16.4 ms "
    "against bare 3.4 / 4.6 ms (3.59x); after, 10.9 / 15.7 against 3.4 / 4.3 ms (3.60x): 1 ms "
    "better at p50, the same at p95, because on loopback GET form answers in 2-3 ms and the "
    "transaction is the longer of the two. With a GET of 20 ms (the second table) the "
    "transaction hides behind it: the follower adds 3.8 / 4.4 ms (p50 / p95) to the bare "
    "reader, against 8.5 / 11.2 ms with the handoff switched off and 8.6 / 11.5 ms before "
    "these changes (300 pauses each, 2026-12-05 evening).",
    "- Still above the goal, and where the time goes now, timed inside the follower (100 "
    "pauses, p50 / p95): the hop to the database thread 1.5 / 1.9 ms; `GET form` 3.6 / 7.9 "
    "ms; the batch applied up to the insert 6.1 / 9.4 ms, of which its statements 3.5 / 7.6 "
    "ms; waiting for the GET 0 ms (its answer was in before the insert for 84% of the forms); "
    "the last run update, audit insert and commit 1.6 / 2.3 ms; event to commit 9.3 / 14.0 ms. "
    "The transaction, not the GET, is the long pole. Sampled with py-spy during the bench, the "
    "database thread spends 64% of its busy time waiting for PostgreSQL and the rest in "
    "Django's ORM; a shorter GIL switch interval (0.5 or 2 ms) changed nothing.",
    "- Why 1.5x is out of reach on loopback for this transaction: \"The pause's transaction "
    'alone" (added 2026-12-05) applies the same batch with nothing else running, and it alone '
    "takes about as long as 1.5x the bare reader's whole path (event and GET) at p95, before "
    "the event's arrival, the hop and the GIL shared with the event loop are counted. Replaying"
    " its statements with psycopg alone splits it: 1.8 ms one round trip at a time, 1.2 ms all "
    "pipelined; Django building queries and model objects and our event code cost the other 3 "
    "ms or so. Within a replay (measured since the night of 2026-12-05, one round trip each, "
    "p50): PostgreSQL's own planning and execution about 0.5 ms, psycopg's CPU 0.6 ms, the "
    "loopback round trips and wake-ups the rest. So pipelining alone (about 0.6 ms) would not "
    "close the gap, and neither would a faster database: most of the transaction is Python on "
    "the follower's side. Two throwaway prototypes (2026-12-05, 300 and 100 pauses, not kept) "
    "wrote the pause's transaction as hand-made SQL in two pipelined round trips (lock, forms "
    "and routes read while GET form is in flight; form, run, audit and COMMIT after its "
    "answer), leaving out routing's assignments and most of the events' bookkeeping: from a "
    "database thread, follower 6.8 / 9.5 ms against bare 3.2 / 4.6 ms (2.09x at p95); on the "
    "event loop with an async psycopg connection, no thread hop, 6.8 / 8.4 against 2.8 / 3.5 ms"
    " (2.4x; 2.2x in a first run of 50). Timed inside the second: GET form takes 3.4 ms at p50 "
    "there (the loop shares its time with the first round trip), building the row 0.5 ms, the "
    "write round trip and commit 1.8 ms. So not even a second implementation of what capture "
    "writes, beside the ORM one every other path uses, meets 1.5x on this host: the write round"
    " trip and commit alone (1.8 ms at p50, on two cores shared with the simulator and "
    "PostgreSQL) already use what 1.5x leaves over the bare reader there (1.4 ms at p50, 1.8 ms"
    " at p95). Against a Dify that takes 20 ms to answer GET form the follower is within 1.25x."
    " The ratio is also shown with the end taken at PostgreSQL's own commit timestamp "
    "(`track_commit_timestamp`, set by bin/with-services) instead of the NOTIFY's arrival in "
    "the benchmark's process: 0.2 to 0.4 ms earlier, so the NOTIFY path is not what keeps the "
    "ratio up.",
    "- CPU per event at 1,000 runs is that per-transaction work and httpx's per-request "
    "overhead; at 1,000 runs one follower process is CPU-bound; more follower processes share "
    "the runs through their leases (not measured here). Hosts differ between runs (this "
    "evening's Intel Xeon did ten million additions in a Python loop in 0.24 s, as the "
    "delivery bench times them, against 0.66-0.70 s on the AMD EPYC of the morning): compare "
    "ratios and before/after pairs, not absolute times across runs.",
]


def main() -> str:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inbox.settings")
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        raise SystemExit("bench capture needs PostgreSQL: run it under bin/with-services")
    import django

    django.setup()
    from django.core.management import call_command

    from inbox.models import DifyApp
    from inbox.simulator.scenarios import load_dir

    call_command("migrate", verbosity=0)
    conninfo = os.environ["DATABASE_URL"]
    api_key = load_dir()[APP].api_key
    _install_trigger()
    try:
        with _simulator() as root:
            app, _ = DifyApp.objects.update_or_create(
                name="bench-capture", defaults={"base_url": f"{root}/v1", "api_key": api_key}
            )
            with LoadAverage() as load1:
                latency, info = _latency(app, root, api_key, conninfo)
            alone = _transaction_alone(app, conninfo, info["bare"])
            with LoadAverage() as load_slow:
                slow, _ = _latency(
                    app, root, api_key, conninfo, pauses=SLOW_PAUSES, get_delay=GET_DELAY
                )
            with LoadAverage() as load2:
                concurrency = _concurrency(app, root, conninfo)
    finally:
        _drop_trigger()
    return "\n".join(
        [
            "## Capture",
            "",
            "The simulator, the follower and PostgreSQL each in their own process; numbers taken "
            "on a 2-core machine shared by all of them and the load generator (and by whatever "
            "else ran there: the 1-minute load average is given with each part).",
            "",
            *latency,
            "",
            f"Load average during this part: {load1.describe()}.",
            "",
            *alone,
            "",
            *slow,
            "",
            f"Load average during this part: {load_slow.describe()}.",
            "",
            *concurrency,
            "",
            f"Load average during this part: {load2.describe()}.",
            "",
            *FINDINGS,
        ]
    )


if __name__ == "__main__":
    print(main())
