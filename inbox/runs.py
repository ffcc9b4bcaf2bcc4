"""Starting runs: the start form built from Dify's `GET /parameters`, and the start itself.

Used by the "Start a run" page and by `POST /api/v1/runs`, so both validate the same way.

How a start hands over to the follower: the request opens the streaming run, reads only until
Dify has named the run (the first event carries `workflow_run_id`), stores that id at once,
closes its stream and asks a follower to take over (`Run.request_follow`). The follower reopens
the run's events with a state snapshot, which replays whatever happened in between, so nothing
is lost in the hand-over. We chose this over letting the follower own the whole start because
the start is the one call that must not be repeated (a lost answer could hide a second run) and
its errors (invalid inputs, a wrong key, Dify down) belong to the person who asked, in the same
request; and the request never holds a stream for longer than the first event. Dify runs the
workflow on its own workers, so closing the original stream does not stop the run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import Case, Count, IntegerField, OuterRef, Prefetch, Q, Subquery, Value, When
from django.utils import timezone
from django.utils.translation import gettext, gettext_noop
from django.utils.translation import gettext_lazy as _

from inbox.dify.client import DifyClient, deadline
from inbox.dify.errors import (
    ApiKeyUnreadable,
    DifyConnectionError,
    DifyError,
    DifyStatusError,
    DifyStreamError,
    TooManyRequests,
    cannot_reach,
)
from inbox.dify.types import FormDefinition, HumanInputFields, RunDetail, StreamEvent
from inbox.forms import PageTextField
from inbox.models import UNPUBLISHED_REFUSAL, AuditEntry, Decision, DifyApp, Form, Run
from inbox.reasons import Reason, Refused, labelled, sentence_gap, stored, translated, worded

logger = logging.getLogger(__name__)

START_INPUT_TYPES = ("text-input", "paragraph", "select", "number", "checkbox")
# Start inputs that take files: filled with files uploaded to Dify first, under the run's user.
START_FILE_TYPES = ("file", "file-list")
# Parameters change when an app is republished, rarely; a start page is opened often.
PARAMETERS_CACHE_SECONDS = 60
# How long a start waits for Dify to name the run.
FIRST_EVENT_SECONDS = 30.0
# An ingest with a token reads the run's state snapshot for this long at most, and takes the
# replay as complete once the stream is silent this long (Dify pings every 10 s).
SNAPSHOT_SECONDS = 10.0
SNAPSHOT_QUIET_SECONDS = 2.0


@dataclass(frozen=True)
class StartInput:
    """One item of `user_input_form`: {"text-input": {label, variable, required, ...}}."""

    type: str
    variable: str
    label: str
    required: bool
    default: Any = None
    options: tuple[str, ...] = ()
    max_length: int | None = None
    # A file or file-list input's kinds, extensions and transfer methods.
    file_types: tuple[str, ...] = ()
    file_extensions: tuple[str, ...] = ()
    file_methods: tuple[str, ...] = ()

    @property
    def is_file(self) -> bool:
        return self.type in START_FILE_TYPES

    @property
    def supported(self) -> bool:
        """Filled here: a file input only when it takes uploaded files (one that takes web
        addresses alone is left to Dify, as before)."""
        if self.is_file:
            return self.file_spec.allows_upload
        return self.type in START_INPUT_TYPES

    @property
    def file_spec(self) -> Any:
        """The files a file input takes, as a form's file input says them (`forms.InputSpec`):
        its kinds, extensions and methods, and a file-list's count (its `max_length`)."""
        from inbox.forms import InputSpec

        return InputSpec(
            kind=self.type,
            name=self.variable,
            allowed_types=self.file_types,
            allowed_extensions=self.file_extensions,
            allowed_methods=self.file_methods or ("local_file", "remote_url"),
            number_limits=self.max_length or 0 if self.type == "file-list" else 0,
        )

    @property
    def checked(self) -> bool:
        """A checkbox ticked by default (Dify stores the default as a bool; a string is read
        as Dify's console writes it)."""
        default = self.default
        return default is True or (isinstance(default, str) and default.lower() == "true")

    @property
    def field_name(self) -> str:
        # Prefixed: a variable may be called `query` or `csrfmiddlewaretoken`.
        return f"in_{self.variable}"

    @classmethod
    def from_item(cls, item: Any) -> StartInput | None:
        if not isinstance(item, dict) or len(item) != 1:
            return None
        ((kind, body),) = item.items()
        if not isinstance(body, dict) or not body.get("variable"):
            return None
        max_length = body.get("max_length")
        if str(kind) == "file-list" and not isinstance(max_length, int):
            max_length = body.get("number_limits")
        options = body.get("options")

        def strings(key: str) -> tuple[str, ...]:
            found = body.get(key)
            return tuple(str(v) for v in found) if isinstance(found, list) else ()

        return cls(
            type=str(kind),
            variable=str(body["variable"]),
            label=str(body.get("label") or body["variable"]),
            required=bool(body.get("required")),
            default=body.get("default"),
            # A list in Dify; anything else (a misconfigured app) offers no choice, not a 500.
            options=tuple(str(o) for o in options) if isinstance(options, list) else (),
            max_length=max_length
            if isinstance(max_length, int) and not isinstance(max_length, bool) and max_length > 0
            else None,
            file_types=strings("allowed_file_types"),
            file_extensions=strings("allowed_file_extensions"),
            file_methods=strings("allowed_file_upload_methods"),
        )


def start_labels(specs: list[StartInput]) -> dict[str, str]:
    """What a run's page calls each start input ({variable: label}), as the start form does."""
    return {spec.variable: spec.label for spec in specs if spec.label}


def start_inputs(parameters: dict[str, Any]) -> list[StartInput]:
    return [
        spec
        for spec in (StartInput.from_item(i) for i in parameters.get("user_input_form") or [])
        if spec is not None
    ]


def _parameters_key(app: DifyApp) -> str:
    return f"inbox:parameters:{app.pk}:{app.updated_at.timestamp() if app.updated_at else 0}"


def app_parameters(app: DifyApp, *, fresh: bool = False) -> dict[str, Any]:
    """The app's `GET /parameters`, cached briefly; `fresh`: asked of Dify again, the cached
    ones being out of date (the app republished with other start inputs). Raises DifyError."""
    key = _parameters_key(app)
    cached = None if fresh else cache.get(key)
    if cached is None:
        cached = DifyClient.for_app(app).get_parameters()
        cache.set(key, cached, PARAMETERS_CACHE_SECONDS)
        # Dify gives the parameters of a published app only: one refused as having nothing
        # published (or for its key) is accepted again.
        app.note_accepted("start", published=True)
    return dict(cached)


def parameters_cached(app: DifyApp) -> bool:
    """Whether the app's parameters would be read from the cache, not asked of Dify."""
    return cache.get(_parameters_key(app)) is not None


def forget_parameters(app: DifyApp) -> None:
    """Drop the app's cached parameters: Dify refused a start's inputs, perhaps for inputs
    the app no longer has (republished meanwhile), so the next page or call asks again."""
    cache.delete(_parameters_key(app))


