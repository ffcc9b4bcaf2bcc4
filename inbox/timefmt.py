"""Relative times ("in 3 hours", "5 minutes ago") in the reviewer's language.

The page's script refreshes these with the browser's Intl.RelativeTimeFormat, which words them
the same way, so the server's first rendering and the live updates agree.
"""

from __future__ import annotations

import datetime as dt
import functools

from django.utils import formats, timezone
from django.utils.translation import get_language, gettext, ngettext, pgettext

_UNITS = [(86400, "day"), (3600, "hour"), (60, "minute")]


def _unit_text(count: int, unit: str) -> str:
    if unit == "day":
        return ngettext("%(n)d day", "%(n)d days", count) % {"n": count}
    if unit == "hour":
        return ngettext("%(n)d hour", "%(n)d hours", count) % {"n": count}
    return ngettext("%(n)d minute", "%(n)d minutes", count) % {"n": count}


def span(length: dt.timedelta) -> str:
    """A length of time in its largest whole unit ("30 days", "2 hours"), at least a minute."""
    seconds = length.total_seconds()
    for size, unit in _UNITS:
        if seconds >= size:
            return _unit_text(int(seconds // size), unit)
    return _unit_text(1, "minute")


def relative(
    value: dt.datetime | None, now: dt.datetime | None = None, *, language: str | None = None
) -> str:
    """`language`: the active one unless given (a list of rows looks it up once)."""
    if value is None:
        return ""
    now = now or timezone.now()
    language = language or get_language()
    seconds = (value - now).total_seconds()
    magnitude = abs(seconds)
    if magnitude < 60:
        # Within a minute: "just now" ("刚刚") for what has happened, "in less than a minute"
        # for what is due (a form that expires in 40 seconds is not expiring "now").
        return _worded(language, 0, "", future=seconds > 0)
    # The largest unit of which there are at least two, rounded to the nearest: a deadline 47
    # hours away reads "in 47 hours", not "in 1 day", and one a reminder names a few seconds
    # after it was due ("24h before") reads "in 24 hours", not "in 23 hours".
    for size, unit in _UNITS:
        if magnitude >= 2 * size or unit == "minute":
            # Half up, as the page's script rounds (Math.round), not Python's half to even.
            return _worded(language, int(magnitude / size + 0.5), unit, future=seconds > 0)
    raise AssertionError("unreachable: the smallest unit is a minute")


@functools.lru_cache(maxsize=4096)
def _worded(language: str | None, count: int, unit: str, *, future: bool) -> str:
    """The words for one (language, amount, unit, direction); a list of fifty rows repeats a
    few of them, and translations do not change while the process runs."""
    if not unit:
        return (
            gettext("in less than a minute")
            if future
            else pgettext("a time within the last minute", "just now")
        )
    text = _unit_text(count, unit)
    if future:
        worded = gettext("in %(time)s") % {"time": text}
    else:
        worded = gettext("%(time)s ago") % {"time": text}
    if (language or "").lower().startswith("zh"):
        # As the browser says it (Intl.RelativeTimeFormat: "2分钟前"), which the page's
        # script writes over it: the same words before and after.
        worded = worded.replace(" ", "")
    return worded


def absolute(value: dt.datetime) -> str:
    """A date and time in the active zone, naming it ("Dec. 7, 2026, 2 p.m. Asia/Shanghai"):
    a page shows the reader's browser zone, an email its recipient's, and either may be read
    by someone elsewhere."""
    local = timezone.localtime(value)
    return f"{formats.date_format(local, 'DATETIME_FORMAT')} {timezone.get_current_timezone_name()}"


def to_the_second(value: dt.datetime) -> str:
    """A time as the admin and its audit trail show it: to the second, with its offset from UTC
    and the zone named in full ("2026-12-08 05:49:01 +08:00 (Asia/Shanghai)"), as
    `absolute` names it. An abbreviation ("CST") names several zones (China's, the US
    Central's); an offset and a zone's full name, one."""
    local = timezone.localtime(value)
    offset = local.utcoffset() or dt.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    zone = timezone.get_current_timezone_name()
    return f"{local:%Y-%m-%d %H:%M:%S} {sign}{hours:02d}:{minutes:02d} ({zone})"


def is_urgent(value: dt.datetime | None, now: dt.datetime | None = None) -> bool:
    """The last hour before a form expires: the list and the page turn it red."""
    if value is None:
        return False
    left = (value - (now or timezone.now())).total_seconds()
    return 0 < left <= 3600
