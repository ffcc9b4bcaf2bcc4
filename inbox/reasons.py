"""Reasons written for people: stored in English, read in the reader's language.

A worker settles a decision in the site's language, while the reviewer who reads why may read
Chinese. So a reason is kept twice over: its English text (what administrators, logs, the audit
trail and the API see) and the message it was made from with its values, from which a page
writes it again in the reader's language. The values are shown as they are: Dify's words, an
action's title and an error's text are not ours to translate.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from django.utils.html import conditional_escape
from django.utils.safestring import SafeData, mark_safe
from django.utils.translation import get_language, gettext

# Chinese characters, and the full-width and CJK punctuation written beside them.
_CJK = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_IS_CJK = re.compile(f"[{_CJK}]")


def is_cjk(char: str) -> bool:
    """Whether `char` (one character, or "") is Chinese or its punctuation."""
    return _IS_CJK.match(char) is not None


def sentence_gap() -> str:
    """What goes between two sentences put side by side: a space, none after Chinese "。"."""
    return "" if (get_language() or "").startswith("zh") else " "


def tightened(text: str, *values: Any) -> str:
    """A sentence put together in Chinese, without the spaces its catalogue entry puts around a
    value where the value meets Chinese with Chinese: "由 Alice 发起" keeps them, "由 张三 发起"
    reads "由张三发起" (one space between Chinese and Latin words, none between Chinese ones).
    Only the spaces at the values' ends go: a value's own spaces (Dify's "批准 退款") stay, and
    other languages' text is as its catalogue writes it. Safe HTML stays safe, its values
    matched as escaped."""
    if not text or not (get_language() or "").startswith("zh"):
        return text
    safe = isinstance(text, SafeData)
    result = str(text)
    for value in values:
        shown = str(conditional_escape(value) if safe else value or "")
        if not shown or shown not in result:
            continue
        literal = re.escape(shown)
        if _IS_CJK.match(shown[0]):
            result = re.sub(f"(?<=[{_CJK}]) (?={literal})", "", result)
        if _IS_CJK.match(shown[-1]):
            result = re.sub(f"(?<={literal}) (?=[{_CJK}])", "", result)
    # Removing a space between two characters keeps safe HTML safe.
    return mark_safe(result) if safe else result  # noqa: S308


def worded(text: str, /, **values: Any) -> str:
    """`text` (already translated) with its values put in, `tightened` around them."""
    return tightened(text % values, *(v for v in values.values() if isinstance(v, str)))


def labelled(label: Any, message: Any) -> str:
    """`message` said of `label` ("Customer name: This field is required."), with the
    language's own colon: "客户名称\uff1a这个字段是必填项。" in Chinese."""
    return worded(gettext("%(label)s: %(message)s"), label=str(label), message=str(message))


class Refused(Exception):
    """Something asked of the inbox was not done. `message` is for the person who asked;
    `status` and `code` are how an API client is told (the inbox's own code, never Dify's);
    `retry_after` is set when it is worth asking again later; `dify_status` and `dify_code`
    when Dify answered with an error (its HTTP status and its own code), told beside ours.
    Subclasses name the verb."""

    # What a subclass says when its raiser does not say otherwise.
    default_status = 400
    default_code = "invalid_param"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "",
        retry_after: float | None = None,
        dify_status: int | None = None,
        dify_code: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = self.default_status if status is None else status
        self.code = code or self.default_code
        self.retry_after = retry_after
        self.dify_status, self.dify_code = dify_status, dify_code

    def details(self) -> dict[str, Any]:
        """What an API error carries beside the message: Dify's status and code, if it gave
        them."""
        details: dict[str, Any] = {}
        if self.dify_status is not None:
            details["dify_status"] = self.dify_status
        if self.dify_code:
            details["dify_code"] = self.dify_code
        return details


class Reason(str):
    """A reason's English text that remembers its message and values.

    `Reason(gettext_noop("... %(n)d ..."), n=3)` reads as the English sentence wherever a string
    is expected; `parts` is what a row stores beside it for `translated`.
    """

    message: str
    values: dict[str, Any]

    def __new__(cls, message: str, /, **values: Any) -> Reason:
        self = super().__new__(cls, message % values if values else message)
        self.message = message
        self.values = values
        return self

    def parts(self, redact: Callable[[str], str] = str) -> dict[str, Any]:
        """The message and its values as JSON, each text value passed through `redact` (a
        form's token never reaches a stored message, nor a value in one)."""
        return {
            "message": self.message,
            "values": {
                name: redact(value) if isinstance(value, str) else value
                for name, value in self.values.items()
            },
        }


def stored(reason: str, redact: Callable[[str], str] = str) -> tuple[str, dict[str, Any]]:
    """What a row keeps of `reason`: its English text and, for a `Reason`, its parts (empty for
    a plain text, which is shown as it was written: Dify's own words, an error's text)."""
    if not reason:
        return "", {}
    if isinstance(reason, Reason):
        return redact(str(reason)), reason.parts(redact)
    return redact(reason), {}


def translated(text: str, parts: Mapping[str, Any] | None) -> str:
    """`text` in the active language: its message translated and its values put back in. A text
    stored without parts is looked up in the catalogue as it is (the fixed reasons of rows
    written before parts were kept); one the catalogue does not know reads as written."""
    if not text:
        return ""
    message = (parts or {}).get("message")
    if not message:
        return gettext(text)
    values = (parts or {}).get("values") or {}
    try:
        return worded(gettext(message), **values) if values else gettext(message)
    except (KeyError, TypeError, ValueError):
        # A catalogue entry out of step with its values: the English text is still right.
        return text
