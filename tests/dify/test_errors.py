from __future__ import annotations

import json

import pytest

from inbox.dify.errors import (
    BadRequest,
    DifyConnectionError,
    DifyError,
    DifyProtocolError,
    DifyStatusError,
    DifyStreamError,
    DifyTimeout,
    FileTooLarge,
    Forbidden,
    FormAlreadySubmitted,
    FormExpired,
    InvalidFormData,
    InvalidParam,
    NotFound,
    ServerError,
    TooManyRequests,
    Unauthorized,
    UnsupportedFileType,
    from_response,
    parse_retry_after,
)

# What Dify sends its errors as: only such an answer's words are kept.
JSON = {"content-type": "application/json"}


def envelope(status: int, code: str, message: str = "m") -> bytes:
    return json.dumps({"status": status, "code": code, "message": message}).encode()


@pytest.mark.parametrize(
    ("status", "code", "cls", "permanent"),
    [
        (401, "unauthorized", Unauthorized, True),
        (403, "forbidden", Forbidden, True),
        (404, "not_found", NotFound, True),
        (412, "human_input_form_submitted", FormAlreadySubmitted, True),
        (412, "human_input_form_expired", FormExpired, True),
        (400, "invalid_form_data", InvalidFormData, True),
        (400, "invalid_param", InvalidParam, True),
        (400, "bad_request", BadRequest, True),
        (400, "not_workflow_app", BadRequest, True),
        (413, "file_too_large", FileTooLarge, True),
        (415, "unsupported_file_type", UnsupportedFileType, True),
        (429, "too_many_requests", TooManyRequests, False),
        (429, "rate_limit_error", TooManyRequests, False),
        (500, "internal_server_error", ServerError, False),
        (502, "", ServerError, False),
        (503, "something_new", ServerError, False),
    ],
)
def test_it_maps_code_then_status(
    status: int, code: str, cls: type[DifyStatusError], permanent: bool
) -> None:
    error = from_response(status, envelope(status, code, "the message"), headers=JSON)
    assert type(error) is cls
    assert (error.status, error.code, error.message) == (status, code, "the message")
    assert error.permanent is permanent


@pytest.mark.parametrize(
    ("status", "code", "cls", "permanent"),
    [
        # The body's code picks a class only for a status that class stands for: the status
        # alone says whether the same call may succeed later.
        (422, "internal_server_error", DifyStatusError, True),
        (404, "internal_server_error", NotFound, True),
        (409, "internal_server_error", DifyStatusError, True),
        (400, "too_many_requests", BadRequest, True),
        (500, "not_found", ServerError, False),
        (503, "human_input_form_submitted", ServerError, False),
        (502, "invalid_form_data", ServerError, False),
        (429, "not_found", TooManyRequests, False),
        (408, "not_found", DifyStatusError, False),
        (400, "not_found", BadRequest, True),
        (403, "invalid_form_data", Forbidden, True),
        (400, "human_input_form_expired", BadRequest, True),
    ],
)
def test_the_status_decides_when_the_code_says_otherwise(
    status: int, code: str, cls: type[DifyStatusError], permanent: bool
) -> None:
    error = from_response(status, envelope(status, code), headers=JSON)
    assert type(error) is cls
    assert (error.status, error.code) == (status, code)
    assert error.permanent is permanent


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (413, FileTooLarge),
        (400, BadRequest),
    ],
)
def test_a_body_without_a_code_maps_by_status(status: int, cls: type[DifyStatusError]) -> None:
    error = from_response(status, b"<html>Not here</html>", headers={"content-type": "text/html"})
    assert type(error) is cls
    assert error.code == ""
    # Not Dify's answer (a proxy's, or whatever a wrong base URL points at): none of its words.
    assert error.message == "not an answer from Dify (text/html)"
    assert str(error) == f"{status}: not an answer from Dify (text/html)"


