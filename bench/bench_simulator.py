"""The Dify simulator under load: 2,000 concurrent streaming runs against one simulator process.

The simulator runs as its own process (`python -m inbox.simulator`), so its memory is measured
apart from the load generator. Two phases, each with every stream open at once:

1. Start: 2,000 runs of the refund-approval app in streaming mode, each read to its
   `workflow_paused` (LLM-like text chunks at the scenario's own pace).
2. Resume: 2,000 `/workflow/{id}/events` streams held open while every form is submitted, each
   read to its `workflow_finished`.

Reported: wall time per phase, events per second, and the simulator's peak RSS (sampled every
20 ms with psutil) against its RSS when idle.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
RUNS = int(os.environ.get("BENCH_SIM_RUNS", "2000"))
APP = "refund-approval"
KEY = "app-sim-approval"
PER_CLIENT = 50
INPUTS = {"customer_name": "Ada", "order_id": "SO-1", "amount": 120, "reason": "Broken on arrival."}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PeakRSS:
    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
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


async def _read_events(response: httpx.Response) -> list[dict[str, Any]]:
    events = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            events.append(json.loads(line[5:]))
    return events


async def _start(http: httpx.AsyncClient, n: int) -> tuple[str, str, int]:
    body = {"inputs": INPUTS, "user": f"bench-{n}", "response_mode": "streaming"}
    async with http.stream("POST", "/workflows/run", json=body) as response:
        response.raise_for_status()
        events = await _read_events(response)
    if events[-1]["event"] != "workflow_paused":
        raise AssertionError(f"run {n} ended with {events[-1]['event']}")
    token = next(e for e in events if e["event"] == "human_input_required")["data"]["form_token"]
    return events[0]["workflow_run_id"], token, len(events)


async def _resume(
    http: httpx.AsyncClient,
    n: int,
    run_id: str,
    token: str,
    opened: asyncio.Event,
    ready: list[int],
) -> int:
    params = {"user": f"bench-{n}"}
    async with http.stream("GET", f"/workflow/{run_id}/events", params=params) as response:
        response.raise_for_status()
        lines = response.aiter_lines()
        async for line in lines:
            if line.startswith("event: ping"):
                break
        ready.append(n)
        if len(ready) == RUNS:
            opened.set()
        await opened.wait()  # every stream is open before the first submit
        answer = await http.post(
            f"/form/human_input/{token}",
            json={"inputs": {"decision_note": "ok"}, "action": "approve", "user": f"bench-{n}"},
        )
        answer.raise_for_status()
        count = 0
        async for line in lines:
            if line.startswith("data:"):
                count += 1
                if json.loads(line[5:])["event"] == "workflow_finished":
                    break
    return count


async def _load(base_url: str) -> dict[str, Any]:
    # httpx's pool scans its connections on every request; many small clients keep the load
    # generator from being the bottleneck.
    shards = max(1, RUNS // PER_CLIENT)
    limits = httpx.Limits(max_connections=PER_CLIENT * 3, max_keepalive_connections=PER_CLIENT * 3)
    timeout = httpx.Timeout(120.0, connect=30.0)
    headers = {"Authorization": f"Bearer {KEY}"}
    clients = [
        httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout, headers=headers)
        for _ in range(shards)
    ]
    try:
        started = time.perf_counter()
        runs = await asyncio.gather(*(_start(clients[n % shards], n) for n in range(RUNS)))
        start_wall = time.perf_counter() - started
        opened = asyncio.Event()
        ready: list[int] = []
        started = time.perf_counter()
        counts = await asyncio.gather(
            *(
                _resume(clients[n % shards], n, run_id, token, opened, ready)
                for n, (run_id, token, _) in enumerate(runs)
            )
        )
        resume_wall = time.perf_counter() - started
    finally:
        for client in clients:
            await client.aclose()
    return {
        "start_wall": start_wall,
        "start_events": sum(r[2] for r in runs),
        "resume_wall": resume_wall,
        "resume_events": sum(counts),
    }


def main() -> str:
    port = _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    server = subprocess.Popen(
        [sys.executable, "-m", "inbox.simulator", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=env,
    )
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/_sim/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the simulator did not start")
            time.sleep(0.1)
        idle = psutil.Process(server.pid).memory_info().rss
        with PeakRSS(server.pid) as rss:
            result = asyncio.run(_load(base_url))
        stats = httpx.get(f"http://127.0.0.1:{port}/_sim/stats", timeout=10).json()
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    if stats["streams_total"] < 2 * RUNS or sum(stats["submits_applied"].values()) != RUNS:
        raise AssertionError(f"the simulator did not see every stream and submit: {stats}")
    mb = 1024 * 1024
    return "\n".join(
        [
            "## Dify simulator",
            "",
            f"{RUNS:,} concurrent streaming runs of `{APP}` against one simulator process "
            "(uvicorn, h11, one event loop), driven from one other process by httpx.AsyncClient clients of 50 connections each; scenario "
            "delays at their real pace (about 0.9 s of node work and text chunks per run).",
            "",
            "| phase | streams open at once | wall time | events | events/s |",
            "|---|---|---|---|---|",
            f"| start, read to `workflow_paused` | {RUNS:,} | {result['start_wall']:.1f} s | "
            f"{result['start_events']:,} | {result['start_events'] / result['start_wall']:,.0f} |",
            f"| resume: all streams open, then every form submitted, read to `workflow_finished` | "
            f"{RUNS:,} | {result['resume_wall']:.1f} s | {result['resume_events']:,} | "
            f"{result['resume_events'] / result['resume_wall']:,.0f} |",
            "",
            f"Simulator memory: **{rss.peak / mb:.0f} MB peak RSS** ({idle / mb:.0f} MB idle, "
            f"{(rss.peak - idle) / RUNS / 1024:.0f} KB per run with its streams).",
        ]
    )


if __name__ == "__main__":
    print(main())
