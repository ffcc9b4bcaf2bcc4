from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]

# What the worker processes of the fault tests run with: backoff in tenths of a second instead of
# minutes, a short submit timeout, and a stuck threshold just above the task's time limit.
FAST_DELIVERY_ENV = {
    "INBOX_DELIVERY_RETRY_BASE_SECONDS": "0.1",
    "INBOX_DELIVERY_RETRY_CAP_SECONDS": "1.0",
    "INBOX_DELIVERY_MAX_ATTEMPTS": "60",
    "INBOX_DELIVERY_TIMEOUT_SECONDS": "1",
    "INBOX_DELIVERY_WATCH_SECONDS": "0.5",
    "INBOX_DELIVERY_STUCK_SECONDS": "14",
    "INBOX_DELIVERY_REQUEUE_AFTER_SECONDS": "5",
}


class Workers:
    """Start, kill and restart real Celery worker processes on the real broker."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(
        self,
        *,
        pool: str = "solo",
        concurrency: int = 1,
        beat: bool = False,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """A worker; with `beat`, it also runs the periodic tasks (the delivery sweep every
        second, so a stuck delivery is found as soon as it counts as stuck)."""
        environ = dict(os.environ)
        environ.update(FAST_DELIVERY_ENV)
        environ.update(env or {})
        environ["DATABASE_URL"] = self.database_url
        log = tempfile.NamedTemporaryFile(prefix="inbox-worker-", suffix=".log", delete=False)
        self.logs.append(Path(log.name))
        extra: list[str] = []
        if beat:
            schedule = Path(log.name).with_suffix(".beat")
            self.logs.append(schedule)
            extra = ["--beat", "--schedule", str(schedule)]
            environ.setdefault("INBOX_DELIVERY_SWEEP_EVERY_SECONDS", "1")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "inbox",
                "worker",
                f"--pool={pool}",
                f"--concurrency={concurrency}",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "INFO",
                *extra,
            ],
            cwd=ROOT,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL, as the kernel's OOM killer or a lost machine would: no cleanup runs."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def log_tail(self, lines: int = 60) -> str:
        """The end of every worker's log, for a failing test's message."""
        out = []
        for path in self.logs:
            if path.suffix != ".log":
                continue
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    def remove_logs(self) -> None:
        for path in self.logs:
            path.unlink(missing_ok=True)
            # Beat's schedule is a shelve: dbm adds .dat, .dir and .bak to the name it is given.
            for sibling in path.parent.glob(path.name + ".*"):
                sibling.unlink(missing_ok=True)


@pytest.fixture
def workers(transactional_db: None) -> Iterator[Workers]:
    if connection.vendor != "postgresql" or not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("needs PostgreSQL and Redis (run through bin/with-services, as make test does)")
    from inbox.celery import app

    # Messages left by an earlier test (a killed worker's unacked task) must not leak in.
    app.control.purge()
    db = connection.settings_dict
    pool = Workers(f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}")
    try:
        yield pool
    finally:
        pool.stop_all()
        pool.remove_logs()
        app.control.purge()
