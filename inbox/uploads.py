"""Upload first: a reviewer's file goes to Dify the moment it is chosen, under the run's user.

Size and type are checked here before anything is sent, so the common mistakes surface at
once in plain words; whatever Dify still refuses comes back as its own reason. The file object
Django hands us (in memory when small, a temporary file above FILE_UPLOAD_MAX_MEMORY_SIZE) is
passed on as it is and streamed: it is never read whole into memory.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import posixpath
from collections.abc import Callable
from typing import Any, BinaryIO, cast

from django.conf import settings
from django.core.cache import cache
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, SkipFile
from django.http.multipartparser import MultiPartParser
from django.utils import timezone
from django.utils.datastructures import ImmutableList
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from inbox.dify import DifyClient
from inbox.dify.errors import DifyConnectionError, DifyError, DifyStatusError
from inbox.dify.files import (
    AUDIO,
    DEFAULT_SIZE_LIMITS,
    DOCUMENT,
    IMAGE,
    VIDEO,
    limits_from_parameters,
    size_limit_for,
    upload_size_limit,
)
from inbox.forms import CATEGORY_LABELS, InputSpec, input_specs, joined
from inbox.models import (
    AuditEntry,
    DifyApp,
    Form,
    MessageFile,
    MessageFileTally,
    Upload,
    UploadTally,
)
from inbox.reasons import Refused

# When Dify cannot be asked for an app's limits, its defaults stand in for a short while.
LIMITS_FALLBACK_SECONDS = 30


class UploadRejected(Refused):
    """The file was not taken: the file's own fault (400, 413) apart from Dify's being busy or
    away, which is worth trying again (429 with `retry_after`, 502)."""

    default_code = "upload_rejected"


def upload_budget(form: Form) -> int:
    """Files one person may send to Dify for this form, removed and replaced ones included:
    INBOX_UPLOADS_PER_FORM, and never fewer than twice what the form's file inputs hold (one
    for a file, the list's limit for a list), so every file can be replaced once."""
    holds = sum(
        spec.ui_max_files
        for spec in input_specs(form.definition or {})
        if spec.is_file and spec.allows_upload
    )
    return max(settings.INBOX_UPLOADS_PER_FORM, 2 * holds)


def _rate_key(who: str) -> str:
    return "upload:" + hashlib.sha256(who.encode()).hexdigest()[:24]


def _too_fast(who: str, window: int) -> UploadRejected | None:
    """One more file counted against its uploader's INBOX_UPLOADS_PER_MINUTE (guests', reviewers'
    and API tokens' alike, across forms) in the rate window `window`: the refusal once past it
    (the file is then not counted: nothing is sent)."""
    from inbox import views_reach

    key = _rate_key(who)
    if not views_reach._hit(key, settings.INBOX_UPLOADS_PER_MINUTE, window):
        return None
    views_reach._unhit(key, window)
    # The wait said in the message is the one Retry-After says.
    seconds = views_reach._window_left()
    return UploadRejected(
        ngettext(
            "You are uploading too many files at once. Try again in %(seconds)d second.",
            "You are uploading too many files at once. Try again in %(seconds)d seconds.",
            seconds,
        )
        % {"seconds": seconds},
        status=429,
        code="rate_limited",
        retry_after=seconds,
    )


def _not_sent(form: Form, who: str, size: int, window: int) -> None:
    """A file counted by the budget and the rate that Dify refused (so it keeps nothing of it):
    it counts against neither."""
    from inbox import views_reach

    UploadTally.give_back(form, who, size)
    views_reach._unhit(_rate_key(who), window)


def _budget_spent(limit: int, guest: bool) -> UploadRejected:
    if guest:
        message = ngettext(
            "You have uploaded %(limit)d file for this form, the most one person may; files "
            "removed or replaced count too. No more can be uploaded.",
            "You have uploaded %(limit)d files for this form, the most one person may; files "
            "removed or replaced count too. No more can be uploaded.",
            limit,
        )
    else:
        message = ngettext(
            "You have sent %(limit)d file to Dify for this form, the most one person may; files "
            "removed or replaced count too, as Dify keeps them. No more can be uploaded.",
            "You have sent %(limit)d files to Dify for this form, the most one person may; files "
            "removed or replaced count too, as Dify keeps them. No more can be uploaded.",
            limit,
        )
    # Spent for good (Dify keeps every file: none comes back), so no 429, which clients retry:
    # waiting changes nothing.
    return UploadRejected(message % {"limit": limit}, status=409, code="upload_budget_spent")


