"""A reviewer takes a run from start to finish in Chromium, through both of its pauses.

Everything is real: the "Start a run" page starts a `claim-review` run on the Dify simulator, the
follower captures each pause, the inbox shows the form without a reload, the reviewer fills a
paragraph, picks an option, uploads a file and a file list (through Dify's upload API, the
progress bar showing on a throttled connection), and decides. The decision goes through
PostgreSQL and Redis to a Celery worker process, which delivers it to the simulator; the follower
reads the run on to its second form, which is decided the same way, and then to its end.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User

from inbox.models import Decision, DifyApp, Form, Run
from tests.capture.conftest import FollowerThread, follower, sim_app, starters  # noqa: F401
from tests.conftest import wait_until
from tests.review.browser import logged_in_page, screenshot

pytestmark = pytest.mark.browser

# A 1x1 PNG, and a minimal PDF: the simulator classifies files by extension and MIME type.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def pdf(text: str, size: int = 0) -> bytes:
    body = f"%PDF-1.4\n% {text}\n".encode()
    return body + b"%" * max(0, size - len(body)) + b"\n%%EOF\n"


def fill_and_upload(
    page: Any,
    tmp: Path,
    *,
    paragraph: tuple[str, str],
    option: tuple[str, str],
    file: tuple[str, str, bytes],
    files: tuple[str, list[tuple[str, bytes]]],
) -> None:
    """Fill one form: a paragraph, an option, one file and a list of files."""
    name, text = paragraph
    page.locator(f'textarea[name="in_{name}"]').fill(text)
    name, value = option
    page.locator(f'input[name="in_{name}"][value="{value}"]').check()
    name, filename, data = file
    path = tmp / filename
    path.write_bytes(data)
    page.locator(f'input[data-upload="{name}"]').set_input_files(str(path))
    page.locator(f"#files-{name} .file-chip").wait_for()
    name, items = files
    if not items:
        return
    paths = []
    for filename, data in items:
        path = tmp / filename
        path.write_bytes(data)
        paths.append(str(path))
    page.locator(f'input[data-upload="{name}"]').set_input_files(paths)
    page.wait_for_function(
        f"() => document.querySelectorAll('#files-{name} .file-chip').length === {len(items)}"
    )


def watch_progress(page: Any, name: str) -> None:
    """Record what the upload's progress bar shows at each progress event."""
    page.evaluate(
        """name => {
            window.__progress = [];
            document.addEventListener("htmx:xhr:progress", (event) => {
                if (event.detail.elt.getAttribute("data-upload") !== name) return;
                const bar = document.getElementById("progress-" + name);
                window.__progress.push({hidden: bar.hidden, value: bar.value});
            });
        }""",
        name,
    )


