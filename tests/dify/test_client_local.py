"""Client behaviour that needs no Dify at all: a refused port, the shared clients, the logs."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from typing import Any

import httpx
import pytest

from inbox.dify import AsyncDifyClient, DifyClient
from inbox.dify.client import USER_AGENT, redact_url
from inbox.dify.errors import DifyConnectionError, DifyProtocolError, DifyStatusError
from inbox.models import DifyApp


class CountingTransport(httpx.HTTPTransport):
    """The real transport, counting what goes through it."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return super().handle_request(request)


def refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_connect_refused_is_retried_for_idempotent_calls_only() -> None:
    transport = CountingTransport()
    client = DifyClient(
        refused_url(), "key", max_retries=2, transport=transport, initial_retry_delay=0.01
    )
    with pytest.raises(DifyConnectionError) as caught:
        client.get_form("tok-secret-1")
    assert transport.paths == ["/v1/form/human_input/tok-secret-1"] * 3
    assert "tok-secret-1" not in str(caught.value)
    # Nothing left this process: a caller may safely try a submit again.
    assert caught.value.error_type == "ConnectError"
    assert not caught.value.request_sent
    # Said in words an administrator reads, the class name kept for searching.
    assert str(caught.value) == (
        "GET /form/human_input/***: could not connect: refused, unreachable or an unknown host "
        "(ConnectError)"
    )
    # httpx's exception (which carries the URL) is not chained to ours.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__

    transport.paths.clear()
    with pytest.raises(DifyConnectionError):
        client.submit_form("tok-secret-1", inputs={}, action="approve", user="u")
    assert len(transport.paths) == 1

    transport.paths.clear()
    with pytest.raises(DifyConnectionError):
        client.run_workflow(inputs={}, user="u")
    assert len(transport.paths) == 1
    client.close()


def test_an_empty_token_is_refused_before_any_request() -> None:
    client = DifyClient(refused_url(), "key")
    with pytest.raises(ValueError, match="cannot be answered through the API"):
        client.get_form("")
    client.close()


def test_the_api_key_does_not_show_in_the_client_repr() -> None:
    client = DifyClient("http://dify.local/v1/", "app-very-secret")
    assert repr(client) == "<DifyClient http://dify.local/v1>"
    assert "app-very-secret" not in repr(client._http.headers)
    assert client._http.headers["user-agent"] == USER_AGENT
    assert USER_AGENT.startswith("dify-approval-inbox/")
    client.close()


def test_httpx_log_lines_lose_the_form_token(caplog: pytest.LogCaptureFixture) -> None:
    client = DifyClient(refused_url(), "key", max_retries=0)
    with caplog.at_level(logging.DEBUG, logger="httpx"):
        logging.getLogger("httpx").info(
            'HTTP Request: %s %s "%s"', "GET", "http://h/v1/form/human_input/tok-abc", "200"
        )
    assert "tok-abc" not in caplog.text
    assert "/form/human_input/***" in caplog.text
    assert redact_url("/v1/form/human_input/tok-abc?x=1") == "/v1/form/human_input/***?x=1"
    client.close()


@pytest.mark.django_db
def test_for_app_shares_one_client_per_app_across_threads(dify_app: DifyApp) -> None:
    DifyClient.close_cached()
    seen: list[DifyClient] = []
    threads = [
        threading.Thread(target=lambda: seen.append(DifyClient.for_app(dify_app))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(c) for c in seen}) == 1
    first = seen[0]
    assert first.base_url == dify_app.base_url

    dify_app.api_key = "rotated-key-000000"
    dify_app.save()
    rotated = DifyClient.for_app(dify_app)
    assert rotated is not first
    assert rotated._http.headers["authorization"] == "Bearer rotated-key-000000"
    other = DifyApp.objects.create(name="other", base_url=dify_app.base_url, api_key="k2")
    assert DifyClient.for_app(other) is not rotated
    DifyClient.close_cached()
    assert rotated.is_closed


