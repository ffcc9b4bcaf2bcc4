"""Everything reviewers read exists in Simplified Chinese: the catalogue covers every string in
the code and templates, nothing is left fuzzy, and the compiled catalogue matches it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PO = Path("locale/zh_Hans/LC_MESSAGES/django.po")
MO = PO.with_suffix(".mo")

pytestmark = pytest.mark.smoke


def _statistics(po: Path) -> str:
    done = subprocess.run(
        ["msgfmt", "--statistics", "-o", "/dev/null", str(po)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stderr.strip()


def test_every_string_in_the_code_is_translated(tmp_path: Path) -> None:
    # makemessages on a copy, so the tree under test is left as it is.
    for name in ("inbox", "templates", "locale"):
        shutil.copytree(
            ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    shutil.copy(ROOT / "manage.py", tmp_path / "manage.py")
    done = subprocess.run(
        [sys.executable, "manage.py", "makemessages", "-l", "zh_Hans", "--no-obsolete", "-v0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    stats = _statistics(tmp_path / PO)
    assert "untranslated" not in stats and "fuzzy" not in stats, (
        f"{stats}: run `python manage.py makemessages -l zh_Hans` and translate what is new"
    )


def test_the_compiled_catalogue_matches_the_source(tmp_path: Path) -> None:
    assert "untranslated" not in _statistics(ROOT / PO)
    fresh = tmp_path / "django.mo"
    subprocess.run(["msgfmt", "-o", str(fresh), str(ROOT / PO)], check=True)

    def dump(mo: Path) -> str:
        return subprocess.run(
            ["msgunfmt", str(mo)], capture_output=True, text=True, check=True
        ).stdout

    assert dump(ROOT / MO) == dump(fresh), "run `python manage.py compilemessages`"


def test_a_reason_is_stored_in_english_and_read_in_the_active_language() -> None:
    from django.utils import translation

    from inbox.reasons import Reason, stored, translated

    reason = Reason(
        "Dify refused the decision (%(status)s %(code)s): %(message)s",
        status=403,
        code="forbidden",
        message="token tok-123 is not allowed",
    )
    text, parts = stored(reason, lambda t: t.replace("tok-123", "***"))
    assert text == "Dify refused the decision (403 forbidden): token *** is not allowed"
    assert "tok-123" not in str(parts)
    with translation.override("zh-hans"):
        assert translated(text, parts) == (
            "Dify 拒绝了该决定（403 forbidden）：token *** is not allowed"  # noqa: RUF001
        )
        # A row written before parts were kept: its fixed reason is looked up as it is; words
        # the catalogue does not know (Dify's) read as written.
        assert translated("The form is no longer open.", {}) == "此表单已不再开放。"
        assert translated("Missing required inputs: note", {}) == "Missing required inputs: note"
        # Parts out of step with the catalogue's message still give the English text.
        assert translated(text, {"message": parts["message"], "values": {"n": 1}}) == text
    with translation.override("en"):
        assert translated(text, parts) == text
    # A plain text (Dify's words) is kept with no parts.
    assert stored("Missing required inputs: note") == ("Missing required inputs: note", {})


@pytest.mark.parametrize(
    ("delta", "english", "chinese"),
    [
        ({"seconds": 59}, "now", "现在"),  # before and after alike
        ({"minutes": 60}, "in 60 minutes", "60分钟后"),
        ({"minutes": 90}, "in 90 minutes", "90分钟后"),
        ({"hours": 2, "minutes": 5}, "in 2 hours", "2小时后"),
        ({"hours": 4, "minutes": 59, "seconds": 58}, "in 5 hours", "5小时后"),
        ({"hours": 47, "minutes": 59}, "in 48 hours", "48小时后"),
        ({"days": 2}, "in 2 days", "2天后"),
        ({"days": 2, "hours": 13}, "in 3 days", "3天后"),
        ({"hours": -3}, "3 hours ago", "3小时前"),
    ],
)
def test_a_time_left_reads_in_the_largest_unit_there_are_two_of_rounded(
    delta: dict[str, int], english: str, chinese: str
) -> None:
    """A deadline 47 hours off is not "in 1 day"; the page's script words it the same way."""
    import datetime as dt

    from django.utils import translation

    from inbox.timefmt import relative

    now = dt.datetime(2030, 1, 1, 12, tzinfo=dt.UTC)
    for language, expected in (("en", english), ("zh-hans", chinese)):
        with translation.override(language):
            assert relative(now + dt.timedelta(**delta), now) == expected


def test_no_translation_holds_a_placeholder_its_english_does_not() -> None:
    """A translation pasted into the wrong entry shows, raw, a placeholder its text is never
    given (a "%(status)s" on a page that fills in nothing)."""
    import gettext
    import re

    from django.conf import settings

    placeholder = re.compile(r"%\((\w+)\)[sdfr]|\{\{\s*(\w+)\s*\}\}")
    mo = Path(settings.BASE_DIR) / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.mo"
    with mo.open("rb") as handle:
        catalog = gettext.GNUTranslations(handle)._catalog  # type: ignore[attr-defined]
    wrong = []
    for key, text in catalog.items():
        # A plural's translation may use its plural form's placeholders, which the compiled
        # catalog does not keep (msgfmt --check-format checks those): singular entries here.
        if isinstance(key, tuple) or not key:
            continue
        msgid = key
        given = {m.group(1) or m.group(2) for m in placeholder.finditer(msgid)}
        used = {m.group(1) or m.group(2) for m in placeholder.finditer(text)}
        if used - given:
            wrong.append((msgid[:60], sorted(used - given)))
    assert wrong == []


def test_lists_join_with_the_languages_separator() -> None:
    from django.template import Context, Template
    from django.utils import translation

    from inbox.forms import joined

    template = Template("{% load inbox_tags %}{{ names|joined }}")
    names = ["Alice", "<b>Bob</b>"]
    with translation.override("en"):
        assert joined(names) == "Alice, <b>Bob</b>"
        assert template.render(Context({"names": names})) == "Alice, &lt;b&gt;Bob&lt;/b&gt;"
    with translation.override("zh-hans"):
        assert joined(names) == "Alice\u3001<b>Bob</b>"
        assert template.render(Context({"names": names})) == "Alice\u3001&lt;b&gt;Bob&lt;/b&gt;"
