"""A reviewer's language (`ReviewerProfile.language`): chosen by an administrator or by them with
the language switch, it follows them to every browser and keeps their emails in it; what a
browser merely asks for (Accept-Language) is a guess, kept only until a language is chosen."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.test import Client

from inbox.models import DifyApp, ReviewerProfile
from tests.reach.factories import make_form, route

ENGLISH_BROWSER = {"HTTP_ACCEPT_LANGUAGE": "en-US,en;q=0.9"}
CHINESE_BROWSER = {"HTTP_ACCEPT_LANGUAGE": "zh-CN,zh;q=0.9"}


def sign_in(client: Client, username: str, password: str, **extra: Any) -> Any:
    response = client.post(
        "/accounts/login/", {"username": username, "password": password}, **extra
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    return response


def page_language(client: Client, path: str = "/", **extra: Any) -> str:
    page = client.get(path, **extra)
    assert page.status_code == 200
    html = page.content.decode()
    return html.split('<html lang="', 1)[1].split('"', 1)[0]


def profile(user: User) -> tuple[str, bool]:
    made = ReviewerProfile.objects.get(user=user)
    return made.language, made.language_chosen


def test_the_language_an_administrator_gives_follows_the_reviewer_to_an_english_browser(
    admin_client: Client,
    reviewer: User,
    reach_app: DifyApp,
    reviewers_group: Group,
) -> None:
    added = admin_client.post(
        "/admin/inbox/reviewerprofile/add/",
        {"user": reviewer.pk, "language": "zh-hans", "time_zone": ""},
    )
    assert added.status_code == 302, added.content.decode()[:3000]
    assert profile(reviewer) == ("zh-hans", True)

    # She signs in from a browser that asks for English: the inbox is in Chinese, and the
    # browser keeps it.
    browser = Client()
    signed_in = sign_in(browser, "alice", "pw-alice-123", **ENGLISH_BROWSER)
    assert signed_in.cookies[settings.LANGUAGE_COOKIE_NAME].value == "zh-hans"
    assert page_language(browser, **ENGLISH_BROWSER) == "zh-hans"
    assert page_language(browser, "/runs/", **ENGLISH_BROWSER) == "zh-hans"
    # Her profile is not changed by what the browser asks for, so her emails stay Chinese.
    assert profile(reviewer) == ("zh-hans", True)
    route(reach_app, groups=[reviewers_group], email_reviewers=True, language="en")
    form = make_form(reach_app)
    assert form.recipients.get(user=reviewer).language == "zh-hans"


def test_a_page_asked_for_without_a_language_cookie_opens_in_the_chosen_language(
    client: Client, reviewer: User
) -> None:
    ReviewerProfile.remember(reviewer, "zh-hans", how=ReviewerProfile.CHOSEN)
    client.force_login(reviewer)  # a session begun elsewhere: no sign-in page, no cookie
    response = client.get("/", **ENGLISH_BROWSER)
    assert '<html lang="zh-hans">' in response.content.decode()
    assert response.cookies[settings.LANGUAGE_COOKIE_NAME].value == "zh-hans"
    assert profile(reviewer) == ("zh-hans", True)


def test_the_switch_used_in_one_browser_follows_the_reviewer_to_the_next(
    reviewer: User,
) -> None:
    first, second = Client(), Client()
    sign_in(first, "alice", "pw-alice-123", **ENGLISH_BROWSER)
    assert profile(reviewer) == ("en", False)  # a guess from the browser
    switched = first.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    assert switched.status_code == 302
    assert profile(reviewer) == ("zh-hans", True)
    first.post("/accounts/logout/")
    sign_in(first, "alice", "pw-alice-123", **ENGLISH_BROWSER)
    assert page_language(first, **ENGLISH_BROWSER) == "zh-hans"

    # Another browser, asking for English: Chinese still, and the profile stays.
    sign_in(second, "alice", "pw-alice-123", **ENGLISH_BROWSER)
    assert page_language(second, **ENGLISH_BROWSER) == "zh-hans"
    assert profile(reviewer) == ("zh-hans", True)

    # She switches back to English there: the first browser's cookie (Chinese) goes on showing
    # its pages in Chinese, but no longer decides her language; signing in there again is in
    # English.
    second.post("/i18n/setlang/", {"language": "en", "next": "/"})
    assert profile(reviewer) == ("en", True)
    assert page_language(first, "/runs/", **ENGLISH_BROWSER) == "zh-hans"
    assert profile(reviewer) == ("en", True)
    first.post("/accounts/logout/")
    sign_in(first, "alice", "pw-alice-123", **CHINESE_BROWSER)
    assert page_language(first, **CHINESE_BROWSER) == "en"
    assert profile(reviewer) == ("en", True)


def test_a_browser_s_guess_is_kept_until_a_language_is_chosen(
    reviewer: User, admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inbox import middleware

    chinese, english = Client(), Client()
    sign_in(chinese, "alice", "pw-alice-123", **CHINESE_BROWSER)
    assert page_language(chinese, **CHINESE_BROWSER) == "zh-hans"
    assert profile(reviewer) == ("zh-hans", False)
    # Nothing chosen: the next browser's guess replaces it, and no cookie is set for a guess.
    signed_in = sign_in(english, "alice", "pw-alice-123", **ENGLISH_BROWSER)
    assert settings.LANGUAGE_COOKIE_NAME not in signed_in.cookies
    assert page_language(english, **ENGLISH_BROWSER) == "en"
    assert profile(reviewer) == ("en", False)

    # An administrator chooses Chinese: the pages of a browser without a cookie follow.
    made = ReviewerProfile.objects.get(user=reviewer)
    changed = admin_client.post(
        f"/admin/inbox/reviewerprofile/{made.pk}/change/",
        {"user": reviewer.pk, "language": "zh-hans", "time_zone": ""},
    )
    assert changed.status_code == 302, changed.content.decode()[:3000]
    assert profile(reviewer) == ("zh-hans", True)
    # Read less than a minute ago in that session (pages and polls do not ask every time)...
    assert page_language(english, **ENGLISH_BROWSER) == "en"
    # ...and read again once that minute is over.
    monkeypatch.setattr(middleware, "CHOSEN_LANGUAGE_RECHECK_SECONDS", 0)
    assert page_language(english, **ENGLISH_BROWSER) == "zh-hans"
    assert profile(reviewer) == ("zh-hans", True)

    # Unticking "language chosen" (a checkbox left out of the post) gives the language back
    # to the browsers.
    unticked = admin_client.post(
        f"/admin/inbox/reviewerprofile/{made.pk}/change/",
        {"user": reviewer.pk, "language": "zh-hans", "time_zone": ""},
    )
    assert unticked.status_code == 302
    assert profile(reviewer) == ("zh-hans", False)


def test_a_language_kept_in_the_browser_before_becomes_the_reviewer_s_choice(
    client: Client, reviewer: User
) -> None:
    # She used the switch on the sign-in page; nothing was chosen for her before.
    client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/accounts/login/"})
    sign_in(client, "alice", "pw-alice-123", **ENGLISH_BROWSER)
    assert page_language(client, **ENGLISH_BROWSER) == "zh-hans"
    assert profile(reviewer) == ("zh-hans", True)


def test_the_profile_s_admin_says_what_its_language_is(
    admin_client: Client, reviewer: User
) -> None:
    made = ReviewerProfile.objects.create(user=reviewer)
    page = admin_client.get(f"/admin/inbox/reviewerprofile/{made.pk}/change/").content.decode()
    assert "Their language: the inbox's pages open in it in every browser" in page
    assert "last used" not in page
    chinese = admin_client.get(
        f"/admin/inbox/reviewerprofile/{made.pk}/change/", HTTP_ACCEPT_LANGUAGE="zh-hans"
    ).content.decode()
    assert "Their language" not in chinese and "Set by an administrator" not in chinese
