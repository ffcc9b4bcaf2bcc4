"""Server-sent events: a pure, incremental decoder (WHATWG "event stream interpretation").

No I/O here. Feed it bytes as they arrive, in chunks of any size split anywhere (inside a CRLF,
inside a multi-byte UTF-8 character), and it returns the events completed so far:

    decoder = SSEDecoder()
    for chunk in response.iter_bytes():
        for event in decoder.feed(chunk):
            ...
    for event in decoder.flush():   # a last event the server did not terminate with a blank line
        ...

Lines are split on bytes, which is safe because CR and LF never occur inside a UTF-8 sequence,
and each field value is decoded once it is complete.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from inbox.dify.errors import DifyProtocolError

DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"


@dataclass(slots=True)
class ServerSentEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        return json.loads(self.data)


class SSEDecoder:
    """Incremental decoder. Raises DifyProtocolError when one event outgrows `max_event_bytes`,
    so a server that never sends a blank line cannot make us buffer without bound."""

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        # Bytes of a line whose terminator has not arrived yet, kept as pieces so that a long
        # line trickling in small chunks costs one join, not one copy per chunk.
        self._partial: list[bytes] = []
        self._partial_size = 0
        # A chunk ended in CR: if the next one starts with LF, that LF belongs to the same CRLF.
        self._skip_lf = False
        self._at_start = True
        self._event: str | None = None
        self._data: list[bytes] = []
        self._event_size = 0
        self._id: str | None = None
        self._retry: int | None = None
        self._dirty = False
        # The last event id persists across events, as the spec says.
        self.last_event_id: str | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
                if not chunk:
                    return []
        if b"\n" not in chunk and b"\r" not in chunk:
            self._partial.append(chunk)
            self._partial_size += len(chunk)
            self._check_size()
            return []
        if self._partial:
            self._partial.append(chunk)
            buf = b"".join(self._partial)
            self._partial.clear()
            self._partial_size = 0
        else:
            buf = chunk
        if self._at_start:
            self._at_start = False
            if buf.startswith(_BOM):
                buf = buf[len(_BOM) :]
        lines = buf.splitlines()
        last = buf[-1:]
        tail = None
        if last == b"\r":
            self._skip_lf = True
        elif last != b"\n":
            tail = lines.pop()
        events: list[ServerSentEvent] = []
        data = self._data
        limit = self.max_event_bytes
        # The two lines nearly every Dify event is made of, `data: {...}` and the blank line,
        # are handled inline: this loop is where a busy follower spends its decoding time.
        for line in lines:
            if not line:
                if self._dirty:
                    events.append(self._dispatch())
            elif line.startswith(b"data:"):
                value = line[6:] if line[5:6] == b" " else line[5:]
                data.append(value)
                self._event_size += len(value) + 1
                self._dirty = True
                if self._event_size > limit:
                    self._check_size()
            else:
                event = self._line(line)
                if event is not None:
                    events.append(event)
        if tail is not None:
            self._partial.append(tail)
            self._partial_size = len(tail)
            self._check_size()
        return events

    def flush(self) -> list[ServerSentEvent]:
        """End of stream: finish a last line and a last event that lacked their terminators."""
        events: list[ServerSentEvent] = []
        if self._partial:
            line = b"".join(self._partial)
            self._partial.clear()
            self._partial_size = 0
            if self._at_start and line.startswith(_BOM):
                line = line[len(_BOM) :]
            self._line(line)
        self._at_start = True
        self._skip_lf = False
        if self._dirty:
            events.append(self._dispatch())
        return events

    def _check_size(self) -> None:
        size = self._event_size + self._partial_size
        if size > self.max_event_bytes:
            self._partial.clear()
            self._partial_size = 0
            self._data.clear()
            self._event_size = 0
            raise DifyProtocolError(
                f"server-sent event larger than {self.max_event_bytes} bytes ({size} so far)"
            )

    def _line(self, line: bytes) -> ServerSentEvent | None:
        if not line:
            return self._dispatch() if self._dirty else None
        if line[:5] == b"data:":
            value = line[6:] if line[5:6] == b" " else line[5:]
            self._data.append(value)
            self._event_size += len(value) + 1
            self._dirty = True
            self._check_size()
            return None
        if line[:1] == b":":
            return None
        field, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if field == b"event":
            self._event = value.decode("utf-8", "replace")
            self._dirty = True
        elif field == b"data":
            # "data" with no colon at all: an empty data line.
            self._data.append(value)
            self._event_size += len(value) + 1
            self._dirty = True
        elif field == b"id":
            if b"\0" not in value:
                self._id = value.decode("utf-8", "replace")
                self.last_event_id = self._id
                self._dirty = True
        elif field == b"retry":
            if value.isdigit():
                self._retry = int(value)
                self._dirty = True
        return None

    def _dispatch(self) -> ServerSentEvent:
        data = b"\n".join(self._data).decode("utf-8", "replace") if self._data else ""
        event = ServerSentEvent(
            event=self._event or "message",
            data=data,
            id=self._id if self._id is not None else self.last_event_id,
            retry=self._retry,
        )
        self._event = None
        self._data.clear()
        self._event_size = 0
        self._id = None
        self._retry = None
        self._dirty = False
        return event


def iter_events(
    chunks: Iterable[bytes], *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> Iterator[ServerSentEvent]:
    decoder = SSEDecoder(max_event_bytes)
    for chunk in chunks:
        yield from decoder.feed(chunk)
    yield from decoder.flush()


async def aiter_events(
    chunks: AsyncIterable[bytes], *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> AsyncIterator[ServerSentEvent]:
    decoder = SSEDecoder(max_event_bytes)
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.flush():
        yield event
