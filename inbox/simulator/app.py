"""The simulator's HTTP surface: Dify's Service API under /v1 and a control API under /_sim.

Each Service API route goes through `_Endpoint`, which counts the request, applies injected
faults, authenticates the bearer key, and records the request and what was answered (every SSE
event included) when recording is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse as _StarletteJSON
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from inbox.simulator.engine import PING, Event, Form, Run, Simulator, Subscriber, UploadedFile
from inbox.simulator.faults import Fault
from inbox.simulator.files import extension_of, size_limit_for
from inbox.simulator.recorder import Exchange
from inbox.simulator.scenarios import AppSpec
from inbox.simulator.templates import as_text
from inbox.simulator.uploads import StreamingMultipart
from inbox.simulator.validation import (
    InvalidFormData,
    InvalidInput,
    validate_message_files,
    validate_start_inputs,
    validate_submission,
)

MODE_MISMATCH = "Please check if your app mode matches the right API route."


class DifyError(Exception):
    """An error answer in Dify's envelope: `{"status", "code", "message"}`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"status": self.status, "code": self.code, "message": self.message},
            status_code=self.status,
        )


def invalid_param(message: str) -> DifyError:
    return DifyError(400, "invalid_param", message)


def not_found(message: str) -> DifyError:
    return DifyError(404, "not_found", message)


async def abort_connection(request: Request) -> None:
    """Cut the TCP connection with no answer, as a crashed proxy or a reset network does.

    ASGI has no way to say this, so it reaches the server's transport through the `receive`
    callable uvicorn hands the app (bound to its request cycle). After the abort uvicorn sees a
    disconnected client and sends nothing more.
    """
    cycle = getattr(request.receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise RuntimeError("the server does not expose its transport; run the simulator on uvicorn")
    transport.abort()
    # Let the event loop deliver connection_lost, so uvicorn marks the cycle disconnected.
    for _ in range(3):
        await asyncio.sleep(0)


def json_text(value: Any, **options: Any) -> str:
    """JSON as Dify writes it: UTF-8 where it can be; a string holding half of a surrogate pair
    (an LLM's output cut inside an emoji) cannot be, and is written with \\u escapes, as
    Python's json.dumps writes it by default."""
    text = json.dumps(value, ensure_ascii=False, **options)
    try:
        text.encode()
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True, **options)
    return text


class JSONResponse(_StarletteJSON):
    def render(self, content: Any) -> bytes:
        return json_text(content, allow_nan=False, indent=None, separators=(",", ":")).encode()


def encode_event(event: Event | str) -> bytes:
    if event == PING:
        return b"event: ping\n\n"
    return b"data: " + json_text(event).encode() + b"\n\n"


class _Context:
    """What an endpoint knows about its request beyond the request itself."""

    def __init__(self, request: Request, app: AppSpec, faults: list[Fault], exchange: Exchange):
        self.request = request
        self.app = app
        self.faults = faults
        self.exchange = exchange

    def fault(self, kind: str) -> Fault | None:
        for fault in self.faults:
            if fault.kind == kind:
                return fault
        return None


EndpointFn = Callable[[_Context], Awaitable[Response]]


class _Endpoint:
    def __init__(self, sim: Simulator, route: str, fn: EndpointFn) -> None:
        self.sim = sim
        self.route = route
        self.fn = fn

    async def handle(self, request: Request) -> Response:
        sim = self.sim
        app = _app_for(sim, request.headers.get("authorization"))
        sim.stats.count(self.route, app.name if app else None)
        exchange = Exchange(
            route=self.route,
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            request_headers=dict(request.headers),
            request_body=None,
            app=app.name if app else None,
            app_mode=app.mode if app else None,
        )
        # A form is named by its token in the path; a fault names it by its id.
        token = sim.tokens.get(request.path_params.get("form_token", ""))
        faults = sim.faults.take(
            self.route,
            app.name if app else None,
            request.path_params.get("workflow_run_id"),
            token.form.id if token else None,
        )
        header = request.headers.get("x-sim-fault")
        if header:
            try:
                faults.append(Fault.from_header(header, self.route))
            except (ValueError, TypeError) as exc:
                exchange.fault = "invalid_fault_header"
                return self._finish(
                    exchange, DifyError(400, "bad_request", f"X-Sim-Fault: {exc}").response()
                )
        for fault in faults:
            if fault.kind == "delay" and fault.delay > 0:
                await asyncio.sleep(fault.delay)
        for fault in faults:
            if fault.kind == "status":
                exchange.fault = "status"
                injected = JSONResponse(fault.error_body(), status_code=fault.status)
                if fault.retry_after is not None:
                    injected.headers["Retry-After"] = str(fault.retry_after)
                return self._finish(exchange, injected)
        response: Response
        try:
            if app is None:
                raise _unauthorized(request.headers.get("authorization"))
            response = await self.fn(_Context(request, app, faults, exchange))
        except DifyError as error:
            response = error.response()
        return self._finish(exchange, response)

    def _finish(self, exchange: Exchange, response: Response) -> Response:
        exchange.status = response.status_code
        exchange.response_headers = {k.decode(): v.decode() for k, v in response.raw_headers}
        if isinstance(response, StreamingResponse):
            return response  # recorded when the stream ends
        exchange.response_body = bytes(response.body)
        self.sim.recorder.add(exchange)
        return response


