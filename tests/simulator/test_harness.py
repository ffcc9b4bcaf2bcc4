"""The test harness others build on: the fixtures, the handle, and the spec check itself."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

from inbox.models import DifyApp
from inbox.simulator.testing import running_simulator
from tests.openapi_check import SPEC_EXCEPTIONS, assert_exchanges_valid, validate_event


def test_the_fixture_serves_every_scenario_app_over_http(simulator: Any) -> None:
    assert simulator.base_url.endswith("/v1")
    for name, app in simulator.apps.items():
        response = httpx.get(f"{simulator.base_url}/info", headers=simulator.headers(name))
        assert response.status_code == 200
        assert response.json()["name"] == name
        assert response.json()["mode"] == app.mode


def test_api_key_is_the_default_apps_key_and_callable_per_app(simulator: Any) -> None:
    assert simulator.api_key == "app-sim-approval"
    assert simulator.api_key("support-chat") == "app-sim-chat"
    with pytest.raises(KeyError, match="no simulator app named"):
        simulator.api_key("no-such-app")


def test_dify_app_fixture_points_a_row_at_the_simulator(simulator_dify_app: Any) -> None:
    app = simulator_dify_app("support-chat")
    stored = DifyApp.objects.get(pk=app.pk)
    assert stored.base_url == app.base_url
    assert stored.api_key == "app-sim-chat"
    assert stored.mode == "chatflow"


def test_reset_forgets_runs_counts_faults_and_options(simulator: Any) -> None:
    started = simulator.start_run("refund-approval")
    simulator.add_fault("status", "info", times=None)
    simulator.set_options(ping_interval=0.1)
    assert simulator.request_count("workflows_run") == 1
    simulator.reset()
    assert simulator.request_count("workflows_run") == 0
    assert simulator.stats()["submit_attempts"] == {}
    with pytest.raises(KeyError):
        simulator.run(started.workflow_run_id)
    assert httpx.get(f"{simulator.base_url}/info", headers=simulator.headers()).status_code == 200
    assert simulator.sim.options.ping_interval == 1.0


def test_a_separate_simulator_runs_with_its_own_options(tmp_path: Any) -> None:
    with running_simulator(ping_interval=0.2, record=False) as other:
        assert other.sim.options.ping_interval == 0.2
        assert other.stats()["requests"] == {}
        other.start_run("refund-approval")
        assert other.exchanges() == []


def test_the_spec_check_rejects_an_event_that_breaks_the_schema() -> None:
    good = {
        "event": "text_chunk",
        "task_id": "5ad4cb98-f0c7-4085-b384-88c403be6290",
        "workflow_run_id": "5ad4cb98-f0c7-4085-b384-88c403be6291",
        "data": {"text": "Hello", "from_variable_selector": ["llm", "text"]},
    }
    assert validate_event(good, "workflow") == []
    assert validate_event({**good, "task_id": "not-a-uuid"}, "workflow")
    assert validate_event({**good, "data": {"text": 5}}, "workflow")
    assert validate_event({**good, "event": "message"}, "workflow")  # a chat event
    paused = {
        "event": "workflow_paused",
        "task_id": good["task_id"],
        "workflow_run_id": good["workflow_run_id"],
        "data": {"paused_nodes": "approval"},
    }
    assert validate_event(paused, "workflow")


def test_the_spec_check_rejects_a_recorded_answer_off_the_spec(simulator: Any) -> None:
    httpx.get(f"{simulator.base_url}/info", headers=simulator.headers())
    (recorded,) = simulator.exchanges("info")
    assert_exchanges_valid([recorded])
    exchange = copy.copy(recorded)  # the fixture checks the real one afterwards
    exchange.response_body = b'{"name": 5}'
    with pytest.raises(AssertionError, match="spec violations"):
        assert_exchanges_valid([exchange])
    exchange.status = 404
    exchange.response_body = b'{"message": "no code"}'
    with pytest.raises(AssertionError, match="spec violations"):
        assert_exchanges_valid([exchange])


def test_every_spec_exception_says_why() -> None:
    assert len(SPEC_EXCEPTIONS) >= 4
    for exception in SPEC_EXCEPTIONS:
        assert len(exception.reason) > 60, exception.name