def test_a_reviewer_starts_a_run_and_decides_both_of_its_forms(
    live_server: Any,
    chromium: Any,
    browser_contexts: list[Any],
    simulator: Any,
    follower: FollowerThread,  # noqa: F811
    celery_worker_process: subprocess.Popen[bytes],
    sim_app: Any,  # noqa: F811
    starters: Group,  # noqa: F811
    reviewer: User,
    tmp_path: Path,
) -> None:
    app: DifyApp = sim_app("claim-review")

    # The inbox is open in one tab, empty.
    inbox = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    inbox.goto(live_server.url + "/")
    inbox.wait_for_selector(".empty-state")
    inbox.evaluate("window.__marker = 1")  # gone if the page reloads

    # Another tab: Apps → Start a run, with the inputs the app asks for.
    starter = inbox.context.new_page()
    starter.set_default_timeout(15000)
    starter.goto(live_server.url + "/apps/")
    starter.locator(f'a[href="/apps/{app.pk}/start/"]').first.click()
    starter.wait_for_url(f"**/apps/{app.pk}/start/")
    # Sent without its required claim number: the page's own errors (in its language, not the
    # browser's bubble in the browser's) are said, and the reader is taken to them.
    starter.get_by_label("Claim number").fill("")
    starter.get_by_role("button", name="Start the run").click()
    starter.wait_for_selector("#start-errors")
    assert starter.evaluate("document.activeElement.id") == "start-errors"
    starter.get_by_label("Claim number").fill("CL-2026-0042")
    starter.get_by_role("button", name="Start the run").click()
    starter.wait_for_url("**/runs/**")
    run = Run.objects.get(app=app)
    assert run.started_by == reviewer and run.inputs["claim_id"] == "CL-2026-0042"
    starter.close()

    # The follower captures the pause; the inbox shows it by itself.
    row = inbox.locator("#rows .row", has_text="Adjuster assessment")
    row.wait_for(timeout=20000)
    assert inbox.evaluate("window.__marker") == 1
    # The tabs follow: the list came with the last counts (none pending), then the current.
    inbox.wait_for_function(
        "() => document.querySelector('#tabs a.active .count').textContent.trim() === '1' && "
        "!document.querySelector('#tabs').hasAttribute('aria-busy')"
    )
    assert inbox.locator("#pager-range").inner_text().endswith(" 1")
    first = run.forms.get()
    assert first.form_token not in inbox.content()
    row.locator(".open").click()
    inbox.wait_for_url(f"**/forms/{first.public_id}/")
    page = inbox
    assert page.locator("#form-title").inner_text() == "Adjuster assessment"
    covered = page.get_by_role("button", name="Covered", exact=True)
    assert covered.is_disabled()  # the cause and the files are still missing

    # The invoices travel on a slow line, so the progress bar has time to show.
    watch_progress(page, "invoices")
    cdp = page.context.new_cdp_session(page)
    fill_and_upload(
        page,
        tmp_path,
        paragraph=("assessment", "Burst pipe under the sink; damage matches the photos."),
        option=("cause", "water"),
        file=("damage_photo", "kitchen.png", PNG),
        files=("invoices", []),
    )
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 20, "downloadThroughput": -1, "uploadThroughput": 400_000},
    )
    paths = []
    for filename, data in [("plumber.pdf", pdf("plumber", 600_000)), ("floor.png", PNG)]:
        (tmp_path / filename).write_bytes(data)
        paths.append(str(tmp_path / filename))
    page.locator('input[data-upload="invoices"]').set_input_files(paths)
    page.locator("#progress-invoices:not([hidden])").wait_for()
    assert covered.is_disabled()  # not while a file is on its way
    screenshot(page, "review-flow-uploading")
    page.wait_for_function(
        "() => document.querySelectorAll('#files-invoices .file-chip').length === 2"
    )
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    progress = page.evaluate("window.__progress")
    assert progress and all(not p["hidden"] for p in progress)
    assert any(0 < p["value"] < 100 for p in progress), progress
    assert page.locator("#progress-invoices").is_hidden()
    assert {u.name for u in first.uploads.all()} == {"kitchen.png", "plumber.pdf", "floor.png"}

    covered.click()
    page.locator(".closed-submitted").wait_for(timeout=20000)
    assert "By Alice" in page.locator("#form-body").inner_text()
    page.locator("#form-status.submitted").wait_for()  # the header follows the body
    assert page.locator("#claim").inner_text() == ""  # emptied: nothing to take any more
    screenshot(page, "review-flow-delivered")
    decision = Decision.objects.get(form=first)
    assert decision.status == Decision.Status.DELIVERED and decision.reviewer == reviewer
    assert decision.inputs["cause"] == "water"
    assert [f["upload_file_id"] for f in decision.inputs["invoices"]] == [
        u.upload_file_id for u in first.uploads.filter(input_name="invoices").order_by("created_at")
    ]

    # The run goes on to its second form; the page links to it.
    next_link = page.locator(".next-form a", has_text="Payout approval")
    next_link.wait_for(timeout=20000)
    next_link.click()
    second = run.forms.get(node_id="payout_approval")
    page.wait_for_url(f"**/forms/{second.public_id}/")
    assert "The adjuster said: Burst pipe under the sink" in page.locator("#form-body").inner_text()
    fill_and_upload(
        page,
        tmp_path,
        paragraph=("payout_note", "EUR 4,100 after the deductible."),
        option=("payment_method", "bank transfer"),
        file=("signed_release", "release.pdf", pdf("signed release")),
        files=("documents", [("estimate.pdf", pdf("estimate")), ("receipt.png", PNG)]),
    )
    page.get_by_role("button", name="Approve payout").click()
    page.locator(".closed-submitted").wait_for(timeout=20000)

    # The run ends, and the panel shows what it produced.
    page.locator("#run-panel .outputs").wait_for(timeout=20000)
    panel = page.locator("#run-panel").inner_text()
    assert "payment_method" in panel and "bank transfer" in panel
    screenshot(page, "review-flow-finished")
    assert page.js_errors == []
    assert page.csp_violations == []

    finished = wait_until(lambda: Run.objects.filter(pk=run.pk, status="succeeded").first())
    assert finished.outputs["assessment"] == "covered" and finished.outputs["cause"] == "water"
    assert finished.outputs["payout"] == "pay"
    assert finished.outputs["payment_method"] == "bank transfer"
    assert len(finished.outputs["invoices"]) == 2 and len(finished.outputs["documents"]) == 2
    second_uploads = {u.name: u.upload_file_id for u in second.uploads.all()}
    assert finished.outputs["signed_release"]["upload_file_id"] == second_uploads["release.pdf"]
    assert [f["upload_file_id"] for f in finished.outputs["documents"]] == [
        second_uploads["estimate.pdf"],
        second_uploads["receipt.png"],
    ]
    assert list(run.forms.values_list("status", flat=True).order_by("created_at")) == [
        Form.Status.SUBMITTED,
        Form.Status.SUBMITTED,
    ]
    # One POST per form reached Dify: nothing was delivered twice.
    for form in run.forms.all():
        assert simulator.submits_applied(form.form_id) == 1
        assert simulator.submit_count(form.form_id) == 1
    assert "Succeeded" in panel


