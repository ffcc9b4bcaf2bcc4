"""The signed link in an email: bound to one recipient of one form, expiring with the form,
single-use, and rate limited. A link that opens nothing shows why and nothing of the form."""

from __future__ import annotations

import datetime as dt
import html
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import Group, User
from django.core import signing
from django.test import Client, override_settings
from django.utils import timezone

from inbox import notify
from inbox.models import AuditEntry, Decision, DifyApp, Form, FormRecipient, Route
from tests.reach.conftest import GUEST, GUEST_ZH
from tests.reach.factories import make_form, route

FORM_TEXT = "Refund"  # in the form's content: a page that shows it leaked the form
RECEIPT = "https://files.example.org/receipt.pdf"


def decide(client: Client, link: str, action: str = "approve") -> object:
    return client.post(
        f"{link}decide", {"action": action, "in_note": "ok by me", "in_receipt": RECEIPT}
    )


def test_a_guest_opens_the_form_page_and_decides(
    client: Client, guest_link: str, routed_form: Form, guest_recipient: FormRecipient
) -> None:
    page = client.get(guest_link)
    assert page.status_code == 200
    body = page.content.decode()
    assert FORM_TEXT in body and f'action="{guest_link}decide"' in body
    assert page["Referrer-Policy"] == "same-origin" and page["Cache-Control"] == "no-store"
    guest_recipient.refresh_from_db()
    assert guest_recipient.link_opened_at is not None and guest_recipient.link_used_at is None
    response = decide(client, guest_link)
    assert response.status_code == 302 and response["Location"] == guest_link
    decision = Decision.objects.get(form=routed_form)
    assert decision.guest_email == GUEST and decision.reviewer is None
    assert decision.decider_label == GUEST
    entry = AuditEntry.objects.get(verb="decision_made")
    assert entry.actor is None and entry.actor_label == GUEST
    guest_recipient.refresh_from_db()
    assert guest_recipient.link_used_at is not None
    # The same browser still sees what happened to its decision.
    after = client.get(guest_link).content.decode()
    assert "Decision queued" in after and GUEST in after


def test_a_used_link_opens_nothing_in_another_browser(
    client: Client, guest_link: str, routed_form: Form
) -> None:
    decide(client, guest_link)
    other = Client()
    page = other.get(guest_link)
    assert page.status_code == 410
    body = page.content.decode()
    assert "This link was already used." in body and FORM_TEXT not in body
    assert "Manager approval" not in body
    assert other.post(f"{guest_link}decide", {"action": "reject"}).status_code == 410
    assert Decision.objects.filter(form=routed_form).count() == 1