class StartRunForm(forms.Form):
    """The start inputs of one app, as Dify's `user_input_form` declares them; a chatflow also
    asks for the message (`query`)."""

    def __init__(
        self,
        app: DifyApp,
        parameters: dict[str, Any],
        *args: Any,
        from_page: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.app = app
        # Posted by the start page: a browser ends a textarea's lines with CRLF, which Dify
        # would get as typed and a length would count twice; the API's text goes as given.
        text_field = PageTextField if from_page else forms.CharField
        self.specs = start_inputs(parameters)
        self.labels = start_labels(self.specs)
        self.unsupported = [s for s in self.specs if not s.supported]
        # A file input's files go to Dify before the run starts: the page asks for them here;
        # the API names files it uploaded (`api._start_input_files`).
        self.file_specs = [s for s in self.specs if s.supported and s.is_file]
        for spec in self.specs:
            if spec.supported and spec.is_file:
                if from_page:
                    self.fields[spec.field_name] = StartFilesField(spec, app)
            elif spec.supported:
                self.fields[spec.field_name] = _field(spec, text_field)
        if app.mode == DifyApp.Mode.CHATFLOW:
            self.fields["query"] = text_field(
                label=_("Message"),
                widget=forms.Textarea(attrs={"rows": 3}),
                help_text=_("What the chatflow is asked."),
                # Sent as typed; a message of spaces alone is no message (`clean_query`).
                strip=False,
            )

    @property
    def blocked(self) -> bool:
        """An input this page cannot fill (a file input that takes web addresses only, say) is
        required: start the run elsewhere."""
        return any(s.required for s in self.unsupported)

    def clean_query(self) -> str:
        query: str = self.cleaned_data["query"]
        if not query.strip():
            raise forms.ValidationError(self.fields["query"].error_messages["required"], "required")
        return query

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.blocked:
            raise forms.ValidationError(
                gettext("This app needs inputs the inbox cannot send: %(names)s.")
                % {"names": ", ".join(s.label for s in self.unsupported if s.required)}
            )
        return cleaned

    def dify_inputs(self) -> dict[str, Any]:
        """The validated values as Dify takes them (numbers as numbers, checkboxes as bools).

        An optional input left without a value is one Dify fills with the app's default
        (`_validate_inputs`). Sent as Dify would take it, so the run's record shows what the
        run got: an input not sent at all (the API's, left out) gets the default; one left
        blank on purpose (a default cleared on the page, or "" in the API) stays blank where
        Dify can take a blank (text, and a number as ""), and a choice with a default, which
        cannot be left blank in Dify, gets the default."""
        values: dict[str, Any] = {}
        for spec in self.specs:
            if not spec.supported or spec.is_file:
                continue
            value = self.cleaned_data.get(spec.field_name)
            if spec.type == "checkbox":
                values[spec.variable] = bool(value)
                continue
            if value in (None, ""):
                if spec.required:
                    continue
                default = _typed_default(spec)
                if default is None:
                    continue
                if spec.field_name not in self.data or spec.type == "select":
                    values[spec.variable] = default
                else:
                    values[spec.variable] = ""
                continue
            if spec.type == "number":
                number = Decimal(value)
                value = int(number) if number == number.to_integral_value() else float(number)
            values[spec.variable] = value
        return values

    def error_messages(self) -> dict[str, list[str]]:
        """Errors keyed by Dify's variable names (and `query`, and `__all__`)."""
        names = {s.field_name: s.variable for s in self.specs}
        found: dict[str, list[str]] = {}
        # A chatflow may have a start variable named `query` beside its message: both are kept.
        for key, errors in self.errors.items():
            found.setdefault(names.get(key, key), []).extend(str(e) for e in errors)
        return found


class ContinueForm(forms.Form):
    """The next message of a chatflow's conversation. Dify runs it with the inputs the
    conversation started with, so the message is all there is to ask."""

    def __init__(self, *args: Any, from_page: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        text_field = PageTextField if from_page else forms.CharField
        self.fields["query"] = text_field(
            label=_("Message"),
            widget=forms.Textarea(attrs={"rows": 3}),
            help_text=_("What the chatflow is asked next, in the same conversation."),
            strip=False,
        )

    def clean_query(self) -> str:
        query: str = self.cleaned_data["query"]
        if not query.strip():
            raise forms.ValidationError(self.fields["query"].error_messages["required"], "required")
        return query


class KeptFileInput(forms.FileInput):
    """A file input whose field a kept file (ticked, sent to Dify by the page's last sending)
    may fill: not marked `required` while one does (`filled`), or a screen reader would say
    "required, no file chosen" beside it. `data-required` says it is, for the page's script to
    put back once the kept files are unticked."""

    filled = False

    def use_required_attribute(self, initial: Any) -> bool:
        return super().use_required_attribute(initial) and not self.filled


class MultipleFileInput(KeptFileInput):
    allow_multiple_selected = True


def _files_help(spec: Any, app: DifyApp, *, count: bool) -> str:
    """What a start page's file field takes: its kinds, a list's count and the largest file
    per kind Dify takes (as the form page's file inputs say it)."""
    from inbox.uploads import size_limit_label, upload_limits

    accepted = spec.accepted_label() or "—"
    largest = size_limit_label(spec, upload_limits(app))
    if count and largest:
        return gettext("Accepted: %(accepted)s. At most %(limit)d. Largest file: %(limits)s.") % {
            "accepted": accepted,
            "limit": spec.ui_max_files,
            "limits": largest,
        }
    if count:
        return gettext("Accepted: %(accepted)s. At most %(limit)d.") % {
            "accepted": accepted,
            "limit": spec.ui_max_files,
        }
    if largest:
        return gettext("Accepted: %(accepted)s. Largest file: %(limits)s.") % {
            "accepted": accepted,
            "limits": largest,
        }
    return gettext("Accepted: %(accepted)s.") % {"accepted": accepted}


class MessageFilesField(forms.FileField):
    """The files a chatflow's message carries, as the app's `file_upload` takes them (`spec`:
    `uploads.message_file_spec`): each file's kind and size are checked here, before anything
    is sent to Dify, and their number with those kept from the page's last sending."""

    def __init__(self, spec: Any, app: DifyApp, kept: int = 0, **kwargs: Any) -> None:
        self.spec, self.app, self.kept = spec, app, kept
        super().__init__(
            label=_("Files"),
            required=False,
            widget=MultipleFileInput(attrs={"multiple": True, "accept": spec.accept}),
            **kwargs,
        )
        self.help_text = _files_help(spec, app, count=True)

    def clean(self, data: Any, initial: Any = None) -> list[Any]:
        from inbox.uploads import UploadRejected, _checked, too_many_files

        given = [f for f in (data if isinstance(data, list | tuple) else [data]) if f]
        files = [super(MessageFilesField, self).clean(f, initial) for f in given]
        if self.required and not files and not self.kept:
            raise forms.ValidationError(self.error_messages["required"], "required")
        errors = []
        many = too_many_files(
            self.spec.ui_max_files,
            self.kept + len(files),
            start_input=isinstance(self, StartFilesField),
        )
        if many is not None:
            errors.append(many)
        for fileobj in files:
            try:
                _checked(
                    self.spec,
                    fileobj.name or "file",
                    fileobj.content_type or "application/octet-stream",
                    fileobj.size or 0,
                    self.app,
                    guest=False,
                )
            except UploadRejected as exc:
                errors.append(
                    gettext("%(name)s: %(error)s") % {"name": fileobj.name, "error": exc.message}
                )
        if errors:
            raise forms.ValidationError(errors)
        return files


class StartFilesField(MessageFilesField):
    """The files of a start input of type file or file-list (`spec`: a `StartInput` that takes
    uploads), checked as a message's are against the input's own kinds and count; `kept`: the
    files the page's last sending sent to Dify for it (`keep`)."""

    def __init__(self, start: StartInput, app: DifyApp) -> None:
        spec = start.file_spec
        super().__init__(spec, app)
        self.label = start.label
        self.required = start.required
        self.kept_files: list[Any] = []
        if spec.kind == "file":
            self.widget = KeptFileInput(attrs={"accept": spec.accept})
            self.help_text = _files_help(spec, app, count=False)
        if self.required:
            self.widget.attrs["data-required"] = "true"

    def keep(self, files: list[Any]) -> None:
        self.kept_files = list(files)
        self.kept = len(files)
        self.widget.filled = bool(files)  # type: ignore[attr-defined]


def add_files_field(form: forms.Form, app: DifyApp, spec: Any, kept: list[Any]) -> None:
    """A chatflow's message form takes files when the app does (`spec`, None when it takes
    none); `kept`: the files sent to Dify from the page's last sending, sent again with it
    (those of a start input go back to its own field)."""
    for field in form.fields.values():
        if isinstance(field, StartFilesField):
            field.keep([f for f in kept if f.input_name == field.spec.name])
    kept = [f for f in kept if not f.input_name]
    form.kept_files = list(kept)  # type: ignore[attr-defined]
    if spec is not None:
        form.fields["files"] = MessageFilesField(spec, app, kept=len(kept))


# A conversation's messages a run page lists, the latest; older ones are read in Dify.
CONVERSATION_SHOWN = 100


def turn_number(prefix: str = "") -> Case:
    """The number of a chatflow run's message in its conversation, as the inbox has it, for
    an annotation (`prefix`: the way to the run, "run__" from a form): its place among the
    conversation's runs Dify named, oldest first. None for a run of no conversation, and for
    a start Dify never named (refused, `conversation_not_found` among them, or failed before
    Dify named a run: it is not a message of the conversation, see `Run.not_sent`). One
    subquery on the conversation's index: a list of forms or runs costs no query more."""
    earlier = (
        Run.objects.filter(
            app_id=OuterRef(f"{prefix}app_id"),
            conversation_id=OuterRef(f"{prefix}conversation_id"),
        )
        .exclude(workflow_run_id="")
        .filter(
            Q(created_at__lt=OuterRef(f"{prefix}created_at"))
            | Q(created_at=OuterRef(f"{prefix}created_at"), pk__lte=OuterRef(f"{prefix}pk"))
        )
        .order_by()
        .values("app_id")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Case(
        When(
            Q(**{f"{prefix}conversation_id": ""}) | Q(**{f"{prefix}workflow_run_id": ""}),
            then=Value(None),
        ),
        default=Subquery(earlier),
        output_field=IntegerField(),
    )


def turn_of(run: Run) -> int | None:
    """`turn_number` of one run (one query, none for a run of no conversation)."""
    if hasattr(run, "turn"):
        return run.turn  # type: ignore[no-any-return]
    if not run.conversation_id or not run.workflow_run_id:
        return None
    return (
        Run.objects.filter(pk=run.pk)
        .annotate(turn=turn_number())
        .values_list("turn", flat=True)
        .first()
    )


class Conversation(list[Run]):
    """A chatflow conversation's messages as a run page shows them, oldest first: each run
    with its `turn` (`turn_number`), its `forms_shown` (its forms, each with `visible` and
    its `decision`). `earlier`: the conversation has older messages than those shown (in the
    inbox; Dify has them all)."""

    earlier: bool = False


def conversation_runs(run: Run, user: Any) -> Conversation:
    """The latest messages of `run`'s conversation that `user` may see (CONVERSATION_SHOWN
    of them), oldest first, always with `run` itself: an older message's page shows it
    first, before the latest ones (its `gap_after`)."""
    if not run.conversation_id:
        run.turn = turn_of(run)  # type: ignore[attr-defined]
        run.forms_shown = []  # type: ignore[attr-defined]
        return Conversation([run])
    runs = (
        Run.objects.for_user(user)
        .filter(app_id=run.app_id, conversation_id=run.conversation_id)
        .annotate(turn=turn_number())
        .prefetch_related(
            "message_files",
            Prefetch(
                "forms",
                queryset=Form.objects.defer("content", "definition")
                .order_by("created_at", "id")
                .prefetch_related(
                    Prefetch(
                        "decisions",
                        queryset=Decision.objects.filter(status__in=Decision.ACTIVE_STATUSES)
                        .select_related("reviewer")
                        .order_by("-created_at"),
                        to_attr="active_decisions",
                    )
                ),
            ),
        )
    )
    latest = list(runs.order_by("-created_at", "-pk")[: CONVERSATION_SHOWN + 1])
    shown = Conversation(reversed(latest[:CONVERSATION_SHOWN]))
    shown.earlier = len(latest) > CONVERSATION_SHOWN
    if all(r.pk != run.pk for r in shown):
        this = runs.filter(pk=run.pk).first()
        if this is not None:
            this.gap_after = True  # type: ignore[attr-defined]
            shown.insert(0, this)
    visible = set(
        Form.objects.for_user(user)
        .filter(run__in=[r.pk for r in shown])
        .values_list("pk", flat=True)
    )
    for message in shown:
        message.forms_shown = [  # type: ignore[attr-defined]
            (form, form.pk in visible, (getattr(form, "active_decisions", None) or [None])[0])
            for form in message.forms.all()
        ]
    return shown


def conversation_start(app: DifyApp, conversation_id: str, user: Any) -> Run | None:
    """The latest run of `app` in this conversation that `user` started (any run, for staff),
    whose Dify user and inputs a next message goes on with; None when there is none (a
    conversation begun in Dify, or someone else's: a reviewer who sees a run through its form
    does not speak in its conversation under its starter's Dify user)."""
    if not conversation_id:
        return None
    runs = Run.objects.filter(app=app, conversation_id=conversation_id).exclude(workflow_run_id="")
    if not getattr(user, "is_staff", False):
        runs = runs.filter(started_by_id=getattr(user, "pk", None))
    return runs.order_by("-created_at", "-pk").first()


def conversation_in_progress(app: DifyApp, conversation_id: str) -> Run | None:
    """The conversation's message still in flight here, whoever sent it (one still starting,
    running or paused at a form); None when every one has ended. Dify would take a next
    message meanwhile, and the customer would get two turns at once."""
    if not conversation_id:
        return None
    return (
        Run.objects.filter(app=app, conversation_id=conversation_id[:64])
        .exclude(status__in=Run.FINAL_STATUSES)
        .order_by("-created_at", "-pk")
        .first()
    )


def conversation_of_others(app: DifyApp, conversation_id: str, user: Any) -> bool:
    """Whether the inbox has this conversation only as someone else's (see
    `conversation_start`)."""
    if getattr(user, "is_staff", False) or not conversation_id:
        return False
    runs = Run.objects.filter(app=app, conversation_id=conversation_id)
    return runs.exists() and not runs.filter(started_by_id=getattr(user, "pk", None)).exists()


def _typed_default(spec: StartInput) -> Any:
    """The app's default of an input as Dify would use it; None for none (or one Dify would
    refuse: a number that is none, a choice that is not offered)."""
    default = spec.default
    if default in (None, ""):
        return None
    if spec.type == "number":
        try:
            number = Decimal(str(default))
        except ArithmeticError:
            return None
        if not number.is_finite():
            return None
        return int(number) if number == number.to_integral_value() else float(number)
    if spec.type == "select" and default not in spec.options:
        return None
    return default if isinstance(default, str) else None


def _field(spec: StartInput, text_field: type[forms.CharField] = forms.CharField) -> forms.Field:
    label = spec.label
    initial = spec.default if spec.default not in (None, "") else None
    if spec.type == "paragraph":
        return text_field(
            label=label,
            required=spec.required,
            # Sent as typed: Dify keeps leading and trailing spaces, and so do we.
            strip=False,
            max_length=spec.max_length,
            initial=initial,
            widget=forms.Textarea(attrs={"rows": 4}),
        )
    if spec.type == "select":
        initial = _typed_default(spec)
        choices = [(o, o) for o in spec.options]
        if not spec.required and initial is None:
            # Nothing chosen is nothing sent. With a default there is no such choice: Dify
            # would put the default in its place.
            choices = [("", "—"), *choices]
        elif initial is None:
            # Required, with no default: nothing is chosen until the person chooses (a first
            # option shown as chosen would be sent without anyone choosing it).
            choices = [("", gettext("Choose…")), *choices]
        return forms.ChoiceField(
            label=label, required=spec.required, choices=choices, initial=initial
        )
    if spec.type == "number":
        return NumberField(label=label, required=spec.required, initial=initial)
    if spec.type == "checkbox":
        # An unticked box is a valid answer (false), whatever `required` says.
        return forms.BooleanField(label=label, required=False, initial=spec.checked)
    return text_field(
        label=label,
        required=spec.required,
        max_length=spec.max_length,
        initial=initial,
        strip=False,
    )


class NumberField(forms.DecimalField):
    """A start input of type number. Bounded before anything converts it: "1e1000000" is nine
    characters, and turning it into an int would take the server's CPU for many seconds."""

    # Past 10^15 a number stops being exact once Dify (or a browser) reads it as a float.
    MAX_EXPONENT = 15

    def validate(self, value: Any) -> None:
        super().validate(value)
        if (
            value is not None
            and value.is_finite()
            and value
            and value.adjusted() > self.MAX_EXPONENT
        ):
            raise forms.ValidationError(
                gettext("Enter a number smaller than 10^%(max)s.") % {"max": self.MAX_EXPONENT + 1},
                code="max_value",
            )


def default_dify_user(user: Any) -> str:
    return f"inbox-{user.get_username()}"[:255]


# Dify's 400s that are no fault of the inputs: its model provider is not set up, out of quota or
# failing (CONTRACT §2). Nothing the caller sends differently would start the run.
DIFY_SETUP_CODES = frozenset(
    {
        "provider_not_initialize",
        "provider_quota_exceeded",
        "model_currently_not_support",
        "completion_request_error",
    }
)


class StartFailed(Refused):
    """Dify did not start the run. The code is the inbox's own (never Dify's, which is kept in
    `dify_code` beside Dify's HTTP status); `run` is the row kept as `failed` for the record,
    where there is one."""

    default_status = 502
    default_code = "dify_error"

    def __init__(self, message: str, *, run: Run | None = None, **refused: Any) -> None:
        super().__init__(message, **refused)
        self.run = run

    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if self.run is not None:
            # The row kept for the record: after a 504 it is how to find the run again.
            details["run"] = str(self.run.public_id)
        return {**details, **super().details()}


class ConversationBusy(StartFailed):
    """A next message while another of its conversation is in flight (two agents sending at
    once, or one sent while the last one starts): nothing started, no run kept. `run` is the
    message in flight."""

    default_status = 409
    default_code = "conversation_in_progress"

    def __init__(self, busy: Run, user: Any = None) -> None:
        # Named only to whom may open it: a colleague's message may be one they cannot see.
        if user is not None and Run.objects.for_user(user).filter(pk=busy.pk).exists():
            message = gettext(
                "The conversation's last message (run %(run)s) has not ended yet."
            ) % {"run": busy.public_id}
            super().__init__(message, run=busy)
        else:
            super().__init__(
                gettext("The conversation's last message, sent by someone else, has not ended yet.")
            )
        self.busy = busy


def _claim_conversation(app: DifyApp, conversation_id: str, user: Any) -> None:
    """In the transaction that creates a run: one message of a conversation in flight at a
    time. Starts in the app's conversations wait for each other here (the app's row, locked
    without blocking the rows that refer to it; SQLite's transactions are serialized already),
    so of two sent together the second finds the first. Raises ConversationBusy."""
    list(DifyApp.objects.select_for_update(no_key=True).filter(pk=app.pk))
    busy = conversation_in_progress(app, conversation_id)
    if busy is not None:
        raise ConversationBusy(busy, user)


class FilesTaken(StartFailed):
    """A start input's upload that another run took first (two starts sent together with one
    upload): nothing was started, and no run kept. `taken`: {input: message}."""

    default_status = 400
    default_code = "invalid_inputs"

    def __init__(self, taken: dict[str, str]) -> None:
        super().__init__(sentence_gap().join(labelled(n, m) for n, m in taken.items()))
        self.taken = taken

    def details(self) -> dict[str, Any]:
        return {name: [message] for name, message in self.taken.items()}


def _claim_input_files(files: list[Any]) -> None:
    """In the transaction that creates a run: its start inputs' uploads, each used by one run
    only, are locked and checked again, so two starts sent together with one upload do not
    both take it (the one that comes second waits here, then finds it used). Raises
    FilesTaken."""
    from inbox.models import MessageFile

    pks = [f.pk for f in files]
    list(MessageFile.objects.select_for_update().filter(pk__in=pks).order_by("pk"))
    free = set(MessageFile.objects.filter(pk__in=pks).unused().values_list("pk", flat=True))
    taken = {
        f.input_name: gettext(
            "The upload %(id)s was used by another run already: upload the file again."
        )
        % {"id": f.public_id}
        for f in files
        if f.pk not in free
    }
    if taken:
        raise FilesTaken(taken)


class SameStart(Exception):
    """A start under a submission key that another start holds: `run` is that start's run (it
    may still be starting, may have failed with Dify's answer lost, or be under way), and
    `same` whether it was asked with the same app, inputs, query and user."""

    def __init__(self, run: Run, *, same: bool) -> None:
        super().__init__(str(run.public_id))
        self.run = run
        self.same = same


def start_digest(*parts: Any) -> str:
    """A digest of what a start asked for, to tell a start sent again from another start sent
    under the same key."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# Said when a start is sent again under the key of a start whose outcome is not known.
LOST_START = _(
    "Dify did not answer when this start was first sent. It may have started the run anyway: "
    "check in Dify before starting it again."
)


def start_lost(run: Run) -> bool:
    """Whether a start under a kept key has no outcome to wait for, only an unknown one: its
    answer was lost (the one failure that keeps its key), or it is still `starting` long after
    any start is answered (the process sending it ended mid-start)."""
    if run.workflow_run_id:
        return False
    if run.status == Run.Status.FAILED:
        return True
    longest = FIRST_EVENT_SECONDS + settings.INBOX_DIFY_REQUEST_DEADLINE_SECONDS
    return run.status == Run.Status.STARTING and run.created_at < timezone.now() - dt.timedelta(
        seconds=longest
    )


def started_under(submission_key: str, digest: str) -> None:
    """Raises SameStart when a start holds this key (see `Run.submission_key`)."""
    if not submission_key:
        return
    run = Run.objects.select_related("app").filter(submission_key=submission_key).first()
    if run is not None:
        raise SameStart(run, same=run.submission_digest == digest)


CONVERSATION_NOT_FOUND = Reason(
    gettext_noop(
        "Dify has no such conversation for this user: it was deleted in Dify, or began under "
        "another user."
    )
)

# A start Dify refused as the app has nothing published (`app_unavailable`), as the start page
# says it: Dify's words ("App unavailable, please check your app configurations.") say nothing
# of what to do, and are kept beside it for staff (`Run.error_detail`).
UNPUBLISHED_START = Reason(
    gettext_noop(
        "Dify did not start the run: Dify says this app is not available: it may have no "
        "published workflow. Runs of it can start once an administrator publishes it in Dify."
    )
)


def start_run(
    app: DifyApp,
    *,
    inputs: dict[str, Any],
    query: str = "",
    dify_user: str,
    started_by: Any = None,
    source: str = "ui",
    labels: dict[str, str] | None = None,
    submission_key: str = "",
    submission_digest: str = "",
    conversation_id: str = "",
    files: list[Any] | None = None,
    input_files: list[Any] | None = None,
) -> Run:
    """Start a streaming run and hand it to the follower (see the module docstring).
    `labels`: the start inputs' labels ({variable: label}), kept for the run's page.
    `conversation_id`: a chatflow's conversation to go on with (Dify's id), "" for a new one;
    Dify then runs with the inputs the conversation started with (see `conversation_start`).
    `submission_key`: the caller's key for this start (see `Run.submission_key`), with the
    digest of what it asked (`start_digest`).
    `files`: a chatflow message's files (`MessageFile`s uploaded under `dify_user`), sent as
    Dify's uploaded files and kept with the run; `input_files`: those that fill file start
    inputs (already in `inputs`, as Dify takes them), kept with the run too.

    Raises StartFailed; the run row then stays as `failed` with Dify's message, for the record.
    Raises SameStart when another start holds the key, having started nothing.
    """
    try:
        client = DifyClient.for_app(app)
    except ApiKeyUnreadable as exc:
        # This process cannot read the app's key: nothing is asked of Dify, and no run kept.
        raise StartFailed(exc.message, status=503, code="api_key_unreadable") from None
    for _attempt in range(3):
        started_under(submission_key, submission_digest)
        try:
            with transaction.atomic():
                if conversation_id:
                    _claim_conversation(app, conversation_id, started_by)
                run = Run.objects.create(
                    app=app,
                    dify_user=dify_user,
                    inputs=inputs,
                    input_labels=labels or {},
                    query=query,
                    started_by=started_by
                    if getattr(started_by, "is_authenticated", False)
                    else None,
                    started_by_username=started_by.get_username()
                    if getattr(started_by, "is_authenticated", False)
                    else "",
                    source=source,
                    status=Run.Status.STARTING,
                    # Not before Dify has named it: there is nothing to follow yet.
                    follow_wanted=False,
                    submission_key=submission_key,
                    submission_digest=submission_digest if submission_key else "",
                    conversation_id=conversation_id[:64],
                )
                if input_files:
                    # After the run's row is written: on SQLite that write holds the lock
                    # another start waits on, as select_for_update does on PostgreSQL.
                    _claim_input_files(list(input_files))
                if files or input_files:
                    run.message_files.add(*(files or ()), *(input_files or ()))
            break
        except IntegrityError:
            # Another start under the key went in first; looked up again, it is that start,
            # unless it failed and let the key go meanwhile: then this one tries again.
            if not submission_key:
                raise
    else:
        raise StartFailed(
            gettext("Other starts under this submission key keep failing; try again."),
            status=409,
            code="start_in_progress",
            retry_after=1,
        )
    AuditEntry.record("run_started", run, actor=started_by, app=app.name, source=source)
    seen: list[StreamEvent] = []
    try:
        if app.mode == DifyApp.Mode.CHATFLOW:
            stream = client.send_chat_message(
                query=query,
                inputs=inputs,
                user=dify_user,
                conversation_id=conversation_id or None,
                files=[f.as_dify() for f in files or ()],
            )
        else:
            stream = client.run_workflow(inputs=inputs, user=dify_user)
        with stream:
            # Ends the stream at the first chunk past it, a keep-alive ping included.
            stream.deadline = time.monotonic() + FIRST_EVENT_SECONDS
            for event in stream:
                seen.append(event)
                if stream.workflow_run_id:
                    break
            workflow_run_id = stream.workflow_run_id
            task_id = stream.task_id or ""
    except DifyStreamError as exc:
        _fail(run, str(exc.message or exc))
        raise StartFailed(
            exc.message or str(exc),
            status=502,
            code="dify_error",
            run=run,
            dify_code=exc.code or "",
        ) from None
    except DifyStatusError as exc:
        if exc.refuses_app:
            app.note_refused(exc, "start")
        if conversation_id and exc.status == 404:
            # The one 404 of a start: Dify has no such conversation for this user (deleted in
            # Dify, or begun under another user).
            _fail(run, CONVERSATION_NOT_FOUND)
            raise StartFailed(
                _said(CONVERSATION_NOT_FOUND),
                status=400,
                code="conversation_not_found",
                run=run,
                dify_status=exc.status,
                dify_code=exc.code or "",
            ) from None
        if exc.code == UNPUBLISHED_REFUSAL:
            _fail(run, UNPUBLISHED_START, detail=exc.message or str(exc))
        else:
            _fail(run, exc.message or str(exc))
        # Dify's refusal of the inputs is the caller's to fix (400); its rate limit is the
        # caller's to wait out (429, with Dify's Retry-After); anything else (a wrong key, an
        # app not found or switched off, its model provider not set up, a server error) is the
        # set-up's or Dify's (502).
        if exc.refuses_app or exc.code in DIFY_SETUP_CODES:
            status, code = 502, "dify_error"
        elif conversation_id and exc.code == "conversation_completed":
            status, code = 409, "conversation_completed"
        elif exc.status in (400, 422):
            status, code = 400, "dify_rejected_inputs"
            # Checked against the parameters cached here: the app's inputs may have changed.
            forget_parameters(app)
        elif exc.status == 429:
            status, code = 429, "rate_limited"
        else:
            status, code = 502, "dify_error"
        raise StartFailed(
            exc.message or str(exc),
            status=status,
            code=code,
            retry_after=exc.retry_after if isinstance(exc, TooManyRequests) else None,
            run=run,
            dify_status=exc.status,
            dify_code=exc.code or "",
        ) from None
    except DifyError as exc:
        if isinstance(exc, DifyConnectionError) and exc.request_sent:
            # The request reached Dify, its answer did not reach us: the run may be going on
            # there, with no id of it here to follow. Said plainly, so nobody starts it twice
            # without looking.
            reason = Reason(
                gettext_noop(
                    "Dify did not answer the start (%(error)s). It may have started the run "
                    "anyway: check in Dify before starting it again."
                ),
                error=str(exc),
            )
            _fail(run, reason, keep_key=True)
            raise StartFailed(_said(reason), status=504, code="dify_no_answer", run=run) from None
        reason = Reason(gettext_noop("Dify could not be reached: %(error)s"), error=str(exc))
        _fail(run, reason)
        raise StartFailed(_said(reason), code="dify_unavailable", run=run) from None
    # Dify took the start: the app is of the kind set up here, and has a workflow published.
    app.note_accepted("start", kind=True, published=True)
    if not workflow_run_id:
        if stream.deadline is not None and time.monotonic() > stream.deadline:
            # Dify took the request and kept the stream open (pings) without naming the run:
            # it may be queued there.
            reason = Reason(
                gettext_noop(
                    "Dify did not name the run within %(seconds)g seconds. It may still start "
                    "it: check in Dify before starting it again."
                ),
                seconds=FIRST_EVENT_SECONDS,
            )
            _fail(run, reason, keep_key=True)
            raise StartFailed(_said(reason), status=504, code="dify_no_answer", run=run)
        if any(event.event in ("message", "agent_message", "message_end") for event in seen):
            # It answered as a chat (or agent) app: a conversation with no workflow behind it,
            # which never pauses for a person.
            reason = Reason(
                gettext_noop(
                    "Dify answered as a chat app with no workflow: this app is not a chatflow in "
                    "Dify. Only workflow and chatflow apps pause for a person's decision."
                )
            )
            _fail(run, reason)
            raise StartFailed(_said(reason), run=run)
        reason = Reason(gettext_noop("Dify did not start a run."))
        _fail(run, reason)
        raise StartFailed(_said(reason), run=run)
    # The run id is the only handle to the run: stored before anything else can fail.
    Run.objects.filter(pk=run.pk).update(workflow_run_id=workflow_run_id[:64], task_id=task_id[:64])
    run.apply_events(seen, source="start")
    run.request_follow(snapshot=True)
    run.refresh_from_db()
    return run


def _said(reason: Reason) -> str:
    """`reason` in the active language, for the person who asked."""
    return translated(str(reason), reason.parts())


def _fail(run: Run, reason: str, *, keep_key: bool = False, detail: str = "") -> None:
    """The start failed, for `reason`: a `Reason` of the inbox's (stored in English with its
    parts, read in each reader's language) or Dify's own words. `detail`: Dify's words beside
    a `Reason` said in their place, kept in the English text (the admin, the trail, the API)
    and shown to staff on the run page (`Run.error_detail`). Its submission key is released
    (sent again, the start is tried again) unless Dify may have started the run anyway
    (`keep_key`): then sent again, it is told the same instead of starting a second run."""
    error, parts = stored(reason)
    if detail and parts:
        error = f"{error} (Dify: {detail})"
        parts = {**parts, "detail": detail[:1000]}
    with transaction.atomic():
        Run.objects.filter(pk=run.pk).update(
            status=Run.Status.FAILED,
            error=error[:2000],
            error_parts=parts,
            finished_at=timezone.now(),
            follow_wanted=False,
            **({} if keep_key else {"submission_key": ""}),
        )
        AuditEntry.record("run_start_failed", run, error=error[:500])
    logger.info("run %s did not start: %s", run.pk, error)


class RunNotStoppable(Exception):
    """`message` says why, for the person who asked."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def stop_run(run: Run, *, actor: Any = None) -> None:
    """Ask Dify to stop a run that is working (not one parked at a form: Dify documents no stop
    there, CONTRACT 6.3). The follower records the `workflow_finished` (stopped) that follows.
    Raises RunNotStoppable, or DifyError when Dify refuses or cannot be reached."""
    if run.is_finished:
        raise RunNotStoppable(gettext("This run has already ended."))
    if run.status == Run.Status.PAUSED:
        raise RunNotStoppable(
            gettext(
                "This run is waiting at a form, where Dify cannot stop it. Answer the form, or "
                "let it expire."
            )
        )
    if not run.task_id:
        raise RunNotStoppable(gettext("This run has not started in Dify yet."))
    client = DifyClient.for_app(run.app)
    if run.app.mode == DifyApp.Mode.CHATFLOW:
        client.stop_chat_message(run.task_id, user=run.dify_user)
    else:
        client.stop_workflow_task(run.task_id, user=run.dify_user)
    AuditEntry.record("run_stop_requested", run, actor=actor, task_id=run.task_id)
    run.request_follow(snapshot=True)


class IngestRefused(Refused):
    """A run was not taken in to be followed."""


def ingest_run(
    app: DifyApp,
    *,
    workflow_run_id: str,
    dify_user: str,
    form_token: str = "",
    actor: Any = None,
) -> tuple[Run, bool]:
    """Record a run started elsewhere and have it followed; (run, created).

    Idempotent: a run we already hold is returned unchanged (its Dify user is part of it; a
    different one is refused), unless the token is of a form it does not have yet
    (`_ingested_again`). Dify is asked first (GET run detail), so an id that does not
    belong to this app is refused before anything is stored. Without a token the follower
    recovers the pending forms from a state snapshot. With one, its form is captured now from
    GET form, once it is known to be the run's (`_form_of_run`: GET form does not say which run
    a form is of): the run must be paused, and where Dify shows the run's events to `dify_user`
    its snapshot must replay the form among the pending ones, whose form id and node it is
    recorded with. A run whose events Dify will not show us (a run started in the WebApp or
    the console has no API end user, CONTRACT 6.1) cannot be checked that far: its token is
    taken on the pause alone, and when a snapshot later names the form, the same form is
    completed, not duplicated.
    """
    from inbox import capture
    from inbox.dify.errors import NotFound

    existing = Run.objects.filter(app=app, workflow_run_id=workflow_run_id).first()
    if existing is not None:
        return _ingested_again(existing, dify_user, form_token, actor), False
    client = DifyClient.for_app(app)
    try:
        detail = client.get_run(workflow_run_id)
    except NotFound as exc:
        # Not found, or the whole app a 404 (a wrong URL or key, a proxy): Dify is asked about
        # the app before the caller is told the run is unknown, a mistake of theirs.
        raise _app_404(app, exc, client) or IngestRefused(
            worded(
                gettext("Dify knows no run %(id)s in the app %(app)s."),
                id=workflow_run_id,
                app=app.name,
            ),
            code="run_not_found",
        ) from None
    except DifyError as exc:
        if isinstance(exc, DifyStatusError) and exc.refuses_app:
            # Shown with the app (admin, /healthz, pages), as a start, delivery or the
            # reconcile refused so records it.
            app.note_refused(exc, "ingest")
        elif cannot_reach(exc):
            # As the follower, the reconciles and deliveries record it.
            app.note_unreachable(exc, "ingest")
        raise _unreachable(exc) from None
    # Dify answered for one of the app's runs: a refusal of the app on record is over, and
    # so is a spell of not answering.
    app.note_accepted("ingest", runs=True)
    app.note_reached("ingest")
    announced: HumanInputFields | None = None
    if not form_token:
        _check_events_user(client, app, workflow_run_id, dify_user)
        definition = None
    else:
        _check_paused(detail, workflow_run_id)
        # A form settled already has nothing to capture; the run is still followed.
        definition = _ingested_form(client, app, form_token)
        if definition is not None:
            announced = _form_of_run(client, workflow_run_id, dify_user, form_token, definition)
    from django.db import IntegrityError

    # Asked of Dify (GET /parameters, cached) before the transaction: no call to Dify holds one
    # open.
    labels = _start_labels(app)
    try:
        with transaction.atomic():
            run = Run.objects.create(
                app=app,
                workflow_run_id=workflow_run_id,
                dify_user=dify_user,
                source="ingest",
                # What it was started with, as Dify keeps it (the run page and API show it).
                inputs=detail.inputs or {},
                input_labels=labels,
                status=Run.Status.RUNNING,
                started_by=actor if getattr(actor, "is_authenticated", False) else None,
                started_by_username=actor.get_username()
                if getattr(actor, "is_authenticated", False)
                else "",
                follow_wanted=False,
            )
            AuditEntry.record("run_ingested", run, actor=actor, with_token=bool(form_token))
            if definition is not None:
                capture.record_ingested_form(run, form_token, definition, announced)
    except IntegrityError:
        # The same run ingested twice at the same moment: the other request recorded it.
        existing = Run.objects.get(app=app, workflow_run_id=workflow_run_id)
        return _ingested_again(existing, dify_user, form_token, actor), False
    capture.apply_run_detail(run, detail, source="ingest")
    run.request_follow(snapshot=True)
    run.refresh_from_db()
    return run, True


def _start_labels(app: DifyApp) -> dict[str, str]:
    """The app's start input labels, for an ingested run's page; none if Dify will not say
    (the run's inputs then read by their variables' names)."""
    try:
        parameters = app_parameters(app)
    except DifyError:
        return {}
    return start_labels(start_inputs(parameters))


def _check_events_user(client: DifyClient, app: DifyApp, workflow_run_id: str, user: str) -> None:
    """Whether Dify shows the run's events to `user`, the only way an ingest without a token
    reaches its forms: Dify answers 404 for anyone but the end user that started the run
    (CONTRACT 6.1). Such a run, recorded, would wait for forms it can never learn of, under a
    user it can never change, so it is refused here. The stream opened (no snapshot: nothing is
    replayed) is closed at once. A run started in the WebApp or the console has no API end user
    at all: its forms come in by their tokens."""
    from inbox.dify.errors import NotFound

    try:
        with client.stream_events(workflow_run_id, user=user):
            pass
    except NotFound as exc:
        if _events_404_for_the_app(client, app):
            raise IngestRefused(
                worded(
                    gettext(
                        "Dify answers 404 for the events of the app %(app)s's runs, those of "
                        "runs it showed their users before too (a proxy that does not pass "
                        "/workflow/…/events?), not for this user alone: try again once Dify "
                        "shows them."
                    ),
                    app=app.name,
                ),
                status=502,
                code="dify_error",
                dify_status=exc.status,
                dify_code=exc.code or "",
            ) from None
        raise IngestRefused(
            gettext(
                "Dify does not show this run's events to the user %(user)s: give the user that "
                "started the run. A run started in Dify's WebApp or console has no such user; "
                "ingest it with the token of its pending form."
            )
            % {"user": user},
            code="user_mismatch",
        ) from None
    except DifyError as exc:
        raise _unreachable(exc) from None


def _events_404_for_the_app(client: DifyClient, app: DifyApp) -> bool:
    """Whether Dify answers 404 for the events of the app's runs whoever asks: the events of
    the latest run started here (by the inbox, under its Dify user, which Dify shows its events
    to) are a 404 too. No such run, or Dify not answering: not concluded (False)."""
    from inbox.app_check import reference_runs
    from inbox.dify.errors import NotFound

    started_here = [run for run in reference_runs(app) if run.source != Run.Source.INGEST]
    if not started_here:
        return False
    run = started_here[0]
    try:
        with client.stream_events(run.workflow_run_id, user=run.dify_user):
            pass
    except NotFound:
        return True
    except DifyError:
        return False
    return False


def _app_404(app: DifyApp, exc: DifyError, client: DifyClient) -> IngestRefused | None:
    """A 404 for a run asked about is the run's (None: the caller's to correct) only while
    Dify still answers for the app (`app_check.check_app`, as delivery and the reconcile ask).
    A 404 for the whole app (the key of another app, a wrong URL, a proxy) is the app's,
    recorded as its refusal (the admin, /healthz and the pages show it): a 502 to try again
    once Dify answers for the app, as is a Dify that could not be asked."""
    from inbox.app_check import check_app

    check = check_app(app, source="ingest", client=client)
    if check.works:
        return None
    if check.refused:
        return IngestRefused(
            worded(
                gettext(
                    "Dify answers 404 for the app %(app)s as a whole (the key of another app, a "
                    "wrong URL or a proxy?), not for this run alone: try again once Dify answers "
                    "for the app."
                ),
                app=app.name,
            ),
            status=502,
            code="dify_error",
            dify_status=404,
            dify_code=getattr(exc, "code", "") or "",
        )
    return IngestRefused(
        worded(
            gettext(
                "Dify answered 404 for this run, and could not be asked whether it still "
                "answers for the app %(app)s: try again."
            ),
            app=app.name,
        ),
        status=502,
        code="dify_unavailable",
    )


def _ingested_again(run: Run, dify_user: str, form_token: str, actor: Any) -> Run:
    """An ingest of a run we already hold. Refused to whoever may not see the run (its inputs,
    outputs and forms would be in the answer) and for another Dify user. Otherwise nothing
    changes, unless it brings the token of a form this run does not have yet: a run whose
    events Dify will not show us (started in the WebApp or the console) reaches its second
    pause only that way."""
    if actor is not None and not Run.objects.for_user(actor).filter(pk=run.pk).exists():
        raise IngestRefused(
            gettext("This run is already recorded in the inbox, and you may not see it."),
            status=409,
            code="conflict",
        )
    if run.dify_user != dify_user:
        raise IngestRefused(
            gettext("This run is already recorded with another Dify user."),
            status=409,
            code="conflict",
        )
    if run.was_gone:
        _back_if_alive(run, actor)
    if form_token and not run.is_finished and _ingest_new_form(run, form_token, actor):
        run.request_follow(snapshot=True)
        run.refresh_from_db()
    return run


def _back_if_alive(run: Run, actor: Any) -> None:
    """An ingest of a run taken for gone (`Run.gone_from_dify`): when Dify answers for it now
    (its settings were put right since, say), it is reopened and followed with a state
    snapshot (`Run.back_in_dify`), so its pending forms come in again with fresh tokens."""
    from inbox import capture
    from inbox.dify.errors import NotFound

    client = DifyClient.for_app(run.app)
    try:
        detail = client.get_run(run.workflow_run_id)
    except NotFound as exc:
        # Still unknown to Dify while it answers for the app: the run stays as it ended. A 404
        # for the whole app is said (a 502), not taken for the run's.
        if (refusal := _app_404(run.app, exc, client)) is not None:
            raise refusal from None
        return
    except DifyError as exc:
        raise _unreachable(exc) from None
    if run.back_in_dify(source="ingest", actor=actor, follow=False):
        try:
            capture.apply_run_detail(run, detail, source="ingest")
            if not detail.is_finished:
                _recover_forms(run)
        finally:
            # Followed as every ingest is, after the snapshot read here (not beside it).
            run.request_follow(snapshot=True)
            run.refresh_from_db()


def _recover_forms(run: Run) -> None:
    """The state snapshot of a run just brought back (`_back_if_alive`), read and applied
    before the ingest answers, so the answer shows its forms waiting again with their fresh
    tokens rather than `not_answerable` for the moment before the follower's snapshot. Read
    for `SNAPSHOT_SECONDS` at most, as an ingest's token is checked (`_form_of_run`): done at
    `workflow_finished`, at a pause once no form that came back still lacks its token, or
    once the stream falls silent for `SNAPSHOT_QUIET_SECONDS` after a pause (a replay of the
    retained log goes on past earlier pauses; a form Dify no longer waits at never comes).
    Dify not showing the snapshot (its events a 404 to the run's user, a failure, no answer
    in time) is left to the follower: the forms then wait without a token a little longer."""
    from inbox import capture
    from inbox.models import Form

    back = set(
        run.forms.filter(status=Form.Status.NOT_ANSWERABLE, form_token="").values_list(
            "pk", flat=True
        )
    )
    if not back:
        return
    client = DifyClient.for_app(run.app)
    until = time.monotonic() + SNAPSHOT_SECONDS
    try:
        # Retries of the opening included: none starts past the budget.
        with deadline(SNAPSHOT_SECONDS):
            stream = client.stream_events(
                run.workflow_run_id,
                user=run.dify_user,
                include_state_snapshot=True,
                continue_on_pause=True,
                read_timeout=SNAPSHOT_QUIET_SECONDS,
            )
    except DifyError as exc:
        logger.info("ingest: run %s back, its snapshot not read: %s", run.pk, exc)
        return
    state = capture.StreamState()
    events: list[StreamEvent] = []
    with stream:
        stream.deadline = until
        try:
            for event in stream:
                events.append(event)
                if event.event not in ("workflow_paused", "workflow_finished"):
                    continue
                run.apply_events(events, source="ingest", stream=state)
                events = []
                if event.event == "workflow_finished":
                    break
                if not run.forms.filter(pk__in=back, status=Form.Status.NOT_ANSWERABLE).exists():
                    break
                stream.deadline = min(until, time.monotonic() + SNAPSHOT_QUIET_SECONDS)
        except DifyError as exc:  # silent past the pause, or failing: the follower goes on
            logger.info("ingest: run %s back, its snapshot ended: %s", run.pk, exc)


def _ingest_new_form(run: Run, form_token: str, actor: Any) -> bool:
    """Record the form behind `form_token` in a run we hold, unless the run has it already:
    the same token, the same Dify form (its snapshot names it), or (a snapshot hands out
    fresh tokens for the same form) an open form with the same content. When two open forms
    could be the same, none is added: a form recorded twice could be answered twice. The
    token is checked as a first ingest checks it (`_form_of_run`). True when a form was
    added."""
    from inbox import capture
    from inbox.models import Form

    if any(form.form_token == form_token for form in run.forms.exclude(form_token="")):
        return False
    client = DifyClient.for_app(run.app)
    definition = _ingested_form(client, run.app, form_token)
    if definition is None:
        return False  # settled already: the run's own stream tells how
    try:
        detail = client.get_run(run.workflow_run_id)
    except DifyError as exc:
        raise _unreachable(exc) from None
    _check_paused(detail, run.workflow_run_id)
    announced = _form_of_run(client, run.workflow_run_id, run.dify_user, form_token, definition)
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        if announced is not None and locked.forms.filter(form_id=announced.form_id).exists():
            return False
        if locked.forms.filter(
            status__in=[Form.Status.PENDING, Form.Status.SUBMITTING],
            content=definition.form_content,
        ).exists():
            return False
        form = capture.record_ingested_form(locked, form_token, definition, announced)
        if form is None:
            return False
        AuditEntry.record("form_ingested", form, actor=actor)
    return True


def _not_in_run(workflow_run_id: str, why: str) -> IngestRefused:
    return IngestRefused(
        worded(
            gettext("This form token is not of a form the run %(id)s waits at in Dify: %(why)s"),
            id=workflow_run_id,
            why=why,
        ),
        status=422,
        code="form_not_in_run",
    )


def _check_paused(detail: RunDetail, workflow_run_id: str) -> None:
    """A token can only be of a pending form of a run that is paused (GET run detail says
    `paused` while a Human Input node waits, CONTRACT 6.2): any other status refuses it."""
    if detail.status != "paused":
        raise _not_in_run(
            workflow_run_id,
            gettext("the run is not waiting at a form (Dify says it is %(status)s).")
            % {
                "status": str(
                    dict(Run.Status.choices).get(detail.status, detail.status or "?")
                ).lower()
            },
        )


def _form_of_run(
    client: DifyClient,
    workflow_run_id: str,
    user: str,
    form_token: str,
    definition: FormDefinition,
) -> HumanInputFields | None:
    """The pending form of the run that `form_token` (whose GET form is `definition`) is, as
    the run's state snapshot replays it (CONTRACT 6.1): GET form does not say which run a form
    is of, and a token of another run's form, recorded here, would answer that run. The
    snapshot hands out fresh tokens, so the form is recognised by its content, as capture
    recognises an ingested form later (`capture.same_form`), or by the very token where Dify
    replays its log. Read for `SNAPSHOT_SECONDS` at most; the replay is over at
    `workflow_finished`, or once the stream falls silent for `SNAPSHOT_QUIET_SECONDS` after a
    pause (a stream that replays the retained log goes on past earlier pauses).

    Refused (`form_not_in_run`) when the replay is complete and no pending form is the
    token's. None when Dify does not show the run's events to `user` (a 404: a run started in
    the WebApp or the console, or another end user): nothing can be checked this way."""
    from inbox import capture
    from inbox.dify.errors import DifyTimeout, NotFound

    try:
        stream = client.stream_events(
            workflow_run_id,
            user=user,
            include_state_snapshot=True,
            continue_on_pause=True,
            read_timeout=SNAPSHOT_QUIET_SECONDS,
        )
    except NotFound:
        return None
    except DifyError as exc:
        raise _unreachable(exc) from None
    paused = finished = False
    until = time.monotonic() + SNAPSHOT_SECONDS
    with stream:
        stream.deadline = until
        try:
            for event in stream:
                for fields in capture.pending_forms_in([event]):
                    if fields.form_token == form_token or capture.same_form(
                        definition.form_content, fields
                    ):
                        return fields
                if event.event == "workflow_paused":
                    paused = True
                elif event.event == "workflow_finished":
                    finished = True
                if paused:
                    # Past a pause, only pings for a while (they end the stream at the
                    # deadline) or silence (the read timeout): the replay is over.
                    stream.deadline = min(until, time.monotonic() + SNAPSHOT_QUIET_SECONDS)
        except DifyTimeout:
            pass  # silent: Dify has replayed all it had
        except DifyError as exc:
            raise _unreachable(exc) from None
    if not (paused or finished):
        raise IngestRefused(
            gettext(
                "Dify did not show the pending forms of the run %(id)s in time, so this form "
                "token could not be checked: try again."
            )
            % {"id": workflow_run_id},
            status=502,
            code="dify_unavailable",
        )
    logger.info("ingest: a form token is of no pending form of run %s", workflow_run_id)
    raise _not_in_run(
        workflow_run_id, gettext("it is none of the forms the run waits at (another run's?).")
    )


def _ingested_form(client: DifyClient, app: DifyApp, form_token: str) -> FormDefinition | None:
    """GET form for a token an ingest brought: its definition, None when Dify says the form
    is settled already (412), or the refusal to answer (unknown token, Dify unreachable)."""
    from inbox.dify.errors import FormAlreadySubmitted, FormExpired, NotFound

    try:
        return client.get_form(form_token)
    except (FormAlreadySubmitted, FormExpired):
        return None
    except NotFound:
        raise IngestRefused(
            worded(gettext("Dify does not know this form token in the app %(app)s."), app=app.name),
            code="form_not_found",
        ) from None
    except DifyError as exc:
        raise _unreachable(exc) from None


def _unreachable(exc: DifyError) -> IngestRefused:
    """Dify did not help: busy (429, to wait out), refusing or failing (502 `dify_error`, in
    Dify's words), or not reached at all (502 `dify_unavailable`)."""
    if isinstance(exc, TooManyRequests):
        return IngestRefused(
            gettext("Dify is receiving too many requests: %(error)s") % {"error": exc},
            status=429,
            code="rate_limited",
            retry_after=exc.retry_after,
            dify_status=exc.status,
            dify_code=exc.code or "",
        )
    if isinstance(exc, DifyStatusError):
        return IngestRefused(
            gettext("Dify answered with an error: %(error)s") % {"error": exc},
            status=502,
            code="dify_error",
            dify_status=exc.status,
            dify_code=exc.code or "",
        )
    return IngestRefused(
        gettext("Dify could not be reached: %(error)s") % {"error": exc},
        status=502,
        code="dify_unavailable",
    )
