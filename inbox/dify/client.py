"""The Dify Service API client: the only code in the project that speaks HTTP to Dify.

    client = DifyClient.for_app(app)            # one pooled client per app, shared by threads
    with client.run_workflow(inputs={...}, user=run.dify_user) as stream:
        for event in stream:                    # typed StreamEvents; ends at pause/finish
            save(stream.workflow_run_id, event)
    form = client.get_form(token)               # FormDefinition
    client.submit_form(token, inputs={...}, action="approve", user=run.dify_user)

Retries: only calls that are safe to repeat (GET form, run detail, parameters, info, opening the
events stream) are retried, on connection errors, timeouts, 429 and 5xx, with exponential backoff
and jitter, honouring Retry-After. Starting a run, sending a chat message, uploading and
submitting are never repeated here: a lost answer may hide a success, and the caller (decision
delivery has its own policy) decides.

Form tokens are bearer secrets carried in URL paths: error messages, reprs and httpx's own log
lines leave them out.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import importlib.metadata
import logging
import os
import random
import re
import ssl
import threading
import time
import tomllib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar
from urllib.parse import quote

import httpx

from inbox.dify.errors import (
    REDACTED,
    ApiKeyUnreadable,
    DifyError,
    DifyProtocolError,
    DifyStatusError,
    FormTokenUnreadable,
    from_response,
    is_json,
    not_dify,
)
from inbox.dify.sse import DEFAULT_MAX_EVENT_BYTES
from inbox.dify.streaming import AsyncEventStream, EventStream, transport_error
from inbox.dify.types import FormDefinition, RunDetail, SealedText, UploadedFile, storable

if TYPE_CHECKING:
    from inbox.models import DifyApp

__all__ = ["USER_AGENT", "AsyncDifyClient", "AsyncEventStream", "DifyClient", "EventStream"]


def _version() -> str:
    try:
        return importlib.metadata.version("dify-approval-inbox")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])
    except (OSError, KeyError, ValueError):
        return "0"


USER_AGENT = f"dify-approval-inbox/{_version()}"

# Connect fails fast: Dify is either there or not. A call's answer gets 30 s. A stream's read
# timeout is the longest silence we accept: Dify pings every 10 s, so 60 s means it is gone.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
DEFAULT_STREAM_TIMEOUT = httpx.Timeout(30.0, connect=5.0, read=60.0)
# Dify reads the whole upload before answering and may then spend a while storing it.
DEFAULT_UPLOAD_TIMEOUT = httpx.Timeout(30.0, connect=5.0, read=120.0)
DEFAULT_MAX_RETRIES = 2
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
# A Retry-After beyond this is not slept through: the caller (a web request, a worker) is
# better off failing now with the error's `retry_after` and scheduling its own retry.
MAX_RETRY_AFTER = 30.0
# 256 KiB reads keep an upload's memory flat while making few enough syscalls to run at the
# speed of a plain streamed upload.
UPLOAD_CHUNK_SIZE = 256 * 1024
# An error body larger than this is cut: it is a proxy's page, not Dify's envelope.
MAX_ERROR_BODY = 64 * 1024

# When the Dify calls of the work under way must have answered (time.monotonic()), or None:
# set by `deadline` for a web request, whose reader waits for the page.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "dify_deadline", default=None
)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Dify calls made inside give up together after `seconds`: an attempt's timeout is cut to
    what is left, and no retry starts past it. Three tries of a call that hangs would hold a
    web request for a minute and a half; a worker or the follower sets none and keeps its own
    pace. Nested, the earlier end holds."""
    end = time.monotonic() + seconds
    outer = _deadline.get()
    token = _deadline.set(end if outer is None else min(outer, end))
    try:
        yield
    finally:
        _deadline.reset(token)


def _within_deadline(timeout: httpx.Timeout, held: bool = True) -> httpx.Timeout:
    """`timeout` cut to what is left of the deadline, if one is set and the call is `held`."""
    end = _deadline.get()
    if end is None or not held:
        return timeout
    left = max(0.1, end - time.monotonic())

    def cut(value: float | None) -> float:
        return left if value is None else min(value, left)

    return httpx.Timeout(
        connect=cut(timeout.connect),
        read=cut(timeout.read),
        write=cut(timeout.write),
        pool=cut(timeout.pool),
    )