def upload_limits(app: DifyApp) -> dict[str, int]:
    """Bytes per file category this app's Dify takes: the limits it reports in `GET /parameters`
    (cached), or Dify's defaults when it cannot be asked."""
    from inbox.runs import app_parameters

    # Keyed like the parameters themselves: an app edited since (a new URL or key) asks again.
    version = app.updated_at.timestamp() if app.updated_at else 0
    failed_key = f"inbox:upload-limits-failed:{app.pk}:{version}"
    if cache.get(failed_key):
        return dict(DEFAULT_SIZE_LIMITS)
    try:
        return limits_from_parameters(app_parameters(app))
    except DifyError:
        cache.set(failed_key, True, LIMITS_FALLBACK_SECONDS)
        return dict(DEFAULT_SIZE_LIMITS)


class SizeCapHandler(FileUploadHandler):
    """First of the request's upload handlers on the upload endpoints: a file larger than the
    most Dify takes for the kinds of file accepted there (`cap`, `file_cap`) is dropped as it
    streams in, so it is never kept whole in memory or on disk, and the request remembers its
    name for the view to say why. Once the request's files together pass `total` (as many
    files as the place takes, each at the cap), every further file is dropped too. A file
    within the cap goes on to Django's own handlers; its kind's limit (smaller or the same) is
    checked by `_checked` as before."""

    def __init__(self, request: Any, cap: int, total: int) -> None:
        super().__init__(request)
        self.cap, self.total, self.received = cap, total, 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self.received += len(raw_data)
        over_cap = start + len(raw_data) > self.cap
        if over_cap or self.received > self.total:
            request: Any = self.request
            key = "uploads_too_large" if over_cap else "uploads_over_total"
            setattr(request, key, [*getattr(request, key, []), self.file_name or "file"])
            # The field it was sent for, in the same order, so a page says it beside that field.
            fields = getattr(request, "uploads_dropped_fields", {})
            fields.setdefault(key, []).append(self.field_name or "")
            request.uploads_dropped_fields = fields
            raise SkipFile
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


class MessageFileCapHandler(SizeCapHandler):
    """The `SizeCapHandler` of `POST /api/v1/runs/files`, whose body names its app (and, for a
    start input's file, the input) in fields beside the file. Until they are read, a file is
    capped at the largest limit of any active app (`cap`); once they are (clients send `app`
    and `input` first), each file after them is capped at that app's own limit for its kind,
    as Dify picks it by the extension, and a kind the message or the input does not take is
    dropped as it begins, so nothing of it is kept. What it drops is said by `too_large`.
    `app_spec(app, input)` finds what the app takes there (`(app, spec)`; input "" for a
    chatflow's message), or None when no active app of that name takes files there, or it is
    not known yet (the view then says why, and the file keeps the request's cap)."""

    def __init__(
        self,
        request: Any,
        cap: int,
        total: int,
        app_spec: Callable[[str, str], tuple[DifyApp, InputSpec] | None],
    ) -> None:
        super().__init__(request, cap, total)
        self.most, self.app_spec = cap, app_spec
        # The parser reading the body (`read_fields_first`): the fields read so far.
        self.parser: Any = None
        self.own_limit = False

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self.cap, self.own_limit = self.most, False
        fields = getattr(self.parser, "_post", None)
        names = fields.getlist("app") if fields is not None else []
        inputs = fields.getlist("input") if fields is not None else []
        found = (
            self.app_spec(names[0], inputs[0] if inputs else "")
            if len(names) == 1 and len(inputs) <= 1
            else None
        )
        if found is None:
            return
        app, spec = found
        name = self.file_name or "file"
        if spec.file_type(name, self.content_type or "application/octet-stream") is None:
            self._refuse(
                400,
                _("This kind of file is not accepted here. Accepted: %(accepted)s.")
                % {"accepted": spec.accepted_label() or "—"},
            )
        limit = upload_size_limit(name, upload_limits(app))
        if limit:
            self.cap, self.own_limit = min(limit, self.most), True

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        if self.own_limit and start + len(raw_data) > self.cap:
            self._refuse(
                413,
                _("The file is larger than %(limit)s, the most Dify takes for this kind of file.")
                % {"limit": megabytes(self.cap)},
            )
        return super().receive_data_chunk(raw_data, start)

    def _refuse(self, status: int, message: str) -> None:
        request: Any = self.request
        said = _("%(name)s: %(error)s") % {"name": self.file_name or "file", "error": message}
        request.uploads_refused = [*getattr(request, "uploads_refused", []), (status, said)]
        raise SkipFile


