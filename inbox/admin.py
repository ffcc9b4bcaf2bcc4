from __future__ import annotations

import csv
import json
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.contrib.auth import admin as auth_admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import (
    BooleanField,
    CharField,
    Count,
    DateTimeField,
    Exists,
    ExpressionWrapper,
    Max,
    Min,
    OuterRef,
    Q,
    Subquery,
)
from django.db.models.functions import Cast, Coalesce, Now
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import mark_safe
from django.utils.text import smart_split, unescape_string_literal
from django.utils.translation import gettext, ngettext, pgettext_lazy
from django.utils.translation import gettext_lazy as _

from inbox import timefmt
from inbox.app_check import (
    DIFY_KINDS,
    UNUSABLE_MODES,
    check_app,
    last_tested_mode,
    look_alike,
    mode_warning,
    name_warning,
    server_of,
    shared_key_warning,
    unusable_warning,
)
from inbox.audit_words import object_label, object_type_label, verb_label
from inbox.dify.client import DifyClient
from inbox.dify.errors import DifyError, DifyStatusError
from inbox.forms import joined
from inbox.models import (
    APP_NOT_FOUND_REFUSAL,
    KIND_REFUSALS,
    UNPUBLISHED_REFUSAL,
    ApiToken,
    AuditEntry,
    Decision,
    DifyApp,
    Form,
    FormRecipient,
    MessageFile,
    ReviewerProfile,
    Route,
    RouteRecipient,
    Run,
    RunEvent,
    Upload,
    _not_queued,
    offsets_text,
)
from inbox.names import chooser_label, people_named
from inbox.reasons import sentence_gap, tightened, worded


def to_the_second(value: Any) -> str:
    """A time as the audit list shows it, to the second, with its offset from UTC and its zone
    named in full (`timefmt.to_the_second`): a decision's or a run's time can be ordered against
    the entries of the trail, and read alike by an administrator anywhere."""
    return timefmt.to_the_second(value)


def _time_displays(owner: Any, model: Any, names: Any) -> dict[str, str]:
    """For each of `names` that is a time field of `model`, a display on `owner` showing it to
    the second (`<name>_to_the_second`); returns {field name: display name}."""
    timed = {f.name: f for f in model._meta.concrete_fields if isinstance(f, DateTimeField)}
    shown: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str) or name not in timed:
            continue
        field = timed[name]

        def show(obj: Any, name: str = name) -> str:
            value = getattr(obj, name, None)
            # A display's None would read "None": Django shows a callable's value as is.
            return to_the_second(value) if value is not None else owner.get_empty_value_display()

        display = f"{name}_to_the_second"
        setattr(owner, display, admin.display(description=field.verbose_name, ordering=name)(show))
        shown[name] = display
    return shown


class JsonValuesSearchAdmin(admin.ModelAdmin):
    """A list whose search also reads JSON fields (`json_search_fields`, among `search_fields`):
    a run's start inputs, a decision's values, where a data subject's name, address or IBAN
    is. Django's search looks for each word in the JSON's text (`UPPER(inputs::text) LIKE`:
    no index serves it, so it reads every row of the list, as the admin's other searches on
    joined fields do); the whole search is also looked for as JSON writes it ("上海" as
    "\\u4e0a\\u6d77", a quote as \\"): SQLite keeps JSON as text with such escapes, while
    PostgreSQL's jsonb reads as written."""

    json_search_fields: tuple[str, ...] = ()

    def get_search_results(
        self, request: HttpRequest, queryset: Any, search_term: str
    ) -> tuple[Any, bool]:
        found, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        escaped = json.dumps(term)[1:-1]
        if term and escaped != term and self.json_search_fields:
            match = Q()
            for field in self.json_search_fields:
                match |= Q(**{f"{field}__icontains": escaped})
            found = found | queryset.filter(match)
        return found, may_have_duplicates


class ToTheSecondListAdmin(admin.ModelAdmin):
    """A list's time columns to the second, with their offset and zone, as the audit list shows
    its entries' (`to_the_second`), rather than Django's minutes in no named zone."""

    @staticmethod
    def _shown_as(name: str) -> str:
        return f"{name}_to_the_second"

    def __init__(self, model: Any, admin_site: Any) -> None:
        super().__init__(model, admin_site)
        self._timed = _time_displays(self, model, [f.name for f in model._meta.concrete_fields])

    def get_list_display(self, request: HttpRequest) -> Any:
        return [
            self._shown_as(name) if isinstance(name, str) and name in self._timed else name
            for name in super().get_list_display(request)
        ]


