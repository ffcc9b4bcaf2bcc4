"""A workflow's start inputs of type file and file-list (`/parameters` `user_input_form`): the
start page and `POST /api/v1/runs` upload their files to Dify first, under the run's Dify user,
then start the run with them in `inputs` (`local_file` mappings, a list for a file-list). Real
HTTP against the simulator's `document-intake` (a required `contract`, documents; optional
`attachments`, images or documents, three at most)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from inbox.models import ApiToken, DifyApp, MessageFile, Run
from inbox.runs import StartRunForm
from tests.capture.conftest import FollowerThread

pytestmark = pytest.mark.django_db(transaction=True)

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def pdf(name: str = "contract.pdf", content: bytes = b"%PDF-1.4 signed") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="application/pdf")


def png(name: str = "stamp.png") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, PNG, content_type="image/png")


@pytest.fixture
def intake(sim_app: Any, starters: Any) -> DifyApp:
    app: DifyApp = sim_app("document-intake")
    return app


def test_the_start_page_sends_a_start_s_files_in_its_inputs(
    client: Client, simulator: Any, intake: DifyApp, follower: FollowerThread, reviewer: User
) -> None:
    client.force_login(reviewer)
    url = f"/apps/{intake.pk}/start/"
    page = client.get(url).content.decode()
    # A field per file input, with its own kinds and count; no "start it elsewhere".
    assert (
        'type="file" name="in_contract"' in page
        and "multiple" not in page.split('name="in_contract"')[1].split(">")[0]
    )
    assert 'type="file" name="in_attachments"' in page
    assert "At most 3." in page and "cannot be filled here" not in page
    response = client.post(
        url,
        {
            "in_supplier": "Hartmann",
            "in_contract": pdf(),
            "in_attachments": [png(), SimpleUploadedFile("terms.txt", b"Terms", "text/plain")],
            "submission_key": "s1",
        },
    )
    assert response.status_code == 302, response.content.decode()
    run = Run.objects.get()
    files = {f.name: f for f in run.message_files.all()}
    assert {(n, f.input_name, f.dify_user) for n, f in files.items()} == {
        ("contract.pdf", "contract", "inbox-alice"),
        ("stamp.png", "attachments", "inbox-alice"),
        ("terms.txt", "attachments", "inbox-alice"),
    }
    uploads = {u["id"]: u for u in simulator.uploads()}
    assert {uploads[f.upload_file_id]["user"] for f in files.values()} == {"inbox-alice"}
    # Dify got them as it takes files in inputs, and no message files.
    in_dify = simulator.run(run.workflow_run_id)
    assert in_dify["inputs"]["contract"] == {
        "type": "document",
        "transfer_method": "local_file",
        "upload_file_id": files["contract.pdf"].upload_file_id,
    }
    assert [f["upload_file_id"] for f in in_dify["inputs"]["attachments"]] == [
        files["stamp.png"].upload_file_id,
        files["terms.txt"].upload_file_id,
    ]
    # The run page lists them under their input's label, not as Dify's mappings.
    page = client.get(f"/runs/{run.public_id}/").content.decode()
    assert "Signed contract" in page and "contract.pdf" in page and "stamp.png" in page
    assert files["contract.pdf"].upload_file_id not in page
    # The API shows which input each file fills.
    _token, raw = ApiToken.issue(reviewer)
    shown = client.get(f"/api/v1/runs/{run.public_id}", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert {f["name"]: f["input"] for f in shown.json()["files"]} == {
        "contract.pdf": "contract",
        "stamp.png": "attachments",
        "terms.txt": "attachments",
    }


def test_the_start_page_says_beside_each_file_input_what_it_does_not_send(
    client: Client, simulator: Any, intake: DifyApp, follower: FollowerThread, reviewer: User
) -> None:
    client.force_login(reviewer)
    url = f"/apps/{intake.pk}/start/"

    def send(status: int = 400, **files: Any) -> str:
        response = client.post(url, {"in_supplier": "Typed by hand", **files})
        assert response.status_code == status, response.content.decode()
        page = response.content.decode()
        # Nothing typed is lost.
        assert 'value="Typed by hand"' in page
        return page

    def beside(page: str, field: str) -> str:
        """The errors said in the field's own block."""
        found = re.search(rf'id="id_{field}_error">(.*?)</div>', page, re.S)
        return found.group(1) if found else ""

    # The required file missing.
    assert "This field is required." in beside(send(), "in_contract")
    # A kind the input does not take, before anything is sent.
    page = send(in_contract=png("photo.png"))
    assert "photo.png: This kind of file is not accepted here." in beside(page, "in_contract")
    # More than the list takes.
    page = send(in_contract=pdf(), in_attachments=[png(f"p{i}.png") for i in range(4)])
    assert "This input takes at most 3 files." in beside(page, "in_attachments")
    # The contract was fine: sent to Dify and kept (ticked) rather than asked for again; the
    # attachments refused are.
    again = "Choose the file again: a page sent back cannot keep a file you chose."
    contract_block = page.split('for="id_in_contract"')[1].split('<div class="field')[0]
    assert again not in contract_block and 'name="kept_files"' in contract_block
    assert again in page.split('for="id_in_attachments"')[1]
    assert [u["name"] for u in simulator.uploads()] == ["contract.pdf"]
    # None chosen, none asked again.
    assert again not in send()
    # Larger than Dify takes for a document (the simulator's 15 MB): dropped as it arrived.
    page = send(413, in_contract=pdf("huge.pdf", b"%PDF" + b"\0" * (16 * 1024 * 1024)))
    assert "huge.pdf: the file is larger than" in beside(page, "in_contract")
    assert len(simulator.uploads()) == 1 and not Run.objects.exists()
    # Dify refusing the upload: said beside the input; nothing started.
    simulator.add_fault("status", "files_upload", status=503, times=None)
    page = send(in_contract=pdf())
    assert "contract.pdf: Dify is temporarily unavailable." in beside(page, "in_contract")
    assert not Run.objects.exists()