@pytest.mark.parametrize(
    ("body", "headers", "said"),
    [
        # An internal service's error page.
        (b"<html>AWS_SECRET=x</html>", {"content-type": "text/html"}, "text/html"),
        # Dify's envelope in its shape, not said to be JSON.
        (
            b'{"code": "forbidden", "message": "redis password=x"}',
            {"content-type": "text/plain; charset=utf-8"},
            "text/plain",
        ),
        (b'{"code": "forbidden", "message": "redis password=x"}', None, "no content type"),
        # JSON, not Dify's envelope: no code, or a message that is no string.
        (b'{"message": "redis password=x"}', JSON, "application/json"),
        (b'{"code": "x", "message": {"redis": "password=x"}}', JSON, "application/json"),
        (b'["redis password=x"]', JSON, "application/json"),
        (b"redis password=x", JSON, "application/json"),
    ],
)
def test_an_answer_that_is_not_dify_s_envelope_is_said_by_its_status_alone(
    body: bytes, headers: dict[str, str] | None, said: str
) -> None:
    error = from_response(403, body, headers=headers)
    assert type(error) is Forbidden
    assert (error.code, error.message) == ("", f"not an answer from Dify ({said})")
    assert "password" not in str(error) and "password" not in repr(error)


def test_an_unknown_4xx_is_a_permanent_plain_status_error() -> None:
    error = from_response(409, envelope(409, "conflict"), headers=JSON)
    assert type(error) is DifyStatusError
    assert error.permanent is True
    assert from_response(408, b"").permanent is False


def test_retry_after_is_read_from_the_headers() -> None:
    error = from_response(
        429, envelope(429, "too_many_requests"), headers={**JSON, "retry-after": "3"}
    )
    assert isinstance(error, TooManyRequests)
    assert error.retry_after == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None


def test_messages_never_contain_the_token() -> None:
    body = envelope(404, "not_found", "Form tok-SECRET not found")
    error = from_response(404, body, headers=JSON, redact_secrets=["tok-SECRET"])
    assert "tok-SECRET" not in str(error)
    assert "tok-SECRET" not in repr(error)
    assert str(error) == "404 not_found: Form *** not found"


def test_an_empty_message_keeps_the_code() -> None:
    assert (
        str(from_response(413, envelope(413, "file_too_large", ""), headers=JSON))
        == "413 file_too_large"
    )


def test_huge_bodies_are_cut() -> None:
    error = from_response(502, envelope(502, "bad_gateway", "x" * 100_000), headers=JSON)
    assert len(error.message) < 1000


def test_transient_and_permanent_families() -> None:
    assert issubclass(DifyTimeout, DifyConnectionError)
    assert DifyConnectionError.permanent is False
    assert DifyTimeout.permanent is False
    assert DifyProtocolError("x").permanent is False
    for cls in (DifyConnectionError, DifyTimeout, DifyProtocolError, DifyStatusError):
        assert issubclass(cls, DifyError)


def test_a_stream_error_carries_status_code_and_message() -> None:
    error = DifyStreamError(400, "invalid_param", "bad input")
    assert (error.status, error.code, error.message) == (400, "invalid_param", "bad input")
    assert error.permanent is True
    assert isinstance(error.as_status_error(), InvalidParam)
    assert DifyStreamError(500, "internal_server_error", "x").permanent is False
    assert DifyStreamError(None, "", "x").permanent is False
    assert "bad input" in str(error)


@pytest.mark.parametrize(
    ("status", "code", "refuses_app"),
    [
        (401, "unauthorized", True),
        (401, "", True),
        (403, "forbidden", True),
        (403, "workflow_version_execution_not_allowed", False),
        (400, "app_unavailable", True),
        (400, "not_workflow_app", True),
        (400, "not_chat_app", True),
        (400, "invalid_param", False),
        (400, "invalid_form_data", False),
        (400, "bad_request", False),
        (404, "not_found", False),
        (412, "human_input_form_submitted", False),
        (429, "too_many_requests", False),
        (500, "internal_server_error", False),
    ],
)
def test_it_says_whether_dify_refuses_the_app_or_only_the_request(
    status: int, code: str, refuses_app: bool
) -> None:
    error = from_response(status, {"code": code, "message": "x"})
    assert error.refuses_app is refuses_app
