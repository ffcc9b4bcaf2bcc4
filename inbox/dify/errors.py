"""What can go wrong talking to Dify, as a hierarchy that retry logic can decide from.

    DifyError
    ├── SecretUnreadable               nothing sent: no encryption key here opens a secret
    │   ├── ApiKeyUnreadable           the app's API key
    │   └── FormTokenUnreadable        a form's token
    ├── DifyConnectionError            transient: refused, reset, DNS, TLS...
    │   └── DifyTimeout                transient
    ├── DifyProtocolError              an answer we could not read
    ├── DifyStreamError                an `error` event inside a 200 event stream
    └── DifyStatusError(status, code, message)
        ├── BadRequest (400)
        │   ├── InvalidFormData (400 invalid_form_data)
        │   └── InvalidParam (400 invalid_param)
        ├── Unauthorized (401), Forbidden (403), NotFound (404)
        ├── FormAlreadySubmitted (412 human_input_form_submitted)
        ├── FormExpired (412 human_input_form_expired)
        ├── FileTooLarge (413), UnsupportedFileType (415)
        ├── TooManyRequests (429, retry_after)
        └── ServerError (5xx)

Every class says whether it is `permanent`: a 4xx other than 408 and 429 will fail the same way
again; 5xx, 408, 429, connection problems and timeouts may not. For a status error that is the
HTTP status's to say, never the body's: a class chosen by Dify's `code` is used only when the
status is one that class stands for (a 500 whose body says `not_found` is a ServerError, a 422
whose body says `internal_server_error` a plain, permanent DifyStatusError). A status error also says whether it
`refuses_app`: Dify refuses the app's key or the app itself (401, 403, an app-level 400), so every
call with that key fails alike until someone fixes it, whichever run or form it is about.

A form token is a bearer secret and sits in URL paths, so messages built here never contain one:
the client passes the secrets of a call as `redact` and they are replaced by `***`.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inbox.dify.types import ErrorEvent

REDACTED = "***"
# Keep error messages readable in logs and in a reviewer's page; an HTML error page from a proxy
# can be megabytes.
_MAX_MESSAGE = 500


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


class DifyError(Exception):
    """Base of everything the Dify client raises."""

    permanent: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SecretUnreadable(DifyError):
    """Nothing was sent: a secret the call needs cannot be decrypted with this process's
    encryption keys (one dropped before rotating, or a process started without the newest).
    Not Dify's refusal, nor a fault of the form: only this process's settings. Worth trying
    again once the key is back."""

    permanent = False


class ApiKeyUnreadable(SecretUnreadable):
    def __init__(self, app_name: str) -> None:
        super().__init__(
            f"The API key of the app {app_name!r} cannot be decrypted with INBOX_ENCRYPTION_KEYS: "
            "put back the key it was encrypted with, or enter the API key again in the admin."
        )


class FormTokenUnreadable(SecretUnreadable):
    def __init__(self) -> None:
        super().__init__(
            "This form's token cannot be decrypted with INBOX_ENCRYPTION_KEYS: put back the key "
            "it was encrypted with."
        )


class DifyConnectionError(DifyError):
    """The request did not get an answer: refused, reset, closed early, DNS or TLS failure.

    `error_type` names the underlying failure (httpx's class name, e.g. "ConnectError",
    "ReadTimeout"); `request_sent` says whether the request may have reached Dify, which is
    what decides if a non-idempotent call (a submit) may have taken effect.
    """

    permanent = False
    # Failures that happen before a single byte of the request leaves this process.
    NOT_SENT = frozenset({"ConnectError", "ConnectTimeout", "PoolTimeout", "UnsupportedProtocol"})

    def __init__(self, message: str, *, error_type: str = "") -> None:
        super().__init__(message)
        self.error_type = error_type

    @property
    def request_sent(self) -> bool:
        return self.error_type not in self.NOT_SENT


class DifyTimeout(DifyConnectionError):
    """Connect, read, write or pool timeout."""

    permanent = False


class DifyProtocolError(DifyError):
    """Dify answered something we cannot read: bad JSON, a wrong content type, an oversize event.

    Not permanent: such answers usually come from a proxy or a half-deployed server, and the same
    call later may well succeed. The client itself does not retry them.
    """

    permanent = False


class DifyStatusError(DifyError):
    """A non-2xx answer. `code` is Dify's machine-readable code ("" when the body had none).

    Whether it is `permanent` follows the status alone (`_permanent_status`), whatever the
    class. `statuses` are the statuses a subclass stands for: `from_response` picks it by
    Dify's `code` only for one of those (empty: any, for the plain class).
    """

    permanent = True
    statuses: frozenset[int] = frozenset()

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.retry_after = retry_after
        super().__init__(message)
        self.permanent = _permanent_status(status)

    def __str__(self) -> str:
        head = f"{self.status} {self.code}" if self.code else str(self.status)
        return f"{head}: {self.message}" if self.message else head

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, message={self.message!r})"

    @property
    def said(self) -> dict[str, int | str]:
        """What Dify answered, for an error's `details`: `dify_status`, and `dify_code` when the
        body had one."""
        return {"dify_status": self.status, **({"dify_code": self.code} if self.code else {})}

    @property
    def refuses_app(self) -> bool:
        """Whether Dify refuses the app or its key, not this one request (CONTRACT 1, 2.1, 6):

        - 401: no valid key (rotated, revoked, mistyped);
        - 403: the app is deleted or abnormal, its API access is off, its workspace archived,
          or a plan limit bars it; except `workflow_version_execution_not_allowed`, which is
          about the workflow version a request asked for;
        - 400 `app_unavailable`, `not_workflow_app`, `not_chat_app`: the app is not published
          or configured, or the key belongs to an app of another kind.

        Any other 400 (`invalid_param`, `invalid_form_data`, `bad_request`...) is about the data
        of one run or form, and 404 about one run or token: the app itself is fine.
        """
        if self.status == 401:
            return True
        if self.status == 403:
            return self.code not in _REQUEST_FORBIDDEN_CODES
        return self.status == 400 and self.code in _APP_REFUSAL_CODES


def cannot_reach(exc: BaseException) -> bool:
    """Whether the call found no Dify answering for the app: no connection, no answer in time,
    or a server error (5xx: Dify itself, or a gateway with nothing behind it). What
    `DifyApp.note_unreachable` records; a 4xx is an answer about the app or the request."""
    if isinstance(exc, DifyConnectionError):
        return True
    return isinstance(exc, DifyStatusError) and exc.status >= 500


class BadRequest(DifyStatusError):
    statuses = frozenset({400})


class InvalidFormData(BadRequest):
    """The submission failed Dify's validation; the token is still good, fix and resend."""


