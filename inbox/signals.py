"""Reactions to changes Django makes elsewhere (accounts and groups, edited in the admin).

A reviewer who loses a form (taken off the group it went to, deactivated, no longer staff)
also loses their hold on it: `release_lost_claims`. Group membership changes from either side
(`user.groups`, `group.user_set`), including a group deleted whole. A deleted account or
group leaves the routes that asked it and the waiting forms assigned to it, and an account
its holds: all in the trail too.

Who may do what is in the audit trail, with the administrator who changed it: a user's access
flags, groups and permissions, and a group's permissions. So is who an account is: made
(`user_created`), its username, email or name changed (`user_changed`, before and after), and a
group made or renamed.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.auth.signals import user_logged_in
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete, pre_save

from inbox.middleware import current_actor, speak_chosen_language
from inbox.models import AuditEntry, Form, Route, release_lost_claims

_MEMBERS = "_inbox_members_before"


# What a reviewer may do follows from these: each change of them is in the trail.
_ACCESS = ("is_active", "is_staff", "is_superuser")
_ACCESS_BEFORE = "_inbox_access_before"

# Who an account is: its address decides where its form links and password links go, so a
# change of it (or of its name) is in the trail, with what it was and what it became.
_IDENTITY = ("username", "email", "first_name", "last_name")
# Set on an account being anonymised (`erasure.anonymise_user`): its renaming is recorded as
# `user_anonymised`, never with the name it replaced.
UNRECORDED_RENAME = "_inbox_unrecorded_rename"
_GROUP_NAME_BEFORE = "_inbox_group_name_before"


def identity(values: dict[str, Any]) -> dict[str, str]:
    """An account's username, email and full name as the trail keeps them ("name": first and
    last, as `get_full_name` joins them)."""
    name = f"{values.get('first_name') or ''} {values.get('last_name') or ''}".strip()
    return {
        "username": values.get("username") or "",
        "email": values.get("email") or "",
        "name": name,
    }


def _release_after_commit(user_ids: set[int]) -> None:
    if user_ids:
        actor = current_actor()
        transaction.on_commit(lambda: release_lost_claims(user_ids, actor=actor))


def _membership_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
) -> None:
    if action == "pre_clear":
        # A clear says nothing after of what it cleared.
        if reverse:
            setattr(instance, _MEMBERS, set(instance.user_set.values_list("pk", flat=True)))
        else:
            setattr(instance, _MEMBERS, set(instance.groups.values_list("pk", flat=True)))
        return
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    changed = set(pk_set or ()) if action != "post_clear" else getattr(instance, _MEMBERS, set())
    if not changed:
        return
    _audit_membership(instance, reverse, changed, added=action == "post_add")
    if action != "post_add":
        _release_after_commit({instance.pk} if not reverse else changed)


def _audit_membership(instance: Any, reverse: bool, changed: set[int], *, added: bool) -> None:
    """Who may decide what follows from groups: each change of a reviewer's groups is in the
    trail, with the administrator who made it (`current_actor`)."""
    user_model = get_user_model()
    if reverse:
        users = list(user_model.objects.filter(pk__in=changed))
        groups = [instance.name]
    else:
        users = [instance]
        groups = sorted(Group.objects.filter(pk__in=changed).values_list("name", flat=True))
    change: dict[str, Any] = {"added" if added else "removed": groups}
    for user in users:
        AuditEntry.record("user_groups_changed", user, actor=current_actor(), **change)


_PERMISSIONS = "_inbox_permissions_before"


def _permissions_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
) -> None:
    """What a reviewer or a group may do (retry deliveries, start runs, ...): each permission
    given or taken, from the user's or group's side or the permission's, is in the trail with
    the administrator who did it. The trail outlives the administrator; Django's admin log is
    deleted with them."""
    for_groups = sender is Group.permissions.through
    if action == "pre_clear":
        # A clear says nothing after of what it cleared.
        if reverse:
            related = instance.group_set if for_groups else instance.user_set
        else:
            related = instance.permissions if for_groups else instance.user_permissions
        setattr(instance, _PERMISSIONS, set(related.values_list("pk", flat=True)))
        return
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    changed = (
        set(pk_set or ()) if action != "post_clear" else getattr(instance, _PERMISSIONS, set())
    )
    if not changed:
        return
    if reverse:
        # `permission.group_set` / `permission.user_set`: one permission, its holders changed.
        holder_model = Group if for_groups else get_user_model()
        holders = list(holder_model.objects.filter(pk__in=changed))
        names = [_permission_name(instance)]
    else:
        holders = [instance]
        names = sorted(
            _permission_name(p)
            for p in Permission.objects.filter(pk__in=changed).select_related("content_type")
        )
    verb = "group_permissions_changed" if for_groups else "user_permissions_changed"
    change: dict[str, Any] = {"added" if action == "post_add" else "removed": names}
    for holder in holders:
        AuditEntry.record(verb, holder, actor=current_actor(), **change)


def _permission_name(permission: Permission) -> str:
    """As `has_perm` takes it: "inbox.retry_decision"."""
    return f"{permission.content_type.app_label}.{permission.codename}"


def _user_saving(sender: Any, instance: Any, update_fields: Any, **kwargs: Any) -> None:
    watched = {*_ACCESS, *_IDENTITY}
    if instance.pk is None or (update_fields is not None and not set(update_fields) & watched):
        return
    before = sender.objects.filter(pk=instance.pk).values(*_ACCESS, *_IDENTITY).first()
    setattr(instance, _ACCESS_BEFORE, before)


def _user_saved(
    sender: Any, instance: Any, created: bool, update_fields: Any, **kwargs: Any
) -> None:
    if created:
        # Made in the admin, by `createsuperuser` or in a shell: by whom, and who it is.
        AuditEntry.record(
            "user_created",
            instance,
            actor=current_actor(),
            **identity({name: getattr(instance, name) for name in _IDENTITY}),
            **{name: getattr(instance, name) for name in _ACCESS if getattr(instance, name)},
        )
        return
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return
    before = getattr(instance, _ACCESS_BEFORE, None) or {}
    changed: dict[str, Any] = {
        name: [before[name], getattr(instance, name)]
        for name in _ACCESS
        if name in before and before[name] != getattr(instance, name)
    }
    if changed:
        # Deactivated, made staff or not, made superuser or not: by whom, in the trail.
        AuditEntry.record("user_access_changed", instance, actor=current_actor(), **changed)
    if before and not getattr(instance, UNRECORDED_RENAME, False):
        was = identity(before)
        now = identity({name: getattr(instance, name) for name in _IDENTITY})
        renamed: dict[str, Any] = {key: [was[key], now[key]] for key in now if was[key] != now[key]}
        if renamed:
            # Its address (where its links go) or its name, before and after: an address
            # changed to take over someone's links is reconstructed from here.
            AuditEntry.record("user_changed", instance, actor=current_actor(), **renamed)
    if not instance.is_active or not instance.is_staff:
        _release_after_commit({instance.pk})


def _routes_lose(routes: Any, field: str, name: str, reason: str) -> None:
    """The routes that asked a deleted account or group ask it no more (the deletion takes
    their rows with it, without m2m signals): each change in the trail, as the route admin
    records one, so replaying a route's entries says who it asks."""
    for route in routes:
        before = route.audit_values()[field]
        AuditEntry.record(
            "route_changed",
            route,
            actor=current_actor(),
            fields=[field],
            values={field: {"before": before, "after": [n for n in before if n != name]}},
            reason=reason,
        )


