"""The simulator's in-memory Dify: apps, end users, uploads, runs walking their graphs, forms.

Everything here runs on one asyncio event loop and is touched only from it, so there are no locks:
a submit, an expiry and a stream subscription are each applied in one synchronous step.

A run is one asyncio task walking its scenario graph. A Human Input node awaits its form's future;
when every running branch waits on a form the run is paused (``human_input_required`` per pending
form, then one ``workflow_paused``). A submit resolves the future after ``resume_delay`` and the
branch goes on, as Dify's resume task does. Events go to every subscriber queue of the run: the
original streaming response and any ``/workflow/{id}/events`` stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inbox.simulator.faults import FaultBook
from inbox.simulator.files import DEFAULT_SIZE_LIMITS
from inbox.simulator.recorder import Recorder
from inbox.simulator.scenarios import AppSpec, NodeSpec, load_dir
from inbox.simulator.templates import VariablePool, lookup, render, render_outputs, resolve

Event = dict[str, Any]
PING = "ping"
ACTIVE_RUN_STATUSES = frozenset({"running", "paused"})
TERMINAL_RUN_STATUSES = frozenset({"succeeded", "failed", "stopped", "partial-succeeded"})


@dataclass
class Options:
    """Knobs for tests and benchmarks; the defaults are Dify's own numbers."""

    idle_timeout: float = 300.0  # a resume stream closes after this long without a real event
    ping_interval: float = 10.0
    resume_delay: float = 0.05  # between an accepted submit and the resumed run's first event
    time_scale: float = 1.0  # multiplies scenario delays (node work, text chunks); 0 = instant
    timeout_scale: float = 1.0  # multiplies Human Input node timeouts
    global_timeout: float = 0.0  # HUMAN_INPUT_GLOBAL_TIMEOUT_SECONDS; <= 0 disables it
    record: bool = False  # keep every request/response pair (and each SSE event) for validation
    reason_type_key: str = "TYPE"  # newer Dify serializes pause reasons with "type"
    include_submitted_data: bool = True  # `human_input_form_filled.data.submitted_data` (D8)
    strict_file_owner: bool = False  # reject another end user's upload at submit (docs, not src)
    # Newer builds: a snapshot stream replays the run's retained event log from its start
    # (every chunk, fill and pause again) instead of a state snapshot (CONTRACT 6.1).
    retained_log: bool = False
    size_limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SIZE_LIMITS))

    def update(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if not hasattr(self, key):
                raise ValueError(f"unknown option {key!r}")
            current = getattr(self, key)
            if isinstance(current, bool):
                value = bool(value)
            elif isinstance(current, float):
                value = float(value)
            setattr(self, key, value)


class _EndRun(Exception):
    """An End node was reached: the run succeeds with its outputs."""


class NodeFailed(Exception):
    pass


@dataclass
class EndUser:
    id: str
    app_name: str
    session_id: str


@dataclass
class UploadedFile:
    id: str
    name: str
    size: int
    extension: str
    mime_type: str
    created_by: str  # the end user's id
    user: str  # the end user's session id (the `user` string)
    created_at: int
    sha256: str
    app_name: str


@dataclass
class Conversation:
    id: str
    app_name: str
    user: str
    # Its first message's inputs: Dify runs every later message with these, whatever inputs
    # that message sends.
    inputs: dict[str, Any] | None = None


@dataclass
class NodeExecution:
    id: str
    node_id: str
    node_type: str
    title: str
    index: int
    created_at: int
    status: str = "running"
    finished_at: int | None = None
    elapsed_time: float = 0.0


class Subscriber:
    """A stream's view of a run: a queue of events, fed from the moment it subscribes."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()


@dataclass
class Form:
    id: str
    run: Run
    node: NodeSpec
    created_at: float
    expiration_time: int  # Unix seconds, as Dify reports it
    webapp_token: str | None
    email_token: str | None
    console_token: str
    status: str = "waiting"  # waiting | submitted | timeout | expired
    action_id: str | None = None
    submitted_data: dict[str, Any] | None = None
    rendered_content: str | None = None
    submitted_by: str | None = None  # end user id or a channel name
    future: asyncio.Future[tuple[str, str | None]] | None = None
    expiry_task: asyncio.Task[None] | None = None
    announced: bool = False

    @property
    def spec(self) -> Any:
        assert self.node.form is not None
        return self.node.form

    @property
    def deadline(self) -> float:
        """When the form stops being answerable: its own expiry, or the global cap if sooner."""
        deadline = float(self.expiration_time)
        cap = self.run.sim.options.global_timeout
        if cap > 0:
            deadline = min(deadline, self.created_at + cap)
        return deadline

    def is_expired(self, now: float | None = None) -> bool:
        if self.status in ("timeout", "expired"):
            return True
        return self.status == "waiting" and self.deadline <= (now or time.time())

    def approval_channels(self) -> list[str]:
        return list(self.spec.delivery)


class Run:
    def __init__(
        self,
        sim: Simulator,
        app: AppSpec,
        end_user: EndUser,
        inputs: dict[str, Any],
        *,
        query: str = "",
        conversation: Conversation | None = None,
        files: list[dict[str, Any]] | None = None,
    ) -> None:
        self.sim = sim
        self.app = app
        self.end_user = end_user
        self.user = end_user.session_id
        self.id = str(uuid.uuid4())
        self.task_id = str(uuid.uuid4())
        self.inputs = inputs
        self.query = query
        # A chat message's files, as sent (`files` of /chat-messages).
        self.files = list(files or [])
        self.conversation = conversation
        self.message_id = str(uuid.uuid4()) if app.is_chatflow else None
        self.created_at = int(time.time())
        self._started = time.monotonic()
        self.finished_at: int | None = None
        self.status = "running"
        self.outputs: dict[str, Any] = {}
        self.error: str | None = None
        self.answer = ""
        self.total_tokens = 0
        self.total_steps = 0
        self.pool: VariablePool = {
            "sys": {
                "query": query,
                "user_id": self.user,
                "app_id": app.id,
                "workflow_id": app.workflow_id,
                "workflow_run_id": self.id,
                "conversation_id": conversation.id if conversation else None,
            },
            "start": dict(inputs),
        }
        self.executions: list[NodeExecution] = []
        self.forms: list[Form] = []
        self.log: list[Event] = []
        self.subscribers: set[Subscriber] = set()
        self.segment_done = asyncio.Event()  # set at each pause and at the end, for blocking mode
        self.task: asyncio.Task[None] | None = None
        self._active = 1
        self._blocked = 0
        self._stopping = False

    # --- events ---------------------------------------------------------------------------

    @property
    def elapsed(self) -> float:
        return round(time.monotonic() - self._started, 4)

    def event(self, name: str, data: dict[str, Any] | None = None, **extra: Any) -> Event:
        event: Event = {"event": name}
        if name != "error":
            event["task_id"] = self.task_id
        if name not in ("message", "message_end", "message_replace", "error"):
            event["workflow_run_id"] = self.id
        if self.app.is_chatflow:
            assert self.conversation is not None
            event["conversation_id"] = self.conversation.id
            event["message_id"] = self.message_id
            event["created_at"] = int(time.time())
        if data is not None:
            event["data"] = data
        event.update(extra)
        return event

    def publish(self, event: Event) -> None:
        self.log.append(event)
        for subscriber in self.subscribers:
            subscriber.queue.put_nowait(event)

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber()
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    # --- running --------------------------------------------------------------------------

    def start(self) -> None:
        self.task = self.sim.spawn(self._main())

    async def _sleep(self, seconds: float) -> None:
        scaled = seconds * self.sim.options.time_scale
        if scaled > 0:
            await asyncio.sleep(scaled)

    async def _main(self) -> None:
        try:
            self.publish(
                self.event(
                    "workflow_started",
                    {
                        "id": self.id,
                        "workflow_id": self.app.workflow_id,
                        "inputs": self.inputs,
                        "created_at": self.created_at,
                        "reason": "initial",
                    },
                )
            )
            execution = self._node_started("start", "start", "Start")
            self._node_finished(execution, inputs=self.inputs, outputs=dict(self.inputs))
            # A branch cut short by an unwired form timeout still ends the run normally.
            await self._run_sequence(self.app.flow)
            self._finish("succeeded")
        except _EndRun:
            self._finish("succeeded")
        except NodeFailed as failure:
            self._finish("failed", error=str(failure))
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            self._finish("stopped", error="Stopped by user.")

    async def _run_sequence(self, node_ids: tuple[str, ...]) -> bool:
        """Run nodes in order; False when the branch ends early (a form expired unwired)."""
        for node_id in node_ids:
            node = self.app.nodes[node_id]
            if node.type == "parallel":
                await self._run_parallel(node)
            elif node.form is not None:
                if not await self._run_form(node):
                    return False
            else:
                await self._run_node(node)
        return True

    async def _run_parallel(self, node: NodeSpec) -> None:
        self._active += len(node.parallel) - 1

        async def branch(ids: tuple[str, ...]) -> None:
            try:
                await self._run_sequence(ids)
            finally:
                self._active -= 1
                self._check_pause()

        try:
            async with asyncio.TaskGroup() as group:
                for ids in node.parallel:
                    group.create_task(branch(ids))
        except BaseExceptionGroup as failed:
            # One branch failing (or ending the run) cancels its siblings, as in Dify.
            raise failed.exceptions[0] from None
        self._active += 1

    def _node_started(self, node_id: str, node_type: str, title: str) -> NodeExecution:
        execution = NodeExecution(
            id=str(uuid.uuid4()),
            node_id=node_id,
            node_type=node_type,
            title=title,
            index=len(self.executions) + 1,
            created_at=int(time.time()),
        )
        execution.elapsed_time = time.monotonic()
        self.executions.append(execution)
        self.publish(
            self.event(
                "node_started",
                {
                    "id": execution.id,
                    "node_id": node_id,
                    "node_type": node_type,
                    "title": title,
                    "index": execution.index,
                    "predecessor_node_id": self.executions[-2].node_id
                    if len(self.executions) > 1
                    else None,
                    "inputs": None,
                    "created_at": execution.created_at,
                    "extras": {},
                    "iteration_id": None,
                    "loop_id": None,
                },
            )
        )
        return execution

    def _node_finished(
        self,
        execution: NodeExecution,
        *,
        inputs: dict[str, Any] | None = None,
        outputs: dict[str, Any] | None = None,
        error: str | None = None,
        tokens: int = 0,
    ) -> None:
        execution.status = "failed" if error else "succeeded"
        execution.finished_at = int(time.time())
        execution.elapsed_time = round(time.monotonic() - execution.elapsed_time, 4)
        self.total_steps += 1
        self.total_tokens += tokens
        if outputs is not None and not error:
            self.pool[execution.node_id] = outputs
        self.publish(
            self.event(
                "node_finished",
                {
                    "id": execution.id,
                    "node_id": execution.node_id,
                    "node_type": execution.node_type,
                    "title": execution.title,
                    "index": execution.index,
                    "predecessor_node_id": None,
                    "inputs": inputs,
                    "process_data": None,
                    "outputs": outputs if not error else None,
                    "status": execution.status,
                    "error": error,
                    "elapsed_time": execution.elapsed_time,
                    "execution_metadata": {
                        "total_tokens": tokens,
                        "total_price": round(tokens * 0.000002, 6),
                        "currency": "USD",
                    }
                    if tokens
                    else None,
                    "created_at": execution.created_at,
                    "finished_at": execution.finished_at,
                    "files": [],
                    "iteration_id": None,
                    "loop_id": None,
                },
            )
        )

    async def _run_node(self, node: NodeSpec) -> None:
        execution = self._node_started(node.id, node.type, node.title)
        await self._sleep(node.delay)
        tokens = 0
        outputs = resolve(node.outputs, self.pool) if node.outputs else {}
        if node.text is not None and not node.fail:
            text = render(node.text, self.pool)
            await self._stream_text(node, text)
            outputs = (
                {"text": text, **outputs} if node.type == "llm" else {"answer": text, **outputs}
            )
            if node.type == "llm":
                tokens = max(1, len(text.split()) * 4 // 3) + 120
        if node.fail:
            self._node_finished(execution, error=node.fail, tokens=tokens)
            raise NodeFailed(node.fail)
        self._node_finished(execution, outputs=outputs, tokens=tokens)
        if node.type == "end":
            self.outputs = outputs
            raise _EndRun

    async def _stream_text(self, node: NodeSpec, text: str) -> None:
        if not node.stream:
            return
        words = text.split(" ")
        for start in range(0, len(words), node.chunk_words):
            chunk = " ".join(words[start : start + node.chunk_words])
            if start + node.chunk_words < len(words):
                chunk += " "
            if self.app.is_chatflow:
                self.answer += chunk
                assert self.message_id is not None
                self.publish(
                    self.event(
                        "message",
                        id=self.message_id,
                        answer=chunk,
                        from_variable_selector=[node.id, "text"],
                    )
                )
            else:
                self.publish(
                    self.event(
                        "text_chunk", {"text": chunk, "from_variable_selector": [node.id, "text"]}
                    )
                )
            await self._sleep(node.chunk_delay)

    async def _run_form(self, node: NodeSpec) -> bool:
        execution = self._node_started(node.id, node.type, node.title)
        form = self.sim.create_form(self, node)
        assert form.future is not None
        self._blocked += 1
        self._check_pause()
        try:
            outcome, action_id = await form.future
        finally:
            self._blocked -= 1
        spec = form.spec
        if outcome == "timeout":
            self._node_finished(execution, outputs={"__action_id": "__timeout"})
            if spec.timeout_branch is None:
                return False
            return await self._run_sequence(spec.timeout_branch)
        assert action_id is not None and form.submitted_data is not None
        outputs = {
            **form.submitted_data,
            "__action_id": action_id,
            "__rendered_content": form.rendered_content,
        }
        self._node_finished(execution, outputs=outputs)
        branch = spec.branches.get(action_id)
        if branch:
            return await self._run_sequence(branch)
        return True

    def _check_pause(self) -> None:
        if self.status != "running" or self._blocked == 0 or self._blocked != self._active:
            return
        self.status = "paused"
        pending = self.pending_forms()
        reasons = []
        for form in pending:
            form.announced = True
            data = self.sim.form_event_data(form, form.webapp_token, resolve_options=False)
            self.publish(self.event("human_input_required", data))
            reasons.append(self.sim.pause_reason(data))
        self.publish(self.event("workflow_paused", self.paused_data(reasons)))
        self.segment_done.set()

    def paused_data(self, reasons: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "workflow_run_id": self.id,
            "paused_nodes": [form.node.id for form in self.pending_forms()],
            # Dify blanks the outputs of live Service API pause events (D10).
            "outputs": {},
            "reasons": reasons,
            "status": "paused",
            "created_at": self.created_at,
            "elapsed_time": self.elapsed,
            "total_tokens": self.total_tokens,
            "total_steps": self.total_steps,
        }

    def pending_forms(self) -> list[Form]:
        return [form for form in self.forms if form.status == "waiting"]

    def wake(self) -> None:
        """The run leaves its pause: a resumed Dify run gets a new task id."""
        if self.status == "paused":
            self.status = "running"
            self.task_id = str(uuid.uuid4())
            self.segment_done.clear()

    def stop(self) -> bool:
        if self.status != "running" or self.task is None or self.task.done():
            return False
        self._stopping = True
        self.task.cancel()
        return True

    def _finish(self, status: str, error: str | None = None) -> None:
        self.status = status
        self.error = error
        self.finished_at = int(time.time())
        if self.app.is_chatflow:
            self.outputs = {"answer": self.answer, **self.outputs}
        for form in self.forms:
            if form.status == "waiting":
                form.status = "expired"
            if form.expiry_task is not None:
                form.expiry_task.cancel()
        if self.app.is_chatflow and status != "failed":
            self.publish(self.message_end_event())
        self.publish(self.event("workflow_finished", self.finished_data()))
        if self.app.is_chatflow and status == "failed":
            self.publish(
                self.event(
                    "error", status=500, code="internal_server_error", message=error or "Run failed"
                )
            )
        self.segment_done.set()

    def message_end_event(self) -> Event:
        assert self.message_id is not None
        return self.event(
            "message_end",
            id=self.message_id,
            metadata={"usage": self.usage()},
            files=[],
        )

    def usage(self) -> dict[str, Any]:
        prompt = self.total_tokens * 3 // 4
        completion = self.total_tokens - prompt
        return {
            "prompt_tokens": prompt,
            "prompt_unit_price": "0.001",
            "prompt_price_unit": "0.001",
            "prompt_price": f"{prompt * 0.000001:.7f}",
            "completion_tokens": completion,
            "completion_unit_price": "0.002",
            "completion_price_unit": "0.001",
            "completion_price": f"{completion * 0.000002:.7f}",
            "total_tokens": self.total_tokens,
            "total_price": f"{prompt * 0.000001 + completion * 0.000002:.7f}",
            "currency": "USD",
            "latency": self.elapsed,
        }

    def finished_data(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "workflow_id": self.app.workflow_id,
            "status": self.status,
            "outputs": self.outputs,
            "error": self.error,
            "elapsed_time": self.elapsed,
            "total_tokens": self.total_tokens,
            "total_steps": self.total_steps,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "created_by": {"id": self.end_user.id, "user": self.user},
            "exceptions_count": 0,
            "files": [],
        }

    @property
    def is_finished(self) -> bool:
        return self.finished_at is not None

    def describe(self) -> dict[str, Any]:
        """The run's state for the control API and tests."""
        return {
            "id": self.id,
            "app": self.app.name,
            "user": self.user,
            "inputs": self.inputs,
            "status": self.status,
            "task_id": self.task_id,
            "outputs": self.outputs,
            "error": self.error,
            "answer": self.answer,
            "files": self.files,
            "conversation_id": self.conversation.id if self.conversation else None,
            "streams": len(self.subscribers),  # connections reading the run's events now
            "message_id": self.message_id,
            "forms": [
                {
                    "form_id": form.id,
                    "node_id": form.node.id,
                    "status": form.status,
                    # Unix time (float) of the moment the form was created and announced.
                    "created_at": form.created_at,
                    "form_token": form.webapp_token,
                    "email_token": form.email_token,
                    "console_token": form.console_token,
                    "expiration_time": form.expiration_time,
                    "action_id": form.action_id,
                    "submitted_data": form.submitted_data,
                    "submitted_by": form.submitted_by,
                }
                for form in self.forms
            ],
            "events": [event["event"] for event in self.log],
        }


@dataclass
class TokenRecord:
    form: Form
    channel: str  # webapp | email | console


class Stats:
    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.requests_by_app: dict[str, Counter[str]] = {}
        self.submit_attempts: Counter[str] = Counter()
        self.submits_applied: Counter[str] = Counter()
        # Unix time (float) at which each form's first submit request arrived.
        self.submit_received_at: dict[str, float] = {}
        self.streams_open = 0
        self.streams_total = 0
        self.uploads = 0
        self.upload_bytes = 0

    def count(self, route: str, app: str | None) -> None:
        self.requests[route] += 1
        if app is not None:
            self.requests_by_app.setdefault(app, Counter())[route] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "requests_by_app": {app: dict(c) for app, c in self.requests_by_app.items()},
            "submit_attempts": dict(self.submit_attempts),
            "submits_applied": dict(self.submits_applied),
            "submit_received_at": dict(self.submit_received_at),
            "streams_open": self.streams_open,
            "streams_total": self.streams_total,
            "uploads": self.uploads,
            "upload_bytes": self.upload_bytes,
        }


