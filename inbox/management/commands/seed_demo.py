from __future__ import annotations

import os
from typing import Any

from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand, CommandParser

# The demo's logins. Only for the embedded demo: `seed_demo` refuses to run with DEBUG off
# unless --force is given, so a production database never gets these accounts by accident.
DEMO_USERS = [
    ("admin", "admin", True),
    ("alice", "alice", False),
    ("bob", "bob", False),
]


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
        """Register the simulator's demo apps and start a few runs (filled in by capture).
        Call `self.route_demo_app(app)` before starting an app's runs: forms are routed when
        they are captured, and the follower may capture them at once."""
