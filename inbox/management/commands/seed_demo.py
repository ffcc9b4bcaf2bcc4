from __future__ import annotations

import os
from typing import Any

import httpx
from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand, CommandParser

from inbox.dify.errors import DifyError

# The demo's logins. Only for the embedded demo: `seed_demo` refuses to run with DEBUG off
# unless --force is given, so a production database never gets these accounts by accident.
DEMO_USERS = [
    ("admin", "admin", True),
    ("alice", "alice", False),
    ("bob", "bob", False),
]


# The simulator's app modes as ours; a plain chat app (no workflow) is not registered.
SIMULATOR_MODES = {"workflow": "workflow", "advanced-chat": "chatflow"}
# Demo runs per app (a chatflow's message each); an app not named here gets one run.
DEMO_RUNS = {
    "refund-approval": ["", ""],
    "support-chat": ["My parcel arrived damaged. Can I get my money back?"],
}


class Command(BaseCommand):
    help = "Seed the embedded demo: logins, Dify apps on the built-in simulator, paused runs."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--force", action="store_true", help="Seed even with DEBUG off")

    def handle(self, *args: Any, **options: Any) -> None:
        from django.conf import settings

        if not settings.DEBUG and not options["force"]:
            self.stderr.write("seed_demo: DEBUG is off; pass --force to seed demo logins anyway")
            return
        reviewers, _ = Group.objects.get_or_create(name="reviewers")
        for username, password, is_admin in DEMO_USERS:
            user, created = User.objects.get_or_create(
                username=username,
                defaults={"email": f"{username}@example.com", "first_name": username.title()},
            )
            if created:
                user.set_password(password)
                user.is_staff = user.is_superuser = is_admin
                user.save()
            user.groups.add(reviewers)
        self.seed_apps(os.environ.get("INBOX_SIMULATOR_URL", "http://127.0.0.1:5001/v1"))
        # Any app seeded without its route (see route_demo_app) gets one now.
        from inbox.models import DifyApp

        for app in DifyApp.objects.all():
            self.route_demo_app(app)

    def route_demo_app(self, app: Any) -> None:
        """The demo's routing: every form of the app goes to the reviewers group (alice and
        bob), and two guests get an email with a link they can answer through (printed on the
        console by the embedded setup's email backend), one in each language."""
        from inbox.models import Route, RouteRecipient

        route, created = Route.objects.get_or_create(
            app=app,
            node="",
            defaults={"name": "demo: reviewers and guests", "allow_guests": True},
        )
        if created:
            route.groups.add(Group.objects.get(name="reviewers"))
            RouteRecipient.objects.create(route=route, email="guest@example.com", language="en")
            RouteRecipient.objects.create(
                route=route, email="zhang.wei@example.com", language="zh-hans"
            )

    def seed_apps(self, simulator_url: str) -> None:
        """Register the simulator's demo apps and start a few runs, so the inbox has forms
        waiting. Runs are started once per app: seeding again (every `make run`) adds none,
        unless the runs of the last demo were lost with the simulator's memory.
        Each app is routed before its runs start: forms are routed when they are captured, and
        the follower may capture them at once."""
        from inbox.models import DifyApp

        root = simulator_url.rstrip("/").removesuffix("/v1")
        try:
            listed = httpx.get(f"{root}/_sim/apps", timeout=5).json()
        except (httpx.HTTPError, ValueError) as exc:
            self.stderr.write(
                f"seed_demo: no simulator at {root} ({type(exc).__name__}); no demo apps"
            )
            return
        alice = User.objects.get(username="alice")
        started = 0
        for entry in listed:
            mode = SIMULATOR_MODES.get(entry.get("mode"))
            if mode is None:
                continue  # a plain chat app has no workflow, hence no forms
            app, _ = DifyApp.objects.update_or_create(
                name=entry["name"],
                defaults={"base_url": simulator_url, "api_key": entry["api_key"], "mode": mode},
            )
            self.route_demo_app(app)
            gone = self.close_lost_runs(app)
            if app.runs.exists() and not gone:
                continue
            for query in DEMO_RUNS.get(app.name, [""]):
                started += self.start_demo_run(app, alice, query)
        self.stdout.write(f"seed_demo: {started} demo runs started on the simulator")

    def close_lost_runs(self, app: Any) -> int:
        """The embedded simulator keeps nothing between starts: the open runs an earlier demo
        left there are gone from it. They end, and their waiting forms close, as for any run
        Dify no longer knows (`Run.gone_from_dify`), so the inbox does not list forms nothing
        can answer; the app then gets fresh demo runs. Returns how many runs ended."""
        from inbox.dify import DifyClient
        from inbox.dify.errors import NotFound
        from inbox.models import Run

        ended = 0
        client = DifyClient.for_app(app)
        for run in app.runs.exclude(status__in=Run.FINAL_STATUSES).exclude(workflow_run_id=""):
            try:
                client.get_run(run.workflow_run_id)
            except NotFound:
                run.gone_from_dify(source="demo restart")
                ended += 1
            except DifyError:
                continue
        if ended:
            self.stdout.write(f"seed_demo: {app.name}: {ended} run(s) of an earlier demo ended")
        return ended

    def start_demo_run(self, app: Any, user: Any, query: str) -> int:
        """Start one run with the app's default start inputs; 1 when Dify took it."""
        from inbox.runs import (
            StartFailed,
            StartRunForm,
            app_parameters,
            default_dify_user,
            start_run,
        )

        try:
            parameters = app_parameters(app)
        except DifyError as exc:
            self.stderr.write(f"seed_demo: {app.name}: parameters: {exc}")
            return 0
        form = StartRunForm(app, parameters, data={})
        if any(spec.required for spec in form.file_specs):
            # Its start needs a file someone chooses: started from its start page.
            return 0
        data: dict[str, Any] = {}
        for spec in form.specs:
            if spec.supported and spec.default not in (None, "", False):
                data[spec.field_name] = "on" if spec.type == "checkbox" else spec.default
        if query:
            data["query"] = query
        form = StartRunForm(app, parameters, data=data)
        if not form.is_valid():
            self.stderr.write(f"seed_demo: {app.name}: {form.error_messages()}")
            return 0
        try:
            start_run(
                app,
                inputs=form.dify_inputs(),
                query=form.cleaned_data.get("query", ""),
                dify_user=default_dify_user(user),
                started_by=user,
                source="demo",
            )
        except StartFailed as exc:
            self.stderr.write(f"seed_demo: {app.name}: {exc.message}")
            return 0
        return 1