class ToTheSecondAdmin(ToTheSecondListAdmin):
    """A record's page and list show its times to the second, with their offset and zone, as the
    audit trail does: each time field is shown through a display of its own (read-only: a time
    is the record's, not an administrator's to set)."""

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        shown: set[str] = set()

        def once(fields: Any) -> list[Any]:
            # Django lists the displays among the read-only fields too: each shown once, where
            # its field was.
            kept = []
            for field in fields:
                if not isinstance(field, str):
                    kept.append(field)
                    continue
                name = self._shown_as(field) if field in self._timed else field
                if name not in shown:
                    shown.add(name)
                    kept.append(name)
            return kept

        return [
            (title, {**options, "fields": once(options["fields"])})
            for title, options in super().get_fieldsets(request, obj)
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [*super().get_readonly_fields(request, obj), *map(self._shown_as, self._timed)]


class ToTheSecondInline(admin.options.InlineModelAdmin):  # type: ignore[type-arg]
    """An inline's times (its `fields`, shown read-only) to the second, as `ToTheSecondAdmin`."""

    def __init__(self, parent_model: Any, admin_site: Any) -> None:
        super().__init__(parent_model, admin_site)
        self._shown = _time_displays(self, self.model, list(self.fields or ()))

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields: list[Any] = list(super().get_fields(request, obj))
        return [self._shown.get(name, name) if isinstance(name, str) else name for name in fields]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [self._shown.get(name, name) for name in super().get_readonly_fields(request, obj)]


class DifyAppAdminForm(forms.ModelForm):
    base_url = forms.URLField(
        label=_("API base URL"),
        assume_scheme="https",
        max_length=300,
        help_text=_("Including /v1, e.g. https://api.dify.ai/v1"),
    )
    # The stored key is never sent back to the browser: the field starts empty and an empty
    # value on save keeps the current key.
    api_key = forms.CharField(
        label=_("API key"),
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        # Said for a new app; an app's own page says what it has (`__init__`).
        help_text=_("The app's API key, from Dify: the app → API Access."),
    )

    class Meta:
        model = DifyApp
        fields = ["name", "base_url", "api_key", "mode", "is_active"]
        # Here rather than on the model: said to administrators, no schema change.
        help_texts = {
            "is_active": _(
                "Untick to stop new runs of this app from being started here: the start page "
                "no longer offers it and the API refuses it. Runs already under way go on: "
                "their forms still come in and can still be decided, and decisions are still "
                "sent to Dify."
            )
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.initial["api_key"] = ""
        if self.instance.pk and self.instance.api_key_sealed:
            self.fields["api_key"].help_text = _(
                "The stored key cannot be read with this process's encryption keys "
                "(INBOX_ENCRYPTION_KEYS): restart it with the encryption key it was stored with "
                "(during a rotation, the new one), or enter it again. Nothing is sent to Dify "
                "for this app until then."
            )
        elif self.instance.pk:
            self.fields["api_key"].help_text = _(
                "Current key: %(masked)s. Leave empty to keep it."
            ) % {"masked": self.instance.masked_api_key}

    def clean_name(self) -> str:
        name = str(self.cleaned_data.get("name") or "")
        other = look_alike(name, besides=self.instance.pk)
        if other is not None:
            # An exact match is the unique constraint's to refuse; this is the near one.
            raise forms.ValidationError(
                _(
                    "The app “%(other)s” already has this name but for case or spaces: two apps "
                    "would read the same in every list. Choose another name."
                )
                % {"other": other.name}
            )
        return name

    def clean_api_key(self) -> str:
        value = self.cleaned_data.get("api_key", "").strip()
        if not value:
            if not self.instance.pk:
                raise forms.ValidationError(_("An API key is required."))
            return self.instance.api_key
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        new_url = cleaned.get("base_url")
        typed = (self.data.get("api_key") or "").strip()
        if (
            self.instance.pk
            and new_url
            and not typed
            and server_of(new_url) != server_of(self.instance.base_url)
        ):
            # The stored key (and every waiting form's token) would go to the new server: whoever
            # points the app elsewhere shows they hold the key by typing it.
            self.add_error(
                "api_key",
                _("Enter the API key again to move this app to another server (%(server)s).")
                % {"server": server_of(new_url)},
            )
        return cleaned


class HealthFilter(admin.SimpleListFilter):
    title = _("connection to Dify")
    parameter_name = "health"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            ("ok", _("OK")),
            ("not_checked", _("Not checked yet")),
            ("refused", _("Refused")),
            ("mode_mismatch", _("Mode does not match Dify's")),
            ("unreachable", _("Not reachable")),
            ("test_failed", _("Connection test failed")),
        ]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        # As the health column words it: "OK" is an app Dify has answered for, "Not checked
        # yet" one it never has (`checked` is annotated by the app admin's queryset).
        fine = Q(refused_at__isnull=True, contact_failed_at__isnull=True)
        if self.value() == "ok":
            return queryset.filter(fine, test_failed_at__isnull=True, checked=True)
        if self.value() == "not_checked":
            return queryset.filter(fine, test_failed_at__isnull=True, checked=False)
        if self.value() == "refused":
            return queryset.filter(refused_at__isnull=False).exclude(
                refusal_code__in=sorted(KIND_REFUSALS)
            )
        if self.value() == "mode_mismatch":
            return queryset.filter(refused_at__isnull=False, refusal_code__in=sorted(KIND_REFUSALS))
        if self.value() == "unreachable":
            # What the follower, the reconcile or a delivery last found (`note_unreachable`).
            return queryset.filter(refused_at__isnull=True, contact_failed_at__isnull=False)
        if self.value() == "test_failed":
            return queryset.filter(fine, test_failed_at__isnull=False)
        return queryset


def with_delete_confirmation_hook(actions: Any, hook: Any) -> dict[str, Any]:
    """`actions` with Django's "delete selected" wrapped so that `hook(modeladmin, request,
    queryset, context)` may add to its confirmation page's context. The hook runs only when
    that page is shown, not after the deletion itself (which returns no page)."""
    actions = dict(actions or {})
    if "delete_selected" in actions:
        func, name, description = actions["delete_selected"]

        def delete_selected(modeladmin: Any, request: HttpRequest, queryset: Any) -> Any:
            response = func(modeladmin, request, queryset)
            data = getattr(response, "context_data", None)
            if data is not None:
                hook(modeladmin, request, queryset, data)
            return response

        actions["delete_selected"] = (delete_selected, name, description)
    return actions


class RefusedDeletionAdmin(admin.ModelAdmin):
    """Where deleting is refused by design (records hang on the object), the delete page says
    why and what to do instead, in place of Django's "your account doesn't have permission to
    delete ...", which no permission would change."""

    delete_confirmation_template = "admin/inbox/delete_confirmation.html"
    delete_selected_confirmation_template = "admin/inbox/delete_selected_confirmation.html"

    def deletion_refusal(self, objs: Any) -> str | None:
        """Why these objects are kept, and what to do instead; None to let Django say it."""
        return None

    def render_delete_form(self, request: HttpRequest, context: dict[str, Any]) -> HttpResponse:
        if context.get("perms_lacking") or context.get("protected"):
            context["refusal"] = self.deletion_refusal([context["object"]])
        return super().render_delete_form(request, context)

    def get_actions(self, request: HttpRequest) -> Any:
        def refuse(modeladmin: Any, request: HttpRequest, queryset: Any, data: Any) -> None:
            if data.get("perms_lacking") or data.get("protected"):
                data["refusal"] = self.deletion_refusal(queryset)

        return with_delete_confirmation_hook(super().get_actions(request), refuse)


class AuditedAdmin(RefusedDeletionAdmin):
    """Settings an administrator edits (apps, routes) leave an entry in the audit trail, beside
    Django's own history: who created, changed or deleted what, which fields, and the values
    `audit_values` names before and after (never a secret: an API key only as its
    fingerprint)."""

    audit_name = ""

    def audit_values(self, obj: Any) -> dict[str, Any]:
        """Values worth keeping in the trail before and after a change (no secrets): who a
        route asks, say. None by default."""
        return {}

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change and obj.pk is not None:
            before = type(obj)._default_manager.filter(pk=obj.pk).first()
            request._audit_before = self.audit_values(before) if before is not None else {}  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        fields = sorted({*form.changed_data, *(fs.prefix for fs in formsets if fs.has_changed())})
        if change and not fields:
            return
        before: dict[str, Any] = getattr(request, "_audit_before", {})
        after = self.audit_values(form.instance)
        values = {
            name: {"before": before.get(name), "after": value} if change else {"after": value}
            for name, value in after.items()
            if not change or before.get(name) != value
        }
        extra: dict[str, Any] = {"values": values} if values else {}
        AuditEntry.record(
            f"{self.audit_name}_{'changed' if change else 'created'}",
            form.instance,
            actor=request.user,
            fields=fields,
            **extra,
        )

    def _record_deleted(self, request: HttpRequest, obj: Any) -> None:
        # What it was, as a change keeps it "before": which server's app, who a route asked.
        values = {name: {"before": value} for name, value in self.audit_values(obj).items()}
        extra: dict[str, Any] = {"values": values} if values else {}
        AuditEntry.record(f"{self.audit_name}_deleted", obj, actor=request.user, **extra)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        self._record_deleted(request, obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for obj in queryset:
            self._record_deleted(request, obj)
        super().delete_queryset(request, queryset)


@admin.register(DifyApp)
class DifyAppAdmin(ToTheSecondListAdmin, AuditedAdmin):
    audit_name = "app"
    form = DifyAppAdminForm
    list_display = [
        "name",
        "base_url",
        "mode",
        "masked_api_key",
        "key_fingerprint",
        "is_active",
        "pending_forms",
        "health",
        "updated_at",
    ]
    list_filter = ["mode", "is_active", HealthFilter]
    search_fields = ["name", "base_url"]
    readonly_fields = ["health"]
    actions = ["test_connection", "activate", "deactivate"]

    def audit_values(self, obj: DifyApp) -> dict[str, Any]:
        # Where its key and its forms' tokens go, and whether it starts runs: in the trail.
        return obj.audit_values()

    def _routes_go_with(self, request: HttpRequest, apps: Any) -> None:
        """The routes an app takes with it are in the trail too, each with who it asked: replayed,
        the trail does not leave them asking anyone."""
        routes = Route.objects.filter(app__in=list(apps)).select_related("app")
        for route in routes:
            AuditEntry.record(
                "route_deleted",
                route,
                actor=request.user,
                reason="app deleted",
                app=route.app.name,
                values={name: {"before": value} for name, value in route.audit_values().items()},
            )

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        self._routes_go_with(request, [obj])
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        self._routes_go_with(request, queryset)
        super().delete_queryset(request, queryset)

    def deletion_refusal(self, objs: Any) -> str | None:
        if not Run.objects.filter(app__in=list(objs)).exists():
            return None
        return str(
            _(
                "An app with runs is not deleted: its runs, their forms and decisions are the "
                "record of what was asked and decided. Deactivate it instead (the action "
                "“Deactivate selected apps”, or untick “Active”): no new runs start, and its "
                "pending forms can still be decided."
            )
        )

    @admin.display(description=_("pending forms"), ordering="pending")
    def pending_forms(self, obj: DifyApp) -> int:
        return getattr(obj, "pending", 0)

    def _set_active(self, request: HttpRequest, queryset: Any, active: bool) -> int:
        changed = 0
        for app in queryset.filter(is_active=not active):
            app.is_active = active
            app.save(update_fields=["is_active", "updated_at"])
            # As a change saved on the app's page is recorded.
            AuditEntry.record(
                "app_changed",
                app,
                actor=request.user,
                fields=["is_active"],
                values={"is_active": {"before": not active, "after": active}},
            )
            changed += 1
        return changed

    @admin.action(description=_("Activate selected apps"), permissions=["change"])
    def activate(self, request: HttpRequest, queryset: Any) -> None:
        n = self._set_active(request, queryset, True)
        self.message_user(
            request,
            ngettext(
                "%(count)d app activated: its runs can be started again.",
                "%(count)d apps activated: their runs can be started again.",
                n,
            )
            % {"count": n},
            messages.SUCCESS if n else messages.WARNING,
        )

    @admin.action(description=_("Deactivate selected apps"), permissions=["change"])
    def deactivate(self, request: HttpRequest, queryset: Any) -> None:
        n = self._set_active(request, queryset, False)
        self.message_user(
            request,
            ngettext(
                "%(count)d app deactivated: no new runs start; its pending forms can still be "
                "decided.",
                "%(count)d apps deactivated: no new runs start; their pending forms can still "
                "be decided.",
                n,
            )
            % {"count": n},
            messages.SUCCESS if n else messages.WARNING,
        )

    @admin.display(description=_("API key"))
    def masked_api_key(self, obj: DifyApp) -> str:
        return obj.masked_api_key

    @admin.display(description=_("key fingerprint"))
    def key_fingerprint(self, obj: DifyApp) -> str:
        # As the audit trail keeps it (the first 8 hex digits of the key's SHA-256): two apps
        # with one key, or a key the trail names, are told apart without showing a key.
        return obj.api_key_fingerprint or "—"

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_fields(request, obj))
        if obj is None:
            # A new app has no connection to tell of yet: its save tests it.
            fields = [f for f in fields if f != "health"]
        if obj is not None and not self.has_change_permission(request, obj):
            # Shown read-only, a field is its model value: the key itself. Masked instead.
            fields = ["masked_api_key" if f == "api_key" else f for f in fields]
        return fields

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and not self.has_change_permission(request, obj):
            fields.append("masked_api_key")
        return fields

    def get_queryset(self, request: HttpRequest) -> Any:
        # What waits on each app's connection, counted in the list's one query: decisions held
        # until Dify accepts the app, and decisions waiting out a backoff because Dify could not
        # be reached at all.
        def waiting(**conditions: Any) -> Any:
            return Coalesce(
                Subquery(
                    Decision.objects.filter(
                        form__run__app=OuterRef("pk"), status=Decision.Status.QUEUED, **conditions
                    )
                    .order_by()
                    .values("form__run__app")
                    .annotate(n=Count("pk"))
                    .values("n")
                ),
                0,
            )

        # The app's own entries in the trail (indexed by object).
        trail = AuditEntry.objects.filter(
            object_type="difyapp", object_id=Cast(OuterRef("pk"), CharField())
        )
        return (
            super()
            .get_queryset(request)
            .annotate(
                pending=Coalesce(
                    Subquery(
                        Form.objects.filter(run__app=OuterRef("pk"), status=Form.Status.PENDING)
                        .order_by()
                        .values("run__app")
                        .annotate(n=Count("pk"))
                        .values("n")
                    ),
                    0,
                ),
                # Whether Dify ever answered for the app: a run it started, a connection test,
                # a refusal (over or not).
                checked=Exists(Run.objects.filter(app=OuterRef("pk")).exclude(workflow_run_id=""))
                | Exists(
                    trail.filter(verb__in=["app_connection_tested", "app_refused", "app_accepted"])
                ),
                # The kind of app /info named at the last connection test that reached Dify.
                tested_mode=last_tested_mode(),
                held=waiting(held_for_app=True),
                unreachable=waiting(dify_unreachable=True),
                # Sent before and to be sent again: Dify took the request and did not answer in
                # time, or answered with an error (a Dify that hangs is not "unreachable").
                retrying=Coalesce(
                    Subquery(
                        Decision.objects.filter(form__run__app=OuterRef("pk"))
                        .filter(
                            Q(status=Decision.Status.QUEUED, attempts__gt=0)
                            | Q(status=Decision.Status.DELIVERING, attempts__gt=1),
                            held_for_app=False,
                            dify_unreachable=False,
                        )
                        .order_by()
                        .values("form__run__app")
                        .annotate(n=Count("pk"))
                        .values("n")
                    ),
                    0,
                ),
                # Of those, the ones waiting out a backoff: Dify did not take the last attempt.
                # The others are due now (held for the app until new settings were saved, or
                # sent now by a connection test), which says nothing against Dify.
                backing_off=Coalesce(
                    Subquery(
                        Decision.objects.filter(
                            form__run__app=OuterRef("pk"),
                            status=Decision.Status.QUEUED,
                            attempts__gt=0,
                            held_for_app=False,
                            dify_unreachable=False,
                            next_attempt_at__gt=Now(),
                        )
                        .order_by()
                        .values("form__run__app")
                        .annotate(n=Count("pk"))
                        .values("n")
                    ),
                    0,
                ),
            )
        )

    @admin.display(description=_("connection to Dify"), ordering="refused_at")
    def health(self, obj: DifyApp) -> str:
        if obj.api_key_sealed:
            # Fernet names no key: a process lacking the newest one (restarted out of order
            # during a rotation) and a key lost for good look alike from here.
            return str(
                _(
                    "No key in this process's INBOX_ENCRYPTION_KEYS opens the API key: restart "
                    "it with the key the API key was stored with (during a rotation, the new "
                    "one), or enter the API key again."
                )
            )
        if obj.key_unreadable_now:
            # This process reads it; a follower does not (started without the key): its runs
            # wait for one that does. Not Dify's doing, nor the follower missing.
            return str(
                _(
                    "The follower %(follower)s cannot decrypt the API key with its "
                    "INBOX_ENCRYPTION_KEYS (since %(since)s): the app's runs wait for a "
                    "follower that can. Restart that follower with the key the API key was "
                    "stored with (during a rotation, the new one too), or enter the API key "
                    "again."
                )
                % {
                    "follower": obj.key_unreadable_by,
                    "since": formats.date_format(
                        timezone.localtime(obj.key_unreadable_since or obj.key_unreadable_at),
                        "DATETIME_FORMAT",
                    ),
                }
            )
        if obj.refused_at is None:
            unreachable = getattr(obj, "unreachable", 0)
            if obj.contact_failed_at is not None:
                # What the follower, the reconcile or a delivery last found, until Dify answers.
                values = {
                    "since": formats.date_format(
                        timezone.localtime(obj.contact_failed_since or obj.contact_failed_at),
                        "DATETIME_FORMAT",
                    ),
                    "error": obj.contact_failure,
                }
                if obj.streams_failing:
                    text = str(
                        _(
                            "Run event streams failing since %(since)s (Dify answers its other "
                            "calls): %(error)s"
                        )
                        % values
                    )
                else:
                    text = str(_("Not reachable since %(since)s: %(error)s") % values)
                if unreachable:
                    text += " " + ngettext(
                        "(%(count)d decision waits for Dify to answer.)",
                        "(%(count)d decisions wait for Dify to answer.)",
                        unreachable,
                    ) % {"count": unreachable}
                return text
            if unreachable:
                # Not a refusal (the key is not in question): Dify did not answer at all.
                return ngettext(
                    "Not reachable: %(count)d decision waits for Dify to answer.",
                    "Not reachable: %(count)d decisions wait for Dify to answer.",
                    unreachable,
                ) % {"count": unreachable}
            retrying = getattr(obj, "retrying", 0)
            if retrying and getattr(obj, "backing_off", 0):
                return ngettext(
                    "Not answering: %(count)d decision is being sent again.",
                    "Not answering: %(count)d decisions are being sent again.",
                    retrying,
                ) % {"count": retrying}
            if retrying:
                # Due now (held until new settings were saved, say): nothing says Dify did not
                # answer.
                return ngettext(
                    "%(count)d decision for this app is being sent to Dify now.",
                    "%(count)d decisions for this app are being sent to Dify now.",
                    retrying,
                ) % {"count": retrying}
            if obj.test_failed_at is not None:
                # What the last "Test the connection" found, until Dify answers a call.
                return str(
                    _("The connection test of %(when)s failed: %(error)s")
                    % {
                        "when": formats.date_format(
                            timezone.localtime(obj.test_failed_at), "DATETIME_FORMAT"
                        ),
                        "error": obj.test_failure,
                    }
                )
            tested_mode = getattr(obj, "tested_mode", None)
            if tested_mode in UNUSABLE_MODES:
                return str(
                    _(
                        "Dify says this is a “%(mode)s” app. Such apps have no Human Input "
                        "node, so they cannot be used here: only Workflow and Chatflow apps can."
                    )
                    % {"mode": tested_mode}
                )
            if tested_mode in DIFY_KINDS and not obj.is_dify_mode(tested_mode):
                return str(
                    _("Dify says this app is a %(dify)s, not a %(kind)s: set Mode to match.")
                    % {"dify": DIFY_KINDS[tested_mode], "kind": obj.get_mode_display()}
                )
            if tested_mode and not obj.is_dify_mode(tested_mode):
                # Compared with the mode set now: setting it to match ends the warning.
                return str(
                    _(
                        "Dify names its mode “%(mode)s”, which is not a %(kind)s as set up "
                        "here: set the mode to match."
                    )
                    % {"mode": tested_mode, "kind": obj.get_mode_display()}
                )
            if obj.pk is None or not getattr(obj, "checked", True):
                return str(_("Not checked yet: test the connection."))
            return str(_("OK"))
        if obj.mode_mismatch:
            # Not a refusal of the app: only its starts, the one call of a mode, are refused;
            # its runs' forms and decisions go through (CONTRACT 7.10).
            return str(obj.mode_mismatch_text)
        # Dify's own words; the client's messages never hold the key, and `note_refused`
        # redacted it anyway.
        text = str(
            _("Refused since %(when)s: %(refusal)s")
            % {
                "when": formats.date_format(timezone.localtime(obj.refused_at), "DATETIME_FORMAT"),
                "refusal": obj.refusal,
            }
        )
        if obj.refusal_code == APP_NOT_FOUND_REFUSAL:
            text += " " + str(
                _(
                    "Dify answers 404 for the app as a whole: is the API key another app's, or "
                    "the base URL wrong? Its runs and decisions wait until it answers for them."
                )
            )
        elif obj.unpublished:
            text += " " + str(
                _(
                    "Dify says the app is not available: it may have no published workflow. "
                    "Publish it in Dify (or check its configuration there). Until then no run "
                    "of it can start, while the forms and decisions of its runs under way go "
                    "through. The inbox notices by itself once it is published, or at once with "
                    "“Test the connection”."
                )
            )
        elif obj.refusal_status == 403:
            text += " " + str(
                _(
                    "Dify answers 403: the app may have been disabled or deleted there. Runs it "
                    "will never answer for again can be written off: Runs → “Close here”."
                )
            )
        # What waits on the fix: decisions reviewers made that go once Dify accepts the app.
        held = getattr(obj, "held", 0)
        if held:
            text += " " + ngettext(
                "(%(count)d decision waits to be sent.)",
                "(%(count)d decisions wait to be sent.)",
                held,
            ) % {"count": held}
        return text

    def save_model(self, request: HttpRequest, obj: DifyApp, form: Any, change: bool) -> None:
        if change and not form.has_changed():
            # Saved as it was: its `updated_at` dates its settings (the reconcile counts a run's
            # 404s from it), so it is left as it is.
            return
        super().save_model(request, obj, form, change)
        new_settings = {"api_key", "base_url", "mode"} & set(form.changed_data)
        if change and new_settings:
            # A new key, server or kind of app may be what Dify was waiting for: try again now
            # rather than at the reconcile's next probe.
            obj.settings_changed(actor=request.user)
        if new_settings and not obj.api_key_sealed:
            # The settings are saved as given; what Dify makes of them is said at once, as
            # "Test the connection" says it (a refused key, a wrong URL, another kind of app, the
            # key of another app), and recorded as the test records it: the app's health never
            # reads "OK" for settings Dify did not take.
            self._test(request, obj, failure=messages.WARNING)
        if {"api_key", "base_url"} & set(form.changed_data):
            # Whether another app here sends Dify the same key already.
            if warning := shared_key_warning(obj):
                self.message_user(request, warning, messages.WARNING)

    def _warn_name(self, request: HttpRequest, app: DifyApp, name: str, level: int) -> None:
        warning = name_warning(app, name)
        if warning:
            self.message_user(request, warning, level)

    @admin.action(description=_("Test the connection to Dify"), permissions=["change"])
    def test_connection(self, request: HttpRequest, queryset: Any) -> None:
        """GET /info and /parameters with the app's key: proves the URL, the key and the app."""
        for app in queryset:
            self._test(request, app, failure=messages.ERROR)

    def _test(self, request: HttpRequest, app: DifyApp, *, failure: int) -> None:
        """The connection test of one app (the action's, and the save's of new settings): what
        Dify answered, said with `failure` as the level of what is wrong, and recorded on the
        app and in the trail."""
        warning = messages.WARNING if failure == messages.ERROR else failure
        try:
            client = DifyClient.for_app(app)
            info = client.get_info()
            parameters = client.get_parameters()
        except DifyError as exc:
            AuditEntry.record(
                "app_connection_tested", app, actor=request.user, result=str(exc)[:300]
            )
            if isinstance(exc, DifyStatusError) and exc.refuses_app:
                app.note_refused(exc, "connection test")
            else:
                # No refusal of the key or the app, but no Dify either (a wrong URL, a
                # server down): the app's list shows it until Dify answers.
                app.note_test_failed(exc)
            if isinstance(exc, DifyStatusError) and exc.code == UNPUBLISHED_REFUSAL:
                # Dify's words ("App unavailable, please check your app configurations.") say
                # nothing of what to do.
                self.message_user(
                    request,
                    _(
                        "%(app)s: Dify says the app is not available: it may have no published "
                        "workflow. Publish it in Dify, then test the connection again. "
                        "(%(error)s)"
                    )
                    % {"app": app.name, "error": exc},
                    failure,
                )
                return
            # The client's messages never include the key.
            self.message_user(
                request,
                _("%(app)s: Dify did not answer as expected: %(error)s")
                % {"app": app.name, "error": exc},
                failure,
            )
            return
        mode = info.get("mode")
        if unusable := unusable_warning(app, mode):
            # A plain chat, completion or agent app: the key works, and nothing of the app can
            # be used here. Not "connected", and no mode to set.
            app.note_accepted("connection test", published=True)
            AuditEntry.record(
                "app_connection_tested",
                app,
                actor=request.user,
                result="unusable",
                mode=str(mode or ""),
            )
            self.message_user(request, unusable, failure)
            return
        # /parameters answers once a workflow is published; /info names the app's kind.
        kind = app.is_dify_mode(mode)
        app.note_accepted("connection test", kind=kind, published=True)
        # Whether the key sees this app's runs (another app's key answers /info too): the
        # name /info gave before, or the app's name here, is compared first, while the
        # check records /info's name once the key proves itself.
        name = str(info.get("name") or "")
        self._warn_name(request, app, name, warning)
        if not app.dify_name:
            # None known yet: the name the administrator was just shown (with the warning
            # above when it is not the app's name here) is taken. The app's runs, asked
            # about below and by later checks, still tell another app's key.
            app.note_dify_name(name)
        check = check_app(app, source="connection test", client=client, info=info)
        if check.refused:
            self.message_user(
                request,
                _(
                    "%(app)s: Dify knows none of this app's runs with this key (%(detail)s): "
                    "is it the key of another app? Its runs and decisions wait until Dify "
                    "answers for them."
                )
                % {"app": app.name, "detail": check.detail},
                failure,
            )
            # Not connected, whatever /info answered: `check_app` recorded the refusal, the
            # decisions waiting on the app stay held (sent now, they would only meet the
            # same 404s), and the trail says what the test found.
            AuditEntry.record(
                "app_connection_tested",
                app,
                actor=request.user,
                result="refused",
                detail=check.detail[:300],
                mode=str(mode or ""),
            )
            return
        # Decisions waiting out a retry's backoff go now, not at its end.
        sent_now = Decision.send_waiting_now(app)
        AuditEntry.record(
            "app_connection_tested",
            app,
            actor=request.user,
            result="connected",
            mode=str(mode or ""),
            sent_now=sent_now,
        )
        if sent_now:
            self.message_user(
                request,
                ngettext(
                    "%(app)s: %(n)d decision waiting to be sent again goes now.",
                    "%(app)s: %(n)d decisions waiting to be sent again go now.",
                    sent_now,
                )
                % {"app": app.name, "n": sent_now},
                messages.SUCCESS,
            )
        self.message_user(
            request,
            _(
                "%(app)s: connected. Dify calls it “%(name)s” (mode %(mode)s); "
                "%(inputs)d start input(s), file upload %(upload)s."
            )
            % {
                "app": app.name,
                "name": info.get("name") or "?",
                "mode": mode or "?",
                "inputs": len(parameters.get("user_input_form") or []),
                "upload": _("on")
                if (parameters.get("file_upload") or {}).get("enabled")
                or ((parameters.get("file_upload") or {}).get("image") or {}).get("enabled")
                else _("off"),
            },
            messages.SUCCESS,
        )
        if warning_text := mode_warning(app, mode):
            self.message_user(request, warning_text, warning)


class PeopleSearchAdmin(admin.ModelAdmin):
    """A list whose search finds people by the name the admin shows them by ("Alice Smith",
    "王芳" for 王 芳: `people_named`) as well as by Django's search of `search_fields`: the
    records of `person_fields` (an account field each) holding one of them."""

    person_fields: tuple[str, ...] = ()

    def get_search_results(
        self, request: HttpRequest, queryset: Any, search_term: str
    ) -> tuple[Any, bool]:
        found, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        people = list(people_named(search_term).values_list("pk", flat=True)[:PEOPLE_FOUND_CAP])
        if not people or not self.person_fields:
            return found, may_have_duplicates
        named = Q()
        for field in self.person_fields:
            named |= Q(**{f"{field}__in": people})
        return found | queryset.filter(named), True


# How many people a name found in an admin search stands for at most.
PEOPLE_FOUND_CAP = 200


class RecordAdmin(admin.ModelAdmin):
    """What Dify said, what reviewers decided and the audit trail of both: shown, never edited
    or added by hand. A run's status or a decision's state changed here would bypass the verbs
    that keep them consistent (a decision set back to queued would be sent twice), and deleting
    one would lose a decision. What an administrator may do to them is offered as actions (stop,
    reassign, retry, export), which go through those verbs and the audit trail."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class FormInline(ToTheSecondInline, admin.TabularInline):
    model = Form
    fields = ("node_title", "status", "expiration_time", "created_at")
    readonly_fields = ("node_title", "status", "expiration_time", "created_at")
    extra = 0
    can_delete = False
    show_change_link = True


def _account(user: Any, username: str) -> str | None:
    """Who made a record: their account, by name and username ("Alice Smith (alice)"), or the
    username it kept once the account is gone."""
    if user is not None:
        return chooser_label(user)
    if username:
        return str(_("%(username)s (account deleted)") % {"username": username})
    return None


def _audit_link(public_id: Any) -> str:
    """A link to the audit list searched by a record's public id: every entry about it (a form's
    and a decision's entries carry their run's and form's ids too, `AuditEntry.build`)."""
    url = reverse("admin:inbox_auditentry_changelist") + "?" + urlencode({"q": str(public_id)})
    return format_html('<a href="{}">{}</a>', url, _("Audit entries"))


class MessageFileInline(admin.TabularInline):
    """The files a run's message was sent with (a chatflow's), each a link to its own page."""

    model = MessageFile.runs.through
    verbose_name = _("message file")
    verbose_name_plural = _("message files")
    fields = ("file", "category", "size", "uploader")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).select_related("messagefile__uploaded_by")

    @admin.display(description=_("name"))
    def file(self, obj: Any) -> str:
        sent = obj.messagefile
        url = reverse("admin:inbox_messagefile_change", args=[sent.pk])
        return format_html('<a href="{}">{}</a>', url, sent.name)

    @admin.display(description=_("category"))
    def category(self, obj: Any) -> str:
        return str(obj.messagefile.get_category_display())

    @admin.display(description=_("size"))
    def size(self, obj: Any) -> int:
        return int(obj.messagefile.size)

    @admin.display(description=_("uploaded by"))
    def uploader(self, obj: Any) -> str | None:
        sent = obj.messagefile
        return _account(sent.uploaded_by, sent.uploaded_by_username)