@pytest.mark.django_db
def test_async_clients_are_shared_per_event_loop(dify_app: DifyApp) -> None:
    async def two() -> tuple[AsyncDifyClient, AsyncDifyClient]:
        a, b = AsyncDifyClient.for_app(dify_app), AsyncDifyClient.for_app(dify_app)
        return a, b

    a1, a2 = asyncio.run(two())
    b1, _ = asyncio.run(two())
    assert a1 is a2
    assert b1 is not a1


def test_a_cookie_set_by_a_server_is_not_kept_nor_sent_back() -> None:
    """The Service API authenticates by key alone; the client keeps no cookie (and spends no
    time parsing one), so nothing a proxy sets rides along on the next call."""
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(
            200,
            json={"result": "success"},
            headers={"set-cookie": "route=node-2; Path=/"},
        )

    client = DifyClient("http://dify.test/v1", "key", transport=httpx.MockTransport(handler))
    client.submit_form("tok-1", inputs={}, action="approve", user="u")
    client.submit_form("tok-2", inputs={}, action="approve", user="u")
    assert seen == [None, None]
    assert not client._http.cookies


def test_the_api_key_is_never_repeated_from_an_answer_that_echoes_it() -> None:
    from tests.delivery.scripted import ScriptedDify, error

    # A proxy or a misbehaving server that repeats the request's headers in its error.
    dify = ScriptedDify()
    key = "app-echoed-secret-998877"
    dify.on("GET", "/info", error(502, f"echo {key}", f"upstream saw Authorization=Bearer {key}"))
    client = DifyClient(dify.base_url, key, max_retries=0)
    try:
        with pytest.raises(Exception) as caught:
            client.get_info()
    finally:
        client.close()
        dify.close()
    assert "Authorization=Bearer ***" in str(caught.value)
    assert key not in str(caught.value) and key not in repr(caught.value)


INFO = {
    "name": "Refunds",
    "description": "",
    "tags": [],
    "mode": "workflow",
    "author_name": None,
}


@pytest.mark.parametrize(
    ("status", "ctype", "body", "said"),
    [
        (200, "application/json", INFO, None),
        (200, "application/json; charset=utf-8", INFO, None),
        # An internal service's JSON with a name, not Dify's /info.
        (
            200,
            "application/json",
            {"name": "INTERNAL db=prod", "mode": "workflow", "secret": "s3"},
            "application/json",
        ),
        (200, "application/json", {**INFO, "name": ["INTERNAL db=prod"]}, "application/json"),
        (200, "application/json", {**INFO, "tags": "INTERNAL db=prod"}, "application/json"),
        # Dify's fields, not said to be JSON.
        (200, "text/html", {**INFO, "name": "INTERNAL db=prod"}, "text/html"),
    ],
)
def test_info_is_read_only_from_an_answer_with_dify_s_fields(
    status: int, ctype: str, body: Any, said: str | None
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status, content=json.dumps(body).encode(), headers={"content-type": ctype}
        )

    client = DifyClient("http://dify.test/v1", "key", transport=httpx.MockTransport(handler))
    if said is None:
        assert client.get_info()["name"] == "Refunds"
        return
    with pytest.raises(DifyProtocolError) as caught:
        client.get_info()
    assert str(caught.value) == f"GET /info: 200, not an answer from Dify ({said})"
    assert "INTERNAL" not in repr(caught.value)


def test_an_error_page_that_is_not_dify_s_is_said_by_its_status_alone() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            500,
            content=b"<html>Internal console. AWS_SECRET_ACCESS_KEY=AKIA</html>",
            headers={"content-type": "text/html"},
        )

    client = DifyClient(
        "http://dify.test/v1", "key", max_retries=0, transport=httpx.MockTransport(handler)
    )
    with pytest.raises(DifyStatusError) as caught:
        client.get_parameters()
    assert str(caught.value) == "500: not an answer from Dify (text/html)"