class _FieldsFirstParser(MultiPartParser):
    """Django's multipart parser, which lets a `MessageFileCapHandler` read the fields it has
    parsed before each file part (Django keeps them in `_post` as it goes)."""

    def __init__(self, meta: Any, input_data: Any, upload_handlers: Any, encoding: Any) -> None:
        super().__init__(meta, input_data, upload_handlers, encoding)
        for handler in upload_handlers:
            if isinstance(handler, MessageFileCapHandler):
                handler.parser = self


def read_fields_first(request: Any) -> None:
    """Have the request's multipart body read by `_FieldsFirstParser` (as
    `HttpRequest.parse_file_upload` does with Django's own)."""

    def parse_file_upload(meta: Any, post_data: Any) -> tuple[Any, Any]:
        request.upload_handlers = ImmutableList(
            request.upload_handlers,
            warning="You cannot alter upload handlers after the upload has been processed.",
        )
        parser = _FieldsFirstParser(meta, post_data, request.upload_handlers, request.encoding)
        return parser.parse()  # type: ignore[no-any-return]

    request.parse_file_upload = parse_file_upload


class DropFiles(FileUploadHandler):
    """First of the request's upload handlers where no file is taken (any page but the upload
    endpoints, and those of a signed-in reviewer when nobody is signed in): every file part
    is dropped as it begins, before any handler opens memory or a temporary file for it. The
    request's other fields (the CSRF token, what was typed) are read as ever."""

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        raise SkipFile

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        return None

    def file_complete(self, file_size: int) -> None:
        return None


def file_cap(app: DifyApp | None, specs: list[InputSpec] | None = None) -> int:
    """The most one file may weigh where `specs` take files: the largest of the app's Dify
    limits (Dify's defaults when the app is not known) for the kinds they take; for any kind
    when no spec is given. Dify picks a file's limit by its extension alone, and anything but
    an image, audio or video extension gets the general one (a custom file; an image known by
    its type only): that limit is always among them."""
    limits = upload_limits(app) if app is not None else dict(DEFAULT_SIZE_LIMITS)
    if not specs:
        return max(limits.values(), default=max(DEFAULT_SIZE_LIMITS.values()))
    kinds = {DOCUMENT} | {t for s in specs for t in s.allowed_types if t in (IMAGE, AUDIO, VIDEO)}
    return max(size_limit_for(kind, limits) for kind in kinds)


def cap_uploads(request: Any, cap: int, files: int | None = None) -> None:
    """Put a `SizeCapHandler` in front of the request's upload handlers: each file at most
    `cap` bytes, and the request's files together at most `files` such files
    (INBOX_UPLOAD_FILES_PER_REQUEST when not given)."""
    count = files or settings.INBOX_UPLOAD_FILES_PER_REQUEST
    request.upload_handlers.insert(0, SizeCapHandler(request, cap, cap * count))


def cap_message_file(
    request: Any, cap: int, app_spec: Callable[[str, str], tuple[DifyApp, InputSpec] | None]
) -> None:
    """Put a `MessageFileCapHandler` in front of the request's upload handlers (one file, at
    most `cap` bytes until its app is known, then its app's own limit), and have the body read
    so that it sees the fields before each file."""
    request.upload_handlers.insert(0, MessageFileCapHandler(request, cap, cap, app_spec))
    read_fields_first(request)


def drop_uploads(request: Any) -> None:
    """Put a `DropFiles` in front of the request's upload handlers: no file part is kept."""
    request.upload_handlers.insert(0, DropFiles(request))


