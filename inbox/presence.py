"""Who has a form open right now: a soft lock, shown as "Alice is reviewing this".

Kept in the cache with a short time to live and refreshed by the page's poll, so a closed tab
disappears on its own within a minute and nothing needs cleaning up. Two pages writing at the
same instant may drop each other's entry for one poll; the next poll puts it back.
"""

from __future__ import annotations

import time

from django.core.cache import cache

# A page polls every few seconds; an entry older than this belongs to a page that is gone.
SEEN_WITHIN = 30.0


def _key(form_pk: int) -> str:
    return f"inbox:presence:{form_pk}"


def touch(form_pk: int, who: str, label: str) -> list[str]:
    """Record that `who` has the form open; return the labels of everyone else who does."""
    now = time.time()
    entries: dict[str, tuple[str, float]] = cache.get(_key(form_pk)) or {}
    fresh = {k: v for k, v in entries.items() if now - v[1] < SEEN_WITHIN}
    fresh[who] = (label, now)
    cache.set(_key(form_pk), fresh, timeout=int(SEEN_WITHIN * 2))
    return sorted(label for k, (label, _seen) in fresh.items() if k != who)


def leave(form_pk: int, who: str) -> None:
    entries: dict[str, tuple[str, float]] = cache.get(_key(form_pk)) or {}
    if entries.pop(who, None) is not None:
        cache.set(_key(form_pk), entries, timeout=int(SEEN_WITHIN * 2))