def _past_deadline(delay: float) -> bool:
    end = _deadline.get()
    return end is not None and time.monotonic() + delay >= end


_TOKEN_IN_PATH = re.compile(r"(/form/human_input/)[^/?#\s\"']+")


def redact_url(text: str) -> str:
    """Replace any form token in a URL or log line by ***."""
    return _TOKEN_IN_PATH.sub(r"\1" + REDACTED, text)


class _RedactFormTokens(logging.Filter):
    """httpx logs every request URL at INFO; a form token must not reach the logs with it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        if "/form/human_input/" in message:
            record.msg = redact_url(message)
            record.args = ()
        return True


def _install_log_filter() -> None:
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactFormTokens) for f in logger.filters):
            logger.addFilter(_RedactFormTokens())


_install_log_filter()


def _seg(value: str) -> str:
    """A path segment: ids come from servers and users, so they may not add path parts."""
    return quote(str(value), safe="")


# The fields of Dify's AppInfoResponse (openapi_service.json) and their types: Dify sends them
# all (a description or an author it has none of as "" or null).
_INFO_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "description": (str, type(None)),
    "tags": list,
    "mode": str,
    "author_name": (str, type(None)),
}


@dataclass
class _Call:
    method: str
    path: str
    # How the call appears in messages: the path with any secret replaced.
    what: str
    idempotent: bool = False
    params: dict[str, str] | None = None
    json: Any = None
    secrets: tuple[str, ...] = ()
    timeout: httpx.Timeout | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Held to a web request's `deadline`: not an upload, whose time is the file's size.
    within_deadline: bool = True


def _multipart_parts(
    boundary: str, *, filename: str, mime_type: str, user: str | None
) -> tuple[bytes, bytes]:
    def quoted(value: str) -> str:
        # The HTML5 form-data escaping browsers use, which Dify's parser expects.
        return (
            value.replace("\\", "\\\\")
            .replace('"', "%22")
            .replace("\r", "%0D")
            .replace("\n", "%0A")
        )

    head = b""
    if user is not None:
        head += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="user"\r\n\r\n'.encode()
            + user.encode()
            + b"\r\n"
        )
    head += (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{quoted(filename)}"\r\n'
        f"Content-Type: {mime_type.replace(chr(13), '').replace(chr(10), '')}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head, tail


def _remaining_size(file: BinaryIO) -> int | None:
    """Bytes left to read from the file's current position, when that can be known without
    reading it; None means the upload goes out chunked."""
    try:
        size = os.fstat(file.fileno()).st_size
        return max(size - file.tell(), 0)
    except (AttributeError, OSError, ValueError):
        pass
    try:
        if not file.seekable():
            return None
        pos = file.tell()
        end = file.seek(0, os.SEEK_END)
        file.seek(pos)
        return max(end - pos, 0)
    except (AttributeError, OSError, ValueError):
        return None


class _BaseClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: httpx.Timeout | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        stream_timeout: httpx.Timeout | None = None,
        upload_timeout: httpx.Timeout | None = None,
        initial_retry_delay: float = INITIAL_RETRY_DELAY,
        max_retry_delay: float = MAX_RETRY_DELAY,
        max_retry_after: float = MAX_RETRY_AFTER,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        if not base_url:
            raise ValueError("base_url is required")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = timeout or DEFAULT_TIMEOUT
        self.stream_timeout = stream_timeout or DEFAULT_STREAM_TIMEOUT
        self.upload_timeout = upload_timeout or DEFAULT_UPLOAD_TIMEOUT
        self.max_retries = max(0, max_retries)
        self.initial_retry_delay = initial_retry_delay
        self.max_retry_delay = max_retry_delay
        self.max_retry_after = max_retry_after
        self.max_event_bytes = max_event_bytes

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url}>"

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._api_key}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }

    def _retry_delay(self, attempt: int, error: DifyError) -> float | None:
        """Seconds to wait before another attempt, or None when this error is not retried."""
        if error.permanent or attempt >= self.max_retries:
            return None
        retry_after = error.retry_after if isinstance(error, DifyStatusError) else None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after else None
        delay = min(self.initial_retry_delay * (2.0**attempt), self.max_retry_delay)
        return delay * (1.0 - 0.25 * random.random())

    def _status_error(self, response: httpx.Response, body: bytes, call: _Call) -> DifyStatusError:
        # The app's key too: a proxy or a misbehaving server may echo the request's headers.
        return from_response(
            response.status_code,
            body,
            headers=response.headers,
            redact_secrets=(*call.secrets, self._api_key),
        )

    def _json(self, response: httpx.Response, call: _Call) -> Any:
        try:
            # What a database can store: an LLM's text may hold a NUL or half an emoji.
            return storable(response.json())
        except ValueError:
            raise DifyProtocolError(
                f"{call.what}: answer is not JSON (HTTP {response.status_code})"
            ) from None

    def _json_object(self, response: httpx.Response, call: _Call) -> dict[str, Any]:
        data = self._json(response, call)
        if not isinstance(data, dict):
            raise DifyProtocolError(f"{call.what}: answer is not a JSON object")
        return data

    def _info(self, response: httpx.Response, call: _Call) -> dict[str, Any]:
        """/info's answer, only when it is Dify's: JSON with the fields of the spec's
        AppInfoResponse (`name`, `description`, `tags`, `mode`, `author_name`). Anything else
        (another service a wrong base URL points at) is a DifyProtocolError that says none of
        its words: its name is never shown as "Dify calls it …"."""
        data = self._json_object(response, call) if is_json(response.headers) else None
        if (
            data is None
            or not set(_INFO_FIELDS).issubset(data)
            or not all(isinstance(data[key], kinds) for key, kinds in _INFO_FIELDS.items())
        ):
            raise DifyProtocolError(
                f"{call.what}: {response.status_code}, {not_dify(response.headers)}"
            )
        return data

    @staticmethod
    def _check_event_stream(response: httpx.Response, call: _Call) -> DifyProtocolError | None:
        ctype = response.headers.get("content-type", "")
        if "text/event-stream" in ctype:
            return None
        return DifyProtocolError(
            f"{call.what}: expected an event stream, got {ctype.split(';')[0] or 'no content type'}"
        )

    # --- calls, described once for both clients ---

    def _c_run_workflow(self, inputs: dict[str, Any], user: str, files: list[Any] | None) -> _Call:
        body: dict[str, Any] = {"inputs": inputs, "response_mode": "streaming", "user": user}
        if files:
            body["files"] = files
        return _Call("POST", "/workflows/run", "POST /workflows/run", json=body)

    def _c_chat(
        self,
        query: str,
        inputs: dict[str, Any],
        user: str,
        conversation_id: str | None,
        files: list[Any] | None,
    ) -> _Call:
        body: dict[str, Any] = {
            "query": query,
            "inputs": inputs,
            "response_mode": "streaming",
            "user": user,
        }
        if conversation_id:
            body["conversation_id"] = conversation_id
        if files:
            body["files"] = files
        return _Call("POST", "/chat-messages", "POST /chat-messages", json=body)

    def _c_events(
        self, workflow_run_id: str, user: str, include_state_snapshot: bool, continue_on_pause: bool
    ) -> _Call:
        params = {"user": user}
        # Dify enables either flag only for the literal string "true".
        if include_state_snapshot:
            params["include_state_snapshot"] = "true"
        if continue_on_pause:
            params["continue_on_pause"] = "true"
        path = f"/workflow/{_seg(workflow_run_id)}/events"
        return _Call("GET", path, f"GET {path}", idempotent=True, params=params)

    def _c_get_form(self, form_token: str) -> _Call:
        self._check_token(form_token)
        return _Call(
            "GET",
            f"/form/human_input/{_seg(form_token)}",
            f"GET /form/human_input/{REDACTED}",
            idempotent=True,
            secrets=(form_token, _seg(form_token)),
        )

    def _c_submit_form(
        self, form_token: str, inputs: dict[str, Any], action: str, user: str
    ) -> _Call:
        self._check_token(form_token)
        return _Call(
            "POST",
            f"/form/human_input/{_seg(form_token)}",
            f"POST /form/human_input/{REDACTED}",
            json={"inputs": inputs, "action": action, "user": user},
            secrets=(form_token, _seg(form_token)),
        )

    def _c_get_run(self, workflow_run_id: str) -> _Call:
        path = f"/workflows/run/{_seg(workflow_run_id)}"
        return _Call("GET", path, f"GET {path}", idempotent=True)

    def _c_stop(self, prefix: str, task_id: str, user: str) -> _Call:
        path = f"{prefix}/{_seg(task_id)}/stop"
        return _Call("POST", path, f"POST {path}", json={"user": user})

    @staticmethod
    def _check_token(form_token: str) -> None:
        if not form_token:
            # A null token (email/console delivery) has no API surface; say so instead of
            # sending GET /form/human_input/ and reporting a confusing 404.
            raise ValueError("form_token is empty: this form cannot be answered through the API")
        if isinstance(form_token, SealedText):
            raise FormTokenUnreadable()


def _key_fingerprint(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


@functools.cache
def _shared_ssl_context() -> ssl.SSLContext:
    """httpx's default TLS settings, built once: loading the CA bundle costs tens of
    milliseconds, and the follower keeps several clients per app (see `AsyncDifyClient`)."""
    return httpx.create_ssl_context()


class _NoCookies(httpx.Cookies):
    """A cookie store that keeps nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


