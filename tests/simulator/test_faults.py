"""Fault injection, in process and through the `/_sim` control API."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.simulator.conftest import pdf_bytes
from tests.simulator.streams import follow, submit

APP = "refund-approval"


def test_a_status_fault_answers_k_requests_of_a_route_then_stops(simulator: Any) -> None:
    simulator.add_fault("status", "form_submit", times=2, status=503)
    started = simulator.start_run(APP, user="u-1")
    token = started.forms[0]["form_token"]
    first = submit(simulator, APP, token, {"decision_note": ""}, "approve", "u-1")
    assert (first.status_code, first.json()["code"]) == (503, "service_unavailable")
    assert submit(simulator, APP, token, {"decision_note": ""}, "approve", "u-1").status_code == 503
    assert submit(simulator, APP, token, {"decision_note": ""}, "approve", "u-1").status_code == 200
    # The injected answers never reached the form.
    assert simulator.submit_count(started.forms[0]["form_id"]) == 1
    assert simulator.request_count("form_submit") == 3


def test_a_429_carries_retry_after(simulator: Any) -> None:
    simulator.add_fault("status", "workflows_run", status=429, retry_after=7)
    with simulator.client(APP) as http:
        response = http.post("/workflows/run", json={"inputs": {}, "user": "u"})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json() == {
        "status": 429,
        "code": "too_many_requests",
        "message": "Too many requests. Please try again later.",
    }


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "bad_request"),
        (404, "not_found"),
        (409, "conflict"),
        (422, "unprocessable_entity"),
        (418, "bad_request"),
        (500, "internal_server_error"),
        (503, "service_unavailable"),
        (599, "internal_server_error"),
    ],
)
def test_a_status_fault_gives_the_code_dify_gives_its_status(
    simulator: Any, status: int, code: str
) -> None:
    simulator.add_fault("status", "info", status=status)
    with simulator.client(APP) as http:
        response = http.get("/info")
    assert response.status_code == status
    assert response.json()["code"] == code
    assert response.json()["status"] == status


def test_a_status_fault_may_give_a_code_that_says_otherwise(simulator: Any) -> None:
    simulator.add_fault("status", "info", status=422, code="internal_server_error")
    with simulator.client(APP) as http:
        response = http.get("/info")
    assert (response.status_code, response.json()["code"]) == (422, "internal_server_error")


def test_a_fault_can_target_one_app(simulator: Any) -> None:
    simulator.add_fault("status", "info", app="content-publish", times=None, status=500)
    with simulator.client("content-publish") as http:
        assert http.get("/info").status_code == 500
        assert http.get("/info").status_code == 500
    with simulator.client(APP) as http:
        assert http.get("/info").status_code == 200
    simulator.clear_faults()
    with simulator.client("content-publish") as http:
        assert http.get("/info").status_code == 200


def test_a_fault_can_target_one_run(simulator: Any) -> None:
    broken = simulator.start_run(APP, user="u-1").workflow_run_id
    other = simulator.start_run(APP, user="u-1").workflow_run_id
    simulator.add_fault("status", "workflow_run_detail", run=broken, times=None, status=500)
    with simulator.client(APP) as http:
        assert http.get(f"/workflows/run/{broken}").status_code == 500
        assert http.get(f"/workflows/run/{other}").status_code == 200
        assert http.get("/info").status_code == 200
    with httpx.Client(base_url=simulator.root_url) as control:
        added = control.post(
            "/_sim/faults", json={"kind": "status", "route": "*", "run": other, "status": 502}
        )
        assert added.json()[0]["run"] == other
    with simulator.client(APP) as http:
        assert http.get(f"/workflows/run/{other}").status_code == 502
        assert http.get(f"/workflows/run/{other}").status_code == 200


def test_a_fault_can_target_one_form(simulator: Any) -> None:
    broken = simulator.start_run(APP, user="u-1").forms[0]
    other = simulator.start_run(APP, user="u-1").forms[0]
    simulator.add_fault("status", "form_get", form=broken["form_id"], times=None, status=500)
    with simulator.client(APP) as http:
        assert http.get(f"/form/human_input/{broken['form_token']}").status_code == 500
        assert http.get(f"/form/human_input/{other['form_token']}").status_code == 200
        assert http.get("/info").status_code == 200
    with httpx.Client(base_url=simulator.root_url) as control:
        added = control.post(
            "/_sim/faults",
            json={"kind": "status", "route": "*", "form": other["form_id"], "status": 502},
        )
        assert added.json()[0]["form"] == other["form_id"]

    def answer(form: dict[str, Any]) -> int:
        response = submit(
            simulator, APP, form["form_token"], {"decision_note": ""}, "approve", "u-1"
        )
        return response.status_code

    assert answer(other) == 502
    assert answer(other) == 200
    # The first fault is on the form's GET only.
    assert answer(broken) == 200


def test_one_request_can_carry_its_own_fault(simulator: Any) -> None:
    with simulator.client(APP) as http:
        assert (
            http.get("/info", headers={"X-Sim-Fault": "kind=status&status=502"}).status_code == 502
        )
        assert http.get("/info").status_code == 200
        assert (
            http.get("/info", headers={"X-Sim-Fault": "kind=explode"}).json()["code"]
            == "bad_request"
        )


def test_a_delay_fault_holds_the_answer(simulator: Any) -> None:
    fault = simulator.add_fault("delay", "info", delay=0.4)
    with simulator.client(APP) as http:
        started = time.monotonic()
        assert http.get("/info").status_code == 200
        assert time.monotonic() - started >= 0.4
        # Used up: the next request is not held (said by the fault book, not by a stopwatch,
        # which a loaded machine can hold up as long as the fault did).
        assert http.get("/info").status_code == 200
    assert fault.used == 1
    assert simulator.call(lambda: list(simulator.sim.faults.faults)) == []


def test_a_dropped_start_stream_leaves_the_run_going_and_a_snapshot_recovers_the_token(
    simulator: Any,
) -> None:
    simulator.add_fault("drop_stream", "workflows_run", after_events=3)
    received: list[str] = []
    with simulator.client(APP) as http, pytest.raises(httpx.RemoteProtocolError):
        with http.stream(
            "POST",
            "/workflows/run",
            json={
                "inputs": {"customer_name": "A", "order_id": "1", "amount": 1, "reason": "r"},
                "user": "u-1",
                "response_mode": "streaming",
            },
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    received.append(line)
    assert len(received) == 3
    (exchange,) = simulator.exchanges("workflows_run")
    assert (exchange.fault, exchange.completed) == ("drop_stream", False)
    run_id = exchange.events[0]["workflow_run_id"]
    simulator.wait_for_status(run_id, "paused")
    stream = follow(simulator, APP, run_id, "u-1", snapshot=True)
    token = stream.first("human_input_required")["data"]["form_token"]
    assert submit(simulator, APP, token, {"decision_note": ""}, "approve", "u-1").status_code == 200


def test_a_dropped_resume_stream(simulator: Any) -> None:
    started = simulator.start_run(APP, user="u-1")
    simulator.add_fault("drop_stream", "workflow_events", after_events=0)
    with simulator.client(APP) as http, pytest.raises(httpx.RemoteProtocolError):
        with http.stream(
            "GET",
            f"/workflow/{started.workflow_run_id}/events",
            params={"user": "u-1", "include_state_snapshot": "true"},
        ) as response:
            response.read()
    assert (
        follow(simulator, APP, started.workflow_run_id, "u-1", snapshot=True).names[-1]
        == "workflow_paused"
    )


def test_a_stream_error_event_ends_the_stream(simulator: Any) -> None:
    simulator.add_fault(
        "stream_error",
        "workflows_run",
        after_events=2,
        status=400,
        code="completion_request_error",
        message="Completion request failed.",
    )
    with simulator.client(APP) as http:
        body = http.post(
            "/workflows/run",
            json={
                "inputs": {"customer_name": "A", "order_id": "1", "amount": 1, "reason": "r"},
                "user": "u-1",
                "response_mode": "streaming",
            },
        )
    events = [line for line in body.text.split("\n") if line.startswith("data:")]
    assert len(events) == 3
    assert '"event": "error"' in events[-1] and '"code": "completion_request_error"' in events[-1]


def test_a_stream_error_after_no_events_is_the_stream_s_only_event(simulator: Any) -> None:
    simulator.add_fault("stream_error", "workflows_run", after_events=0, status=500)
    with simulator.client(APP) as http:
        body = http.post(
            "/workflows/run",
            json={
                "inputs": {"customer_name": "A", "order_id": "1", "amount": 1, "reason": "r"},
                "user": "u-1",
                "response_mode": "streaming",
            },
        )
    events = [line for line in body.text.split("\n") if line.startswith("data:")]
    assert len(events) == 1
    assert '"event": "error"' in events[0] and '"code": "internal_server_error"' in events[0]


def test_a_connection_cut_mid_upload_stores_nothing(simulator: Any) -> None:
    simulator.add_fault("close_upload", "files_upload", after_bytes=256 * 1024)
    payload = pdf_bytes(4 * 1024 * 1024)
    with simulator.client(APP) as http:
        with pytest.raises(httpx.TransportError):
            http.post(
                "/files/upload",
                files={"file": ("big.pdf", payload, "application/pdf")},
                data={"user": "u"},
            )
        assert simulator.uploads() == []
        again = http.post(
            "/files/upload",
            files={"file": ("big.pdf", payload, "application/pdf")},
            data={"user": "u"},
        )
    assert again.status_code == 201
    assert again.json()["size"] == len(payload)


def test_a_submit_that_counted_although_the_answer_was_lost(simulator: Any) -> None:
    started = simulator.start_run(APP, user="u-1")
    form = started.forms[0]
    simulator.add_fault("drop_after_submit", "form_submit")
    with pytest.raises(httpx.TransportError):
        submit(simulator, APP, form["form_token"], {"decision_note": "first try"}, "approve", "u-1")
    assert simulator.submits_applied(form["form_id"]) == 1
    retry = submit(simulator, APP, form["form_token"], {"decision_note": "retry"}, "approve", "u-1")
    assert retry.json()["code"] == "human_input_form_submitted"
    state = simulator.wait_for_status(started.workflow_run_id, "succeeded")
    assert state["outputs"]["note"] == "first try"


def test_the_control_api(simulator: Any) -> None:
    root = simulator.root_url
    with httpx.Client(base_url=root) as control:
        assert control.get("/_sim/health").json() == {"ok": True}
        apps = {a["name"]: a["api_key"] for a in control.get("/_sim/apps").json()}
        assert apps["refund-approval"] == "app-sim-approval"
        added = control.post(
            "/_sim/faults", json={"kind": "status", "route": "info", "status": 500, "times": 1}
        )
        assert added.status_code == 201
        assert control.get("/_sim/faults").json()[0]["status"] == 500
        assert control.post("/_sim/faults", json={"kind": "nonsense"}).status_code == 400
        assert (
            control.post("/_sim/faults", json={"kind": "status", "route": "nowhere"}).status_code
            == 400
        )
        with simulator.client(APP) as http:
            assert http.get("/info").status_code == 500
        stats = control.get("/_sim/stats").json()
        assert stats["requests"]["info"] == 1

        started = simulator.start_run(APP, user="u-1")
        run = control.get(f"/_sim/runs/{started.workflow_run_id}").json()
        assert run["status"] == "paused"
        form_id = run["forms"][0]["form_id"]
        assert (
            control.post(f"/_sim/forms/{form_id}/submit", json={"action": "nope"}).status_code
            == 400
        )
        assert control.post(
            f"/_sim/forms/{form_id}/submit",
            json={"action": "approve", "inputs": {"decision_note": "by email"}},
        ).json() == {"ok": True}
        assert control.post(f"/_sim/forms/{form_id}/expire").status_code == 409  # already answered
        simulator.wait_for_status(started.workflow_run_id, "succeeded")
        assert control.get("/_sim/stats").json()["submits_applied"] == {form_id: 1}

        other = simulator.start_run(APP, user="u-2")
        other_form = other.forms[0]["form_id"]
        assert control.post(f"/_sim/forms/{other_form}/expire").json() == {"ok": True}
        assert simulator.wait_for_status(other.workflow_run_id, "succeeded")

        assert (
            control.post("/_sim/options", json={"ping_interval": 0.5}).json()["ping_interval"]
            == 0.5
        )
        assert control.post("/_sim/options", json={"no_such_option": 1}).status_code == 400
        assert len(control.get("/_sim/records").json()) >= 3
        assert control.post("/_sim/reset").json() == {"ok": True}
        assert control.get("/_sim/stats").json()["requests"] == {}
        assert control.get("/_sim/runs").json() == []
