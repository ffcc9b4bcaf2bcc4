"""Dify's file categories and default upload limits.

Dify detects a file's category itself (from the extension, then the MIME type) and rejects a
submitted file mapping whose `type` differs from what it detected, so we must compute the same
category it will. The table is the default deployment's; deployments using the Unstructured ETL
add a few document extensions (`UNSTRUCTURED_DOCUMENT_EXTENSIONS`).
"""

from __future__ import annotations

import os
from typing import Any

IMAGE = "image"
DOCUMENT = "document"
AUDIO = "audio"
VIDEO = "video"
CUSTOM = "custom"

CATEGORIES = (IMAGE, DOCUMENT, AUDIO, VIDEO, CUSTOM)

CATEGORY_EXTENSIONS: dict[str, frozenset[str]] = {
    IMAGE: frozenset({"jpg", "jpeg", "png", "webp", "gif", "svg"}),
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
    AUDIO: frozenset({"mp3", "m4a", "wav", "amr", "mpga"}),
    VIDEO: frozenset({"mp4", "mov", "mpeg", "webm"}),
}

UNSTRUCTURED_DOCUMENT_EXTENSIONS = frozenset({"doc", "eml", "msg", "pptx", "xml", "epub", "ppt"})

MB = 1024 * 1024

# Dify's `UPLOAD_*_FILE_SIZE_LIMIT` defaults, in MB of 1024 * 1024 bytes. Anything that is not an
# image, audio or video counts against the general file limit.
DEFAULT_SIZE_LIMITS: dict[str, int] = {
    IMAGE: 10 * MB,
    DOCUMENT: 15 * MB,
    AUDIO: 50 * MB,
    VIDEO: 100 * MB,
    CUSTOM: 15 * MB,
}

# Dify checks extensions in this order; no extension is in two categories today, but a
# deployment could make it so.
_ORDER = (IMAGE, VIDEO, AUDIO, DOCUMENT)


def extension_of(filename: str) -> str:
    """The extension without its dot, lower case; "" when the name has none (".bashrc" has none)."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return os.path.splitext(name)[1][1:].lower()


def category_for_extension(extension: str, *, unstructured: bool = False) -> str | None:
    ext = extension.lstrip(".").lower()
    if not ext:
        return None
    for category in _ORDER:
        if ext in CATEGORY_EXTENSIONS[category]:
            return category
    if unstructured and ext in UNSTRUCTURED_DOCUMENT_EXTENSIONS:
        return DOCUMENT
    return None


def category_for_mime_type(mime_type: str) -> str:
    # Dify's own test is a substring match, so "application/vnd.ms-excel" is custom and
    # "image/svg+xml" is an image; we mirror it rather than parse the type properly.
    mime = mime_type.lower()
    if "image" in mime:
        return IMAGE
    if "video" in mime:
        return VIDEO
    if "audio" in mime:
        return AUDIO
    if "text" in mime or "pdf" in mime:
        return DOCUMENT
    return CUSTOM


def category_for(filename: str, mime_type: str | None = None, *, unstructured: bool = False) -> str:
    """The category Dify will detect for this file: 'image', 'document', 'audio', 'video' or
    'custom'. The extension decides when it is known; otherwise the MIME type does."""
    category = category_for_extension(extension_of(filename), unstructured=unstructured)
    if category is not None:
        return category
    if mime_type:
        return category_for_mime_type(mime_type)
    return CUSTOM


def size_limit_for(category: str, limits: dict[str, int] | None = None) -> int:
    """Bytes allowed for one upload of this category (Dify's defaults unless `limits` given)."""
    table = limits or DEFAULT_SIZE_LIMITS
    return table.get(category, table.get(CUSTOM, DEFAULT_SIZE_LIMITS[CUSTOM]))


def upload_size_limit(filename: str, limits: dict[str, int] | None = None) -> int:
    """Bytes POST /files/upload accepts for this file. Dify picks the limit from the extension
    alone (no MIME fallback): an image, video or audio extension gets its own limit, anything
    else the general file limit."""
    category = category_for_extension(extension_of(filename))
    if category in (IMAGE, VIDEO, AUDIO):
        return size_limit_for(category, limits)
    return size_limit_for(DOCUMENT, limits)


_PARAMETER_KEYS = {
    IMAGE: "image_file_size_limit",
    AUDIO: "audio_file_size_limit",
    VIDEO: "video_file_size_limit",
    DOCUMENT: "file_size_limit",
    CUSTOM: "file_size_limit",
}


def limits_from_parameters(parameters: dict[str, Any] | None) -> dict[str, int]:
    """Bytes per category from an app's `GET /parameters` → `system_parameters` (in MB); a
    limit the app does not report keeps Dify's default."""
    system = (parameters or {}).get("system_parameters") or {}
    limits = dict(DEFAULT_SIZE_LIMITS)
    for category, key in _PARAMETER_KEYS.items():
        value = system.get(key) if isinstance(system, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            limits[category] = int(value * MB)
    return limits


def is_allowed(
    category: str,
    extension: str,
    *,
    allowed_file_types: list[str] | tuple[str, ...],
    allowed_file_extensions: list[str] | tuple[str, ...] = (),
) -> bool:
    """Whether a file input accepts a file, as Dify checks it.

    A file of a known category passes only when that category is allowed, even if `custom` with
    its extension is allowed too: Dify requires the submitted `type` to equal the category it
    detects. A `custom` file passes when `custom` is allowed and its extension is listed. Dify
    compares the listed entries as they are written (dot-prefixed, e.g. ".md") with the
    extension it stored for the file, in lower case: an entry ".DXF" matches no file.
    """
    if category != CUSTOM:
        return category in allowed_file_types
    if CUSTOM not in allowed_file_types:
        return False
    return "." + extension.lstrip(".").lower() in allowed_file_extensions


def matchable_extension(entry: str) -> bool:
    """Whether an `allowed_file_extensions` entry can match a file in Dify: dot-prefixed and in
    lower case, as Dify stores a file's extension (".DXF" or "dxf" never match)."""
    return entry.startswith(".") and len(entry) > 1 and entry == entry.lower()