def _api_key(app: DifyApp) -> str:
    """The app's key, or ApiKeyUnreadable when none of this process's encryption keys opens
    the stored one: a DifyError, so every caller says it as it says Dify failing, and retries."""
    if app.api_key_sealed:
        raise ApiKeyUnreadable(app.name)
    return str(app.api_key)


class DifyClient(_BaseClient):
    """Synchronous client; thread-safe (httpx.Client is), one connection pool per instance."""

    _cache: ClassVar[dict[tuple[Any, str, str], DifyClient]] = {}
    _cache_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: httpx.Timeout | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.BaseTransport | None = None,
        limits: httpx.Limits | None = None,
        **options: Any,
    ) -> None:
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries, **options)
        self._http = httpx.Client(
            base_url=self.base_url + "/",
            headers=self._headers(),
            timeout=self.timeout,
            transport=transport,
            verify=_shared_ssl_context(),
            limits=limits or httpx.Limits(max_connections=100, max_keepalive_connections=20),
            follow_redirects=False,
        )
        # The Service API authenticates by key and sets no cookie; httpx would still parse each
        # response into a cookie jar (a urllib request built per call: about a twentieth of a
        # delivery's CPU). Private in httpx: if it is renamed, cookies are merely kept again.
        self._http._cookies = _NoCookies()

    @classmethod
    def for_app(cls, app: DifyApp) -> DifyClient:
        """The shared client of an app. A changed URL or key gets a new client; the old one is
        dropped, not closed, because another thread may still be using it."""
        api_key = _api_key(app)
        key = (app.pk, app.base_url.rstrip("/"), _key_fingerprint(api_key))
        with cls._cache_lock:
            client = cls._cache.get(key)
            if client is None or client.is_closed:
                for stale in [k for k in cls._cache if k[0] == app.pk and k != key]:
                    del cls._cache[stale]
                client = cls(app.base_url, api_key)
                cls._cache[key] = client
            return client

    @classmethod
    def close_cached(cls) -> None:
        with cls._cache_lock:
            clients = list(cls._cache.values())
            cls._cache.clear()
        for client in clients:
            client.close()

    @property
    def is_closed(self) -> bool:
        return self._http.is_closed

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DifyClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- plumbing ---

    def _send(self, call: _Call, *, stream: bool, content: Any = None) -> httpx.Response:
        """One request with the retry policy. A non-2xx raises; for a stream the response is
        returned open, for the rest with its body read."""
        attempt = 0
        while True:
            error: DifyError
            request = self._http.build_request(
                call.method,
                call.path,
                params=call.params,
                json=call.json,
                content=content,
                headers=call.headers or None,
                timeout=_within_deadline(
                    call.timeout or (self.stream_timeout if stream else self.timeout),
                    call.within_deadline,
                ),
            )
            try:
                response = self._http.send(request, stream=stream)
            except httpx.HTTPError as exc:
                error = transport_error(exc, call.what)
            else:
                if response.is_success:
                    if not stream:
                        return response
                    problem = self._check_event_stream(response, call)
                    if problem is None:
                        return response
                    response.close()
                    raise problem
                try:
                    body = self._read_error_body(response) if stream else response.content
                except httpx.HTTPError as exc:
                    error = transport_error(exc, call.what)
                else:
                    error = self._status_error(response, body, call)
                finally:
                    response.close()
            delay = self._retry_delay(attempt, error) if call.idempotent else None
            if delay is None or _past_deadline(delay):
                raise error
            time.sleep(delay)
            attempt += 1

    @staticmethod
    def _read_error_body(response: httpx.Response) -> bytes:
        body = b""
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) >= MAX_ERROR_BODY:
                break
        return body[:MAX_ERROR_BODY]

    def _stream(self, call: _Call, *, continue_on_pause: bool = False) -> EventStream:
        response = self._send(call, stream=True)
        return EventStream(
            response,
            continue_on_pause=continue_on_pause,
            max_event_bytes=self.max_event_bytes,
            description=call.what,
        )

    # --- the API ---

    def run_workflow(
        self, *, inputs: dict[str, Any], user: str, files: list[Any] | None = None
    ) -> EventStream:
        """POST /workflows/run in streaming mode (the only mode that hands out form tokens)."""
        return self._stream(self._c_run_workflow(inputs, user, files))

    def send_chat_message(
        self,
        *,
        query: str,
        inputs: dict[str, Any],
        user: str,
        conversation_id: str | None = None,
        files: list[Any] | None = None,
    ) -> EventStream:
        return self._stream(self._c_chat(query, inputs, user, conversation_id, files))

    def stream_events(
        self,
        workflow_run_id: str,
        *,
        user: str,
        include_state_snapshot: bool = False,
        continue_on_pause: bool = False,
        read_timeout: float | None = None,
    ) -> EventStream:
        """GET /workflow/{id}/events: resume following a run. With the snapshot flag a paused
        run replays its pending forms (fresh tokens), a finished one its `workflow_finished`.
        `read_timeout`: the longest silence accepted (pings break it) before the stream fails
        with DifyTimeout, for a reader that wants only what Dify replays at once."""
        call = self._c_events(workflow_run_id, user, include_state_snapshot, continue_on_pause)
        if read_timeout is not None:
            base = self.stream_timeout
            call.timeout = httpx.Timeout(
                base.read, connect=base.connect, read=read_timeout, write=base.write, pool=base.pool
            )
        return self._stream(call, continue_on_pause=continue_on_pause)

    def get_form(self, form_token: str) -> FormDefinition:
        call = self._c_get_form(form_token)
        return FormDefinition.from_api(self._json_object(self._send(call, stream=False), call))

    def submit_form(
        self, form_token: str, *, inputs: dict[str, Any], action: str, user: str
    ) -> None:
        self._send(self._c_submit_form(form_token, inputs, action, user), stream=False)

    def upload_file(
        self, file: BinaryIO, *, filename: str, mime_type: str, user: str
    ) -> UploadedFile:
        """POST /files/upload, streaming from the file's current position in bounded chunks."""
        boundary = uuid.uuid4().hex
        head, tail = _multipart_parts(boundary, filename=filename, mime_type=mime_type, user=user)
        size = _remaining_size(file)
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        if size is not None:
            headers["Content-Length"] = str(len(head) + size + len(tail))

        def body() -> Iterator[bytes]:
            yield head
            while chunk := file.read(UPLOAD_CHUNK_SIZE):
                yield chunk
            yield tail

        call = _Call(
            "POST",
            "/files/upload",
            "POST /files/upload",
            headers=headers,
            timeout=self.upload_timeout,
            within_deadline=False,
        )
        response = self._send(call, stream=False, content=body())
        return UploadedFile.from_api(self._json_object(response, call))

    def get_run(self, workflow_run_id: str) -> RunDetail:
        call = self._c_get_run(workflow_run_id)
        return RunDetail.from_api(self._json_object(self._send(call, stream=False), call))

    def stop_workflow_task(self, task_id: str, *, user: str) -> None:
        self._send(self._c_stop("/workflows/tasks", task_id, user), stream=False)

    def stop_chat_message(self, task_id: str, *, user: str) -> None:
        self._send(self._c_stop("/chat-messages", task_id, user), stream=False)

    def get_parameters(self) -> dict[str, Any]:
        call = _Call("GET", "/parameters", "GET /parameters", idempotent=True)
        return self._json_object(self._send(call, stream=False), call)

    def get_info(self) -> dict[str, Any]:
        call = _Call("GET", "/info", "GET /info", idempotent=True)
        return self._info(self._send(call, stream=False), call)