def test_a_file_dify_took_is_kept_for_the_next_sending(
    client: Client, simulator: Any, intake: DifyApp, follower: FollowerThread, reviewer: User
) -> None:
    client.force_login(reviewer)
    url = f"/apps/{intake.pk}/start/"
    # The contract goes to Dify; the start itself fails.
    simulator.add_fault("status", "workflows_run", status=503)
    response = client.post(url, {"in_supplier": "H", "in_contract": pdf(), "submission_key": "a"})
    assert response.status_code == 400
    (kept,) = MessageFile.objects.all()
    assert f'name="kept_files" value="{kept.public_id}" checked' in response.content.decode()
    # Sent again with it ticked: not uploaded again, and the run Dify did not start left it
    # free for this one.
    response = client.post(
        url, {"in_supplier": "H", "kept_files": [str(kept.public_id)], "submission_key": "b"}
    )
    assert response.status_code == 302, response.content.decode()
    run = Run.objects.exclude(workflow_run_id="").get()
    assert list(run.message_files.all()) == [kept] and len(simulator.uploads()) == 1


def api(client: Client, raw: str, path: str, **kwargs: Any) -> Any:
    return client.post(path, HTTP_AUTHORIZATION=f"Bearer {raw}", **kwargs)


def test_the_api_starts_a_run_with_uploads_in_its_file_inputs(
    client: Client, simulator: Any, intake: DifyApp, follower: FollowerThread, reviewer: User
) -> None:
    _token, raw = ApiToken.issue(reviewer)

    def upload(fileobj: SimpleUploadedFile, input_name: str, **extra: str) -> Any:
        data = {"app": "document-intake", "input": input_name, "file": fileobj, **extra}
        return api(client, raw, "/api/v1/runs/files", data=data)

    def start(inputs: dict[str, Any], **extra: Any) -> Any:
        body = {"app": "document-intake", "inputs": {"supplier": "H", **inputs}, **extra}
        return api(
            client, raw, "/api/v1/runs", data=json.dumps(body), content_type="application/json"
        )

    def refused(response: Any, name: str) -> str:
        assert response.status_code == 400, response.content
        error = response.json()["error"]
        assert error["code"] == "invalid_inputs"
        (said,) = error["details"][name]
        return str(said)

    contract = upload(pdf(), "contract")
    assert contract.status_code == 201, contract.content
    assert contract.json()["input"] == "contract" and contract.json()["user"] == "inbox-alice"
    # The upload call checks the input's kinds, and that it is a file input that takes uploads.
    wrong_kind = upload(png(), "contract")
    assert wrong_kind.status_code == 400
    assert wrong_kind.json()["error"]["code"] == "upload_rejected"
    unknown = upload(pdf(), "supplier")
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "invalid_param"
    assert "no file input 'supplier'" in unknown.json()["error"]["message"]
    assert unknown.json()["error"]["details"] == {"input": ["Not a file input of this app."]}

    # Required, and missing.
    assert "required" in refused(start({}), "contract")
    # Not an upload id, as a string or as {"upload": id}.
    assert "{'upload': id}" in refused(start({"contract": "x"}), "contract")
    # One file for a file, a list for a file-list (even of one), as a decision takes them.
    one = contract.json()["id"]
    assert refused(start({"contract": [one]}), "contract") == (
        "One file: the id POST /api/v1/runs/files returned, as a string or as {'upload': id}."
    )
    assert refused(start({"contract": one, "attachments": one}), "attachments") == (
        "A list of files, even of one: each the id POST /api/v1/runs/files returned, as a "
        "string or as {'upload': id}."
    )
    # Another input's upload, or someone else's Dify user's.
    picture = upload(png(), "attachments").json()
    said = refused(start({"contract": {"upload": picture["id"]}}), "contract")
    assert "No upload" in said
    other_user = upload(pdf("b.pdf"), "contract", user="someone-else").json()
    assert "someone-else" in refused(start({"contract": {"upload": other_user["id"]}}), "contract")
    # More than the list takes.
    pictures = [upload(png(f"{n}.png"), "attachments").json()["id"] for n in range(3)]
    many = [{"upload": i} for i in [picture["id"], *pictures]]
    said = refused(
        start({"contract": {"upload": contract.json()["id"]}, "attachments": many}), "attachments"
    )
    assert said == "This input takes at most 3 files."
    assert not Run.objects.exists()

    # A file as its id alone, or as {"upload": id}: both taken, as a decision takes them.
    good = {
        "contract": contract.json()["id"],
        "attachments": [{"upload": picture["id"]}],
    }
    response = start(good, submission_key="k1")
    assert response.status_code == 201, response.content
    run = Run.objects.get()
    in_dify = simulator.run(run.workflow_run_id)
    assert in_dify["inputs"]["contract"]["transfer_method"] == "local_file"
    assert [f["type"] for f in in_dify["inputs"]["attachments"]] == ["image"]
    # The same key with other files: another start, refused.
    other = dict(good, attachments=[{"upload": pictures[0]}])
    reused = start(other, submission_key="k1")
    assert reused.status_code == 409
    assert reused.json()["error"]["code"] == "submission_key_reused"
    # Sent again, the same start; a new start cannot use the files again.
    assert start(good, submission_key="k1").status_code == 200
    assert "used by another run" in refused(start(good), "contract")


