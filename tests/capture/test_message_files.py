"""A chatflow's message goes with files when the app takes them (its `/parameters`
`file_upload`): the start page, "Go on with the conversation" and `POST /api/v1/runs` upload
them to Dify under the Dify user the message is asked as, then send them with the message
(`files`, `local_file`). Real HTTP against the simulator."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from inbox.models import ApiToken, DifyApp, MessageFile, Run
from tests.capture.conftest import (
    FollowerThread,
    finished_conversation,
    pending,
    run_status,
    submit,
)

pytestmark = pytest.mark.django_db(transaction=True)

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def png(name: str = "parcel.png", content: bytes = PNG) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="image/png")


def api(client: Client, user: User, path: str, **kwargs: Any) -> Any:
    _token, raw = ApiToken.issue(user)
    return client.post(path, HTTP_AUTHORIZATION=f"Bearer {raw}", **kwargs)


def test_the_continue_page_sends_files_under_the_conversation_s_user(
    client: Client, simulator: Any, chat: DifyApp, follower: FollowerThread, reviewer: User
) -> None:
    first = finished_conversation(simulator, chat, reviewer)
    client.force_login(reviewer)
    page = client.get(f"/runs/{first.public_id}/continue").content.decode()
    assert 'enctype="multipart/form-data"' in page
    assert 'type="file" name="files"' in page and "multiple" in page
    # What the app takes, from its file_upload: images and documents, three at most.
    assert "Accepted: images (GIF, JPEG, JPG, PNG, SVG, WEBP)" in page and "At most 3." in page

    response = client.post(
        f"/runs/{first.public_id}/continue",
        {
            "query": "Here is the parcel.",
            "submission_key": "k1",
            "files": [png(), SimpleUploadedFile("note.txt", b"Left at the door.", "text/plain")],
        },
    )
    assert response.status_code == 302, response.content.decode()
    second = Run.objects.exclude(pk=first.pk).get()
    files = list(second.message_files.order_by("name"))
    assert [(f.name, f.category, f.dify_user) for f in files] == [
        ("note.txt", "document", "inbox-alice"),
        ("parcel.png", "image", "inbox-alice"),
    ]
    # Uploaded to Dify under the conversation's Dify user, then sent with the message.
    uploads = {u["id"]: u for u in simulator.uploads()}
    assert {uploads[f.upload_file_id]["user"] for f in files} == {"inbox-alice"}
    in_dify = simulator.run(second.workflow_run_id)
    assert in_dify["conversation_id"] == first.conversation_id
    assert sorted(in_dify["files"], key=lambda f: f["type"]) == [
        {
            "type": "document",
            "transfer_method": "local_file",
            "upload_file_id": files[0].upload_file_id,
        },
        {
            "type": "image",
            "transfer_method": "local_file",
            "upload_file_id": files[1].upload_file_id,
        },
    ]
    # The run page, and the conversation on the next continue page, show the files.
    page = client.get(f"/runs/{second.public_id}/").content.decode()
    assert "parcel.png" in page and "note.txt" in page
    (form,) = pending(second)
    submit(form, "grant", agent_message="Done.")
    run_status(second, "succeeded")
    page = client.get(f"/runs/{second.public_id}/continue").content.decode()
    assert "Files:" in page and "parcel.png" in page


def test_the_continue_page_says_beside_the_files_what_it_does_not_send(
    client: Client,
    simulator: Any,
    chat: DifyApp,
    follower: FollowerThread,
    reviewer: User,
    settings: Any,
) -> None:
    first = finished_conversation(simulator, chat, reviewer)
    client.force_login(reviewer)
    url = f"/runs/{first.public_id}/continue"

    def send(*files: SimpleUploadedFile) -> str:
        response = client.post(url, {"query": "Look\r\nat this", "files": list(files)})
        assert response.status_code == 400
        page = response.content.decode()
        # Nothing typed is lost.
        assert re.search(r"Look\r?\nat this</textarea>", page)
        return page

    # A kind the app does not take, before anything is sent.
    page = send(SimpleUploadedFile("tool.exe", b"MZ", "application/octet-stream"))
    assert "tool.exe: This kind of file is not accepted here." in page
    # More than the app takes with a message.
    page = send(*(png(f"p{i}.png") for i in range(4)))
    assert "This app takes at most 3 files with a message." in page
    # Larger than Dify takes for an image (the app's system_parameters: 10 MB).
    page = send(png("big.png", PNG + b"\0" * (10 * 1024 * 1024)))
    assert "big.png: The file is larger than 10 MB" in page
    assert simulator.uploads() == []
    # Dify refusing the upload.
    simulator.add_fault("status", "files_upload", status=503)
    page = send(png())
    assert "parcel.png: Dify is temporarily unavailable. Try again in a moment." in page
    assert Run.objects.count() == 1

    # A file Dify took before another failed is kept, ticked, for the next sending: here Dify
    # refuses the document as too large (its limit lowered since the inbox read its parameters).
    simulator.set_options(
        size_limits={"image": 10 << 20, "video": 100 << 20, "audio": 50 << 20, "file": 4}
    )
    note = SimpleUploadedFile("note.txt", b"Left at the door.", "text/plain")
    page = send(png("a.png"), note)
    assert "note.txt: Dify says the file is too large." in page
    (kept,) = MessageFile.objects.all()
    assert kept.name == "a.png" and kept.dify_user == "inbox-alice"
    assert f'name="kept_files" value="{kept.public_id}" checked' in page
    assert Run.objects.count() == 1
    response = client.post(url, {"query": "Again", "kept_files": [str(kept.public_id)]})
    assert response.status_code == 302
    second = Run.objects.exclude(pk=first.pk).get()
    assert [f.name for f in second.message_files.all()] == ["a.png"]
    assert (
        simulator.run(second.workflow_run_id)["files"][0]["upload_file_id"] == kept.upload_file_id
    )
    assert len(simulator.uploads()) == 1  # sent again, not uploaded again


def test_the_start_page_of_a_chatflow_sends_files(
    client: Client, simulator: Any, chat: DifyApp, follower: FollowerThread, reviewer: User
) -> None:
    client.force_login(reviewer)
    url = f"/apps/{chat.pk}/start/"
    assert 'type="file" name="files"' in client.get(url).content.decode()
    response = client.post(
        url,
        {
            "query": "Late again.",
            "in_customer_tier": "gold",
            "files": [png()],
            "submission_key": "s",
        },
    )
    assert response.status_code == 302, response.content.decode()
    run = Run.objects.get()
    (sent,) = run.message_files.all()
    assert sent.dify_user == run.dify_user == "inbox-alice"
    in_dify = simulator.run(run.workflow_run_id)
    assert in_dify["files"] == [
        {"type": "image", "transfer_method": "local_file", "upload_file_id": sent.upload_file_id}
    ]


def test_the_api_takes_files_with_a_conversation_s_next_message(
    client: Client, simulator: Any, chat: DifyApp, follower: FollowerThread, reviewer: User
) -> None:
    first = finished_conversation(simulator, chat, reviewer)
    response = api(
        client,
        reviewer,
        "/api/v1/runs/files",
        data={"app": "support-chat", "conversation_id": first.conversation_id, "file": png()},
    )
    assert response.status_code == 201, response.content
    uploaded = response.json()
    assert uploaded["user"] == "inbox-alice" and uploaded["type"] == "image"
    # Another Dify user's file cannot go with this conversation's message.
    other = api(
        client,
        reviewer,
        "/api/v1/runs/files",
        data={"app": "support-chat", "user": "someone-else", "file": png("other.png")},
    ).json()
    # Nor a kind the app does not take.
    refused = api(
        client,
        reviewer,
        "/api/v1/runs/files",
        data={"app": "support-chat", "file": SimpleUploadedFile("x.exe", b"MZ", "x/y")},
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "upload_rejected"

    def start(files: list[Any], **extra: Any) -> Any:
        body = {
            "app": "support-chat",
            "query": "A photo.",
            "conversation_id": first.conversation_id,
            "files": files,
            **extra,
        }
        return api(
            client, reviewer, "/api/v1/runs", data=json.dumps(body), content_type="application/json"
        )

    response = start([{"upload_id": other["id"]}])
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_inputs"
    assert "someone-else" in response.json()["error"]["message"]
    # The same file twice would reach Dify twice.
    response = start([{"upload": uploaded["id"]}, {"upload_id": uploaded["id"]}])
    assert response.json()["error"]["details"] == {"files": ["The same file is attached twice."]}
    more = [
        api(
            client,
            reviewer,
            "/api/v1/runs/files",
            data={"app": "support-chat", "user": "inbox-alice", "file": png(f"{n}.png")},
        ).json()["id"]
        for n in range(3)
    ]
    response = start([{"upload": uploaded["id"]}] + [{"upload": i} for i in more])
    assert response.json()["error"]["details"] == {
        "files": ["This app takes at most 3 files with a message."]
    }
    assert Run.objects.count() == 1
    # A start input's upload (checked against that input's kinds) is not a message's file.
    as_input = MessageFile.objects.get(public_id=uploaded["id"])
    as_input.input_name = "photo"
    as_input.save(update_fields=["input_name"])
    response = start([{"upload": uploaded["id"]}])
    assert response.status_code == 400 and "No upload" in response.json()["error"]["message"]
    as_input.input_name = ""
    as_input.save(update_fields=["input_name"])

    response = start([{"upload": uploaded["id"]}], submission_key="k1")
    assert response.status_code == 201, response.content
    body = response.json()
    # Sent again under its key with other files: another start, refused, not the first's run.
    again = start([{"upload": more[0]}], submission_key="k1")
    assert again.status_code == 409, again.content
    assert again.json()["error"]["code"] == "submission_key_reused"
    # The same files, spelt the other way: the same start.
    same = start([{"upload_id": uploaded["id"].upper()}], submission_key="k1")
    assert same.status_code == 200 and same.json()["id"] == body["id"]
    assert body["files"] == [{k: v for k, v in uploaded.items() if k != "user"}]
    second = Run.objects.get(public_id=body["id"])
    in_dify = simulator.run(second.workflow_run_id)
    assert in_dify["conversation_id"] == first.conversation_id
    (sent,) = second.message_files.all()
    assert in_dify["files"] == [
        {"type": "image", "transfer_method": "local_file", "upload_file_id": sent.upload_file_id}
    ]
