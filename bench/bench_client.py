"""The Dify client: upload throughput and memory, and SSE decoding speed.

- Upload: 100 MB through `DifyClient.upload_file` to the simulator, against a plain streamed
  httpx multipart upload of the same file in the same run. Goals: throughput ratio >= 0.8, peak
  RSS growth <= 32 MB.
- SSE: events per second decoding the same captured Dify stream with our decoder and with
  httpx-sse's line and event decoders, fed the same chunks.
"""

from __future__ import annotations

import codecs
import gc
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
CAPTURED = ROOT / "tests" / "dify" / "data" / "captured_stream.txt"

UPLOAD_MB = int(os.environ.get("BENCH_UPLOAD_MB", "100"))
SSE_COPIES = 2000
ROUNDS = 7
UPLOAD_ROUNDS = 7


class PeakRSS:
    """Samples this process's RSS in a thread; `growth` is the peak above the starting value."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.process = psutil.Process()
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.start = self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.start


# --- SSE ----------------------------------------------------------------------------------------


def _ours(chunks: list[bytes]) -> int:
    from inbox.dify.sse import SSEDecoder

    decoder = SSEDecoder()
    count = 0
    for chunk in chunks:
        count += len(decoder.feed(chunk))
    return count + len(decoder.flush())


def _ours_typed(chunks: list[bytes]) -> int:
    # Decoding plus what EventStream adds: JSON and the typed event.
    import json

    from inbox.dify.sse import SSEDecoder
    from inbox.dify.types import parse_event

    decoder = SSEDecoder()
    count = 0
    for chunk in chunks:
        for sse in decoder.feed(chunk):
            if sse.data:
                parse_event(json.loads(sse.data))
            count += 1
    return count + len(decoder.flush())


def _httpx_sse(chunks: list[bytes]) -> int:
    # What httpx_sse.EventSource.iter_sse does over response.iter_text(), minus the network.
    from httpx_sse._decoders import SSEDecoder, SSELineDecoder

    text = codecs.getincrementaldecoder("utf-8")()
    lines = SSELineDecoder()
    decoder = SSEDecoder()
    count = 0
    for chunk in chunks:
        for line in lines.decode(text.decode(chunk)):
            if decoder.decode(line.rstrip("\n")) is not None:
                count += 1
    for line in lines.flush():
        if decoder.decode(line) is not None:
            count += 1
    return count


def _best_rates(
    fns: list[Callable[[list[bytes]], int]], chunks: list[bytes]
) -> list[tuple[int, float]]:
    """Best events/s of each function; rounds alternate between them so that a busy moment of
    the machine does not land on one side only."""
    best = [0.0] * len(fns)
    counts = [0] * len(fns)
    for _ in range(ROUNDS):
        for i, fn in enumerate(fns):
            started = time.perf_counter()
            counts[i] = fn(chunks)
            best[i] = max(best[i], counts[i] / (time.perf_counter() - started))
    return list(zip(counts, best, strict=True))


def bench_sse() -> list[str]:
    data = CAPTURED.read_bytes() * SSE_COPIES
    rows = []
    for size in (1024, 16 * 1024, 64 * 1024):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        (ours_count, ours), (theirs_count, theirs), (_, typed) = _best_rates(
            [_ours, _httpx_sse, _ours_typed], chunks
        )
        if ours_count != theirs_count:
            raise AssertionError(f"decoders disagree: {ours_count} vs {theirs_count} events")
        rows.append(
            f"| {size // 1024} KiB | {ours_count} | {ours:,.0f} | {theirs:,.0f} | "
            f"**{ours / theirs:.2f}** | {typed:,.0f} |"
        )
    return [
        f"SSE decoding: the captured stream ({CAPTURED.stat().st_size} bytes, 16 events) "
        f"repeated {SSE_COPIES} times, fed in fixed-size chunks; best of {ROUNDS}.",
        "",
        "| chunk | events | ours (events/s) | httpx-sse (events/s) | ratio | ours + JSON + typed "
        "event (events/s) |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


# --- upload -------------------------------------------------------------------------------------


@contextmanager
def _big_file(megabytes: int) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.bin"
        block = os.urandom(1024 * 1024)
        with path.open("wb") as f:
            for _ in range(megabytes):
                f.write(block)
        yield path


def _plain_httpx_upload(base_url: str, api_key: str, path: Path) -> dict[str, Any]:
    with httpx.Client(timeout=120.0) as http, path.open("rb") as f:
        response = http.post(
            f"{base_url}/files/upload",
            headers={"Authorization": f"Bearer {api_key}"},
            files={"file": ("big.mp4", f, "video/mp4")},
            data={"user": "bench"},
        )
        response.raise_for_status()
        return dict(response.json())


def _client_upload(base_url: str, api_key: str, path: Path) -> dict[str, Any]:
    from inbox.dify.client import DifyClient

    with DifyClient(base_url, api_key) as client, path.open("rb") as f:
        uploaded = client.upload_file(f, filename="big.mp4", mime_type="video/mp4", user="bench")
        return uploaded.raw


def _timed(fn: Callable[[], dict[str, Any]]) -> tuple[float, int, dict[str, Any]]:
    with PeakRSS() as rss:
        started = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - started
    return elapsed, rss.growth, result


@contextmanager
def _simulator_process() -> Iterator[tuple[str, str]]:
    """The simulator in its own process, so that RSS measured here is the uploader's alone."""
    from inbox.simulator.scenarios import load_dir

    api_key = load_dir()["refund-approval"].api_key
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
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
        yield f"{root}/v1", api_key
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def bench_upload() -> list[str]:
    size = UPLOAD_MB * 1024 * 1024
    rows = []
    with _simulator_process() as (base_url, api_key), _big_file(UPLOAD_MB) as path:
        results: dict[str, list[tuple[float, int]]] = {"plain": [], "client": []}
        # Alternate, so that neither side always runs on a warmer machine.
        for _ in range(UPLOAD_ROUNDS):
            for name, fn in (("plain", _plain_httpx_upload), ("client", _client_upload)):
                elapsed, growth, answer = _timed(lambda fn=fn: fn(base_url, api_key, path))
                if int(answer.get("size", -1)) != size:
                    raise AssertionError(f"{name} upload stored {answer.get('size')} bytes")
                results[name].append((elapsed, growth))
    plain = min(e for e, _ in results["plain"])
    ours = min(e for e, _ in results["client"])
    ours_growth = max(g for _, g in results["client"])
    plain_growth = max(g for _, g in results["plain"])
    mb = 1024 * 1024
    rows.append(
        f"| plain httpx (streamed multipart) | {UPLOAD_MB / plain:,.0f} MB/s | "
        f"{plain_growth / mb:.1f} MB |"
    )
    rows.append(
        f"| DifyClient.upload_file | {UPLOAD_MB / ours:,.0f} MB/s | {ours_growth / mb:.1f} MB |"
    )
    ratio = plain / ours
    # Each round's pair ran back to back, so a busy moment of the machine hits both alike; the
    # median of the pairs' ratios is the steadier figure on a shared machine.
    paired = statistics.median(
        p / c for (p, _), (c, _) in zip(results["plain"], results["client"], strict=True)
    )
    return [
        f"Upload: a {UPLOAD_MB} MB file from disk to the simulator (its own process) over "
        f"loopback, {UPLOAD_ROUNDS} rounds alternating the two uploaders; throughput is the best "
        f"round, peak RSS growth of the uploading process the worst.",
        "",
        "| uploader | throughput | peak RSS growth |",
        "|---|---|---|",
        *rows,
        "",
        f"Throughput ratio client/plain: **{ratio:.2f}** best against best, **{paired:.2f}** "
        f"median of the rounds' ratios (goal >= 0.8); client peak RSS growth "
        f"**{ours_growth / mb:.1f} MB** (goal <= 32 MB).",
    ]


def main() -> str:
    lines = ["## Dify client", ""]
    lines += bench_upload()
    lines += [""]
    lines += bench_sse()
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