def _app_for(sim: Simulator, header: str | None) -> AppSpec | None:
    if not header or " " not in header.strip():
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return sim.apps_by_key.get(token.strip())


def _unauthorized(header: str | None) -> DifyError:
    if not header or " " not in header.strip() or header.split(None, 1)[0].lower() != "bearer":
        return DifyError(
            401, "unauthorized", "Authorization header must be provided and start with 'Bearer'"
        )
    return DifyError(401, "unauthorized", "Access token is invalid")


async def _json_body(ctx: _Context) -> dict[str, Any]:
    request = ctx.request
    body = await request.body()
    ctx.exchange.request_body = body
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (content_type == "application/json" or content_type.endswith("+json")):
        raise DifyError(
            415,
            "unsupported_media_type",
            "Did not attempt to load JSON data because the request Content-Type was not "
            "'application/json'.",
        )
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise DifyError(400, "bad_request", f"Failed to decode JSON object: {exc}") from exc
    if not isinstance(data, dict):
        raise DifyError(400, "bad_request", "The JSON body must be an object.")
    return data


def _user_from(value: Any) -> str:
    if value is None or value == "":
        raise invalid_param("Arg user must be provided.")
    return str(value)


class DifyApi:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    # --- runs -----------------------------------------------------------------------------

    async def workflows_run(self, ctx: _Context) -> Response:
        body = await _json_body(ctx)
        user = _user_from(body.get("user"))
        if not ctx.app.is_workflow:
            raise DifyError(400, "not_workflow_app", MODE_MISMATCH)
        inputs, mode = self._run_args(body)
        inputs = self._validated_inputs(ctx.app, inputs, user)
        run, subscriber = self.sim.start_run(ctx.app, user, inputs, subscribe=mode == "streaming")
        if subscriber is not None:
            return self._stream(ctx, run, subscriber, self._original_terminal(run))
        return await self._blocking_workflow(run)

    async def chat_messages(self, ctx: _Context) -> Response:
        body = await _json_body(ctx)
        user = _user_from(body.get("user"))
        if ctx.app.mode not in ("advanced-chat", "chat"):
            raise DifyError(400, "not_chat_app", MODE_MISMATCH)
        query = body.get("query")
        if not isinstance(query, str):
            raise invalid_param("query is required and must be a string")
        inputs, mode = self._run_args(body)
        conversation = self.sim.conversation(ctx.app, user, body.get("conversation_id"))
        if conversation is None:
            raise not_found("Conversation Not Exists.")
        if conversation.inputs is None:
            conversation.inputs = self._validated_inputs(ctx.app, inputs, user)
        # As Dify: a message that goes on with a conversation runs with the inputs it started
        # with; the ones it sends are neither checked nor used.
        inputs = conversation.inputs
        files = self._message_files(ctx.app, user, body.get("files"))
        if ctx.app.mode == "chat":
            return self._plain_chat(ctx, user, query, conversation.id, mode)
        run, subscriber = self.sim.start_run(
            ctx.app,
            user,
            inputs,
            query=query,
            conversation=conversation,
            subscribe=mode == "streaming",
            files=files,
        )
        if subscriber is not None:
            return self._stream(ctx, run, subscriber, self._original_terminal(run))
        await run.segment_done.wait()
        return JSONResponse(
            {
                "event": "message",
                "task_id": run.task_id,
                "id": run.message_id,
                "message_id": run.message_id,
                "conversation_id": conversation.id,
                "mode": "advanced-chat",
                "answer": run.answer,
                "metadata": {"usage": run.usage(), "retriever_resources": []},
                "created_at": run.created_at,
            }
        )

    def _message_files(self, app: AppSpec, user: str, files: Any) -> list[dict[str, Any]]:
        """A message's `files` as Dify takes them: each an upload of the same `user` (files
        are visible only to requests carrying it), allowed by the app's file upload feature;
        ignored when the app has none."""

        try:
            return validate_message_files(app.file_upload, files, self._uploads_of(user))
        except InvalidInput as exc:
            raise invalid_param(str(exc)) from exc

    def _uploads_of(self, user: str) -> Any:
        """Looks up an upload as Dify lets `user` use it: only one of their own."""

        def find_upload(upload_id: str) -> tuple[str, str] | None:
            upload = self.sim.uploads.get(upload_id)
            if upload is None or upload.user != user:
                return None
            return upload.extension, upload.mime_type

        return find_upload

    def _run_args(self, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        inputs = body.get("inputs")
        if not isinstance(inputs, dict):
            raise invalid_param("inputs is required and must be an object")
        mode = body.get("response_mode") or "blocking"
        if mode not in ("blocking", "streaming"):
            raise invalid_param("response_mode must be one of: blocking, streaming")
        return inputs, mode

    def _validated_inputs(self, app: AppSpec, inputs: dict[str, Any], user: str) -> dict[str, Any]:
        try:
            return validate_start_inputs(app.inputs, inputs, self._uploads_of(user))
        except InvalidInput as exc:
            raise invalid_param(str(exc)) from exc

    async def _blocking_workflow(self, run: Run) -> Response:
        # Blocking mode on a Human Input app just ends `paused`, no token for the caller (D17).
        await run.segment_done.wait()
        return JSONResponse(
            {
                "task_id": run.task_id,
                "workflow_run_id": run.id,
                "data": {
                    "id": run.id,
                    "workflow_id": run.app.workflow_id,
                    "status": run.status,
                    "outputs": run.outputs if run.is_finished else {},
                    "error": run.error,
                    "elapsed_time": run.elapsed,
                    "total_tokens": run.total_tokens,
                    "total_steps": run.total_steps,
                    "created_at": run.created_at,
                    "finished_at": run.finished_at,
                },
            }
        )

    def _plain_chat(
        self, ctx: _Context, user: str, query: str, conversation_id: str, mode: str
    ) -> Response:
        """A chat app has no graph; it answers so that a mode mismatch can be shown."""
        message_id = str(uuid.uuid4())
        task_id = str(uuid.uuid4())
        created_at = int(time.time())
        answer = f"You said: {query}"
        common = {"task_id": task_id, "message_id": message_id, "conversation_id": conversation_id}
        usage = {
            "prompt_tokens": 8,
            "completion_tokens": 4,
            "total_tokens": 12,
            "currency": "USD",
            "latency": 0.01,
        }
        if mode == "blocking":
            return JSONResponse(
                {
                    "event": "message",
                    **common,
                    "id": message_id,
                    "mode": "chat",
                    "answer": answer,
                    "metadata": {"usage": usage},
                    "created_at": created_at,
                }
            )
        events: list[Event] = [
            {
                "event": "message",
                **common,
                "id": message_id,
                "answer": answer,
                "created_at": created_at,
            },
            {
                "event": "message_end",
                **common,
                "id": message_id,
                "metadata": {"usage": usage},
                "created_at": created_at,
            },
        ]

        async def gen() -> AsyncIterator[Event | str]:
            for event in events:
                yield event

        return self._sse(ctx, gen())

    def _original_terminal(self, run: Run) -> Callable[[Event], bool]:
        chatflow = run.app.is_chatflow

        def terminal(event: Event) -> bool:
            name = event.get("event")
            if name in ("workflow_paused", "error"):
                return True
            if name == "workflow_finished":
                # A failed chatflow still sends its `error` after `workflow_finished`.
                return not (chatflow and event["data"]["status"] == "failed")
            return False

        return terminal

    def _stream(
        self,
        ctx: _Context,
        run: Run,
        subscriber: Subscriber,
        terminal: Callable[[Event], bool],
        *,
        replay: list[Event] | None = None,
        idle_timeout: float | None = None,
        ping_first: bool = False,
        close_after_replay: bool = False,
    ) -> Response:
        return self._sse(
            ctx,
            self._live(
                run, subscriber, terminal, replay, idle_timeout, ping_first, close_after_replay
            ),
        )

    async def _live(
        self,
        run: Run,
        subscriber: Subscriber,
        terminal: Callable[[Event], bool],
        replay: list[Event] | None,
        idle_timeout: float | None,
        ping_first: bool,
        close_after_replay: bool,
    ) -> AsyncIterator[Event | str]:
        options = self.sim.options
        loop = asyncio.get_running_loop()
        try:
            if ping_first:
                yield PING
            for event in replay or ():
                yield event
            if close_after_replay:
                return
            last_real = next_ping_from = loop.time()
            while True:
                now = loop.time()
                deadline = next_ping_from + options.ping_interval
                if idle_timeout is not None:
                    deadline = min(deadline, last_real + idle_timeout)
                try:
                    event = await asyncio.wait_for(subscriber.queue.get(), max(0.0, deadline - now))
                except TimeoutError:
                    now = loop.time()
                    # Pings do not count as activity: a paused run's stream still closes (D14).
                    if idle_timeout is not None and now - last_real >= idle_timeout:
                        return
                    if now - next_ping_from >= options.ping_interval:
                        yield PING
                        next_ping_from = now
                    continue
                last_real = next_ping_from = loop.time()
                yield event
                if terminal(event):
                    return
        finally:
            run.unsubscribe(subscriber)

    def _sse(self, ctx: _Context, events: AsyncIterator[Event | str]) -> Response:
        sim = self.sim
        exchange = ctx.exchange
        exchange.events = []
        drop = ctx.fault("drop_stream")
        stream_error = ctx.fault("stream_error")
        request = ctx.request

        def error_event(item: dict[str, Any] | None) -> dict[str, Any]:
            assert stream_error is not None
            exchange.fault = "stream_error"
            error: dict[str, Any] = {
                "event": "error",
                "status": stream_error.status,
                "code": stream_error.code or "internal_server_error",
                "message": stream_error.message or "Internal Server Error.",
            }
            if item is not None and exchange.app_mode == "advanced-chat":
                error.update(
                    {
                        k: item[k]
                        for k in ("conversation_id", "message_id", "created_at")
                        if k in item
                    }
                )
            assert exchange.events is not None
            exchange.events.append(error)
            return error

        async def body() -> AsyncIterator[bytes]:
            sim.stats.streams_open += 1
            sim.stats.streams_total += 1
            sent = 0
            try:
                if drop is not None and drop.after_events <= 0:
                    exchange.fault, exchange.completed = "drop_stream", False
                    await abort_connection(request)
                    return
                if stream_error is not None and stream_error.after_events <= 0:
                    # Before any event: Dify failed the stream as it began.
                    yield encode_event(error_event(None))
                    return
                async for item in events:
                    if item == PING:
                        exchange.pings += 1
                        yield encode_event(PING)
                        continue
                    assert isinstance(item, dict)
                    assert exchange.events is not None
                    exchange.events.append(item)
                    sent += 1
                    yield encode_event(item)
                    if drop is not None and sent >= drop.after_events:
                        exchange.fault, exchange.completed = "drop_stream", False
                        await abort_connection(request)
                        return
                    if stream_error is not None and sent >= stream_error.after_events:
                        yield encode_event(error_event(item))
                        return
            finally:
                sim.stats.streams_open -= 1
                with contextlib.suppress(Exception):
                    await events.aclose()  # type: ignore[attr-defined]
                sim.recorder.add(exchange)

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # --- following runs -------------------------------------------------------------------

    async def workflow_events(self, ctx: _Context) -> Response:
        request = ctx.request
        user = _user_from(request.query_params.get("user"))
        if not ctx.app.has_graph:
            raise DifyError(400, "not_workflow_app", MODE_MISMATCH)
        run = self.sim.find_run(ctx.app, request.path_params["workflow_run_id"])
        if run is None or run.user != user:
            raise not_found("Workflow run not found")
        snapshot = request.query_params.get("include_state_snapshot", "false").lower() == "true"
        retained_log = snapshot and self.sim.options.retained_log
        if run.is_finished and not retained_log:
            finished = self.sim.finished_event(run)

            async def one() -> AsyncIterator[Event | str]:
                yield finished

            return self._sse(ctx, one())
        continue_on_pause = request.query_params.get("continue_on_pause", "false").lower() == "true"
        # Subscribing and building the replay happen in one step of the event loop, so no event
        # falls between them and none is sent twice.
        subscriber = run.subscribe()
        idle = self.sim.options.idle_timeout
        if snapshot:

            def snapshot_terminal(event: Event) -> bool:
                name = event.get("event")
                if continue_on_pause:
                    return name == "workflow_finished"
                return name in ("workflow_finished", "workflow_paused", "error")

            if retained_log:
                # The log as it was published, up to the first event that ends the stream.
                replay = []
                for event in run.log:
                    replay.append(event)
                    if snapshot_terminal(event):
                        break
            else:
                replay = self.sim.snapshot_events(run)

            return self._stream(
                ctx,
                run,
                subscriber,
                snapshot_terminal,
                replay=replay,
                idle_timeout=idle,
                ping_first=True,
                close_after_replay=any(snapshot_terminal(e) for e in replay),
            )

        def live_terminal(event: Event) -> bool:
            # continue_on_pause leaves the live path with no terminal events at all (D13).
            return not continue_on_pause and event.get("event") in (
                "workflow_finished",
                "workflow_paused",
                "error",
            )

        return self._stream(ctx, run, subscriber, live_terminal, idle_timeout=idle, ping_first=True)

    async def workflow_run_detail(self, ctx: _Context) -> Response:
        if not ctx.app.has_graph:
            raise DifyError(400, "not_workflow_app", MODE_MISMATCH)
        run = self.sim.find_run(ctx.app, ctx.request.path_params["workflow_run_id"])
        if run is None:
            raise not_found("Workflow run not found.")
        return JSONResponse(
            {
                "id": run.id,
                "workflow_id": run.app.workflow_id,
                "status": run.status,
                "inputs": json_text(run.inputs),
                "outputs": run.outputs if run.is_finished else {},
                "error": run.error,
                "total_steps": run.total_steps,
                "total_tokens": run.total_tokens,
                "created_at": run.created_at,
                "finished_at": run.finished_at,
                "elapsed_time": run.elapsed,
            }
        )

    async def workflow_stop(self, ctx: _Context) -> Response:
        body = await _json_body(ctx)
        _user_from(body.get("user"))
        if not ctx.app.is_workflow:
            raise DifyError(400, "not_workflow_app", MODE_MISMATCH)
        # Dify only raises a stop flag: an unknown task, a finished or a paused run answer
        # success and nothing changes. `user` is not checked (D12).
        run = self.sim.find_task(ctx.app, ctx.request.path_params["task_id"])
        if run is not None:
            run.stop()
        return JSONResponse({"result": "success"})

    async def chat_stop(self, ctx: _Context) -> Response:
        body = await _json_body(ctx)
        user = _user_from(body.get("user"))
        if ctx.app.mode not in ("advanced-chat", "chat"):
            raise DifyError(400, "not_chat_app", MODE_MISMATCH)
        run = self.sim.find_task(ctx.app, ctx.request.path_params["task_id"])
        # Another user's stop does nothing, silently.
        if run is not None and run.user == user:
            run.stop()
        return JSONResponse({"result": "success"})

    # --- forms ----------------------------------------------------------------------------

    def _form_for(self, ctx: _Context) -> Form:
        record = self.sim.tokens.get(ctx.request.path_params["form_token"])
        # Another app's form, and an email or console recipient's token, are all "not found".
        if record is None or record.form.run.app.name != ctx.app.name or record.channel != "webapp":
            raise not_found("Form not found")
        return record.form

    def _ensure_active(self, form: Form) -> None:
        if form.status == "submitted":
            raise DifyError(
                412,
                "human_input_form_submitted",
                f"This form has already been submitted by another user, form_id={form.id}",
            )
        if form.is_expired():
            raise DifyError(
                412, "human_input_form_expired", f"This form has expired, form_id={form.id}"
            )

    async def form_get(self, ctx: _Context) -> Response:
        form = self._form_for(ctx)
        self._ensure_active(form)
        return JSONResponse(
            {
                "form_content": self.sim.form_content(form),
                "inputs": self.sim.form_inputs(form, resolve_options=True),
                "resolved_default_values": {
                    name: as_text(value) for name, value in self.sim.default_values(form).items()
                },
                "user_actions": [dict(a) for a in form.spec.actions],
                "expiration_time": form.expiration_time,
            }
        )

    async def form_submit(self, ctx: _Context) -> Response:
        received = time.time()
        body = await _json_body(ctx)
        user = _user_from(body.get("user"))
        inputs = body.get("inputs")
        action = body.get("action")
        # The body's shape is checked before the token, as Dify's payload model does.
        if not isinstance(inputs, dict):
            raise invalid_param("inputs: Input should be a valid dictionary")
        if not isinstance(action, str):
            raise invalid_param("action: Input should be a valid string")
        form = self._form_for(ctx)
        self.sim.stats.submit_attempts[form.id] += 1
        self.sim.stats.submit_received_at.setdefault(form.id, received)
        self._ensure_active(form)
        end_user = self.sim.end_user(ctx.app, user)

        def find_upload(upload_id: str) -> tuple[str, str] | None:
            upload = self.sim.uploads.get(upload_id)
            if upload is None:
                return None
            if self.sim.options.strict_file_owner and upload.created_by != form.run.end_user.id:
                return None
            return upload.extension, upload.mime_type

        try:
            stored = validate_submission(
                form.spec.inputs, [a["id"] for a in form.spec.actions], action, inputs, find_upload
            )
        except InvalidFormData as exc:
            raise DifyError(400, "invalid_form_data", str(exc)) from exc
        self.sim.apply_submission(form, action, stored, submitted_by=end_user.id)
        if ctx.fault("drop_after_submit") is not None:
            ctx.exchange.fault, ctx.exchange.completed = "drop_after_submit", False
            await abort_connection(ctx.request)
        return JSONResponse({})

    # --- files ----------------------------------------------------------------------------

    async def files_upload(self, ctx: _Context) -> Response:
        request = ctx.request
        content_type = request.headers.get("content-type", "")
        mime, _, params = content_type.partition(";")
        boundary = None
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.lower() == "boundary":
                boundary = value.strip().strip('"')
        if mime.strip().lower() != "multipart/form-data" or not boundary:
            raise DifyError(400, "no_file_uploaded", "Please upload your file.")
        ctx.exchange.request_body = None
        parser = StreamingMultipart(boundary.encode("latin-1"))
        cut = ctx.fault("close_upload")
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if cut is not None and received >= cut.after_bytes:
                    ctx.exchange.fault, ctx.exchange.completed = "close_upload", False
                    await abort_connection(request)
                    return Response(status_code=499)
                parser.feed(chunk)
            parser.close()
        except Exception as exc:
            if isinstance(exc, DifyError):
                raise
            raise DifyError(400, "bad_request", f"Malformed multipart body: {exc}") from exc
        files = parser.files()
        ctx.exchange.request_parts = [
            {
                "name": p.name,
                "filename": p.filename,
                "content_type": p.content_type,
                "size": p.size,
                "value": p.text.decode("utf-8", "replace") if p.filename is None else None,
            }
            for p in parser.parts
        ]
        if not any(p.name == "file" for p in files):
            raise DifyError(400, "no_file_uploaded", "Please upload your file.")
        if len(files) > 1:
            raise DifyError(400, "too_many_files", "Only one file is allowed.")
        part = files[0]
        if not part.content_type:
            raise DifyError(415, "unsupported_file_type", "File type not allowed.")
        if not part.filename:
            raise DifyError(
                400, "filename_not_exists_error", "The specified filename does not exist."
            )
        if "/" in part.filename or "\\" in part.filename:
            raise invalid_param("Filename contains invalid characters")
        extension = extension_of(part.filename)
        if part.size > size_limit_for(extension, self.sim.options.size_limits):
            # Dify's message for this error is empty (CONTRACT §5).
            raise DifyError(413, "file_too_large", "")
        user = parser.field("user") or "DEFAULT-USER"
        end_user = self.sim.end_user(ctx.app, user)
        upload = UploadedFile(
            id=str(uuid.uuid4()),
            name=part.filename[:200],
            size=part.size,
            extension=extension,
            mime_type=part.content_type,
            created_by=end_user.id,
            user=user,
            created_at=int(time.time()),
            sha256=part.sha256,
            app_name=ctx.app.name,
        )
        self.sim.uploads[upload.id] = upload
        self.sim.stats.uploads += 1
        self.sim.stats.upload_bytes += upload.size
        base = str(request.base_url).rstrip("/")
        signature = secrets.token_urlsafe(24)
        return JSONResponse(
            {
                "id": upload.id,
                "name": upload.name,
                "size": upload.size,
                "extension": upload.extension,
                "mime_type": upload.mime_type,
                "created_by": upload.created_by,
                "created_at": upload.created_at,
                "preview_url": None,
                "source_url": f"{base}/files/{upload.id}/file-preview?timestamp={upload.created_at}"
                f"&nonce={secrets.token_hex(8)}&sign={signature}",
                "original_url": None,
                "user_id": None,
                "tenant_id": self.sim.tenant_id,
                "conversation_id": None,
                "reference": None,
                "file_key": None,
            },
            status_code=201,
        )

    # --- app ------------------------------------------------------------------------------

    async def parameters(self, ctx: _Context) -> Response:
        app = ctx.app
        limits = self.sim.options.size_limits
        return JSONResponse(
            {
                "opening_statement": app.opening_statement or None,
                "suggested_questions": [],
                "suggested_questions_after_answer": {"enabled": False},
                "speech_to_text": {"enabled": False},
                "text_to_speech": {
                    "enabled": False,
                    "voice": "",
                    "language": "",
                    "autoPlay": "disabled",
                },
                "retriever_resource": {"enabled": False},
                "annotation_reply": {"enabled": False},
                "more_like_this": {"enabled": False},
                "sensitive_word_avoidance": {"enabled": False},
                "user_input_form": [item.user_input_form_item() for item in app.inputs],
                "file_upload": self._file_upload(app),
                "system_parameters": {
                    "file_size_limit": limits["file"] // (1024 * 1024),
                    "image_file_size_limit": limits["image"] // (1024 * 1024),
                    "audio_file_size_limit": limits["audio"] // (1024 * 1024),
                    "video_file_size_limit": limits["video"] // (1024 * 1024),
                    "workflow_file_upload_limit": 10,
                },
            }
        )

    @staticmethod
    def _file_upload(app: AppSpec) -> dict[str, Any]:
        """`file_upload` of /parameters as Dify gives it: the app's file upload feature (its
        kinds, extensions, methods and number), with the older `image` part beside it."""
        config = app.file_upload
        if config is None:
            return {
                "image": {
                    "enabled": False,
                    "number_limits": 3,
                    "detail": "high",
                    "transfer_methods": ["remote_url", "local_file"],
                }
            }
        return {
            "enabled": True,
            **config,
            "image": {
                "enabled": "image" in config["allowed_file_types"],
                "number_limits": config["number_limits"],
                "detail": "high",
                "transfer_methods": config["allowed_file_upload_methods"],
            },
        }

    async def info(self, ctx: _Context) -> Response:
        app = ctx.app
        return JSONResponse(
            {
                "name": app.name,
                "description": app.description,
                "tags": list(app.tags),
                "mode": app.mode,
                "author_name": app.author_name,
            }
        )


# --- the control API ----------------------------------------------------------------------


class ControlApi:
    """`/_sim/...`: inspect and steer the simulator from outside the process."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def _body(self, request: Request) -> Any:
        raw = await request.body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise HTTPException(400, f"invalid JSON: {exc}") from exc

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def apps(self, request: Request) -> Response:
        return JSONResponse(self.sim.describe()["apps"])

    async def stats(self, request: Request) -> Response:
        return JSONResponse(self.sim.stats.snapshot())

    async def reset(self, request: Request) -> Response:
        self.sim.reset_state()
        return JSONResponse({"ok": True})

    async def faults(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse([f.as_dict() for f in self.sim.faults.faults])
        if request.method == "DELETE":
            self.sim.faults.clear()
            return JSONResponse({"ok": True})
        body = await self._body(request)
        items = body if isinstance(body, list) else [body]
        try:
            added = [self.sim.faults.add(Fault.from_dict(item)) for item in items]
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse([f.as_dict() for f in added], status_code=201)

    async def fault(self, request: Request) -> Response:
        removed = self.sim.faults.remove(int(request.path_params["fault_id"]))
        return JSONResponse({"ok": removed}, status_code=200 if removed else 404)

    async def options(self, request: Request) -> Response:
        if request.method != "GET":
            body = await self._body(request)
            try:
                self.sim.options.update(body)
            except (ValueError, TypeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            self.sim.recorder.enabled = self.sim.options.record
        return JSONResponse(self.sim.describe()["options"])

    async def runs(self, request: Request) -> Response:
        return JSONResponse([run.describe() for run in self.sim.runs.values()])

    async def run(self, request: Request) -> Response:
        run = self.sim.runs.get(request.path_params["run_id"])
        if run is None:
            return JSONResponse({"error": "no such run"}, status_code=404)
        return JSONResponse(run.describe())

    async def submit_form(self, request: Request) -> Response:
        body = await self._body(request)
        try:
            done = self.sim.submit_elsewhere(
                request.path_params["form_id"],
                str(body.get("action", "")),
                body.get("inputs") or {},
                channel=str(body.get("channel", "email")),
            )
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"ok": done}, status_code=200 if done else 409)

    async def expire_form(self, request: Request) -> Response:
        form = self.sim.forms.get(request.path_params["form_id"])
        if form is None:
            return JSONResponse({"error": "no such form"}, status_code=404)
        done = self.sim.expire_form(form)
        return JSONResponse({"ok": done}, status_code=200 if done else 409)

    async def records(self, request: Request) -> Response:
        since = int(request.query_params.get("since", "0"))
        return JSONResponse(
            [
                {
                    "index": i,
                    "route": ex.route,
                    "method": ex.method,
                    "path": ex.path,
                    "query": ex.query,
                    "status": ex.status,
                    "app": ex.app,
                    "fault": ex.fault,
                    "completed": ex.completed,
                    "events": [e.get("event") for e in ex.events]
                    if ex.events is not None
                    else None,
                }
                for i, ex in enumerate(self.sim.recorder.exchanges)
                if i >= since
            ]
        )


async def _dify_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return DifyError(
            405, "method_not_allowed", "The method is not allowed for the requested URL."
        ).response()
    if exc.status_code == 404:
        return not_found(
            "The requested URL was not found on the server. If you entered the URL manually please "
            "check your spelling and try again."
        ).response()
    return DifyError(exc.status_code, "bad_request", str(exc.detail)).response()


def create_app(sim: Simulator) -> Starlette:
    api = DifyApi(sim)
    control = ControlApi(sim)

    def ep(route: str, fn: EndpointFn) -> Callable[[Request], Awaitable[Response]]:
        # A bound method, so Starlette treats it as a request handler, not a raw ASGI app.
        return _Endpoint(sim, route, fn).handle

    routes = [
        Route("/v1/workflows/run", ep("workflows_run", api.workflows_run), methods=["POST"]),
        Route("/v1/chat-messages", ep("chat_messages", api.chat_messages), methods=["POST"]),
        Route(
            "/v1/workflow/{workflow_run_id}/events",
            ep("workflow_events", api.workflow_events),
            methods=["GET"],
        ),
        Route(
            "/v1/workflows/run/{workflow_run_id}",
            ep("workflow_run_detail", api.workflow_run_detail),
            methods=["GET"],
        ),
        Route(
            "/v1/workflows/tasks/{task_id}/stop",
            ep("workflow_stop", api.workflow_stop),
            methods=["POST"],
        ),
        Route("/v1/chat-messages/{task_id}/stop", ep("chat_stop", api.chat_stop), methods=["POST"]),
        Route("/v1/form/human_input/{form_token}", ep("form_get", api.form_get), methods=["GET"]),
        Route(
            "/v1/form/human_input/{form_token}",
            ep("form_submit", api.form_submit),
            methods=["POST"],
        ),
        Route("/v1/files/upload", ep("files_upload", api.files_upload), methods=["POST"]),
        Route("/v1/parameters", ep("parameters", api.parameters), methods=["GET"]),
        Route("/v1/info", ep("info", api.info), methods=["GET"]),
        Route("/_sim/health", control.health, methods=["GET"]),
        Route("/_sim/apps", control.apps, methods=["GET"]),
        Route("/_sim/stats", control.stats, methods=["GET"]),
        Route("/_sim/reset", control.reset, methods=["POST"]),
        Route("/_sim/faults", control.faults, methods=["GET", "POST", "DELETE"]),
        Route("/_sim/faults/{fault_id:int}", control.fault, methods=["DELETE"]),
        Route("/_sim/options", control.options, methods=["GET", "POST", "PATCH"]),
        Route("/_sim/runs", control.runs, methods=["GET"]),
        Route("/_sim/runs/{run_id}", control.run, methods=["GET"]),
        Route("/_sim/forms/{form_id}/submit", control.submit_form, methods=["POST"]),
        Route("/_sim/forms/{form_id}/expire", control.expire_form, methods=["POST"]),
        Route("/_sim/records", control.records, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sim.loop = asyncio.get_running_loop()
        yield
        await sim.shutdown()

    return Starlette(
        routes=routes,
        exception_handlers={404: _dify_http_error, 405: _dify_http_error, 400: _dify_http_error},
        lifespan=lifespan,
    )