def dropped_count(request: Any) -> int:
    """How many files `SizeCapHandler` dropped from this request."""
    return (
        len(getattr(request, "uploads_too_large", []))
        + len(getattr(request, "uploads_over_total", []))
        + len(getattr(request, "uploads_refused", []))
    )


def dropped_status(request: Any) -> int:
    """The status of a call whose file was dropped as it arrived: 413 for one too large (or
    past the request's total), 400 when only its kind was refused (`MessageFileCapHandler`)."""
    if getattr(request, "uploads_too_large", []) or getattr(request, "uploads_over_total", []):
        return 413
    return max((status for status, _said in getattr(request, "uploads_refused", [])), default=413)


def too_large(request: Any, *, guest: bool = False) -> list[str]:
    """What `SizeCapHandler` dropped from this request, said for each file (to a guest, without
    Dify's name)."""
    handler = next((h for h in request.upload_handlers if isinstance(h, SizeCapHandler)), None)
    if handler is None or not dropped_count(request):
        return []
    if guest:
        message = _("%(name)s: the file is larger than %(limit)s, the limit for any file here.")
    else:
        message = _(
            "%(name)s: the file is larger than %(limit)s, the most Dify takes for the kinds of "
            "file accepted here."
        )
    said = [
        message % {"name": name, "limit": megabytes(getattr(handler, "most", handler.cap))}
        for name in getattr(request, "uploads_too_large", [])
    ]
    together = _(
        "%(name)s: not received: the files sent together came to more than %(limit)s, the most "
        "one sending may carry. Send fewer at a time."
    )
    said += [
        together % {"name": name, "limit": megabytes(handler.total)}
        for name in getattr(request, "uploads_over_total", [])
    ]
    said += [message for _status, message in getattr(request, "uploads_refused", [])]
    return said


def megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):g} MB"


def size_limits(spec: InputSpec, limits: dict[str, int]) -> dict[str, int]:
    """The largest file per kind an input takes, as Dify picks it, in bytes: each kind it takes
    (`image`, `document`, `audio`, `video`) and each custom extension (".dwg", which counts as
    a document or under its own kind). `limits`: bytes per file category the app's Dify takes
    (`upload_limits`). What the pages name beside a file input (`size_limit_label`) and the
    API gives (`max_file_sizes`)."""
    if not limits:
        return {}
    found = {
        kind: size_limit_for(kind, limits) for kind in spec.allowed_types if kind in CATEGORY_LABELS
    }
    for ext in spec.custom_extensions:
        found[ext] = upload_size_limit("f" + ext, limits)
    return found


def size_limit_label(spec: InputSpec, limits: dict[str, int]) -> str:
    """The largest file per kind an input takes, as Dify picks it: "images 10 MB, documents
    15 MB"; a listed extension of another kind counts as a document or under its own kind.
    `limits`: bytes per file category the app's Dify takes (`upload_limits`)."""
    return joined(
        f"{CATEGORY_LABELS.get(kind, kind)} {megabytes(size)}"
        for kind, size in size_limits(spec, limits).items()
    )