def _forms_lose(forms: Any, field: str, name: str, reason: str) -> None:
    """The waiting forms assigned to a deleted account or group are assigned to it no more
    (its rows go with it, without m2m signals): each in the trail, with who is still asked,
    so an auditor sees a form left to no one but the administrators."""
    for form in forms.prefetch_related("assigned_users", "assigned_groups"):
        users = sorted(u.get_username() for u in form.assigned_users.all())
        groups = sorted(g.name for g in form.assigned_groups.all())
        left = {
            "users": [n for n in users if not (field == "users" and n == name)],
            "groups": [n for n in groups if not (field == "groups" and n == name)],
        }
        AuditEntry.record(
            "form_unassigned",
            form,
            actor=current_actor(),
            removed={field: [name]},
            users=left["users"],
            groups=left["groups"],
            nobody_left=not (left["users"] or left["groups"]),
            reason=reason,
        )


def _user_deleting(sender: Any, instance: Any, **kwargs: Any) -> None:
    # Its decisions keep its name (`Decision.reviewer_name`); the trail says who deleted it.
    username = instance.get_username()
    held = list(instance.claimed_forms.filter(status="pending").select_related("run"))
    AuditEntry.record(
        "user_deleted",
        instance,
        actor=current_actor(),
        decisions=instance.decisions.count(),
        forms_held=len(held),
    )
    # What the deletion changes along with it: the routes that asked the account, and its
    # holds on waiting forms (given back to whoever else they are routed to).
    _routes_lose(
        Route.objects.filter(users=instance).select_related("app"),
        "users",
        username,
        "user deleted",
    )
    for form in held:
        AuditEntry.record(
            "form_released", form, actor=current_actor(), previous=username, reason="user deleted"
        )
    _forms_lose(
        Form.objects.filter(assigned_users=instance, status=Form.Status.PENDING).select_related(
            "run"
        ),
        "users",
        username,
        "user deleted",
    )


