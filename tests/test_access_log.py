"""The web server's access log names the client as the inbox resolves it (INBOX_TRUSTED_PROXIES),
never the X-Forwarded-For header as sent, whose left-most entries the client can write."""

from __future__ import annotations

import datetime as dt
import runpy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.test import Client
from gunicorn.config import Config
from gunicorn.glogging import Logger

ROOT = Path(__file__).resolve().parent.parent


def _access_line(environ: dict[str, Any]) -> str:
    """The line gunicorn writes for a request with `environ`, in the image's format."""
    config = Config()
    config.set("accesslog", "-")
    config.set(
        "access_log_format",
        runpy.run_path(str(ROOT / "inbox" / "gunicorn_conf.py"))["access_log_format"],
    )
    logger = Logger(config)
    response = SimpleNamespace(status="200 OK", headers=[], sent=12)
    lines: list[str] = []
    # gunicorn's access logger is the process's `gunicorn.access`: its `info` is put back after,
    # or every later test in this process that logs through it would write here.
    logger.access_log.info = lambda message, atoms: lines.append(message % atoms)  # type: ignore[method-assign]
    try:
        environ = {
            "RAW_URI": environ.get("PATH_INFO", "/"),
            "SERVER_PROTOCOL": "HTTP/1.1",
            **environ,
        }
        logger.access(response, [], environ, dt.timedelta(milliseconds=5))
    finally:
        del logger.access_log.info
    return lines[0]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("hops", "forwarded", "first"),
    [
        # One proxy: the entry it wrote, the right-most; the forged one left of it is not logged.
        (1, "198.51.100.7, 203.0.113.5", "203.0.113.5"),
        (2, "198.51.100.7, 203.0.113.5, 10.0.0.2", "203.0.113.5"),
        # No proxy trusted: the connection's address, whatever the header says.
        (0, "198.51.100.7", "127.0.0.1"),
    ],
)
def test_the_access_log_names_the_client_the_inbox_resolves(
    settings: Any, hops: int, forwarded: str, first: str
) -> None:
    settings.INBOX_TRUSTED_PROXIES = hops
    response = Client().get(
        "/accounts/login/", HTTP_X_FORWARDED_FOR=forwarded, REMOTE_ADDR="127.0.0.1"
    )
    line = _access_line(response.wsgi_request.META)
    assert line.startswith(f"{first} 127.0.0.1 - - ["), line
    assert '"GET /accounts/login/ HTTP/1.1" 200' in line
    assert "198.51.100.7" not in line


def test_a_request_the_inbox_never_saw_names_no_client() -> None:
    # gunicorn answering a request it could not read itself: the inbox resolved nothing.
    line = _access_line(
        {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_X_FORWARDED_FOR": "198.51.100.7",
        }
    )
    assert line.startswith("- 127.0.0.1 - - ["), line
    assert "198.51.100.7" not in line
