from __future__ import annotations

import pytest

from inbox.dify.files import (
    DEFAULT_SIZE_LIMITS,
    MB,
    category_for,
    extension_of,
    is_allowed,
    size_limit_for,
    upload_size_limit,
)


@pytest.mark.parametrize(
    ("filename", "mime", "category"),
    [
        ("photo.JPG", "application/octet-stream", "image"),
        ("diagram.svg", None, "image"),
        ("notes.md", "text/markdown", "document"),
        ("sheet.xlsx", "application/vnd.ms-excel", "document"),
        ("subs.vtt", None, "document"),
        ("voice.m4a", None, "audio"),
        ("clip.webm", "audio/webm", "video"),
        ("clip.mov", None, "video"),
        # No known extension: the MIME type decides, with Dify's substring test.
        ("scan", "image/png", "image"),
        ("readme", "text/plain", "document"),
        ("report.bin", "application/pdf", "document"),
        ("data.parquet", "application/octet-stream", "custom"),
        ("photo.heic", None, "custom"),
        ("legacy.doc", "application/msword", "custom"),
        (".bashrc", None, "custom"),
    ],
)
def test_category_for(filename: str, mime: str | None, category: str) -> None:
    assert category_for(filename, mime) == category


def test_unstructured_deployments_add_document_extensions() -> None:
    assert category_for("legacy.doc", None, unstructured=True) == "document"


def test_extension_of() -> None:
    assert extension_of("a/b/Report.Final.PDF") == "pdf"
    assert extension_of("C:\\x\\y.mp4") == "mp4"
    assert extension_of("noext") == ""


def test_default_size_limits() -> None:
    assert size_limit_for("image") == 10 * MB
    assert size_limit_for("document") == 15 * MB
    assert size_limit_for("audio") == 50 * MB
    assert size_limit_for("video") == 100 * MB
    assert size_limit_for("custom") == DEFAULT_SIZE_LIMITS["custom"] == 15 * MB
    assert size_limit_for("image", {"image": 1, "custom": 2}) == 1


def test_is_allowed_follows_the_detected_category() -> None:
    assert is_allowed("image", "png", allowed_file_types=["image"])
    assert not is_allowed("document", "pdf", allowed_file_types=["image"])
    # A known category does not sneak in through custom's extension list.
    assert not is_allowed(
        "document", "md", allowed_file_types=["custom"], allowed_file_extensions=[".md"]
    )
    assert is_allowed(
        "custom", "HEIC", allowed_file_types=["custom"], allowed_file_extensions=[".heic"]
    )
    assert not is_allowed(
        "custom", "exe", allowed_file_types=["custom"], allowed_file_extensions=[".heic"]
    )
    assert not is_allowed("custom", "heic", allowed_file_types=["image"])
    # Dify compares the entries as written with the file's extension in lower case.
    for entries in ([".DXF"], ["dxf"]):
        assert not is_allowed(
            "custom", "DXF", allowed_file_types=["custom"], allowed_file_extensions=entries
        )


def test_the_upload_limit_follows_the_extension_alone() -> None:
    assert upload_size_limit("clip.MP4") == 100 * MB
    assert upload_size_limit("scan.png") == 10 * MB
    # No image extension: the general limit, whatever the MIME type will say.
    assert upload_size_limit("scan") == 15 * MB
    assert upload_size_limit("data.parquet") == 15 * MB
