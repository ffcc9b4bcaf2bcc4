"""CONTRACT.md §2 and §6: the original stream, resume streams, snapshots, run detail and stop."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.simulator.streams import Stream, follow, submit

APP = "refund-approval"


def test_s2_a_pause_ends_the_original_stream_after_its_forms(simulator: Any) -> None:
    started = simulator.start_run(APP, user="u-1")
    assert started.event_names[0] == "workflow_started"
    assert started.event_names[-2:] == ["human_input_required", "workflow_paused"]
    assert "message_end" not in started.event_names
    paused = started.events[-1]["data"]
    assert paused["workflow_run_id"] == started.workflow_run_id
    assert paused["paused_nodes"] == ["manager_approval"]
    assert paused["outputs"] == {}  # blanked on live Service API streams (D10)
    (reason,) = paused["reasons"]
    assert reason["TYPE"] == "human_input_required"
    assert reason["form_token"] == started.forms[0]["form_token"]
    assert {e["task_id"] for e in started.events} == {started.task_id}


def test_s2_pause_reasons_can_use_the_newer_lowercase_key(simulator: Any) -> None:
    simulator.set_options(reason_type_key="type")
    started = simulator.start_run(APP)
    assert started.events[-1]["data"]["reasons"][0]["type"] == "human_input_required"


def test_s2_the_original_stream_pings_while_a_node_works(simulator: Any) -> None:
    simulator.set_options(time_scale=1.0, ping_interval=0.05)
    simulator.start_run(APP)
    (exchange,) = simulator.exchanges("workflows_run")
    assert exchange.pings >= 2  # the 0.2 s lookup and the text chunks take longer than 0.05 s


def test_s6_a_finished_run_streams_one_workflow_finished_whatever_the_flags(simulator: Any) -> None:
    started = simulator.start_run(APP, user="u-1")
    submit(
        simulator, APP, started.forms[0]["form_token"], {"decision_note": "ok"}, "approve", "u-1"
    )
    state = simulator.wait_for_status(started.workflow_run_id, "succeeded")
    for flags in (
        {},
        {"snapshot": True},
        {"continue_on_pause": True},
        {"snapshot": True, "continue_on_pause": True},
    ):
        stream = follow(simulator, APP, started.workflow_run_id, "u-1", **flags)
        assert stream.names == ["workflow_finished"]
        event = stream.events[0]
        assert event["task_id"] == started.workflow_run_id
        assert event["data"]["status"] == "succeeded"
        assert event["data"]["created_by"] == {
            "id": simulator.sim.runs[state["id"]].end_user.id,
            "user": "u-1",
        }
        assert stream.pings == 0


def test_s6_a_paused_run_without_snapshot_sends_pings_then_closes_when_idle(simulator: Any) -> None:
    simulator.set_options(idle_timeout=0.6, ping_interval=0.15)
    started = simulator.start_run(APP, user="u-1")
    stream = follow(simulator, APP, started.workflow_run_id, "u-1")
    assert stream.events == []  # nothing past is replayed
    # One ping at once, then every 0.15 s; pings do not keep the stream alive (D14).
    assert stream.pings >= 3
    assert 0.55 <= stream.closed_after < 3.0


def test_s6_a_resume_stream_carries_the_filled_form_then_the_rest_of_the_run(
    simulator: Any,
) -> None:
    started = simulator.start_run(APP, user="u-1")
    token = started.forms[0]["form_token"]

    def on_first_ping(stream: Stream) -> None:
        if stream.pings == 1:
            assert (
                submit(
                    simulator,
                    APP,
                    token,
                    {"decision_note": "Refund cleared, sorry again!"},
                    "reject",
                    "u-1",
                ).status_code
                == 200
            )

    stream = follow(simulator, APP, started.workflow_run_id, "u-1", on_ping=on_first_ping)
    assert stream.names[0] == "human_input_form_filled"
    filled = stream.events[0]["data"]
    assert filled["action_id"] == "reject"
    assert filled["action_text"] == "Reject"
    assert filled["node_id"] == "manager_approval"
    assert (
        "### Your note to the customer\nRefund cleared, sorry again!" in filled["rendered_content"]
    )
    assert "{{#$output" not in filled["rendered_content"]
    assert filled["submitted_data"] == {"decision_note": "Refund cleared, sorry again!"}
    assert "text_chunk" in stream.names  # the rejection email, written after the decision
    assert stream.names[-1] == "workflow_finished"
    finished = stream.events[-1]["data"]
    assert finished["status"] == "succeeded"
    assert finished["outputs"]["decision"] == "reject"
    # A resumed run gets a new task id.
    assert {e["task_id"] for e in stream.events} != {started.task_id}


def test_s6_without_continue_the_stream_closes_at_the_next_pause(simulator: Any) -> None:
    started = simulator.start_run("content-publish", user="u-1")

    def on_ping(stream: Stream) -> None:
        if stream.pings == 1:
            submit(
                simulator,
                "content-publish",
                started.forms[0]["form_token"],
                {"edits": "Tighten the intro."},
                "approve",
                "u-1",
            )

    stream = follow(simulator, "content-publish", started.workflow_run_id, "u-1", on_ping=on_ping)
    assert stream.names[-2:] == ["human_input_required", "workflow_paused"]
    legal = stream.events[-2]["data"]
    assert legal["node_id"] == "legal_check"
    assert legal["form_token"] not in (None, started.forms[0]["form_token"])
    assert "The editor said: Tighten the intro." in legal["form_content"]


def test_s6_continue_on_pause_keeps_the_stream_open_until_idle_even_after_the_end(
    simulator: Any,
) -> None:
    simulator.set_options(idle_timeout=0.8, ping_interval=0.2)
    app = "content-publish"
    started = simulator.start_run(app, user="u-1")
    answers = {
        "legal_check": ({"findings": "Fine."}, "cleared"),
        "publisher_signoff": ({"channel": "blog"}, "publish_now"),
    }
    finished_at: list[float] = []

    def on_event(event: dict[str, Any], stream: Stream) -> None:
        if event["event"] == "human_input_required":
            inputs, action = answers[event["data"]["node_id"]]
            assert (
                submit(
                    simulator, app, event["data"]["form_token"], inputs, action, "u-1"
                ).status_code
                == 200
            )
        if event["event"] == "workflow_finished":
            finished_at.append(time.monotonic())

    def on_ping(stream: Stream) -> None:
        if stream.pings == 1:
            submit(simulator, app, started.forms[0]["form_token"], {"edits": ""}, "approve", "u-1")

    stream = follow(
        simulator,
        app,
        started.workflow_run_id,
        "u-1",
        continue_on_pause=True,
        on_event=on_event,
        on_ping=on_ping,
    )
    assert stream.names.count("workflow_paused") == 2
    assert stream.names.count("human_input_form_filled") == 3
    assert "workflow_finished" in stream.names
    # Dify's empty terminal set (D13): the stream outlives workflow_finished until the idle close.
    assert stream.closed_at - finished_at[0] >= 0.7
    assert stream.events[-1]["event"] == "workflow_finished"
    outputs = stream.events[-1]["data"]["outputs"]
    assert outputs == {
        "editor": "approve",
        "legal": "cleared",
        "publisher": "publish_now",
        "channel": "blog",
    }


def test_s6_a_snapshot_replays_the_run_and_hands_out_a_fresh_token(simulator: Any) -> None:
    started = simulator.start_run(APP, user="u-1")
    stream = follow(simulator, APP, started.workflow_run_id, "u-1", snapshot=True)
    assert stream.names == [
        "workflow_started",
        "node_started", "node_finished",  # start
        "node_started", "node_finished",  # lookup_order
        "node_started", "node_finished",  # draft_summary
        "node_started",  # manager_approval, still waiting
        "human_input_required",
        "workflow_paused",
    ]  # fmt: skip
    for event in stream.all("node_finished"):
        assert event["data"]["inputs"] is None and event["data"]["outputs"] is None
    required = stream.first("human_input_required")["data"]
    original = started.forms[0]
    fresh = required["form_token"]
    assert required["form_id"] == original["form_id"]
    assert fresh not in (None, original["form_token"])
    assert stream.first("workflow_paused")["data"]["reasons"][0]["form_token"] == fresh
    with simulator.client(APP) as http:
        assert http.get(f"/form/human_input/{fresh}").status_code == 200
        assert http.get(f"/form/human_input/{original['form_token']}").status_code == 200
    assert submit(simulator, APP, fresh, {"decision_note": ""}, "approve", "u-1").status_code == 200
    assert (
        submit(
            simulator, APP, original["form_token"], {"decision_note": ""}, "approve", "u-1"
        ).status_code
        == 412
    )


def test_s6_a_snapshot_resolves_select_options_in_the_replayed_form(simulator: Any) -> None:
    started = simulator.start_run("contract-review", user="u-1")
    stream = follow(simulator, "contract-review", started.workflow_run_id, "u-1", snapshot=True)
    inputs = stream.first("human_input_required")["data"]["inputs"]
    reviewer = next(i for i in inputs if i["output_variable_name"] == "reviewer")
    assert reviewer["option_source"]["value"][0] == "Priya Raman (Commercial)"


def test_s6_a_snapshot_with_continue_follows_the_run_to_its_end(simulator: Any) -> None:
    started = simulator.start_run(APP, user="u-1")

    def on_event(event: dict[str, Any], stream: Stream) -> None:
        if event["event"] == "workflow_paused":
            token = stream.first("human_input_required")["data"]["form_token"]
            submit(simulator, APP, token, {"decision_note": "ok"}, "approve", "u-1")

    stream = follow(
        simulator,
        APP,
        started.workflow_run_id,
        "u-1",
        snapshot=True,
        continue_on_pause=True,
        on_event=on_event,
    )
    assert stream.names.index("workflow_paused") < stream.names.index("human_input_form_filled")
    assert stream.names[-1] == "workflow_finished"
    assert stream.events[-1]["data"]["outputs"]["refund"] == "RF-88231"


def test_s6_a_chatflow_snapshot_starts_with_the_answer_so_far(simulator: Any) -> None:
    started = simulator.start_run("support-chat", user="u-1", query="My parcel is a week late.")
    stream = follow(simulator, "support-chat", started.workflow_run_id, "u-1", snapshot=True)
    assert stream.names[:2] == ["workflow_started", "message_replace"]
    assert stream.events[1]["answer"].startswith("I'm sorry your delivery is late.")
    for event in stream.events:
        assert event["conversation_id"] == started.conversation_id
        assert event["message_id"] == started.message_id
        assert isinstance(event["created_at"], int)


def test_s6_run_detail_tracks_the_run(simulator: Any) -> None:
    started = simulator.start_run(APP, user="u-1")
    with simulator.client(APP) as http:
        paused = http.get(f"/workflows/run/{started.workflow_run_id}").json()
        assert paused["status"] == "paused"
        assert paused["finished_at"] is None
        assert paused["outputs"] == {}
        assert '"customer_name": "Ada Lovelace"' in paused["inputs"]  # a JSON string
        submit(
            simulator,
            APP,
            started.forms[0]["form_token"],
            {"decision_note": "ok"},
            "approve",
            "u-1",
        )
        simulator.wait_for_status(started.workflow_run_id, "succeeded")
        done = http.get(f"/workflows/run/{started.workflow_run_id}").json()
    assert done["status"] == "succeeded"
    assert done["outputs"]["decision"] == "approve"
    assert done["total_steps"] == 6
    assert done["finished_at"] >= done["created_at"]


def test_s6_stop_ends_a_working_run_and_leaves_a_paused_one(simulator: Any) -> None:
    simulator.set_options(time_scale=5.0)  # the lookup now takes a second
    with simulator.client(APP) as http:
        with http.stream(
            "POST",
            "/workflows/run",
            json={
                "inputs": {"customer_name": "A", "order_id": "1", "amount": 1, "reason": "r"},
                "user": "u-1",
                "response_mode": "streaming",
            },
        ) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            task_id = json.loads(first[5:])["task_id"]
            run_id = json.loads(first[5:])["workflow_run_id"]
            assert http.post(
                f"/workflows/tasks/{task_id}/stop", json={"user": "anyone"}
            ).json() == {"result": "success"}
            rest = [line for line in lines if line.startswith("data:")]
        assert '"status": "stopped"' in rest[-1]
        assert simulator.run(run_id)["status"] == "stopped"
        simulator.set_options(time_scale=0.0)
        paused = simulator.start_run(APP, user="u-1")
        assert http.post(
            f"/workflows/tasks/{paused.task_id}/stop", json={"user": "u-1"}
        ).json() == {"result": "success"}
        assert simulator.run(paused.workflow_run_id)["status"] == "paused"
        assert http.post("/workflows/tasks/no-such-task/stop", json={"user": "u-1"}).json() == {
            "result": "success"
        }


def test_s6_chat_stop_from_another_user_does_nothing(simulator: Any) -> None:
    simulator.set_options(time_scale=5.0)
    with simulator.client("support-chat") as http:
        with http.stream(
            "POST",
            "/chat-messages",
            json={
                "inputs": {},
                "query": "Late parcel",
                "user": "u-1",
                "response_mode": "streaming",
            },
        ) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            event = json.loads(first[5:])
            assert http.post(
                f"/chat-messages/{event['task_id']}/stop", json={"user": "u-2"}
            ).json() == {"result": "success"}
            assert simulator.run(event["workflow_run_id"])["status"] == "running"
            assert http.post(
                f"/chat-messages/{event['task_id']}/stop", json={"user": "u-1"}
            ).json() == {"result": "success"}
            names = [json.loads(line[5:])["event"] for line in lines if line.startswith("data:")]
        assert names[-2:] == ["message_end", "workflow_finished"]
        assert simulator.run(event["workflow_run_id"])["status"] == "stopped"


@pytest.mark.parametrize("snapshot", [False, True])
def test_s6_a_stream_opened_after_the_end_of_a_failed_run_reports_it(
    simulator: Any, snapshot: bool
) -> None:
    started = simulator.start_run("invoice-sync", user="u-1")
    submit(
        simulator,
        "invoice-sync",
        started.forms[0]["form_token"],
        {"booking_note": ""},
        "post",
        "u-1",
    )
    simulator.wait_for_status(started.workflow_run_id, "failed")
    stream = follow(simulator, "invoice-sync", started.workflow_run_id, "u-1", snapshot=snapshot)
    assert stream.names == ["workflow_finished"]
    assert stream.events[0]["data"]["error"] == "ERP returned 503: posting period 2025-11 is locked"
