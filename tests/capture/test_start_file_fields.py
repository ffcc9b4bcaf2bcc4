"""What the start pages' file fields say and keep (the "Start a run" page of the simulator's
`document-intake`: a required `contract`, documents; optional `attachments`, images or
documents, three at most; and a chatflow's "Go on with the conversation"): a file that passed
its checks is kept when the page is refused for another field, so nothing is chosen twice;
what truly must be chosen again is said in the summary and described on its input; the size
Dify takes is named beside each field; a ticked kept file fills its field. In English and
Chinese."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from inbox.models import DifyApp, MessageFile, Run
from tests.capture.conftest import FollowerThread

pytestmark = pytest.mark.django_db(transaction=True)

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
ZH = {"HTTP_ACCEPT_LANGUAGE": "zh-hans"}


def pdf(name: str = "c.pdf", content: bytes = b"%PDF-1.4 c.pdf") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="application/pdf")


def exe() -> SimpleUploadedFile:
    return SimpleUploadedFile("a.exe", b"MZ\x90\0", content_type="application/octet-stream")


@pytest.fixture
def intake(sim_app: Any, starters: Any) -> DifyApp:
    app: DifyApp = sim_app("document-intake")
    return app


def block(page: str, field: str) -> str:
    """The field's own block in the page (its label to the next field)."""
    return page.split(f'for="id_{field}"')[1].split('<div class="field')[0]


def tag(page: str, field: str) -> str:
    """The field's input."""
    found = re.search(rf'<input type="file" name="{field}"[^>]*>', page)
    assert found, field
    return found.group(0)


def summary(page: str) -> str:
    found = re.search(r'id="start-errors".*?</ul>', page, re.S)
    return found.group(0) if found else ""


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        (
            {},
            {
                "again": "Attachments: Choose the file again.",
                "legend": "Signed contract: already sent to Dify, sent with the run while ticked",
                "required": "This field is required.",
            },
        ),
        (
            ZH,
            {
                "again": "Attachments\uff1a\u8bf7\u91cd\u65b0\u9009\u62e9\u6587\u4ef6\u3002",
                "legend": "Signed contract\uff1a\u5df2\u53d1\u9001\u5230 Dify",
                "required": "\u8fd9\u4e2a\u5b57\u6bb5\u662f\u5fc5\u586b\u9879\u3002",
            },
        ),
    ],
    ids=["en", "zh"],
)
def test_a_file_that_passed_is_kept_when_another_field_is_refused(
    client: Client,
    simulator: Any,
    intake: DifyApp,
    follower: FollowerThread,
    reviewer: User,
    headers: dict[str, str],
    words: dict[str, str],
) -> None:
    client.force_login(reviewer)
    url = f"/apps/{intake.pk}/start/"
    response = client.post(
        url,
        {"in_supplier": "H", "in_contract": pdf(), "in_attachments": exe(), "submission_key": "a"},
        **headers,
    )
    assert response.status_code == 400
    page = response.content.decode()
    # The contract passed: it went to Dify and is kept, ticked, in its own field's group.
    (kept,) = MessageFile.objects.all()
    assert (kept.name, kept.input_name) == ("c.pdf", "contract")
    contract = block(page, "in_contract")
    assert f'name="kept_files" value="{kept.public_id}" checked' in contract
    assert words["legend"] in contract
    # It fills the field: neither "required" on the input nor its mark, nothing to choose again.
    assert " required" not in tag(page, "in_contract")
    assert 'data-required="true"' in tag(page, "in_contract")
    assert "hidden data-required-mark>*</span>" in contract
    assert "_again" not in contract and "aria-invalid" not in tag(page, "in_contract")
    # The attachment was refused: chosen again, said in the summary and on the input.
    attachments = tag(page, "in_attachments")
    assert 'id="id_in_attachments_again"' in block(page, "in_attachments")
    assert (
        'aria-describedby="id_in_attachments_helptext id_in_attachments_again '
        'id_in_attachments_error"' in attachments
    )
    assert 'aria-invalid="true"' in attachments
    assert words["again"] in summary(page)
    assert "Signed contract" not in summary(page)
    # Sent again with the contract ticked and the attachment put right: no "required", and the
    # run goes with the contract uploaded once.
    response = client.post(
        url,
        {
            "in_supplier": "H",
            "kept_files": [str(kept.public_id)],
            "in_attachments": pdf("terms.pdf"),
            "submission_key": "b",
        },
        **headers,
    )
    assert response.status_code == 302, response.content.decode()
    run = Run.objects.exclude(workflow_run_id="").get()
    assert {f.name for f in run.message_files.all()} == {"c.pdf", "terms.pdf"}
    assert len(simulator.uploads()) == 2
    assert words["required"] not in response.content.decode()


