"""Reviewer pages for runs: the apps one may start, the start page, the runs list and the run
page (status, timeline, answer, outputs and forms, kept current by HTMX polling)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
import uuid
from typing import Any

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, TextField
from django.db.models.functions import Cast
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import trigger_client_event

from inbox import timefmt
from inbox.app_check import last_tested_mode, unusable_mode
from inbox.dify.errors import DifyError, DifyStatusError
from inbox.forms import RUN_ID_START, UI_FILE_LIST_CAP, FileNames, small_int
from inbox.models import KIND_REFUSALS, UNPUBLISHED_REFUSAL, DifyApp, Form, MessageFile, Run, Upload
from inbox.names import people_named
from inbox.runs import (
    CONVERSATION_SHOWN,
    LOST_START,
    ContinueForm,
    Conversation,
    ConversationBusy,
    FilesTaken,
    RunNotStoppable,
    SameStart,
    StartFailed,
    StartFilesField,
    StartRunForm,
    add_files_field,
    app_parameters,
    conversation_in_progress,
    conversation_runs,
    conversation_start,
    default_dify_user,
    start_digest,
    start_lost,
    start_run,
    started_under,
    stop_run,
)
from inbox.uploads import UploadRejected, message_file_spec, too_large, upload_message_file

# Timeline events shown without a node title, in the reviewer's language.
EVENT_LABELS = {
    "workflow_started": gettext_lazy("Run started"),
    "workflow_finished": gettext_lazy("Run ended"),
    "human_input_required": gettext_lazy("Waiting for a decision"),
    "human_input_form_filled": gettext_lazy("Form answered"),
    "human_input_form_timeout": gettext_lazy("Form timed out"),
}

# The statuses a timeline entry carries (Dify's node and run statuses, and ours for forms), in
# the reviewer's language; one Dify adds later shows as it comes.
TIMELINE_STATUS_LABELS = {
    "waiting": gettext_lazy("Waiting"),
    "paused": gettext_lazy("Paused"),
    "answered": gettext_lazy("Answered"),
    "answered_elsewhere": gettext_lazy("Answered elsewhere"),
    "expired": gettext_lazy("Expired"),
    "running": gettext_lazy("Running"),
    "succeeded": gettext_lazy("Succeeded"),
    "failed": gettext_lazy("Failed"),
    "stopped": gettext_lazy("Stopped"),
    "exception": gettext_lazy("Exception"),
    "partial-succeeded": gettext_lazy("Partially succeeded"),
}


def timeline_status_label(status: str) -> str:
    return str(TIMELINE_STATUS_LABELS.get(status, status))


def _get_run_for_user(request: HttpRequest, public_id: uuid.UUID) -> Run:
    run = (
        Run.objects.for_user(request.user)
        .select_related("app", "started_by")
        .filter(public_id=public_id)
        .first()
    )
    if run is None:
        raise Http404(_("No such run, or you may not see it."))
    return run


def _may_stop(request: HttpRequest, run: Run) -> bool:
    return bool(request.user.is_staff or run.started_by_id == request.user.pk)


@login_required
@require_GET
def apps_list(request: HttpRequest) -> HttpResponse:
    # Each with the kind of app Dify named at its last connection test when that is a plain
    # chat, completion or agent app: no Human Input node, so nothing of it can be started or
    # decided here, whatever the mode set up here ("" for any other).
    apps = [
        (app, unusable_mode(app))
        for app in DifyApp.objects.filter(is_active=True)
        .annotate(tested_mode=last_tested_mode())
        .order_by("name")
    ]
    return render(
        request,
        "inbox/apps.html",
        {"apps": apps, "may_start": Run.objects.may_start(request.user)},
    )


@login_required
@require_http_methods(["GET", "POST"])
def app_start(request: HttpRequest, app_id: int) -> HttpResponse:
    if not Run.objects.may_start(request.user):
        raise PermissionDenied(_("You may not start runs."))
    app = get_object_or_404(DifyApp, pk=app_id, is_active=True)
    if mode := unusable_mode(app):
        # A plain chat, completion or agent app by its last connection test (as /apps/ marks
        # it): no Human Input node, so nothing to start here. Dify is not asked.
        return render(
            request,
            "inbox/apps_start.html",
            {"app": app, "form": None, "unusable_mode": mode},
            status=409,
        )
    try:
        parameters = app_parameters(app)
    except DifyError as exc:
        if isinstance(exc, DifyStatusError) and exc.refuses_app:
            app.note_refused(exc, "start")
        return render(
            request,
            "inbox/apps_start.html",
            {
                "app": app,
                "form": None,
                "unreachable": str(exc),
                # Dify's words ("App unavailable, please check your app configurations.") say
                # nothing of what to do: said instead.
                "unpublished": isinstance(exc, DifyStatusError) and exc.code == UNPUBLISHED_REFUSAL,
            },
            status=502,
        )
    form = StartRunForm(
        app, parameters, request.POST or None, request.FILES or None, from_page=True
    )
    dify_user = default_dify_user(request.user)
    # A chatflow's message files, and the files of the start's file inputs.
    message_spec = message_file_spec(parameters) if app.mode == DifyApp.Mode.CHATFLOW else None
    add_files_field(form, app, message_spec, _kept_files(request, app, dify_user))
    # Why the page is shown again when the inputs were fine: Dify did not start the run
    # ("failed"), or whether it did is not known ("unknown"). Not the person's to correct.
    start_problem = ""
    if request.method == "POST" and not _valid(request, form):
        _keep_passed_files(request, form, app, dify_user)
    elif request.method == "POST":
        started = _start_from_page(
            request,
            form,
            app,
            inputs=form.dify_inputs(),
            query=form.cleaned_data.get("query", ""),
            dify_user=dify_user,
            labels=form.labels,
        )
        if isinstance(started, HttpResponse):
            return started
        start_problem = started
        refusal = getattr(form, "dify_refusal", "")
        if refusal:
            form = _with_current_inputs(request, app, parameters, form, refusal)
    status = _status(request, form)
    # A new key for each page shown: sending this page twice starts one run, while a start
    # asked again after reading why the last one failed is a start of its own.
    context = {
        "app": app,
        "form": form,
        "submission_key": uuid.uuid4().hex,
        "start_problem": start_problem,
        "choose_again": _choose_again(request, form),
    }
    return render(request, "inbox/apps_start.html", context, status=status)


def _start_from_page(
    request: HttpRequest,
    form: Any,
    app: DifyApp,
    *,
    inputs: dict[str, Any],
    query: str,
    dify_user: str,
    labels: dict[str, str],
    conversation_id: str = "",
) -> HttpResponse | str:
    """A start page's start: the run's page once Dify took it; else why the page is shown
    again, as an error on `form` and a word for its heading ("failed": Dify did not start the
    run; "unknown": whether it did is not known; "" for a file Dify did not take). A message's
    files (a chatflow's) go to Dify first, under `dify_user`, unless the page was sent twice."""
    # A conversation's message is another start than the same message in a new conversation.
    extra: tuple[Any, ...] = (conversation_id,) if conversation_id else ()
    kept = getattr(form, "kept_files", [])
    chosen = form.cleaned_data.get("files") or []
    if kept or chosen:
        # The page sent twice sends the same files: known by their names and sizes before
        # they are uploaded again.
        extra += (
            sorted(str(f.public_id) for f in kept),
            sorted(f"{f.name}:{f.size}" for f in chosen),
        )
    start_fields = _start_file_fields(form)
    if start_fields:
        # So are a start input's files (its own).
        extra += (
            {
                name: (
                    sorted(str(f.public_id) for f in field.kept_files),
                    sorted(f"{f.name}:{f.size}" for f in form.cleaned_data.get(name) or []),
                )
                for name, field in start_fields.items()
            },
        )
    digest = start_digest(app.pk, inputs, query, dify_user, *extra)
    key = _page_key(request, digest)
    try:
        started_under(key, digest)
        input_files = _send_input_files(request, form, app, dify_user, inputs)
        if input_files is None:
            return ""
        files = _send_files(request, form, app, dify_user, chosen)
        if files is None:
            return ""
        run = start_run(
            app,
            inputs=inputs,
            query=query,
            dify_user=dify_user,
            started_by=request.user,
            source="ui",
            labels=labels,
            submission_key=key,
            submission_digest=digest,
            conversation_id=conversation_id,
            files=files,
            input_files=input_files,
        )
    except SameStart as same:
        # The page sent twice (a double click, a reload that posts again): the run its first
        # sending started, never a second one.
        if start_lost(same.run):
            form.add_error(None, str(LOST_START))
            return "unknown"
        messages.info(request, _("This run was already started from this page."))
        return redirect("inbox:run", public_id=same.run.public_id)
    except StartFailed as exc:
        if isinstance(exc, ConversationBusy):
            # Another message of the conversation went in first (sent at the same moment).
            form.add_error(None, _("The conversation's last message has not ended yet."))
            return ""
        if isinstance(exc, FilesTaken):
            # Another start took a kept file first: said beside its input, nothing started.
            for name, message in exc.taken.items():
                field = f"in_{name}"
                form.add_error(field if field in form.fields else None, message)
        elif exc.code in ("dify_no_answer", "api_key_unreadable", "conversation_not_found"):
            # Whether Dify started it is not known, or Dify was not asked, or the conversation
            # is gone: the message says so itself.
            form.add_error(None, exc.message)
        elif exc.code == "rate_limited":
            form.add_error(None, _busy(exc.retry_after))
        elif exc.dify_code in KIND_REFUSALS:
            # Dify's words name its API routes ("Please check if your app mode matches the right
            # API route."), in English: what is to be set here is said instead.
            form.add_error(
                None,
                _("Dify did not start the run: %(error)s") % {"error": app.mode_mismatch_text},
            )
        elif exc.dify_code == UNPUBLISHED_REFUSAL:
            # Dify's words ("App unavailable, please check your app configurations.") say
            # nothing of what to do: said instead.
            form.add_error(
                None, _("Dify did not start the run: %(error)s") % {"error": app.unpublished_text}
            )
        elif not (exc.code == "dify_rejected_inputs" and _refused_input(form, exc.message)):
            form.add_error(
                None, _("Dify did not start the run: %(error)s") % {"error": exc.message}
            )
        if exc.code == "dify_rejected_inputs":
            # Perhaps for inputs the app no longer has: the page asks Dify for them again.
            form.dify_refusal = exc.message
        return "unknown" if exc.code == "dify_no_answer" else "failed"
    messages.success(request, _("The run has started."))
    return redirect("inbox:run", public_id=run.public_id)


def _choose_again(request: HttpRequest, form: Any) -> list[str]:
    """The file fields of a page shown again whose chosen files it cannot show: a browser
    keeps no chosen file across a sending, and only files Dify took are kept (ticked). Named
    so the page asks for them again, rather than "required" at the next sending: in the error
    summary, and in a note (`<id>_again`) the input is described by, the input marked
    invalid."""
    if request.method != "POST" or not form.is_bound:
        return []
    names = []
    for name, field in form.fields.items():
        if isinstance(field, StartFilesField):
            kept = field.kept_files
        elif name == "files":
            kept = getattr(form, "kept_files", [])
        else:
            continue
        chosen = request.FILES.getlist(form.add_prefix(name))
        if any(c.name not in {f.name for f in kept} for c in chosen):
            names.append(name)
            bound = form[name]
            # The ids the template gives the help text, the note and the errors.
            described = [f"{bound.auto_id}_helptext"] if bound.help_text else []
            described.append(f"{bound.auto_id}_again")
            if bound.errors:
                described.append(f"{bound.auto_id}_error")
            field.widget.attrs["aria-describedby"] = " ".join(described)
            field.widget.attrs["aria-invalid"] = "true"
    return names


def _start_file_fields(form: Any) -> dict[str, StartFilesField]:
    """The start page's file inputs' fields, by field name."""
    return {
        name: field for name, field in form.fields.items() if isinstance(field, StartFilesField)
    }


def _file_field_of(request: HttpRequest, form: Any, name: str) -> str | None:
    """The field a file part named `name` was sent for, when the form takes files there."""
    if name == "files" and "files" in form.fields:
        return "files"
    return name if name in _start_file_fields(form) else None


def _valid(request: HttpRequest, form: Any) -> bool:
    """Whether a start page's form is valid, a file dropped as it arrived (over the most Dify
    takes for the kinds of file the app takes, or past what one sending may carry) said beside
    the field it was sent for."""
    valid = bool(form.is_valid())
    takes_files = "files" in form.fields or bool(_start_file_fields(form))
    dropped = too_large(request) if takes_files else []
    by_kind = getattr(request, "uploads_dropped_fields", {})
    # In the order `too_large` says them.
    fields = [*by_kind.get("uploads_too_large", []), *by_kind.get("uploads_over_total", [])]
    for index, message in enumerate(dropped):
        at = _file_field_of(request, form, fields[index]) if index < len(fields) else None
        if at is not None:
            # Its file was chosen, and refused for its size: that is all there is to say.
            _drop_required(form, at)
        form.add_error(at or (None if "files" not in form.fields else "files"), message)
    return valid and not dropped


def _drop_required(form: Any, name: str) -> None:
    """Take back the "This field is required." of a field whose file was dropped as it
    arrived: the field was filled, with a file too large."""
    errors = form.errors.get(name)
    if errors is None:
        return
    errors.data[:] = [e for e in errors.data if getattr(e, "code", None) != "required"]
    if not errors.data:
        del form.errors[name]


def _keep_passed_files(request: HttpRequest, form: Any, app: DifyApp, dify_user: str) -> None:
    """A start page refused for what one field says (a missing input, a file refused, one too
    large): the files chosen in the other file fields, which passed their checks, go to Dify
    now, under `dify_user`, and are kept (ticked) for the next sending, so none of them needs
    choosing again. One Dify does not take is said beside its field, and asked for again."""
    if getattr(form, "blocked", False) or not hasattr(form, "cleaned_data"):
        return  # nothing could start from this page: nothing goes to Dify
    if _send_input_files(request, form, app, dify_user, {}) is None:
        return
    chosen = form.cleaned_data.get("files") or []
    if chosen:
        _send_files(request, form, app, dify_user, chosen)


def _status(request: HttpRequest, form: Any) -> int:
    """A start page's status: 413 when a file was dropped as it arrived (larger than the app
    takes, said beside its field, what was typed shown again), 429 when the day's files are
    spent, 400 for other errors."""
    if not (form.is_bound and form.errors):
        return 200
    takes_files = "files" in form.fields or bool(_start_file_fields(form))
    if takes_files and too_large(request):
        return 413
    # The day's budget of files sent to Dify spent: said beside the files, as the API's 429.
    return 429 if getattr(form, "files_spent", False) else 400


def _kept_files(request: HttpRequest, app: DifyApp, dify_user: str) -> list[MessageFile]:
    """The files the page's last sending sent to Dify and the reviewer kept ticked: theirs,
    of this app and Dify user, sent again rather than uploaded again (a start input's, only
    while no run has used them)."""
    wanted = []
    for value in request.POST.getlist("kept_files")[:UI_FILE_LIST_CAP]:
        try:
            wanted.append(uuid.UUID(value))
        except ValueError:
            continue
    if not wanted:
        return []
    found = MessageFile.objects.filter(
        public_id__in=wanted, app=app, dify_user=dify_user, uploaded_by_id=request.user.pk
    )
    unused = set(found.unused().values_list("pk", flat=True))
    return [f for f in found if not f.input_name or f.pk in unused]


def _send_input_files(
    request: HttpRequest, form: Any, app: DifyApp, dify_user: str, inputs: dict[str, Any]
) -> list[MessageFile] | None:
    """The start's file inputs' files in Dify: those kept from the last sending and the ones
    chosen now, uploaded under `dify_user`, put in `inputs` as Dify takes them (a file-list's
    as a list). None when Dify did not take one: said beside its input, and those it took are
    kept (ticked) for the page's next sending."""
    sent: list[MessageFile] = []
    failed = False
    for name, field in _start_file_fields(form).items():
        files = field.kept_files
        for fileobj in form.cleaned_data.get(name) or []:
            if failed:
                break
            try:
                files.append(
                    upload_message_file(
                        app,
                        field.spec,
                        fileobj,
                        dify_user=dify_user,
                        uploader=request.user,
                        input_name=field.spec.name,
                    )
                )
            except UploadRejected as exc:
                if exc.code == "upload_limit_reached":
                    # Said once: no file can be sent today, this one or any other.
                    form.files_spent = True
                    form.add_error(name, exc.message)
                else:
                    form.add_error(
                        name,
                        _("%(name)s: %(error)s") % {"name": fileobj.name, "error": exc.message},
                    )
                failed = True
        field.keep(files)
        sent += files
        if files:
            mappings = [f.as_dify() for f in files]
            inputs[field.spec.name] = mappings[0] if field.spec.kind == "file" else mappings
    return None if failed else sent


def _send_files(
    request: HttpRequest, form: Any, app: DifyApp, dify_user: str, chosen: list[Any]
) -> list[MessageFile] | None:
    """The message's files in Dify: those kept from the last sending and the ones chosen now,
    uploaded under `dify_user`. None when Dify did not take one: said beside the files, and
    those it took are kept (ticked) for the page's next sending."""
    kept: list[MessageFile] = getattr(form, "kept_files", [])
    if not chosen:
        return list(kept)
    spec = form.fields["files"].spec
    for fileobj in chosen:
        try:
            kept.append(
                upload_message_file(app, spec, fileobj, dify_user=dify_user, uploader=request.user)
            )
        except UploadRejected as exc:
            if exc.code == "upload_limit_reached":
                # Said once, of every file still to go: none of them can be sent today.
                form.files_spent = True
                form.add_error("files", exc.message)
                return None
            form.add_error(
                "files", _("%(name)s: %(error)s") % {"name": fileobj.name, "error": exc.message}
            )
            return None
    return list(kept)


def _busy(retry_after: float | None) -> str:
    """Dify's rate limit on a start, with the wait it asked for (in minutes or hours once it
    is that long)."""
    if not retry_after:
        return _("Dify is busy and did not start the run: try again in a moment.")
    seconds = max(1, math.ceil(retry_after))
    if seconds >= 2 * 3600:
        hours = math.ceil(seconds / 3600)
        return ngettext(
            "Dify is busy and did not start the run: try again in %(hours)d hour.",
            "Dify is busy and did not start the run: try again in %(hours)d hours.",
            hours,
        ) % {"hours": hours}
    if seconds >= 120:
        minutes = math.ceil(seconds / 60)
        return ngettext(
            "Dify is busy and did not start the run: try again in %(minutes)d minute.",
            "Dify is busy and did not start the run: try again in %(minutes)d minutes.",
            minutes,
        ) % {"minutes": minutes}
    return ngettext(
        "Dify is busy and did not start the run: try again in %(seconds)d second.",
        "Dify is busy and did not start the run: try again in %(seconds)d seconds.",
        seconds,
    ) % {"seconds": seconds}


# Dify names a start input it refuses by its variable: "amount in input form must be a valid
# number", "name is required in input form" (CONTRACT 2).
DIFY_INPUT_REFUSAL = re.compile(r"^(?P<variable>\S+) (?:is required )?in input form\b")


def _refused_input(form: Any, message: str, *, alone: bool = False) -> bool:
    """Dify's refusal of one start input, said beside that input's field under its label
    rather than its variable (`alone`: in place of what the page's own check said of it);
    False when the message names no input the page shows."""
    found = DIFY_INPUT_REFUSAL.match(message)
    specs = {spec.variable: spec for spec in getattr(form, "specs", [])}
    spec = specs.get(found["variable"]) if found else None
    if spec is None or spec.field_name not in form.fields:
        return False
    if alone and spec.field_name in form.errors:
        del form.errors[spec.field_name]
    said = spec.label + message[len(spec.variable) :]
    form.add_error(spec.field_name, _("Dify refused this value: %(error)s") % {"error": said})
    return True


def _with_current_inputs(
    request: HttpRequest, app: DifyApp, parameters: dict[str, Any], form: Any, refusal: str
) -> Any:
    """A start whose inputs Dify refused (`refusal`, its reason): the page built again from
    the app's start inputs as Dify gives them now, when they changed since it was built (the
    app republished with other options, inputs added or taken away), what was typed kept
    where its field still is, a new input or a choice no longer offered at its default, and
    the files sent to Dify kept where their input still is; Dify's reason said beside the
    input it names. `form` as it was when they did not change, or Dify did not give them."""
    try:
        current = app_parameters(app, fresh=True)
    except DifyError:
        return form
    if current == parameters:
        return form
    blank = StartRunForm(app, current, from_page=True)
    data = request.POST.copy()
    for name, field in blank.fields.items():
        if isinstance(field, StartFilesField):
            continue
        offered = {str(value) for value, _label in getattr(field, "choices", [])}
        if name in form.fields and (not offered or data.get(name) in offered):
            continue  # kept as typed
        initial = field.initial
        if initial is None or initial is False:
            data.pop(name, None)
        else:
            data[name] = "on" if initial is True else str(initial)
    fresh = StartRunForm(app, current, data, None, from_page=True)
    kept = list(getattr(form, "kept_files", []))
    for field in _start_file_fields(form).values():
        kept += field.kept_files
    spec = message_file_spec(current) if app.mode == DifyApp.Mode.CHATFLOW else None
    add_files_field(fresh, app, spec, kept)
    fresh.is_valid()
    fresh.add_error(
        None,
        _(
            "This app's start inputs have changed in Dify since the page was opened: they are "
            "shown as they are now."
        ),
    )
    if not _refused_input(fresh, refusal, alone=True):
        fresh.add_error(None, _("Dify did not start the run: %(error)s") % {"error": refusal})
    return fresh


@login_required
@require_http_methods(["GET", "POST"])
def run_continue(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    """The next message of a chatflow run's conversation: asked under the conversation's Dify
    user, with its inputs (Dify keeps those of the first message)."""
    if not Run.objects.may_start(request.user):
        raise PermissionDenied(_("You may not start runs."))
    run = _get_run_for_user(request, public_id)
    app = run.app
    if not (app.is_active and app.mode == DifyApp.Mode.CHATFLOW and run.conversation_id):
        raise Http404(_("This run has no conversation to go on with here."))
    latest = conversation_start(app, run.conversation_id, request.user)
    if latest is None:
        raise PermissionDenied(
            _("Only who started this conversation, or an administrator, may go on with it.")
        )
    form = ContinueForm(request.POST or None, request.FILES or None, from_page=True)
    try:
        spec = message_file_spec(app_parameters(app))
    except DifyError:
        # Dify does not say now which files the app takes: the message goes without.
        spec = None
    add_files_field(form, app, spec, _kept_files(request, app, latest.dify_user))
    start_problem = ""
    # Whoever sent it (a colleague's message counts): checked again as the run is made.
    busy = conversation_in_progress(app, run.conversation_id)
    if request.method == "POST" and busy is not None:
        if (
            request.POST.get("submission_key")
            and busy.started_by_id == request.user.pk
            and busy.source == "ui"
            and form.is_valid()
            and busy.query == form.cleaned_data["query"]
        ):
            # The page sent twice: its message is the conversation's last, still running.
            return redirect("inbox:run", public_id=busy.public_id)
        form.add_error(None, _("The conversation's last message has not ended yet."))
    elif request.method == "POST" and not _valid(request, form):
        _keep_passed_files(request, form, app, latest.dify_user)
    elif request.method == "POST":
        started = _start_from_page(
            request,
            form,
            app,
            inputs=latest.inputs,
            query=form.cleaned_data["query"],
            dify_user=latest.dify_user,
            labels=latest.input_labels,
            conversation_id=run.conversation_id,
        )
        if isinstance(started, HttpResponse):
            return started
        start_problem = started
    status = _status(request, form)
    if request.method == "POST":
        # Asked again after a sending: a colleague's message may have gone in meanwhile.
        busy = conversation_in_progress(app, run.conversation_id)
    context = {
        "app": app,
        "run": run,
        "latest": latest,
        "busy": busy,
        # Linked only for whom may open it (a colleague's message may be one they cannot see).
        "busy_shown": busy is not None
        and Run.objects.for_user(request.user).filter(pk=busy.pk).exists(),
        "conversation": conversation_runs(run, request.user),
        "shown_most": CONVERSATION_SHOWN,
        "form": form,
        "submission_key": uuid.uuid4().hex,
        "start_problem": start_problem,
        "choose_again": _choose_again(request, form),
    }
    return render(request, "inbox/run_continue.html", context, status=status)


def _page_key(request: HttpRequest, digest: str) -> str:
    """The start page's submission key as stored: the page's own, for this reviewer and these
    inputs ("" when the page sent none)."""
    given = request.POST.get("submission_key", "")
    if not given or len(given) > 64:
        return ""
    return "ui-" + hashlib.sha256(f"{request.user.pk}:{given}:{digest}".encode()).hexdigest()[:61]


# Runs a page of the runs list shows; older ones are a link away.
RUNS_PAGE = 50
RUN_STATES = {
    "open": ("starting", "running", "paused"),
    "paused": ("paused",),
    "finished": tuple(sorted(Run.FINAL_STATUSES)),
}


@login_required
@require_GET
def runs_list(request: HttpRequest) -> HttpResponse:
    """The runs one may see, newest first, a page at a time, by state and app. Pages are read
    by offset without counting: a count over every visible run costs more than the page."""
    visible = Run.objects.for_user(request.user)
    state = request.GET.get("state", "")
    if state not in RUN_STATES:
        state = ""
    runs = visible.select_related("app", "started_by").order_by("-created_at", "-pk")
    if state:
        runs = runs.filter(status__in=RUN_STATES[state])
    apps = list(DifyApp.objects.filter(pk__in=visible.values("app_id")).order_by("name"))
    app = next((a for a in apps if str(a.pk) == request.GET.get("app", "")), None)
    if app is not None:
        runs = runs.filter(app=app)
    q = request.GET.get("q", "").strip()[:200]
    if q:
        runs = search_runs(runs, q)
    page = min(small_int(request.GET.get("page", "1")) or 1, 10**6)
    rows = list(runs[(page - 1) * RUNS_PAGE : page * RUNS_PAGE + 1])
    more, rows = len(rows) > RUNS_PAGE, rows[:RUNS_PAGE]
    waiting = pending_counts(rows)
    return render(
        request,
        "inbox/runs.html",
        {
            "runs": [(run, waiting.get(run.pk, 0)) for run in rows],
            "may_start": Run.objects.may_start(request.user),
            "states": [
                ("", _("All")),
                ("open", _("Open")),
                ("paused", _("Waiting for a decision")),
                ("finished", _("Ended")),
            ],
            "state": state,
            "apps": apps,
            "app": app,
            "q": q,
            "page": page,
            "newer": page - 1 if page > 1 else None,
            "older": page + 1 if more else None,
        },
    )


def search_runs(runs: Any, q: str) -> Any:
    """Runs whose start one remembers: the start of the run id a row shows ("Run 41f2c79e") or
    of the inbox's own (its page's address), who started it, its message, or a value of its
    inputs ("Ada", "SO-1042"; not their names).

    Every condition is on the run's own columns, so on PostgreSQL each one is answered by an
    index (migration 0031: trigrams of the message and of the inputs' text, the kept username,
    the ids' starts) and a search reads only the runs it finds. The people (by username, or by
    the name the page shows: `people_named`) are looked up first (a few rows) and matched by
    id: a condition on the joined account would make PostgreSQL read every run to test it."""
    people = get_user_model().objects.filter(
        Q(username__iexact=q) | Q(pk__in=people_named(q).values("pk"))
    )
    found = (
        Q(query__icontains=q)
        | Q(started_by_username__iexact=q)
        | Q(started_by_id__in=list(people.values_list("pk", flat=True)))
    )
    if RUN_ID_START.fullmatch(q) and any(c.isdigit() for c in q):
        found |= Q(workflow_run_id__startswith=q.lower()) | Q(public_id__startswith=q.lower())
    # The inputs as stored (JSON text), within a value only: after a name's colon, in a
    # string (JSON escapes what is not ASCII, so such a value is also looked for as JSON
    # writes it) or as a number.
    in_values = Q()
    for needle in {q, json.dumps(q)[1:-1]}:
        in_value = Q(inputs_text__iregex=r'":\s*"[^"]*' + re.escape(needle) + '[^"]*"')
        if needle.lower() == needle.upper() and not needle.isascii():
            # Words without letter case (Chinese): PostgreSQL's trigrams cannot narrow the
            # regular expression down for them, but can a plain "contains" (in a database whose
            # LC_CTYPE is not C), which every such value also matches: it picks the candidates.
            in_value &= Q(inputs_text__contains=needle)
        in_values |= in_value
    if NUMBER.fullmatch(q):
        in_values |= Q(inputs_text__iregex=r'":\s*' + re.escape(q) + r"\s*[,}]")
    return runs.annotate(inputs_text=Cast("inputs", TextField())).filter(found | in_values)


# A number as JSON writes one.
NUMBER = re.compile(r"-?\d+(\.\d+)?")


def pending_counts(runs: list[Run]) -> dict[int, int]:
    """run pk -> its forms waiting for a decision, for a page of runs (one query)."""
    return dict(
        Form.objects.filter(run__in=runs, status=Form.Status.PENDING)
        .order_by()
        .values("run_id")
        .annotate(n=Count("pk"))
        .values_list("run_id", "n")
    )


def shown_timeline(entries: Any) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """The entries of a run's timeline (as the follower writes it) a reader is shown, each with
    the pause its form's answer ended (None for any other entry): the run page and the API's
    run read the same. A Human Input node's own entry says "running" until the run resumes, then
    "succeeded" (dated when it started), while its form's entries say what it waited for and how
    it was answered: only the form's are shown, unless the node itself failed. A form answered
    is one entry, its answer's, with its pause: the pause's entry (which the follower keeps,
    saying "paused") would read as a node still paused."""
    raw = [item for item in entries or [] if isinstance(item, dict)]
    waiting: set[str] = set()
    hidden: set[int] = set()
    # The pause of each form answered, by the answer's index.
    pauses: dict[int, dict[str, Any]] = {}
    for index, item in enumerate(raw):
        form = str(item.get("form") or "")
        if item.get("event") != "human_input_form_filled" or not form:
            continue
        for earlier in range(index - 1, -1, -1):
            pause = raw[earlier]
            if (
                pause.get("event") == "human_input_required"
                and pause.get("status") == "paused"
                and str(pause.get("form") or "") == form
                and earlier not in hidden
            ):
                hidden.add(earlier)
                pauses[index] = pause
                break
    for index in range(len(raw) - 1, -1, -1):
        item = raw[index]
        node_id = str(item.get("node_id") or "")
        if item.get("event") == "human_input_required" and node_id:
            waiting.add(node_id)
        elif (
            item.get("event") == "node"
            and item.get("status") in ("running", "succeeded")
            and node_id in waiting
        ):
            hidden.add(index)
    return [(item, pauses.get(index)) for index, item in enumerate(raw) if index not in hidden]


def timeline_items(entries: Any) -> list[dict[str, Any]]:
    """A run's timeline as `shown_timeline` reads it, worded for reviewers: Dify's event names
    become words, and what the follower keeps but a reader does not need is left out. A form
    answered is one entry, "Answered", with how long the run waited for it. The run's start
    entry carries no status; the run's own is shown beside the timeline."""
    items = []
    for item, pause in shown_timeline(entries):
        event = str(item.get("event") or item.get("type") or "")
        status = "" if event == "workflow_started" else str(item.get("status") or "")
        at = timeline_time(item.get("at") or item.get("created_at"))
        paused_at = timeline_time((pause or {}).get("at"))
        items.append(
            {
                "label": str(
                    item.get("title") or item.get("node_title") or EVENT_LABELS.get(event) or event
                ),
                "event": event,
                "status": status,
                "status_label": timeline_status_label(status),
                "action": item.get("action") or "",
                "text": item.get("text") or "",
                "error": item.get("error") or "",
                "at": at,
                # How long the run waited for this answer ("5 minutes").
                "waited": timefmt.span(at - paused_at) if at and paused_at else "",
                "form": item.get("form") or "",
                # Keeps an entry's "Output text" open across the live part's refresh.
                "key": str(item.get("key") or ""),
            }
        )
    return items


def timeline_time(at: Any) -> dt.datetime | None:
    if isinstance(at, int | float):
        return dt.datetime.fromtimestamp(at, tz=dt.UTC)
    if isinstance(at, str) and at:
        try:
            return dt.datetime.fromisoformat(at)
        except ValueError:
            return None
    return None


FILE_ID_KEYS = ("upload_file_id", "related_id", "url", "remote_url")


def _is_file(value: Any) -> bool:
    """A file as Dify writes it into outputs: its own file object, or a file input's value."""
    return isinstance(value, dict) and (
        value.get("dify_model_identity") == "__dify__file__"
        or ("transfer_method" in value and any(k in value for k in FILE_ID_KEYS))
    )


def output_items(run: Run) -> list[tuple[str, str]]:
    """A finished run's outputs as (name, text): strings as they are, files by name (the name
    they were uploaded here under, else Dify's file name; never a file URL, which may carry a
    signature that opens it), anything else as indented JSON."""
    from inbox.templatetags.inbox_tags import as_text

    outputs = run.outputs if isinstance(run.outputs, dict) else {}
    file_name = FileNames(Upload.objects.filter(form__run=run))

    items = []
    for key, value in outputs.items():
        if _is_file(value):
            text = file_name(value)
        elif isinstance(value, list) and value and all(_is_file(v) for v in value):
            text = "\n".join(file_name(v) for v in value)
        else:
            text = as_text(value)
        items.append((str(key), text))
    return items


def run_context(request: HttpRequest, run: Run) -> dict[str, Any]:
    forms = list(run.forms.order_by("created_at", "id"))
    visible = set(Form.objects.for_user(request.user).filter(run=run).values_list("pk", flat=True))
    conversation = conversation_runs(run, request.user) if run.conversation_id else Conversation()
    this = next((r for r in conversation if r.pk == run.pk), run)
    # A mode set up here that Dify's does not match refuses only starts: this run's forms
    # arrive and its decisions go (CONTRACT 7.10). Staff are told, to set the mode.
    # So does an app Dify calls unavailable (nothing published): told to everyone, with what
    # still goes.
    unpublished = run.app.unpublished and not run.is_finished
    refused = (
        run.app.refused_at is not None
        and not run.is_finished
        and not run.app.mode_mismatch
        and not run.app.unpublished
    )
    mode_mismatch = run.app.mode_mismatch and request.user.is_staff
    # Dify did not answer the app's last calls (no connection, a 5xx): nothing of this run
    # reaches the inbox meanwhile.
    unreachable = run.app.contact_failed_at is not None and not run.is_finished and not refused
    # A follower that cannot decrypt the app's API key lets its runs go: not Dify's doing.
    key_unreadable = run.app.key_unreadable_now and not run.is_finished
    sent = list(run.message_files.all())
    by_input: dict[str, list[MessageFile]] = {}
    for sent_file in sent:
        if sent_file.input_name:
            by_input.setdefault(sent_file.input_name, []).append(sent_file)
    labels = run.input_labels if isinstance(run.input_labels, dict) else {}
    inputs = list(run.inputs) if isinstance(run.inputs, dict) else []
    return {
        # A chatflow's conversation: its messages in the inbox (the latest, with this one),
        # this one's number in it, and whether one may go on with it from here (its last
        # message has ended).
        "conversation": conversation,
        "turn": getattr(this, "turn", None),
        "shown_most": CONVERSATION_SHOWN,
        "may_continue": bool(
            conversation
            and run.app.is_active
            and run.app.mode == DifyApp.Mode.CHATFLOW
            and conversation[-1].is_finished
            and Run.objects.may_start(request.user)
            and (
                request.user.is_staff
                or any(r.started_by_id == request.user.pk for r in conversation)
            )
        ),
        "run": run,
        "app": run.app,
        # The files a chatflow's message was sent with, and those of file start inputs by
        # their input's label (in place of the inputs' values, Dify's file mappings).
        "message_files": [f for f in sent if not f.input_name],
        "start_files": [(labels.get(name) or name, files) for name, files in by_input.items()],
        "labelled_inputs": [
            (label, value)
            for (label, value), name in zip(run.labelled_inputs, inputs, strict=True)
            if name not in by_input
        ],
        "forms": [(form, form.pk in visible) for form in forms],
        "timeline": timeline_items(run.timeline),
        "outputs": output_items(run) if run.is_finished else [],
        "may_stop": _may_stop(request, run) and run.status == Run.Status.RUNNING,
        # Dify refuses the app's key: no new form of this run can arrive. Reviewers are shown
        # the status code; Dify's message is for administrators.
        "refused": refused,
        "mode_mismatch": mode_mismatch,
        "unpublished": unpublished,
        # The follower gave up reading this run's events (Dify away, its stream failing) and
        # the reconcile hands it back later: what happens in Dify meanwhile is not shown yet.
        "out_of_touch": bool(
            run.give_ups
            and not run.is_finished
            and not run.events_unavailable
            and not refused
            and not unreachable
            and not key_unreadable
        ),
        "key_unreadable": key_unreadable,
        # Which follower, for staff (its host and process): the one to restart with the key.
        "key_unreadable_by": run.app.key_unreadable_by
        if key_unreadable and request.user.is_staff
        else "",
        # Said for the app instead: Dify does not answer for it (`DifyApp.note_unreachable`).
        "unreachable": unreachable,
        "streams_failing": unreachable and run.app.streams_failing,
        "contact_detail": run.app.contact_failure if request.user.is_staff and unreachable else "",
        "next_try": run.refollow_after
        if run.refollow_after and run.refollow_after > timezone.now()
        else None,
        "refusal_detail": run.app.refusal if request.user.is_staff else "",
        # Dify's own words for an error said in the reader's language instead, for staff.
        "error_detail": run.error_detail if request.user.is_staff else "",
        # The poll asks only for the part that changes, and stops once the run has ended.
        "live": not run.is_finished,
    }


# The header the run page's poll sends with the `digest` of what its live part shows.
RUN_DIGEST_HEADER = "X-Run-Digest"


def live_digest(context: dict[str, Any]) -> str:
    """What the run page's live part shows, in a few characters, led by the run's status: a
    poll whose answer would show the same is answered 204 and changes nothing in the page (a
    redraw would move the reader's focus and have their screen reader read it again)."""
    run = context["run"]
    shown = [
        run.status,
        run.error_text if run.error else "",
        run.answer,
        run.timeline,
        context["outputs"],
        [(f.pk, f.status, f.node_title, f.filled_action_text, v) for f, v in context["forms"]],
        context["may_stop"],
        context["may_continue"],
        [(r.pk, r.status) for r in context["conversation"]],
        context["refused"],
        context["unpublished"],
        context["out_of_touch"],
        context["key_unreadable"],
        context["key_unreadable_by"],
        context["unreachable"],
        context["streams_failing"],
        context["contact_detail"],
        context["next_try"],
        run.app.refusal_status,
        context["refusal_detail"],
    ]
    seen = json.dumps(shown, default=str, sort_keys=True)
    return f"{run.status}.{hashlib.blake2b(seen.encode(), digest_size=8).hexdigest()}"


@login_required
@require_GET
def run_page(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    run = _get_run_for_user(request, public_id)
    context = run_context(request, run)
    context["digest"] = live_digest(context)
    if getattr(request, "htmx", False) and request.GET.get("part") == "live":
        was = request.headers.get(RUN_DIGEST_HEADER, "")
        if was == context["digest"]:
            return HttpResponse(status=204)
        response = render(request, "inbox/run.html#live", context)
        if was and was.partition(".")[0] != run.status:
            # Read out by the page's announcer, which stays in the page: the part itself is
            # redrawn whole, and a live region redrawn would be read again, or not at all.
            message = _("The run is now: %(status)s.") % {"status": run.get_status_display()}
            trigger_client_event(response, "inbox:announce", {"message": message})
        return response
    return render(request, "inbox/run.html", context)


@login_required
@require_POST
def run_stop(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    run = _get_run_for_user(request, public_id)
    if not _may_stop(request, run):
        raise PermissionDenied(_("Only who started a run, or an administrator, may stop it."))
    try:
        stop_run(run, actor=request.user)
    except RunNotStoppable as exc:
        messages.error(request, exc.message)
    except DifyError as exc:
        messages.error(request, _("Dify did not stop the run: %(error)s") % {"error": exc})
    else:
        messages.success(request, _("Dify was asked to stop the run."))
    return redirect("inbox:run", public_id=run.public_id)