def upload_to_dify(
    form: Form, spec: InputSpec, fileobj: UploadedFile, reviewer: Any, guest_email: str = ""
) -> Upload:
    name = posixpath.basename((fileobj.name or "").replace("\\", "/")) or "file"
    # A guest (someone outside, asked by email; no reviewer) is not told Dify's name or its own
    # words: the workflow's limits and what to do, in their language.
    guest = reviewer is None
    mime_type = spec.mime_type_for_dify(name, fileobj.content_type or "application/octet-stream")
    size = fileobj.size or 0
    file_type = _checked(spec, name, mime_type, size, form.run.app, guest=guest)
    # The last checks before Dify: the uploader's budget for the form, taken in one conditional
    # UPDATE (two uploads at once cannot both take its last file), then their rate. The budget
    # first: spent, it is spent for good, which a rate refusal's Retry-After would hide; and a
    # file refused either way is sent nowhere, so it uses up neither.
    who = UploadTally.key(reviewer, guest_email)
    budget = upload_budget(form)
    if not UploadTally.take(form, who, size, budget):
        raise _budget_spent(budget, guest)
    from inbox import views_reach

    window = views_reach._window()
    if (refused := _too_fast(who, window)) is not None:
        UploadTally.give_back(form, who, size)
        raise refused
    uploaded = _send(
        form.run.app,
        fileobj,
        name=name,
        mime_type=mime_type,
        dify_user=form.run.dify_user,
        guest=guest,
        # Dify refused it and keeps nothing: it does not count, for the form or the rate.
        refused=lambda: _not_sent(form, who, size, window),
    )
    upload = Upload.objects.create(
        form=form,
        input_name=spec.name,
        upload_file_id=str(uploaded.id),
        name=name[:255],
        size=getattr(uploaded, "size", None) or size,
        mime_type=(getattr(uploaded, "mime_type", "") or mime_type)[:255],
        extension=(getattr(uploaded, "extension", "") or posixpath.splitext(name)[1])[:32],
        category=file_type,
        uploaded_by=reviewer if reviewer is not None and reviewer.is_authenticated else None,
        uploaded_by_username=reviewer.get_username()
        if reviewer is not None and reviewer.is_authenticated
        else "",
        guest_email=guest_email,
    )
    if spec.kind == "file":
        # A single file input carries one file: the newest replaces the uploader's earlier ones
        # (their files stay in Dify, which has no delete, and stay counted in the tally). Only
        # older ones, so two uploads at once leave the later one.
        Upload.owned(form, reviewer=reviewer, guest_email=guest_email).filter(
            input_name=spec.name, pk__lt=upload.pk
        ).delete()
    AuditEntry.record(
        "file_uploaded",
        upload,
        actor=reviewer,
        actor_label="" if reviewer is not None else guest_email,
        form=str(form.public_id),
        input=spec.name,
        size=upload.size,
    )
    return upload


def _checked(
    spec: InputSpec, name: str, mime_type: str, size: int, app: DifyApp, *, guest: bool
) -> str:
    """The `type` Dify will take the file as where `spec` takes it, once its kind and size are
    seen to be what Dify takes (its limits for `app`); else UploadRejected, before anything is
    sent."""
    if not spec.allows_upload:
        raise UploadRejected(_("Uploads are not accepted here; give a web address instead."))
    file_type = spec.file_type(name, mime_type)
    if file_type is None:
        raise UploadRejected(
            _("This kind of file is not accepted here. Accepted: %(accepted)s.")
            % {"accepted": spec.accepted_label() or "—"}
        )
    # Dify picks the limit from the extension alone, whatever type the input takes it as.
    limit = upload_size_limit(name, upload_limits(app))
    if limit and size > limit:
        if guest:
            message = _("The file is larger than %(limit)s, the limit for this kind of file.")
        else:
            message = _(
                "The file is larger than %(limit)s, the most Dify takes for this kind of file."
            )
        raise UploadRejected(message % {"limit": megabytes(limit)}, status=413)
    if size == 0:
        raise UploadRejected(_("The file is empty."))
    return file_type


def _send(
    app: DifyApp,
    fileobj: UploadedFile,
    *,
    name: str,
    mime_type: str,
    dify_user: str,
    guest: bool,
    refused: Any = None,
) -> Any:
    """POST /files/upload under `dify_user`: Dify's file, or UploadRejected in words the
    uploader can act on (`refused` is called first when Dify refused it and keeps nothing)."""
    client = DifyClient.for_app(app)
    try:
        fileobj.seek(0)
        # Django's upload (memory or temporary file) is read in chunks by the client, never whole.
        return client.upload_file(
            cast(BinaryIO, fileobj), filename=name, mime_type=mime_type, user=dify_user
        )
    except DifyStatusError as exc:
        if refused is not None:
            refused()
        said: dict[str, Any] = {"dify_status": exc.status, "dify_code": exc.code or ""}
        if exc.status == 429:
            raise UploadRejected(
                _("The service is busy. Try again in a moment.")
                if guest
                else _("Dify is receiving too many requests. Try again in a moment."),
                status=429,
                code="rate_limited",
                retry_after=getattr(exc, "retry_after", None),
                **said,
            ) from None
        if exc.status >= 500:
            # Dify failing (503 Service Unavailable, say): not the file's fault, and Dify's own
            # words ("Service Unavailable") say nothing more. Worth trying again.
            raise UploadRejected(
                _unavailable(guest), status=502, code="dify_error", **said
            ) from None
        if exc.refuses_app:
            # Refusing the app's key or the app itself: not the file's fault either.
            raise UploadRejected(
                _("The file could not be sent to the workflow. Try again later.")
                if guest
                else _dify_message(exc),
                status=502,
                code="dify_error",
                **said,
            ) from None
        status = 413 if exc.status == 413 or exc.code == "file_too_large" else 400
        raise UploadRejected(_dify_message(exc, guest=guest), status=status, **said) from None
    except DifyConnectionError:
        raise UploadRejected(
            _unavailable(guest)
            if guest
            else _("Dify could not be reached. Try again in a moment."),
            status=502,
            code="dify_unavailable",
        ) from None
    except DifyError as exc:
        raise UploadRejected(
            _("The file could not be sent. Try again in a moment.")
            if guest
            else _("Dify did not accept the file: %(reason)s") % {"reason": exc},
            status=502,
            code="dify_error",
        ) from None


