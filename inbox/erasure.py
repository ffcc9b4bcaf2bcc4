"""Erasing a person before the retention age lets go of their records (README "Personal data").

Records stay (what was decided, when, through which run): the person's name and address in them
are replaced by a pseudonym, the same one everywhere, so the trail still reads as one person's
doings. The trail keeps that an erasure happened (by whom, when), never the name it replaced.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q

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


def anonymise_user(user: Any, *, actor: Any) -> dict[str, int]:
    """Deactivate the account, revoke its API tokens, blank its name, address, password and last
    sign-in, and rename it `former-<id>`; the names its records keep (decisions, uploads, message
    files, runs, audit entries) become that pseudonym. Recorded as `user_anonymised`, with who
    did it and the counts, not the old name. Returns the counts."""
    from django.contrib.admin.models import LogEntry
    from django.contrib.contenttypes.models import ContentType

    pseudonym = account_pseudonym(user)
    names = {n.lower() for n in (user.get_username(), user.email) if n}
    full_name = user.get_full_name().strip()
    if full_name:
        names.add(full_name.lower())
    counts: dict[str, int] = {}
    with transaction.atomic():
        user.username = pseudonym
        user.first_name = user.last_name = user.email = ""
        user.is_active = False
        user.last_login = None
        user.set_unusable_password()
        user.save()
        counts["tokens"] = sum(t.revoke(actor) for t in ApiToken.objects.filter(user=user))
        counts["decisions"] = Decision.objects.filter(reviewer=user).update(
            reviewer_username=pseudonym, reviewer_name=pseudonym
        )
        counts["uploads"] = Upload.objects.filter(uploaded_by=user).update(
            uploaded_by_username=pseudonym
        )
        counts["message_files"] = MessageFile.objects.filter(uploaded_by=user).update(
            uploaded_by_username=pseudonym
        )
        counts["runs"] = Run.objects.filter(started_by=user).update(started_by_username=pseudonym)
        counts["recipients"] = FormRecipient.objects.filter(user=user).update(
            email=f"{pseudonym}@erased.invalid"
        )
        ReviewerProfile.objects.filter(user=user).update(time_zone="")
        counts["audit_entries"] = AuditEntry.objects.filter(actor=user).update(
            actor_label=pseudonym
        )
        # Entries naming the account otherwise (a token's owner, a form's previous holder).
        about = AuditEntry.objects.filter(
            Q(object_type="user", object_id=str(user.pk)) | _mentioning(names)
        )
        counts["audit_entries"] += _scrub_audit(about, names, pseudonym, write=True)
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


def erase_email(email: str, *, dry_run: bool = False) -> Erased:
    """Replace the address everywhere the inbox keeps it (form and route recipients, decisions,
    uploads, upload tallies, audit entries) by `erased-<random>@erased.invalid`; a route stops
    emailing it (its recipient row is removed, the route's change recorded). A decision still
    needing it is left as it is and named; run again once it has ended."""
    email = email.strip()
    lower = email.lower()
    names = {lower}
    pseudonym = f"erased-{secrets.token_hex(6)}@erased.invalid"
    in_flight = Decision.objects.filter(_IN_FLIGHT, guest_email__iexact=email)
    held = list(in_flight.values_list("pk", flat=True))
    counts: dict[str, int] = {}
    with transaction.atomic():
        decisions = Decision.objects.filter(guest_email__iexact=email).exclude(pk__in=held)
        # A failed decision's notice goes to its guest through their recipient row.
        recipients = FormRecipient.objects.filter(email__iexact=email).exclude(
            form__decisions__pk__in=held
        )
        route_recipients = RouteRecipient.objects.filter(email__iexact=email).select_related(
            "route"
        )
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
        else:
            counts["audit_entries"] = _scrub_audit(entries, names, pseudonym, write=True)
            counts["recipients"] = 0
            for recipient in recipients.order_by("pk"):
                # Two rows of one form for the address in two cases would become one address.
                rows = FormRecipient.objects.filter(pk=recipient.pk)
                if FormRecipient.objects.filter(form=recipient.form_id, email=pseudonym).exists():
                    rows.delete()
                else:
                    rows.update(email=pseudonym, time_zone="")
                counts["recipients"] += 1
            routes = {r.route for r in route_recipients}
            counts["route_recipients"] = route_recipients.delete()[0]
            for route in routes:
                AuditEntry.record(
                    "route_changed", route, actor_label="erase_person", reason="person erased"
                )
            counts["decisions"] = decisions.update(guest_email=pseudonym)
            counts["uploads"] = uploads.update(guest_email=pseudonym)
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
