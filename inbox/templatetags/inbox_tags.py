"""Template helpers for the reviewer pages."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext, pgettext

from inbox import forms, markdown, timefmt
from inbox.names import display_name, full_name
from inbox.reasons import sentence_gap, tightened

register = template.Library()


@register.filter
def joined(value: Iterable[Any]) -> str:
    """A list in a sentence with the reader's language's separator ("Alice, Bob";
    "Alice、Bob"), as `inbox.forms.joined` words lists of file names. Not marked safe: the
    template escapes the whole, names and all."""
    return forms.joined(str(item) for item in value)


@register.filter(is_safe=True)
def tight(sentence: str, value: Any) -> str:
    """`{% filter tight:who %}{% blocktranslate with who=who %}…{% endblocktranslate %}
    {% endfilter %}`: a sentence whose value may be Chinese, without the spaces between the
    value and the Chinese around it (`inbox.reasons.tightened`)."""
    return tightened(sentence, value)


@register.simple_tag(name="sentence_gap")
def sentence_gap_tag() -> str:
    """`{% sentence_gap %}` between two sentences: a space, none in Chinese."""
    return sentence_gap()


@register.filter(name="display_name")
def display_name_filter(user: Any) -> str:
    """A person as the inbox names them (`inbox.names.display_name`): "张敏", "Alice Smith"."""
    return display_name(user)


@register.filter(name="full_name")
def full_name_filter(user: Any) -> str:
    """A person's name as the inbox writes it (`inbox.names.full_name`: "张敏", "Alice Smith"),
    "" when they gave none: for a page that shows their username beside it."""
    return full_name(user.first_name, user.last_name) if user is not None else ""


@register.filter
def status_label(form: Any, as_guest: bool = False) -> str:
    """A form's status as its page's badge names it; a guest reads the workflow's words, never
    Dify's name ("Gone from Dify" is "No longer available" to them)."""
    status = form.status_now
    if as_guest and status == "gone":
        return gettext("No longer available")
    if as_guest and status == "not_answerable":
        return gettext("Answered another way")
    if status == "expired" and form.closed_by_run_end:
        # Its run was stopped or failed while it waited: no timeout was reached.
        return pgettext("a form closed by its run's end", "Closed")
    return str(form.status_now_label)


@register.filter
def relative(value: dt.datetime | None) -> str:
    return timefmt.relative(value)


@register.filter
def reltime(value: dt.datetime | None) -> SafeString:
    """A time said relative to now ("in 5 hours"), in a <time> the page's script keeps current,
    its date and time in the title. For a sentence around it: `{% blocktranslate with
    when=value|reltime %}Arrived {{ when }}{% endblocktranslate %}`, so each language puts the
    time where its grammar wants it."""
    if value is None:
        return mark_safe("")
    return format_html(
        '<time datetime="{}" data-rel title="{}">{}</time>',
        timezone.localtime(value).isoformat(),
        timefmt.absolute(value),
        timefmt.relative(value),
    )


@register.filter
def abstime(value: dt.datetime | None) -> str:
    """A date and time in the reader's zone, naming the zone (`timefmt.absolute`)."""
    return timefmt.absolute(value) if value is not None else ""


@register.filter
def urgent(value: dt.datetime | None) -> bool:
    return timefmt.is_urgent(value)


@register.filter
def is_past(value: dt.datetime | None) -> bool:
    from django.utils import timezone

    return value is not None and value <= timezone.now()


@register.filter
def md(value: str) -> SafeString:
    """Untrusted Markdown as sanitized HTML."""
    return markdown.render_markdown(value or "")


@register.filter
def excerpt(value: str) -> str:
    return markdown.excerpt(value or "")


@register.filter
def shorten(value: Any, length: int) -> str:
    """At most `length` characters, the last an ellipsis when cut: one character in every
    language (Django's `truncatechars` ends in "..." in its Chinese catalogue)."""
    text = str(value)
    return text if len(text) <= length else text[: max(0, length - 1)].rstrip() + "…"


@register.filter
def filesize(value: int | None) -> str:
    """Bytes in the units people read: 820 KB, 3.4 MB."""
    if value is None:
        return ""
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" or size >= 100 else f"{size:.1f} {unit}"
        size /= 1024
    return ""


@register.filter
def as_text(value: Any) -> str:
    """A run output value as readable text: strings as they are, the rest as indented JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


@register.filter
def input_text(value: Any) -> str:
    """A start input's value as the person who started the run chose it: a ticked box reads
    "Yes" in the reader's language, not JSON's `true`."""
    if isinstance(value, bool):
        return gettext("Yes") if value else gettext("No")
    return as_text(value)


@register.filter
def pairs(value: Any) -> list[tuple[Any, Any]]:
    """A dict's (key, value) pairs. `{% for k, v in d.items %}` looks up a key named "items"
    first: a run whose outputs or inputs have one (an ordinary name) would break the page."""
    return list(value.items()) if isinstance(value, dict) else []
