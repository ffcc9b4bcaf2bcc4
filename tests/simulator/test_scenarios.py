"""Each shipped scenario end to end over real HTTP, requests and answers checked against the spec."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from inbox.simulator.scenarios import ScenarioError, load_dir, parse_app
from tests.openapi_check import assert_exchanges_valid
from tests.simulator.conftest import pdf_bytes
from tests.simulator.streams import Stream, follow, submit

EXPECTED_APPS = {
    "refund-approval": ("app-sim-approval", "workflow"),
    "contract-review": ("app-sim-contract", "workflow"),
    "content-publish": ("app-sim-publish", "workflow"),
    "vendor-onboarding": ("app-sim-parallel", "workflow"),
    "support-chat": ("app-sim-chat", "advanced-chat"),
    "expense-email": ("app-sim-email", "workflow"),
    "access-request": ("app-sim-timeout", "workflow"),
    "invoice-sync": ("app-sim-failing", "workflow"),
    "faq-bot": ("app-sim-chatbot", "chat"),
    "claim-review": ("app-sim-claims", "workflow"),
    "document-intake": ("app-sim-documents", "workflow"),
}


@pytest.fixture
def sim(simulator: Any) -> Iterator[Any]:
    """The simulator; every request these tests send is well formed, so requests are checked too."""
    yield simulator
    assert_exchanges_valid(simulator.exchanges())


def test_the_demo_apps_have_their_documented_keys() -> None:
    apps = load_dir()
    assert {name: (app.api_key, app.mode) for name, app in apps.items()} == EXPECTED_APPS


def test_refund_approval_approved(sim: Any) -> None:
    started = sim.start_run("refund-approval", user="u-1")
    form = started.form("manager_approval")
    assert form["inputs"] == [
        {
            "type": "paragraph",
            "output_variable_name": "decision_note",
            "default": {
                "type": "constant",
                "selector": [],
                "value": "Thank you for your patience.",
            },
        }
    ]
    assert [a["id"] for a in form["actions"]] == ["approve", "reject"]
    text = "".join(e["data"]["text"] for e in started.events if e["event"] == "text_chunk")
    assert text.startswith("Ada Lovelace asks for a refund of EUR 249.9 on order SO-104233")
    assert (
        submit(
            sim,
            "refund-approval",
            form["form_token"],
            {"decision_note": "Approved."},
            "approve",
            "u-1",
        ).status_code
        == 200
    )
    state = sim.wait_for_status(started.workflow_run_id, "succeeded")
    assert state["outputs"] == {"decision": "approve", "note": "Approved.", "refund": "RF-88231"}


def test_contract_review_with_every_input_kind(sim: Any) -> None:
    started = sim.start_run("contract-review", user="u-1")
    token = started.form("legal_review")["form_token"]
    with sim.client("contract-review") as http:
        definition = http.get(f"/form/human_input/{token}").json()
        assert {i["type"] for i in definition["inputs"]} == {
            "paragraph",
            "select",
            "file",
            "file-list",
        }
        reviewers = next(
            i for i in definition["inputs"] if i["output_variable_name"] == "reviewer"
        )["option_source"]["value"]
        pdf = http.post(
            "/files/upload",
            files={"file": ("signed.pdf", pdf_bytes(), "application/pdf")},
            data={"user": "u-1"},
        ).json()
        note = http.post(
            "/files/upload",
            files={"file": ("annex-notes.md", b"# Annex", "text/markdown")},
            data={"user": "u-1"},
        ).json()
        scan = http.post(
            "/files/upload",
            files={"file": ("stamp.png", b"\x89PNG\r\n", "image/png")},
            data={"user": "u-1"},
        ).json()
        inputs = {
            "assessment": definition["resolved_default_values"]["assessment"],
            "reviewer": reviewers[1],
            "risk_level": "medium",
            "signed_contract": {
                "transfer_method": "local_file",
                "upload_file_id": pdf["id"],
                "type": "document",
            },
            "annexes": [
                {"transfer_method": "local_file", "upload_file_id": note["id"], "type": "document"},
                {"transfer_method": "local_file", "upload_file_id": scan["id"], "type": "image"},
                {
                    "transfer_method": "remote_url",
                    "url": "https://files.example.com/dpa.pdf",
                    "type": "document",
                },
            ],
        }
        response = http.post(
            f"/form/human_input/{token}",
            json={"inputs": inputs, "action": "request_changes", "user": "u-1"},
        )
    assert response.status_code == 200
    sim.wait_for_status(started.workflow_run_id, "succeeded")
    stream = Stream(events=sim.run_events(started.workflow_run_id))
    filled = stream.first("human_input_form_filled")["data"]
    assert "**Responsible reviewer:** Jonas Weber (Privacy)" in filled["rendered_content"]
    assert "[file]" in filled["rendered_content"]
    assert "[3 files]" in filled["rendered_content"]
    assert any(
        e["event"] == "node_started" and e["data"]["node_id"] == "draft_redlines"
        for e in stream.events
    )
    outputs = stream.events[-1]["data"]["outputs"]
    assert outputs["decision"] == "request_changes"
    assert outputs["signed_contract"]["upload_file_id"] == pdf["id"]
    assert len(outputs["annexes"]) == 3


def test_content_publish_pauses_three_times_with_a_new_token_each_time(sim: Any) -> None:
    app = "content-publish"
    started = sim.start_run(app, user="u-1")
    tokens = [started.form("editor_review")["form_token"]]
    steps = [
        ({"edits": "Shorter title."}, "approve"),
        ({"findings": "No issues found."}, "cleared"),
        ({"channel": "newsletter"}, "schedule"),
    ]
    for number, (inputs, action) in enumerate(steps):
        assert submit(sim, app, tokens[-1], inputs, action, "u-1").status_code == 200
        if number < 2:
            sim.wait_for(
                lambda n=number: (
                    sim.run(started.workflow_run_id)["status"] == "paused"
                    and len(sim.run(started.workflow_run_id)["forms"]) == n + 2
                )
            )
            stream = follow(sim, app, started.workflow_run_id, "u-1", snapshot=True)
            tokens.append(stream.first("human_input_required")["data"]["form_token"])
    assert len(set(tokens)) == 3
    state = sim.wait_for_status(started.workflow_run_id, "succeeded")
    assert state["outputs"] == {
        "editor": "approve",
        "legal": "cleared",
        "publisher": "schedule",
        "channel": "newsletter",
    }


def test_vendor_onboarding_pauses_once_for_two_parallel_forms(sim: Any) -> None:
    app = "vendor-onboarding"
    started = sim.start_run(app, user="u-1")
    assert started.event_names.count("workflow_paused") == 1
    assert sorted(f["node_id"] for f in started.forms) == ["finance_review", "security_review"]
    assert sorted(started.events[-1]["data"]["paused_nodes"]) == [
        "finance_review",
        "security_review",
    ]
    security = started.form("security_review")
    finance = started.form("finance_review")

    def on_ping(stream: Stream) -> None:
        if stream.pings == 1:
            submit(
                sim,
                app,
                security["form_token"],
                {"security_notes": "SOC 2 report reviewed."},
                "pass",
                "u-1",
            )

    stream = follow(sim, app, started.workflow_run_id, "u-1", on_ping=on_ping)
    # One form answered: the run pauses again on the other, with the same form and token.
    assert stream.names == [
        "human_input_form_filled",
        "node_finished",
        "human_input_required",
        "workflow_paused",
    ]
    assert stream.events[2]["data"]["form_id"] == finance["form_id"]
    assert stream.events[2]["data"]["form_token"] == finance["form_token"]
    assert stream.events[-1]["data"]["paused_nodes"] == ["finance_review"]
    assert (
        submit(
            sim,
            app,
            finance["form_token"],
            {"approved_budget": "60000", "cost_centre": "CC-220 Data"},
            "approve",
            "u-1",
        ).status_code
        == 200
    )
    state = sim.wait_for_status(started.workflow_run_id, "succeeded")
    assert state["outputs"] == {
        "security": "pass",
        "finance": "approve",
        "cost_centre": "CC-220 Data",
        "approved_budget": "60000",
    }


def test_support_chat_is_a_chatflow_with_messages_and_one_conversation(sim: Any) -> None:
    app = "support-chat"
    started = sim.start_run(app, user="u-1", query="My order #4411 is a week late.")
    assert "message" in started.event_names
    for event in started.events:
        assert event["conversation_id"] == started.conversation_id
        assert event["message_id"] == started.message_id
        assert isinstance(event["created_at"], int)
    form = started.form("agent_approval")
    assert "> My order #4411 is a week late." in form["form_content"]

    def on_ping(stream: Stream) -> None:
        if stream.pings == 1:
            submit(
                sim,
                app,
                form["form_token"],
                {"agent_message": "Done: EUR 15 credited."},
                "grant",
                "u-1",
            )

    stream = follow(sim, app, started.workflow_run_id, "u-1", on_ping=on_ping)
    assert stream.names[0] == "human_input_form_filled"
    assert stream.names[-2:] == ["message_end", "workflow_finished"]
    answer = "".join(e["answer"] for e in stream.all("message"))
    assert answer.strip() == "Done: EUR 15 credited."
    with sim.client(app) as http:
        second = http.post(
            "/chat-messages",
            json={
                "inputs": {},
                "query": "Thanks!",
                "user": "u-1",
                "conversation_id": started.conversation_id,
                "response_mode": "blocking",
            },
        ).json()
    assert second["conversation_id"] == started.conversation_id
    assert second["message_id"] != started.message_id


def test_faq_bot_is_a_plain_chat_app(sim: Any) -> None:
    with (
        sim.client("faq-bot") as http,
        http.stream(
            "POST",
            "/chat-messages",
            json={"inputs": {}, "query": "Returns?", "user": "u", "response_mode": "streaming"},
        ) as response,
    ):
        body = response.read().decode()
    assert '"event": "message"' in body and '"event": "message_end"' in body


def test_expense_email_has_no_token_and_finishes_when_answered_by_email(sim: Any) -> None:
    started = sim.start_run("expense-email", user="u-1")
    form = started.form("owner_approval")
    assert form["form_token"] is None
    assert form["approval_channels"] == ["email"]
    assert started.events[-1]["data"]["reasons"][0]["form_token"] is None
    assert sim.submit_elsewhere(form["form_id"], "approve", {"comment": "Fine this once."})
    state = sim.wait_for_status(started.workflow_run_id, "succeeded")
    assert state["outputs"] == {"decision": "approve"}


def test_access_request_expires_into_its_timeout_branch(sim: Any) -> None:
    # The two-minute window becomes 2.5 s: time enough for the stream below to be open first,
    # on a loaded machine too.
    sim.set_options(timeout_scale=1 / 48)
    app = "access-request"
    started = sim.start_run(app, user="u-1")
    owner = started.form("owner_approval")
    stream = follow(sim, app, started.workflow_run_id, "u-1")
    assert stream.names[0] == "human_input_form_timeout"
    assert stream.events[0]["data"] == {
        "node_id": "owner_approval",
        "node_title": "Data owner approval",
        "expiration_time": owner["expiration_time"],
    }
    assert [e["data"]["node_id"] for e in stream.all("node_started")] == [
        "escalate",
        "on_call_approval",
    ]
    assert stream.names[-1] == "workflow_paused"
    with sim.client(app) as http:
        assert (
            http.get(f"/form/human_input/{owner['form_token']}").json()["code"]
            == "human_input_form_expired"
        )
    on_call = stream.first("human_input_required")["data"]
    assert on_call["inputs"] == []
    assert submit(sim, app, on_call["form_token"], {}, "grant", "u-1").status_code == 200
    state = sim.wait_for_status(started.workflow_run_id, "succeeded")
    assert state["outputs"] == {
        "owner_decision": "__timeout",  # the timeout edge's handle
        "on_call_decision": "grant",
        "grant_id": "GR-5521",
    }


def test_a_timeout_with_no_branch_ends_the_run(sim: Any) -> None:
    started = sim.start_run("access-request", user="u-1")
    sim.expire_form(started.form("owner_approval")["form_id"])
    sim.wait_for(
        lambda: (
            sim.run(started.workflow_run_id)["status"] == "paused"
            and len(sim.run(started.workflow_run_id)["forms"]) == 2
        )
    )
    on_call = sim.run(started.workflow_run_id)["forms"][1]
    sim.expire_form(on_call["form_id"])
    state = sim.wait_for_status(started.workflow_run_id, "succeeded")
    assert state["outputs"] == {}  # the End node was never reached
    assert state["events"][-2:] == ["node_finished", "workflow_finished"]


def test_invoice_sync_fails_after_approval(sim: Any) -> None:
    started = sim.start_run("invoice-sync", user="u-1")

    def on_ping(stream: Stream) -> None:
        if stream.pings == 1:
            submit(
                sim,
                "invoice-sync",
                started.forms[0]["form_token"],
                {"booking_note": "Q4 accrual"},
                "post",
                "u-1",
            )

    stream = follow(sim, "invoice-sync", started.workflow_run_id, "u-1", on_ping=on_ping)
    failed_node = stream.all("node_finished")[-1]["data"]
    assert (failed_node["node_id"], failed_node["status"]) == ("post_to_erp", "failed")
    assert failed_node["error"] == "ERP returned 503: posting period 2025-11 is locked"
    finished = stream.events[-1]["data"]
    assert (finished["status"], finished["error"]) == (
        "failed",
        "ERP returned 503: posting period 2025-11 is locked",
    )
    with sim.client("invoice-sync") as http:
        assert http.get(f"/workflows/run/{started.workflow_run_id}").json()["status"] == "failed"


def test_invoice_sync_on_hold_succeeds(sim: Any) -> None:
    started = sim.start_run("invoice-sync", user="u-1")
    submit(sim, "invoice-sync", started.forms[0]["form_token"], {"booking_note": ""}, "hold", "u-1")
    assert sim.wait_for_status(started.workflow_run_id, "succeeded")["outputs"] == {
        "status": "on hold"
    }


def test_a_failed_chatflow_ends_with_workflow_finished_then_error(sim: Any, tmp_path: Any) -> None:
    (tmp_path / "broken.yaml").write_text(
        "app: {name: broken-chat, api_key: app-test-broken, mode: chatflow}\n"
        "flow: [reply, crash]\n"
        "nodes:\n"
        "  reply: {type: answer, title: Reply, text: Checking your order}\n"
        "  crash: {type: tool, title: Order API, fail: Order API timed out}\n"
    )
    from inbox.simulator.testing import running_simulator

    with running_simulator(tmp_path, time_scale=0) as other:
        started = other.start_run("broken-chat", {}, user="u-1")
        assert started.event_names[-2:] == ["workflow_finished", "error"]
        assert started.events[-1]["message"] == "Order API timed out"
        assert "message_end" not in started.event_names
        assert_exchanges_valid(other.exchanges())


def test_start_inputs_appear_in_parameters(sim: Any) -> None:
    with sim.client("refund-approval") as http:
        form = http.get("/parameters").json()["user_input_form"]
    assert [next(iter(item)) for item in form] == [
        "text-input",
        "text-input",
        "number",
        "paragraph",
        "select",
        "checkbox",
    ]
    assert form[4]["select"]["options"] == ["email", "phone", "chat"]
    assert form[0]["text-input"] == {
        "label": "Customer name",
        "variable": "customer_name",
        "required": True,
        "default": "Ada Lovelace",
        "max_length": 80,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("app: {name: x, api_key: k}\nflow: [missing]\n", "unknown node 'missing'"),
        (
            "app: {name: x, api_key: k}\nflow: [f]\nnodes:\n  f: {type: human-input, content: c, actions: [{id: 9bad, title: T}]}\n",
            "'9bad' is not a valid action id",
        ),
        (
            "app: {name: x, api_key: k}\nflow: [f]\nnodes:\n  f: {type: human-input, content: c, actions: [{id: ok, title: T}], inputs: [{type: file, output_variable_name: f, allowed_file_types: [custom]}]}\n",
            "allowed_file_extensions must be set when allowed_file_types is custom",
        ),
        ("app: {name: x, api_key: k, mode: agent}\n", "must be workflow, chatflow or chat"),
    ],
)
def test_a_broken_scenario_is_refused_with_its_place(text: str, message: str) -> None:
    import yaml

    with pytest.raises(ScenarioError, match=message):
        parse_app(yaml.safe_load(text), "broken.yaml")
