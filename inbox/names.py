"""How a person is named wherever the inbox shows one: pages, emails, the admin, the API, and
the name a decision keeps of its reviewer."""

from __future__ import annotations

import re
from typing import Any

from django.utils.translation import gettext

# Han ideographs, kana and Hangul: names written family name first, with no space.
_CJK_NAME = re.compile(
    "[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]"
)


def full_name(first_name: str, last_name: str) -> str:
    """A given name and a family name put together as the name is written: "Alice Smith", but
    "张敏" (family name first, no space) when either is written in Chinese, Japanese or Korean
    characters. "" when both are blank."""
    first, last = (first_name or "").strip(), (last_name or "").strip()
    if first and last and (_CJK_NAME.search(first) or _CJK_NAME.search(last)):
        return f"{last}{first}"
    return " ".join(part for part in (first, last) if part)


def display_name(user: Any) -> str:
    """The name a user is shown by (`full_name`), or their username when they gave none."""
    if user is None:
        return ""
    return full_name(user.first_name, user.last_name) or str(user.get_username())


def chooser_label(user: Any) -> str:
    """A user in a list to choose from: their name and their username ("张敏 (zhangmin)"), or
    the username alone when they have no name."""
    name = full_name(user.first_name, user.last_name)
    username = str(user.get_username())
    if not name or name == username:
        return username
    return gettext("%(name)s (%(username)s)") % {"name": name, "username": username}


def people_named(q: str) -> Any:
    """The accounts a search names by the name they are shown by (`full_name`): each word of
    `q` part of their given or family name ("alice", "Alice Smith", "Smith Alice"), or `q`
    part of their names written together, family name first or last ("王芳" for 王 芳, as a
    Chinese name is written). A query of the accounts alone (a few rows), for a search to
    match their records by id."""
    from django.contrib.auth import get_user_model
    from django.db.models import Q
    from django.db.models.functions import Concat, Trim

    words = q.split()
    if not words:
        return get_user_model().objects.none()
    found = Q()
    for word in words:
        found &= Q(first_name__icontains=word) | Q(last_name__icontains=word)
    people = get_user_model().objects.all()
    if len(words) == 1:
        people = people.annotate(
            family_given=Concat(Trim("last_name"), Trim("first_name")),
            given_family=Concat(Trim("first_name"), Trim("last_name")),
        )
        found |= Q(family_given__icontains=q) | Q(given_family__icontains=q)
    return people.filter(found)
