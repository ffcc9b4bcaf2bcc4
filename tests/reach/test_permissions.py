"""Who may reach what: every page and API endpoint against every persona.

Personas: anonymous; the routed reviewer (alice, routed by name); another reviewer (bob, a
reviewer but not routed this form); an outsider; a guest holding the emailed link; staff.
Outcomes: `ok` (past the access check), `hidden` (404: a form one may not see does not exist),
`denied` (403: seen but not theirs to act on), `login` (sent to sign in), `401` (API without
a token). Every URL the project defines must appear here or in PUBLIC, so a new page cannot
ship without its row.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from inbox import notify
from inbox.models import ApiToken, DifyApp, Form, FormRecipient, Upload

PERSONAS = ["anonymous", "routed", "other", "outsider", "guest", "staff"]

# URL names that are public by design, and Django's admin (staff only, Django's own checks).
PUBLIC = {"login", "logout", "set_language", "healthz", "favicon"}
# Resetting a forgotten password: for whoever cannot sign in (tests/test_passwords.py).
PUBLIC |= {
    "password_reset",
    "password_reset_done",
    "password_reset_confirm",
    "password_reset_complete",
}


@dataclass(frozen=True)
class Endpoint:
    method: str
    expect: str  # one outcome per persona, in PERSONAS order
    data: Any = None
    api: bool = False

    def outcome(self, persona: str) -> str:
        return self.expect.split()[PERSONAS.index(persona)]


MATRIX: dict[str, Endpoint] = {
    # The inbox and the form page (inbox.views)
    "inbox:index": Endpoint("GET", "login ok ok ok login ok"),
    "inbox:next_in_list": Endpoint("GET", "login ok ok ok login ok"),
    "inbox:node_options": Endpoint("GET", "login ok ok ok login ok"),
    "inbox:tabs": Endpoint("GET", "login ok ok ok login ok"),
    "inbox:form": Endpoint("GET", "login ok hidden hidden login ok"),
    "inbox:form_decide": Endpoint("POST", "login ok hidden hidden login ok", {"action": "nope"}),
    "inbox:form_live": Endpoint("GET", "login ok hidden hidden login ok"),
    "inbox:form_upload": Endpoint("POST", "login ok hidden hidden login ok", {}),
    "inbox:form_remove_upload": Endpoint("POST", "login ok hidden hidden login ok", {}),
    # One's own password (inbox.accounts)
    "password_change": Endpoint("GET", "login ok ok ok login ok"),
    "password_change_done": Endpoint("GET", "login ok ok ok login ok"),
    # Claims and the dashboard (inbox.views_reach)
    "inbox:form_claim": Endpoint("POST", "login ok hidden hidden login ok", {}),
    "inbox:form_release": Endpoint("POST", "login ok hidden hidden login ok", {}),
    "inbox:dashboard": Endpoint("GET", "login hidden hidden hidden login ok"),
    # Pages behind an emailed link: only the guest holds one; the others try a made-up link.
    "inbox:guest_form": Endpoint("GET", "hidden hidden hidden hidden ok hidden"),
    "inbox:guest_decide": Endpoint(
        "POST", "hidden hidden hidden hidden ok hidden", {"action": "nope"}
    ),
    "inbox:guest_live": Endpoint("GET", "hidden hidden hidden hidden ok hidden"),
    "inbox:guest_upload": Endpoint("POST", "hidden hidden hidden hidden ok hidden", {}),
    "inbox:guest_remove_upload": Endpoint("POST", "hidden hidden hidden hidden ok hidden", {}),
    # "Email me a new link": only a lapsed link sends one (tests/reach/test_lapsed_links.py).
    "inbox:guest_renew": Endpoint("POST", "hidden hidden hidden hidden ok hidden", {}),
    # Apps and runs (inbox.views_runs): starting needs inbox.add_run, stopping is the starter's
    "inbox:apps": Endpoint("GET", "login ok ok ok login ok"),
    "inbox:app_start": Endpoint("GET", "login denied denied denied login ok"),
    "inbox:runs": Endpoint("GET", "login ok ok ok login ok"),
    "inbox:run": Endpoint("GET", "login ok hidden hidden login ok"),
    "inbox:run_stop": Endpoint("POST", "login denied hidden hidden login ok", {}),
    # Going on with a chatflow's conversation needs inbox.add_run; this run is a workflow's, so
    # staff find no conversation (tests/capture/test_conversation.py has the rest).
    "inbox:run_continue": Endpoint("GET", "login denied denied denied login hidden"),
    # The JSON API: bearer tokens, no session
    "api_forms": Endpoint("GET", "401 ok ok ok 401 ok", api=True),
    "api_form": Endpoint("GET", "401 ok hidden hidden 401 ok", api=True),
    "api_form_files": Endpoint("POST", "401 ok hidden hidden 401 ok", {}, api=True),
    "api_form_decision": Endpoint("POST", "401 ok hidden hidden 401 ok", {}, api=True),
    "api_runs": Endpoint("POST", "401 denied denied denied 401 ok", {}, api=True),
    "api_run_files": Endpoint("POST", "401 denied denied denied 401 ok", {}, api=True),
    "api_run": Endpoint("GET", "401 ok hidden hidden 401 ok", api=True),
    "api_run_stop": Endpoint("POST", "401 denied hidden hidden 401 ok", {}, api=True),
    "api_ingest": Endpoint("POST", "401 denied denied denied 401 ok", {}, api=True),
    # Every caller sees the list of apps; an app's start inputs need the start permission.
    "api_apps": Endpoint("GET", "401 ok ok ok 401 ok", api=True),
    "api_app": Endpoint("GET", "401 denied denied denied 401 ok", api=True),
}


def url_params(resolver: URLResolver | None = None, prefix: str = "") -> dict[str, set[str]]:
    """Every named URL outside the admin, with the names of its parameters."""
    found: dict[str, set[str]] = {}
    for entry in (resolver or get_resolver()).url_patterns:
        if isinstance(entry, URLResolver):
            if entry.namespace == "admin":
                continue
            space = f"{prefix}{entry.namespace}:" if entry.namespace else prefix
            found.update(url_params(entry, space))
        elif isinstance(entry, URLPattern) and entry.name:
            found[prefix + entry.name] = set(getattr(entry.pattern, "converters", {}))
    return found


def test_every_url_is_in_the_permission_matrix() -> None:
    names = set(url_params())
    missing = names - set(MATRIX) - PUBLIC
    assert not missing, (
        f"add these URLs to MATRIX in tests/reach/test_permissions.py: {sorted(missing)}"
    )
    assert not set(MATRIX) - names, "the matrix names URLs that no longer exist"


@pytest.fixture
def world(
    routed_form: Form,
    guest_recipient: FormRecipient,
    reach_app: DifyApp,
    reviewer: User,
    other_reviewer: User,
    outsider: User,
    admin_user: User,
) -> dict[str, Any]:
    users = {"routed": reviewer, "other": other_reviewer, "outsider": outsider, "staff": admin_user}
    return {
        "form": routed_form,
        "app": reach_app,
        "users": users,
        "tokens": {name: ApiToken.issue(user)[1] for name, user in users.items()},
        "link": notify.link_token(guest_recipient),
        "guest_email": guest_recipient.email,
    }


def build_url(name: str, persona: str, world: dict[str, Any]) -> str:
    form: Form = world["form"]
    kwargs: dict[str, Any] = {}
    params = url_params()[name]
    if "public_id" in params:
        kwargs["public_id"] = form.run.public_id if "run" in name else form.public_id
    if "token" in params:
        kwargs["token"] = world["link"] if persona == "guest" else "made-up-link:1:abc"
    if "input_name" in params:
        kwargs["input_name"] = "receipt"
    if "upload_id" in params:
        # The persona's own upload: nobody may remove another's.
        upload = Upload.objects.create(
            form=form,
            uploaded_by=world["users"].get(persona),
            guest_email=world["guest_email"] if persona == "guest" else "",
            input_name="receipt",
            upload_file_id=str(uuid.uuid4()),
            name="r.pdf",
            size=10,
            category="document",
        )
        kwargs["upload_id"] = upload.public_id
    if "app_id" in params:
        kwargs["app_id"] = world["app"].pk
    if "name" in params:
        kwargs["name"] = world["app"].name
    return reverse(name, kwargs=kwargs)


def outcome_of(response: Any) -> str:
    if response.status_code == 302 and response["Location"].startswith("/accounts/login/"):
        return "login"
    return {401: "401", 403: "denied", 404: "hidden"}.get(response.status_code, "ok")


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("name", sorted(MATRIX))
def test_permission_matrix(name: str, persona: str, world: dict[str, Any]) -> None:
    endpoint = MATRIX[name]
    url = build_url(name, persona, world)
    client = Client()
    headers: dict[str, str] = {}
    if endpoint.api:
        if persona in world["tokens"]:
            headers["HTTP_AUTHORIZATION"] = f"Bearer {world['tokens'][persona]}"
        if endpoint.method == "POST":
            response = client.post(
                url, json.dumps(endpoint.data), content_type="application/json", **headers
            )
        else:
            response = client.get(url, **headers)
    else:
        if persona in world["users"]:
            client.force_login(world["users"][persona])
        if endpoint.method == "POST":
            response = client.post(url, endpoint.data)
        else:
            response = client.get(url)
    assert outcome_of(response) == endpoint.outcome(persona), (
        f"{persona} {endpoint.method} {url}: {response.status_code}"
    )
    if endpoint.outcome(persona) == "hidden":
        # A 404 says nothing of the form.
        assert world["form"].node_title not in response.content.decode()


def test_lists_show_only_what_each_persona_may_see(world: dict[str, Any]) -> None:
    form: Form = world["form"]
    for persona, sees in [("routed", True), ("other", False), ("outsider", False), ("staff", True)]:
        client = Client()
        client.force_login(world["users"][persona])
        page = client.get(reverse("inbox:index")).content.decode()
        assert (f"/forms/{form.public_id}/" in page) is sees, persona
        runs = client.get(reverse("inbox:runs")).content.decode()
        assert (str(form.run.public_id) in runs) is sees, persona
        body = client.get(
            reverse("api_forms"), HTTP_AUTHORIZATION=f"Bearer {world['tokens'][persona]}"
        ).json()
        assert body["count"] == (1 if sees else 0), persona


def test_node_choices_are_not_shared_between_reviewers(world: dict[str, Any]) -> None:
    alice, bob = Client(), Client()
    alice.force_login(world["users"]["routed"])
    bob.force_login(world["users"]["other"])
    url = reverse("inbox:node_options")
    assert world["form"].node_id in alice.get(url).content.decode()
    # Cached for alice a moment ago; bob's list is his own (empty).
    assert world["form"].node_id not in bob.get(url).content.decode()
