"""Erasing a person before the retention age lets go of their records (README "Personal data").

Records stay (what was decided, when, through which run): the person's name and address in them
are replaced by a pseudonym, the same one everywhere, so the trail still reads as one person's
doings. The trail keeps that an erasure happened (by whom, when), never the name it replaced.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from inbox.models import (
    ApiToken,
    AuditEntry,
    Decision,
    FormRecipient,
    MessageFile,
    ReviewerProfile,
    RouteRecipient,
    Run,
    Upload,
    UploadTally,
)
from inbox.signals import UNRECORDED_RENAME

# A decision whose delivery, or its maker's failure notice, still needs the guest's address.
_IN_FLIGHT = Q(status__in=[Decision.Status.QUEUED, Decision.Status.DELIVERING]) | Q(
    status=Decision.Status.FAILED, failure_notice_at__isnull=True
)


def account_pseudonym(user: Any) -> str:
    """The username an anonymised account takes: stable (its id), naming nobody."""
    return f"former-{user.pk}"


def _replaced(value: Any, names: set[str], pseudonym: str) -> tuple[Any, bool]:
    """`value` (JSON) with each string that is one of `names` (any case), or holds one of the
    addresses among them, replaced by `pseudonym`; and whether anything was."""
    if isinstance(value, str):
        lower = value.lower()
        if lower in names:
            return pseudonym, True
        out = value
        for name in names:
            if "@" in name and name in out.lower():
                start = out.lower().index(name)
                while start >= 0:
                    out = out[:start] + pseudonym + out[start + len(name) :]
                    start = out.lower().find(name, start + len(pseudonym))
        return out, out != value
    if isinstance(value, list):
        items = [_replaced(v, names, pseudonym) for v in value]
        return [v for v, _c in items], any(c for _v, c in items)
    if isinstance(value, dict):
        changed = False
        out_dict = {}
        for key, item in value.items():
            new_key, key_changed = _replaced(key, names, pseudonym)
            new_item, item_changed = _replaced(item, names, pseudonym)
            out_dict[new_key] = new_item
            changed = changed or key_changed or item_changed
        return out_dict, changed
    return value, False


def _scrub_audit(entries: Any, names: set[str], pseudonym: str, *, write: bool) -> int:
    """Replace `names` in the entries' actor label, object repr and details; an entry that named
    the person loses the address it was made from (`ip`) too. How many entries changed."""
    changed = 0
    for entry in entries.iterator(chunk_size=500):
        label, label_changed = _replaced(entry.actor_label, names, pseudonym)
        shown, shown_changed = _replaced(entry.object_repr, names, pseudonym)
        details, details_changed = _replaced(entry.details, names, pseudonym)
        if not (label_changed or shown_changed or details_changed):
            continue
        if isinstance(details, dict):
            details.pop("ip", None)
        changed += 1
        if write:
            AuditEntry.objects.filter(pk=entry.pk).update(
                actor_label=label[:255], object_repr=shown[:255], details=details
            )
    return changed


def _mentioning(names: set[str]) -> Q:
    match = Q()
    for name in names:
        match |= (
            Q(actor_label__iexact=name)
            | Q(object_repr__icontains=name)
            | Q(details__icontains=name)
        )
    return match


def _scrub_admin_log(names: set[str], pseudonym: str, *, write: bool) -> int:
    """Replace `names` in the admin site's own change log (`django_admin_log`): its object
    (`object_repr`) and its change message, which names what an inline added, changed or
    removed ("Added email recipient “lena@example.org”"). How many entries changed."""
    from django.contrib.admin.models import LogEntry

    match = Q()
    for name in names:
        # Django writes the message as JSON with non-ASCII characters escaped.
        for form in {name, json.dumps(name)[1:-1]}:
            match |= Q(object_repr__icontains=form) | Q(change_message__icontains=form)
    changed = 0
    for entry in LogEntry.objects.filter(match).iterator(chunk_size=500):
        shown, shown_changed = _replaced(entry.object_repr, names, pseudonym)
        try:
            message: Any = json.loads(entry.change_message)
            as_json = True
        except ValueError:
            message, as_json = entry.change_message, False
        new_message, message_changed = _replaced(message, names, pseudonym)
        if not (shown_changed or message_changed):
            continue
        changed += 1
        if write:
            LogEntry.objects.filter(pk=entry.pk).update(
                object_repr=shown[:200],
                change_message=json.dumps(new_message) if as_json else new_message,
            )
    return changed


def _drop_from_routes(email: str, *, actor: Any = None, actor_label: str = "", reason: str) -> int:
    """Take `email` off every route that emails it (its `RouteRecipient` rows): no form routed
    from now on asks it, as a guest or otherwise. Each route's change is in the trail
    (`route_changed`, with `reason`), without the address. How many rows went."""
    with transaction.atomic():
        listed = RouteRecipient.objects.filter(email__iexact=email).select_related("route")
        routes = {row.route for row in listed}
        gone = RouteRecipient.objects.filter(pk__in=[r.pk for r in listed]).delete()[0]
        for route in sorted(routes, key=lambda r: r.pk):
            AuditEntry.record(
                "route_changed", route, actor=actor, actor_label=actor_label, reason=reason
            )
    return gone


def routes_listing(emails: Any) -> dict[str, list[Any]]:
    """address (lower case) -> the routes that email it, for `emails` (one query)."""
    from django.db.models.functions import Lower

    keys = {e.lower() for e in emails if e}
    found: dict[str, list[Any]] = {}
    if not keys:
        return found
    rows = (
        RouteRecipient.objects.annotate(email_lower=Lower("email"))
        .filter(email_lower__in=keys)
        .select_related("route__app")
        .order_by("route__app__name", "route__node", "route__name")
    )
    for row in rows:
        found.setdefault(row.email_lower, []).append(row.route)
    return found


# Rows a transaction when an erasure rewrites a person's records: another process (the worker
# delivering one of their decisions, the follower on one of their runs) waits for one batch at
# most, not for all of them (a year of an integration account's runs took minutes at once).
BATCH = 2000


def _update_in_batches(rows: Any, **values: Any) -> int:
    """`rows.update(**values)`, BATCH rows at a time in pk order, each batch committed.
    `rows` leaves out those already carrying `values`, so a run interrupted between batches is
    finished by running it again, and each row is counted once."""
    done = 0
    after = None
    while True:
        batch = rows.order_by("pk") if after is None else rows.filter(pk__gt=after).order_by("pk")
        pks = list(batch.values_list("pk", flat=True)[:BATCH])
        if not pks:
            return done
        with transaction.atomic():
            done += rows.filter(pk__in=pks).update(**values)
        after = pks[-1]


def _former_names(user: Any) -> set[str]:
    """The usernames, addresses and names the trail says `user` had (lowercased)."""
    found: set[str] = set()
    entries = AuditEntry.objects.filter(
        object_type="user", object_id=str(user.pk), verb__in=["user_created", "user_changed"]
    ).values_list("details", flat=True)
    for details in entries:
        if not isinstance(details, dict):
            continue
        for key in ("username", "email", "name"):
            value = details.get(key)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and item.strip():
                    found.add(item.strip().lower())
    return found


def anonymise_user(user: Any, *, actor: Any) -> dict[str, int]:
    """Deactivate the account, revoke its API tokens, blank its name, address, password and last
    sign-in, and rename it `former-<id>`; the names its records keep (decisions, uploads, message
    files, runs, audit entries, the admin site's change log) become that pseudonym. Its address
    is taken off the routes that email it (as `erase_email` does), and the email links of its
    address (its own, and any a guest with that address holds) are withdrawn: once the account
    no longer holds the address, the address would otherwise be a guest's and be asked again.
    Recorded as `user_anonymised`, with who did it and the counts, not the old name. Returns the
    counts.

    Not one transaction: the account is deactivated first (it signs in and calls the API no
    more), its records are rewritten in committed batches, and it is renamed and recorded last.
    Interrupted (a timeout, a restart), the account is left inactive under its old name, some of
    its records under the pseudonym; anonymising it again finishes the rest (the pseudonym is
    the same) and records it once, counting what that run changed."""
    from django.contrib.admin.models import LogEntry
    from django.contrib.contenttypes.models import ContentType

    from inbox.names import full_name

    pseudonym = account_pseudonym(user)
    names = {n.lower() for n in (user.get_username(), user.email) if n}
    # Their name as the inbox writes it ("李娜", family name first), and in Django's order.
    for written in (full_name(user.first_name, user.last_name), user.get_full_name().strip()):
        if written:
            names.add(written.lower())
    # The names and addresses it had before (`user_created`, `user_changed`): the trail keeps
    # them, and they were the person's as much as the current ones.
    names |= _former_names(user)
    counts: dict[str, int] = {}
    with transaction.atomic():
        user.is_active = False
        user.last_login = None
        user.set_unusable_password()
        user.save(update_fields=["is_active", "last_login", "password"])
        counts["tokens"] = sum(t.revoke(actor) for t in ApiToken.objects.filter(user=user))
        ReviewerProfile.objects.filter(user=user).update(time_zone="")
        # Before the address leaves the account (last): until then, the deactivated account
        # holding it keeps it from being asked as a guest's.
        counts["route_recipients"] = (
            _drop_from_routes(user.email, actor=actor, reason="account anonymised")
            if user.email
            else 0
        )
        links = Q(user=user)
        if user.email:
            links |= Q(email__iexact=user.email, user__isnull=True)
        counts["links_withdrawn"] = FormRecipient.objects.filter(
            links, withdrawn_at__isnull=True
        ).update(withdrawn_at=timezone.now(), next_reminder_at=None)
    counts["decisions"] = _update_in_batches(
        Decision.objects.filter(reviewer=user).exclude(
            reviewer_username=pseudonym, reviewer_name=pseudonym
        ),
        reviewer_username=pseudonym,
        reviewer_name=pseudonym,
    )
    counts["uploads"] = _update_in_batches(
        Upload.objects.filter(uploaded_by=user).exclude(uploaded_by_username=pseudonym),
        uploaded_by_username=pseudonym,
    )
    counts["message_files"] = _update_in_batches(
        MessageFile.objects.filter(uploaded_by=user).exclude(uploaded_by_username=pseudonym),
        uploaded_by_username=pseudonym,
    )
    counts["runs"] = _update_in_batches(
        Run.objects.filter(started_by=user).exclude(started_by_username=pseudonym),
        started_by_username=pseudonym,
    )
    address = f"{pseudonym}@erased.invalid"
    counts["recipients"] = _update_in_batches(
        FormRecipient.objects.filter(user=user).exclude(email=address), email=address
    )
    counts["audit_entries"] = _update_in_batches(
        AuditEntry.objects.filter(actor=user).exclude(actor_label=pseudonym),
        actor_label=pseudonym,
    )
    # Entries naming the account otherwise (a token's owner, a form's previous holder), each
    # rewritten on its own.
    about = AuditEntry.objects.filter(
        Q(object_type="user", object_id=str(user.pk)) | _mentioning(names)
    )
    counts["audit_entries"] += _scrub_audit(about, names, pseudonym, write=True)
    counts["admin_log_entries"] = _scrub_admin_log(names, pseudonym, write=True)
    with transaction.atomic():
        user.username = pseudonym
        user.first_name = user.last_name = user.email = ""
        # Recorded below as `user_anonymised`, not as a change from the name it replaces.
        setattr(user, UNRECORDED_RENAME, True)
        user.save()
        # A token's entries show it as "<prefix>… (<owner>)".
        for token in ApiToken.objects.filter(user=user):
            AuditEntry.objects.filter(object_type="apitoken", object_id=str(token.pk)).update(
                object_repr=str(token)[:255]
            )
        LogEntry.objects.filter(
            content_type=ContentType.objects.get_for_model(get_user_model()),
            object_id=str(user.pk),
        ).update(object_repr=pseudonym)
        details: dict[str, Any] = dict(counts)
        AuditEntry.record("user_anonymised", user, actor=actor, **details)
    return counts


@dataclasses.dataclass
class Erased:
    pseudonym: str
    counts: dict[str, int]
    # Public ids of the decisions left as they are: still on their way to Dify, or their maker
    # not yet told that they failed (either needs the address).
    in_flight: list[str]
    # Usernames of the accounts holding the address (erased through "Anonymise account").
    accounts: list[str]


def new_pseudonym() -> str:
    """The address an erased one becomes: random, so it names nobody."""
    return f"erased-{secrets.token_hex(6)}@erased.invalid"


PSEUDONYM = re.compile(r"erased-[0-9a-f]{12}@erased\.invalid")


def erase_email(email: str, *, dry_run: bool = False, pseudonym: str = "") -> Erased:
    """Replace the address everywhere the inbox keeps it (form and route recipients, decisions,
    uploads, upload tallies, audit entries, the admin site's change log) by `pseudonym`
    (`erased-<random>@erased.invalid`, a new one when not given); a route stops emailing it
    (its recipient row is removed, the route's change recorded, as `anonymise_user` does). A decision still needing it is left as it is and named; run again
    once it has ended.

    Not one transaction: each record, or batch of them, is committed on its own, so nobody
    waits long on a person with many. Interrupted, running again with the same `pseudonym`
    finishes the rest under it."""
    email = email.strip()
    lower = email.lower()
    names = {lower}
    pseudonym = pseudonym or new_pseudonym()
    if not PSEUDONYM.fullmatch(pseudonym):
        raise ValueError(f"not a pseudonym of erase_email: {pseudonym!r}")
    in_flight = Decision.objects.filter(_IN_FLIGHT, guest_email__iexact=email)
    held = list(in_flight.values_list("pk", flat=True))
    counts: dict[str, int] = {}
    decisions = Decision.objects.filter(guest_email__iexact=email).exclude(pk__in=held)
    # A failed decision's notice goes to its guest through their recipient row.
    recipients = FormRecipient.objects.filter(email__iexact=email).exclude(
        form__decisions__pk__in=held
    )
    route_recipients = RouteRecipient.objects.filter(email__iexact=email)
    uploads = Upload.objects.filter(guest_email__iexact=email)
    tallies = UploadTally.objects.filter(who=f"g:{lower}")
    entries = AuditEntry.objects.filter(_mentioning(names))
    if dry_run:
        counts["recipients"] = recipients.count()
        counts["route_recipients"] = route_recipients.count()
        counts["decisions"] = decisions.count()
        counts["uploads"] = uploads.count()
        counts["upload_tallies"] = tallies.count()
        counts["audit_entries"] = _scrub_audit(entries, names, pseudonym, write=False)
        counts["admin_log_entries"] = _scrub_admin_log(names, pseudonym, write=False)
    else:
        counts["audit_entries"] = _scrub_audit(entries, names, pseudonym, write=True)
        counts["admin_log_entries"] = _scrub_admin_log(names, pseudonym, write=True)
        counts["recipients"] = 0
        for recipient in recipients.order_by("pk"):
            with transaction.atomic():
                # Two rows of one form for the address in two cases would become one address.
                rows = FormRecipient.objects.filter(pk=recipient.pk, email__iexact=email)
                if FormRecipient.objects.filter(form=recipient.form_id, email=pseudonym).exists():
                    gone = rows.delete()[1].get(FormRecipient._meta.label, 0)
                else:
                    gone = rows.update(email=pseudonym, time_zone="")
                counts["recipients"] += gone
        counts["route_recipients"] = _drop_from_routes(
            email, actor_label="erase_person", reason="person erased"
        )
        counts["decisions"] = _update_in_batches(decisions, guest_email=pseudonym)
        counts["uploads"] = _update_in_batches(uploads, guest_email=pseudonym)
        counts["upload_tallies"] = tallies.update(who=f"g:{pseudonym}")
        AuditEntry.record_about(
            "person_erased",
            "person",
            actor_label="erase_person",
            pseudonym=pseudonym,
            left_in_flight=len(held),
            **counts,
        )
    accounts = list(
        get_user_model()
        .objects.filter(email__iexact=email)
        .values_list(get_user_model().USERNAME_FIELD, flat=True)
    )
    return Erased(
        pseudonym=pseudonym,
        counts=counts,
        in_flight=[str(p) for p in in_flight.values_list("public_id", flat=True)],
        accounts=accounts,
    )
