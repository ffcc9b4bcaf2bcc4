"""People are named one way everywhere: a Chinese name family name first, with no space."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import translation

from inbox.accounts import password_reset_email
from inbox.admin import ReassignForm
from inbox.models import (
    ApiToken,
    AuditEntry,
    ClaimRefused,
    DifyApp,
    Form,
    FormRecipient,
    Route,
)
from inbox.names import chooser_label, display_name, full_name
from inbox.notify import _handler
from tests.review.conftest import make_form

ZH = {"HTTP_ACCEPT_LANGUAGE": "zh-hans"}


def test_a_chinese_name_is_family_name_first_without_a_space() -> None:
    assert full_name("敏", "张") == "张敏"
    assert full_name("Alice", "Smith") == "Alice Smith"
    assert full_name("敏", "") == "敏"
    assert full_name("", "张") == "张"
    assert full_name(" ", "") == ""
    assert display_name(User(username="zhangmin", first_name="敏", last_name="张")) == "张敏"
    assert display_name(User(username="ada")) == "ada"
    assert chooser_label(User(username="zhangmin", first_name="敏", last_name="张")) == (
        "张敏 (zhangmin)"
    )
    assert chooser_label(User(username="ada")) == "ada"
    with translation.override("zh-hans"):
        assert chooser_label(User(username="liuyang", first_name="洋", last_name="刘")) == (
            "刘洋\uff08liuyang\uff09"
        )


def _chinese_reviewers(group: Group) -> tuple[User, User]:
    zhangmin = User.objects.create_user("zhangmin", first_name="敏", last_name="张")
    liuyang = User.objects.create_user("liuyang", first_name="洋", last_name="刘")
    for user in (zhangmin, liuyang):
        user.groups.add(group)
    return zhangmin, liuyang


def test_pages_and_the_api_name_a_chinese_reviewer_family_name_first(
    client: Client, dify_app: DifyApp, reviewer: User, reviewers_group: Group
) -> None:
    zhangmin, liuyang = _chinese_reviewers(reviewers_group)
    form = make_form(dify_app)
    # Zhang Min opens the form (seen reviewing it) and takes it.
    client.force_login(zhangmin)
    header = client.get(f"/forms/{form.public_id}/", **ZH).content.decode()
    assert '<a class="whoami"' in header and ">张敏<span" in header
    form.claim(zhangmin)
    client.force_login(liuyang)
    page = client.get(f"/forms/{form.public_id}/", **ZH).content.decode()
    assert "已由张敏接手" in page and "张敏也在查看此表单" in page
    assert "敏 张" not in page
    inbox = client.get("/", **ZH).content.decode()
    assert "张敏" in inbox and "敏 张" not in inbox
    _token, raw = ApiToken.issue(liuyang)
    listed = client.get("/api/v1/forms", HTTP_AUTHORIZATION=f"Bearer {raw}").json()
    assert listed["results"][0]["claimed_by"] == {"username": "zhangmin", "name": "张敏"}
    with translation.override("zh-hans"), pytest.raises(ClaimRefused) as refused:
        Form.objects.get(pk=form.pk).claim(liuyang)
    assert str(refused.value) == "张敏已接手此表单。"
    # A reminder to another reviewer says who is handling it, named the same way.
    recipient = FormRecipient(form=form, user=liuyang, email="liuyang@example.com")
    assert _handler(form, recipient) == "张敏"


def test_a_decision_keeps_its_reviewers_name_family_name_first(
    client: Client, admin_user: User, dify_app: DifyApp, reviewers_group: Group
) -> None:
    _zhangmin, liuyang = _chinese_reviewers(reviewers_group)
    form = make_form(
        dify_app,
        definition={
            "form_content": "Refund?",
            "inputs": [],
            "user_actions": [{"id": "approve", "title": "Approve", "button_style": "primary"}],
        },
    )
    decision = form.decide(action_id="approve", inputs={}, reviewer=liuyang)
    assert decision.reviewer_name == "刘洋"
    assert decision.decider_label == "刘洋"
    client.force_login(admin_user)
    listed = client.get("/admin/inbox/decision/", **ZH).content.decode()
    assert "刘洋" in listed and "洋 刘" not in listed
    page = client.get(f"/forms/{form.public_id}/", **ZH).content.decode()
    assert "洋 刘" not in page
    liuyang.delete()
    decision.refresh_from_db()
    assert decision.decider_label == "刘洋"


def test_the_admins_user_choosers_give_name_and_username(
    client: Client, admin_user: User, dify_app: DifyApp, reviewers_group: Group
) -> None:
    _chinese_reviewers(reviewers_group)
    labels = [label for _value, label in ReassignForm().fields["to_user"].choices]
    assert "张敏 (zhangmin)" in labels and "admin" in labels
    client.force_login(admin_user)
    route = Route.objects.get(app=dify_app)
    page = client.get(f"/admin/inbox/route/{route.pk}/change/").content.decode()
    assert ">刘洋 (liuyang)</option>" in page
    forms_list = client.get("/admin/inbox/form/").content.decode()
    assert "张敏 (zhangmin)" in forms_list


def test_the_admin_names_holders_assignees_and_route_members_with_their_usernames(
    client: Client, admin_user: User, dify_app: DifyApp, reviewers_group: Group
) -> None:
    """The lists' columns, the reassign page and a route's save message name people as the
    choosers do: "王芳 (wang)", not the username alone."""
    wang = User.objects.create_user("wang", first_name="芳", last_name="王")
    alice = User.objects.create_user("alice", first_name="Alice", last_name="Smith")
    gone = User.objects.create_user("gone", first_name="Gina", last_name="Old", is_active=False)
    form = make_form(dify_app)
    form.claim(wang)
    form.assigned_users.add(alice)
    client.force_login(admin_user)
    listed = client.get("/admin/inbox/form/").content.decode()
    assert '<td class="field-holder">王芳 (wang)</td>' in listed
    assert '<td class="field-assignees">Alice Smith (alice), @reviewers</td>' in listed
    reassign = client.post(
        "/admin/inbox/form/",
        {"action": "reassign", "_selected_action": [form.pk], "index": "0"},
    ).content.decode()
    assert "<td>王芳 (wang)</td><td>Alice Smith (alice), @reviewers</td>" in reassign
    route = Route.objects.get(app=dify_app)
    route.users.add(gone)
    saved = client.post(
        f"/admin/inbox/route/{route.pk}/change/",
        {
            "app": dify_app.pk,
            "name": route.name,
            "node": route.node,
            "priority": route.priority,
            "is_active": "on",
            "groups": [g.pk for g in route.groups.all()],
            "users": [gone.pk],
            "language": route.language or "en",
            "reminders": "",
            "recipients-TOTAL_FORMS": "0",
            "recipients-INITIAL_FORMS": "0",
        },
        follow=True,
        **ZH,
    ).content.decode()
    assert "Gina Old\uff08gone\uff09" in saved and "\uff1agone" not in saved
    routes = client.get("/admin/inbox/route/").content.decode()
    assert "Gina Old (gone)" in routes


def test_the_admins_searches_find_people_by_the_name_they_are_shown_by(
    client: Client, admin_user: User, dify_app: DifyApp
) -> None:
    wang = User.objects.create_user("wang", first_name="芳", last_name="王")
    lead = User.objects.create_user("lead", first_name="Min", last_name="Zhang")
    form = make_form(dify_app)
    form.claim(wang)
    other = make_form(dify_app)
    other.assigned_users.add(lead)
    client.force_login(admin_user)

    def forms(q: str) -> set[str]:
        page = client.get("/admin/inbox/form/", {"q": q}).content.decode()
        return {str(f.public_id) for f in (form, other) if f"/admin/inbox/form/{f.pk}/" in page}

    assert forms("王芳") == forms("wang") == {str(form.public_id)}
    assert forms("Min Zhang") == forms("zhang min") == {str(other.public_id)}
    users = client.get("/admin/auth/user/", {"q": "王芳"}).content.decode()
    assert f"/admin/auth/user/{wang.pk}/change/" in users
    assert f"/admin/auth/user/{lead.pk}/change/" not in users


def test_the_anonymise_page_a_password_email_and_the_erasure_name_her_as_decisions_do(
    client: Client, admin_user: User, dify_app: DifyApp
) -> None:
    """Li Na is 李娜 on the anonymise confirmation and in her password email, as her decisions
    name her, never Django's "娜 李"; anonymising her takes 李娜 out of the trail's entries."""
    lena = User.objects.create_user("lena", "lena@example.cn", first_name="娜", last_name="李")
    form = make_form(dify_app)
    decision = form.decide(action_id="approve", inputs={}, reviewer=lena)
    assert decision.reviewer_name == "李娜"
    noted = AuditEntry.record("form_reassigned", form, actor=admin_user, asked_by="李娜")

    mail = password_reset_email(lena, "zh-hans")
    assert "李娜" in mail.body and "娜 李" not in mail.body

    client.force_login(admin_user)
    data = {"action": "anonymise", "_selected_action": [str(lena.pk)]}
    page = client.post("/admin/auth/user/", data).content.decode()
    assert "This cannot be undone." in page
    assert "<li>lena (李娜) → former-" in page and "娜 李" not in page
    client.post("/admin/auth/user/", {**data, "confirm": "yes"})
    noted.refresh_from_db()
    assert noted.details["asked_by"] == f"former-{lena.pk}"
