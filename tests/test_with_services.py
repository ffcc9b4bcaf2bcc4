"""bin/with-services stops its servers however it is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_the_command_and_the_servers(tmp_path: Path) -> None:
    marker = tmp_path / "env"
    script = f"env > {marker}; exec sleep 600"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bin" / "with-services"),
            "--no-postgres",
            "--",
            "sh",
            "-c",
            script,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while not (marker.exists() and "REDIS_URL=" in marker.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, (
            proc.stdout and proc.stdout.read()
        )
        time.sleep(0.1)
    redis_port = next(
        line.rsplit(":", 1)[1].split("/")[0]
        for line in marker.read_text().splitlines()
        if line.startswith("REDIS_URL=")
    )
    redis_pids = subprocess.run(
        ["pgrep", "-f", f"redis-server.*:{redis_port}"], capture_output=True, text=True
    ).stdout.split()
    assert redis_pids, "the Redis server of the run was not found"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 15
    while any(_alive(int(pid)) for pid in redis_pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(int(pid)) for pid in redis_pids), "Redis was left running"


def test_each_test_process_sends_its_celery_messages_to_its_own_redis_database() -> None:
    """`make test` runs the suite in several processes, one test database each: a Celery worker
    one of them starts must only ever see that process's messages."""
    import pytest
    from django.conf import settings

    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker or not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("only under pytest-xdist with Redis, as make test runs the suite")
    from inbox.celery import app

    expected_db = int(worker.removeprefix("gw")) + 1
    assert os.environ["CELERY_BROKER_URL"] == app.conf.broker_url == settings.CELERY_BROKER_URL
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        assert client.connection_pool.connection_kwargs["db"] == expected_db
        assert client.ping()