def test_switching_language_keeps_the_inputs_of_a_run_being_started(
    live_server: Any,
    chromium: Any,
    browser_contexts: list[Any],
    simulator: Any,
    sim_app: Any,  # noqa: F811
    starters: Group,  # noqa: F811
    reviewer: User,
) -> None:
    app: DifyApp = sim_app("refund-approval")
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/apps/{app.pk}/start/")
    page.get_by_label("Customer name").fill("Grace Hopper")
    page.get_by_label("Channel").select_option("phone")
    page.get_by_label("VIP customer").check()
    with page.expect_navigation():
        page.get_by_role("button", name="简体中文").click()
    assert page.evaluate("document.documentElement.lang") == "zh-hans"
    # Each kind of input as the reviewer left it; what they did not touch as the app sets it.
    assert page.get_by_label("Customer name").input_value() == "Grace Hopper"
    assert page.get_by_label("Channel").input_value() == "phone"
    assert page.get_by_label("VIP customer").is_checked()
    assert page.get_by_label("Order number").input_value() == "SO-104233"
    assert page.js_errors == []


def test_reloading_the_page_of_a_start_whose_answer_was_lost_starts_nothing_more(
    live_server: Any,
    chromium: Any,
    browser_contexts: list[Any],
    simulator: Any,
    sim_app: Any,  # noqa: F811
    starters: Group,  # noqa: F811
    reviewer: User,
) -> None:
    app: DifyApp = sim_app("refund-approval")
    # Dify takes the start; its answer never reaches the inbox.
    simulator.add_fault("drop_stream", "workflows_run", after_events=0)
    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/apps/{app.pk}/start/")
    page.get_by_role("button", name="Start the run").click()
    warning = page.locator("#start-errors", has_text="It may have started the run anyway")
    warning.wait_for()
    # Reloading the answer posts the page again, as browsers do: Dify is asked nothing more,
    # and the reviewer reads the same warning.
    page.reload()
    warning.wait_for()
    assert simulator.request_count("workflows_run") == 1
    assert Run.objects.count() == 1
    assert page.js_errors == []


def test_a_reviewer_goes_on_with_a_conversation_sending_a_file(
    live_server: Any,
    chromium: Any,
    browser_contexts: list[Any],
    simulator: Any,
    sim_app: Any,  # noqa: F811
    starters: Group,  # noqa: F811
    follower: FollowerThread,  # noqa: F811
    reviewer: User,
    tmp_path: Path,
) -> None:
    from tests.capture.conftest import pending, run_status, start, submit

    app: DifyApp = sim_app("support-chat")
    first = start(simulator, app, reviewer)
    (form,) = pending(first)
    submit(form, "grant", agent_message="Credit added.")
    run_status(first, "succeeded")
    photo = tmp_path / "parcel.png"
    photo.write_bytes(PNG)

    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/runs/{first.public_id}/")
    page.get_by_role("link", name="Go on with the conversation").click()
    page.get_by_label("Message").fill("Here is a photo of the parcel.")
    page.get_by_label("Files").set_input_files(str(photo))
    with page.expect_navigation():
        page.get_by_role("button", name="Send the message").click()
    second = Run.objects.exclude(pk=first.pk).get()
    assert page.url.endswith(f"/runs/{second.public_id}/")
    (sent,) = second.message_files.all()
    assert sent.name == "parcel.png" and sent.dify_user == first.dify_user
    assert simulator.run(second.workflow_run_id)["files"] == [sent.as_dify()]
    # The run page shows the file the message went with.
    page.get_by_text("Inputs", exact=True).click()
    assert page.get_by_text("parcel.png").is_visible()
    screenshot(page, "continue-with-a-file")
    assert page.js_errors == []


def test_a_reviewer_starts_a_run_with_a_file_in_its_start_inputs(
    live_server: Any,
    chromium: Any,
    browser_contexts: list[Any],
    simulator: Any,
    sim_app: Any,  # noqa: F811
    starters: Group,  # noqa: F811
    reviewer: User,
    tmp_path: Path,
) -> None:
    app: DifyApp = sim_app("document-intake")
    contract = tmp_path / "contract.pdf"
    contract.write_bytes(pdf("signed"))

    page = logged_in_page(chromium, live_server, reviewer, browser_contexts)
    page.goto(f"{live_server.url}/apps/{app.pk}/start/")
    page.get_by_label("Supplier").fill("Hartmann")
    page.get_by_label("Signed contract").set_input_files(str(contract))
    with page.expect_navigation():
        page.get_by_role("button", name="Start the run").click()
    run = Run.objects.get()
    assert page.url.endswith(f"/runs/{run.public_id}/")
    (sent,) = run.message_files.all()
    assert (sent.name, sent.input_name, sent.dify_user) == (
        "contract.pdf",
        "contract",
        run.dify_user,
    )
    assert simulator.run(run.workflow_run_id)["inputs"]["contract"] == sent.as_dify()
    # The run page lists the file under its input's label.
    page.get_by_text("Inputs", exact=True).click()
    assert page.get_by_text("contract.pdf").is_visible()
    assert page.get_by_text("Signed contract").is_visible()
    screenshot(page, "start-with-a-file")
    assert page.js_errors == []