class AsyncDifyClient(_BaseClient):
    """The same API on httpx.AsyncClient, for the follower's event loop. Stream methods return
    an AsyncEventStream: `async with client.stream_events(...) as stream: async for e in stream`."""

    # Per event loop: an AsyncClient's connections belong to the loop that opened them.
    _cache: ClassVar[dict[Any, dict[tuple[Any, str, str, int], AsyncDifyClient]]] = {}
    _cache_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: httpx.Timeout | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits | None = None,
        **options: Any,
    ) -> None:
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries, **options)
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/",
            headers=self._headers(),
            timeout=self.timeout,
            transport=transport,
            verify=_shared_ssl_context(),
            # One follower holds hundreds of streams open against the same app at once.
            limits=limits or httpx.Limits(max_connections=1000, max_keepalive_connections=100),
            follow_redirects=False,
        )
        self._http._cookies = _NoCookies()  # as in DifyClient

    @classmethod
    def for_app(cls, app: DifyApp, shard: int = 0) -> AsyncDifyClient:
        """The loop's client for `app`. `shard` picks one of several clients of the same app:
        httpx's connection pool looks at each of its connections whenever a request starts or
        a response closes, so a pool holding a thousand open streams makes every request cost
        a thousand checks; the follower spreads its streams over pools of about fifty."""
        try:
            loop: Any = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        api_key = _api_key(app)
        key = (app.pk, app.base_url.rstrip("/"), _key_fingerprint(api_key), shard)
        with cls._cache_lock:
            for dead in [lp for lp in cls._cache if lp is not None and lp.is_closed()]:
                del cls._cache[dead]
            clients = cls._cache.setdefault(loop, {})
            client = clients.get(key)
            if client is None or client.is_closed:
                for stale in [k for k in clients if k[0] == app.pk and k[:3] != key[:3]]:
                    del clients[stale]
                client = cls(app.base_url, api_key)
                clients[key] = client
            return client

    @classmethod
    async def close_cached(cls) -> None:
        """Close the clients of the running loop."""
        loop = asyncio.get_running_loop()
        with cls._cache_lock:
            clients = list(cls._cache.pop(loop, {}).values())
        for client in clients:
            await client.close()

    @property
    def is_closed(self) -> bool:
        return self._http.is_closed

    async def close(self) -> None:
        await self._http.aclose()

    aclose = close

    async def __aenter__(self) -> AsyncDifyClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- plumbing ---

    async def _send(self, call: _Call, *, stream: bool, content: Any = None) -> httpx.Response:
        attempt = 0
        while True:
            error: DifyError
            request = self._http.build_request(
                call.method,
                call.path,
                params=call.params,
                json=call.json,
                content=content,
                headers=call.headers or None,
                timeout=call.timeout or (self.stream_timeout if stream else self.timeout),
            )
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.HTTPError as exc:
                error = transport_error(exc, call.what)
            else:
                if response.is_success:
                    if not stream:
                        return response
                    problem = self._check_event_stream(response, call)
                    if problem is None:
                        return response
                    await response.aclose()
                    raise problem
                try:
                    body = await self._read_error_body(response) if stream else response.content
                except httpx.HTTPError as exc:
                    error = transport_error(exc, call.what)
                else:
                    error = self._status_error(response, body, call)
                finally:
                    await response.aclose()
            delay = self._retry_delay(attempt, error) if call.idempotent else None
            if delay is None:
                raise error
            await asyncio.sleep(delay)
            attempt += 1

    @staticmethod
    async def _read_error_body(response: httpx.Response) -> bytes:
        body = b""
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= MAX_ERROR_BODY:
                break
        return body[:MAX_ERROR_BODY]

    def _stream(self, call: _Call, *, continue_on_pause: bool = False) -> AsyncEventStream:
        async def opener() -> httpx.Response:
            return await self._send(call, stream=True)

        return AsyncEventStream(
            opener,
            continue_on_pause=continue_on_pause,
            max_event_bytes=self.max_event_bytes,
            description=call.what,
        )

    # --- the API ---

    def run_workflow(
        self, *, inputs: dict[str, Any], user: str, files: list[Any] | None = None
    ) -> AsyncEventStream:
        return self._stream(self._c_run_workflow(inputs, user, files))

    def send_chat_message(
        self,
        *,
        query: str,
        inputs: dict[str, Any],
        user: str,
        conversation_id: str | None = None,
        files: list[Any] | None = None,
    ) -> AsyncEventStream:
        return self._stream(self._c_chat(query, inputs, user, conversation_id, files))

    def stream_events(
        self,
        workflow_run_id: str,
        *,
        user: str,
        include_state_snapshot: bool = False,
        continue_on_pause: bool = False,
    ) -> AsyncEventStream:
        call = self._c_events(workflow_run_id, user, include_state_snapshot, continue_on_pause)
        return self._stream(call, continue_on_pause=continue_on_pause)

    async def get_form(self, form_token: str) -> FormDefinition:
        call = self._c_get_form(form_token)
        response = await self._send(call, stream=False)
        return FormDefinition.from_api(self._json_object(response, call))

    async def submit_form(
        self, form_token: str, *, inputs: dict[str, Any], action: str, user: str
    ) -> None:
        await self._send(self._c_submit_form(form_token, inputs, action, user), stream=False)

    async def upload_file(
        self, file: BinaryIO, *, filename: str, mime_type: str, user: str
    ) -> UploadedFile:
        """As the sync upload. Reads of a real file happen in a worker thread so a slow disk
        does not stall the event loop."""
        boundary = uuid.uuid4().hex
        head, tail = _multipart_parts(boundary, filename=filename, mime_type=mime_type, user=user)
        size = _remaining_size(file)
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        if size is not None:
            headers["Content-Length"] = str(len(head) + size + len(tail))
        try:
            file.fileno()
            threaded = True
        except (AttributeError, OSError, ValueError):
            threaded = False

        async def body() -> AsyncIterator[bytes]:
            yield head
            while True:
                if threaded:
                    chunk = await asyncio.to_thread(file.read, UPLOAD_CHUNK_SIZE)
                else:
                    chunk = file.read(UPLOAD_CHUNK_SIZE)
                if not chunk:
                    break
                yield chunk
            yield tail

        call = _Call(
            "POST",
            "/files/upload",
            "POST /files/upload",
            headers=headers,
            timeout=self.upload_timeout,
        )
        response = await self._send(call, stream=False, content=body())
        return UploadedFile.from_api(self._json_object(response, call))

    async def get_run(self, workflow_run_id: str) -> RunDetail:
        call = self._c_get_run(workflow_run_id)
        response = await self._send(call, stream=False)
        return RunDetail.from_api(self._json_object(response, call))

    async def stop_workflow_task(self, task_id: str, *, user: str) -> None:
        await self._send(self._c_stop("/workflows/tasks", task_id, user), stream=False)

    async def stop_chat_message(self, task_id: str, *, user: str) -> None:
        await self._send(self._c_stop("/chat-messages", task_id, user), stream=False)

    async def get_parameters(self) -> dict[str, Any]:
        call = _Call("GET", "/parameters", "GET /parameters", idempotent=True)
        return self._json_object(await self._send(call, stream=False), call)

    async def get_info(self) -> dict[str, Any]:
        call = _Call("GET", "/info", "GET /info", idempotent=True)
        return self._info(await self._send(call, stream=False), call)
