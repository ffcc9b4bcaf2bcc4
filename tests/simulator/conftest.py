from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.openapi_check import exchange_problems


@pytest.fixture
def simulator(simulator_server: Any) -> Iterator[Any]:
    """The shared simulator, reset; every answer it gives in the test must match the spec.

    Requests are not checked here because many tests send malformed ones on purpose; the
    scenario tests check their requests too.
    """
    simulator_server.reset()
    yield simulator_server
    problems = exchange_problems(simulator_server.exchanges(), check_requests=False)
    assert not problems, "the simulator answered off the spec:\n" + "\n".join(problems[:20])


def pdf_bytes(size: int = 64) -> bytes:
    head = b"%PDF-1.4\n"
    return head + b"0" * max(0, size - len(head))
