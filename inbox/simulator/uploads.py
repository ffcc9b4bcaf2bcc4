"""Streaming multipart parsing for `/files/upload`: bytes are counted and hashed, never kept."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser

_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


@dataclass
class Part:
    name: str | None = None
    filename: str | None = None  # None: a plain form field; "": a file part with an empty name
    content_type: str | None = None
    size: int = 0
    sha256: str = ""
    text: bytearray = field(default_factory=bytearray)  # the first bytes of a plain field


def parse_content_disposition(value: str) -> dict[str, str]:
    """Parameters of a Content-Disposition header, names lower-cased, quotes removed.

    Written out rather than borrowed: the usual helpers strip Windows paths from file names,
    and Dify must see a name with a backslash to refuse it.
    """
    params: dict[str, str] = {}
    for match in _PARAM.finditer(value):
        key = match.group(1).lower()
        raw = match.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[key] = raw
    if "filename*" in params and "'" in params["filename*"]:
        from urllib.parse import unquote

        charset, _, encoded = params["filename*"].split("'", 2)
        params["filename"] = unquote(encoded, encoding=charset or "utf-8")
    return params


class StreamingMultipart:
    """Feed body chunks in; get the parts' headers, sizes and hashes out."""

    FIELD_LIMIT = 4096  # plain fields (like `user`) longer than this are cut

    def __init__(self, boundary: bytes) -> None:
        self.parts: list[Part] = []
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, str] = {}
        self._hash: hashlib._Hash | None = None
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
            },
        )

    def feed(self, chunk: bytes) -> None:
        self._parser.write(chunk)

    def close(self) -> None:
        self._parser.finalize()

    @property
    def _current(self) -> Part:
        return self.parts[-1]

    def _on_part_begin(self) -> None:
        self.parts.append(Part())
        self._headers = {}
        self._hash = None

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        name = self._header_field.decode("latin-1").strip().lower()
        self._headers[name] = self._header_value.decode("utf-8", "replace").strip()
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        part = self._current
        params = parse_content_disposition(self._headers.get("content-disposition", ""))
        part.name = params.get("name")
        part.filename = params.get("filename")
        part.content_type = self._headers.get("content-type") or None
        if part.filename is not None:
            self._hash = hashlib.sha256()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current
        part.size += end - start
        if self._hash is not None:
            self._hash.update(data[start:end])
        elif len(part.text) < self.FIELD_LIMIT:
            part.text += data[start : min(end, start + self.FIELD_LIMIT - len(part.text))]

    def _on_part_end(self) -> None:
        if self._hash is not None:
            self._current.sha256 = self._hash.hexdigest()
        self._hash = None

    def files(self) -> list[Part]:
        return [p for p in self.parts if p.filename is not None]

    def field(self, name: str) -> str | None:
        for part in self.parts:
            if part.filename is None and part.name == name:
                return part.text.decode("utf-8", "replace")
        return None