def message_file_spec(parameters: dict[str, Any]) -> InputSpec | None:
    """What files a chatflow's message may carry, from the app's `GET /parameters`
    `file_upload` (its kinds, extensions, transfer methods and `number_limits`); None when the
    app takes no uploaded file with a message. An app set up before Dify's file kinds says only
    `image` (`enabled`, `number_limits`, `transfer_methods`): images, then."""
    config = parameters.get("file_upload")
    if not isinstance(config, dict):
        return None
    found = config.get("image")
    image: dict[str, Any] = found if isinstance(found, dict) else {}
    if config.get("enabled") is True:
        types = config.get("allowed_file_types")
        types = [str(t) for t in types] if isinstance(types, list) else ["image"]
        extensions = config.get("allowed_file_extensions")
        methods = config.get("allowed_file_upload_methods") or image.get("transfer_methods")
        limit = config.get("number_limits", image.get("number_limits"))
    elif image.get("enabled") is True:
        types, extensions = ["image"], []
        methods, limit = image.get("transfer_methods"), image.get("number_limits")
    else:
        return None
    spec = InputSpec(
        kind="file-list",
        name="files",
        allowed_types=tuple(types),
        allowed_extensions=tuple(str(e) for e in extensions)
        if isinstance(extensions, list)
        else (),
        allowed_methods=tuple(str(m) for m in methods)
        if isinstance(methods, list) and methods
        else ("local_file", "remote_url"),
        number_limits=limit if isinstance(limit, int) and not isinstance(limit, bool) else 0,
    )
    if not spec.allows_upload or not (spec.allowed_types or spec.allowed_extensions):
        return None
    return spec