class InvalidParam(BadRequest):
    """A missing or invalid parameter, e.g. no `user`, a bad filename, a blacklisted extension."""


class Unauthorized(DifyStatusError):
    statuses = frozenset({401})


class Forbidden(DifyStatusError):
    """The app is disabled, archived, over a plan limit or barred from the API: read `message`."""

    statuses = frozenset({403})


class NotFound(DifyStatusError):
    """Unknown token or run, one belonging to another app, or a non-WebApp form token."""

    statuses = frozenset({404})


FormNotFound = NotFound


class FormAlreadySubmitted(DifyStatusError):
    """Someone (possibly us, earlier) already answered this form. GET returns it too."""

    statuses = frozenset({412})


class FormExpired(DifyStatusError):
    """The node timeout or the deployment's global cap has passed."""

    statuses = frozenset({412})


class FileTooLarge(DifyStatusError):
    statuses = frozenset({413})


class UnsupportedFileType(DifyStatusError):
    statuses = frozenset({415})


class TooManyRequests(DifyStatusError):
    permanent = False
    statuses = frozenset({429})


class ServerError(DifyStatusError):
    permanent = False
    statuses = frozenset(range(500, 600))


class DifyStreamError(DifyError):
    """An `{"event": "error", status, code, message}` event: Dify keeps HTTP 200 for mid-stream
    failures and reports them with the same codes as HTTP errors. `event` is the event itself,
    for a caller that records what the stream said (the follower)."""

    def __init__(
        self, status: int | None, code: str, message: str, *, event: ErrorEvent | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.event = event
        super().__init__(message)
        # A failure without a status is most likely the server giving up mid-run (an internal
        # error turned into an event), so it is treated like a 5xx.
        self.permanent = _permanent_status(status) if status else False

    def __str__(self) -> str:
        head = f"stream error {self.status or ''} {self.code}".replace("  ", " ").strip()
        return f"{head}: {self.message}" if self.message else head

    def __repr__(self) -> str:
        return (
            f"DifyStreamError(status={self.status}, code={self.code!r}, message={self.message!r})"
        )

    def as_status_error(self) -> DifyStatusError:
        """The same failure as the class an HTTP answer would have raised, to branch on type."""
        return from_response(self.status or 500, {"code": self.code, "message": self.message})


# See DifyStatusError.refuses_app.
_APP_REFUSAL_CODES = frozenset({"app_unavailable", "not_workflow_app", "not_chat_app"})
_REQUEST_FORBIDDEN_CODES = frozenset({"workflow_version_execution_not_allowed"})


def _permanent_status(status: int) -> bool:
    return 400 <= status < 500 and status not in (408, 429)


_BY_CODE: dict[str, type[DifyStatusError]] = {
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "human_input_form_submitted": FormAlreadySubmitted,
    "human_input_form_expired": FormExpired,
    "invalid_form_data": InvalidFormData,
    "invalid_param": InvalidParam,
    "bad_request": BadRequest,
    "file_too_large": FileTooLarge,
    "unsupported_file_type": UnsupportedFileType,
    "too_many_requests": TooManyRequests,
    "rate_limit_error": TooManyRequests,
    "internal_server_error": ServerError,
}

_BY_STATUS: dict[int, type[DifyStatusError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    413: FileTooLarge,
    415: UnsupportedFileType,
    429: TooManyRequests,
}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - dt.datetime.now(dt.UTC)).total_seconds()
    return max(seconds, 0.0)


def from_response(
    status: int,
    body: Any,
    *,
    headers: Mapping[str, str] | None = None,
    redact_secrets: Iterable[str | None] = (),
) -> DifyStatusError:
    """The error for a non-2xx answer: by Dify's `code` when the status is one its class stands
    for (a 412 `human_input_form_expired` is a FormExpired), else by HTTP status alone, so a body's
    code never turns a final answer into one worth retrying or the other way round.

    `body` may be the parsed envelope, its raw bytes or text, or None. Raw bytes or text are
    read only as Dify's error envelope (`code` and `message`, both strings) sent as JSON
    (`headers`' content type): anything else, whatever answered (a proxy, or whichever
    service a wrong base URL points at), is said as its status and content type alone, "not an
    answer from Dify (text/html)", so no word of a reply that is not Dify's reaches a message,
    the audit trail or a log line.
    """
    secrets = tuple(redact_secrets)
    envelope: Any = body
    if isinstance(body, bytes | bytearray | str):
        envelope = _dify_envelope(body, headers)
    if not isinstance(envelope, dict):
        envelope = {}
    code = envelope.get("code")
    code = redact(code, secrets) if isinstance(code, str) else ""
    message = envelope.get("message")
    message = message if isinstance(message, str) else ("" if message is None else str(message))
    message = redact(message, secrets)
    if not envelope and body:
        message = not_dify(headers)
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "…"
    retry_after = None
    if headers is not None:
        retry_after = parse_retry_after(headers.get("retry-after"))
    cls = _BY_CODE.get(code)
    if cls is None or status not in cls.statuses:
        if status >= 500:
            cls = ServerError
        else:
            cls = _BY_STATUS.get(status, DifyStatusError)
    return cls(status, code, message, retry_after=retry_after)


def not_dify(headers: Mapping[str, str] | None) -> str:
    """What is said of an answer that is not Dify's: its content type, never its words."""
    ctype = (headers or {}).get("content-type", "").split(";")[0].strip()[:60]
    return f"not an answer from Dify ({ctype or 'no content type'})"


def is_json(headers: Mapping[str, str] | None) -> bool:
    """Whether an answer says it is JSON (`application/json`, or a `+json` type)."""
    ctype = (headers or {}).get("content-type", "").split(";")[0].strip().lower()
    return ctype == "application/json" or ctype.endswith("+json")


def _dify_envelope(
    body: bytes | bytearray | str, headers: Mapping[str, str] | None
) -> dict[str, Any]:
    """Dify's error envelope in a raw body, or {} when the answer is not one: not said to be
    JSON, not JSON, or without a string `code` and `message`."""
    if not is_json(headers):
        return {}
    text = bytes(body).decode("utf-8", "replace") if isinstance(body, bytes | bytearray) else body
    try:
        envelope = json.loads(text)
    except ValueError:
        return {}
    if (
        not isinstance(envelope, dict)
        or not isinstance(envelope.get("code"), str)
        or not isinstance(envelope.get("message"), str)
    ):
        return {}
    return envelope
