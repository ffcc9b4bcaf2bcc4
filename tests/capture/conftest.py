"""Capture tests: the simulator over real HTTP, a real follower, the real database."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.db import connection, connections

from inbox.dify.client import DifyClient
from inbox.follower import Follower
from inbox.models import DifyApp, Form, Route, Run
from inbox.runs import start_run
from inbox.simulator.testing import sample_inputs
from tests.capture import events as ev
from tests.conftest import wait_until

# Short everything: a test never waits for a production-sized backoff or lease.
FOLLOWER_TEST_SETTINGS: dict[str, Any] = {
    "poll_seconds": 0.05,
    "lease_seconds": 5.0,
    "backoff_base": 0.05,
    "backoff_cap": 0.5,
    "stale_pause_seconds": 3.0,
    "settle_seconds": 2.0,
    "max_attempts": 6,
    "db_threads": 2,
}


class FollowerThread:
    """A follower on its own event loop in a background thread, as `manage.py follow` runs one."""

    def __init__(self, owner: str, **overrides: Any) -> None:
        self.follower = Follower(owner, **{**FOLLOWER_TEST_SETTINGS, **overrides})
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"follower-{owner}", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self.follower.run())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
        finally:
            connections.close_all()

    def start(self) -> FollowerThread:
        self.thread.start()
        wait_until(lambda: self.follower.loop is not None, timeout=10)
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.follower.stop()
            self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the follower did not stop"
        if self.error is not None:
            raise self.error


def needs_shared_database() -> None:
    if connection.vendor == "sqlite":
        # The in-memory SQLite test database is shared between threads through SQLite's shared
        # cache, whose table locks fail at once instead of waiting: a follower writing from its
        # threads while the test reads makes both fail at random. `make test` runs these on
        # PostgreSQL (bin/with-services), like production.
        pytest.skip("needs PostgreSQL: run under bin/with-services, as make test does")


@pytest.fixture
def follower(transactional_db: None, simulator: Any) -> Iterator[FollowerThread]:
    needs_shared_database()
    # Dify resumes a run through its task queue a moment after a submit; the follower, asked
    # to follow right after the submit, reads the run through that gap.
    simulator.set_options(resume_delay=0.3)
    thread = FollowerThread("test-follower").start()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def run(dify_app: DifyApp, reviewer: User) -> Run:
    """A run of ours with no events yet, for events applied by hand (tests/capture/events.py)."""
    return Run.objects.create(
        app=dify_app,
        workflow_run_id=ev.RUN,
        dify_user="inbox-alice",
        started_by=reviewer,
        follow_wanted=False,
    )


@pytest.fixture
def starters(reviewers_group: Group) -> Group:
    """Reviewers may start runs (as the demo sets it up)."""
    reviewers_group.permissions.add(Permission.objects.get(codename="add_run"))
    return reviewers_group


@pytest.fixture
def sim_app(db: None, simulator: Any, reviewers_group: Group) -> Callable[..., DifyApp]:
    """A DifyApp row for a simulator app, its forms routed to the reviewers."""

    def make(name: str = "refund-approval") -> DifyApp:
        spec = simulator.apps[name]
        app = DifyApp.objects.create(
            name=name,
            base_url=simulator.base_url,
            api_key=simulator.api_key(name),
            mode="chatflow" if spec.mode == "advanced-chat" else "workflow",
        )
        route = Route.objects.create(app=app, name="default", reminders="")
        route.groups.add(reviewers_group)
        return app

    return make


def start(
    simulator: Any, app: DifyApp, user: User | None = None, scenario: str = "", **inputs: Any
) -> Run:
    values = {**sample_inputs(simulator.apps[scenario or app.name]), **inputs}
    return start_run(
        app,
        inputs=values,
        query="My parcel is two weeks late." if app.mode == "chatflow" else "",
        dify_user=f"inbox-{user.get_username() if user else 'tests'}",
        started_by=user,
    )


def pending(run: Run, count: int = 1, timeout: float = 15.0) -> list[Form]:
    """Wait until the run has `count` pending forms with their fetched definitions."""

    def ready() -> list[Form] | None:
        forms = list(
            run.forms.filter(status="pending", definition_fetched_at__isnull=False).order_by(
                "created_at", "id"
            )
        )
        return forms if len(forms) >= count else None

    result: list[Form] = wait_until(ready, timeout=timeout)
    return result


def submit(form: Form, action: str = "", *, held_by: Any = None, **values: Any) -> None:
    """Answer a form in Dify with the stored token and the run's Dify user, as the delivery
    worker would, then ask for the run to be followed. The action defaults to the first one.

    With `held_by` (the form's simulator), Dify's task queue holds the resumed run until the
    follower reads it again, so its stream carries the fill and all that follows: otherwise a
    follower slower than the resume (a loaded machine) opens its stream once the run has moved
    on or ended, and which action was taken, the nodes after it and a chatflow's `message_end`
    are never streamed (as they never are in Dify, for a stream opened that late)."""
    if held_by is not None:
        no_stream_left(form.run)  # the stream waited for below is the one opened for this
        held_by.hold_resumes()
        try:
            submit(form, action, **values)
            run_id = form.run.workflow_run_id
            held_by.wait_for(lambda: held_by.run(run_id)["streams"], timeout=15)
        finally:
            held_by.release_resumes()
        return
    form.refresh_from_db()
    run = form.run
    action = action or form.definition["user_actions"][0]["id"]
    inputs: dict[str, Any] = {}
    for item in form.definition.get("inputs", []):
        options = (item.get("option_source") or {}).get("value") or [""]
        empty = {"select": options[0], "file-list": []}.get(item["type"], "")
        inputs[item["output_variable_name"]] = empty
    inputs.update(values)
    DifyClient.for_app(run.app).submit_form(
        form.form_token, inputs=inputs, action=action, user=run.dify_user
    )
    run.request_follow()


def run_status(run: Run, *statuses: str, timeout: float = 15.0) -> Run:
    def reached() -> Run | None:
        run.refresh_from_db()
        return run if run.status in statuses else None

    result: Run = wait_until(reached, timeout=timeout)
    return result


def no_stream_left(run: Run, timeout: float = 15.0) -> Run:
    """The follower has let go of the run (holds no connection while it waits)."""

    def released() -> Run | None:
        run.refresh_from_db()
        return run if not run.follow_wanted and not run.lease_owner else None

    result: Run = wait_until(released, timeout=timeout)
    return result


@pytest.fixture
def chat(sim_app: Any, starters: Any) -> DifyApp:
    """The simulator's chatflow `support-chat`, connected."""
    app: DifyApp = sim_app("support-chat")
    return app


def finished_conversation(simulator: Any, chat: DifyApp, user: User) -> Run:
    """A first message, its form answered, the run ended; begun as platinum."""
    run = start(simulator, chat, user, customer_tier="platinum")
    (form,) = pending(run)
    submit(form, "grant", agent_message="Credit added.")
    return run_status(run, "succeeded")
