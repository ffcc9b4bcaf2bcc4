"""`make run`'s orchestrator (bin/run-embedded), run for real: SQLite and the file-system broker in a
fresh directory, the simulator, web, worker and follower as child processes, the demo seeded."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_make_run_serves_the_demo_with_paused_forms_and_ctrl_c_stops_everything(
    tmp_path: Path,
) -> None:
    port, sim_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(
        INBOX_VAR_DIR=str(tmp_path / "var"),
        INBOX_PORT=str(port),
        INBOX_SIMULATOR_PORT=str(sim_port),
        DJANGO_SETTINGS_MODULE="inbox.settings",
    )
    env.pop("DEBUG", None)
    proc = subprocess.Popen(
        [sys.executable, "bin/run-embedded"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_until(lambda: "is running" in "".join(lines) or proc.poll() is not None, timeout=180)
        out = "".join(lines)
        assert proc.poll() is None, out[-3000:]
        assert f"Open   http://127.0.0.1:{port}/" in out
        assert "Login  admin / admin" in out
        assert re.search(r"seed_demo: \d+ demo runs started", out), out[-3000:]

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as web:
            assert web.get("/admin/login/").status_code == 200
            page = web.get("/accounts/login/")
            csrf = web.cookies["csrftoken"]
            assert page.status_code == 200
            logged_in = web.post(
                "/accounts/login/",
                data={"username": "alice", "password": "alice", "csrfmiddlewaretoken": csrf},
                headers={"Referer": f"http://127.0.0.1:{port}/accounts/login/"},
            )
            assert logged_in.status_code == 302, logged_in.text[:500]

            # The follower captures the demo runs' forms: the inbox fills by itself.
            def inbox_lists_forms() -> bool:
                body = web.get("/").text
                return "Manager approval" in body and "Legal review" in body

            wait_until(inbox_lists_forms, timeout=60, interval=1)

        # The guests' emails are sent by the worker of the `mail` queue, not the one that
        # delivers decisions (printed by the console backend).
        wait_until(lambda: "To: guest@example.com" in "".join(lines), timeout=60, interval=1)
        out = "".join(lines)
        assert "mailer@" in out and ".> mail" in out

        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        # Every child went with it.
        wait_until(lambda: not _listening(port) and not _listening(sim_port), timeout=30)
        leftovers = subprocess.run(
            ["pgrep", "-f", str(tmp_path / "var")], capture_output=True, text=True
        ).stdout
        assert leftovers.strip() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
