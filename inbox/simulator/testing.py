"""Run the Dify simulator inside a test (or a benchmark) and steer it from there.

    from inbox.simulator.testing import running_simulator

    with running_simulator(time_scale=0) as sim:
        started = sim.start_run("refund-approval", {"customer_name": "Ada", ...}, user="u-1")
        token = started.forms[0]["form_token"]
        httpx.post(f"{sim.base_url}/form/human_input/{token}", headers=sim.headers("refund-approval"), ...)
        assert sim.submit_count(started.forms[0]["form_id"]) == 1

The server is uvicorn on a free loopback port in a background thread, with its own event loop.
Every method of the handle that reads or changes simulator state runs on that loop, so a test
never races the server.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn

from inbox.simulator.engine import Options, Simulator
from inbox.simulator.faults import Fault
from inbox.simulator.recorder import Exchange
from inbox.simulator.scenarios import AppSpec
from inbox.simulator.server import bind_socket, uvicorn_config

T = TypeVar("T")

DEFAULT_APP = "refund-approval"


class ApiKey(str):
    """The default app's API key, also callable for any app: ``sim.api_key("chat-support")``."""

    _keys: dict[str, str]

    def __new__(cls, default: str, keys: dict[str, str]) -> ApiKey:
        value = super().__new__(cls, default)
        value._keys = keys
        return value

    def __call__(self, app_name: str | None = None) -> str:
        if app_name is None:
            return str(self)
        try:
            return self._keys[app_name]
        except KeyError:
            raise KeyError(
                f"no simulator app named {app_name!r}; apps: {sorted(self._keys)}"
            ) from None


@dataclass
class StartedRun:
    """A run started by `SimulatorHandle.start_run`, read up to its first pause or its end."""

    app: str
    user: str
    workflow_run_id: str
    task_id: str
    events: list[dict[str, Any]]
    conversation_id: str | None = None
    message_id: str | None = None
    forms: list[dict[str, Any]] = field(default_factory=list)  # `human_input_required` data

    @property
    def event_names(self) -> list[str]:
        return [e["event"] for e in self.events]

    @property
    def status(self) -> str:
        for event in reversed(self.events):
            if event["event"] == "workflow_paused":
                return "paused"
            if event["event"] == "workflow_finished":
                return str(event["data"]["status"])
        return "running"

    def form(self, node_id: str) -> dict[str, Any]:
        for form in self.forms:
            if form["node_id"] == node_id:
                return form
        raise KeyError(f"no form for node {node_id!r}; forms: {[f['node_id'] for f in self.forms]}")


def parse_sse(text: str) -> list[dict[str, Any]]:
    """The `data:` events of an SSE body; pings and other lines are skipped."""
    events = []
    for block in text.split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data:"):
                events.append(json.loads(line[5:].strip()))
    return events


