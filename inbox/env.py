"""Small strict readers for settings taken from the environment.

Each one raises ImproperlyConfigured naming the variable, so a typo in a deployment fails at
start-up with a message an operator can act on, not later with a confusing traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "", environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get(name, default)


def env_bool(name: str, default: bool = False, environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    raw = environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false, yes/no), got {raw!r}")


def env_int(
    name: str,
    default: int,
    environ: Mapping[str, str] | None = None,
    minimum: int | None = None,
) -> int:
    environ = os.environ if environ is None else environ
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(
    name: str,
    default: float,
    environ: Mapping[str, str] | None = None,
    minimum: float | None = None,
) -> float:
    environ = os.environ if environ is None else environ
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ImproperlyConfigured(f"{name} must be a finite number, got {raw!r}")
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_list(name: str, default: list[str], environ: Mapping[str, str] | None = None) -> list[str]:
    environ = os.environ if environ is None else environ
    raw = environ.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


_HOST_NAME = re.compile(
    r"(?=.{1,253}\Z)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\Z"
)


def env_hosts(
    name: str, environ: Mapping[str, str] | None = None, *, wildcards: bool = False
) -> list[str]:
    """Comma-separated host names, lower-cased. Only plain names: no scheme, port or path, so a
    value can go into a Content-Security-Policy header as it is. With `wildcards`, a name may
    start with `*.` (every subdomain of what follows, not that name itself, as CSP reads it);
    what follows must have two labels at least, so `*.com` is refused."""
    hosts = [host.lower() for host in env_list(name, [], environ)]
    for host in hosts:
        bare = host[2:] if wildcards and host.startswith("*.") else host
        if not _HOST_NAME.match(bare) or (bare != host and "." not in bare):
            example = "images.example.com or *.example.com" if wildcards else "images.example.com"
            raise ImproperlyConfigured(
                f"{name} must be comma-separated host names like {example}, got {host!r}"
            )
    return list(dict.fromkeys(hosts))


_ALLOWED_HOST = re.compile(
    r"(\*|\.?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?"
    r"|\[[0-9a-f:.]+\])\Z"
)


def env_allowed_hosts(
    name: str, default: list[str], environ: Mapping[str, str] | None = None
) -> list[str]:
    """Django's ALLOWED_HOSTS: host names (`.example.com` for a domain and its subdomains, `*`
    for any), IP addresses, `[::1]`. A scheme, port or path never matches a request's host, so
    every request would be refused with 400: said at start-up instead."""
    hosts = [host.lower() for host in env_list(name, default, environ)]
    for host in hosts:
        if not _ALLOWED_HOST.match(host):
            raise ImproperlyConfigured(
                f"{name} must be comma-separated host names like inbox.example.com "
                f"(.example.com for it and its subdomains, * for any), without a scheme, port "
                f"or path; got {host!r}"
            )
    return hosts


def env_time_zone(name: str, default: str, environ: Mapping[str, str] | None = None) -> str:
    """An IANA time zone name this machine knows (Europe/Paris, Asia/Shanghai, UTC)."""
    import zoneinfo

    raw = env_str(name, default, environ).strip() or default
    try:
        zoneinfo.ZoneInfo(raw)
        # Files of the zone database that are no zone's name: the machine's own zone under
        # another name, or none; a reader would be shown "localtime" as a zone.
        if raw in ("localtime", "Factory", "posixrules") or raw.startswith(("posix/", "right/")):
            raise ValueError(raw)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ImproperlyConfigured(
            f"{name} must be a time zone name like Europe/Paris or UTC, got {raw!r}"
        ) from None
    return raw


def parse_database_url(name: str, url: str) -> dict[str, object]:
    """Turn ``postgres://user:pass@host:port/db?sslmode=...`` or ``sqlite:///path`` into DATABASES."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        # A port that is no number, or a password with a bracket or a slash not %-encoded. The
        # URL itself is not repeated: it holds the password.
        raise ImproperlyConfigured(
            f"{name} is not a valid URL ({exc}); %-encode special characters in the user name "
            "and password (@ : / [ ] ? # as %40 %3A %2F %5B %5D %3F %23)"
        ) from None
    scheme = parts.scheme.lower()
    if scheme in {"sqlite", "sqlite3"}:
        # sqlite:///relative.db -> "relative.db"; sqlite:////abs/path.db -> "/abs/path.db"
        path = unquote(parts.path)[1:]
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": path or ":memory:"}
    if scheme in {"postgres", "postgresql", "pgsql"}:
        if not parts.path.strip("/"):
            raise ImproperlyConfigured(f"{name} must name a database, e.g. postgres://u:p@host/db")
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        config: dict[str, object] = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": unquote(parts.hostname or ""),
            "PORT": str(port or ""),
        }
        if options:
            config["OPTIONS"] = options
        return config
    raise ImproperlyConfigured(
        f"{name} must start with postgres:// or sqlite://, got scheme {parts.scheme!r}"
    )