def _group_deleting(sender: Any, instance: Group, **kwargs: Any) -> None:
    setattr(instance, _MEMBERS, set(instance.user_set.values_list("pk", flat=True)))
    _routes_lose(
        Route.objects.filter(groups=instance).select_related("app"),
        "groups",
        instance.name,
        "group deleted",
    )
    _forms_lose(
        Form.objects.filter(assigned_groups=instance, status=Form.Status.PENDING).select_related(
            "run"
        ),
        "groups",
        instance.name,
        "group deleted",
    )


def _group_deleted(sender: Any, instance: Group, **kwargs: Any) -> None:
    members: set[int] = getattr(instance, _MEMBERS, set())
    for user in get_user_model().objects.filter(pk__in=members):
        AuditEntry.record(
            "user_groups_changed",
            user,
            actor=current_actor(),
            removed=[instance.name],
            reason="group deleted",
        )
    _release_after_commit(members)


def _group_saving(sender: Any, instance: Group, **kwargs: Any) -> None:
    if instance.pk is not None:
        before = Group.objects.filter(pk=instance.pk).values_list("name", flat=True).first()
        setattr(instance, _GROUP_NAME_BEFORE, before)


def _group_saved(sender: Any, instance: Group, created: bool, **kwargs: Any) -> None:
    """A group made or renamed: in the trail, by whom (a group's name is how routes and forms
    name who they ask)."""
    if created:
        AuditEntry.record("group_created", instance, actor=current_actor(), name=instance.name)
        return
    before = getattr(instance, _GROUP_NAME_BEFORE, None)
    if before is not None and before != instance.name:
        AuditEntry.record(
            "group_renamed", instance, actor=current_actor(), name=[before, instance.name]
        )


def signed_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """A reviewer who chose their language (or whose administrator chose it) signs in: the inbox
    opens in it, whatever this browser asks for or kept from before
    (`middleware.ReviewerLanguageMiddleware` keeps it in the browser's cookie)."""
    # Through a page (a sign-in made without one, such as a test's, has no response to keep
    # the language in).
    if request is not None and getattr(request, "resolver_match", None) is not None:
        speak_chosen_language(request, user)


def connect() -> None:
    user_model = get_user_model()
    user_logged_in.connect(signed_in, dispatch_uid="inbox-signed-in")
    m2m_changed.connect(
        _membership_changed, sender=user_model.groups.through, dispatch_uid="inbox-members"
    )
    for through in (user_model.user_permissions.through, Group.permissions.through):
        m2m_changed.connect(
            _permissions_changed, sender=through, dispatch_uid=f"inbox-permissions-{through}"
        )
    pre_save.connect(_user_saving, sender=user_model, dispatch_uid="inbox-user-saving")
    post_save.connect(_user_saved, sender=user_model, dispatch_uid="inbox-user-saved")
    pre_delete.connect(_user_deleting, sender=user_model, dispatch_uid="inbox-user-deleting")
    pre_save.connect(_group_saving, sender=Group, dispatch_uid="inbox-group-saving")
    post_save.connect(_group_saved, sender=Group, dispatch_uid="inbox-group-saved")
    pre_delete.connect(_group_deleting, sender=Group, dispatch_uid="inbox-group-deleting")
    post_delete.connect(_group_deleted, sender=Group, dispatch_uid="inbox-group-deleted")
