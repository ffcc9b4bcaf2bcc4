"""CONTRACT.md §1 to §5 rule by rule: for each, the simulator gives Dify's status, code and message.

Each row is one rule of the contract; the test names the section it checks.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from tests.simulator.conftest import pdf_bytes

CONTRACT = "contract-review"


def answer(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    assert body["status"] == response.status_code
    return response.status_code, body["code"], body["message"]


def upload(
    sim: Any,
    name: str,
    content: bytes,
    mime: str | None,
    user: str | None = "reviewer-1",
    app: str = CONTRACT,
) -> httpx.Response:
    with sim.client(app) as http:
        if mime is not None and name:
            data = {"user": user} if user is not None else {}
            return http.post("/files/upload", files={"file": (name, content, mime)}, data=data)
        # httpx leaves out an empty file name and guesses a missing type: build the part by hand.
        boundary = "b0undary"
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        if mime is not None:
            head += f"Content-Type: {mime}\r\n"
        body = (head + "\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
        return http.post(
            "/files/upload",
            content=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )


@pytest.fixture
def contract_form(simulator: Any) -> dict[str, Any]:
    """A paused contract review: paragraph, variable select, constant select, file, file list."""
    started = simulator.start_run(CONTRACT, user="reviewer-1")
    return started.form("legal_review")


def valid_inputs(sim: Any, **overrides: Any) -> dict[str, Any]:
    pdf = upload(sim, "contract.pdf", pdf_bytes(), "application/pdf").json()
    values: dict[str, Any] = {
        "assessment": "Acceptable with the DPA in annex 2.",
        "reviewer": "Jonas Weber (Privacy)",
        "risk_level": "medium",
        "signed_contract": {
            "transfer_method": "local_file",
            "upload_file_id": pdf["id"],
            "type": "document",
        },
        "annexes": [],
    }
    values.update(overrides)
    return values


def submit(
    sim: Any,
    token: str,
    inputs: Any,
    action: Any = "approve",
    user: Any = "reviewer-1",
    app: str = CONTRACT,
) -> httpx.Response:
    body: dict[str, Any] = {"inputs": inputs, "action": action}
    if user is not None:
        body["user"] = user
    with sim.client(app) as http:
        return http.post(f"/form/human_input/{token}", json=body)


# --- §1 auth, base URL and the user rule --------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "Authorization header must be provided and start with 'Bearer'"),
        ("Basic YWxpY2U6c2VjcmV0", "Authorization header must be provided and start with 'Bearer'"),
        ("Bearer", "Authorization header must be provided and start with 'Bearer'"),
        ("Bearer app-not-a-key", "Access token is invalid"),
    ],
)
def test_s1_a_missing_or_bad_key_is_401_unauthorized(
    simulator: Any, header: str | None, message: str
) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in [
        ("GET", "/info"),
        ("POST", "/workflows/run"),
        ("GET", "/form/human_input/x"),
    ]:
        response = httpx.request(method, f"{simulator.base_url}{path}", headers=headers, json={})
        assert answer(response) == (401, "unauthorized", message)


def test_s1_a_form_token_of_another_app_is_404(
    simulator: Any, contract_form: dict[str, Any]
) -> None:
    token = contract_form["form_token"]
    with simulator.client("refund-approval") as http:
        assert answer(http.get(f"/form/human_input/{token}")) == (
            404,
            "not_found",
            "Form not found",
        )
        posted = http.post(
            f"/form/human_input/{token}", json={"inputs": {}, "action": "approve", "user": "x"}
        )
        assert answer(posted) == (404, "not_found", "Form not found")


def test_s1_a_run_of_another_app_is_404(simulator: Any) -> None:
    started = simulator.start_run("refund-approval", user="u-1")
    with simulator.client("content-publish") as http:
        events = http.get(f"/workflow/{started.workflow_run_id}/events", params={"user": "u-1"})
        assert answer(events) == (404, "not_found", "Workflow run not found")
        detail = http.get(f"/workflows/run/{started.workflow_run_id}")
        assert answer(detail) == (404, "not_found", "Workflow run not found.")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/workflows/run", {"inputs": {}, "response_mode": "streaming"}),
        ("POST", "/workflows/run", {"inputs": {}, "user": ""}),
        ("POST", "/form/human_input/{token}", {"inputs": {}, "action": "approve"}),
        ("POST", "/workflows/tasks/any-task/stop", {}),
        ("GET", "/workflow/{run}/events", None),
    ],
)
def test_s1_a_missing_user_is_400_invalid_param(
    simulator: Any, method: str, path: str, body: Any
) -> None:
    started = simulator.start_run("refund-approval", user="u-1")
    url = path.format(token=started.forms[0]["form_token"], run=started.workflow_run_id)
    with simulator.client("refund-approval") as http:
        response = http.request(method, url, json=body) if body is not None else http.get(url)
    assert answer(response) == (400, "invalid_param", "Arg user must be provided.")


def test_s1_events_for_another_user_are_404(simulator: Any) -> None:
    started = simulator.start_run("refund-approval", user="u-1")
    with simulator.client("refund-approval") as http:
        response = http.get(f"/workflow/{started.workflow_run_id}/events", params={"user": "u-2"})
    assert answer(response) == (404, "not_found", "Workflow run not found")


def test_s1_a_submit_from_another_user_is_accepted(simulator: Any) -> None:
    started = simulator.start_run("refund-approval", user="u-1")
    form = started.forms[0]
    response = submit(
        simulator,
        form["form_token"],
        {"decision_note": ""},
        user="someone-else",
        app="refund-approval",
    )
    assert response.status_code == 200
    assert simulator.run(started.workflow_run_id)["forms"][0]["submitted_by"] != "u-1"


# --- §2 entry points -------------------------------------------------------------------------------


def test_s2_mode_mismatch_is_400(simulator: Any) -> None:
    with simulator.client("support-chat") as http:
        response = http.post("/workflows/run", json={"inputs": {}, "user": "u"})
        assert answer(response) == (
            400,
            "not_workflow_app",
            "Please check if your app mode matches the right API route.",
        )
    with simulator.client("refund-approval") as http:
        response = http.post("/chat-messages", json={"inputs": {}, "query": "hi", "user": "u"})
        assert answer(response) == (
            400,
            "not_chat_app",
            "Please check if your app mode matches the right API route.",
        )
    with simulator.client("faq-bot") as http:
        for path in ("/workflow/x/events?user=u", "/workflows/run/x"):
            assert answer(http.get(path))[:2] == (400, "not_workflow_app")


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            {"order_id": "SO-1", "amount": 10, "reason": "r"},
            "customer_name is required in input form",
        ),
        (
            {"customer_name": 5, "order_id": "SO-1", "amount": 10, "reason": "r"},
            "customer_name in input form must be a string",
        ),
        (
            {"customer_name": "A", "order_id": "SO-1", "amount": "ten", "reason": "r"},
            "amount in input form must be a valid number",
        ),
        (
            {
                "customer_name": "A",
                "order_id": "SO-1",
                "amount": 1,
                "reason": "r",
                "channel": "fax",
            },
            "channel in input form must be one of the following: ['email', 'phone', 'chat']",
        ),
        (
            {"customer_name": "A" * 81, "order_id": "SO-1", "amount": 1, "reason": "r"},
            "customer_name in input form must be less than 80 characters",
        ),
    ],
)
def test_s2_start_inputs_are_checked_like_dify(
    simulator: Any, inputs: dict[str, Any], message: str
) -> None:
    with simulator.client("refund-approval") as http:
        response = http.post(
            "/workflows/run", json={"inputs": inputs, "user": "u", "response_mode": "streaming"}
        )
    assert answer(response) == (400, "invalid_param", message)


def test_s2_blocking_mode_on_a_human_input_app_ends_paused_without_a_token(simulator: Any) -> None:
    with simulator.client("refund-approval") as http:
        response = http.post(
            "/workflows/run",
            json={
                "inputs": {"customer_name": "A", "order_id": "1", "amount": 1, "reason": "r"},
                "user": "u",
            },
        )
    assert response.status_code == 200
    body = response.json()
    assert body["data"]["status"] == "paused"
    assert body["data"]["finished_at"] is None
    assert "form_token" not in response.text
    assert simulator.run(body["workflow_run_id"])["status"] == "paused"


def test_s2_blocking_chatflow_answers_the_text_so_far(simulator: Any) -> None:
    with simulator.client("support-chat") as http:
        response = http.post(
            "/chat-messages", json={"inputs": {}, "query": "Where is my parcel?", "user": "u"}
        )
    body = response.json()
    assert response.status_code == 200
    assert body["mode"] == "advanced-chat"
    assert body["answer"].startswith("I'm sorry your delivery is late.")


def test_s2_an_unknown_conversation_is_404(simulator: Any) -> None:
    with simulator.client("support-chat") as http:
        response = http.post(
            "/chat-messages",
            json={
                "inputs": {},
                "query": "hi",
                "user": "u",
                "conversation_id": "9d3a2f1b-6c7d-4e8f-a0b1-c2d3e4f5a6b7",
            },
        )
    assert answer(response) == (404, "not_found", "Conversation Not Exists.")


def test_s2_a_chat_message_takes_files_as_the_app_s_file_upload_allows(simulator: Any) -> None:
    with simulator.client("support-chat") as http:
        feature = http.get("/parameters").json()["file_upload"]
    assert feature["enabled"] is True and feature["number_limits"] == 3
    assert feature["allowed_file_types"] == ["image", "document"]
    mine = upload(simulator, "a.png", b"\x89PNG", "image/png", user="u", app="support-chat")
    theirs = upload(simulator, "b.png", b"\x89PNG", "image/png", user="v", app="support-chat")

    def send(*files: dict[str, Any]) -> httpx.Response:
        with simulator.client("support-chat") as http:
            return http.post(
                "/chat-messages",
                json={"inputs": {}, "query": "hi", "user": "u", "files": list(files)},
            )

    def local(upload_id: str, kind: str = "image") -> dict[str, Any]:
        return {"type": kind, "transfer_method": "local_file", "upload_file_id": upload_id}

    # Files are visible only to requests carrying the same user.
    assert answer(send(local(theirs.json()["id"]))) == (400, "invalid_param", "Invalid upload file")
    assert answer(send(*[local(mine.json()["id"])] * 4)) == (
        400,
        "invalid_param",
        "Number of files exceeds the maximum limit 3",
    )
    assert answer(send(local(mine.json()["id"], "document")))[1] == "invalid_param"
    response = send(local(mine.json()["id"]))
    assert response.status_code == 200
    task_id = response.json()["task_id"]
    (run,) = simulator.call(
        lambda: [r.describe() for r in simulator.sim.runs.values() if r.task_id == task_id]
    )
    assert run["files"] == [local(mine.json()["id"])]


# --- §3 GET form -------------------------------------------------------------------------------------


def test_s3_get_answers_the_definition_with_resolved_options(
    simulator: Any, contract_form: dict[str, Any]
) -> None:
    with simulator.client(CONTRACT) as http:
        body = http.get(f"/form/human_input/{contract_form['form_token']}").json()
    assert set(body) == {
        "form_content",
        "inputs",
        "resolved_default_values",
        "user_actions",
        "expiration_time",
    }
    reviewer = next(i for i in body["inputs"] if i["output_variable_name"] == "reviewer")
    # Resolved from the paused run, while the type stays "variable".
    assert reviewer["option_source"]["type"] == "variable"
    assert reviewer["option_source"]["value"] == [
        "Priya Raman (Commercial)",
        "Jonas Weber (Privacy)",
        "Chen Li (Litigation)",
    ]
    # The event itself carries the stored (empty) list: only GET resolves.
    event_reviewer = next(
        i for i in contract_form["inputs"] if i["output_variable_name"] == "reviewer"
    )
    assert event_reviewer["option_source"]["value"] == []
    assert body["resolved_default_values"] == {
        "assessment": "Liability cap at 1x annual fees; DPA attached as annex 2."
    }
    assert body["user_actions"] == contract_form["actions"]
    assert body["expiration_time"] == contract_form["expiration_time"]
    assert "{{#$output.assessment#}}" in body["form_content"]
    assert "Nordlicht Logistics GmbH" in body["form_content"]
    annexes = next(i for i in body["inputs"] if i["type"] == "file-list")
    assert annexes["number_limits"] == 5
    assert annexes["allowed_file_extensions"] == [".md", ".msg"]


def test_s3_get_stringifies_defaults_the_event_carries_raw(simulator: Any) -> None:
    started = simulator.start_run("vendor-onboarding", {"vendor": "Acme", "annual_spend": 62000})
    form = started.form("finance_review")
    assert form["resolved_default_values"] == {"approved_budget": 62000}
    with simulator.client("vendor-onboarding") as http:
        body = http.get(f"/form/human_input/{form['form_token']}").json()
    assert body["resolved_default_values"] == {"approved_budget": "62000"}


@pytest.mark.parametrize("kind", ["unknown", "email", "console"])
def test_s3_unknown_and_non_webapp_tokens_are_404(simulator: Any, kind: str) -> None:
    started = simulator.start_run("expense-email")
    form = simulator.run(started.workflow_run_id)["forms"][0]
    assert started.forms[0]["form_token"] is None
    token = {
        "unknown": "no-such-token",
        "email": form["email_token"],
        "console": form["console_token"],
    }[kind]
    with simulator.client("expense-email") as http:
        assert answer(http.get(f"/form/human_input/{token}")) == (
            404,
            "not_found",
            "Form not found",
        )
        posted = http.post(
            f"/form/human_input/{token}",
            json={"inputs": {"comment": ""}, "action": "approve", "user": "u"},
        )
        assert answer(posted) == (404, "not_found", "Form not found")


def test_s3_get_of_a_submitted_form_is_412(simulator: Any) -> None:
    started = simulator.start_run("refund-approval")
    form = started.forms[0]
    assert (
        submit(
            simulator, form["form_token"], {"decision_note": ""}, app="refund-approval"
        ).status_code
        == 200
    )
    with simulator.client("refund-approval") as http:
        response = http.get(f"/form/human_input/{form['form_token']}")
    assert answer(response) == (
        412,
        "human_input_form_submitted",
        f"This form has already been submitted by another user, form_id={form['form_id']}",
    )


def test_s3_get_and_post_of_an_expired_form_are_412(simulator: Any) -> None:
    started = simulator.start_run("refund-approval")
    form = started.forms[0]
    assert simulator.expire_form(form["form_id"])
    expired = (412, "human_input_form_expired", f"This form has expired, form_id={form['form_id']}")
    with simulator.client("refund-approval") as http:
        assert answer(http.get(f"/form/human_input/{form['form_token']}")) == expired
    assert (
        answer(submit(simulator, form["form_token"], {"decision_note": ""}, app="refund-approval"))
        == expired
    )


def test_s4_5_the_global_cap_expires_a_form_before_its_own_time(simulator: Any) -> None:
    # The cap counts from the form's creation, whenever it is read: a day first, so the form is
    # surely answerable when first asked (a loaded machine can take longer than a short cap).
    simulator.set_options(global_timeout=86400)
    started = simulator.start_run("refund-approval")
    form = started.forms[0]
    assert form["expiration_time"] > 10**9  # three days away on its own
    with simulator.client("refund-approval") as http:
        assert http.get(f"/form/human_input/{form['form_token']}").status_code == 200
        simulator.set_options(global_timeout=0.3)
        simulator.wait_for(
            lambda: http.get(f"/form/human_input/{form['form_token']}").status_code == 412,
            timeout=5,
        )
        assert (
            answer(http.get(f"/form/human_input/{form['form_token']}"))[1]
            == "human_input_form_expired"
        )


# --- §4 POST form: validation in Dify's order ------------------------------------------------------


def test_s4_an_accepted_submit_is_200_empty_and_one_shot(
    simulator: Any, contract_form: dict[str, Any]
) -> None:
    token = contract_form["form_token"]
    first = submit(simulator, token, valid_inputs(simulator))
    assert (first.status_code, first.json()) == (200, {})
    second = submit(simulator, token, valid_inputs(simulator))
    assert answer(second)[:2] == (412, "human_input_form_submitted")
    assert simulator.submit_count(contract_form["form_id"]) == 2
    assert simulator.submits_applied(contract_form["form_id"]) == 1


def test_s4_the_active_check_comes_before_validation(
    simulator: Any, contract_form: dict[str, Any]
) -> None:
    simulator.submit_elsewhere(contract_form["form_id"], "approve")
    response = submit(simulator, contract_form["form_token"], {"risk_level": 5}, action="nope")
    assert answer(response)[:2] == (412, "human_input_form_submitted")


FILE_ERRORS = [
    ({"risk_level": 5}, "approve", "Invalid value for select input 'risk_level': expected string"),
    (
        {"signed_contract": "contract.pdf"},
        "approve",
        "Invalid value for file input 'signed_contract': expected mapping",
    ),
    (
        {"annexes": {"transfer_method": "local_file"}},
        "approve",
        "Invalid value for file list input 'annexes': expected list",
    ),
    (
        {"annexes": ["a.md"]},
        "approve",
        "Invalid value for file list input 'annexes': expected list of mappings",
    ),
    (
        {"signed_contract": {"type": "document"}},
        "approve",
        "transfer_method is required in file mapping",
    ),
    (
        {
            "signed_contract": {
                "transfer_method": "local_file",
                "upload_file_id": "42",
                "type": "document",
            }
        },
        "approve",
        "Invalid upload file id format",
    ),
    (
        {
            "signed_contract": {
                "transfer_method": "local_file",
                "upload_file_id": "0b1e6a57-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
                "type": "document",
            }
        },
        "approve",
        "Invalid upload file",
    ),
    (
        {"signed_contract": {"transfer_method": "remote_url", "type": "document"}},
        "approve",
        "Invalid file url",
    ),
    # Normalization runs before the action check, the action before the missing keys.
    ({"risk_level": 5}, "nope", "Invalid value for select input 'risk_level': expected string"),
    ({}, "nope", "Invalid action: nope"),
    (
        {},
        "approve",
        "Missing required inputs: assessment, reviewer, risk_level, signed_contract, annexes",
    ),
    (
        {"assessment": "ok", "reviewer": "x", "risk_level": "low"},
        "approve",
        "Missing required inputs: signed_contract, annexes",
    ),
]


@pytest.mark.parametrize(("inputs", "action", "message"), FILE_ERRORS)
def test_s4_invalid_submissions_are_400_invalid_form_data(
    simulator: Any, contract_form: dict[str, Any], inputs: dict[str, Any], action: str, message: str
) -> None:
    response = submit(simulator, contract_form["form_token"], inputs, action=action)
    assert answer(response) == (400, "invalid_form_data", message)


def test_s4_a_type_other_than_the_detected_category_is_refused(
    simulator: Any, contract_form: dict[str, Any]
) -> None:
    pdf = upload(simulator, "contract.pdf", pdf_bytes(), "application/pdf").json()
    for mapping in (
        {"transfer_method": "local_file", "upload_file_id": pdf["id"], "type": "image"},
        {"transfer_method": "local_file", "upload_file_id": pdf["id"]},  # no type: custom
        {
            "transfer_method": "remote_url",
            "url": "https://files.example.com/scan.png",
            "type": "document",
        },
    ):
        response = submit(
            simulator, contract_form["form_token"], valid_inputs(simulator, signed_contract=mapping)
        )
        assert answer(response) == (
            400,
            "invalid_form_data",
            "Detected file type does not match the specified type. Please verify the file.",
        )


def test_s4_per_value_checks(simulator: Any, contract_form: dict[str, Any]) -> None:
    token = contract_form["form_token"]
    png = upload(simulator, "scan.png", b"\x89PNG\r\n\x1a\n" + b"0" * 32, "image/png").json()
    zipped = upload(simulator, "annex.zip", b"PK\x03\x04", "application/zip").json()
    cases = [
        (
            valid_inputs(simulator, risk_level="extreme"),
            "Invalid value for select input 'risk_level': extreme",
        ),
        (
            valid_inputs(
                simulator,
                signed_contract={
                    "transfer_method": "local_file",
                    "upload_file_id": png["id"],
                    "type": "image",
                },
            ),
            "Invalid value for file input 'signed_contract': file is not allowed by config",
        ),
        (
            valid_inputs(
                simulator,
                signed_contract={
                    "transfer_method": "remote_url",
                    "url": "https://files.example.com/c.pdf",
                    "type": "document",
                },
            ),
            "Invalid value for file input 'signed_contract': file is not allowed by config",
        ),
        (
            valid_inputs(
                simulator,
                annexes=[
                    {"transfer_method": "remote_url", "url": "https://files.example.com/c.pdf"}
                ],
            ),
            "Invalid value for file input 'annexes': unsupported file type",
        ),
        (
            valid_inputs(
                simulator,
                annexes=[
                    {
                        "transfer_method": "local_file",
                        "upload_file_id": zipped["id"],
                        "type": "custom",
                    }
                ],
            ),
            "Invalid value for file input 'annexes': file is not allowed by config",
        ),
    ]
    for inputs, message in cases:
        assert answer(submit(simulator, token, inputs)) == (400, "invalid_form_data", message)
    assert simulator.submits_applied(contract_form["form_id"]) == 0


def test_s4_file_lists_are_counted_after_dropping_incomplete_items(
    simulator: Any, contract_form: dict[str, Any]
) -> None:
    token = contract_form["form_token"]
    note = upload(simulator, "notes.md", b"# Notes", "text/markdown").json()
    item = {"transfer_method": "local_file", "upload_file_id": note["id"], "type": "document"}
    six = valid_inputs(simulator, annexes=[item] * 6)
    assert answer(submit(simulator, token, six)) == (
        400,
        "invalid_form_data",
        "Number of files exceeds the maximum limit 5",
    )
    # Dify drops an item without a transfer method, or a remote one without a URL, silently.
    quirky = valid_inputs(
        simulator,
        annexes=[item] * 5
        + [{"type": "document"}, {"transfer_method": "remote_url", "type": "image"}],
    )
    assert submit(simulator, token, quirky).status_code == 200
    stored = simulator.run(simulator.sim.forms[contract_form["form_id"]].run.id)["forms"][0][
        "submitted_data"
    ]
    assert len(stored["annexes"]) == 5


def test_s4_what_dify_lets_through(simulator: Any, contract_form: dict[str, Any]) -> None:
    custom_md = upload(
        simulator, "redlines.msg", b"From: legal", "application/vnd.ms-outlook"
    ).json()
    inputs = valid_inputs(
        simulator,
        assessment={"structured": ["any", "json"]},  # D4: a paragraph takes any JSON value
        reviewer="Somebody not in the list",  # D3: a variable select only checks the type
        annexes=[
            {"transfer_method": "local_file", "upload_file_id": custom_md["id"], "type": "custom"}
        ],
        unexpected_key="kept",  # unknown keys are stored, not refused
    )
    assert submit(simulator, contract_form["form_token"], inputs).status_code == 200
    stored = simulator.sim.forms[contract_form["form_id"]].submitted_data
    assert stored["unexpected_key"] == "kept"
    assert stored["assessment"] == {"structured": ["any", "json"]}


def test_s4_an_empty_paragraph_and_an_empty_file_list_pass(
    simulator: Any, contract_form: dict[str, Any]
) -> None:
    response = submit(
        simulator, contract_form["form_token"], valid_inputs(simulator, assessment="", annexes=[])
    )
    assert response.status_code == 200


def test_s4_a_rejected_submit_changes_nothing(
    simulator: Any, contract_form: dict[str, Any]
) -> None:
    token = contract_form["form_token"]
    assert submit(simulator, token, valid_inputs(simulator), action="nope").status_code == 400
    with simulator.client(CONTRACT) as http:
        assert http.get(f"/form/human_input/{token}").status_code == 200
    assert submit(simulator, token, valid_inputs(simulator)).status_code == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"inputs": [], "action": "approve", "user": "u"},
            "inputs: Input should be a valid dictionary",
        ),
        ({"inputs": {}, "user": "u"}, "action: Input should be a valid string"),
    ],
)
def test_s4_a_malformed_body_is_400_invalid_param(
    simulator: Any, contract_form: dict[str, Any], body: dict[str, Any], message: str
) -> None:
    with simulator.client(CONTRACT) as http:
        response = http.post(f"/form/human_input/{contract_form['form_token']}", json=body)
    assert answer(response) == (400, "invalid_param", message)


def test_s4_a_non_json_body_is_refused(simulator: Any, contract_form: dict[str, Any]) -> None:
    with simulator.client(CONTRACT) as http:
        url = f"/form/human_input/{contract_form['form_token']}"
        assert answer(
            http.post(
                url,
                content=b"action=approve",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        )[:2] == (415, "unsupported_media_type")
        assert answer(
            http.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
        )[:2] == (400, "bad_request")


def test_s4_concurrent_submitters_race_and_one_wins(simulator: Any) -> None:
    started = simulator.start_run("refund-approval")
    token = started.forms[0]["form_token"]
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def go(n: int) -> None:
        barrier.wait()
        statuses.append(
            submit(
                simulator, token, {"decision_note": f"#{n}"}, user=f"u-{n}", app="refund-approval"
            ).status_code
        )

    threads = [threading.Thread(target=go, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [412] * 7
    assert simulator.submits_applied(started.forms[0]["form_id"]) == 1


def test_s4_an_email_answer_first_makes_the_token_412(simulator: Any) -> None:
    started = simulator.start_run("refund-approval")
    form = started.forms[0]
    assert simulator.submit_elsewhere(
        form["form_id"], "reject", {"decision_note": "Answered from email."}
    )
    assert answer(
        submit(simulator, form["form_token"], {"decision_note": ""}, app="refund-approval")
    )[:2] == (
        412,
        "human_input_form_submitted",
    )


def test_s5_another_users_upload_passes_submit_unless_strict(
    simulator: Any, contract_form: dict[str, Any]
) -> None:
    theirs = upload(
        simulator, "contract.pdf", pdf_bytes(), "application/pdf", user="somebody-else"
    ).json()
    mapping = {"transfer_method": "local_file", "upload_file_id": theirs["id"], "type": "document"}
    simulator.set_options(strict_file_owner=True)
    refused = submit(
        simulator, contract_form["form_token"], valid_inputs(simulator, signed_contract=mapping)
    )
    assert answer(refused) == (400, "invalid_form_data", "Invalid upload file")
    simulator.set_options(strict_file_owner=False)  # Dify's own submit path: workspace only (D5)
    assert (
        submit(
            simulator, contract_form["form_token"], valid_inputs(simulator, signed_contract=mapping)
        ).status_code
        == 200
    )


# --- §5 file upload ------------------------------------------------------------------------------


def test_s5_upload_answers_201_with_the_file_owned_by_its_user(simulator: Any) -> None:
    response = upload(
        simulator, "Quarterly Report.PDF", pdf_bytes(1000), "application/pdf", user="u-7"
    )
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "Quarterly Report.PDF"
    assert (body["size"], body["extension"], body["mime_type"]) == (1000, "pdf", "application/pdf")
    assert body["reference"] is None and body["user_id"] is None and body["file_key"] is None
    again = upload(simulator, "b.pdf", pdf_bytes(), "application/pdf", user="u-7").json()
    assert again["created_by"] == body["created_by"]
    default = upload(simulator, "c.pdf", pdf_bytes(), "application/pdf", user=None).json()
    assert default["created_by"] != body["created_by"]
    owners = {u["id"]: u["user"] for u in simulator.uploads()}
    assert owners[default["id"]] == "DEFAULT-USER"
    assert owners[body["id"]] == "u-7"


@pytest.mark.parametrize(
    ("name", "mime", "expected"),
    [
        (
            "",
            "application/pdf",
            (400, "filename_not_exists_error", "The specified filename does not exist."),
        ),
        (
            "a/b.pdf",
            "application/pdf",
            (400, "invalid_param", "Filename contains invalid characters"),
        ),
        (
            "C:\\scans\\b.pdf",
            "application/pdf",
            (400, "invalid_param", "Filename contains invalid characters"),
        ),
        ("b.pdf", None, (415, "unsupported_file_type", "File type not allowed.")),
    ],
)
def test_s5_bad_parts_are_refused(
    simulator: Any, name: str, mime: str | None, expected: tuple[int, str, str]
) -> None:
    assert answer(upload(simulator, name, pdf_bytes(), mime)) == expected


def test_s5_no_file_and_two_files_are_refused(simulator: Any) -> None:
    with simulator.client(CONTRACT) as http:
        none = http.post(
            "/files/upload", data={"user": "u"}, files={"other": ("a.pdf", b"x", "application/pdf")}
        )
        assert answer(none) == (400, "no_file_uploaded", "Please upload your file.")
        two = http.post(
            "/files/upload",
            files=[
                ("file", ("a.pdf", b"x", "application/pdf")),
                ("file2", ("b.pdf", b"y", "application/pdf")),
            ],
        )
        assert answer(two) == (400, "too_many_files", "Only one file is allowed.")


@pytest.mark.parametrize(
    ("name", "mime", "category"),
    [
        ("photo.JPG", "image/jpeg", "image"),
        ("memo.docx", "application/octet-stream", "file"),
        ("clip.mp4", "video/mp4", "video"),
        ("call.mp3", "audio/mpeg", "audio"),
        ("data.bin", "application/octet-stream", "file"),
    ],
)
def test_s5_each_category_has_its_size_limit(
    simulator: Any, name: str, mime: str, category: str
) -> None:
    limits = {"image": 1000, "file": 2000, "audio": 3000, "video": 4000}
    simulator.set_options(size_limits=limits)
    limit = limits[category]
    assert upload(simulator, name, b"0" * limit, mime).status_code == 201
    assert answer(upload(simulator, name, b"0" * (limit + 1), mime)) == (413, "file_too_large", "")


def test_s5_default_limits_are_difys(simulator: Any) -> None:
    mb = 1024 * 1024
    assert simulator.sim.options.size_limits == {
        "image": 10 * mb,
        "video": 100 * mb,
        "audio": 50 * mb,
        "file": 15 * mb,
    }
    assert answer(upload(simulator, "big.png", b"0" * (10 * mb + 1), "image/png"))[:2] == (
        413,
        "file_too_large",
    )


def test_s4_a_text_file_of_no_known_extension_is_a_document() -> None:
    """Dify's standardize_file_type falls back to a substring test of the MIME type: a browser's
    "text/x-log" for server.log is a document, as the inbox sends it (inbox.dify.files)."""
    from inbox.dify.files import category_for
    from inbox.simulator.files import category_of

    for name, mime, expected in (
        ("server.log", "text/x-log", "document"),
        ("scan.pdfx", "application/pdf", "document"),
        ("clip.xyz", "video/x-custom", "video"),
        ("blob.bin", "application/octet-stream", "custom"),
    ):
        assert category_of(name.rsplit(".", 1)[1], mime) == expected, name
        assert category_for(name, mime) == expected, name