class Simulator:
    """All state of one simulated Dify deployment (one workspace holding every scenario app)."""

    def __init__(
        self,
        apps: dict[str, AppSpec] | None = None,
        *,
        scenarios_dir: Path | str | None = None,
        options: Options | None = None,
    ) -> None:
        self.apps = apps if apps is not None else load_dir(scenarios_dir)
        self.apps_by_key = {app.api_key: app for app in self.apps.values()}
        self.options = options or Options()
        self.tenant_id = str(uuid.uuid5(uuid.NAMESPACE_DNS, "simulated-workspace.invalid"))
        self.faults = FaultBook()
        self.recorder = Recorder(enabled=self.options.record)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None  # set when the server starts
        self.reset_state()

    def reset_state(self) -> None:
        for task in list(getattr(self, "_tasks", ())):
            task.cancel()
        self._tasks = set()
        self.runs: dict[str, Run] = {}
        self.runs_by_task: dict[str, Run] = {}
        self.forms: dict[str, Form] = {}
        self.tokens: dict[str, TokenRecord] = {}
        self.uploads: dict[str, UploadedFile] = {}
        self.end_users: dict[tuple[str, str], EndUser] = {}
        self.conversations: dict[str, Conversation] = {}
        self.stats = Stats()
        # Open unless a test holds resumed runs back (`hold_resumes`): a submit is accepted and
        # the form marked answered, but the run goes on only once the gate opens.
        self.resume_gate = asyncio.Event()
        self.resume_gate.set()
        self.faults.clear()
        self.recorder.clear()
        self.recorder.enabled = self.options.record

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shutdown(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- identities -----------------------------------------------------------------------

    def end_user(self, app: AppSpec, user: str) -> EndUser:
        key = (app.name, user)
        found = self.end_users.get(key)
        if found is None:
            found = self.end_users[key] = EndUser(str(uuid.uuid4()), app.name, user)
        return found

    def conversation(
        self, app: AppSpec, user: str, conversation_id: str | None
    ) -> Conversation | None:
        """The conversation to continue, a new one for "" or None; None if it is not this user's."""
        if not conversation_id:
            conversation = Conversation(str(uuid.uuid4()), app.name, user)
            self.conversations[conversation.id] = conversation
            return conversation
        found = self.conversations.get(conversation_id)
        if found is None or found.app_name != app.name or found.user != user:
            return None
        return found

    # --- runs -----------------------------------------------------------------------------

    def start_run(
        self,
        app: AppSpec,
        user: str,
        inputs: dict[str, Any],
        *,
        query: str = "",
        conversation: Conversation | None = None,
        subscribe: bool = False,
        files: list[dict[str, Any]] | None = None,
    ) -> tuple[Run, Subscriber | None]:
        run = Run(
            self,
            app,
            self.end_user(app, user),
            inputs,
            query=query,
            conversation=conversation,
            files=files,
        )
        self.runs[run.id] = run
        subscriber = run.subscribe() if subscribe else None
        run.start()
        return run, subscriber

    def find_run(self, app: AppSpec, run_id: str) -> Run | None:
        run = self.runs.get(run_id)
        if run is None or run.app.name != app.name:
            return None
        return run

    def find_task(self, app: AppSpec, task_id: str) -> Run | None:
        for run in self.runs.values():
            if run.task_id == task_id and run.app.name == app.name:
                return run
        return None

    # --- forms ----------------------------------------------------------------------------

    def create_form(self, run: Run, node: NodeSpec) -> Form:
        spec = node.form
        assert spec is not None
        now = time.time()
        timeout = spec.timeout * self.options.timeout_scale
        form = Form(
            id=str(uuid.uuid4()),
            run=run,
            node=node,
            created_at=now,
            # Whole seconds, rounded up, so the reported time is never before the real expiry.
            expiration_time=math.ceil(now + timeout),
            webapp_token=self._new_token() if spec.has_webapp else None,
            email_token=self._new_token() if "email" in spec.delivery else None,
            console_token=self._new_token(),
        )
        form.future = asyncio.get_running_loop().create_future()
        self.forms[form.id] = form
        if form.webapp_token:
            self.tokens[form.webapp_token] = TokenRecord(form, "webapp")
        if form.email_token:
            self.tokens[form.email_token] = TokenRecord(form, "email")
        self.tokens[form.console_token] = TokenRecord(form, "console")
        run.forms.append(form)
        form.expiry_task = self.spawn(self._expire_later(form))
        return form

    def _new_token(self) -> str:
        return secrets.token_urlsafe(16)

    def fresh_token(self, form: Form) -> str | None:
        """A new Service API token for a pending form, as a snapshot replay hands out."""
        if not form.spec.has_webapp:
            return None
        token = self._new_token()
        self.tokens[token] = TokenRecord(form, "webapp")
        return token

    async def _expire_later(self, form: Form) -> None:
        await asyncio.sleep(max(0.0, form.deadline - time.time()))
        self.expire_form(form)

    def expire_form(self, form: Form) -> bool:
        """Time a form out now: `human_input_form_timeout`, then the timeout branch or the end."""
        if form.status != "waiting":
            return False
        form.status = "timeout"
        run = form.run
        run.wake()
        run.publish(
            run.event(
                "human_input_form_timeout",
                {
                    "node_id": form.node.id,
                    "node_title": form.node.title,
                    "expiration_time": form.expiration_time,
                },
            )
        )
        if form.future is not None and not form.future.done():
            form.future.set_result(("timeout", None))
        return True

    def apply_submission(
        self, form: Form, action_id: str, values: dict[str, Any], submitted_by: str
    ) -> None:
        """Mark the form submitted now; the run resumes after `resume_delay`, asynchronously."""
        form.status = "submitted"
        form.action_id = action_id
        form.submitted_data = dict(values)
        form.submitted_by = submitted_by
        form.rendered_content = render_outputs(
            render(form.spec.content, form.run.pool), values, form.spec.inputs
        )
        if form.expiry_task is not None:
            form.expiry_task.cancel()
        self.stats.submits_applied[form.id] += 1
        self.spawn(self._resume(form))

    async def _resume(self, form: Form) -> None:
        if self.options.resume_delay > 0:
            await asyncio.sleep(self.options.resume_delay)
        await self.resume_gate.wait()
        run = form.run
        if run.is_finished:
            return
        run.wake()
        assert form.action_id is not None and form.rendered_content is not None
        data: dict[str, Any] = {
            "node_id": form.node.id,
            "node_title": form.node.title,
            "rendered_content": form.rendered_content,
            "action_id": form.action_id,
            "action_text": form.spec.action_title(form.action_id),
        }
        if self.options.include_submitted_data:
            data["submitted_data"] = form.submitted_data
        run.publish(run.event("human_input_form_filled", data))
        if form.future is not None and not form.future.done():
            form.future.set_result(("submitted", form.action_id))

    def form_inputs(self, form: Form, *, resolve_options: bool) -> list[dict[str, Any]]:
        """The form's inputs; variable-sourced select options are read from the paused run."""
        inputs = []
        for spec_input in form.spec.inputs:
            item = {**spec_input}
            source = item.get("option_source")
            if source is not None:
                source = {
                    **source,
                    "selector": list(source["selector"]),
                    "value": list(source["value"]),
                }
                if resolve_options and source["type"] == "variable" and form.run.status == "paused":
                    value = lookup(form.run.pool, source["selector"])
                    if isinstance(value, list) and all(isinstance(v, str) for v in value):
                        source["value"] = value
                item["option_source"] = source
            inputs.append(item)
        return inputs

    def default_values(self, form: Form) -> dict[str, Any]:
        """Dify's `resolve_default_values`: paragraph defaults, variables read from the pool."""
        values: dict[str, Any] = {}
        for spec_input in form.spec.inputs:
            default = spec_input.get("default")
            if spec_input["type"] != "paragraph" or default is None:
                continue
            if default["type"] == "constant":
                values[spec_input["output_variable_name"]] = default["value"]
                continue
            value = lookup(form.run.pool, default["selector"])
            if value is not None:
                values[spec_input["output_variable_name"]] = value
        return values

    def form_content(self, form: Form) -> str:
        return render(form.spec.content, form.run.pool)

    def form_event_data(
        self, form: Form, token: str | None, *, resolve_options: bool
    ) -> dict[str, Any]:
        return {
            "form_id": form.id,
            "form_token": token,
            "node_id": form.node.id,
            "node_title": form.node.title,
            "form_content": self.form_content(form),
            "inputs": self.form_inputs(form, resolve_options=resolve_options),
            "actions": [dict(a) for a in form.spec.actions],
            "display_in_ui": form.spec.display_in_ui,
            # The event carries the raw resolved values; only GET stringifies them (D7).
            "resolved_default_values": self.default_values(form),
            "expiration_time": form.expiration_time,
            "approval_channels": form.approval_channels(),
        }

    def pause_reason(self, data: dict[str, Any]) -> dict[str, Any]:
        reason: dict[str, Any] = {self.options.reason_type_key: "human_input_required"}
        for key in (
            "form_id",
            "form_content",
            "inputs",
            "actions",
            "node_id",
            "node_title",
            "display_in_ui",
            "resolved_default_values",
            "form_token",
            "expiration_time",
            "approval_channels",
        ):
            reason[key] = data[key]
        return reason

    def snapshot_events(self, run: Run) -> list[Event]:
        """What `include_state_snapshot=true` replays before live events."""
        events: list[Event] = [
            run.event(
                "workflow_started",
                {
                    "id": run.id,
                    "workflow_id": run.app.workflow_id,
                    "inputs": run.inputs,
                    "created_at": run.created_at,
                    "reason": "initial",
                },
            )
        ]
        if run.app.is_chatflow:
            events.append(run.event("message_replace", answer=run.answer, reason=""))
        for execution in run.executions:
            common = {
                "id": execution.id,
                "node_id": execution.node_id,
                "node_type": execution.node_type,
                "title": execution.title,
                "index": execution.index,
                "predecessor_node_id": None,
                "inputs": None,
                "created_at": execution.created_at,
                "iteration_id": None,
                "loop_id": None,
            }
            events.append(run.event("node_started", {**common, "extras": {}}))
            if execution.status != "running":
                events.append(
                    run.event(
                        "node_finished",
                        {
                            **common,
                            "process_data": None,
                            "outputs": None,
                            "status": execution.status,
                            "error": None,
                            "elapsed_time": execution.elapsed_time,
                            "execution_metadata": None,
                            "finished_at": execution.finished_at or execution.created_at,
                            "files": [],
                        },
                    )
                )
        if run.status == "paused":
            reasons = []
            for form in run.pending_forms():
                data = self.form_event_data(form, self.fresh_token(form), resolve_options=True)
                events.append(run.event("human_input_required", data))
                reasons.append(self.pause_reason(data))
            events.append(run.event("workflow_paused", run.paused_data(reasons)))
        elif run.is_finished:
            if run.app.is_chatflow:
                events.append(run.message_end_event())
            events.append(run.event("workflow_finished", run.finished_data()))
        return events

    def finished_event(self, run: Run) -> Event:
        """The one event a stream of a finished run carries; its task id is the run id."""
        return {
            "event": "workflow_finished",
            "task_id": run.id,
            "workflow_run_id": run.id,
            "data": run.finished_data(),
        }

    # --- in-process control (tests and the control API) ------------------------------------

    def submit_elsewhere(
        self,
        form_id: str,
        action_id: str,
        inputs: dict[str, Any] | None = None,
        channel: str = "email",
    ) -> bool:
        """Answer a form through another channel (the WebApp, an email link) first."""
        form = self.forms.get(form_id)
        if form is None or form.status != "waiting" or form.is_expired():
            return False
        if action_id not in {a["id"] for a in form.spec.actions}:
            raise ValueError(f"Invalid action: {action_id}")
        values = dict(inputs or {})
        for spec_input in form.spec.inputs:
            values.setdefault(
                spec_input["output_variable_name"],
                "" if spec_input["type"] in ("paragraph", "select") else None,
            )
        self.apply_submission(form, action_id, values, submitted_by=channel)
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "apps": [
                {"name": app.name, "api_key": app.api_key, "mode": app.mode, "id": app.id}
                for app in self.apps.values()
            ],
            "options": {k: v for k, v in vars(self.options).items()},
            "runs": len(self.runs),
        }
