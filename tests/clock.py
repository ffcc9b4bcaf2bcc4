"""A host whose clock is off: its `timezone.now()` runs ahead of or behind the database's."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

from django.utils import timezone

# Far more than any tolerance or lease in the tests: a host whose time sync broke.
SKEW = dt.timedelta(minutes=10)


@contextmanager
def host_clock(offset: dt.timedelta) -> Iterator[None]:
    """Run the block as a process on a host whose clock is `offset` off. Only the host's clock
    is changed: the database keeps its own."""
    real = timezone.now
    with mock.patch.object(timezone, "now", lambda: real() + offset):
        yield
