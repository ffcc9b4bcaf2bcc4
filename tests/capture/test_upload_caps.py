"""What a POST's file parts may cost before any view has a word (finding F3): the CSRF check
reads the body of a page's POST, so Django parses its files first. Someone not signed in gets
none of theirs kept anywhere but a guest's link; a signed-in reviewer's message files are
capped at the kinds the app takes (its `file_upload`), and the request at as many files as it
takes. Real multipart bodies through the whole middleware stack, against the simulator."""

from __future__ import annotations

from typing import Any

import django.core.files.temp
import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.test import Client

from inbox.models import ApiToken, DifyApp, MessageFile, Run

pytestmark = pytest.mark.django_db(transaction=True)

MB = 1024 * 1024


class Spy(FileUploadHandler):
    """After the cap, before Django's own handlers: the files that got past it (what memory or
    a temporary file would have been opened for) and their bytes."""

    opened: list[str] = []
    most = 0
    total = 0

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        Spy.opened.append(self.file_name or "")
        self.seen = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.seen += len(raw_data)
        Spy.total += len(raw_data)
        Spy.most = max(Spy.most, self.seen)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


@pytest.fixture
def spy(settings: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The spy in the upload handlers, and the temporary files Django opens for uploads."""
    settings.FILE_UPLOAD_HANDLERS = [
        "tests.capture.test_upload_caps.Spy",
        "django.core.files.uploadhandler.MemoryFileUploadHandler",
        "django.core.files.uploadhandler.TemporaryFileUploadHandler",
    ]
    Spy.opened, Spy.most, Spy.total = [], 0, 0
    temporary: list[str] = []
    real = django.core.files.temp.NamedTemporaryFile

    def opened(*args: Any, **kwargs: Any) -> Any:
        made = real(*args, **kwargs)
        temporary.append(made.name)
        return made

    monkeypatch.setattr(django.core.files.temp, "NamedTemporaryFile", opened)
    return temporary


@pytest.fixture
def chat(sim_app: Any, starters: Any, simulator: Any) -> DifyApp:
    """support-chat, taking images and documents (three files) with a message, with small
    limits: images 1 MB, documents 2 MB, audio 3 MB, video 4 MB."""
    simulator.set_options(
        size_limits={"image": MB, "file": 2 * MB, "audio": 3 * MB, "video": 4 * MB}
    )
    app: DifyApp = sim_app("support-chat")
    return app


def big(name: str, size: int = 3 * MB) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, b"\0" * size, content_type="application/octet-stream")


@pytest.mark.parametrize(
    "path",
    [
        "/apps/{app}/start/",
        "/apps/999999/start/",
        "/runs/5f2a6507-233e-4089-8358-7eb0f1454a7e/continue",
        "/accounts/login/",
        "/runs/",
    ],
)
def test_an_anonymous_multipart_post_keeps_no_file_anywhere(
    spy: list[str], chat: DifyApp, path: str
) -> None:
    # The CSRF check reads the body for its token, as a browser's POST would have it read.
    client = Client(enforce_csrf_checks=True)
    client.get("/accounts/login/")
    response = client.post(
        path.format(app=chat.pk),
        {"csrfmiddlewaretoken": "bad", "files": [big("a.mp4"), big("b.mp4"), big("c.mp4")]},
    )
    assert response.status_code == 403
    # No file part got past the first handler: no memory, no temporary file, no byte.
    assert Spy.opened == [] and Spy.total == 0
    assert spy == []


def test_a_link_that_opens_no_form_keeps_no_file(spy: list[str]) -> None:
    # A guest's upload is judged by its signed link (a working one is taken: tests/reach); one
    # that opens no form keeps nothing of the file while the view says so.
    client = Client(enforce_csrf_checks=True)
    client.get("/accounts/login/")
    response = client.post(
        "/r/not-a-link/files/receipt", {"csrfmiddlewaretoken": "bad", "file": big("a.png", MB // 2)}
    )
    assert response.status_code >= 400
    assert Spy.opened == [] and Spy.total == 0


def test_a_message_file_larger_than_the_apps_kinds_take_is_dropped_as_it_arrives(
    client: Client, spy: list[str], chat: DifyApp, reviewer: User, simulator: Any
) -> None:
    client.force_login(reviewer)
    url = f"/apps/{chat.pk}/start/"
    # The app takes images (1 MB) and documents (2 MB), not video (4 MB): 2 MB is the cap.
    response = client.post(
        url,
        {
            "query": "Late\r\nagain.",
            "in_customer_tier": "gold",
            "files": [big("clip.txt")],
            "submission_key": "s",
        },
    )
    assert response.status_code == 413
    page = response.content.decode()
    assert (
        "clip.txt: the file is larger than 2 MB, the most Dify takes for the kinds of file "
        "accepted here." in page
    )
    # Nothing typed is lost.
    assert "Late\nagain.</textarea>" in page.replace("\r\n", "\n")
    # Never more than the cap went on to memory or a temporary file.
    assert 0 < Spy.most <= 2 * MB
    assert simulator.uploads() == [] and not Run.objects.exists()

    # In the reviewer's language.
    client.cookies["django_language"] = "zh-hans"
    response = client.post(url, {"query": "x", "in_customer_tier": "gold", "files": [big("c.txt")]})
    assert response.status_code == 413
    assert "c.txt\uff1a\u6587\u4ef6\u8d85\u8fc7 2 MB" in response.content.decode()


def test_the_files_of_one_message_together_are_capped_at_what_the_app_takes(
    client: Client, spy: list[str], chat: DifyApp, reviewer: User, simulator: Any
) -> None:
    client.force_login(reviewer)
    # Three files of at most 2 MB: 6 MB in all. The fourth is not received.
    files = [big(f"n{i}.txt", 2 * MB - 4096) for i in range(4)]
    response = client.post(
        f"/apps/{chat.pk}/start/",
        {"query": "Notes", "in_customer_tier": "gold", "files": files},
    )
    assert response.status_code == 413
    page = response.content.decode()
    assert (
        "n3.txt: not received: the files sent together came to more than 6 MB, the most one "
        "sending may carry. Send fewer at a time." in page
    )
    assert Spy.total <= 6 * MB
    assert simulator.uploads() == []


def test_the_api_upload_keeps_one_file_no_larger_than_the_apps_kinds_take(
    client: Client, spy: list[str], chat: DifyApp, reviewer: User, simulator: Any
) -> None:
    _token, raw = ApiToken.issue(reviewer)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    # The file before its app: capped at the most any chatflow app takes (2 MB here).
    response = client.post(
        "/api/v1/runs/files", {"file": big("clip.txt"), "app": "support-chat"}, **auth
    )
    assert response.status_code == 413
    said = (
        "clip.txt: the file is larger than 2 MB, the most Dify takes for the kinds of "
        "file accepted here."
    )
    assert response.json()["error"] == {
        "code": "upload_rejected",
        "message": said,
        # The file's own fault: named in `details` too.
        "details": {"file": [said]},
    }
    assert 0 < Spy.most <= 2 * MB

    # A second file is refused, and what it could cost is one file's cap in all.
    Spy.opened, Spy.most, Spy.total = [], 0, 0
    response = client.post(
        "/api/v1/runs/files",
        {"app": "support-chat", "file": [big("a.txt", 3 * MB // 2), big("b.txt", 3 * MB // 2)]},
        **auth,
    )
    assert response.status_code == 400
    assert (
        response.json()["error"]["message"] == "Send one 'file' per call; upload each on its own."
    )
    assert Spy.total <= 2 * MB
    assert simulator.uploads() == [] and not MessageFile.objects.exists()

    # A file within the cap is taken.
    response = client.post(
        "/api/v1/runs/files", {"app": "support-chat", "file": big("ok.txt", MB)}, **auth
    )
    assert response.status_code == 201, response.content


def test_the_api_upload_caps_a_file_after_its_app_at_that_app_s_own_limit(
    client: Client, spy: list[str], chat: DifyApp, reviewer: User, simulator: Any
) -> None:
    _token, raw = ApiToken.issue(reviewer)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    # `app` first: an image is capped at the app's image limit (1 MB) as it streams in, not at
    # the largest any app takes (2 MB, its documents').
    response = client.post(
        "/api/v1/runs/files", {"app": "support-chat", "file": big("photo.png", 3 * MB // 2)}, **auth
    )
    assert response.status_code == 413
    said = "photo.png: The file is larger than 1 MB, the most Dify takes for this kind of file."
    assert response.json()["error"] == {
        "code": "upload_rejected",
        "message": said,
        # The file's own fault: named in `details` too.
        "details": {"file": [said]},
    }
    assert 0 < Spy.most <= MB
    # A kind the app does not take (video) is dropped as it begins: nothing of it is kept.
    Spy.opened, Spy.most, Spy.total = [], 0, 0
    response = client.post(
        "/api/v1/runs/files",
        {"app": "support-chat", "file": big("clip.mp4", MB)},
        HTTP_ACCEPT_LANGUAGE="zh-hans",
        **auth,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "upload_rejected"
    assert error["message"].startswith("clip.mp4\uff1a")
    assert Spy.opened == [] and Spy.total == 0 and spy == []
    # The same image after its app's part is read whole, then refused by its app's limit.
    Spy.opened, Spy.most, Spy.total = [], 0, 0
    response = client.post(
        "/api/v1/runs/files", {"file": big("photo.png", 3 * MB // 2), "app": "support-chat"}, **auth
    )
    assert response.status_code == 413
    assert response.json()["error"]["message"] == (
        "photo.png: The file is larger than 1 MB, the most Dify takes for this kind of file."
    )
    assert Spy.most == 3 * MB // 2
    assert simulator.uploads() == [] and not MessageFile.objects.exists()
    # Within its kind's limit, after its app: taken.
    response = client.post(
        "/api/v1/runs/files", {"app": "support-chat", "file": big("small.png", MB // 2)}, **auth
    )
    assert response.status_code == 201, response.content


def test_a_file_past_the_request_s_total_is_not_left_on_disk(
    client: Client,
    spy: list[str],
    chat: DifyApp,
    reviewer: User,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    import inbox.api

    seen: dict[str, bool] = {}
    real = inbox.api._file_part_only

    def looking(request: Any) -> None:
        # Once the body is read, before the view answers: which temporary files are on disk.
        real(request)
        seen.update({name: os.path.exists(name) for name in spy})

    monkeypatch.setattr(inbox.api, "_file_part_only", looking)
    _token, raw = ApiToken.issue(reviewer)
    # 2 MB in all for the call's one file: the second file passes it part of the way in.
    response = client.post(
        "/api/v1/runs/files",
        {"app": "support-chat", "file": [big("a.txt", 3 * MB // 2), big("b.txt", 3 * MB // 2)]},
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )
    assert response.status_code == 400
    assert len(spy) == 2, spy
    # The first file was whole; the second, cut off past the total, is gone at once.
    assert seen == {spy[0]: True, spy[1]: False}
    assert not any(os.path.exists(name) for name in spy)


def test_a_start_input_s_file_is_judged_by_its_input_once_app_and_input_are_read(
    client: Client, spy: list[str], sim_app: Any, starters: Any, reviewer: User, simulator: Any
) -> None:
    sim_app("document-intake")  # `contract` takes documents only
    _token, raw = ApiToken.issue(reviewer)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    picture = SimpleUploadedFile("stamp.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png")
    # `app` and `input` first: a kind the input does not take is dropped as it begins.
    response = client.post(
        "/api/v1/runs/files",
        {"app": "document-intake", "input": "contract", "file": picture},
        **auth,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "upload_rejected"
    assert Spy.opened == [] and spy == []
    # `input` after the file: not known as the file arrives, so it is read, then refused.
    picture.seek(0)
    response = client.post(
        "/api/v1/runs/files",
        {"app": "document-intake", "file": picture, "input": "contract"},
        **auth,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "upload_rejected"
    assert Spy.opened == ["stamp.png"]
    assert simulator.uploads() == [] and not MessageFile.objects.exists()