def upload_message_file(
    app: DifyApp,
    spec: InputSpec,
    fileobj: UploadedFile,
    *,
    dify_user: str,
    uploader: Any,
    input_name: str = "",
) -> MessageFile:
    """A file for a chatflow's message, uploaded to Dify under the Dify user the message will
    be asked as (Dify lets only that user use it), checked first as a form's files are
    (`spec`: `message_file_spec`, or a start input's `file_spec` with its variable as
    `input_name`), and counted against the uploader's day (`MessageFileTally`:
    INBOX_MESSAGE_FILES_PER_DAY, INBOX_MESSAGE_FILES_MB_PER_DAY) and their
    INBOX_UPLOADS_PER_MINUTE.
    Raises UploadRejected."""
    name = posixpath.basename((fileobj.name or "").replace("\\", "/")) or "file"
    mime_type = spec.mime_type_for_dify(name, fileobj.content_type or "application/octet-stream")
    size = fileobj.size or 0
    file_type = _checked(spec, name, mime_type, size, app, guest=False)
    from inbox import views_reach

    # As a form's uploads: the uploader's budget (the day's) first, then their rate; a file
    # refused either way is sent nowhere, so it uses up neither.
    who, window = UploadTally.key(uploader), views_reach._window()
    day = timezone.localdate()
    if not MessageFileTally.take(
        who,
        size,
        files=settings.INBOX_MESSAGE_FILES_PER_DAY,
        limit_bytes=settings.INBOX_MESSAGE_FILES_MB_PER_DAY * 1024 * 1024,
    ):
        raise _day_spent()
    if (refused := _too_fast(who, window)) is not None:
        MessageFileTally.give_back(who, size, day)
        raise refused

    def not_sent() -> None:
        # Dify refused it and keeps nothing: it counts against neither the day nor the rate.
        MessageFileTally.give_back(who, size, day)
        views_reach._unhit(_rate_key(who), window)

    uploaded = _send(
        app,
        fileobj,
        name=name,
        mime_type=mime_type,
        dify_user=dify_user,
        guest=False,
        refused=not_sent,
    )
    known = uploader is not None and uploader.is_authenticated
    message_file = MessageFile.objects.create(
        app=app,
        dify_user=dify_user,
        input_name=input_name[:255],
        upload_file_id=str(uploaded.id),
        name=name[:255],
        size=getattr(uploaded, "size", None) or size,
        mime_type=(getattr(uploaded, "mime_type", "") or mime_type)[:255],
        extension=(getattr(uploaded, "extension", "") or posixpath.splitext(name)[1])[:32],
        category=file_type,
        uploaded_by=uploader if known else None,
        uploaded_by_username=uploader.get_username() if known else "",
    )
    AuditEntry.record(
        "file_uploaded",
        message_file,
        actor=uploader,
        app=app.name,
        dify_user=dify_user,
        size=message_file.size,
    )
    return message_file


def _day_spent() -> UploadRejected:
    """The uploader's day of message files is spent (INBOX_MESSAGE_FILES_PER_DAY files, or
    INBOX_MESSAGE_FILES_MB_PER_DAY megabytes): nothing is sent until the next day (in
    TIME_ZONE), which `retry_after` says."""
    files = settings.INBOX_MESSAGE_FILES_PER_DAY
    message = ngettext(
        "You have sent as many files to Dify today (with messages and to start runs) as one "
        "person may in a day "
        "(%(files)d file, %(limit)s in all). Try again tomorrow.",
        "You have sent as many files to Dify today (with messages and to start runs) as one "
        "person may in a day "
        "(%(files)d files, %(limit)s in all). Try again tomorrow.",
        files,
    ) % {"files": files, "limit": megabytes(settings.INBOX_MESSAGE_FILES_MB_PER_DAY << 20)}
    now = timezone.localtime()
    tomorrow = timezone.make_aware(
        dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time()), now.tzinfo
    )
    return UploadRejected(
        message,
        status=429,
        code="upload_limit_reached",
        retry_after=max(1, math.ceil((tomorrow - now).total_seconds())),
    )


def too_many_files(limit: int | None, count: int, *, start_input: bool = False) -> str | None:
    """Said when a message would carry more files than the app takes (`number_limits`; None:
    no limit), or a start input more than it takes (`start_input`)."""
    if limit is None or count <= limit:
        return None
    if start_input:
        return ngettext(
            "This input takes at most %(limit)d file.",
            "This input takes at most %(limit)d files.",
            limit,
        ) % {"limit": limit}
    return ngettext(
        "This app takes at most %(limit)d file with a message.",
        "This app takes at most %(limit)d files with a message.",
        limit,
    ) % {"limit": limit}


def _unavailable(guest: bool) -> str:
    """Dify down or failing for a moment: nobody's fault, worth trying again."""
    if guest:
        return _("The service is temporarily unavailable. Try again in a moment.")
    return _("Dify is temporarily unavailable. Try again in a moment.")


def _dify_message(exc: DifyStatusError, *, guest: bool = False) -> str:
    """Dify's refusal in words a reviewer can act on (its 413 comes with an empty message); a
    guest is not given Dify's own words."""
    code = getattr(exc, "code", "")
    if code == "file_too_large":
        return _("The file is too large.") if guest else _("Dify says the file is too large.")
    if code == "unsupported_file_type":
        return (
            _("This type of file is not accepted here.")
            if guest
            else _("Dify does not accept this type of file.")
        )
    if guest:
        return _("The file was not accepted.")
    message = getattr(exc, "message", "") or str(exc)
    return _("Dify did not accept the file: %(reason)s") % {"reason": message}
