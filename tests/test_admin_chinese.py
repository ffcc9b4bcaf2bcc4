"""The Chinese admin reads Chinese: route and record titles, Django's gaps, permission names."""

from __future__ import annotations

import json

from django.contrib.auth.models import User
from django.test import Client
from django.utils import translation

from inbox.models import AuditEntry, DifyApp, Route
from tests.review.conftest import make_form

ZH = {"HTTP_ACCEPT_LANGUAGE": "zh-hans"}


def test_titles_of_routes_decisions_forms_and_entries_are_in_the_readers_language(
    dify_app: DifyApp, reviewer: User
) -> None:
    route = Route.objects.get(app=dify_app)
    form = make_form(dify_app)
    decision = form.decide(
        action_id="approve", inputs={"note": "ok", "decision": "refund"}, reviewer=reviewer
    )
    entry = AuditEntry.record("form_reassigned", form, actor=reviewer)
    with translation.override("zh-hans"):
        assert str(route) == "refunds · 默认 · default"
        assert str(decision) == f"Approve\uff08排队中\uff09· {decision.public_id}"
        assert str(form) == f"Manager approval\uff08{form.public_id}\uff09"
        assert "form_reassigned" not in str(entry) and str(form.public_id) in str(entry)


def test_the_chinese_admin_fills_djangos_gaps_and_names_permissions_in_chinese(
    client: Client, admin_user: User, dify_app: DifyApp, reviewer: User
) -> None:
    client.force_login(admin_user)
    index = client.get("/admin/", **ZH).content.decode()
    assert "审批收件箱" in index and "Django" not in index.split("<body")[1].split("</header>")[0]
    assert "模型名称" in index and "Model name" not in index
    add = client.get("/admin/auth/user/add/", **ZH).content.decode()
    assert "创建用户后" in add
    change = client.get(f"/admin/auth/user/{reviewer.pk}/change/", **ZH).content.decode()
    assert "Can reassign forms" not in change and "可以改派表单" in change
    form = make_form(dify_app)
    decision = form.decide(
        action_id="approve", inputs={"note": "ok", "decision": "refund"}, reviewer=reviewer
    )
    listed = client.get("/admin/inbox/decision/", **ZH).content.decode()
    assert '<td class="field-chosen_action">Approve</td>' in listed
    entry = AuditEntry.objects.filter(verb="form_decided").first() or AuditEntry.record(
        "form_reassigned", form, actor=admin_user
    )
    page = client.get(f"/admin/inbox/auditentry/{entry.pk}/change/", **ZH).content.decode()
    assert "创建时间" not in page and "field-verb" not in page and "field-what" in page
    assert decision.public_id


def test_the_admin_s_two_list_chooser_reads_chinese(client: Client, admin_user: User) -> None:
    """Django 5.2's chooser words (SelectFilter2.js) are missing from its own Chinese catalogue;
    the project's djangojs catalogue gives them."""
    client.force_login(admin_user)
    script = client.get("/admin/jsi18n/", **ZH).content.decode()
    start = script.index("const newcatalog = ") + len("const newcatalog = ")
    catalog = json.JSONDecoder().raw_decode(script[start:])[0]
    assert catalog["Choose all %s"] == "\u5168\u9009%s"
    assert (
        "\u79fb\u9664"
        in catalog['Remove %s by selecting them and then select the "Remove" arrow button.']
    )


def test_record_pages_show_empty_times_and_a_form_s_channels_and_reminders_in_words(
    client: Client, admin_user: User, dify_app: DifyApp, reviewer: User
) -> None:
    form = make_form(dify_app)
    form.approval_channels = ["webapp", "email"]
    form.reminder_offsets = [86400, 3120]
    form.save(update_fields=["approval_channels", "reminder_offsets"])
    decision = form.decide(
        action_id="approve", inputs={"note": "ok", "decision": "refund"}, reviewer=reviewer
    )
    client.force_login(admin_user)
    page = client.get(f"/admin/inbox/decision/{decision.pk}/change/", **ZH).content.decode()
    # Not delivered yet: its time is empty, not "None".
    assert "None" not in page.split('id="content"')[1]
    page = client.get(f"/admin/inbox/form/{form.pk}/change/", **ZH).content.decode()
    assert "1d, 52m" in page and "[86400" not in page
    assert "\u7f51\u9875\u5e94\u7528, \u90ae\u4ef6" in page and "webapp" not in page


def test_chinese_sentences_side_by_side_have_no_space_between_them(
    client: Client, admin_user: User, dify_app: DifyApp
) -> None:
    form = make_form(dify_app)
    client.force_login(admin_user)
    page = client.post(
        "/admin/inbox/form/",
        {"action": "reassign", "_selected_action": [form.pk]},
        **ZH,
    ).content.decode()
    assert "\u4e2a\u8868\u5355\u3002</strong>\u53ea\u6539\u6d3e" in page
    dashboard = client.get("/dashboard/", **ZH).content.decode()
    assert "\u5df2\u51b3\u5b9a\uff08" in dashboard and "\u5df2\u51b3\u5b9a (" not in dashboard


def test_djangos_default_permissions_are_named_in_chinese(
    client: Client, admin_user: User, reviewer: User
) -> None:
    client.force_login(admin_user)
    change = client.get(f"/admin/auth/user/{reviewer.pk}/change/", **ZH).content.decode()
    for english in ("Can add user", "Can change route", "Can add API token", "Can view run"):
        assert english not in change, english
    assert "可以添加用户" in change and "可以修改路由" in change and "可以吊销 API 令牌" in change
    english = client.get(f"/admin/auth/user/{reviewer.pk}/change/").content.decode()
    assert "Can add user" in english and "Can change route" in english
