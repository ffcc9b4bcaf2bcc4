"""A run's event stream as typed events: the response it owns, when it ends, what it has seen.

The stream ends by itself where Dify's own stream would close: after `workflow_finished`, after
`workflow_paused` (unless it was opened with `continue_on_pause=True`, where Dify only closes on an
idle timeout, so we close at `workflow_finished` ourselves; CONTRACT D13), on an `error` event
(raised as DifyStreamError, which carries the event), and at the end of the body. `ping`
keep-alives are skipped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any

import httpx

from inbox.dify.errors import (
    DifyConnectionError,
    DifyError,
    DifyProtocolError,
    DifyStreamError,
    DifyTimeout,
)
from inbox.dify.sse import DEFAULT_MAX_EVENT_BYTES, ServerSentEvent, SSEDecoder
from inbox.dify.types import ErrorEvent, StreamEvent, parse_event, storable

logger = logging.getLogger(__name__)


# What each httpx failure means, for the administrator who reads it in a decision's last error
# or the admin's messages (httpx's own text is not kept: see `transport_error`).
_TRANSPORT_WORDS = {
    "ConnectError": "could not connect: refused, unreachable or an unknown host",
    "ConnectTimeout": "timed out connecting",
    "ReadTimeout": "timed out waiting for the answer",
    "WriteTimeout": "timed out sending the request",
    "PoolTimeout": "timed out waiting for a free connection",
    "ReadError": "the connection broke while reading the answer",
    "WriteError": "the connection broke while sending the request",
    "RemoteProtocolError": "the server closed the connection or answered out of protocol",
    "LocalProtocolError": "the request could not be sent as HTTP",
    "ProxyError": "the proxy refused the request",
    "UnsupportedProtocol": "the URL is not http or https",
}


def transport_words(name: str) -> str:
    """`name` (an httpx failure's class name) in words, with the name kept for searching."""
    words = _TRANSPORT_WORDS.get(name)
    return f"{words} ({name})" if words else name


def transport_error(exc: httpx.HTTPError, what: str) -> DifyError:
    """Our error for an httpx failure. httpx messages and requests carry the URL, which may hold
    a form token, so only the class name (in words) and our own (already redacted) description
    survive."""
    name = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return DifyTimeout(f"{what}: {transport_words(name)}", error_type=name)
    if isinstance(exc, httpx.TransportError):
        return DifyConnectionError(f"{what}: {transport_words(name)}", error_type=name)
    return DifyProtocolError(f"{what}: {transport_words(name)}")


class _StreamState:
    """What the stream has seen, shared by the sync and async streams."""

    def __init__(self, *, continue_on_pause: bool, description: str = "event stream") -> None:
        self.continue_on_pause = continue_on_pause
        self.description = description
        # Events that could not be read and were skipped (see `handle`).
        self.skipped = 0
        self.workflow_run_id: str | None = None
        self.task_id: str | None = None
        self.conversation_id: str | None = None
        self.message_id: str | None = None
        self.last_event: StreamEvent | None = None
        self.terminal_event: StreamEvent | None = None
        self.events_seen = 0

    def handle(self, sse: ServerSentEvent) -> StreamEvent | None:
        if sse.event == "ping" or not sse.data.strip():
            return None
        try:
            payload: Any = json.loads(sse.data)
        except (ValueError, RecursionError):
            # One unreadable event (a proxy's garbage, a truncated line, nesting too deep to
            # parse) must not end a stream whose next events are fine: skip it, say so.
            self._skip(f"an event that is not JSON ({len(sse.data)} characters)")
            return None
        if not isinstance(payload, dict):
            self._skip(f"an event that is not a JSON object ({type(payload).__name__})")
            return None
        payload = storable(payload)
        if sse.event != "message" and "event" not in payload:
            payload["event"] = sse.event
        event = parse_event(payload)
        if event.event == "ping":
            return None
        self.events_seen += 1
        self.last_event = event
        # The run id is the only reconnect handle, so it is exposed from the first event on.
        if event.workflow_run_id and not self.workflow_run_id:
            self.workflow_run_id = event.workflow_run_id
        # task_id may change after a resume; the latest one is the one a stop call needs.
        if event.task_id:
            self.task_id = event.task_id
        if event.conversation_id:
            self.conversation_id = event.conversation_id
        if event.message_id:
            self.message_id = event.message_id
        if isinstance(event, ErrorEvent):
            self.terminal_event = event
            raise DifyStreamError(event.status, event.code, event.message, event=event)
        if self.is_terminal(event):
            self.terminal_event = event
        return event

    def _skip(self, what: str) -> None:
        self.skipped += 1
        # Never the data itself in the message: an event may carry a form token.
        logger.warning(
            "%s (run %s): skipped %s", self.description, self.workflow_run_id or "unknown", what
        )

    def is_terminal(self, event: StreamEvent) -> bool:
        if event.event == "workflow_finished":
            return True
        return event.event == "workflow_paused" and not self.continue_on_pause


class _StreamBase:
    _state: _StreamState

    @property
    def workflow_run_id(self) -> str | None:
        return self._state.workflow_run_id

    @property
    def task_id(self) -> str | None:
        return self._state.task_id

    @property
    def conversation_id(self) -> str | None:
        return self._state.conversation_id

    @property
    def message_id(self) -> str | None:
        return self._state.message_id

    @property
    def last_event(self) -> StreamEvent | None:
        return self._state.last_event

    @property
    def terminal_event(self) -> StreamEvent | None:
        """The event that ended the stream, or None while it runs and when the body just ended
        (a dropped connection or Dify's idle close)."""
        return self._state.terminal_event

    @property
    def events_seen(self) -> int:
        """Events handed out so far (pings not counted)."""
        return self._state.events_seen

    @property
    def ended(self) -> bool:
        return self._state.terminal_event is not None


class EventStream(_StreamBase):
    """Iterate it for StreamEvents; use it as a context manager so the response is closed."""

    def __init__(
        self,
        response: httpx.Response,
        *,
        continue_on_pause: bool = False,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        description: str = "event stream",
    ) -> None:
        self.response = response
        self._state = _StreamState(continue_on_pause=continue_on_pause, description=description)
        self._max_event_bytes = max_event_bytes
        self._what = description
        self._iterator = self._iter()
        self.closed = False
        # time.monotonic() after which the stream ends at its next chunk, pings included (the
        # read timeout only notices a silent stream; one that pings forever would never end).
        self.deadline: float | None = None

    def __enter__(self) -> EventStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[StreamEvent]:
        return self

    def __next__(self) -> StreamEvent:
        return next(self._iterator)

    def __repr__(self) -> str:
        return f"<EventStream {self._what} run={self.workflow_run_id} closed={self.closed}>"

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.response.close()

    def _iter(self) -> Iterator[StreamEvent]:
        decoder = SSEDecoder(self._max_event_bytes)
        try:
            if self.closed:
                return
            for chunk in self.response.iter_bytes():
                for sse in decoder.feed(chunk):
                    event = self._state.handle(sse)
                    if event is not None:
                        yield event
                        if self._state.terminal_event is not None:
                            return
                if self.deadline is not None and time.monotonic() > self.deadline:
                    return
            for sse in decoder.flush():
                event = self._state.handle(sse)
                if event is not None:
                    yield event
                    if self._state.terminal_event is not None:
                        return
        except httpx.HTTPError as exc:
            raise transport_error(exc, self._what) from None
        except httpx.StreamError as exc:
            name = type(exc).__name__
            raise DifyConnectionError(
                f"{self._what}: {transport_words(name)}", error_type=name
            ) from None
        finally:
            self.close()


class AsyncEventStream(_StreamBase):
    """The async stream. Usable as `async with client.run_workflow(...) as stream`, or
    `stream = await client.run_workflow(...)` then `async with stream` / `async for`."""

    def __init__(
        self,
        opener: Callable[[], Awaitable[httpx.Response]],
        *,
        continue_on_pause: bool = False,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        description: str = "event stream",
    ) -> None:
        self._opener = opener
        self.response: httpx.Response | None = None
        self._state = _StreamState(continue_on_pause=continue_on_pause, description=description)
        self._max_event_bytes = max_event_bytes
        self._what = description
        self._iterator: AsyncIterator[StreamEvent] | None = None
        self.closed = False

    async def open(self) -> AsyncEventStream:
        """Send the request; raises the mapped error for a non-2xx answer."""
        if self.response is None and not self.closed:
            self.response = await self._opener()
        return self

    def __await__(self) -> Any:
        return self.open().__await__()

    async def __aenter__(self) -> AsyncEventStream:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._iterator is None:
            self._iterator = self._iter()
        return await self._iterator.__anext__()

    def __repr__(self) -> str:
        return f"<AsyncEventStream {self._what} run={self.workflow_run_id} closed={self.closed}>"

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.response is not None:
                await self.response.aclose()

    aclose = close

    async def _iter(self) -> AsyncIterator[StreamEvent]:
        decoder = SSEDecoder(self._max_event_bytes)
        try:
            await self.open()
            if self.closed or self.response is None:
                return
            async for chunk in self.response.aiter_bytes():
                for sse in decoder.feed(chunk):
                    event = self._state.handle(sse)
                    if event is not None:
                        yield event
                        if self._state.terminal_event is not None:
                            return
            for sse in decoder.flush():
                event = self._state.handle(sse)
                if event is not None:
                    yield event
                    if self._state.terminal_event is not None:
                        return
        except httpx.HTTPError as exc:
            raise transport_error(exc, self._what) from None
        except httpx.StreamError as exc:
            name = type(exc).__name__
            raise DifyConnectionError(
                f"{self._what}: {transport_words(name)}", error_type=name
            ) from None
        finally:
            await self.close()
