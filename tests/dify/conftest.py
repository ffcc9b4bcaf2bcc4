from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from inbox.dify import AsyncDifyClient, DifyClient
from inbox.simulator.testing import SimulatorHandle, running_simulator
from tests.openapi_check import validate_request

SCENARIOS = Path(__file__).resolve().parent / "scenarios"

# Fast but not instant: pings every 50 ms so streams carry some, resumed runs start 20 ms after a
# submit, scenario delays are skipped.
SIM_OPTIONS = {"time_scale": 0.0, "ping_interval": 0.05, "resume_delay": 0.02, "record": True}


# Our own server with this package's scenarios rather than the shared `simulator` fixture: the
# client's tests pin exact forms (every input kind, a chatflow, an email-only form) that the demo
# scenarios may change at will.
@pytest.fixture(scope="session")
def _dify_sim() -> Iterator[SimulatorHandle]:
    with running_simulator(SCENARIOS, **SIM_OPTIONS) as handle:
        yield handle


@pytest.fixture
def sim(_dify_sim: SimulatorHandle) -> Iterator[SimulatorHandle]:
    """The simulator with this package's scenarios, fresh for each test. After the test every
    request our client sent is checked against Dify's OpenAPI spec."""
    _dify_sim.reset()
    yield _dify_sim
    problems = []
    for exchange in _dify_sim.exchanges():
        if exchange.route == "unrouted":
            continue
        if exchange.fault and exchange.request_body is None and not exchange.request_parts:
            # An injected fault answered before the body was read: there is no body to check.
            continue
        problems += [f"{exchange.method} {exchange.route}: {p}" for p in validate_request(exchange)]
    assert not problems, "requests that break the spec:\n" + "\n".join(problems)


@pytest.fixture
def client(sim: SimulatorHandle) -> Iterator[DifyClient]:
    with DifyClient(sim.base_url, sim.api_key("client-review"), initial_retry_delay=0.01) as dify:
        yield dify


@pytest.fixture
def chat_client(sim: SimulatorHandle) -> Iterator[DifyClient]:
    with DifyClient(sim.base_url, sim.api_key("client-chat"), initial_retry_delay=0.01) as dify:
        yield dify


def async_client(sim: SimulatorHandle, app: str = "client-review") -> AsyncDifyClient:
    return AsyncDifyClient(sim.base_url, sim.api_key(app), initial_retry_delay=0.01)
