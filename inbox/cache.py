"""The shared cache (Redis, `CACHE_URL`), whose outage slows pages rather than failing them.

Everything the inbox keeps there can be done without: tab counts are counted afresh, an app's
parameters are asked of Dify again, presence goes unshown and guest links' rate limits go
uncounted. So with Redis away a read misses, a write is dropped and an `add` counts as done,
said in one log line a minute per process instead of a 500 on every page; `/healthz` names it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from django.core.cache.backends.redis import RedisCache
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# Seconds between two log lines about the same outage, per process.
WARN_EVERY = 60.0


class TolerantRedisCache(RedisCache):
    _warned_at = -WARN_EVERY

    def unavailable(self) -> str:
        """What keeps the cache from answering ("" when it answers)."""
        try:
            self._cache.get_client(None, write=True).ping()
        except RedisError as exc:
            return str(exc) or type(exc).__name__
        return ""

    def _missed(self, exc: RedisError) -> None:
        now = time.monotonic()
        if now - TolerantRedisCache._warned_at >= WARN_EVERY:
            TolerantRedisCache._warned_at = now
            logger.warning("cache unavailable, pages go on without it: %s", exc)


def _tolerant(name: str, fallback: Callable[..., Any]) -> None:
    base = getattr(RedisCache, name)

    @functools.wraps(base)
    def method(self: TolerantRedisCache, *args: Any, **kwargs: Any) -> Any:
        try:
            return base(self, *args, **kwargs)
        except RedisError as exc:
            self._missed(exc)
            return fallback(*args, **kwargs)

    setattr(TolerantRedisCache, name, method)


def _default(key: Any, default: Any = None, version: Any = None) -> Any:
    return default


for _name, _fallback in {
    "get": _default,
    "set": lambda *args, **kwargs: None,
    # Counted as done: what waited on it (a form's check, a rate limit's first request) goes on.
    "add": lambda *args, **kwargs: True,
    "touch": lambda *args, **kwargs: False,
    "delete": lambda *args, **kwargs: False,
    "has_key": lambda *args, **kwargs: False,
    "incr": lambda *args, **kwargs: 1,
    "get_many": lambda *args, **kwargs: {},
    "set_many": lambda *args, **kwargs: [],
    "delete_many": lambda *args, **kwargs: None,
    "clear": lambda *args, **kwargs: False,
}.items():
    _tolerant(_name, _fallback)