@admin.register(Run)
class RunAdmin(PeopleSearchAdmin, JsonValuesSearchAdmin, ToTheSecondAdmin, RecordAdmin):
    person_fields = ("started_by",)
    list_display = ["__str__", "app", "status", "dify_user", "starter", "created_at"]
    list_filter = ["status", "app", "source"]
    json_search_fields = ("inputs",)
    search_fields = [
        # What it was started with: its start inputs' values (and names) and a chatflow's
        # message, where the person a run is about is named.
        "inputs",
        "query",
        "=public_id",
        "workflow_run_id",
        "task_id",
        "dify_user",
        "conversation_id",
        "app__name",
        # Its app's server: the runs of one Dify, when the inbox serves several.
        "app__base_url",
        "started_by__username",
        # As they were named when they started it: found once their account is deleted too.
        "started_by_username",
    ]
    list_select_related = ["app", "started_by"]
    readonly_fields = ["following", "starter", "trail"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "app",
                    "status",
                    "trail",
                    "workflow_run_id",
                    "dify_user",
                    "source",
                    "starter",
                    "created_at",
                    "finished_at",
                ]
            },
        ),
        (_("Following"), {"fields": ["following", "last_event_at", "checked_at"]}),
        (_("Content"), {"fields": ["inputs", "query", "outputs", "answer", "error"]}),
        (
            _("Details"),
            {
                "classes": ["collapse"],
                "fields": [
                    "public_id",
                    "task_id",
                    "conversation_id",
                    "message_id",
                    "follow_wanted",
                    "follow_snapshot",
                    "lease_owner",
                    "lease_expires_at",
                    "needs_reconcile",
                    "give_ups",
                    "refollow_after",
                    "events_unavailable",
                    "updated_at",
                ],
            },
        ),
    ]
    date_hierarchy = "created_at"
    inlines = [FormInline, MessageFileInline]
    actions = ["stop_run", "close_here"]

    @admin.display(description=_("started by"), ordering="started_by_username")
    def starter(self, obj: Run) -> str | None:
        return _account(obj.started_by, obj.started_by_username)

    @admin.display(description=_("records"))
    def trail(self, obj: Run) -> str:
        """Its forms, their decisions and every entry of the trail about any of them, each a
        list searched by the run's public id."""
        if obj.pk is None:
            return self.get_empty_value_display()
        query = urlencode({"q": str(obj.public_id)})
        forms_url = reverse("admin:inbox_form_changelist") + "?" + query
        decisions_url = reverse("admin:inbox_decision_changelist") + "?" + query
        return format_html(
            '<a href="{}">{}</a> · <a href="{}">{}</a> · {}',
            forms_url,
            _("Forms"),
            decisions_url,
            _("Decisions"),
            _audit_link(obj.public_id),
        )

    @admin.display(description=_("following"))
    def following(self, obj: Run) -> str:
        """Who reads the run's events, or why nobody does: what an operator asks first about a
        run whose forms do not come in."""
        if obj.is_finished:
            return str(_("Ended: nothing more to read."))
        if obj.lease_owner and obj.lease_expires_at and obj.lease_expires_at > timezone.now():
            return str(_("Read now by the follower %(owner)s.") % {"owner": obj.lease_owner})
        if obj.follow_wanted:
            return str(_("Waiting for a follower to read it."))
        if obj.events_unavailable:
            return str(
                _(
                    "Dify does not show this run's events (404): the reconcile follows it "
                    "through its run detail."
                )
            )
        if obj.needs_reconcile:
            text = ngettext(
                "The follower gave up on its stream %(count)d time in a row.",
                "The follower gave up on its stream %(count)d times in a row.",
                max(obj.give_ups, 1),
            ) % {"count": max(obj.give_ups, 1)}
            if obj.refollow_after and obj.refollow_after > timezone.now():
                when = to_the_second(obj.refollow_after)
                # Not a sentence ending on the time: "6:47 a.m." would end in "a.m..".
                return (
                    text
                    + " "
                    + str(
                        _(
                            "The reconcile hands it back no later than %(when)s, sooner if "
                            "Dify's run detail shows news or a stream of its app opens."
                        )
                        % {"when": when}
                    )
                )
            return text + " " + str(_("The reconcile hands it back at its next pass."))
        return str(
            _("No stream open: it waits for a person; the reconcile checks on it regularly.")
        )

    def has_stop_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("inbox.stop_run")

    @admin.action(description=_("Stop the selected runs in Dify"), permissions=["stop"])
    def stop_run(self, request: HttpRequest, queryset: Any) -> None:
        """Dify's stop endpoint for the run's task, as the run's own Dify user."""
        from inbox.runs import RunNotStoppable, stop_run

        for run in queryset.select_related("app"):
            try:
                # The same rules as the page and the API: a run parked at a form is not
                # stoppable in Dify, and saying "stop requested" for it would be untrue.
                stop_run(run, actor=request.user)
            except RunNotStoppable as exc:
                self.message_user(
                    request,
                    _("%(run)s: not stopped: %(error)s") % {"run": run, "error": exc.message},
                    messages.WARNING,
                )
                continue
            except DifyError as exc:
                self.message_user(
                    request,
                    _("%(run)s: not stopped: %(error)s") % {"run": run, "error": exc},
                    messages.ERROR,
                )
                continue
            self.message_user(
                request,
                _("%(run)s: stop requested; the run's status follows from Dify's events.")
                % {"run": run},
                messages.SUCCESS,
            )

    def has_close_here_permission(self, request: HttpRequest) -> bool:
        # A record admin edits nothing by hand: the runs' change permission grants this verb.
        return request.user.has_perm("inbox.change_run")

    @admin.action(
        description=_("Close here: Dify no longer has, or will not answer for, these runs"),
        permissions=["close_here"],
    )
    def close_here(self, request: HttpRequest, queryset: Any) -> TemplateResponse | None:
        """Write runs off in the inbox alone (`Run.close_here`), for a Dify that lost them or a
        server retired: nothing is asked of Dify. It cannot be undone (the forms' tokens go,
        their recipients are told), so a page first says what it will close, as a deletion's."""
        if "confirm" not in request.POST:
            count = queryset.count()
            preview = list(
                queryset.select_related("app").annotate(
                    open_forms=Count("forms", filter=Q(forms__status=Form.Status.PENDING))
                )[:REASSIGN_PREVIEW]
            )
            context = {
                **self.admin_site.each_context(request),
                "title": _("Close runs here"),
                "opts": self.model._meta,
                "runs": preview,
                "count": count,
                "more": count - len(preview),
                "select_across": request.POST.get("select_across") == "1",
                "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
            }
            return TemplateResponse(request, "admin/inbox/run/close_here.html", context)
        for run in queryset:
            if run.is_finished:
                self.message_user(
                    request,
                    _("%(run)s: not closed: it had ended already.") % {"run": run},
                    messages.WARNING,
                )
                continue
            closed = run.close_here(actor=request.user)
            if closed is None:
                self.message_user(
                    request,
                    _(
                        "%(run)s: not closed: a decision on one of its forms is being sent to "
                        "Dify right now. Try again in a few minutes, once that attempt has ended."
                    )
                    % {"run": run},
                    messages.WARNING,
                )
            else:
                self.message_user(
                    request,
                    ngettext(
                        "%(run)s: closed here; %(count)d open form closed as gone from Dify, "
                        "its recipients told.",
                        "%(run)s: closed here; %(count)d open forms closed as gone from Dify, "
                        "their recipients told.",
                        closed,
                    )
                    % {"run": run, "count": closed},
                    messages.SUCCESS,
                )
        return None


