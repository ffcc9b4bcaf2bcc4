"""The reviewer pages for runs: apps, start, runs, the run page and its live part, stop."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone

from inbox import views_runs
from inbox.models import ApiToken, AuditEntry, DifyApp, Form, Run
from inbox.runs import start_run
from inbox.simulator.testing import sample_inputs
from tests.capture import events as ev

pytestmark = pytest.mark.django_db


def login(client: Client, user: User) -> Client:
    client.force_login(user)
    return client


@pytest.fixture
def refunds(sim_app: Any, starters: Any) -> DifyApp:
    app: DifyApp = sim_app("refund-approval")
    return app


def start_form_data(simulator: Any, **overrides: Any) -> dict[str, Any]:
    values = sample_inputs(simulator.apps["refund-approval"])
    data = {f"in_{k}": v for k, v in values.items() if not isinstance(v, bool)}
    data.update(overrides)
    return data


def test_pages_need_a_login(client: Client, refunds: DifyApp) -> None:
    for path in ("/apps/", f"/apps/{refunds.pk}/start/", "/runs/"):
        response = client.get(path)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_apps_page_offers_a_start_only_to_who_may_start(
    client: Client, refunds: DifyApp, reviewer: User, outsider: User
) -> None:
    page = login(client, reviewer).get("/apps/").content.decode()
    assert "refund-approval" in page and f'href="/apps/{refunds.pk}/start/"' in page
    assert "Start a run to see its decisions arrive" in page
    # Each link names its app for a screen reader's list of links.
    assert 'aria-label="Start a run: refund-approval">Start a run</a>' in page
    # In Chinese with its own colon, the visible words first (as speech input says them).
    client.cookies["django_language"] = "zh-hans"
    page = client.get("/apps/").content.decode()
    assert 'aria-label="启动运行\uff1arefund-approval">启动运行</a>' in page
    page = login(Client(), outsider).get("/apps/").content.decode()
    assert "refund-approval" in page and "/start/" not in page
    # Not told to do what the page does not offer.
    assert "Start a run to see" not in page and "for those an administrator allows" in page


def test_the_apps_page_shows_a_plain_chat_app_as_unusable_with_no_start(
    client: Client,
    simulator: Any,
    sim_app: Any,
    refunds: DifyApp,
    reviewer: User,
    admin_client: Client,
) -> None:
    faq = sim_app("faq-bot")  # a plain chat app in Dify, set up here as a workflow
    page = login(client, reviewer).get("/apps/").content.decode()
    # Not tested yet: nothing says what it is.
    assert f'href="/apps/{faq.pk}/start/"' in page and "Cannot be used here" not in page
    # The administrator's connection test finds it is a chat app (recorded "unusable").
    admin_client.post(
        "/admin/inbox/difyapp/",
        {"action": "test_connection", "_selected_action": [str(faq.pk)]},
    )
    page = client.get("/apps/").content.decode()
    item = page[page.index("<strong>faq-bot</strong>") : page.index("</li>", page.index("faq-bot"))]
    assert '<span class="chip unusable">Cannot be used here</span>' in item
    assert (
        "Dify says this is a “chat” app. Such apps have no Human Input node: no run of it can "
        "be started or decided here."
    ) in item
    assert "/start/" not in item and "Workflow" not in item
    # The other app is offered as before.
    assert f'href="/apps/{refunds.pk}/start/"' in page
    client.cookies["django_language"] = "zh-hans"
    page = client.get("/apps/").content.decode()
    assert "无法在此使用" in page and "没有人工输入节点" in page
    # A later test that found a workflow app (the key of one entered since) is what counts.
    AuditEntry.record("app_connection_tested", faq, result="connected", mode="workflow")
    client.cookies["django_language"] = "en"
    page = client.get("/apps/").content.decode()
    assert f'href="/apps/{faq.pk}/start/"' in page and "Cannot be used here" not in page


UNAVAILABLE = "App unavailable, please check your app configurations."


def test_the_start_page_says_an_app_dify_calls_unavailable_is_to_be_published(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    simulator.add_fault(
        "status",
        "parameters",
        app="refund-approval",
        times=None,
        status=400,
        code="app_unavailable",
        message=UNAVAILABLE,
    )
    response = login(client, reviewer).get(f"/apps/{refunds.pk}/start/")
    assert response.status_code == 502
    page = response.content.decode()
    assert (
        "Dify says this app is not available: it may have no published workflow. Runs of it "
        "can start once an administrator publishes it in Dify."
    ) in page
    assert "could not be reached" not in page and UNAVAILABLE not in page
    page = client.get(f"/apps/{refunds.pk}/start/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "Dify 表示此应用不可用：它可能没有已发布的工作流。" in page  # noqa: RUF001
    # Dify's start refusing it says the same, in place of Dify's words.
    simulator.clear_faults()
    simulator.add_fault(
        "status",
        "workflows_run",
        status=400,
        code="app_unavailable",
        message=UNAVAILABLE,
    )
    page = client.post(f"/apps/{refunds.pk}/start/", start_form_data(simulator)).content.decode()
    assert (
        "Dify did not start the run: Dify says this app is not available: it may have no "
        "published workflow."
    ) in page
    assert UNAVAILABLE not in page


def test_the_start_page_of_an_app_found_to_be_a_chat_app_offers_no_start(
    client: Client,
    simulator: Any,
    sim_app: Any,
    refunds: DifyApp,
    reviewer: User,
    admin_client: Client,
) -> None:
    faq = sim_app("faq-bot")  # a plain chat app in Dify, set up here as a workflow
    admin_client.post(
        "/admin/inbox/difyapp/",
        {"action": "test_connection", "_selected_action": [str(faq.pk)]},
    )
    asked = len(simulator.exchanges())
    # Opened directly (not offered on /apps/): said as /apps/ says it, with no form.
    response = login(client, reviewer).get(f"/apps/{faq.pk}/start/")
    assert response.status_code == 409
    page = response.content.decode()
    assert (
        "This app cannot be used here: Dify says it is a “chat” app. Such apps have no Human "
        "Input node, so no run of it can be started or decided here."
    ) in page
    assert 'class="start-form' not in page and "Start the run" not in page
    page = client.get(f"/apps/{faq.pk}/start/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "此应用无法在此使用" in page and "没有人工输入节点" in page
    # Sent anyway: nothing starts, nothing is asked of Dify.
    response = client.post(f"/apps/{faq.pk}/start/", start_form_data(simulator))
    assert response.status_code == 409 and not Run.objects.exists()
    assert len(simulator.exchanges()) == asked
    # Another app's page is as before.
    assert client.get(f"/apps/{refunds.pk}/start/").status_code == 200


def test_a_run_dify_refused_as_unpublished_says_so_in_the_reader_s_language(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User, admin_user: User
) -> None:
    simulator.add_fault(
        "status", "workflows_run", status=400, code="app_unavailable", message=UNAVAILABLE
    )
    login(client, reviewer).post(f"/apps/{refunds.pk}/start/", start_form_data(simulator))
    run = Run.objects.get()
    assert run.status == "failed"
    said = (
        "Dify did not start the run: Dify says this app is not available: it may have no "
        "published workflow. Runs of it can start once an administrator publishes it in Dify."
    )
    page = client.get(f"/runs/{run.public_id}/").content.decode()
    assert said in page and UNAVAILABLE not in page
    page = client.get(f"/runs/{run.public_id}/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "Dify 未启动该运行" in page and "Dify 表示此应用不可用" in page
    assert UNAVAILABLE not in page and "not available" not in page
    # Staff see Dify's own words beside it.
    page = login(Client(), admin_user).get(f"/runs/{run.public_id}/").content.decode()
    assert said in page and UNAVAILABLE in page


def test_the_start_page_renders_dify_s_start_inputs(
    client: Client, refunds: DifyApp, reviewer: User
) -> None:
    page = login(client, reviewer).get(f"/apps/{refunds.pk}/start/").content.decode()
    for label in (
        "Customer name",
        "Order number",
        "Refund amount (EUR)",
        "Channel",
        "VIP customer",
    ):
        assert label in page
    assert 'name="in_customer_name"' in page and 'maxlength="80"' in page
    assert re.search(r'<textarea[^>]*name="in_reason"', page)
    assert re.search(r'<input[^>]*type="number"[^>]*name="in_amount"', page)
    assert re.search(r'<input[^>]*type="checkbox"[^>]*name="in_vip"', page)
    assert '<option value="phone">phone</option>' in page
    assert 'value="Ada Lovelace"' in page  # Dify's default, prefilled


def test_a_chatflow_start_page_asks_for_the_message(
    client: Client, sim_app: Any, starters: Any, reviewer: User
) -> None:
    app = sim_app("support-chat")
    page = login(client, reviewer).get(f"/apps/{app.pk}/start/").content.decode()
    assert 'name="query"' in page and "Message" in page


def test_who_may_not_start_gets_403_and_an_inactive_app_404(
    client: Client, refunds: DifyApp, outsider: User, reviewer: User
) -> None:
    assert login(client, outsider).get(f"/apps/{refunds.pk}/start/").status_code == 403
    assert login(Client(), outsider).post(f"/apps/{refunds.pk}/start/", {}).status_code == 403
    DifyApp.objects.filter(pk=refunds.pk).update(is_active=False)
    assert login(Client(), reviewer).get(f"/apps/{refunds.pk}/start/").status_code == 404
    assert not Run.objects.exists()


def test_invalid_start_inputs_are_shown_with_dify_s_rules(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    data = start_form_data(simulator, in_customer_name="", in_amount="lots", in_channel="fax")
    response = login(client, reviewer).post(f"/apps/{refunds.pk}/start/", data)
    assert response.status_code == 400
    page = response.content.decode()
    assert "Customer name: This field is required." in page
    assert "Refund amount (EUR): Enter a number." in page
    assert "Channel: Select a valid choice. fax is not one of the available choices." in page
    assert not Run.objects.exists()
    # Each field's errors are tied to it: the id its aria-describedby names is on the page.
    import re

    for described in re.findall(r'aria-describedby="([^"]+)"', page):
        for ident in described.split():
            assert f'id="{ident}"' in page, ident
    assert 'aria-describedby="id_in_customer_name_error"' in page


def test_starting_a_run_goes_to_its_page(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    data = start_form_data(simulator, in_vip="on", in_amount="12.50")
    response = login(client, reviewer).post(f"/apps/{refunds.pk}/start/", data)
    run = Run.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.public_id}/"
    assert run.dify_user == "inbox-alice" and run.started_by == reviewer and run.source == "ui"
    assert run.inputs["vip"] is True and run.inputs["amount"] == 12.5
    assert simulator.run(run.workflow_run_id)["status"] in ("running", "paused")
    page = client.get(response["Location"]).content.decode()
    assert "The run has started." in page and "refund-approval" in page
    # Its inputs are named as the start form named them, not by their variables.
    assert "<dt>Refund amount (EUR)</dt>" in page and "<dt>amount</dt>" not in page
    # A ticked box reads as the person chose it, in their language.
    assert "<dt>VIP customer</dt><dd><pre>Yes</pre></dd>" in page
    page = client.get(response["Location"], HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "<dd><pre>\u662f</pre></dd>" in page and "<pre>true</pre>" not in page


def test_a_dify_error_at_the_start_is_shown_on_the_form(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    simulator.add_fault("status", "workflows_run", status=503)
    response = login(client, reviewer).post(
        f"/apps/{refunds.pk}/start/", start_form_data(simulator)
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "Dify did not start the run: Service Unavailable" in page
    # Nothing the person typed is wrong: not "Please correct the following".
    assert "<strong>The run was not started.</strong>" in page
    assert "Please correct the following" not in page


def test_dify_busy_at_the_start_says_how_long_to_wait(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    simulator.add_fault("status", "workflows_run", status=429, retry_after=12)
    response = login(client, reviewer).post(
        f"/apps/{refunds.pk}/start/", start_form_data(simulator)
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "Dify is busy and did not start the run: try again in 12 seconds." in page
    # A long wait in the unit one would say it in.
    simulator.add_fault("status", "workflows_run", status=429, retry_after=7200)
    page = (
        login(client, reviewer)
        .post(f"/apps/{refunds.pk}/start/", start_form_data(simulator))
        .content.decode()
    )
    assert "try again in 2 hours." in page
    assert "<strong>The run was not started.</strong>" in page


def test_an_input_dify_refuses_is_said_beside_its_field_under_its_label(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    # Dify's own check can be stricter than the parameters it gave (a rule changed meanwhile).
    simulator.add_fault(
        "status",
        "workflows_run",
        status=400,
        code="invalid_param",
        message="customer_name in input form must be less than 20 characters",
    )
    response = login(client, reviewer).post(
        f"/apps/{refunds.pk}/start/", start_form_data(simulator)
    )
    assert response.status_code == 400
    page = response.content.decode()
    said = "Dify refused this value: Customer name in input form must be less than 20 characters"
    assert re.search(
        r'<div id="id_in_customer_name_error"><p class="field-error">' + re.escape(said), page
    )
    assert "<strong>The run was not started.</strong>" in page
    assert "Dify did not start the run:" not in page
    # A refusal naming no input of the page is said as Dify said it.
    simulator.add_fault(
        "status", "workflows_run", status=400, code="invalid_param", message="Bad request."
    )
    page = (
        login(client, reviewer)
        .post(f"/apps/{refunds.pk}/start/", start_form_data(simulator))
        .content.decode()
    )
    assert "Dify did not start the run: Bad request." in page


def test_a_start_whose_answer_is_lost_tells_the_reviewer_to_check_dify_first(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    # Dify starts the run; the connection breaks before its first event reaches us.
    simulator.add_fault("drop_stream", "workflows_run", after_events=0)
    response = login(client, reviewer).post(
        f"/apps/{refunds.pk}/start/", start_form_data(simulator)
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "It may have started the run anyway: check in Dify before starting it again." in page
    assert "Dify did not start the run:" not in page
    assert "<strong>The start is not confirmed.</strong>" in page
    assert Run.objects.get().status == "failed"


def page_key(page: str) -> str:
    found = re.search(r'name="submission_key" value="([0-9a-f]{32})"', page)
    assert found, "the start page carries its submission key"
    return found.group(1)


def test_a_start_page_sent_twice_starts_one_run(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User, other_reviewer: User
) -> None:
    path = f"/apps/{refunds.pk}/start/"
    key = page_key(login(client, reviewer).get(path).content.decode())
    # Each showing of the page has its own key.
    assert page_key(client.get(path).content.decode()) != key
    data = {**start_form_data(simulator), "submission_key": key}
    first = client.post(path, data)
    run = Run.objects.get()
    assert first.status_code == 302 and first["Location"] == f"/runs/{run.public_id}/"
    # A double click, or a reload that posts the page again: the same run, not a second one.
    again = client.post(path, data)
    assert again.status_code == 302 and again["Location"] == first["Location"]
    assert Run.objects.count() == 1 and simulator.request_count("workflows_run") == 1
    page = client.get(again["Location"]).content.decode()
    assert "This run was already started from this page." in page
    # The same page with other inputs is another start (back, change, send), as is a page shown
    # anew: both start a run of their own.
    other = client.post(path, {**data, "in_customer_name": "Grace"})
    assert other.status_code == 302 and other["Location"] != first["Location"]
    fresh = client.post(
        path,
        {
            **start_form_data(simulator),
            "submission_key": page_key(client.get(path).content.decode()),
        },
    )
    assert fresh.status_code == 302 and Run.objects.count() == 3
    # Keys are each reviewer's own: another reviewer sending the same key starts their own run.
    theirs = login(Client(), other_reviewer).post(path, data)
    assert theirs.status_code == 302 and theirs["Location"] != first["Location"]
    assert simulator.request_count("workflows_run") == Run.objects.count() == 4


def test_a_start_page_sent_again_after_dify_refused_tries_again(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    path = f"/apps/{refunds.pk}/start/"
    data = {**start_form_data(simulator), "submission_key": "a" * 32}
    simulator.add_fault("status", "workflows_run", status=503)
    refused = login(client, reviewer).post(path, data)
    assert refused.status_code == 400
    # Nothing started in Dify, so the key was let go: the page sent again starts the run.
    started = client.post(path, data)
    assert started.status_code == 302
    assert Run.objects.filter(status="failed").count() == 1
    assert Run.objects.exclude(status="failed").count() == 1


def test_a_start_page_sent_again_after_the_answer_was_lost_starts_nothing_more(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    path = f"/apps/{refunds.pk}/start/"
    data = {**start_form_data(simulator), "submission_key": "b" * 32}
    simulator.add_fault("drop_stream", "workflows_run", after_events=0)
    lost = login(client, reviewer).post(path, data)
    warning = "It may have started the run anyway: check in Dify before starting it again."
    assert lost.status_code == 400 and warning in lost.content.decode()
    # Dify may have started it: the same page sent again says so again and sends nothing.
    again = client.post(path, data)
    assert again.status_code == 400 and warning in again.content.decode()
    assert simulator.request_count("workflows_run") == 1 and Run.objects.count() == 1
    # The page shown with the warning has a new key: asked again after reading it, it starts.
    assert page_key(again.content.decode()) != "b" * 32
    fresh = client.post(path, {**data, "submission_key": page_key(again.content.decode())})
    assert fresh.status_code == 302 and simulator.request_count("workflows_run") == 2


def test_a_start_page_whose_parameters_dify_refuses_marks_the_app(
    client: Client, refunds: DifyApp, reviewer: User
) -> None:
    DifyApp.objects.filter(pk=refunds.pk).update(api_key="app-revoked-key-000000")
    response = login(client, reviewer).get(f"/apps/{refunds.pk}/start/")
    assert response.status_code == 502
    assert "401 unauthorized: Access token is invalid" in response.content.decode()
    refunds.refresh_from_db()
    assert refunds.refusal == "401 unauthorized: Access token is invalid"


def test_unreachable_dify_on_the_start_page(
    client: Client, starters: Any, reviewer: User, reviewers_group: Any
) -> None:
    app = DifyApp.objects.create(name="gone", base_url="http://127.0.0.1:9/v1", api_key="k")
    response = login(client, reviewer).get(f"/apps/{app.pk}/start/")
    assert response.status_code == 502
    assert (
        "Dify could not be reached for this app's inputs: GET /parameters"
        in response.content.decode()
    )


@pytest.fixture
def paused_run(simulator: Any, refunds: DifyApp, reviewer: User) -> Run:
    run = start_run(
        refunds,
        inputs=sample_inputs(simulator.apps["refund-approval"]),
        dify_user="inbox-alice",
        started_by=reviewer,
    )
    (sim_form,) = simulator.run(run.workflow_run_id)["forms"]
    data = ev.form_data(sim_form["form_id"], sim_form["form_token"], node_id="manager_approval")
    run.apply_events(
        [
            ev.node("node_started", "lookup_order", "Look up order", execution="E1"),
            ev.node(
                "node_finished", "lookup_order", "Look up order", execution="E1", status="succeeded"
            ),
            ev.event("human_input_required", data),
            ev.paused(data),
        ]
    )
    return run


def test_the_run_page_shows_status_timeline_and_forms_never_the_token(
    client: Client, paused_run: Run, reviewer: User
) -> None:
    form = Form.objects.get()
    page = login(client, reviewer).get(f"/runs/{paused_run.public_id}/").content.decode()
    assert "Paused" in page and "The run is waiting for a decision." in page
    assert "Look up order" in page and "Run started" in page
    assert re.search(r"<time datetime=\"[^\"]+\" title=\"[^\"]+\">\d\d:\d\d:\d\d</time>", page)
    assert f'href="/forms/{form.public_id}/"' in page
    assert form.form_token not in page
    # It keeps itself current while the run is open.
    assert f'hx-get="/runs/{paused_run.public_id}/?part=live"' in page


def test_the_run_page_says_when_dify_refuses_the_app_s_key_with_its_words_only_for_staff(
    client: Client, paused_run: Run, reviewer: User, admin_user: User
) -> None:
    notice = (
        "Dify is refusing this app's API key; new forms of this run cannot arrive until "
        "an administrator fixes it."
    )
    page = login(client, reviewer).get(f"/runs/{paused_run.public_id}/").content.decode()
    assert notice not in page
    DifyApp.objects.filter(pk=paused_run.app_id).update(
        refused_at=timezone.now(),
        refusal="401 unauthorized: Access token is invalid",
        refusal_status=401,
    )
    part = client.get(
        f"/runs/{paused_run.public_id}/?part=live", HTTP_HX_REQUEST="true"
    ).content.decode()
    assert notice in part and "Dify answered 401." in part
    assert "Access token is invalid" not in part
    page = login(Client(), admin_user).get(f"/runs/{paused_run.public_id}/").content.decode()
    assert notice in page and "401 unauthorized: Access token is invalid" in page
    part = client.get(
        f"/runs/{paused_run.public_id}/?part=live",
        HTTP_HX_REQUEST="true",
        HTTP_ACCEPT_LANGUAGE="zh-Hans",
    ).content.decode()
    assert "Dify 拒绝了此应用的 API 密钥" in part and "401" in part


def test_the_live_part_is_the_fragment_and_stops_polling_at_the_end(
    client: Client, paused_run: Run, reviewer: User
) -> None:
    login(client, reviewer)
    part = client.get(
        f"/runs/{paused_run.public_id}/?part=live", HTTP_HX_REQUEST="true"
    ).content.decode()
    assert part.lstrip().startswith('<section id="run-live"') and "<html" not in part
    assert 'hx-trigger="every 2s"' in part
    paused_run.apply_events([ev.filled(node_id="manager_approval"), ev.finished()])
    part = client.get(
        f"/runs/{paused_run.public_id}/?part=live", HTTP_HX_REQUEST="true"
    ).content.decode()
    assert "Succeeded" in part and "hx-trigger" not in part
    assert "decision" in part  # the outputs


def test_the_run_page_s_poll_changes_nothing_until_the_run_does_and_then_says_its_status(
    client: Client, paused_run: Run, reviewer: User
) -> None:
    import json

    page = login(client, reviewer).get(f"/runs/{paused_run.public_id}/").content.decode()
    digest = re.search(r'hx-headers=\'\{"X-Run-Digest": "([^"]+)"\}\'', page)
    assert digest is not None
    # Not a live region redrawn every two seconds: the page's announcer says what changes.
    assert "aria-live" not in page.split('id="run-live"')[1].split(">")[0]
    url = f"/runs/{paused_run.public_id}/?part=live"
    same = client.get(url, HTTP_HX_REQUEST="true", HTTP_X_RUN_DIGEST=digest.group(1))
    assert same.status_code == 204 and same.content == b""
    paused_run.apply_events([ev.filled(node_id="manager_approval"), ev.finished()])
    moved = client.get(
        url, HTTP_HX_REQUEST="true", HTTP_X_RUN_DIGEST=digest.group(1), HTTP_ACCEPT_LANGUAGE="en"
    )
    assert moved.status_code == 200
    message = json.loads(moved["HX-Trigger"])["inbox:announce"]["message"]
    assert message == "The run is now: Succeeded."
    # A change within the same status (a step done) redraws the part without a word.
    paused_run.refresh_from_db()
    Run.objects.filter(pk=paused_run.pk).update(status=Run.Status.RUNNING)
    running = client.get(url, HTTP_HX_REQUEST="true").content.decode()
    key = re.search(r'"X-Run-Digest": "([^"]+)"', running)
    assert key is not None
    Run.objects.filter(pk=paused_run.pk).update(timeline=[*paused_run.timeline, {"title": "x"}])
    step = client.get(url, HTTP_HX_REQUEST="true", HTTP_X_RUN_DIGEST=key.group(1))
    assert step.status_code == 200 and "HX-Trigger" not in step
    zh = client.get(
        url,
        HTTP_HX_REQUEST="true",
        HTTP_X_RUN_DIGEST="paused.0",
        HTTP_ACCEPT_LANGUAGE="zh-hans",
    )
    assert json.loads(zh["HX-Trigger"])["inbox:announce"]["message"].startswith("运行当前状态：")  # noqa: RUF001


def test_a_runs_list_link_is_described_by_its_run_status_and_age(
    client: Client, paused_run: Run, reviewer: User
) -> None:
    page = login(client, reviewer).get("/runs/").content.decode()
    link = re.search(
        rf'<a class="open" href="/runs/{paused_run.public_id}/" aria-describedby="([^"]+)"', page
    )
    assert link is not None
    described = ""
    for ref in link.group(1).split():
        found = re.search(rf'id="{ref}"[^>]*>(.*?)</span>', page, re.S)
        assert found is not None, ref
        described += re.sub(r"<[^>]+>", "", found.group(1)) + " "
    assert paused_run.workflow_run_id[:8] in described and "Paused" in described


def test_inputs_and_outputs_named_items_are_shown_like_any_other(
    client: Client, refunds: DifyApp, reviewer: User
) -> None:
    # `{% for k, v in d.items %}` would read the key "items" rather than the pairs.
    run = Run.objects.create(
        app=refunds,
        workflow_run_id="R-items",
        dify_user="inbox-alice",
        started_by=reviewer,
        status=Run.Status.SUCCEEDED,
        inputs={"items": "three mugs", "order_id": "SO-9"},
        outputs={"items": [["mug", 3]], "summary": "refunded"},
        follow_wanted=False,
    )
    response = login(client, reviewer).get(f"/runs/{run.public_id}/")
    assert response.status_code == 200
    page = response.content.decode()
    for text in ("<dt>items</dt>", "three mugs", "<dt>order_id</dt>", "<dt>summary</dt>"):
        assert text in page
    assert "refunded" in page and "&quot;mug&quot;" in page


def test_a_poll_of_a_run_no_longer_one_s_own_or_after_signing_out_reloads_the_page(
    client: Client, paused_run: Run, reviewer: User, outsider: User
) -> None:
    poll = f"/runs/{paused_run.public_id}/?part=live"
    login(client, reviewer)
    assert client.get(poll, HTTP_HX_REQUEST="true").status_code == 200
    # Not the sign-in page swapped into the part, nor a 404 that htmx would ignore and poll on:
    # the browser reloads the page, which shows the sign-in page or the reason in full.
    for who in (Client(), login(Client(), outsider)):
        response = who.get(poll, HTTP_HX_REQUEST="true")
        assert (response.status_code, response["HX-Refresh"]) == (200, "true")
        assert who.get(poll).status_code in (302, 404)  # the same request without htmx


def test_not_found_and_not_allowed_pages_say_why_in_the_reader_s_language(
    client: Client, refunds: DifyApp, paused_run: Run, outsider: User
) -> None:
    login(client, outsider)
    for language, texts in (
        ("en", ("This page does not exist, or you may not see it.", "You may not start runs.")),
        ("zh-hans", ("此页面不存在，或您无权查看。", "您无权启动运行。")),  # noqa: RUF001
    ):
        headers = {"HTTP_ACCEPT_LANGUAGE": language}
        missing = client.get(f"/runs/{paused_run.public_id}/", **headers)
        assert missing.status_code == 404 and texts[0] in missing.content.decode()
        refused = client.get(f"/apps/{refunds.pk}/start/", **headers)
        assert refused.status_code == 403 and texts[1] in refused.content.decode()


def test_who_may_see_the_run_page(
    client: Client, paused_run: Run, other_reviewer: User, outsider: User, admin_user: User
) -> None:
    path = f"/runs/{paused_run.public_id}/"
    assert login(client, other_reviewer).get(path).status_code == 200
    assert login(Client(), admin_user).get(path).status_code == 200
    assert login(Client(), outsider).get(path).status_code == 404
    runs = login(Client(), outsider).get("/runs/").content.decode()
    assert str(paused_run.public_id) not in runs


def test_the_runs_list_shows_the_runs_one_may_see(
    client: Client, paused_run: Run, reviewer: User
) -> None:
    page = login(client, reviewer).get("/runs/").content.decode()
    assert f'href="/runs/{paused_run.public_id}/"' in page and "Paused" in page


def test_stop_is_for_who_started_it_and_not_at_a_form(
    client: Client, paused_run: Run, reviewer: User, other_reviewer: User
) -> None:
    path = f"/runs/{paused_run.public_id}/stop"
    assert login(client, other_reviewer).post(path).status_code == 403
    response = login(Client(), reviewer).post(path, follow=True)
    assert (
        "This run is waiting at a form, where Dify cannot stop it. Answer the form, or let it "
        "expire." in response.content.decode()
    )
    assert login(Client(), reviewer).get(path).status_code == 405


def test_stopping_a_working_run_from_its_page(
    client: Client, simulator: Any, refunds: DifyApp, reviewer: User
) -> None:
    simulator.set_options(time_scale=30.0)
    run = start_run(
        refunds,
        inputs=sample_inputs(simulator.apps["refund-approval"]),
        dify_user="inbox-alice",
        started_by=reviewer,
    )
    page = login(client, reviewer).get(f"/runs/{run.public_id}/").content.decode()
    assert f'action="/runs/{run.public_id}/stop"' in page
    response = client.post(f"/runs/{run.public_id}/stop", follow=True)
    assert "Dify was asked to stop the run." in response.content.decode()
    simulator.wait_for_status(run.workflow_run_id, "stopped")


def test_the_runs_list_filters_by_state_and_app_and_pages_without_counting(
    client: Client,
    paused_run: Run,
    refunds: DifyApp,
    sim_app: Any,
    admin_user: User,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = sim_app("content-publish")
    finished = [
        Run.objects.create(app=refunds, status="succeeded", workflow_run_id=f"done-{n}")
        for n in range(3)
    ]
    Run.objects.create(app=other, status="running", workflow_run_id="other-1")
    admin = login(client, admin_user)

    def shown(query: str) -> list[str]:
        page = admin.get("/runs/" + query).content.decode()
        return re.findall(r'<a class="open" href="/runs/([0-9a-f-]+)/"', page)

    assert len(shown("")) == 5
    paused_page = admin.get("/runs/?state=paused").content.decode()
    assert shown("?state=paused") == [str(paused_run.public_id)]
    assert "1 form waiting for a decision" in paused_page
    assert sorted(shown("?state=finished")) == sorted(str(r.public_id) for r in finished)
    assert len(shown(f"?state=open&app={refunds.pk}")) == 1
    assert shown(f"?state=finished&app={other.pk}") == []
    assert "No runs match." in admin.get(f"/runs/?state=finished&app={other.pk}").content.decode()

    # Pages of two: newest first, each run once, a link to the older ones while there are any.
    monkeypatch.setattr(views_runs, "RUNS_PAGE", 2)
    pages = [shown(f"?page={n}") for n in (1, 2, 3)]
    first = admin.get("/runs/?page=1").content.decode()
    last = admin.get("/runs/?page=3").content.decode()
    assert [len(p) for p in pages] == [2, 2, 1]
    assert len({run for p in pages for run in p}) == 5
    assert "?page=2" in first and "Newer" not in first
    assert "?page=2" in last and "Older" not in last
    assert shown("?page=oops") == shown("?page=1")


def test_the_runs_list_finds_a_run_by_its_id_its_starter_its_message_or_an_input(
    client: Client, refunds: DifyApp, sim_app: Any, reviewer: User, admin_user: User
) -> None:
    reviewer.first_name, reviewer.last_name = "Alice", "Lindqvist"
    reviewer.save()
    ada = Run.objects.create(
        app=refunds,
        workflow_run_id="41f2c79e-aaaa-4000-8000-000000000001",
        inputs={"customer_name": "Ada Lovelace", "order_id": "SO-1042"},
        started_by=reviewer,
    )
    zhang = Run.objects.create(
        app=refunds, workflow_run_id="9b0e1d2c-0000", inputs={"customer_name": "\u5f20\u4e09"}
    )
    chat = Run.objects.create(
        app=sim_app("support-chat"), workflow_run_id="c0ffee01", query="Where is my parcel?"
    )
    admin = login(client, admin_user)

    def found(q: str) -> set[str]:
        page = admin.get("/runs/", {"q": q}).content.decode()
        return set(re.findall(r'<a class="open" href="/runs/([0-9a-f-]+)/"', page))

    assert found("41f2c79e") == {str(ada.public_id)}  # as its row shows it
    assert found("so-1042") == found("Lovelace") == {str(ada.public_id)}
    assert found("lindqvist") == found("alice") == {str(ada.public_id)}
    # Who started a run is found after their account is gone, by the name the run kept.
    gone = Run.objects.create(app=refunds, workflow_run_id="0d0d0d0d", started_by_username="erin")
    assert found("erin") == {str(gone.public_id)}
    assert found("\u5f20\u4e09") == {str(zhang.public_id)}  # not ASCII, stored escaped
    assert found("parcel") == {str(chat.public_id)}
    # Values, not the inputs' names nor JSON's words; a number as a value too.
    assert found("customer") == found("order_id") == found('":') == set()
    Run.objects.filter(pk=zhang.pk).update(inputs={"customer_name": "Zhang", "amount": 249.9})
    assert found("249.9") == {str(zhang.public_id)}
    # The run's own id, as its page's address shows it.
    assert found(str(chat.public_id)[:8]) >= {str(chat.public_id)}
    # A chatflow's row says what it was asked.
    row = admin.get("/runs/", {"q": "parcel"}).content.decode()
    assert '<p class="muted run-query">Where is my parcel?</p>' in row
    assert found("nobody") == set()
    page = admin.get("/runs/", {"q": "nobody"}).content.decode()
    assert "No runs match." in page and 'value="nobody"' in page
    # The API searches the same way.
    _token, raw = ApiToken.issue(admin_user)
    body = client.get("/api/v1/runs", {"q": "SO-1042"}, HTTP_AUTHORIZATION=f"Bearer {raw}").json()
    assert [r["id"] for r in body["results"]] == [str(ada.public_id)]


def test_the_runs_list_finds_who_started_a_run_by_the_name_it_shows(
    client: Client, refunds: DifyApp, reviewer: User, admin_user: User
) -> None:
    """A full name as the row writes it: "Min Zhang", and a Chinese name family name first
    with no space ("\u738b\u82b3" for \u738b \u82b3), in either order, with or without a
    space."""
    lead = User.objects.create_user("lead", first_name="Min", last_name="Zhang")
    wang = User.objects.create_user("wang", first_name="\u82b3", last_name="\u738b")
    reviewer.first_name, reviewer.last_name = "Alice", "Smith"
    reviewer.save()
    runs = {
        user.username: Run.objects.create(
            app=refunds, workflow_run_id=f"wr-{user.username}", started_by=user
        )
        for user in (lead, wang, reviewer)
    }
    admin = login(client, admin_user)

    def found(q: str) -> set[str]:
        page = admin.get("/runs/", {"q": q}).content.decode()
        ids = set(re.findall(r'<a class="open" href="/runs/([0-9a-f-]+)/"', page))
        return {name for name, run in runs.items() if str(run.public_id) in ids}

    page = admin.get("/runs/").content.decode()
    assert "\u738b\u82b3" in page and "Min Zhang" in page
    assert found("\u738b\u82b3") == found("\u738b \u82b3") == {"wang"}
    assert found("\u82b3") == found("\u738b") == found("wang") == {"wang"}
    assert found("Min Zhang") == found("zhang min") == found("Min  Zhang") == {"lead"}
    assert found("Alice Smith") == found("alice smi") == {reviewer.username}
    assert found("Alice Zhang") == found("\u738b\u82b3x") == set()
    # The API searches the same way.
    _token, raw = ApiToken.issue(admin_user)
    body = client.get(
        "/api/v1/runs", {"q": "\u738b\u82b3"}, HTTP_AUTHORIZATION=f"Bearer {raw}"
    ).json()
    assert [r["id"] for r in body["results"]] == [str(runs["wang"].public_id)]


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the runs search's indexes exist on PostgreSQL only"
)
def test_the_runs_search_reads_only_the_runs_its_indexes_find(
    refunds: DifyApp, reviewer: User, admin_user: User
) -> None:
    """Every part of the search is answered by an index (migration 0031), so PostgreSQL need not
    read every run to test it: no sequential scan of the runs, whatever is looked for."""
    reviewer.first_name, reviewer.last_name = "Alice", "Lovelace"
    reviewer.save()
    ada = Run.objects.create(
        app=refunds,
        workflow_run_id="41f2c79e-aaaa-4000-8000-000000000001",
        inputs={
            "customer_name": "Ada Lovelace",
            "reason": "\u7533\u8bf7\u9000\u6b3e",
            "amount": 12.5,
        },
        query="Where is my parcel?",
        started_by=reviewer,
        started_by_username=reviewer.username,
    )

    def plan_and_found(q: str) -> tuple[str, list[int]]:
        runs = views_runs.search_runs(Run.objects.for_user(admin_user), q)
        sql, params = runs.order_by().values("pk").query.sql_with_params()
        with transaction.atomic(), connection.cursor() as cursor:
            # A tiny table would be read whole, or walked along another index.
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("SET LOCAL enable_indexscan = off")
            cursor.execute("EXPLAIN " + sql, params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        return plan, list(runs.values_list("pk", flat=True))

    for q, uses in [
        ("lovelace", "run_inputs_trgm"),
        ("\u9000\u6b3e", "run_inputs_trgm"),
        ("12.5", "run_inputs_trgm"),
        ("parcel", "run_query_trgm"),
        ("alice", "started_by_id"),
        ("Alice Lovelace", "started_by_id"),
        (reviewer.username, "run_started_by_username_upper"),
        ("41f2c79e", "run_workflow_run_id_start"),
        ("0123abcd-ffff", "run_public_id_start"),
        ("nothing like it", "run_inputs_trgm"),
    ]:
        plan, found = plan_and_found(q)
        assert "Seq Scan on inbox_run" not in plan and uses in plan, (q, plan)
        assert found == ([] if q in ("nothing like it", "0123abcd-ffff") else [ada.pk]), q


def test_the_runs_list_shows_a_reviewer_only_the_apps_of_runs_they_may_see(
    client: Client, paused_run: Run, sim_app: Any, reviewer: User
) -> None:
    hidden = sim_app("content-publish")
    Run.objects.create(app=hidden, status="running", workflow_run_id="not-theirs")
    page = login(client, reviewer).get("/runs/").content.decode()
    assert "content-publish" not in page and str(paused_run.public_id) in page


def test_a_run_that_ended_without_a_form_says_so(
    client: Client, refunds: DifyApp, reviewer: User
) -> None:
    going = Run.objects.create(
        app=refunds, workflow_run_id="wr-going", dify_user="inbox-alice", started_by=reviewer
    )
    ended = Run.objects.create(
        app=refunds,
        workflow_run_id="wr-ended",
        dify_user="inbox-alice",
        started_by=reviewer,
        status=Run.Status.FAILED,
        finished_at=timezone.now(),
    )
    never = Run.objects.create(
        app=refunds,
        dify_user="inbox-alice",
        started_by=reviewer,
        status=Run.Status.FAILED,
        error="Service Unavailable",
        finished_at=timezone.now(),
    )
    login(client, reviewer)
    assert "No form so far." in client.get(f"/runs/{going.public_id}/").content.decode()
    page = client.get(f"/runs/{ended.public_id}/").content.decode()
    assert "The run ended without asking for a decision." in page
    assert "No form so far." not in page and "The run produced no outputs." in page
    # A start Dify refused: no run in Dify to have ended, nor outputs to lack.
    page = client.get(f"/runs/{never.public_id}/").content.decode()
    assert "Dify never named this run, so the inbox has no form or output of it." in page
    assert "The run ended without" not in page and "The run produced no outputs." not in page


START_PARAMETERS = {
    "user_input_form": [
        {
            "select": {
                "variable": "channel",
                "label": "Channel",
                "required": True,
                "options": ["email", "phone"],
            }
        },
        {
            "select": {
                "variable": "region",
                "label": "Region",
                "required": True,
                "options": ["eu", "us"],
                "default": "us",
            }
        },
        {"paragraph": {"variable": "note", "label": "Note", "required": False, "max_length": 12}},
    ]
}


def test_a_required_choice_with_no_default_starts_unchosen(refunds: DifyApp) -> None:
    from inbox.runs import StartRunForm

    form = StartRunForm(refunds, START_PARAMETERS, from_page=True)
    channel = form.fields[form.specs[0].field_name]
    # Nothing chosen until the person chooses: the first option is not sent for them.
    assert channel.choices[0] == ("", "Choose…") and channel.initial is None
    region = form.fields[form.specs[1].field_name]
    assert region.choices[0] == ("eu", "eu") and region.initial == "us"
    data = {form.specs[0].field_name: "", form.specs[1].field_name: "us"}
    refused = StartRunForm(refunds, START_PARAMETERS, data, from_page=True)
    assert not refused.is_valid()
    assert refused.error_messages() == {"channel": ["This field is required."]}


def test_a_start_page_s_lines_reach_dify_ended_by_newline_and_counted_once(
    refunds: DifyApp,
) -> None:
    from inbox.runs import StartRunForm

    names = [spec.field_name for spec in StartRunForm(refunds, START_PARAMETERS).specs]
    # Six lines of one character: 11 characters as the browser counts them, 16 with CRLF.
    data = {names[0]: "email", names[1]: "us", names[2]: "a\r\nb\r\nc\r\nd\r\ne\r\nf"}
    form = StartRunForm(refunds, START_PARAMETERS, data, from_page=True)
    assert form.is_valid(), form.errors
    assert form.dify_inputs()["note"] == "a\nb\nc\nd\ne\nf"
    # The API's text is sent as given (and counted as given).
    assert not StartRunForm(refunds, START_PARAMETERS, data).is_valid()


def test_a_run_the_inbox_lost_touch_with_says_when_it_tries_again(
    client: Client, refunds: DifyApp, reviewer: User
) -> None:
    run = Run.objects.create(
        app=refunds,
        workflow_run_id="wr-away",
        dify_user="inbox-alice",
        started_by=reviewer,
        status=Run.Status.RUNNING,
        needs_reconcile=True,
        give_ups=3,
        refollow_after=timezone.now() + dt.timedelta(minutes=4),
    )
    page = login(client, reviewer).get(f"/runs/{run.public_id}/").content.decode()
    assert "The inbox cannot follow this run in Dify at the moment" in page
    assert "Next try:" in page
    # Not for a run whose events Dify never shows (followed through its detail), nor once the
    # run has ended.
    Run.objects.filter(pk=run.pk).update(events_unavailable=True)
    assert "cannot follow this run" not in client.get(f"/runs/{run.public_id}/").content.decode()
    Run.objects.filter(pk=run.pk).update(events_unavailable=False, status="succeeded")
    assert "cannot follow this run" not in client.get(f"/runs/{run.public_id}/").content.decode()
