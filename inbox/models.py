"""The domain: Dify apps, the runs we follow, the forms they pause on and the decisions we deliver."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from inbox.crypto import EncryptedTextField


def mask_secret(value: str | None) -> str:
    """Show enough of a key to recognise it, never enough to use it."""
    if not value:
        return ""
    if len(value) <= 8:
        return "•" * 8
    return f"{value[:4]}…{value[-4:]}"


class DifyApp(models.Model):
    class Mode(models.TextChoices):
        WORKFLOW = "workflow", _("Workflow")
        CHATFLOW = "chatflow", _("Chatflow")

    name = models.CharField(_("name"), max_length=100, unique=True)
    base_url = models.URLField(
        _("API base URL"), max_length=300, help_text=_("Including /v1, e.g. https://api.dify.ai/v1")
    )
    api_key = EncryptedTextField(_("API key"))
    mode = models.CharField(_("mode"), max_length=16, choices=Mode.choices, default=Mode.WORKFLOW)
    is_active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("Dify app")
        verbose_name_plural = _("Dify apps")

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.base_url = self.base_url.rstrip("/")
        super().save(*args, **kwargs)

    @property
    def masked_api_key(self) -> str:
        return mask_secret(self.api_key)


class Run(models.Model):
    class Status(models.TextChoices):
        STARTING = "starting", _("Starting")
        RUNNING = "running", _("Running")
        PAUSED = "paused", _("Paused")
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")
        STOPPED = "stopped", _("Stopped")
        PARTIAL_SUCCEEDED = "partial-succeeded", _("Partially succeeded")

    FINAL_STATUSES = frozenset({"succeeded", "failed", "stopped", "partial-succeeded"})

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    app = models.ForeignKey(DifyApp, on_delete=models.PROTECT, related_name="runs")
    workflow_run_id = models.CharField(_("workflow run id"), max_length=64, blank=True)
    task_id = models.CharField(_("task id"), max_length=64, blank=True)
    conversation_id = models.CharField(max_length=64, blank=True)
    message_id = models.CharField(max_length=64, blank=True)
    # The Dify end user of this run. Dify scopes uploads and event streams by it, so it is chosen
    # once and every later call for the run (upload, submit, resume) uses the same value.
    dify_user = models.CharField(_("Dify user"), max_length=255)
    inputs = models.JSONField(default=dict, blank=True)
    query = models.TextField(blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.STARTING)
    outputs = models.JSONField(default=dict, blank=True)
    answer = models.TextField(blank=True, help_text=_("Chatflow answer text, aggregated."))
    error = models.TextField(blank=True)
    timeline = models.JSONField(default=list, blank=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="started_runs",
    )
    source = models.CharField(max_length=16, default="ui")  # ui / api / ingest
    # Following: a run that needs its stream read has follow_wanted set; a follower takes a lease.
    follow_wanted = models.BooleanField(default=True, db_index=True)
    follow_snapshot = models.BooleanField(default=False)
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    stream_attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["app", "workflow_run_id"],
                condition=~Q(workflow_run_id=""),
                name="run_unique_workflow_run_id_per_app",
            )
        ]
        indexes = [models.Index(fields=["status", "updated_at"])]

    def __str__(self) -> str:
        return f"{self.app.name} · {self.workflow_run_id or self.public_id}"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINAL_STATUSES


class FormQuerySet(models.QuerySet["Form"]):
    def for_user(self, user: Any) -> FormQuerySet:
        """The forms this user may see. Every page and API call goes through here."""
        if user is None or not user.is_authenticated or not user.is_active:
            return self.none()
        return self


class Form(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        SUBMITTING = "submitting", _("Submitting")
        SUBMITTED = "submitted", _("Submitted")
        EXPIRED = "expired", _("Expired")
        ANSWERED_ELSEWHERE = "answered_elsewhere", _("Answered elsewhere")
        NOT_ANSWERABLE = "not_answerable", _("Not answerable via API")
        FAILED = "failed", _("Delivery failed")

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="forms")
    form_id = models.CharField(_("Dify form id"), max_length=64, unique=True)
    # A bearer capability: whoever holds it can answer the form. Encrypted, never rendered.
    form_token = EncryptedTextField(blank=True, default="")
    node_id = models.CharField(max_length=128)
    node_title = models.CharField(max_length=255, blank=True)
    content = models.TextField(blank=True)
    definition = models.JSONField(default=dict, blank=True)
    approval_channels = models.JSONField(default=list, blank=True)
    expiration_time = models.DateTimeField(null=True, blank=True, db_index=True)
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.PENDING)
    rendered_content = models.TextField(blank=True)
    filled_action_id = models.CharField(max_length=64, blank=True)
    filled_action_text = models.CharField(max_length=255, blank=True)
    filled_data = models.JSONField(default=dict, blank=True)
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="claimed_forms",
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    objects = FormQuerySet.as_manager()

    class Meta:
        ordering = ["expiration_time", "created_at"]
        indexes = [
            models.Index(fields=["status", "expiration_time"]),
            models.Index(fields=["status", "created_at"]),
            # The inbox poll asks "anything newer than what I have?": MAX(updated_at) from an index.
            models.Index(fields=["updated_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.node_title or self.node_id} ({self.form_id})"

    @property
    def is_answerable(self) -> bool:
        return bool(self.form_token)

    @property
    def is_expired(self) -> bool:
        return self.expiration_time is not None and self.expiration_time <= timezone.now()


class Decision(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        DELIVERING = "delivering", _("Delivering")
        DELIVERED = "delivered", _("Delivered")
        REJECTED = "rejected", _("Rejected")
        FAILED = "failed", _("Failed")

    ACTIVE_STATUSES = ("queued", "delivering", "delivered")

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    form = models.ForeignKey(Form, on_delete=models.CASCADE, related_name="decisions")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="decisions",
    )
    guest_email = models.EmailField(blank=True)
    action_id = models.CharField(max_length=64)
    inputs = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # The page's one-time key: a double click or a browser resubmit finds the same decision.
    submission_key = models.CharField(max_length=64, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    delivery_started_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # At most one decision per form may be on its way or delivered: the database, not
            # only the row lock, refuses a second one.
            models.UniqueConstraint(
                fields=["form"],
                condition=Q(status__in=["queued", "delivering", "delivered"]),
                name="decision_one_active_per_form",
            )
        ]
        indexes = [models.Index(fields=["status", "updated_at"])]

    def __str__(self) -> str:
        return f"{self.action_id} on {self.form_id} ({self.status})"

    @property
    def decider_label(self) -> str:
        if self.reviewer_id and self.reviewer:
            return self.reviewer.get_full_name() or self.reviewer.get_username()
        return self.guest_email


class Upload(models.Model):
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    form = models.ForeignKey(Form, on_delete=models.CASCADE, related_name="uploads")
    input_name = models.CharField(max_length=128)
    upload_file_id = models.CharField(_("Dify upload file id"), max_length=64)
    name = models.CharField(max_length=255)
    size = models.BigIntegerField()
    mime_type = models.CharField(max_length=255, blank=True)
    extension = models.CharField(max_length=32, blank=True)
    category = models.CharField(max_length=16)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    guest_email = models.EmailField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return self.name


class RunEvent(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    event = models.CharField(max_length=64)
    payload = models.JSONField(default=dict, blank=True)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["received_at", "id"]

    def __str__(self) -> str:
        return f"{self.event} @ {self.received_at:%Y-%m-%d %H:%M:%S}"


class AuditEntry(models.Model):
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    actor_label = models.CharField(max_length=255, blank=True)
    verb = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=255, blank=True)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = _("audit entries")
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"{self.actor_label or 'system'} {self.verb} {self.object_type}:{self.object_id}"

    @classmethod
    def record(
        cls,
        verb: str,
        obj: models.Model,
        *,
        actor: Any = None,
        actor_label: str = "",
        **details: Any,
    ) -> AuditEntry:
        if actor is not None and not getattr(actor, "is_authenticated", False):
            actor = None
        label = actor_label or (actor.get_username() if actor is not None else "system")
        return cls.objects.create(
            actor=actor,
            actor_label=label,
            verb=verb,
            object_type=obj._meta.model_name or type(obj).__name__.lower(),
            object_id=str(obj.pk),
            object_repr=str(obj)[:255],
            details=details,
        )


class ApiToken(models.Model):
    """A per-user bearer token for the JSON API. Only a SHA-256 of the token is stored."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12, help_text=_("The first characters, to recognise it."))
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @staticmethod
    def hash(raw: str) -> str:
        import hashlib

        return hashlib.sha256(raw.encode()).hexdigest()

    @classmethod
    def issue(cls, user: Any, name: str = "") -> tuple[ApiToken, str]:
        """Create a token; the raw value is returned once and never stored."""
        import secrets

        raw = "inbx_" + secrets.token_urlsafe(32)
        token = cls.objects.create(user=user, name=name, prefix=raw[:9], digest=cls.hash(raw))
        AuditEntry.record("api_token_issued", token, actor=user)
        return token, raw

    @classmethod
    def authenticate(cls, raw: str) -> Any:
        token = (
            cls.objects.select_related("user")
            .filter(digest=cls.hash(raw), revoked_at__isnull=True, user__is_active=True)
            .first()
        )
        if token is None:
            return None
        now = timezone.now()
        # Write at most once a minute: a busy API client must not turn every call into a write.
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            cls.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user