class FormRecipientInline(ToTheSecondInline, admin.TabularInline):
    model = FormRecipient
    fields = (
        "email",
        "language",
        "user",
        "sent_at",
        "next_send_at",
        "reminded_at",
        "link_opened_at",
        "link_used_at",
        "last_error",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class UserChoiceField(forms.ModelChoiceField):
    """A user chosen by their name and username ("张敏 (zhangmin)"), not the username alone."""

    def label_from_instance(self, obj: Any) -> str:
        return chooser_label(obj)


class UsersChoiceField(forms.ModelMultipleChoiceField):
    """Users chosen by their name and username, as `UserChoiceField`."""

    def label_from_instance(self, obj: Any) -> str:
        return chooser_label(obj)


class ReassignForm(forms.Form):
    to_user = UserChoiceField(
        queryset=get_user_model().objects.filter(is_active=True).order_by("username"),
        required=False,
        label=_("Reviewer"),
        help_text=_("Routed to and held by this reviewer, who is emailed if they have an address."),
    )
    groups = forms.ModelMultipleChoiceField(
        queryset=Group.objects.order_by("name"),
        required=False,
        label=_("Reviewer groups"),
        help_text=_(
            "Routed to these groups' active members, who keep the links they were emailed; "
            "members not emailed yet are emailed only when the form's route emails its "
            "reviewers."
        ),
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if not cleaned.get("to_user") and not cleaned.get("groups"):
            raise forms.ValidationError(_("Choose a reviewer, a group, or both."))
        return cleaned


class RouteListFilter(admin.RelatedFieldListFilter):
    """The routes, named with their app, in one query: Django's own filter reads each route's
    app on its own (`Route.__str__`), a query per route on every page of the list."""

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> Any:
        return [(route.pk, str(route)) for route in Route.objects.select_related("app")]


class ActiveUserListFilter(admin.RelatedFieldListFilter):
    """Who holds a form: active accounts only (one query), plus "-" for nobody."""

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> Any:
        users = get_user_model().objects.filter(is_active=True).order_by("username")
        return [(user.pk, chooser_label(user)) for user in users]


class AskedFilter(admin.SimpleListFilter):
    title = _("assigned to")
    parameter_name = "asked"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            ("nobody", _("Nobody who can answer")),
            ("user", _("A reviewer by name")),
            ("group", _("A group")),
        ]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        if self.value() == "nobody":
            return queryset.asked_of_nobody()
        if self.value() == "user":
            return queryset.filter(
                Exists(Form.assigned_users.through.objects.filter(form_id=OuterRef("pk")))
            )
        if self.value() == "group":
            return queryset.filter(
                Exists(Form.assigned_groups.through.objects.filter(form_id=OuterRef("pk")))
            )
        return queryset


# Shown on a form's page after its status: its decisions and a link to its trail.
TRAIL_FIELDS = ("decisions_made", "trail")

# How many of the forms a bulk action would act on its page names; the rest are counted.
REASSIGN_PREVIEW = 20


@admin.register(Form)
class FormAdmin(PeopleSearchAdmin, ToTheSecondAdmin, RecordAdmin):
    person_fields = ("claimed_by", "assigned_users")
    list_display = [
        "node_title",
        "run",
        "status",
        "expiration_time",
        "holder",
        "assignees",
        "created_at",
    ]
    list_filter = [
        "status",
        "run__app",
        ("route", RouteListFilter),
        AskedFilter,
        ("claimed_by", ActiveUserListFilter),
    ]
    search_fields = [
        "=public_id",
        "=run__public_id",
        "node_title",
        "node_id",
        "form_id",
        "content",
        "recipients__email",
        "run__app__name",
        "run__app__base_url",
        "claimed_by__username",
        "assigned_users__username",
        "assigned_groups__name",
    ]
    list_select_related = ["run__app", "claimed_by"]
    exclude = [
        "form_token",
        "assigned_users",
        "assigned_groups",
        # Shown in words below, not as JSON.
        "approval_channels",
        "reminder_offsets",
    ]
    readonly_fields = [
        "public_id",
        "form_id",
        "created_at",
        "updated_at",
        "answerable",
        "channels",
        "reminders",
        "route",
        "routed_at",
        "assignees",
        "decisions_made",
        "trail",
    ]
    date_hierarchy = "created_at"
    inlines = [FormRecipientInline]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # Its decisions and its trail first, beside its status: what an auditor follows on.
        fields = [f for f in super().get_fields(request, obj) if f not in TRAIL_FIELDS]
        at = fields.index("status") + 1 if "status" in fields else 0
        return [*fields[:at], *TRAIL_FIELDS, *fields[at:]]

    @admin.display(description=_("decisions"))
    def decisions_made(self, obj: Form) -> str:
        """Each decision made on the form (a failed one given back leaves the next), a link to
        its page, with who made it and when."""
        if obj.pk is None:
            return self.get_empty_value_display()
        made = list(obj.decisions.select_related("reviewer").order_by("created_at", "pk"))
        if not made:
            return str(_("None yet."))
        rows = []
        for decision in made:
            decision.form = obj
            url = reverse("admin:inbox_decision_change", args=[decision.pk])
            rows.append(
                (url, str(decision), decision.decider_label, to_the_second(decision.created_at))
            )
        return format_html_join(mark_safe("<br>"), '<a href="{}">{}</a> — {}, {}', rows)

    @admin.display(description=_("audit trail"))
    def trail(self, obj: Form) -> str:
        return _audit_link(obj.public_id) if obj.pk is not None else self.get_empty_value_display()

    actions = ["reassign", "resend_email"]

    def get_queryset(self, request: HttpRequest) -> Any:
        # The token is never shown: not read, so not decrypted for every row of a page.
        # Whether it has one is asked of the database, without reading it.
        return (
            super()
            .get_queryset(request)
            .defer("form_token")
            .annotate(has_token=ExpressionWrapper(~Q(form_token=""), output_field=BooleanField()))
            .prefetch_related("assigned_users", "assigned_groups")
        )

    @admin.display(boolean=True, description=_("Answerable via API"))
    def answerable(self, obj: Form) -> bool:
        return bool(obj.has_token)  # type: ignore[attr-defined]

    @admin.display(description=_("approval channels"))
    def channels(self, obj: Form) -> str:
        # Where Dify says the form is answered (`approval_channels`, CONTRACT D9).
        words = {
            "webapp": _("web app"),
            "email": pgettext_lazy("approval channel", "email"),
            "console": _("console"),
        }
        named = [str(words.get(str(c), c)) for c in obj.approval_channels or []]
        return ", ".join(named) or self.get_empty_value_display()

    @admin.display(description=_("reminder offsets"))
    def reminders(self, obj: Form) -> str:
        # As a route's reminders are typed ("24h, 52m"), before the form expires.
        return offsets_text(obj.reminder_offsets or []) or self.get_empty_value_display()

    @admin.display(description=_("claimed by"), ordering="claimed_by__username")
    def holder(self, obj: Form) -> str:
        # Named as the choosers name people ("Alice Smith (alice)"), not by the username alone.
        return chooser_label(obj.claimed_by) if obj.claimed_by else self.get_empty_value_display()

    @admin.display(description=_("assigned to"))
    def assignees(self, obj: Form) -> str:
        names = [chooser_label(u) for u in obj.assigned_users.all()]
        names += [f"@{g.name}" for g in obj.assigned_groups.all()]
        return ", ".join(names) or "—"

    def has_reassign_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("inbox.reassign_form")

    def has_resend_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("inbox.resend_form_emails")

    @admin.action(description=_("Reassign the selected forms…"), permissions=["reassign"])
    def reassign(self, request: HttpRequest, queryset: Any) -> HttpResponse | None:
        """An intermediate page picks the reviewer and groups; they replace the routing. Only
        forms still waiting for a decision: who was asked about a closed one is its record.

        "Select all" is carried through the page as `select_across`, and the page posts back
        to the list's own address (its filters and search): the selection is derived again
        there, never written into the page one form at a time (past ~1,000 forms that is more
        fields than Django accepts)."""
        form = ReassignForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            to_user = form.cleaned_data["to_user"]
            language = (
                ReviewerProfile.languages_of([to_user]).get(to_user.pk, settings.LANGUAGE_CODE)
                if to_user is not None
                else None
            )
            groups = list(form.cleaned_data["groups"])
            total = queryset.count()
            # Closed forms are skipped without a lock; `reassign` checks again under one.
            waiting = (
                queryset.filter(status=Form.Status.PENDING)
                .exclude(expiration_time__lte=timezone.now())
                .select_related(None)
                .prefetch_related(None)
                .only("pk")
            )
            done = sum(
                item.reassign(to_user=to_user, groups=groups, actor=request.user, language=language)
                for item in waiting
            )
            skipped = total - done
            if done:
                self.message_user(
                    request, _("%(n)d form(s) reassigned.") % {"n": done}, messages.SUCCESS
                )
            if skipped:
                self.message_user(
                    request,
                    _(
                        "%(n)d form(s) skipped: no longer waiting for a decision (decided, "
                        "expired or closed), so who was asked stays on record."
                    )
                    % {"n": skipped},
                    messages.WARNING,
                )
            return None
        count = queryset.count()
        preview = list(queryset.select_related("run__app", "claimed_by")[:REASSIGN_PREVIEW])
        context = {
            **self.admin_site.each_context(request),
            "title": _("Reassign forms"),
            "opts": self.model._meta,
            # Each form with who holds it and who it asks, named as the choosers below name them.
            "forms": [
                (
                    item,
                    chooser_label(item.claimed_by) if item.claimed_by else "—",
                    self.assignees(item),
                )
                for item in preview
            ],
            "count": count,
            "more": count - len(preview),
            "select_across": request.POST.get("select_across") == "1",
            "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
            "reassign_form": form,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/inbox/form/reassign.html", context)

    @admin.action(description=_("Resend the email to every recipient"), permissions=["resend"])
    def resend_email(self, request: HttpRequest, queryset: Any) -> None:
        from inbox import notify

        sent = 0
        skipped = 0
        for item in queryset.select_related("run__app"):
            count = notify.resend_form_emails(item)
            if count:
                AuditEntry.record("form_emails_resent", item, actor=request.user, sent=count)
                sent += count
            else:
                skipped += 1
        self.message_user(
            request,
            _("%(sent)d email(s) sent; %(skipped)d form(s) skipped (closed, or no recipients).")
            % {"sent": sent, "skipped": skipped},
            messages.SUCCESS if sent else messages.WARNING,
        )


class RouteRecipientFormSet(BaseInlineFormSet):  # type: ignore[type-arg]
    def clean(self) -> None:
        """One address once: routing compares addresses in any case, so "Ann@x.org" and
        "ann@x.org" would be one recipient, emailed in one of the two languages."""
        super().clean()
        seen: set[str] = set()
        for form in self.forms:
            if not hasattr(form, "cleaned_data") or form.cleaned_data.get("DELETE"):
                continue
            email = (form.cleaned_data.get("email") or "").lower()
            if email and email in seen:
                raise ValidationError(
                    _("%(email)s is on the list twice; keep it once.") % {"email": email}
                )
            seen.add(email)


class RouteRecipientInline(admin.TabularInline):
    model = RouteRecipient
    formset = RouteRecipientFormSet
    extra = 1


@admin.register(Route)
class RouteAdmin(PeopleSearchAdmin, AuditedAdmin):
    audit_name = "route"
    person_fields = ("users",)

    def audit_values(self, obj: Route) -> dict[str, Any]:
        return obj.audit_values()

    list_display = [
        "name",
        "app",
        "node_or_default",
        "priority",
        "who",
        "allow_guests",
        "reminders",
        "is_active",
    ]
    list_filter = ["app", "is_active", "allow_guests"]
    search_fields = [
        "name",
        "node",
        "app__name",
        "recipients__email",
        "users__username",
        "groups__name",
    ]
    list_select_related = ["app"]
    filter_horizontal = ["groups", "users"]
    inlines = [RouteRecipientInline]

    fieldsets = [
        (None, {"fields": ["app", "name", "node", "priority", "is_active"]}),
        (_("Reviewers"), {"fields": ["groups", "users"]}),
        (_("Email"), {"fields": ["email_reviewers", "language", "allow_guests", "reminders"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).prefetch_related("groups", "users", "recipients")

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        route = form.instance
        before: dict[str, Any] = getattr(request, "_audit_before", {})
        after = self.audit_values(route) if change and before else {}
        asks = ("users", "groups", "recipients")
        if after and any(before.get(name) != after[name] for name in asks):
            # A form is routed once, when it comes in: who a route asks now is not who its
            # waiting forms ask. Said, with the way to move them.
            waiting = Form.objects.filter(route=route, status=Form.Status.PENDING).count()
            if waiting:
                url = (
                    reverse("admin:inbox_form_changelist")
                    + "?"
                    + urlencode(
                        {"route__id__exact": route.pk, "status__exact": Form.Status.PENDING}
                    )
                )
                self.message_user(
                    request,
                    format_html(
                        '{}{}<a href="{}">{}</a>',
                        ngettext(
                            "%(count)d pending form of this route keeps the reviewers it was "
                            "routed to: a route's change applies to forms that come in from "
                            "now on.",
                            "%(count)d pending forms of this route keep the reviewers they were "
                            "routed to: a route's change applies to forms that come in from "
                            "now on.",
                            waiting,
                        )
                        % {"count": waiting},
                        sentence_gap(),
                        url,
                        _("Reassign them from the Forms list."),
                    ),
                    messages.WARNING,
                )
        if Route.objects.filter(pk=route.pk).asking_nobody().exists():
            # Saved as asked (a route may be set up before its people), but its forms would wait
            # unseen by anyone but staff: said at once. A group with no active member asks no
            # one, like a deactivated account.
            self.message_user(
                request,
                worded(
                    str(
                        _(
                            "The route “%(name)s” asks nobody: its forms will wait where only "
                            "administrators see them. Add reviewers, groups or email addresses."
                        )
                    ),
                    name=route.name,
                ),
                messages.WARNING,
            )

        if route.is_active and route.node:
            self._say_unseen_node(request, route)

        empty = [
            f"@{group.name}"
            for group in route.groups.exclude(user__is_active=True).order_by("name")
        ]
        if route.is_active and empty:
            # Kept on the route (a member added later is asked), but nobody in them is asked now.
            self.message_user(
                request,
                worded(
                    str(
                        _(
                            "Groups with no active member ask nobody, though the route lists "
                            "them: %(names)s."
                        )
                    ),
                    names=", ".join(empty),
                ),
                messages.WARNING,
            )

        turned_away = [
            chooser_label(user) for user in route.users.filter(is_active=False).order_by("username")
        ]
        if route.is_active and turned_away:
            # Kept on the route (reactivated, they are asked again), but asked by no form now.
            self.message_user(
                request,
                worded(
                    str(
                        _(
                            "Deactivated accounts are not asked, though the route lists them: "
                            "%(names)s."
                        )
                    ),
                    names=", ".join(turned_away),
                ),
                messages.WARNING,
            )

    def _say_unseen_node(self, request: HttpRequest, route: Route) -> None:
        """A node route whose pattern matches no node the app's captured forms came from (the
        nodes the inbox's node filter lists) may be misspelt: said as a possibility, since the
        node may simply not have asked yet. Nothing is said of an app with no form yet."""
        seen = list(
            Form.objects.filter(run__app_id=route.app_id)
            .values_list("node_id", "node_title")
            .distinct()
            .order_by()
        )
        if not seen or any(route.matches(node_id, title) for node_id, title in seen):
            return
        labels = sorted(
            (f"{title} ({node_id})" if title else node_id for node_id, title in seen),
            key=str.casefold,
        )
        shown = labels[:10]
        self.message_user(
            request,
            worded(
                str(
                    _(
                        "No form of this app captured so far came from a node named “%(node)s” "
                        "(by id, or by title with * and ?). If the route is meant for a node "
                        "that has asked before, check the spelling; the nodes seen so far: "
                        "%(nodes)s."
                    )
                ),
                node=route.node,
                nodes=", ".join(shown) + (" …" if len(seen) > len(shown) else ""),
            ),
            messages.WARNING,
        )

    def formfield_for_manytomany(self, db_field: Any, request: Any = None, **kwargs: Any) -> Any:
        if db_field.name == "users":
            # Named as people write them, with their usernames.
            kwargs["form_class"] = UsersChoiceField
        field = super().formfield_for_manytomany(db_field, request, **kwargs)
        if db_field.name == "users" and field is not None and field.queryset is not None:
            # Active accounts to choose from; a deactivated one stays only where it is listed
            # already (so saving does not drop it unsaid).
            route_id = (request.resolver_match.kwargs.get("object_id") if request else None) or 0
            field.queryset = field.queryset.filter(
                Q(is_active=True) | Q(inbox_routes__pk=route_id)
            ).distinct()
        return field

    @admin.display(description=_("node"))
    def node_or_default(self, obj: Route) -> str:
        return obj.node or str(_("(default)"))

    @admin.display(description=_("who"))
    def who(self, obj: Route) -> str:
        names = [f"@{g.name}" for g in obj.groups.all()]
        names += [chooser_label(u) for u in obj.users.all()]
        names += [r.email for r in obj.recipients.all()]
        return ", ".join(names) or "—"


class MadeByFilter(admin.SimpleListFilter):
    title = _("made by")
    parameter_name = "made_by"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("reviewer", _("A reviewer")), ("guest", _("A guest"))]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        # As `Decision.by_reviewer` tells them: a reviewer's account, or the username it kept
        # once the account was deleted.
        by_reviewer = Q(reviewer__isnull=False) | ~Q(reviewer_username="")
        if self.value() == "reviewer":
            return queryset.filter(by_reviewer)
        if self.value() == "guest":
            return queryset.exclude(by_reviewer)
        return queryset


class DeliveryFilter(admin.SimpleListFilter):
    """The decisions delivered by presumption that Dify has not confirmed yet
    (`Decision.delivery_presumed`): the dashboard counts them and links here."""

    title = _("delivery")
    parameter_name = "delivery"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("presumed", _("Presumed, not confirmed by Dify yet"))]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        if self.value() == "presumed":
            return queryset.filter(Decision.presumed())
        return queryset


@admin.register(Decision)
class DecisionAdmin(PeopleSearchAdmin, JsonValuesSearchAdmin, ToTheSecondAdmin, RecordAdmin):
    person_fields = ("reviewer",)
    list_display = [
        "public_id",
        "form",
        "chosen_action",
        "decider",
        "status",
        "attempts",
        "last_error",
        "created_at",
    ]
    list_filter = ["status", MadeByFilter, DeliveryFilter, "held_for_app", "form__run__app"]
    search_fields = [
        # The ids the API, the pages' addresses and the audit trail give.
        "=public_id",
        "=form__public_id",
        "=form__run__public_id",
        "form__node_title",
        "form__form_id",
        "action_id",
        "guest_email",
        "reviewer__username",
        "reviewer__first_name",
        "reviewer__last_name",
        # As they were named when they decided: found once their account is deleted too.
        "reviewer_username",
        "reviewer_name",
        "form__run__app__name",
        "form__run__app__base_url",
        # The values the reviewer or guest entered (a note, an IBAN, an upload's name).
        "inputs",
    ]
    json_search_fields = ("inputs",)
    list_select_related = ["form", "reviewer"]
    date_hierarchy = "created_at"

    def get_queryset(self, request: HttpRequest) -> Any:
        # The form's token is never shown here: not read, so not decrypted for every row.
        return super().get_queryset(request).defer("form__form_token")

    readonly_fields = [
        "public_id",
        "created_at",
        "updated_at",
        "delivered_at",
        "delivery_started_at",
        "next_attempt_at",
        "maybe_applied",
        "dify_unreachable",
        "held_for_app",
        "total_attempts",
        "chosen_action",
        "trail",
    ]
    actions = ["retry_delivery", "reopen_form"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # Its trail right after its form (a link to the form's page): where an auditor goes on.
        fields = [f for f in super().get_fields(request, obj) if f != "trail"]
        at = fields.index("form") + 1 if "form" in fields else 0
        return [*fields[:at], "trail", *fields[at:]]

    @admin.display(description=_("audit trail"))
    def trail(self, obj: Decision) -> str:
        return _audit_link(obj.public_id) if obj.pk is not None else self.get_empty_value_display()

    @admin.display(description=_("action"), ordering="action_id")
    def chosen_action(self, obj: Decision) -> str:
        # The button the reviewer clicked ("Approve refund"), not only its id.
        return obj.action_title

    @admin.display(description=_("decided by"))
    def decider(self, obj: Decision) -> str:
        if obj.reviewer_id and obj.reviewer:
            return chooser_label(obj.reviewer)
        return obj.decider_label

    @admin.display(description=_("attempts in all"))
    def total_attempts(self, obj: Decision) -> int:
        # `attempts` starts again at each retry an administrator asks; this counts every send.
        return obj.total_attempts()

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("inbox.retry_decision")

    def _each_failed(
        self, request: HttpRequest, queryset: Any, act: Any, message: Any, done_name: str
    ) -> None:
        """`act` on each selected failed decision (True when it did something), and say how
        many it did and how many it skipped."""
        # Counted first: the ones acted on leave a list filtered by status.
        selected = queryset.count()
        done = sum(act(decision) for decision in queryset.filter(status=Decision.Status.FAILED))
        skipped = selected - done
        self.message_user(
            request,
            message % {done_name: done, "skipped": skipped},
            messages.SUCCESS if done else messages.WARNING,
        )

    @admin.action(
        description=_("Give the forms of the selected failed decisions back for a new decision"),
        permissions=["retry"],
    )
    def reopen_form(self, request: HttpRequest, queryset: Any) -> None:
        self._each_failed(
            request,
            queryset,
            lambda decision: decision.reopen_form(actor=request.user),
            _(
                "%(reopened)d form(s) given back to their reviewers for a new decision; "
                "%(skipped)d skipped (only the form of a failed decision, still failed and not "
                "past its time, can be)."
            ),
            "reopened",
        )

    @admin.action(
        description=_("Retry delivery of the selected failed decisions"), permissions=["retry"]
    )
    def retry_delivery(self, request: HttpRequest, queryset: Any) -> None:
        self._each_failed(
            request,
            queryset,
            lambda decision: decision.retry_delivery(actor=request.user),
            _(
                "%(retried)d decision(s) queued for delivery again; %(skipped)d skipped (only a "
                "failed decision on a failed form can be retried)."
            ),
            "retried",
        )


@admin.register(Upload)
class UploadAdmin(PeopleSearchAdmin, ToTheSecondAdmin, RecordAdmin):
    person_fields = ("uploaded_by",)
    list_display = [
        "name",
        "form",
        "input_name",
        "category",
        "size",
        "uploader",
        "guest_email",
        "created_at",
    ]
    list_filter = ["category"]
    search_fields = [
        "name",
        "upload_file_id",
        "form__node_title",
        "=form__public_id",
        "uploaded_by__username",
        # As they were named when they uploaded it: found once their account is deleted too.
        "uploaded_by_username",
        "guest_email",
    ]
    list_select_related = ["form", "uploaded_by"]
    date_hierarchy = "created_at"

    def get_queryset(self, request: HttpRequest) -> Any:
        # The form's token is never shown here: not read, so not decrypted for every row.
        return super().get_queryset(request).defer("form__form_token")

    @admin.display(description=_("uploaded by"), ordering="uploaded_by_username")
    def uploader(self, obj: Upload) -> str | None:
        return _account(obj.uploaded_by, obj.uploaded_by_username)


@admin.register(MessageFile)
class MessageFileAdmin(PeopleSearchAdmin, ToTheSecondAdmin, RecordAdmin):
    """Files uploaded to Dify to go with a chatflow's message or in a run's file start input
    (`input_name`), as uploads are shown: never edited or added here (Dify keeps the file
    whatever the record says)."""

    person_fields = ("uploaded_by",)
    list_display = [
        "name",
        "app",
        "input_name",
        "dify_user",
        "category",
        "size",
        "uploader",
        "sent_with",
        "created_at",
    ]
    list_filter = ["category", "app"]
    search_fields = [
        "name",
        "upload_file_id",
        "=public_id",
        "dify_user",
        "app__name",
        # The files a run's message was sent with, by the run's public id.
        "=runs__public_id",
        "uploaded_by__username",
        # As they were named when they uploaded it: found once their account is deleted too.
        "uploaded_by_username",
    ]
    list_select_related = ["app", "uploaded_by"]
    date_hierarchy = "created_at"
    fields = [
        "name",
        "app",
        "input_name",
        "dify_user",
        "runs_sent_with",
        "category",
        "size",
        "mime_type",
        "extension",
        "upload_file_id",
        "uploader",
        "public_id",
        "created_at",
    ]
    readonly_fields = ["runs_sent_with", "uploader", "public_id", "created_at"]

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).annotate(run_count=Count("runs"))

    @admin.display(description=_("uploaded by"), ordering="uploaded_by_username")
    def uploader(self, obj: MessageFile) -> str | None:
        return _account(obj.uploaded_by, obj.uploaded_by_username)

    @admin.display(description=_("messages sent with it"), ordering="run_count")
    def sent_with(self, obj: MessageFile) -> int:
        return int(getattr(obj, "run_count", 0))

    @admin.display(description=_("runs"))
    def runs_sent_with(self, obj: MessageFile) -> Any:
        runs = list(obj.runs.order_by("created_at", "pk"))
        if not runs:
            return _("None yet: uploaded, not sent with a message.")
        links = [
            format_html(
                '<a href="{}">{}</a>', reverse("admin:inbox_run_change", args=[run.pk]), run
            )
            for run in runs
        ]
        return format_html_join(", ", "{}", ((link,) for link in links))


@admin.register(RunEvent)
class RunEventAdmin(ToTheSecondAdmin, RecordAdmin):
    list_display = ["event", "run", "received_at"]
    list_filter = ["event"]
    search_fields = ["run__workflow_run_id", "event"]
    list_select_related = ["run__app"]


class LabelledValuesFilter(admin.AllValuesFieldListFilter):
    """Django's filter of the values a column holds, each shown by its label (the stored code
    stays in the address, as Django's own filter puts it)."""

    @staticmethod
    def label(value: str) -> str:
        return value

    def choices(self, changelist: Any) -> Any:
        values = {str(v) for v in self.lookup_choices if v is not None}
        for choice in super().choices(changelist):
            if isinstance(choice.get("display"), str) and choice["display"] in values:
                choice = {**choice, "display": self.label(choice["display"])}
            yield choice


class VerbFilter(LabelledValuesFilter):
    @staticmethod
    def label(value: str) -> str:
        return verb_label(value)


class ObjectTypeFilter(LabelledValuesFilter):
    @staticmethod
    def label(value: str) -> str:
        return object_type_label(value)


@admin.register(AuditEntry)
class AuditEntryAdmin(RecordAdmin):
    list_display = ["when", "actor_label", "what", "object_kind", "object_shown"]
    list_filter = [("verb", VerbFilter), ("object_type", ObjectTypeFilter)]
    # The details hold the public ids of forms, runs and decisions (`AuditEntry.build`).
    search_fields = ["actor_label", "verb", "object_repr", "object_id", "details"]
    readonly_fields = ["when", "what", "object_kind"]
    # The labels, not the stored codes beside them, and one time (to the second, with its zone).
    fields = [
        "when",
        "actor",
        "actor_label",
        "what",
        "object_kind",
        "object_id",
        "object_repr",
        "details",
    ]

    def get_search_results(
        self, request: HttpRequest, queryset: Any, search_term: str
    ) -> tuple[Any, bool]:
        """Each word in any of `search_fields`, as Django's search; a word in the details is
        also looked for as JSON writes it ("上海" as "\\u4e0a\\u6d77", a quote as \\"): SQLite
        keeps JSON as text with such escapes, while PostgreSQL's jsonb reads as written."""
        fields = self.get_search_fields(request)
        for word in smart_split(search_term):
            if word[:1] in ('"', "'") and word[-1:] == word[:1] and len(word) > 1:
                word = unescape_string_literal(word)
            match = Q()
            for field in fields:
                match |= Q(**{f"{field}__icontains": word})
            escaped = json.dumps(word)[1:-1]
            if escaped != word:
                match |= Q(details__icontains=escaped)
            form_pk = self._form_pk_of(word)
            if form_pk is not None:
                # Entries written before `details.form` held the form's public id held its
                # internal id there.
                match |= Q(details__form=form_pk)
            queryset = queryset.filter(match)
        return queryset, False

    @staticmethod
    def _form_pk_of(word: str) -> int | None:
        """The internal id of the form whose public id `word` is, if it is one."""
        import uuid

        try:
            public_id = uuid.UUID(word)
        except ValueError:
            return None
        return Form.objects.filter(public_id=public_id).values_list("pk", flat=True).first()

    @admin.display(description=_("when"), ordering="created_at")
    def when(self, obj: AuditEntry) -> str:
        # To the second and with its zone: entries a second apart are told apart.
        return to_the_second(obj.created_at)

    # Labels in the reader's language; the stored codes stay as written (searched, exported).
    @admin.display(description=_("verb"), ordering="verb")
    def what(self, obj: AuditEntry) -> str:
        return verb_label(obj.verb)

    @admin.display(description=_("object type"), ordering="object_type")
    def object_kind(self, obj: AuditEntry) -> str:
        return object_type_label(obj.object_type)

    @admin.display(description=_("object repr"), ordering="object_repr")
    def object_shown(self, obj: AuditEntry) -> str:
        # As written, whoever acted; a decision's status then in the reader's language.
        return object_label(obj)

    date_hierarchy = "created_at"
    actions = ["export_csv"]

    @admin.action(description=_("Export the selected entries as CSV"))
    def export_csv(self, request: HttpRequest, queryset: Any) -> StreamingHttpResponse:
        """Streamed row by row: an export of a year of entries never sits in memory. The
        export is in the trail (`audit_exported`): by whom, how many, with which filters."""
        selected = queryset.aggregate(count=Count("pk"), first=Min("pk"), last=Max("pk"))
        AuditEntry.record_about(
            "audit_exported",
            "auditentry",
            actor=request.user,
            count=selected["count"],
            ids=[selected["first"], selected["last"]],
            filters=request.GET.dict(),
            # Every entry the filters match, or the ones ticked on the page.
            all_matching=request.POST.get("select_across") == "1",
        )
        # What was counted: not the entry just recorded, nor any recorded while it streams.
        queryset = queryset.filter(pk__lte=selected["last"] or 0)

        class Echo:
            def write(self, value: str) -> str:
                return value

        writer = csv.writer(Echo())
        header = ["created_at", "actor", "verb", "object_type", "object_id", "object", "details"]

        def cell(value: str) -> str:
            # Node titles and labels come from Dify and users: a leading = + - @ would run as a
            # formula when the file is opened in a spreadsheet.
            return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value

        def rows() -> Any:
            # A byte order mark: Excel reads a CSV without one in the system's code page (GBK
            # on a Chinese Windows), garbling every Chinese name.
            yield "\ufeff"
            yield writer.writerow(header)
            for entry in queryset.order_by("created_at", "id").iterator(chunk_size=2000):
                yield writer.writerow(
                    [
                        entry.created_at.isoformat(),
                        cell(entry.actor_label),
                        entry.verb,
                        entry.object_type,
                        entry.object_id,
                        cell(entry.object_repr),
                        cell(json.dumps(entry.details, ensure_ascii=False, sort_keys=True)),
                    ]
                )

        response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="audit.csv"'
        return response


@admin.register(ApiToken)
class ApiTokenAdmin(PeopleSearchAdmin, ToTheSecondAdmin):
    person_fields = ("user",)
    list_display = ["prefix", "owner", "name", "created_at", "last_used_at", "revoked_at"]
    list_select_related = ["user"]
    search_fields = ["user__username", "name", "prefix"]
    readonly_fields = ["prefix", "digest", "created_at", "last_used_at"]
    actions = ["revoke"]

    @admin.display(description=_("user"), ordering="user__username")
    def owner(self, obj: ApiToken) -> str:
        return chooser_label(obj.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Raw tokens are shown once, by `manage.py create_api_token`; the admin never sees one.
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Whose a token is, and that it was revoked, are never edited: a token handed to
        # another account, or revoked and then restored, would act as someone it was not
        # issued to. Revoking is the action below; a new token is issued by the command.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Revoked, a token stays as the record of what it was and who used it last.
        return False

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("inbox.revoke_apitoken")

    @admin.action(description=_("Revoke selected tokens"), permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: Any) -> None:
        revoked = sum(token.revoke(request.user) for token in queryset.select_related("user"))
        self.message_user(
            request,
            _("%(n)d token(s) revoked; their API calls are refused from now on.") % {"n": revoked},
            messages.SUCCESS if revoked else messages.WARNING,
        )


@admin.register(ReviewerProfile)
class ReviewerProfileAdmin(PeopleSearchAdmin, ToTheSecondAdmin):
    """Each reviewer's language and their browser's time zone: their pages open in that
    language in every browser once it is chosen, and their emails are sent in it, with times in
    that zone. A language set here is their choice, as one made with the language switch."""

    person_fields = ("user",)
    list_display = ["reviewer", "language", "language_chosen", "time_zone", "updated_at"]
    # "New since your last visit" is the inbox's own bookkeeping of their looks at the list:
    # shown, never edited (a changed time would mark forms new, or not, that they have seen).
    readonly_fields = ["list_seen_at", "new_since"]
    list_filter = ["language", "language_chosen"]
    search_fields = ["user__username", "user__email"]
    autocomplete_fields = ["user"]
    list_select_related = ["user"]

    @admin.display(description=_("user"), ordering="user__username")
    def reviewer(self, obj: ReviewerProfile) -> str:
        return chooser_label(obj.user)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        # The language an administrator gives (a new profile's, or a changed one) is chosen: no
        # browser's guess replaces it. Unticking "language chosen" leaves it to their browser.
        if (not change or "language" in form.changed_data) and (
            "language_chosen" not in form.changed_data
        ):
            obj.language_chosen = True
        super().save_model(request, obj, form, change)


# The product's name, not "Django administration", heading every admin page.
admin.site.site_header = _("Approval inbox")
admin.site.site_title = _("Approval inbox")


def permission_name(permission: Any) -> str:
    """A permission's name in the reader's language. Django stores the names in English when it
    migrates; the project's own ("Can reassign forms") are in its catalogue, and Django's
    default ones ("Can add user", in no catalogue) are built again from a translated pattern
    and the model's name, as Django built them ("可以添加用户")."""
    model = permission.content_type.model_class()
    if model is not None:
        opts = model._meta
        for action in opts.default_permissions:
            if permission.codename == f"{action}_{opts.model_name}" and action in DEFAULT_ACTIONS:
                said = DEFAULT_ACTIONS[action]() % {"model": opts.verbose_name}
                # "可以添加 %(model)s" with a Chinese model name touches it: "可以添加用户".
                return tightened(said, opts.verbose_name)
    return gettext(permission.name)


# Django's default permissions, named as Django names them ("Can add %(model)s").
DEFAULT_ACTIONS = {
    "add": lambda: gettext("Can add %(model)s"),
    "change": lambda: gettext("Can change %(model)s"),
    "delete": lambda: gettext("Can delete %(model)s"),
    "view": lambda: gettext("Can view %(model)s"),
}


class PermissionsChoiceField(forms.ModelMultipleChoiceField):
    """Permissions named in the reader's language (`permission_name`)."""

    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.content_type} | {permission_name(obj)}"


class TranslatedPermissionsAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """A user's or group's permissions chooser with `PermissionsChoiceField`'s labels."""

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name in ("permissions", "user_permissions"):
            kwargs["form_class"] = PermissionsChoiceField
        return super().formfield_for_manytomany(db_field, request, **kwargs)


def _held_permission_pks(user: Any) -> set[int]:
    """The permissions `user` holds (their own and their groups'), as Permission pks."""
    from django.contrib.auth.models import Permission

    held = user.get_all_permissions()
    return {
        pk
        for pk, app_label, codename in Permission.objects.values_list(
            "pk", "content_type__app_label", "codename"
        )
        if f"{app_label}.{codename}" in held
    }


class DelegatedAccessAdmin(admin.ModelAdmin):
    """An administrator who is not a superuser (a team lead) hands out no more than they hold:
    the permissions offered are theirs, and (for accounts) the groups offered grant nothing they
    lack. What the account or group already has beyond that is kept as it is, neither shown as
    removable nor removed."""

    # The many-to-many fields so limited: name -> how the offered rows are found.
    delegated_fields: tuple[str, ...] = ()

    def offered(self, request: HttpRequest, name: str) -> Any:
        from django.contrib.auth.models import Permission

        held = _held_permission_pks(request.user)
        if name in ("permissions", "user_permissions"):
            return Permission.objects.filter(pk__in=held)
        not_held = Permission.objects.exclude(pk__in=held)
        return Group.objects.exclude(permissions__in=not_held)

    def formfield_for_manytomany(self, db_field: Any, request: Any = None, **kwargs: Any) -> Any:
        field = super().formfield_for_manytomany(db_field, request, **kwargs)
        if (
            field is not None
            and field.queryset is not None
            and db_field.name in self.delegated_fields
            and request is not None
            and not request.user.is_superuser
        ):
            field.queryset = field.queryset.filter(
                pk__in=self.offered(request, db_field.name).values("pk")
            )
        return field

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        if change and not request.user.is_superuser:
            for name in self.delegated_fields:
                if name not in form.cleaned_data:
                    continue
                offered = set(self.offered(request, name).values_list("pk", flat=True))
                kept = getattr(form.instance, name).exclude(pk__in=offered)
                form.cleaned_data[name] = list(form.cleaned_data[name]) + list(kept)
        super().save_related(request, form, formsets, change)


class Stranding:
    """What a change to accounts or groups may leave without anyone to ask: the active routes
    that asked them and the pending forms they could answer, looked at before the change, so
    that afterwards those it left asking nobody (`RouteQuerySet.asking_nobody`) or answerable
    by nobody but the administrators (`FormQuerySet.asked_of_nobody`) are said, with a link to
    those forms. What deleting the groups would leave is said beforehand from the same rules,
    as if the groups were gone (`ahead`), deleting nothing."""

    def __init__(self, *, users: Any = (), groups: Any = ()) -> None:
        user_ids = [u.pk for u in users if u.pk is not None]
        group_ids = {g.pk for g in groups if g.pk is not None}
        self.group_ids = set(group_ids)
        group_ids |= set(
            get_user_model()
            .groups.through.objects.filter(user_id__in=user_ids)
            .values_list("group_id", flat=True)
        )
        self.route_ids = set(
            Route.users.through.objects.filter(user_id__in=user_ids).values_list(
                "route_id", flat=True
            )
        ) | set(
            Route.groups.through.objects.filter(group_id__in=group_ids).values_list(
                "route_id", flat=True
            )
        )
        pending = Form.objects.filter(status=Form.Status.PENDING)
        self.form_ids = (
            set(pending.filter(assigned_users__in=user_ids).values_list("pk", flat=True))
            | set(pending.filter(assigned_groups__in=group_ids).values_list("pk", flat=True))
            | set(pending.filter(recipients__user__in=user_ids).values_list("pk", flat=True))
        )
        self.before = self._stranded()

    def _stranded(self, without_groups: Any = ()) -> tuple[set[int], set[int]]:
        routes = Route.objects.filter(pk__in=self.route_ids).asking_nobody(
            without_groups=without_groups
        )
        forms = Form.objects.filter(pk__in=self.form_ids, status=Form.Status.PENDING)
        return (
            set(routes.values_list("pk", flat=True)),
            set(forms.asked_of_nobody(without_groups=without_groups).values_list("pk", flat=True)),
        )

    def _compared(self, after: tuple[set[int], set[int]]) -> tuple[list[Route], int]:
        routes, forms = after
        stranded = Route.objects.filter(pk__in=routes - self.before[0]).select_related("app")
        return list(stranded.order_by("name", "pk")), len(forms - self.before[1])

    def left(self) -> tuple[list[Route], int]:
        """The routes the change left asking nobody, and how many forms it left to nobody."""
        return self._compared(self._stranded())

    def ahead(self) -> tuple[list[Route], int]:
        """What deleting the groups would leave, as `left` says it after: the same rules, with
        the groups' rows left out, so nothing is deleted, locked or signalled to find out."""
        return self._compared(self._stranded(without_groups=self.group_ids))

    def say(
        self,
        admin_: Any,
        request: HttpRequest,
        *,
        ahead: bool = False,
        several: bool = False,
    ) -> None:
        """The admin's warning of what the change left, or (`ahead`, on a deletion's
        confirmation page) what deleting the groups would leave; `several`: of more than one
        group deleted together."""
        routes, forms = self.ahead() if ahead else self.left()
        parts = []
        if routes:
            names = ", ".join(f"{r.app} · {r.name}" for r in routes)
            text = (
                ngettext(
                    "Deleting them leaves the route %(names)s asking nobody: its forms will "
                    "wait where only administrators see them.",
                    "Deleting them leaves the routes %(names)s asking nobody: their forms will "
                    "wait where only administrators see them.",
                    len(routes),
                )
                if ahead and several
                else ngettext(
                    "Deleting it leaves the route %(names)s asking nobody: its forms will wait "
                    "where only administrators see them.",
                    "Deleting it leaves the routes %(names)s asking nobody: their forms will "
                    "wait where only administrators see them.",
                    len(routes),
                )
                if ahead
                else ngettext(
                    "The route %(names)s now asks nobody: its forms will wait where only "
                    "administrators see them.",
                    "The routes %(names)s now ask nobody: their forms will wait where only "
                    "administrators see them.",
                    len(routes),
                )
            )
            parts.append(worded(text, names=names))
        if forms:
            url = (
                reverse("admin:inbox_form_changelist")
                + "?"
                + urlencode({"status__exact": Form.Status.PENDING, "asked": "nobody"})
            )
            text = (
                ngettext(
                    "Deleting them leaves %(count)d pending form with nobody who can answer it.",
                    "Deleting them leaves %(count)d pending forms with nobody who can answer them.",
                    forms,
                )
                if ahead and several
                else ngettext(
                    "Deleting it leaves %(count)d pending form with nobody who can answer it.",
                    "Deleting it leaves %(count)d pending forms with nobody who can answer them.",
                    forms,
                )
                if ahead
                else ngettext(
                    "%(count)d pending form now has nobody who can answer it.",
                    "%(count)d pending forms now have nobody who can answer them.",
                    forms,
                )
            )
            parts.append(
                format_html(
                    '{}{}<a href="{}">{}</a>',
                    text % {"count": forms},
                    sentence_gap(),
                    url,
                    _("Reassign them from the Forms list."),
                )
            )
        if parts:
            admin_.message_user(
                request,
                format_html_join(sentence_gap(), "{}", ((p,) for p in parts)),
                messages.WARNING,
            )


# Django's own user admin, with deleting explained: an account that ever had an API token is
# kept, as the token stays the record of what it was and who used it (`ApiTokenAdmin`). An
# administrator who is not a superuser neither makes anyone staff or superuser nor hands out
# permissions they lack (`DelegatedAccessAdmin`), and only views the accounts that hold more
# than they do (a superuser's among them).
User = get_user_model()
if admin.site.is_registered(User):
    admin.site.unregister(User)
if admin.site.is_registered(Group):
    admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(  # type: ignore[misc]
    DelegatedAccessAdmin, TranslatedPermissionsAdmin, auth_admin.GroupAdmin
):
    delegated_fields = ("permissions",)
    readonly_fields = ["members"]

    @admin.display(description=_("members"))
    def members(self, obj: Group) -> str:
        """Who the group's routes and forms ask: its active members (a deactivated one is
        asked by nothing, and said so)."""
        if obj.pk is None:
            return "—"
        people = []
        for user in obj.user_set.order_by("username"):
            label = chooser_label(user)
            if not user.is_active:
                label = worded(gettext("%(name)s (deactivated)"), name=label)
            people.append(label)
        return ", ".join(people) or str(_("Nobody: the routes and forms of this group ask no one."))

    def render_delete_form(self, request: HttpRequest, context: dict[str, Any]) -> HttpResponse:
        group = context.get("object")
        if (
            request.method == "GET"
            and isinstance(group, Group)
            and not context.get("perms_lacking")
        ):
            # What deleting it would leave without anyone to ask, found by reading only.
            Stranding(groups=[group]).say(self, request, ahead=True)
        return super().render_delete_form(request, context)

    def get_actions(self, request: HttpRequest) -> Any:
        def strand_ahead(modeladmin: Any, request: HttpRequest, queryset: Any, data: Any) -> None:
            # What deleting the selected groups together would leave, as the page of one says.
            if not (data.get("perms_lacking") or data.get("protected")):
                groups = list(queryset)
                Stranding(groups=groups).say(
                    modeladmin, request, ahead=True, several=len(groups) > 1
                )

        return with_delete_confirmation_hook(super().get_actions(request), strand_ahead)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        watch = Stranding(groups=[obj])
        super().delete_model(request, obj)
        watch.say(self, request)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        watch = Stranding(groups=list(queryset))
        super().delete_queryset(request, queryset)
        watch.say(self, request)


@admin.register(User)
class UserAdmin(  # type: ignore[type-arg]
    PeopleSearchAdmin,
    RefusedDeletionAdmin,
    DelegatedAccessAdmin,
    TranslatedPermissionsAdmin,
    ToTheSecondAdmin,
    auth_admin.UserAdmin,
):
    delegated_fields = ("groups", "user_permissions")
    person_fields = ("pk",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields += ["is_staff", "is_superuser"]
        return fields

    # Deactivating an account, taking it off groups, un-staffing or deleting it: the routes it
    # leaves asking nobody and the forms it leaves to nobody are said (`Stranding`).
    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change and obj.pk is not None:
            request._inbox_stranding = Stranding(users=[obj])  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        watch: Stranding | None = getattr(request, "_inbox_stranding", None)
        if watch is not None:
            watch.say(self, request)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        watch = Stranding(users=[obj])
        super().delete_model(request, obj)
        watch.say(self, request)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        watch = Stranding(users=list(queryset))
        super().delete_queryset(request, queryset)
        watch.say(self, request)

    def holds_more(self, request: HttpRequest, obj: Any) -> bool:
        """Whether the account is a superuser or holds a permission the editor lacks (active
        or not: reactivated, it would hold it again)."""
        from django.contrib.auth.models import Permission

        if request.user.is_superuser or obj is None:
            return False
        if obj.is_superuser:
            return True
        theirs = Permission.objects.filter(Q(user=obj) | Q(group__user=obj)).values_list(
            "pk", flat=True
        )
        return bool(set(theirs) - _held_permission_pks(request.user))

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and not self.holds_more(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and not self.holds_more(request, obj)

    def user_change_password(self, request: HttpRequest, id: str, form_url: str = "") -> Any:
        """The password an administrator set (or took away) is in the trail, by whom, as a
        reviewer's own change is (`password_changed`)."""
        response = super().user_change_password(request, id, form_url)
        if request.method == "POST" and response.status_code == 302:
            user = self.get_object(request, unquote(id))
            if user is not None:
                AuditEntry.record(
                    "password_changed",
                    user,
                    actor=request.user,
                    usable=user.has_usable_password(),
                )
        return response

    def deletion_refusal(self, objs: Any) -> str | None:
        if not ApiToken.objects.filter(user__in=list(objs)).exists():
            return None
        return str(
            _(
                "An account that has had API tokens is not deleted: its tokens stay as the "
                "record of what they were and who used them. Deactivate the account instead "
                "(untick “Active”) and revoke its tokens under API tokens: it can no longer "
                "sign in, and its tokens are refused. To erase the person's name and address, "
                "use the action “Anonymise account” in the list of users."
            )
        )

    actions = ["anonymise", "send_password_link"]

    # ---- A link to set a password (an invitation to an account made without one) ----------
    # The list's action and the account page's button ("Send a set-password link", which opens
    # a page to confirm it) queue `tasks.send_password_link` with the account's id only: the
    # worker makes the link and words the email (inbox.accounts). Who sent it is in the trail.

    change_form_template = "admin/auth/user/inbox_change_form.html"

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<id>/password-link/",
                self.admin_site.admin_view(self.password_link_view),
                name="auth_user_password_link",
            ),
            *super().get_urls(),
        ]

    def password_link_refusal(self, request: HttpRequest, user: Any) -> str | None:
        """Why no link goes to `user` ("deactivated", "no_email", "not_yours"), or None."""
        if not user.is_active:
            return "deactivated"
        if not user.email:
            return "no_email"
        if not self.has_change_permission(request, user):
            return "not_yours"
        return None

    @staticmethod
    def password_link_refusal_text(reason: str, names: list[str]) -> str:
        n = len(names)
        texts = {
            "deactivated": ngettext(
                "Not sent to %(names)s: the account is deactivated, and a link sets no "
                "password while it is. Reactivate it first (tick “Active”).",
                "Not sent to %(names)s: the accounts are deactivated, and a link sets no "
                "password while they are. Reactivate them first (tick “Active”).",
                n,
            ),
            "no_email": ngettext(
                "Not sent to %(names)s: the account has no email address. Add one on its "
                "page, then send the link again.",
                "Not sent to %(names)s: the accounts have no email address. Add one on their "
                "pages, then send the links again.",
                n,
            ),
            "not_yours": ngettext(
                "Not sent to %(names)s: you may not change this account's password.",
                "Not sent to %(names)s: you may not change these accounts' passwords.",
                n,
            ),
            "not_queued": ngettext(
                "Not sent to %(names)s: the task queue could not be reached. Try again in a "
                "moment.",
                "Not sent to %(names)s: the task queue could not be reached. Try again in a "
                "moment.",
                n,
            ),
        }
        return worded(texts[reason], names=joined(names))

    def send_password_links(self, request: HttpRequest, users: list[Any]) -> int:
        """Queue a set-password email to each account that may have one; say which were sent
        and which were not, and why. Returns how many were queued."""
        from inbox.accounts import invited
        from inbox.tasks import send_password_link

        refused: dict[str, list[str]] = {}
        sent: list[str] = []
        for user in users:
            reason = self.password_link_refusal(request, user)
            if reason is None:
                try:
                    send_password_link.apply_async((user.pk,))
                except Exception as exc:
                    _not_queued(exc, "user %s: set-password email not queued", user.pk)
                    reason = "not_queued"
            if reason is not None:
                refused.setdefault(reason, []).append(user.get_username())
                continue
            AuditEntry.record(
                "password_link_sent", user, actor=request.user, invitation=invited(user)
            )
            sent.append(f"{user.get_username()} ({user.email})")
        if sent:
            self.message_user(
                request,
                worded(
                    ngettext(
                        "A set-password link is being emailed to %(names)s.",
                        "Set-password links are being emailed to %(count)d accounts: %(names)s.",
                        len(sent),
                    ),
                    names=joined(sent),
                    count=len(sent),
                ),
                messages.SUCCESS,
            )
        for reason in ("deactivated", "no_email", "not_yours", "not_queued"):
            if reason in refused:
                self.message_user(
                    request,
                    self.password_link_refusal_text(reason, refused[reason]),
                    messages.WARNING,
                )
        return len(sent)

    @admin.action(description=_("Send a set-password link"), permissions=["change"])
    def send_password_link(self, request: HttpRequest, queryset: Any) -> None:
        """Email each selected account a link to set its password: an invitation to one made
        without a password, a reset to the others. The deactivated, those without an email
        address and those the administrator may not change are named and skipped."""
        self.send_password_links(request, list(queryset.order_by("username")))

    def password_link_view(self, request: HttpRequest, id: str) -> HttpResponse:
        """The account page's button: a page to confirm (or saying why no link can go), whose
        POST sends it and goes back to the account's page."""
        user = self.get_object(request, unquote(id))
        if user is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, id)  # type: ignore[attr-defined]
        if not self.has_view_or_change_permission(request, user):
            raise PermissionDenied
        reason = self.password_link_refusal(request, user)
        back = reverse("admin:auth_user_change", args=[user.pk])
        if request.method == "POST":
            self.send_password_links(request, [user])
            return HttpResponseRedirect(back)
        from inbox.accounts import invited, reset_lasts

        context = {
            **self.admin_site.each_context(request),
            "title": _("Send a set-password link"),
            "opts": self.opts,
            "original": user,
            "account": user,
            "refusal": (
                self.password_link_refusal_text(reason, [user.get_username()]) if reason else ""
            ),
            "invitation": invited(user),
            "lasts": reset_lasts(),
            "back": back,
        }
        return TemplateResponse(request, "admin/auth/user/password_link.html", context)

    def has_anonymise_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("inbox.anonymise_user")

    @staticmethod
    def anonymise_preview(users: list[Any]) -> list[dict[str, Any]]:
        """What the confirmation page says of each account: the routes its address is taken
        off, and how many decisions and uploads it made (what it typed in them, and its files'
        names, stay as they are), with where to read them. A query each, for all accounts."""
        from inbox.erasure import account_pseudonym, routes_listing

        pks = [u.pk for u in users]
        decisions = dict(
            Decision.objects.filter(reviewer__in=pks)
            .values("reviewer")
            .annotate(n=Count("pk"))
            .values_list("reviewer", "n")
        )
        uploads = dict(
            Upload.objects.filter(uploaded_by__in=pks)
            .values("uploaded_by")
            .annotate(n=Count("pk"))
            .values_list("uploaded_by", "n")
        )
        routes = routes_listing(u.email for u in users)
        decision_list = reverse("admin:inbox_decision_changelist")
        upload_list = reverse("admin:inbox_upload_changelist")
        return [
            {
                "user": user,
                "pseudonym": account_pseudonym(user),
                "routes": routes.get(user.email.lower(), []) if user.email else [],
                "decisions": decisions.get(user.pk, 0),
                "uploads": uploads.get(user.pk, 0),
                "decisions_url": f"{decision_list}?{urlencode({'reviewer__id__exact': user.pk})}",
                "uploads_url": f"{upload_list}?{urlencode({'uploaded_by__id__exact': user.pk})}",
            }
            for user in users
        ]

    @admin.action(description=_("Anonymise account"), permissions=["anonymise"])
    def anonymise(self, request: HttpRequest, queryset: Any) -> TemplateResponse | None:
        """Erase the person behind each account (`inbox.erasure.anonymise_user`), keeping the
        records. It cannot be undone, so a page first says what will change. Not one's own
        account, nor (for a team lead) one holding more than they do."""
        users = list(queryset.order_by("pk"))
        refused = [u for u in users if u.pk == request.user.pk or self.holds_more(request, u)]
        chosen = [u for u in users if u not in refused]
        if "confirm" not in request.POST:
            context = {
                **self.admin_site.each_context(request),
                "title": _("Anonymise accounts"),
                "opts": self.model._meta,
                "accounts": self.anonymise_preview(chosen),
                "refused": refused,
                "select_across": request.POST.get("select_across") == "1",
                "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
            }
            return TemplateResponse(request, "admin/auth/user/anonymise.html", context)
        from inbox.erasure import account_pseudonym, anonymise_user

        for user in refused:
            self.message_user(
                request,
                _(
                    "%(user)s: not anonymised: you cannot anonymise your own account, nor one "
                    "holding more than you do."
                )
                % {"user": user.get_username()},
                messages.WARNING,
            )
        done = 0
        for user in chosen:
            if user.get_username() == account_pseudonym(user) and not user.is_active:
                continue  # anonymised before: nothing to count
            anonymise_user(user, actor=request.user)
            done += 1
        if done:
            self.message_user(
                request,
                ngettext("%(n)d account anonymised.", "%(n)d accounts anonymised.", done)
                % {"n": done},
                messages.SUCCESS,
            )
        return None
