"""How Dify classifies files: categories by extension (then MIME type) and per-category size limits.

The simulator keeps its own copy of these tables rather than importing the client's: it plays the
server, and a shared table would hide a disagreement between the two.
"""

from __future__ import annotations

import mimetypes
import os

IMAGE = "image"
DOCUMENT = "document"
AUDIO = "audio"
VIDEO = "video"
CUSTOM = "custom"

FILE_TYPES = (IMAGE, DOCUMENT, AUDIO, VIDEO, CUSTOM)
TRANSFER_METHODS = ("local_file", "remote_url")

EXTENSIONS: dict[str, frozenset[str]] = {
    IMAGE: frozenset({"jpg", "jpeg", "png", "webp", "gif", "svg"}),
    VIDEO: frozenset({"mp4", "mov", "mpeg", "webm"}),
    AUDIO: frozenset({"mp3", "m4a", "wav", "amr", "mpga"}),
    DOCUMENT: frozenset(
        {
            "txt",
            "markdown",
            "md",
            "mdx",
            "pdf",
            "html",
            "htm",
            "xlsx",
            "xls",
            "docx",
            "csv",
            "vtt",
            "properties",
        }
    ),
}

MB = 1024 * 1024

# Dify's `UPLOAD_*_FILE_SIZE_LIMIT` defaults. The limit is chosen from the extension alone; anything
# that is not an image, video or audio file counts against the general file limit.
DEFAULT_SIZE_LIMITS: dict[str, int] = {
    IMAGE: 10 * MB,
    VIDEO: 100 * MB,
    AUDIO: 50 * MB,
    "file": 15 * MB,
}


def extension_of(filename: str) -> str:
    """The extension without its dot, lower case; "" when there is none."""
    return os.path.splitext(filename)[1][1:].lower()


def category_of(extension: str, mime_type: str | None) -> str:
    """Dify's `standardize_file_type`: the extension decides, then the MIME type, else custom."""
    ext = extension.lstrip(".").lower()
    for category in (IMAGE, VIDEO, AUDIO, DOCUMENT):
        if ext in EXTENSIONS[category]:
            return category
    # Dify's test is a substring match: "text/x-log" is a document, as "application/pdf" is.
    mime = (mime_type or "").lower()
    for category in (IMAGE, VIDEO, AUDIO):
        if category in mime:
            return category
    if "text" in mime or "pdf" in mime:
        return DOCUMENT
    return CUSTOM


def size_limit_for(extension: str, limits: dict[str, int] | None = None) -> int:
    table = limits or DEFAULT_SIZE_LIMITS
    ext = extension.lstrip(".").lower()
    for category in (IMAGE, VIDEO, AUDIO):
        if ext in EXTENSIONS[category]:
            return table[category]
    return table["file"]


def guess_mime(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"