class SimulatorHandle:
    def __init__(self, sim: Simulator, root_url: str, defaults: Options) -> None:
        self.sim = sim
        self.root_url = root_url
        self.base_url = f"{root_url}/v1"
        self._defaults = defaults
        keys = {app.name: app.api_key for app in sim.apps.values()}
        default = DEFAULT_APP if DEFAULT_APP in keys else next(iter(keys))
        self.api_key = ApiKey(keys[default], keys)

    # --- plumbing ---------------------------------------------------------------------------

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run `fn` on the simulator's event loop and return its result."""
        loop = self.sim.loop
        if loop is None:
            raise RuntimeError("the simulator is not running")

        async def wrapper() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), loop).result(timeout)

    @property
    def apps(self) -> dict[str, AppSpec]:
        return self.sim.apps

    def headers(self, app_name: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key(app_name)}"}

    def client(self, app_name: str | None = None, **kwargs: Any) -> httpx.Client:
        """A plain httpx client for one app: base URL and bearer key set."""
        kwargs.setdefault("timeout", httpx.Timeout(30.0, connect=5.0))
        return httpx.Client(base_url=self.base_url, headers=self.headers(app_name), **kwargs)

    # --- state --------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget runs, forms, uploads, faults, counts and records; restore the start options."""

        def do() -> None:
            self.sim.options.update(vars(self._defaults))
            self.sim.reset_state()

        self.call(do)

    def set_options(self, **values: Any) -> None:
        def do() -> None:
            self.sim.options.update(values)
            self.sim.recorder.enabled = self.sim.options.record

        self.call(do)

    def hold_resumes(self) -> None:
        """Accept submits but keep their runs paused until `release_resumes`, as a busy Dify
        task queue would: what a client sees between the two is then certain."""
        self.call(self.sim.resume_gate.clear)

    def release_resumes(self) -> None:
        self.call(self.sim.resume_gate.set)

    def stats(self) -> dict[str, Any]:
        return self.call(self.sim.stats.snapshot)

    def submit_count(self, form_id: str) -> int:
        """POSTs that reached this form (rejected ones included)."""
        return self.call(lambda: self.sim.stats.submit_attempts[form_id])

    def submits_applied(self, form_id: str) -> int:
        """Submissions this form accepted: 0 or 1, whatever the client saw."""
        return self.call(lambda: self.sim.stats.submits_applied[form_id])

    def request_count(self, route: str, app_name: str | None = None) -> int:
        def count() -> int:
            if app_name is None:
                return self.sim.stats.requests[route]
            by_app = self.sim.stats.requests_by_app.get(app_name)
            return by_app[route] if by_app is not None else 0

        return self.call(count)

    def exchanges(self, route: str | None = None) -> list[Exchange]:
        """Recorded request/response pairs (SSE events included), oldest first."""
        return self.call(
            lambda: [e for e in self.sim.recorder.exchanges if route is None or e.route == route]
        )

    def clear_records(self) -> None:
        self.call(self.sim.recorder.clear)

    def run(self, run_id: str) -> dict[str, Any]:
        """The simulator's view of a run: status, task id, forms with tokens, event names."""

        def describe() -> dict[str, Any]:
            found = self.sim.runs.get(run_id)
            if found is None:
                raise KeyError(f"no run {run_id!r}")
            return found.describe()

        return self.call(describe)

    def run_events(self, run_id: str) -> list[dict[str, Any]]:
        """Every event the run has published so far, whoever was listening."""
        return self.call(lambda: list(self.sim.runs[run_id].log))

    def uploads(self) -> list[dict[str, Any]]:
        return self.call(lambda: [vars(u).copy() for u in self.sim.uploads.values()])

    # --- steering -------------------------------------------------------------------------------

    def add_fault(
        self,
        kind: str,
        route: str = "*",
        *,
        app: str | None = None,
        times: int | None = 1,
        **kwargs: Any,
    ) -> Fault:
        """Inject a fault; see `inbox.simulator.faults` for the kinds and their fields."""
        fault = Fault(kind=kind, route=route, app=app, times=times, **kwargs)
        return self.call(lambda: self.sim.faults.add(fault))

    def clear_faults(self) -> None:
        self.call(self.sim.faults.clear)

    def submit_elsewhere(
        self,
        form_id: str,
        action: str,
        inputs: dict[str, Any] | None = None,
        channel: str = "email",
    ) -> bool:
        """Answer a form through another channel first (an email link, the WebApp)."""
        return self.call(lambda: self.sim.submit_elsewhere(form_id, action, inputs, channel))

    def expire_form(self, form_id: str) -> bool:
        """Time a form out now, as if its node timeout had passed."""
        return self.call(lambda: self.sim.expire_form(self.sim.forms[form_id]))

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02
    ) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            time.sleep(interval)

    def wait_for_status(self, run_id: str, *statuses: str, timeout: float = 10.0) -> dict[str, Any]:
        return self.wait_for(
            lambda: (state := self.run(run_id))["status"] in statuses and state, timeout=timeout
        )

    # --- runs over real HTTP ----------------------------------------------------------------------

    def start_run(
        self,
        app_name: str = DEFAULT_APP,
        inputs: dict[str, Any] | None = None,
        user: str = "sim-tester",
        *,
        query: str = "Please review this.",
        timeout: float = 30.0,
    ) -> StartedRun:
        """Start a streaming run over HTTP and read its stream to the first pause or the end."""
        app = self.sim.apps[app_name]
        values = sample_inputs(app) if inputs is None else inputs
        body: dict[str, Any] = {"inputs": values, "user": user, "response_mode": "streaming"}
        path = "/workflows/run"
        if app.mode == "advanced-chat":
            body["query"] = query
            path = "/chat-messages"
        with (
            self.client(app_name, timeout=timeout) as http,
            # json.dumps' escapes, as Dify's clients send them: text holding half of a
            # surrogate pair (a test of what Dify then answers) cannot be sent as UTF-8.
            http.stream(
                "POST",
                path,
                content=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            ) as response,
        ):
            if response.status_code != 200:
                raise AssertionError(
                    f"start_run: {response.status_code} {response.read().decode()}"
                )
            events = parse_sse(response.read().decode())
        if not events:
            raise AssertionError("start_run: the stream carried no events")
        first = events[0]
        return StartedRun(
            app=app_name,
            user=user,
            workflow_run_id=first["workflow_run_id"],
            task_id=first["task_id"],
            events=events,
            conversation_id=first.get("conversation_id"),
            message_id=first.get("message_id"),
            forms=[e["data"] for e in events if e["event"] == "human_input_required"],
        )


def sample_inputs(app: AppSpec) -> dict[str, Any]:
    """Valid start inputs for any app: each input's default, else a plausible value."""
    values: dict[str, Any] = {}
    for entity in app.inputs:
        if entity.default is not None:
            values[entity.variable] = entity.default
        elif entity.type == "select":
            values[entity.variable] = entity.options[0]
        elif entity.type == "number":
            values[entity.variable] = 42
        elif entity.type == "checkbox":
            values[entity.variable] = False
        else:
            values[entity.variable] = f"sample {entity.variable}"
    return values


@contextmanager
def running_simulator(
    scenarios_dir: Path | str | None = None, **options: Any
) -> Iterator[SimulatorHandle]:
    """Start the simulator on a free loopback port; yield a handle; stop it on exit.

    Options are `inbox.simulator.engine.Options` fields (`idle_timeout`, `ping_interval`,
    `resume_delay`, `time_scale`, `timeout_scale`, `global_timeout`, `record`, ...). Recording is
    on unless `record=False` is given.
    """
    options.setdefault("record", True)
    defaults = Options(**options)
    sim = Simulator(scenarios_dir=scenarios_dir, options=Options(**options))
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(sim, "127.0.0.1", port))
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # surfaced in the test thread below
            failure.append(exc)

    thread = threading.Thread(target=serve, name=f"dify-simulator-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started or sim.loop is None:
        if failure or not thread.is_alive():
            raise RuntimeError(f"the simulator did not start: {failure[:1]!r}")
        if time.monotonic() > deadline:
            raise RuntimeError("the simulator did not start within 20 s")
        time.sleep(0.01)
    try:
        yield SimulatorHandle(sim, f"http://127.0.0.1:{port}", defaults)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
