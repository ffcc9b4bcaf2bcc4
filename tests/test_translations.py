"""Everything reviewers read exists in Simplified Chinese: the catalogue covers every string in
the code and templates, nothing is left fuzzy, and the compiled catalogue matches it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

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
            "Dify 拒绝了该决定（403 forbidden）\uff1atoken *** is not allowed"  # noqa: RUF001
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
        (
            {"seconds": 59},
            "in less than a minute",
            "\u4e0d\u5230\u4e00\u5206\u949f\u540e",
        ),  # due within the minute
        ({"seconds": -59}, "just now", "刚刚"),  # happened within the minute
        ({"seconds": 0}, "just now", "刚刚"),
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


def _chinese_catalog() -> dict[str, str]:
    """Each entry's English (a plural's singular) and its Chinese, from the compiled catalogue."""
    import gettext

    from django.conf import settings

    mo = Path(settings.BASE_DIR) / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.mo"
    with mo.open("rb") as handle:
        catalog = gettext.GNUTranslations(handle)._catalog  # type: ignore[attr-defined]
    return {
        (key[0] if isinstance(key, tuple) else key).split("\x04")[-1]: text
        for key, text in catalog.items()
        if key
    }


def test_chinese_is_spaced_from_latin_words_numbers_and_placeholders() -> None:
    """One space between Chinese and a Latin word, a number or a placeholder ("在 Dify 中",
    "由 %(who)s 提交"); none beside full-width punctuation (a full-width bracket, comma or stop
    touches what it follows and precedes). Relative times are Chinese words, written as the
    browser's Intl.RelativeTimeFormat writes them ("2分钟后"), and so are the dashboard's
    durations beside them: their placeholders touch the words."""
    import re

    han = "[\u3400-\u4dbf\u4e00-\u9fff]"
    latin = r"(?:[A-Za-z0-9]|%\(\w+\)(?:\.\d)?[sdfg]|\{\w*\})"
    relative = re.compile(r"%\((?:time_left|time|when)\)s|\{when\}")
    compact = {"%(n)d s", "%(n)d min", "%(n).1f h", "%(n).1f d", "in %(time)s", "%(time)s ago"}
    full_width = "\uff0c\u3002\uff1a\uff1b\uff08\uff09\u300c\u300d\u3001\uff01\uff1f\u201c\u201d"
    wrong = []
    for english, chinese in _chinese_catalog().items():
        if english in compact or "\n" in english:
            continue
        text = chinese
        if re.search(r"Arrived|Decided|Expires|expires|Try again %\(when\)s|ask again", english):
            text = relative.sub("\u73b0\u5728", text)  # stands in for the Chinese words it says
        touching = re.search(f"{han}{latin}|{latin}{han}", text)
        cramped = re.search(f" [{full_width}]|[{full_width}] ", text)
        if touching or cramped:
            wrong.append(chinese)
    assert wrong == []


def test_one_word_for_each_thing() -> None:
    """A reviewer is 审批人 and answering a form 作答 wherever they are named."""
    catalog = _chinese_catalog()
    assert catalog["reviewer"] == catalog["Reviewer"] == "\u5ba1\u6279\u4eba"
    assert catalog["Answered elsewhere"] == "\u5df2\u5728\u522b\u5904\u4f5c\u7b54"
    for other in ("\u5ba1\u9605\u8005", "\u5ba1\u6838\u4eba", "\u56de\u590d"):
        assert [t for t in catalog.values() if other in t] == [], other


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


def test_a_message_about_a_field_or_file_uses_the_languages_colon() -> None:
    from django import forms
    from django.template import Context, Template
    from django.utils import translation

    from inbox.reasons import labelled

    template = Template(
        "{% load i18n %}{% blocktranslate with label=label message=message %}"
        "{{ label }}: {{ message }}{% endblocktranslate %}"
    )
    with translation.override("en"):
        assert labelled("Customer name", "This field is required.") == (
            "Customer name: This field is required."
        )
    with translation.override("zh-hans"):
        required = str(forms.Field.default_error_messages["required"])  # Django's own
        assert labelled("Customer name", required) == "Customer name\uff1a" + required
        assert labelled("客户名称", required) == "客户名称\uff1a" + required
        # The pages' error summaries say it the same way.
        context = Context({"label": "report.pdf", "message": required})
        assert template.render(context) == "report.pdf\uff1a" + required


def test_a_chinese_value_in_a_chinese_sentence_is_not_spaced_and_a_latin_one_is() -> None:
    from django.template import Context, Template
    from django.utils import translation
    from django.utils.safestring import SafeData, mark_safe

    from inbox.reasons import Reason, tightened, translated, worded

    with translation.override("zh-hans"):
        assert tightened("由 张三 发起", "张三") == "由张三发起"
        assert tightened("由 Alice 发起", "Alice") == "由 Alice 发起"
        assert tightened("张三、李四 也在查看此表单", "张三、李四") == "张三、李四也在查看此表单"
        # Only the spaces at a value's ends: Dify's own words keep theirs, and so does the
        # sentence where no value meets it.
        assert (
            tightened("张三 选择了“批准 退款”。", "张三", "批准 退款") == "张三选择了“批准 退款”。"
        )
        assert worded("%(who)s 选择了\uff1a%(action)s。", who="一位审批人", action="批准 退款") == (
            "一位审批人选择了\uff1a批准 退款。"
        )
        # Safe HTML stays safe, its value matched as it was escaped.
        html = tightened(mark_safe("由 张&lt;三 发起"), "张<三")
        assert isinstance(html, SafeData) and html == "由张&lt;三发起"
        template = Template(
            "{% load i18n inbox_tags %}{% filter tight:who %}{% blocktranslate %}"
            "Started by {{ who }}{% endblocktranslate %}{% endfilter %}"
        )
        assert template.render(Context({"who": "张三"})) == "由张三发起"
        assert template.render(Context({"who": "Ada <3"})) == "由 Ada &lt;3 发起"
        reason = Reason("Started by %(who)s", who="张三")
        assert translated(str(reason), reason.parts()) == "由张三发起"
    with translation.override("en"):
        # Only Chinese loses spaces: another language's text is as its catalogue writes it.
        assert tightened("由 张三 发起", "张三") == "由 张三 发起"


@pytest.mark.django_db
def test_pages_name_a_chinese_speaking_colleague_without_spaces_around_their_name(
    client: Client,
) -> None:
    from django.contrib.auth.models import User

    from inbox.models import ClaimRefused, DifyApp, Form, Run

    app = DifyApp.objects.create(name="退款审批", base_url="http://127.0.0.1:9/v1", api_key="k-1")
    chinese = User.objects.create_user("zhang", first_name="张三", is_staff=True)
    latin = User.objects.create_user("ada", first_name="Ada", is_staff=True)
    for starter, expected in ((chinese, "由张三发起"), (latin, "由 Ada 发起")):
        run = Run.objects.create(app=app, dify_user="u", started_by=starter, workflow_run_id="")
        client.force_login(starter)
        page = client.get(f"/runs/{run.public_id}/", HTTP_ACCEPT_LANGUAGE="zh-hans")
        assert expected in page.content.decode()
        # The app's Chinese name in the page's heading, as in its title.
        assert "<h1>退款审批的运行</h1>" in page.content.decode()
    form = Form.objects.create(run=run, form_id="f-1", form_token="t-1", definition={})
    form.claim(chinese)
    from django.utils import translation

    with translation.override("zh-hans"), pytest.raises(ClaimRefused) as refused:
        Form.objects.get(pk=form.pk).claim(latin)
    assert str(refused.value) == "张三已接手此表单。"


def test_a_time_left_in_chinese_reads_with_now_as_with_a_duration() -> None:
    """The time left may be "现在" (under a minute) or "2天后": "将于现在过期" is not Chinese,
    "现在过期" and "2天后过期" both are."""
    wrong = [
        chinese
        for english, chinese in _chinese_catalog().items()
        if "%(time_left)s" in english and "\u4e8e" in chinese.split("%(time_left)s")[0][-9:]
    ]
    assert wrong == []