def test_a_file_input_that_takes_web_addresses_only_is_left_to_dify(intake: DifyApp) -> None:
    item = {
        "label": "Scan",
        "variable": "scan",
        "required": True,
        "allowed_file_types": ["document"],
        "allowed_file_upload_methods": ["remote_url"],
    }
    form = StartRunForm(intake, {"user_input_form": [{"file": item}]}, {}, from_page=True)
    assert [s.variable for s in form.unsupported] == ["scan"] and not form.file_specs
    assert form.blocked and not form.is_valid()
    assert "This app needs inputs the inbox cannot send: Scan." in form.errors["__all__"]
    optional = StartRunForm(
        intake, {"user_input_form": [{"file": {**item, "required": False}}]}, {}, from_page=True
    )
    assert optional.is_valid() and optional.dify_inputs() == {}


def test_one_upload_starts_one_run_when_starts_come_together(
    simulator: Any, intake: DifyApp, follower: FollowerThread, reviewer: User
) -> None:
    """Five starts sent at once with one contract: one run takes it, the others are refused by
    its input (the upload's check and its use were two steps, and each start passed the first)."""
    import threading

    from django.db import connection

    _token, raw = ApiToken.issue(reviewer)
    upload = api(
        Client(),
        raw,
        "/api/v1/runs/files",
        data={"app": "document-intake", "input": "contract", "file": pdf()},
    ).json()
    body = json.dumps(
        {
            "app": "document-intake",
            "inputs": {"supplier": "H", "contract": {"upload": upload["id"]}},
        }
    )
    answers: list[Any] = []
    gate = threading.Barrier(5)

    def start() -> None:
        try:
            gate.wait()
            answers.append(
                api(Client(), raw, "/api/v1/runs", data=body, content_type="application/json")
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=start) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [201, 400, 400, 400, 400]
    for refused in (a for a in answers if a.status_code == 400):
        error = refused.json()["error"]
        assert error["code"] == "invalid_inputs"
        assert "used by another run already" in error["details"]["contract"][0]
    assert Run.objects.count() == 1
    assert MessageFile.objects.get().runs.count() == 1


def test_a_start_whose_upload_another_run_took_meanwhile_starts_nothing(
    simulator: Any, intake: DifyApp, reviewer: User
) -> None:
    from inbox.runs import FilesTaken, start_run

    contract = MessageFile.objects.create(
        app=intake,
        name="contract.pdf",
        size=10,
        category="document",
        mime_type="application/pdf",
        extension="pdf",
        upload_file_id="f-1",
        dify_user="inbox-alice",
        uploaded_by=reviewer,
        input_name="contract",
    )
    first = Run.objects.create(app=intake, dify_user="inbox-alice", workflow_run_id="wr-first")
    first.message_files.add(contract)
    with pytest.raises(FilesTaken) as refused:
        start_run(
            intake,
            inputs={"supplier": "H", "contract": contract.as_dify()},
            dify_user="inbox-alice",
            started_by=reviewer,
            input_files=[contract],
        )
    assert list(refused.value.details()) == ["contract"]
    assert Run.objects.count() == 1
    assert simulator.request_count("workflows_run") == 0
