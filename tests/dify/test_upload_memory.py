"""An upload streams: a 50 MB file goes through the client without the process growing by it."""

from __future__ import annotations

import gc
import hashlib
import io
import threading
import time
from typing import Any

import psutil

from inbox.dify import DifyClient
from inbox.simulator.testing import SimulatorHandle

SIZE = 50 * 1024 * 1024
# Far below the file's size: what a chunked upload needs (buffers, the simulator's own parsing in
# this same process), not what holding the file would cost.
MAX_GROWTH = 24 * 1024 * 1024


class GeneratedFile(io.RawIOBase):
    """`size` bytes made up on demand, never held: a file object backed by a generator."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.digest = hashlib.sha256()
        self._block = bytes(range(256)) * 256

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left, len(self._block))
        buffer[:n] = self._block[:n]
        self.digest.update(self._block[:n])
        self.left -= n
        return n


def test_a_large_upload_keeps_memory_flat(sim: SimulatorHandle) -> None:
    process = psutil.Process()
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.002)

    source = GeneratedFile(SIZE)
    with DifyClient(sim.base_url, sim.api_key("client-review")) as client:
        # Warm the connection pool and the code paths, so their one-off cost is not counted.
        client.upload_file(
            io.BytesIO(b"x" * 1024), filename="w.mp4", mime_type="video/mp4", user="u"
        )
        gc.collect()
        start = process.memory_info().rss
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            uploaded = client.upload_file(
                io.BufferedReader(source, buffer_size=64 * 1024),
                filename="big.mp4",
                mime_type="video/mp4",
                user="u",
            )
        finally:
            stop.set()
            sampler.join()
    assert uploaded.size == SIZE
    [stored] = [u for u in sim.uploads() if u["id"] == uploaded.id]
    assert stored["sha256"] == source.digest.hexdigest()
    growth = max(peak, process.memory_info().rss) - start
    assert growth < MAX_GROWTH, (
        f"RSS grew by {growth / 2**20:.1f} MB for a {SIZE // 2**20} MB upload"
    )