@pytest.mark.parametrize("where", ["payload", "signature", "truncated"])
def test_an_altered_link_is_refused(client: Client, guest_link: str, where: str) -> None:
    token = guest_link.split("/")[2]
    if where == "payload":
        altered = ("A" if token[1] != "A" else "B").join([token[:1], token[2:]])
    elif where == "signature":
        altered = token[:-3] + ("xyz" if not token.endswith("xyz") else "abc")
    else:
        altered = token[: len(token) // 2]
    page = client.get(f"/r/{altered}/")
    assert page.status_code == 404
    body = page.content.decode()
    assert "This link is not valid." in body and FORM_TEXT not in body


def test_a_forged_link_for_another_form_is_refused(
    client: Client, guest_recipient: FormRecipient, reach_app: DifyApp
) -> None:
    other = make_form(reach_app, node_title="Other form")
    # Signed with another salt (what anyone without our key cannot do right either).
    forged = signing.dumps(
        {"f": other.public_id.hex, "r": guest_recipient.pk, "m": "0", "x": None}, salt="wrong"
    )
    assert client.get(f"/r/{forged}/").status_code == 404
    # Correctly signed, but the recipient belongs to another form.
    mixed = signing.dumps(
        {
            "f": other.public_id.hex,
            "r": guest_recipient.pk,
            "m": notify._email_tag(GUEST),
            "x": None,
        },
        salt=notify.LINK_SALT,
    )
    page = client.get(f"/r/{mixed}/")
    assert page.status_code == 404 and "Other form" not in page.content.decode()


def test_a_link_expires_with_its_form(client: Client, guest_link: str, routed_form: Form) -> None:
    later = routed_form.expiration_time + dt.timedelta(seconds=1)  # type: ignore[operator]
    with mock.patch("django.utils.timezone.now", return_value=later):
        page = client.get(guest_link)
    assert page.status_code == 410
    body = page.content.decode()
    assert "This link has expired." in body and FORM_TEXT not in body


def test_a_link_that_opens_nothing_says_why_in_the_email_s_language(
    client: Client, routed_form: Form
) -> None:
    chinese = routed_form.recipients.get(email=GUEST_ZH)
    link = notify.link_path(notify.link_token(chinese))
    later = routed_form.expiration_time + dt.timedelta(seconds=1)  # type: ignore[operator]
    with mock.patch("django.utils.timezone.now", return_value=later):
        page = client.get(link, HTTP_ACCEPT_LANGUAGE="en")
    assert page.status_code == 410
    assert '<html lang="zh-hans">' in page.content.decode()
    assert "This link has expired." not in page.content.decode()


@override_settings(INBOX_LINK_MAX_AGE_SECONDS=60)
def test_a_link_to_a_form_without_expiry_still_ages_out(
    client: Client, reach_route: Route, reach_app: DifyApp
) -> None:
    form = make_form(reach_app, expires_in=None)
    link = notify.link_path(notify.link_token(form.recipients.get(email=GUEST)))
    assert client.get(link).status_code == 200
    # The age is measured on the clock that ends a form (`check_link`'s `now`).
    later = timezone.now() + dt.timedelta(seconds=120)
    with mock.patch("django.utils.timezone.now", return_value=later):
        page = client.get(link)
    assert page.status_code == 410 and "This link has expired." in page.content.decode()


def test_links_emailed_before_the_secret_key_changed_open_while_the_old_key_is_a_fallback(
    client: Client, guest_recipient: FormRecipient, settings: Any
) -> None:
    settings.SECRET_KEY = "the-key-the-email-was-signed-with-" + "o" * 20
    token = notify.link_token(guest_recipient)
    link = notify.link_path(token)
    settings.SECRET_KEY = "the-key-of-today-" + "n" * 40
    # Dropped at once, every link already emailed would open nothing.
    assert notify.check_link(token).state == "invalid"
    settings.SECRET_KEY_FALLBACKS = ["the-key-the-email-was-signed-with-" + "o" * 20]
    assert client.get(link).status_code == 200


INVALID = "This link is not valid."
OPEN_AGAIN = "Open it again from the email, in full."
ASK_AGAIN = (
    "If it still does not open, it may no longer be accepted: ask the person who runs the "
    "workflow to send you a new link."
)


@pytest.mark.parametrize(
    ("language", "words"),
    [
        ("en", (INVALID, OPEN_AGAIN, ASK_AGAIN)),
        (
            "zh-hans",
            (
                "此链接无效。",
                "请从邮件中重新完整地打开它。",
                "如果仍然打不开，此链接可能已不再有效：请让工作流的负责人给您发送一个新链接。",  # noqa: RUF001
            ),
        ),
    ],
)
def test_a_link_signed_with_a_key_since_dropped_says_opening_it_again_may_not_do(
    client: Client, guest_recipient: FormRecipient, settings: Any, language: str, words: tuple
) -> None:
    # Opened again in full, a link signed with a key no longer kept (SECRET_KEY changed without
    # SECRET_KEY_FALLBACKS) still does not open: the page says who can send a new one.
    settings.SECRET_KEY = "the-key-the-email-was-signed-with-" + "o" * 20
    link = notify.link_path(notify.link_token(guest_recipient))
    settings.SECRET_KEY = "the-key-of-today-" + "n" * 40
    page = client.get(link, HTTP_ACCEPT_LANGUAGE=language)
    assert page.status_code == 404
    body = html.unescape(page.content.decode())
    assert all(said in body for said in words), body
    assert FORM_TEXT not in body


def test_a_deleted_recipient_link_is_invalid(
    client: Client, guest_link: str, guest_recipient: FormRecipient
) -> None:
    guest_recipient.delete()
    assert client.get(guest_link).status_code == 404


def test_a_routed_reviewer_is_sent_to_the_normal_page(
    client: Client, guest_link: str, routed_form: Form, reviewer: User
) -> None:
    client.force_login(reviewer)
    response = client.get(guest_link)
    assert response.status_code == 302
    assert response["Location"] == f"/forms/{routed_form.public_id}/"


def test_a_recipient_with_an_account_signs_in(
    client: Client, reach_app: DifyApp, other_reviewer: User
) -> None:
    route(reach_app, recipients=["bob@example.com"], allow_guests=True)
    form = make_form(reach_app)
    link = notify.link_path(notify.link_token(form.recipients.get()))
    response = client.get(link)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next=/forms/{form.public_id}/"
    # Its sub-pages do not take a guest's decision for the account.
    refused = client.post(f"{link}decide", {"action": "approve"})
    assert refused.status_code == 403
    assert "Sign in to answer." in refused.content.decode()
    assert not Decision.objects.exists()
    client.force_login(other_reviewer)
    assert client.get(link)["Location"] == f"/forms/{form.public_id}/"


def test_a_signed_in_reader_of_an_account_s_link_is_told_what_stands_in_the_way(
    client: Client,
    reach_app: DifyApp,
    reviewers_group: Group,
    other_reviewer: User,
    outsider: User,
) -> None:
    route(reach_app, groups=[reviewers_group], email_reviewers=True, allow_guests=True)
    form = make_form(reach_app)
    link = notify.link_path(notify.link_token(form.recipients.get(email="bob@example.com")))
    # Someone else's account: not "sign in", which they are, but which account the link is for.
    client.force_login(outsider)
    page = client.get(link)
    body = page.content.decode()
    assert page.status_code == 403 and FORM_TEXT not in body
    assert "You are signed in as mallory, but this link was sent to" in body
    assert f'name="next" value="{link}"' in body
    # Its owner, taken off the group the form went to: no longer asked, not "sign in".
    other_reviewer.groups.clear()
    client.force_login(other_reviewer)
    page = client.get(link)
    body = page.content.decode()
    assert page.status_code == 403 and FORM_TEXT not in body
    assert "You are no longer asked to decide this form." in body and "Sign in" not in body


def test_guests_may_not_answer_unless_the_route_allows(client: Client, reach_app: DifyApp) -> None:
    route(reach_app, recipients=[GUEST], allow_guests=False)
    form = make_form(reach_app)
    link = notify.link_path(notify.link_token(form.recipients.get()))
    page = client.get(link)
    assert page.status_code == 403
    body = page.content.decode()
    assert "This form can only be answered by reviewers with an account." in body
    assert FORM_TEXT not in body
    assert client.post(f"{link}decide", {"action": "approve"}).status_code == 403


@pytest.mark.parametrize(
    "change",
    [
        "guests no longer allowed",
        "address taken off the route",
        "route switched off",
        "route deleted",
    ],
)
def test_a_route_changed_after_the_email_closes_the_links_already_sent(
    client: Client,
    guest_link: str,
    routed_form: Form,
    reach_route: Route,
    guest_recipient: FormRecipient,
    change: str,
) -> None:
    assert client.get(guest_link).status_code == 200
    if change == "guests no longer allowed":
        Route.objects.filter(pk=reach_route.pk).update(allow_guests=False)
    elif change == "address taken off the route":
        reach_route.recipients.filter(email=GUEST).delete()
    elif change == "route switched off":
        Route.objects.filter(pk=reach_route.pk).update(is_active=False)
    else:
        reach_route.delete()
    page = client.get(guest_link)
    assert page.status_code == 403 and FORM_TEXT not in page.content.decode()
    assert client.post(f"{guest_link}decide", {"action": "approve"}).status_code == 403
    assert not Decision.objects.exists()
    # The others the route still asks keep their links.
    if change == "address taken off the route":
        other = routed_form.recipients.exclude(pk=guest_recipient.pk).filter(user=None).get()
        assert Client().get(notify.link_path(notify.link_token(other))).status_code == 200


def test_a_reviewer_whose_account_is_deleted_may_not_answer_as_a_guest(
    client: Client, reach_app: DifyApp, other_reviewer: User
) -> None:
    route(reach_app, users=[other_reviewer], email_reviewers=True, allow_guests=True)
    form = make_form(reach_app)
    recipient = form.recipients.get(email="bob@example.com")
    assert recipient.user_id == other_reviewer.pk
    link = notify.link_path(notify.link_token(recipient))
    other_reviewer.delete()
    page = client.get(link)
    assert page.status_code == 403 and FORM_TEXT not in page.content.decode()
    assert client.post(f"{link}decide", {"action": "approve"}).status_code == 403


def test_the_guest_page_speaks_the_recipients_language(client: Client, routed_form: Form) -> None:
    recipient = routed_form.recipients.get(language="zh-hans")
    link = notify.link_path(notify.link_token(recipient))
    page = client.get(link).content.decode()
    assert '<html lang="zh-hans">' in page
    # A language the visitor picked wins.
    client.cookies["django_language"] = "en"
    assert '<html lang="en">' in client.get(link).content.decode()


def test_the_guest_page_shows_a_closed_form_to_the_recipient(
    client: Client, guest_link: str, routed_form: Form
) -> None:
    Form.objects.filter(pk=routed_form.pk).update(
        status=Form.Status.ANSWERED_ELSEWHERE, form_token="", filled_action_text="Approve"
    )
    page = client.get(guest_link)
    body = page.content.decode()
    assert page.status_code == 410
    assert "was answered elsewhere. Action: Approve." in body
    assert 'action="' + guest_link + 'decide"' not in body and FORM_TEXT not in body


@pytest.fixture
def one_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request of the test in one rate-limit window, however slow the machine (a real
    window boundary in the middle would start the count again)."""
    monkeypatch.setattr("inbox.views_reach._window", lambda: 12345)


@override_settings(INBOX_GUEST_RATE_PER_LINK=3)
def test_a_link_is_rate_limited(client: Client, guest_link: str, one_window: None) -> None:
    assert [client.get(guest_link).status_code for _ in range(4)] == [200, 200, 200, 429]
    # 45.2 s into a window of 60: the count starts again in 15 s, and the answer says so.
    with mock.patch("inbox.views_reach.time") as clock:
        clock.time.return_value = 12345 * 60 + 45.2
        limited = client.get(guest_link)
    assert limited["Retry-After"] == "15"
    assert "Too many requests." in limited.content.decode()


@override_settings(INBOX_GUEST_BAD_LINKS_PER_IP=2)
def test_guessing_links_is_rate_limited_per_address(
    client: Client, guest_link: str, one_window: None
) -> None:
    codes = [client.get(f"/r/guess-{n}/").status_code for n in range(3)]
    assert codes == [404, 404, 429]
    # Another address is not held back by this one's guesses.
    assert Client(REMOTE_ADDR="10.0.0.9").get(guest_link).status_code == 200


@override_settings(INBOX_GUEST_RATE_PER_IP=2)
def test_an_address_is_rate_limited_across_links(
    client: Client, guest_link: str, one_window: None
) -> None:
    assert [client.get(guest_link).status_code for _ in range(3)] == [200, 200, 429]


def test_a_guest_decision_is_checked_like_a_reviewers(
    client: Client, guest_link: str, guest_recipient: FormRecipient
) -> None:
    response = client.post(f"{guest_link}decide", {"action": "nope", "in_note": ""})
    assert response.status_code == 400
    assert not Decision.objects.exists()
    guest_recipient.refresh_from_db()
    assert guest_recipient.link_used_at is None


@override_settings(INBOX_GUEST_RATE_PER_IP=2, INBOX_TRUSTED_PROXIES=1)
def test_behind_a_proxy_the_limit_counts_the_forwarded_address(
    client: Client, guest_link: str, one_window: None
) -> None:
    behind = {"REMOTE_ADDR": "10.0.0.1"}  # the proxy, the same for every visitor
    first = {**behind, "HTTP_X_FORWARDED_FOR": "forged, 203.0.113.7"}
    second = {**behind, "HTTP_X_FORWARDED_FOR": "198.51.100.9"}
    assert [client.get(guest_link, **first).status_code for _ in range(3)] == [200, 200, 429]
    # Another visitor behind the same proxy has their own count.
    assert client.get(guest_link, **second).status_code == 200


def test_the_run_panel_offers_a_guest_nothing_beyond_the_form_and_a_reviewer_only_their_forms(
    client: Client,
    guest_link: str,
    routed_form: Form,
    reach_app: DifyApp,
    reviewer: User,
    other_reviewer: User,
) -> None:
    run = routed_form.run
    # Two more forms wait in the same run: one routed to alice (the default route), one only
    # to bob.
    alices = make_form(reach_app, run=run, node_title="Second look")
    route(reach_app, node="legal_only", users=[other_reviewer])
    bobs = make_form(reach_app, run=run, node_id="legal_only", node_title="Legal sign-off")
    run.outputs = {"internal_score": "credit 87, flagged"}
    run.status = "succeeded"
    run.timeline = [{"key": "node:1", "event": "node", "title": "Credit check"}]
    run.save()
    page = client.get(guest_link).content.decode()
    assert "waiting for another decision" not in page
    # Nor who started the run, its steps or its outputs: only what the form itself shows.
    assert "credit 87" not in page and "Credit check" not in page and "Started by" not in page
    assert "Second look" not in page and "Legal sign-off" not in page
    assert f"/runs/{run.public_id}/" not in page and "/forms/" not in page
    client.force_login(reviewer)
    page = client.get(f"/forms/{routed_form.public_id}/").content.decode()
    assert f'href="/forms/{alices.public_id}/"' in page
    assert f"/forms/{bobs.public_id}/" not in page and "Legal sign-off" not in page
    assert f'href="/runs/{run.public_id}/"' in page
    assert "credit 87" in page and "Credit check" in page and "Started by" in page


def test_a_guest_is_told_how_many_others_have_the_form_open_but_not_who(
    guest_link: str, routed_form: Form, reviewer: User
) -> None:
    zh_link = notify.link_path(notify.link_token(routed_form.recipients.get(email=GUEST_ZH)))
    reviewers = Client()
    reviewers.force_login(reviewer)
    reviewers.get(f"/forms/{routed_form.public_id}/")
    Client().get(zh_link)
    guest = Client()
    page = guest.get(guest_link).content.decode()
    assert "2 others have this form open too." in page
    # Neither the reviewer's name nor the other recipient's address is the guest's to see.
    assert GUEST_ZH not in page and "alice" not in page.lower()
    # A reviewer, inside, sees who they are.
    page = reviewers.get(f"/forms/{routed_form.public_id}/").content.decode()
    assert GUEST in page and GUEST_ZH in page and "are reviewing this too." in page
    # Once the form is decided, nobody is told who else looks at it.
    decide(guest, guest_link)
    Form.objects.filter(pk=routed_form.pk).update(status=Form.Status.SUBMITTED, form_token="")
    page = reviewers.get(f"/forms/{routed_form.public_id}/").content.decode()
    assert "reviewing this too" not in page


def test_a_guest_is_not_told_who_else_decided(
    guest_link: str, routed_form: Form, reviewer: User, django_capture_on_commit_callbacks: Any
) -> None:
    zh_link = notify.link_path(notify.link_token(routed_form.recipients.get(email=GUEST_ZH)))
    zh_guest, guest = Client(), Client()
    zh_guest.get(zh_link)
    guest.get(guest_link)
    # The other guest decides first.
    with django_capture_on_commit_callbacks(execute=False):
        assert decide(zh_guest, zh_link).status_code == 302
    refused = decide(guest, guest_link)
    # The form closed meanwhile: how it ended, nothing of it nor of what was entered.
    assert refused.status_code == 410
    page = refused.content.decode()
    assert GUEST_ZH not in page and "ok by me" not in page and FORM_TEXT not in page
    assert "Another recipient chose: Approve." in page
    # The one who decided reads their own address.
    assert GUEST_ZH in zh_guest.get(zh_link).content.decode()
    # A reviewer inside reads who it was.
    reviewers = Client()
    reviewers.force_login(reviewer)
    assert GUEST_ZH in reviewers.get(f"/forms/{routed_form.public_id}/").content.decode()


def test_a_guest_reads_a_reviewer_decided_not_their_name(
    client: Client, guest_link: str, routed_form: Form, reviewer: User
) -> None:
    decision = routed_form.decide(
        action_id="approve", inputs={"note": "", "receipt": []}, reviewer=reviewer
    )
    Decision.objects.filter(pk=decision.pk).update(status=Decision.Status.DELIVERED)
    Form.objects.filter(pk=routed_form.pk).update(status=Form.Status.SUBMITTED, form_token="")
    page = client.get(guest_link).content.decode()
    assert "A reviewer chose: Approve." in page
    assert reviewer.get_full_name() not in page and reviewer.username not in page


def test_a_guest_s_file_larger_than_dify_takes_is_dropped_as_it_arrives(
    client: Client, guest_link: str, routed_form: Form, small_dify: Any
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    from tests.conftest import BytesSeen

    DifyApp.objects.filter(pk=routed_form.run.app_id).update(base_url=small_dify.base_url)
    big = SimpleUploadedFile("scan.png", b"\x89PNG" + b"0" * (3 * 1024 * 1024), "image/png")
    client.get(guest_link)
    response = client.post(f"{guest_link}files/receipt", {"file": big}, HTTP_HX_REQUEST="true")
    assert "scan.png: the file is larger than 1 MB" in response.content.decode()
    assert 0 < BytesSeen.most <= 1024 * 1024


def test_a_deactivated_account_s_address_is_no_guest(
    client: Client, reach_app: DifyApp, other_reviewer: User
) -> None:
    other_reviewer.is_active = False
    other_reviewer.save()
    # Listed by address on a route that takes guests: the owner was turned away, and is not
    # asked again as a guest.
    route(reach_app, recipients=["Bob@example.com", GUEST], allow_guests=True)
    form = make_form(reach_app)
    assert list(form.recipients.values_list("email", flat=True)) == [GUEST]
    # Listed while the account was active, deactivated since: the link closes.
    other_reviewer.is_active = True
    other_reviewer.save()
    later = make_form(reach_app)
    bobs = later.recipients.get(email="Bob@example.com")
    assert bobs.user_id == other_reviewer.pk
    other_reviewer.is_active = False
    other_reviewer.save()
    FormRecipient.objects.filter(pk=bobs.pk).update(user=None)  # as a guest, as it once was
    link = notify.link_path(notify.link_token(FormRecipient.objects.get(pk=bobs.pk)))
    page = client.get(link)
    assert page.status_code == 403
    assert "You are no longer asked to decide this form." in page.content.decode()
    assert client.post(f"{link}decide", {"action": "approve"}).status_code == 403
    assert not Decision.objects.exists()


def test_a_reassigned_form_is_no_longer_the_guests_to_answer(
    client: Client,
    guest_link: str,
    routed_form: Form,
    guest_recipient: FormRecipient,
    other_reviewer: User,
    admin_user: User,
) -> None:
    assert client.get(guest_link).status_code == 200
    routed_form.reassign(to_user=other_reviewer, actor=admin_user)
    page = client.get(guest_link)
    assert page.status_code == 403 and FORM_TEXT not in page.content.decode()
    assert client.post(f"{guest_link}decide", {"action": "approve"}).status_code == 403
    guest_recipient.refresh_from_db()
    assert guest_recipient.withdrawn_at is not None and guest_recipient.next_reminder_at is None
    # The one it was given to is asked.
    assert routed_form.recipients.get(email=other_reviewer.email).withdrawn_at is None


def test_letting_guests_answer_again_opens_the_links_already_sent(
    client: Client, reach_app: DifyApp
) -> None:
    made = route(reach_app, recipients=[GUEST], allow_guests=False)
    form = make_form(reach_app)
    link = notify.link_path(notify.link_token(form.recipients.get()))
    assert client.get(link).status_code == 403
    Route.objects.filter(pk=made.pk).update(allow_guests=True)
    assert client.get(link).status_code == 200


def test_a_forwarded_guest_link_leaves_a_reviewer_s_own_language_alone(
    client: Client, routed_form: Form, other_reviewer: User
) -> None:
    from inbox.models import ReviewerProfile

    # Bob is not asked for this form; a Chinese guest's link reaches him, signed in.
    client.force_login(other_reviewer)
    client.get("/", HTTP_ACCEPT_LANGUAGE="en")
    assert ReviewerProfile.languages_of([other_reviewer]) == {other_reviewer.pk: "en"}
    chinese = routed_form.recipients.get(email=GUEST_ZH)
    page = client.get(notify.link_path(notify.link_token(chinese)), HTTP_ACCEPT_LANGUAGE="en")
    assert page.status_code == 200 and '<html lang="zh-hans">' in page.content.decode()
    # His emails stay in his language.
    assert ReviewerProfile.languages_of([other_reviewer]) == {other_reviewer.pk: "en"}


def test_a_decision_through_a_forwarded_link_names_who_was_signed_in(
    client: Client, guest_link: str, routed_form: Form, other_reviewer: User
) -> None:
    # Bob is not asked for this form; the guest's link reached him, and he decides through it.
    client.force_login(other_reviewer)
    assert decide(client, guest_link).status_code == 302
    decision = Decision.objects.get(form=routed_form)
    assert decision.guest_email == GUEST
    entry = AuditEntry.objects.get(verb="guest_link_used_signed_in")
    # Named as who pressed the button (found by their name in the trail), for the guest.
    assert (entry.actor, entry.actor_label) == (other_reviewer, "bob")
    assert entry.details["guest"] == GUEST
    assert entry.object_id == str(decision.pk)
    # The decision's own entry names him too, with the guest beside.
    made = AuditEntry.objects.get(verb="decision_made")
    assert (made.actor, made.actor_label, made.details["guest"]) == (other_reviewer, "bob", GUEST)


def test_a_guest_s_link_to_a_decided_form_shows_how_it_ended_not_its_content_or_values(
    client: Client,
    guest_link: str,
    routed_form: Form,
    reviewer: User,
    guest_recipient: FormRecipient,
) -> None:
    """Data minimisation: once a form is decided, the other recipients' links say so (as the
    closing notice does), but no longer show the form nor what the decider entered."""
    assert FORM_TEXT in client.get(guest_link).content.decode()
    note = "Approved for Erika Mustermann1, mail erika1.mustermann@kunde.test"
    routed_form.decide(action_id="approve", inputs={"note": note, "receipt": []}, reviewer=reviewer)
    for status in (Form.Status.SUBMITTING, Form.Status.SUBMITTED):
        closed = {"form_token": ""} if status == Form.Status.SUBMITTED else {}
        Form.objects.filter(pk=routed_form.pk).update(status=status, **closed)
        page = client.get(guest_link)
        body = page.content.decode()
        assert page.status_code == 410
        assert FORM_TEXT not in body and "Mustermann" not in body and "Ada" not in body
        assert "has been decided. A reviewer chose: Approve." in body
        assert reviewer.username not in body
        # The page's poll too.
        poll = client.get(f"{guest_link}live", HTTP_HX_REQUEST="true")
        assert FORM_TEXT not in poll.content.decode()
    # The closing notice says the same, and that the link shows no more.
    notice = notify.build_email(guest_recipient, "closed")
    assert "has been decided. A reviewer chose: Approve." in notice.body
    assert "nor shows the form: only how it ended" in notice.body
    assert "Mustermann" not in notice.body
