from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from inbox.models import ApiToken, AuditEntry, Decision, DifyApp, Form, Run, RunEvent, Upload


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
        help_text=_("Leave empty to keep the current key."),
    )

    class Meta:
        model = DifyApp
        fields = ["name", "base_url", "api_key", "mode", "is_active"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.initial["api_key"] = ""
        if self.instance.pk:
            self.fields["api_key"].help_text = _(
                "Current key: %(masked)s. Leave empty to keep it."
            ) % {"masked": self.instance.masked_api_key}

    def clean_api_key(self) -> str:
        value = self.cleaned_data.get("api_key", "").strip()
        if not value:
            if not self.instance.pk:
                raise forms.ValidationError(_("An API key is required."))
            return self.instance.api_key
        return value


@admin.register(DifyApp)
class DifyAppAdmin(admin.ModelAdmin):
    form = DifyAppAdminForm
    list_display = ["name", "base_url", "mode", "masked_api_key", "is_active", "updated_at"]
    list_filter = ["mode", "is_active"]
    search_fields = ["name", "base_url"]

    @admin.display(description=_("API key"))
    def masked_api_key(self, obj: DifyApp) -> str:
        return obj.masked_api_key


class FormInline(admin.TabularInline):
    model = Form
    fields = ("node_title", "status", "expiration_time", "created_at")
    readonly_fields = ("node_title", "status", "expiration_time", "created_at")
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["__str__", "app", "status", "dify_user", "started_by", "created_at"]
    list_filter = ["status", "app", "source"]
    search_fields = ["workflow_run_id", "task_id", "dify_user", "conversation_id"]
    list_select_related = ["app", "started_by"]
    readonly_fields = ["public_id", "created_at", "updated_at", "finished_at"]
    date_hierarchy = "created_at"
    inlines = [FormInline]


@admin.register(Form)
class FormAdmin(admin.ModelAdmin):
    list_display = ["node_title", "run", "status", "expiration_time", "claimed_by", "created_at"]
    list_filter = ["status", "run__app"]
    search_fields = ["node_title", "node_id", "form_id", "content"]
    list_select_related = ["run__app", "claimed_by"]
    exclude = ["form_token"]
    readonly_fields = ["public_id", "form_id", "created_at", "updated_at", "answerable"]
    date_hierarchy = "created_at"

    @admin.display(boolean=True, description=_("Answerable via API"))
    def answerable(self, obj: Form) -> bool:
        return obj.is_answerable


@admin.register(Decision)
class DecisionAdmin(admin.ModelAdmin):
    list_display = [
        "form",
        "action_id",
        "decider",
        "status",
        "attempts",
        "last_error",
        "created_at",
    ]
    list_filter = ["status", "form__run__app"]
    search_fields = ["form__node_title", "form__form_id", "action_id", "guest_email"]
    list_select_related = ["form", "reviewer"]
    readonly_fields = [
        "public_id",
        "created_at",
        "updated_at",
        "delivered_at",
        "delivery_started_at",
        "next_attempt_at",
        "maybe_applied",
    ]
    actions = ["retry_delivery"]

    @admin.display(description=_("decided by"))
    def decider(self, obj: Decision) -> str:
        return obj.decider_label

    @admin.action(description=_("Retry delivery of the selected failed decisions"))
    def retry_delivery(self, request: HttpRequest, queryset: Any) -> None:
        retried = sum(
            decision.retry_delivery(actor=request.user)
            for decision in queryset.filter(status=Decision.Status.FAILED)
        )
        skipped = queryset.count() - retried
        self.message_user(
            request,
            _(
                "%(retried)d decision(s) queued for delivery again; %(skipped)d skipped (only a "
                "failed decision on a failed form can be retried)."
            )
            % {"retried": retried, "skipped": skipped},
            messages.SUCCESS if retried else messages.WARNING,
        )


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    list_display = ["name", "form", "input_name", "category", "size", "uploaded_by", "created_at"]
    list_filter = ["category"]
    search_fields = ["name", "upload_file_id", "form__node_title"]
    list_select_related = ["form", "uploaded_by"]


@admin.register(RunEvent)
class RunEventAdmin(admin.ModelAdmin):
    list_display = ["event", "run", "received_at"]
    list_filter = ["event"]
    search_fields = ["run__workflow_run_id", "event"]
    list_select_related = ["run__app"]


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["created_at", "actor_label", "verb", "object_type", "object_repr"]
    list_filter = ["verb", "object_type"]
    search_fields = ["actor_label", "verb", "object_repr", "object_id"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "user", "name", "created_at", "last_used_at", "revoked_at"]
    list_select_related = ["user"]
    search_fields = ["user__username", "name", "prefix"]
    readonly_fields = ["prefix", "digest", "created_at", "last_used_at"]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Raw tokens are shown once, by `manage.py create_api_token`; the admin never sees one.
        return False

    @admin.action(description=_("Revoke selected tokens"))
    def revoke(self, request: HttpRequest, queryset: Any) -> None:
        from django.utils import timezone

        queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
