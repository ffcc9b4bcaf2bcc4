"""The client over real loopback HTTP against the Dify simulator: every call, every error code,
the retry policy counted by the simulator, and streams that end where Dify's do."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import httpx
import pytest

from inbox.dify import (
    BadRequest,
    DifyClient,
    DifyConnectionError,
    DifyStreamError,
    DifyTimeout,
    FileInput,
    FileListInput,
    FileTooLarge,
    Forbidden,
    FormAlreadySubmitted,
    FormExpired,
    HumanInputFormFilled,
    HumanInputRequired,
    InvalidFormData,
    InvalidParam,
    MessageEnd,
    MessageEvent,
    NotFound,
    ParagraphInput,
    SelectInput,
    ServerError,
    StreamEvent,
    TextChunk,
    TooManyRequests,
    Unauthorized,
    UnsupportedFileType,
    WorkflowFinished,
    WorkflowPaused,
    WorkflowStarted,
)
from inbox.dify.client import USER_AGENT
from inbox.dify.files import category_for
from inbox.dify.types import ErrorEvent, PingEvent
from inbox.simulator.testing import SimulatorHandle
from tests.dify.conftest import async_client

USER = "end-user-7"
DRAFT = "Draft für Refund: Rückerstattung über 129,90 € 🙂"
FULL_INPUTS: dict[str, Any] = {"note": "ok", "reason": "late", "attachments": []}


def start(
    client: DifyClient, user: str = USER
) -> tuple[list[StreamEvent], HumanInputRequired, str]:
    with client.run_workflow(inputs={"topic": "Refund"}, user=user) as stream:
        events = list(stream)
    [form] = [e for e in events if isinstance(e, HumanInputRequired)]
    assert stream.workflow_run_id is not None
    return events, form, stream.workflow_run_id


def heic(client: DifyClient, user: str = USER) -> dict[str, str]:
    uploaded = client.upload_file(
        io.BytesIO(b"\x00heic-bytes"), filename="proof.heic", mime_type="image/heic", user=user
    )
    return uploaded.mapping(category_for("proof.heic", "image/heic"))


# --- runs and streams -----------------------------------------------------------------------------


def test_a_run_streams_typed_events_and_stops_at_the_pause(
    client: DifyClient, sim: SimulatorHandle
) -> None:
    with client.run_workflow(inputs={"topic": "Refund"}, user=USER) as stream:
        first = next(stream)
        # The reconnect handle is known from the very first event, before the run pauses.
        assert isinstance(first, WorkflowStarted)
        assert stream.workflow_run_id == first.workflow_run_id
        assert stream.task_id == first.task_id
        rest = list(stream)
    events = [first, *rest]
    assert not any(isinstance(e, PingEvent) for e in events)
    assert stream.events_seen == len(events)
    assert "".join(e.text for e in events if isinstance(e, TextChunk)) == DRAFT
    required, paused = events[-2:]
    assert isinstance(required, HumanInputRequired)
    assert isinstance(paused, WorkflowPaused)
    assert stream.terminal_event is paused
    assert stream.closed
    assert required.form_token and required.node_id == "review"
    assert [r.form_id for r in paused.reasons] == [required.form_id]
    assert sim.run(stream.workflow_run_id or "")["status"] == "paused"
    [exchange] = sim.exchanges("workflows_run")
    assert exchange.request_headers["user-agent"] == USER_AGENT
    assert exchange.request_headers["authorization"] == "Bearer app-client-review"


def test_get_form_reads_every_input_kind(client: DifyClient) -> None:
    _, required, _ = start(client)
    form = client.get_form(required.form_token or "")
    note, reason, proof, attachments = form.inputs
    assert isinstance(note, ParagraphInput)
    assert isinstance(reason, SelectInput)
    assert reason.options == ["defect", "late", "other"]
    assert type(proof) is FileInput
    assert proof.allowed_file_extensions == [".heic"]
    assert isinstance(attachments, FileListInput)
    assert attachments.number_limits == 2
    assert form.default_for("note") == "Looks fine"
    assert [a.id for a in form.user_actions] == ["approve", "reject"]
    assert form.expiration_time is not None
    assert form.form_content.startswith(f"Review the draft: {DRAFT}")
    assert form == required.definition


def test_submit_then_follow_the_run_to_its_next_pause(
    client: DifyClient, sim: SimulatorHandle
) -> None:
    _, required, run_id = start(client)
    token = required.form_token or ""
    inputs = {**FULL_INPUTS, "proof": heic(client)}
    # Subscribed before submitting, so nothing of the resumed run is missed.
    with client.stream_events(run_id, user=USER) as stream:
        assert client.submit_form(token, inputs=inputs, action="approve", user=USER) is None
        events = list(stream)
    filled = events[0]
    assert isinstance(filled, HumanInputFormFilled)
    assert (filled.action_id, filled.action_text) == ("approve", "Approve")
    assert filled.submitted_data is not None and filled.submitted_data["note"] == "ok"
    assert isinstance(events[-1], WorkflowPaused)
    second = events[-2]
    assert isinstance(second, HumanInputRequired)
    assert second.node_id == "confirm"
    assert second.form_token != token
    assert sim.submits_applied(required.form_id) == 1


def test_continue_on_pause_ends_at_workflow_finished_not_at_the_pause(
    client: DifyClient, sim: SimulatorHandle
) -> None:
    _, required, run_id = start(client)
    seen: list[StreamEvent] = []
    with client.stream_events(run_id, user=USER, continue_on_pause=True) as stream:
        client.submit_form(
            required.form_token or "",
            inputs={**FULL_INPUTS, "proof": heic(client)},
            action="approve",
            user=USER,
        )
        for event in stream:
            seen.append(event)
            if isinstance(event, HumanInputRequired):
                client.submit_form(
                    event.form_token or "", inputs={"remark": "fine"}, action="confirm", user=USER
                )
    # Dify's live stream with this flag never closes by itself (CONTRACT D13): the client did.
    assert any(isinstance(e, WorkflowPaused) for e in seen)
    finished = seen[-1]
    assert isinstance(finished, WorkflowFinished)
    assert finished.status == "succeeded"
    assert finished.outputs["decision"] == "approve"
    assert stream.terminal_event is finished
    detail = client.get_run(run_id)
    assert (detail.status, detail.is_finished) == ("succeeded", True)
    assert detail.inputs == {"topic": "Refund"}


def test_a_snapshot_recovers_a_lost_token(client: DifyClient) -> None:
    _, required, run_id = start(client)
    with client.stream_events(run_id, user=USER, include_state_snapshot=True) as stream:
        events = list(stream)
    assert isinstance(events[0], WorkflowStarted)
    replayed = [e for e in events if isinstance(e, HumanInputRequired)]
    assert [e.form_id for e in replayed] == [required.form_id]
    assert isinstance(stream.terminal_event, WorkflowPaused)
    # The replayed token answers GET like the original one.
    assert client.get_form(replayed[0].form_token or "").user_actions[0].id == "approve"


def test_a_finished_run_streams_one_workflow_finished(client: DifyClient) -> None:
    _, required, run_id = start(client)
    with client.stream_events(run_id, user=USER, continue_on_pause=True) as stream:
        client.submit_form(
            required.form_token or "",
            inputs={**FULL_INPUTS, "proof": heic(client)},
            action="reject",
            user=USER,
        )
        for event in stream:
            if isinstance(event, HumanInputRequired):
                client.submit_form(
                    event.form_token or "", inputs={"remark": ""}, action="confirm", user=USER
                )
    with client.stream_events(run_id, user=USER) as again:
        events = list(again)
    assert [type(e) for e in events] == [WorkflowFinished]
    assert again.workflow_run_id == run_id


def test_a_stream_opened_for_another_user_raises_not_found(client: DifyClient) -> None:
    _, _, run_id = start(client)
    with pytest.raises(NotFound) as caught:
        client.stream_events(run_id, user="someone-else")
    assert caught.value.message == "Workflow run not found"


def test_an_email_only_form_has_no_token(sim: SimulatorHandle) -> None:
    with DifyClient(sim.base_url, sim.api_key("client-email")) as client:
        with client.run_workflow(inputs={}, user=USER) as stream:
            events = list(stream)
    [required] = [e for e in events if isinstance(e, HumanInputRequired)]
    assert required.form_token is None
    assert isinstance(stream.terminal_event, WorkflowPaused)


def test_a_chatflow_pauses_and_resumes_with_its_message_events(
    chat_client: DifyClient, sim: SimulatorHandle
) -> None:
    with chat_client.send_chat_message(query="Refund?", inputs={}, user=USER) as stream:
        events = list(stream)
    assert "".join(e.answer for e in events if isinstance(e, MessageEvent)) == (
        "Let me check that for you."
    )
    assert stream.conversation_id and stream.message_id and stream.workflow_run_id
    assert not any(isinstance(e, MessageEnd) for e in events)
    [required] = [e for e in events if isinstance(e, HumanInputRequired)]
    assert isinstance(stream.terminal_event, WorkflowPaused)

    with chat_client.stream_events(stream.workflow_run_id or "", user=USER) as resumed:
        chat_client.submit_form(
            required.form_token or "", inputs={"comment": "yes"}, action="send", user=USER
        )
        after = list(resumed)
    assert "".join(e.answer for e in after if isinstance(e, MessageEvent)) == " Approved: yes"
    assert [e.event for e in after[-2:]] == ["message_end", "workflow_finished"]
    assert resumed.conversation_id == stream.conversation_id
    assert chat_client.stop_chat_message(stream.task_id or "", user=USER) is None


def test_stop_parameters_and_info(client: DifyClient, sim: SimulatorHandle) -> None:
    events, _, _ = start(client)
    assert client.stop_workflow_task(events[0].task_id or "", user=USER) is None
    assert client.get_info()["name"] == "client-review"
    parameters = client.get_parameters()
    assert parameters["user_input_form"][0]["text-input"]["variable"] == "topic"
    assert parameters["system_parameters"]["video_file_size_limit"] == 100


def test_leaving_a_stream_early_closes_its_connection(
    client: DifyClient, sim: SimulatorHandle
) -> None:
    _, _, run_id = start(client)
    with client.stream_events(run_id, user=USER) as stream:
        # A paused run's live stream carries only pings: nothing arrives, and we leave.
        assert stream.workflow_run_id is None
    assert stream.closed
    sim.wait_for(lambda: sim.stats()["streams_open"] == 0, timeout=5)
    # A closed stream yields nothing more.
    assert list(stream) == []


# --- files ----------------------------------------------------------------------------------------


def test_uploads_stream_and_their_ids_submit(client: DifyClient, sim: SimulatorHandle) -> None:
    _, required, _ = start(client)
    content = "# Notizen über €\n".encode()
    doc = client.upload_file(
        io.BytesIO(content), filename="notes.md", mime_type="text/markdown", user=USER
    )
    assert (doc.name, doc.size, doc.extension) == ("notes.md", len(content), "md")
    [stored] = [u for u in sim.uploads() if u["id"] == doc.id]
    assert stored["user"] == USER
    client.submit_form(
        required.form_token or "",
        inputs={
            "note": "",
            "reason": "defect",
            "proof": heic(client),
            "attachments": [doc.mapping(category_for("notes.md", "text/markdown"))],
        },
        action="approve",
        user=USER,
    )
    assert sim.submits_applied(required.form_id) == 1


def test_an_unseekable_file_goes_out_chunked(client: DifyClient, sim: SimulatorHandle) -> None:
    class Pipe(io.RawIOBase):
        def __init__(self, size: int) -> None:
            self.left = size

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            n = min(len(buffer), self.left, 10_000)
            buffer[:n] = b"p" * n
            self.left -= n
            return n

    uploaded = client.upload_file(
        io.BufferedReader(Pipe(1_000_003)), filename="pipe.txt", mime_type="text/plain", user=USER
    )
    assert uploaded.size == 1_000_003
    [exchange] = sim.exchanges("files_upload")
    assert exchange.request_headers.get("transfer-encoding") == "chunked"


def test_a_seekable_file_is_sent_from_its_position_with_a_length(
    client: DifyClient, sim: SimulatorHandle
) -> None:
    data = io.BytesIO(b"HEADER" + b"x" * 5000)
    data.seek(6)
    uploaded = client.upload_file(data, filename="rest.txt", mime_type="text/plain", user=USER)
    assert uploaded.size == 5000
    [exchange] = sim.exchanges("files_upload")
    assert "content-length" in exchange.request_headers


def test_a_file_over_the_limit_is_refused_with_413(
    client: DifyClient, sim: SimulatorHandle
) -> None:
    limits = {"image": 1024, "video": 1024, "audio": 1024, "file": 1024}
    sim.set_options(size_limits=limits)
    with pytest.raises(FileTooLarge) as caught:
        client.upload_file(
            io.BytesIO(b"x" * 2048), filename="big.png", mime_type="image/png", user=USER
        )
    assert (caught.value.status, caught.value.code, caught.value.message) == (
        413,
        "file_too_large",
        "",
    )
    assert caught.value.permanent


def test_a_file_without_a_mime_type_is_refused_with_415(client: DifyClient) -> None:
    with pytest.raises(UnsupportedFileType) as caught:
        client.upload_file(io.BytesIO(b"x"), filename="a.bin", mime_type="", user=USER)
    assert caught.value.code == "unsupported_file_type"


def test_a_bad_filename_is_an_invalid_param(client: DifyClient) -> None:
    with pytest.raises(InvalidParam):
        client.upload_file(io.BytesIO(b"x"), filename="a\\b.txt", mime_type="text/plain", user=USER)


# --- error codes ----------------------------------------------------------------------------------


def test_a_wrong_key_is_unauthorized_and_not_retried(sim: SimulatorHandle) -> None:
    with DifyClient(sim.base_url, "app-wrong", initial_retry_delay=0.01) as client:
        with pytest.raises(Unauthorized) as caught:
            client.get_info()
    assert caught.value.message == "Access token is invalid"
    assert sim.request_count("info") == 1


def test_forbidden(client: DifyClient, sim: SimulatorHandle) -> None:
    sim.add_fault("status", "info", status=403, code="forbidden", message="App is disabled")
    with pytest.raises(Forbidden) as caught:
        client.get_info()
    assert caught.value.message == "App is disabled"
    assert sim.request_count("info") == 1


def test_an_unknown_token_is_not_found_and_never_named(client: DifyClient) -> None:
    with pytest.raises(NotFound) as caught:
        client.get_form("tok-unknown-SECRET")
    assert caught.value.code == "not_found"
    assert "SECRET" not in str(caught.value) and "SECRET" not in repr(caught.value)
    with pytest.raises(NotFound):
        client.get_run("5b3a2c1d-0000-4000-8000-000000000000")


def test_a_form_answered_twice_is_already_submitted(
    client: DifyClient, sim: SimulatorHandle
) -> None:
    _, required, _ = start(client)
    token = required.form_token or ""
    inputs = {**FULL_INPUTS, "proof": heic(client)}
    client.submit_form(token, inputs=inputs, action="approve", user=USER)
    with pytest.raises(FormAlreadySubmitted) as caught:
        client.submit_form(token, inputs=inputs, action="approve", user=USER)
    assert caught.value.status == 412
    assert caught.value.message.startswith("This form has already been submitted by another user")
    # GET says so too.
    with pytest.raises(FormAlreadySubmitted):
        client.get_form(token)
    assert sim.submits_applied(required.form_id) == 1


def test_an_expired_form(client: DifyClient, sim: SimulatorHandle) -> None:
    _, required, _ = start(client)
    sim.expire_form(required.form_id)
    with pytest.raises(FormExpired) as caught:
        client.get_form(required.form_token or "")
    assert caught.value.message == f"This form has expired, form_id={required.form_id}"
    with pytest.raises(FormExpired):
        client.submit_form(required.form_token or "", inputs={}, action="approve", user=USER)


def test_invalid_form_data_leaves_the_token_usable(
    client: DifyClient, sim: SimulatorHandle
) -> None:
    _, required, _ = start(client)
    token = required.form_token or ""
    with pytest.raises(InvalidFormData) as caught:
        client.submit_form(token, inputs={"note": "x"}, action="approve", user=USER)
    assert caught.value.message == "Missing required inputs: reason, proof, attachments"
    assert caught.value.permanent
    client.submit_form(
        token, inputs={**FULL_INPUTS, "proof": heic(client)}, action="approve", user=USER
    )
    assert sim.submits_applied(required.form_id) == 1


def test_a_missing_user_is_an_invalid_param(client: DifyClient) -> None:
    with pytest.raises(InvalidParam) as caught:
        client.stop_workflow_task("task", user="")
    assert caught.value.message == "Arg user must be provided."


def test_a_mode_mismatch_is_a_bad_request(chat_client: DifyClient) -> None:
    with pytest.raises(BadRequest) as caught:
        chat_client.stop_workflow_task("task", user=USER)
    assert caught.value.code == "not_workflow_app"


# --- retries --------------------------------------------------------------------------------------


def test_429_is_retried_after_retry_after(client: DifyClient, sim: SimulatorHandle) -> None:
    _, required, _ = start(client)
    sim.add_fault("status", "form_get", status=429, retry_after=1)
    started = time.monotonic()
    form = client.get_form(required.form_token or "")
    assert time.monotonic() - started >= 0.95
    assert form.user_actions
    assert sim.request_count("form_get") == 2


def test_a_long_retry_after_is_left_to_the_caller(client: DifyClient, sim: SimulatorHandle) -> None:
    sim.add_fault("status", "workflow_run_detail", status=429, retry_after=120)
    with pytest.raises(TooManyRequests) as caught:
        client.get_run("5b3a2c1d-0000-4000-8000-000000000000")
    assert caught.value.retry_after == 120
    assert not caught.value.permanent
    assert sim.request_count("workflow_run_detail") == 1


def test_a_burst_of_5xx_is_retried_within_the_budget(
    client: DifyClient, sim: SimulatorHandle
) -> None:
    _, _, run_id = start(client)
    sim.add_fault("status", "workflow_run_detail", status=503, times=2)
    assert client.get_run(run_id).status == "paused"
    assert sim.request_count("workflow_run_detail") == 3

    sim.add_fault("status", "workflow_run_detail", status=502, times=3)
    with pytest.raises(ServerError) as caught:
        client.get_run(run_id)
    assert caught.value.status == 502
    assert sim.request_count("workflow_run_detail") == 6


def test_opening_an_events_stream_is_retried(client: DifyClient, sim: SimulatorHandle) -> None:
    _, _, run_id = start(client)
    sim.add_fault("status", "workflow_events", status=500)
    with client.stream_events(run_id, user=USER, include_state_snapshot=True) as stream:
        assert isinstance(list(stream)[-1], WorkflowPaused)
    assert sim.request_count("workflow_events") == 2


def test_starting_a_run_is_never_retried(client: DifyClient, sim: SimulatorHandle) -> None:
    sim.add_fault("status", "workflows_run", status=503)
    with pytest.raises(ServerError):
        client.run_workflow(inputs={"topic": "x"}, user=USER)
    assert sim.request_count("workflows_run") == 1


def test_a_submit_is_never_retried(client: DifyClient, sim: SimulatorHandle) -> None:
    _, required, _ = start(client)
    token = required.form_token or ""
    inputs = {**FULL_INPUTS, "proof": heic(client)}
    sim.add_fault("status", "form_submit", status=503)
    with pytest.raises(ServerError):
        client.submit_form(token, inputs=inputs, action="approve", user=USER)
    assert sim.request_count("form_submit") == 1
    assert sim.submits_applied(required.form_id) == 0

    # The answer is lost but the submission counted: a blind retry would hit 412.
    sim.add_fault("drop_after_submit", "form_submit")
    with pytest.raises(DifyConnectionError) as caught:
        client.submit_form(token, inputs=inputs, action="approve", user=USER)
    assert not caught.value.permanent
    assert caught.value.request_sent
    assert sim.request_count("form_submit") == 2
    assert sim.submits_applied(required.form_id) == 1


def test_an_upload_is_never_retried(client: DifyClient, sim: SimulatorHandle) -> None:
    sim.add_fault("status", "files_upload", status=503)
    with pytest.raises(ServerError):
        client.upload_file(io.BytesIO(b"x"), filename="a.txt", mime_type="text/plain", user=USER)
    sim.add_fault("close_upload", "files_upload", after_bytes=64 * 1024)
    with pytest.raises(DifyConnectionError):
        client.upload_file(
            io.BytesIO(b"x" * 2_000_000), filename="b.txt", mime_type="text/plain", user=USER
        )
    assert sim.request_count("files_upload") == 2


def test_a_slow_answer_times_out_and_only_idempotent_calls_retry(sim: SimulatorHandle) -> None:
    with DifyClient(
        sim.base_url,
        sim.api_key("client-review"),
        timeout=httpx.Timeout(0.3, connect=5.0),
        initial_retry_delay=0.01,
    ) as client:
        sim.add_fault("delay", "info", delay=1.0)
        assert client.get_info()["name"] == "client-review"
        assert sim.request_count("info") == 2
        sim.add_fault("delay", "workflow_stop", delay=1.0)
        with pytest.raises(DifyTimeout) as caught:
            client.stop_workflow_task("task", user=USER)
        assert caught.value.error_type == "ReadTimeout"
        assert caught.value.request_sent
        assert sim.request_count("workflow_stop") == 1


# --- streams that fail ----------------------------------------------------------------------------


def test_a_dropped_stream_raises_after_giving_the_run_id(
    client: DifyClient, sim: SimulatorHandle
) -> None:
    sim.add_fault("drop_stream", "workflows_run", after_events=3)
    stream = client.run_workflow(inputs={"topic": "x"}, user=USER)
    seen: list[StreamEvent] = []
    with pytest.raises(DifyConnectionError), stream:
        for event in stream:
            seen.append(event)
    assert len(seen) == 3
    assert stream.workflow_run_id == seen[0].workflow_run_id
    assert stream.terminal_event is None
    assert stream.closed


def test_an_error_event_raises_a_stream_error(client: DifyClient, sim: SimulatorHandle) -> None:
    sim.add_fault(
        "stream_error",
        "workflows_run",
        after_events=2,
        status=400,
        code="completion_request_error",
        message="The model failed",
    )
    with client.run_workflow(inputs={"topic": "x"}, user=USER) as stream:
        with pytest.raises(DifyStreamError) as caught:
            list(stream)
    error = caught.value
    assert (error.status, error.code, error.message) == (
        400,
        "completion_request_error",
        "The model failed",
    )
    assert error.permanent
    assert isinstance(stream.terminal_event, ErrorEvent)
    assert stream.workflow_run_id is not None


# --- async ----------------------------------------------------------------------------------------


def test_the_async_client_does_the_same(sim: SimulatorHandle) -> None:
    async def scenario() -> None:
        async with async_client(sim) as client:
            async with client.run_workflow(inputs={"topic": "Refund"}, user=USER) as stream:
                events = [e async for e in stream]
            assert isinstance(events[-1], WorkflowPaused)
            [required] = [e for e in events if isinstance(e, HumanInputRequired)]
            run_id = stream.workflow_run_id or ""
            form = await client.get_form(required.form_token or "")
            assert form.default_for("note") == "Looks fine"
            uploaded = await client.upload_file(
                io.BytesIO(b"heic"), filename="p.heic", mime_type="image/heic", user=USER
            )
            resumed = await client.stream_events(run_id, user=USER)
            async with resumed:
                await client.submit_form(
                    required.form_token or "",
                    inputs={
                        **FULL_INPUTS,
                        "proof": uploaded.mapping(category_for("p.heic", "image/heic")),
                    },
                    action="approve",
                    user=USER,
                )
                after = [e async for e in resumed]
            assert isinstance(after[0], HumanInputFormFilled)
            assert isinstance(resumed.terminal_event, WorkflowPaused)
            assert (await client.get_run(run_id)).status == "paused"
            assert (await client.get_info())["name"] == "client-review"
            assert "user_input_form" in await client.get_parameters()
            await client.stop_workflow_task(required.task_id or "", user=USER)
            with pytest.raises(FormAlreadySubmitted):
                await client.get_form(required.form_token or "")
            sim.add_fault("status", "form_get", status=503, times=1)
            with pytest.raises(NotFound):
                await client.get_form("tok-nope")
            # Two earlier GETs, then the 503 and its retry.
            assert sim.request_count("form_get") == 4
            sim.add_fault("status", "form_submit", status=503)
            with pytest.raises(ServerError):
                await client.submit_form("tok-nope", inputs={}, action="x", user=USER)
            assert sim.request_count("form_submit") == 2

    asyncio.run(scenario())


def test_the_async_upload_reads_a_real_file_off_the_event_loop(
    sim: SimulatorHandle, tmp_path: Any
) -> None:
    path = tmp_path / "scan.pdf"
    path.write_bytes(b"%PDF-1.7 " + b"z" * 700_000)

    async def scenario() -> int:
        async with async_client(sim) as client:
            with path.open("rb") as f:
                uploaded = await client.upload_file(
                    f, filename="scan.pdf", mime_type="application/pdf", user=USER
                )
            return uploaded.size

    assert asyncio.run(scenario()) == path.stat().st_size
    [exchange] = sim.exchanges("files_upload")
    assert exchange.request_headers["content-length"]


def test_the_async_chatflow_stream_and_its_failures(sim: SimulatorHandle) -> None:
    async def scenario() -> None:
        async with async_client(sim, "client-chat") as client:
            stream = client.send_chat_message(query="Hi", inputs={}, user=USER)
            events = [e async for e in stream]
            assert stream.closed
            assert stream.conversation_id and isinstance(events[-1], WorkflowPaused)
            await client.stop_chat_message(stream.task_id or "", user=USER)
            sim.add_fault("drop_stream", "workflow_events", after_events=0)
            with pytest.raises(DifyConnectionError):
                async with client.stream_events(
                    stream.workflow_run_id or "", user=USER, include_state_snapshot=True
                ) as broken:
                    [e async for e in broken]
            with pytest.raises(NotFound):
                await client.stream_events(stream.workflow_run_id or "", user="other")

    asyncio.run(scenario())


# --- the shared client of an app ------------------------------------------------------------------


@pytest.mark.django_db
def test_for_app_talks_to_the_app_it_was_made_for(simulator_dify_app: Any, simulator: Any) -> None:
    app = simulator_dify_app("refund-approval")
    client = DifyClient.for_app(app)
    assert client is DifyClient.for_app(app)
    assert client.get_info()["name"] == "refund-approval"
    [exchange] = simulator.exchanges("info")
    assert (
        exchange.request_headers["authorization"]
        == f"Bearer {simulator.api_key('refund-approval')}"
    )
    DifyClient.close_cached()