def test_a_file_refused_for_its_size_is_not_also_missing(
    client: Client, simulator: Any, intake: DifyApp, follower: FollowerThread, reviewer: User
) -> None:
    client.force_login(reviewer)
    url = f"/apps/{intake.pk}/start/"
    page = client.get(url).content.decode()
    # The largest file beside each field, per kind (the simulator's: images 10 MB, documents
    # 15 MB), as the form page says it.
    assert "TXT, VTT, XLS, XLSX). Largest file: documents 15 MB.</p>" in block(page, "in_contract")
    assert "At most 3. Largest file: images 10 MB, documents 15 MB." in page
    zh = client.get(url, **ZH).content.decode()
    assert "\u5355\u4e2a\u6587\u4ef6\u4e0a\u9650\uff1a\u6587\u6863 15 MB\u3002" in zh
    # A 21 MB PDF: its size is all there is to say beside it, and the attachment that passed
    # is kept.
    huge = pdf("big.pdf", b"%PDF" + b"\0" * (21 * 1024 * 1024))
    response = client.post(
        url, {"in_supplier": "H", "in_contract": huge, "in_attachments": pdf("terms.pdf")}
    )
    assert response.status_code == 413
    page = response.content.decode()
    contract = block(page, "in_contract")
    assert "big.pdf: the file is larger than" in contract
    assert "This field is required." not in page
    assert [f.name for f in MessageFile.objects.all()] == ["terms.pdf"]
    # Not "choose it again" either: the same file would be refused again.
    assert "big.pdf: the file is larger than" in summary(page)
    assert "Choose the file again" not in page
    assert not Run.objects.exists()


def test_the_conversation_page_keeps_its_files_when_the_message_is_missing(
    client: Client,
    simulator: Any,
    sim_app: Any,
    starters: Any,
    follower: FollowerThread,
    reviewer: User,
) -> None:
    from tests.capture.conftest import pending, run_status, start, submit

    app: DifyApp = sim_app("support-chat")
    first = start(simulator, app, reviewer)
    (form,) = pending(first)
    submit(form, "grant", agent_message="Credit added.")
    run_status(first, "succeeded")
    client.force_login(reviewer)
    url = f"/runs/{first.public_id}/continue"
    page = client.get(url).content.decode()
    assert "At most 3. Largest file: images 10 MB, documents 15 MB." in page
    photo = SimpleUploadedFile("parcel.png", PNG, content_type="image/png")
    response = client.post(url, {"query": " ", "files": photo, "submission_key": "a"})
    assert response.status_code == 400
    page = response.content.decode()
    (kept,) = MessageFile.objects.all()
    assert f'name="kept_files" value="{kept.public_id}" checked' in page
    assert "Files: already sent to Dify, sent with the message while ticked" in page
    assert "Choose the file again" not in page
    response = client.post(
        url,
        {"query": "The parcel.", "kept_files": [str(kept.public_id)], "submission_key": "b"},
    )
    assert response.status_code == 302, response.content.decode()
    second = Run.objects.exclude(pk=first.pk).get()
    assert list(second.message_files.all()) == [kept]
