"""A Dify form definition as a Django form: one place validates HTML posts and JSON API calls.

The rules are Dify's (CONTRACT §4), checked here first so a reviewer learns what is wrong before
anything is queued: every input key present, a select value among constant options, a single file
for `file`, at most `number_limits` files for `file-list`, allowed transfer methods and types, and
an action the form defines. A file value is a list of references: our own upload ids (the file is
already at Dify, see `Upload`) or web addresses (Dify fetches those when the decision arrives).
"""

from __future__ import annotations

import mimetypes
import posixpath
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.db.models import QuerySet
from django.utils.text import format_lazy
from django.utils.translation import gettext, ngettext, pgettext
from django.utils.translation import gettext_lazy as _

from inbox.dify.files import (
    CATEGORY_EXTENSIONS,
    CUSTOM,
    category_for,
    category_for_extension,
    extension_of,
    is_allowed,
    matchable_extension,
)
from inbox.dify.types import (
    FileInput,
    FileListInput,
    FormDefinition,
    ParagraphInput,
    SelectInput,
)
from inbox.models import Decision, Form, Upload
from inbox.reasons import labelled

# Dify's own form page shows at most ten files in a list; with `number_limits` 0 (no cap at
# Dify) we cap the page there too, but accept more through the API.
UI_FILE_LIST_CAP = 10

CATEGORY_LABELS = {
    "image": _("images"),
    "document": _("documents"),
    "audio": _("audio"),
    "video": _("video"),
}


@dataclass(frozen=True)
class InputSpec:
    """One input of a form definition, read tolerantly from Dify's JSON."""

    kind: str  # paragraph | select | file | file-list
    name: str
    default: str = ""
    options: tuple[str, ...] = ()
    options_from_variable: bool = False
    allowed_types: tuple[str, ...] = ()
    allowed_extensions: tuple[str, ...] = ()
    allowed_methods: tuple[str, ...] = ("local_file", "remote_url")
    number_limits: int = 0

    @property
    def field_name(self) -> str:
        # Prefixed so an input called "action" cannot collide with the form's own fields.
        return f"in_{self.name}"

    @property
    def label(self) -> str:
        """What a reviewer reads for it: Dify gives only the variable's name."""
        return self.name.replace("_", " ").strip().capitalize() or self.name

    @property
    def is_file(self) -> bool:
        return self.kind in ("file", "file-list")

    @property
    def max_files(self) -> int | None:
        """The server-side cap: one for `file`, `number_limits` for a list (0 = none)."""
        if self.kind == "file":
            return 1
        return self.number_limits or None

    @property
    def ui_max_files(self) -> int:
        return self.max_files or UI_FILE_LIST_CAP

    @property
    def allows_upload(self) -> bool:
        return "local_file" in self.allowed_methods

    @property
    def allows_url(self) -> bool:
        return "remote_url" in self.allowed_methods

    @property
    def custom_extensions(self) -> tuple[str, ...]:
        """The listed extensions a file can be accepted under as `custom`: not one Dify takes
        as a kind of its own that this input does not allow (".md" is a document, and a
        document is refused where only custom files are), nor one of two parts (".tar.gz":
        a file's extension is its last part), nor one written so that Dify matches no file with
        it (".DXF": Dify compares a file's extension, in lower case, with the entry as written).
        Shown in the hint, offered by the file picker."""
        if not self.allows_custom:
            return ()
        return tuple(raw for raw in self.allowed_extensions if custom_entry_usable(raw))

    @property
    def allows_custom(self) -> bool:
        return "custom" in self.allowed_types

    @property
    def unmatchable_extensions(self) -> tuple[str, ...]:
        """The listed extensions, as the workflow writes them, Dify accepts no file under where
        the input takes custom files: one not dot-prefixed or not in lower case (".DXF", "dxf":
        Dify compares a file's extension, in lower case with its dot, with the entry as written),
        one of two parts (".tar.gz": a file's extension is its last part), or one Dify takes as
        a kind of its own that the input does not allow (".pdf", a document, where documents
        are not allowed: Dify refuses a file whose kind the input does not take). They are
        dropped from what the input offers; the workflow's author is told
        (`unmatchable_extensions`)."""
        if not self.allows_custom:
            return ()
        return tuple(
            raw
            for raw in self.allowed_extensions
            if raw.strip()
            and not custom_entry_usable(raw)
            # A kind the input allows takes such a file as that kind (".pdf" with documents):
            # the entry is then harmless.
            and category_for_extension(raw.strip()) not in self.allowed_types
        )

    @property
    def accepts_no_file(self) -> bool:
        """Whether Dify takes no file at all here: no kind it knows is allowed and no custom
        extension can match (custom files only, each listed type dropped). Its page offers no
        file picker (one would offer every file, each then refused) and says so instead."""
        return not self.accept

    def accepted_label(self) -> str:
        """What a person may attach, in words, each kind with the extensions Dify takes as it:
        "images (GIF, JPEG, JPG, PNG, SVG, WEBP), .dwg". A phone's photo that is none of them
        (an iPhone's .HEIC sent without an image type) is then seen not to be one. A file of no
        listed extension whose browser names an image type is still an image to Dify, which
        falls back to the type: it is taken as one here too."""
        parts = [
            pgettext("a kind of file and its extensions", "%(kind)s (%(extensions)s)")
            % {
                "kind": CATEGORY_LABELS[t],
                "extensions": joined(ext.upper() for ext in sorted(CATEGORY_EXTENSIONS[t])),
            }
            for t in self.allowed_types
            if t in CATEGORY_LABELS
        ]
        parts += list(self.custom_extensions)
        return joined(parts)

    def mime_type_for_dify(self, filename: str, mime_type: str) -> str:
        """The MIME type to send Dify for a file. A file of one of the custom extensions, which
        Dify has no kind for (".dwg"), goes as application/octet-stream: Dify takes the kind of
        such a file from its MIME type, and the one a browser names for it (from the system's
        list: "image/vnd.dwg", "image/vnd.adobe.photoshop") would make it an image, refused
        where the workflow asks for custom files."""
        if "." + extension_of(filename) in self.custom_extensions:
            return "application/octet-stream"
        return mime_type

    def url_type_for_dify(self, url: str) -> str | None:
        """The `type` to send for a web address whose name says nothing of its kind
        (".../download?id=123", a presigned or Drive link), or None when its name does. Dify
        fetches such an address's headers (its Content-Type, Content-Disposition's name) to
        tell its kind; the inbox does not fetch it, so Dify judges it: sent as the first kind
        the input takes, and a refusal from Dify comes back as any other."""
        name = url_filename(url)
        if mimetypes.guess_type(name)[0] or category_for_extension(extension_of(name)):
            return None
        kinds = [t for t in self.allowed_types if t != CUSTOM]
        if kinds:
            return kinds[0]
        # Custom files only (".dwg" behind a presigned link): Dify reads the name its headers
        # give and judges it against the input's extensions.
        return CUSTOM if CUSTOM in self.allowed_types else None

    def file_type(self, filename: str, mime_type: str = "") -> str | None:
        """The `type` Dify will accept for this file here, or None when it is not allowed.

        Dify detects the real category and rejects a mismatch; a file of another category still
        passes as `custom` when custom is allowed and its extension is listed (CONTRACT §4, D6).
        """
        category = category_for(filename, mime_type)
        allowed = is_allowed(
            category,
            extension_of(filename),
            allowed_file_types=self.allowed_types,
            allowed_file_extensions=self.allowed_extensions,
        )
        if not allowed:
            return None
        return category if category in self.allowed_types else CUSTOM

    @property
    def accept(self) -> str:
        """The file picker's `accept` attribute: every extension this input takes."""
        extensions = sorted(
            {f".{ext}" for t in self.allowed_types for ext in CATEGORY_EXTENSIONS.get(t, ())}
        )
        return ",".join(extensions + list(self.custom_extensions))


def custom_entry_usable(entry: str) -> bool:
    """Whether Dify can take a file as `custom` under an `allowed_file_extensions` entry: one
    it can match (dot-prefixed, lower case), of one part (a file's extension is its last), and
    of no kind of its own (".md" is a document, never a custom file)."""
    return (
        matchable_extension(entry) and "." not in entry[1:] and category_for("f" + entry) == CUSTOM
    )


def input_specs(definition: Mapping[str, Any]) -> list[InputSpec]:
    parsed = FormDefinition.from_api(definition)
    specs: list[InputSpec] = []
    for item in parsed.inputs:
        name = item.output_variable_name
        if not name:
            continue
        if isinstance(item, ParagraphInput):
            # CONTRACT §3: the resolved value first, then a constant default, else empty.
            specs.append(InputSpec(kind="paragraph", name=name, default=parsed.default_for(name)))
        elif isinstance(item, SelectInput):
            specs.append(
                InputSpec(
                    kind="select",
                    name=name,
                    options=tuple(item.options),
                    options_from_variable=item.option_source.type == "variable",
                )
            )
        elif isinstance(item, FileInput):
            specs.append(
                InputSpec(
                    kind=item.type,
                    name=name,
                    allowed_types=tuple(item.allowed_file_types),
                    allowed_extensions=tuple(item.allowed_file_extensions),
                    allowed_methods=tuple(item.allowed_file_upload_methods)
                    or ("local_file", "remote_url"),
                    number_limits=item.number_limits if isinstance(item, FileListInput) else 0,
                )
            )
    return specs


def unmatchable_extensions(definition: Mapping[str, Any]) -> list[str]:
    """Every file input's `unmatchable_extensions` of a form definition, each once, in order:
    file types the workflow lists that Dify can never accept."""
    found: list[str] = []
    for spec in input_specs(definition):
        found += [ext for ext in spec.unmatchable_extensions if ext not in found]
    return found


@dataclass(frozen=True)
class ActionSpec:
    id: str
    title: str
    button_style: str = "default"


def action_specs(definition: Mapping[str, Any]) -> list[ActionSpec]:
    return [
        ActionSpec(
            id=action.id,
            title=action.title or action.id,
            # Dify's four styles; anything else is drawn as a plain button.
            button_style=action.button_style
            if action.button_style in ("primary", "default", "accent", "ghost")
            else "default",
        )
        for action in FormDefinition.from_api(definition).user_actions
        if action.id
    ]


class FileRefsWidget(forms.Widget):
    """Reads every value of a name: hidden upload ids plus typed web addresses."""

    def value_from_datadict(self, data: Any, files: Any, name: str) -> list[str] | None:
        if hasattr(data, "getlist"):
            return data.getlist(name) if name in data else None
        value = data.get(name)
        if value is None:
            return None
        return list(value) if isinstance(value, list | tuple) else [value]


@dataclass
class FileRef:
    """A validated file value: one of our uploads, or a web address."""

    upload: Upload | None = None
    url: str = ""
    type: str = ""

    def to_dify(self) -> dict[str, str]:
        if self.upload is not None:
            return {
                "transfer_method": "local_file",
                "upload_file_id": self.upload.upload_file_id,
                "type": self.type,
            }
        return {"transfer_method": "remote_url", "url": self.url, "type": self.type}


def url_filename(url: str) -> str:
    return posixpath.basename(urlsplit(url).path) or url


def is_upload_id(ref: str) -> bool:
    """Whether `ref` has the shape of our upload ids (anything else given for a file, such as
    `ftp://…` or `www.…`, is a web address typed wrong, and is told so)."""
    try:
        uuid.UUID(ref)
    except ValueError:
        return False
    return True


def joined(items: Iterable[str]) -> str:
    """Items of a list in a sentence, with the reader's language's separator ("a, b"; "甲、乙")."""
    return pgettext("list separator", ", ").join(items)


class FileRefsField(forms.Field):
    widget = FileRefsWidget

    def __init__(
        self, spec: InputSpec, uploads: QuerySet[Upload], form: Form | None = None, **kwargs: Any
    ) -> None:
        self.spec, self.uploads, self.form_obj = spec, uploads, form
        kwargs.setdefault("required", spec.kind == "file")
        kwargs.setdefault("error_messages", {"required": _("Add a file.")})
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> list[str]:
        if value in self.empty_values:
            return []
        refs = value if isinstance(value, list | tuple) else [value]
        # A file list's web addresses come from one box, one per line: each line is a file (and
        # counts against the list's limit), never one address with line breaks in it.
        lines = (line for ref in refs if ref is not None for line in str(ref).splitlines())
        return [line.strip() for line in lines if line.strip()]

    def clean(self, value: Any) -> list[FileRef]:
        refs = self.to_python(value)
        self.validate(refs)
        spec = self.spec
        if spec.max_files is not None and len(refs) > spec.max_files:
            if spec.kind == "file":
                raise ValidationError(_("Only one file can be attached here."), code="too_many")
            raise ValidationError(
                ngettext(
                    "At most %(limit)d file can be attached here.",
                    "At most %(limit)d files can be attached here.",
                    spec.max_files,
                )
                % {"limit": spec.max_files},
                code="too_many",
            )
        ids = [ref for ref in refs if not ref.lower().startswith(("http://", "https://"))]
        # The same file twice would reach Dify twice (the same upload, or the same address).
        seen: set[str] = set()
        for ref in refs:
            same = str(uuid.UUID(ref)) if ref in ids and is_upload_id(ref) else ref
            if same in seen:
                raise ValidationError(_("The same file is attached twice."), code="duplicate")
            seen.add(same)
        uploads = self._uploads(ids)
        result: list[FileRef] = []
        for ref in refs:
            if ref in uploads:
                upload = uploads[ref]
                if not spec.allows_upload:
                    raise ValidationError(
                        _("Uploads are not accepted here; give a web address instead."),
                        code="method",
                    )
                file_type = spec.file_type(upload.name, upload.mime_type)
                if file_type is None:
                    raise self._type_error(upload.name)
                result.append(FileRef(upload=upload, type=file_type))
            elif ref in ids and (is_upload_id(ref) or not spec.allows_url):
                raise self._unknown_upload(ref)
            else:
                if not spec.allows_url:
                    raise ValidationError(
                        _("Web addresses are not accepted here; upload the file instead."),
                        code="method",
                    )
                parts = urlsplit(ref)
                if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
                    raise ValidationError(
                        _("Enter a full web address starting with http:// or https://."),
                        code="url",
                    )
                file_type = spec.file_type(url_filename(ref)) or spec.url_type_for_dify(ref)
                if file_type is None:
                    raise self._type_error(url_filename(ref))
                result.append(FileRef(url=ref, type=file_type))
        return result

    def _uploads(self, ids: Iterable[str]) -> dict[str, Upload]:
        valid = []
        for ref in ids:
            try:
                valid.append(uuid.UUID(ref))
            except ValueError:
                continue
        if not valid:
            return {}
        rows = self.uploads.filter(input_name=self.spec.name, public_id__in=valid)
        return {str(upload.public_id): upload for upload in rows}

    def _unknown_upload(self, ref: str) -> ValidationError:
        """An upload id that is not one of the decider's files for this input: said as it is
        (made for another input, or by someone else), for the caller to fix."""
        other = None
        if is_upload_id(ref):
            form_uploads = Upload.objects.filter(public_id=ref)
            # The decider's own, made for another input of the form.
            owned = self.uploads.filter(public_id=ref).first()
            if owned is not None:
                return ValidationError(
                    _("This file was uploaded for the input “%(input)s”; upload it again here.")
                    % {"input": owned.input_name},
                    code="unknown_upload",
                )
            other = self.form_obj is not None and form_uploads.filter(form=self.form_obj).exists()
        if other:
            return ValidationError(
                _("This file was uploaded by someone else; upload your own."),
                code="unknown_upload",
            )
        return ValidationError(
            _("This upload is not part of this form; upload the file again."),
            code="unknown_upload",
        )

    def _type_error(self, filename: str) -> ValidationError:
        return ValidationError(
            _("%(name)s: this kind of file is not accepted here. Accepted: %(accepted)s.")
            % {"name": filename, "accepted": self.spec.accepted_label() or "—"},
            code="file_type",
        )


def page_text(value: str) -> str:
    """A browser's text as the workflow gets it: lines ended by "\n" (a form posted without
    script ends them with CRLF)."""
    return value.replace("\r\n", "\n").replace("\r", "\n")


class PageTextField(forms.CharField):
    def to_python(self, value: Any) -> Any:
        value = super().to_python(value)
        return page_text(value) if isinstance(value, str) else value


class DecisionForm(forms.Form):
    """The reviewer's answer to one form: an action, a value per input, a one-time page key."""

    action = forms.CharField(
        max_length=64, error_messages={"required": _("Choose one of the actions.")}
    )
    submission_key = forms.CharField(max_length=64, required=False)

    def __init__(
        self,
        form_obj: Form,
        data: Any = None,
        *,
        initial_inputs: Mapping[str, Any] | None = None,
        require_every_key: bool = False,
        uploads: QuerySet[Upload] | None = None,
        from_page: bool = False,
    ) -> None:
        super().__init__(data=data)
        self.form_obj = form_obj
        # Posted by a page without script: the browser sends a textarea's lines ended by CRLF.
        # Dify gets "\n", as from a page with script (and Dify's own page); the API's text is
        # sent exactly as given.
        self.from_page = from_page
        # The uploads the decision may carry: the decider's own (`Upload.owned`). None: no
        # upload at all (a form only read, never decided with).
        self.uploads = uploads if uploads is not None else Upload.objects.none()
        self.specs = input_specs(form_obj.definition or {})
        self.actions = action_specs(form_obj.definition or {})
        # The JSON API must name every input, as Dify requires; the HTML page always sends them.
        self.require_every_key = require_every_key
        initial_inputs = initial_inputs or {}
        for spec in self.specs:
            initial = initial_inputs.get(spec.name)
            self.fields[spec.field_name] = self._field_for(spec, initial)

    def _field_for(self, spec: InputSpec, initial: Any) -> forms.Field:
        if spec.kind == "paragraph":
            return (PageTextField if self.from_page else forms.CharField)(
                required=False,
                strip=False,
                initial=spec.default if initial is None else initial,
                widget=forms.Textarea(attrs={"rows": 4}),
            )
        if spec.kind == "select":
            if spec.options or not spec.options_from_variable:
                return forms.ChoiceField(
                    choices=[(option, option) for option in spec.options],
                    initial=initial,
                    error_messages={
                        "required": _("Choose an option."),
                        "invalid_choice": _("“%(value)s” is not one of the options."),
                    },
                )
            # Options Dify could not resolve: any text passes at Dify (D3), so let the person type.
            return forms.CharField(initial=initial, error_messages={"required": _("Type a value.")})
        return FileRefsField(spec, self.uploads, self.form_obj, initial=initial or [])

    def clean_submission_key(self) -> str:
        key = str(self.cleaned_data.get("submission_key") or "")
        # Keys are unique over every decision: one made for another form is not this one's.
        if key and Decision.objects.filter(submission_key=key).exclude(form=self.form_obj).exists():
            raise ValidationError(
                _("This submission key was used for a decision on another form; send a new one."),
                code="submission_key_reused",
            )
        return key

    def clean_action(self) -> str:
        action = self.cleaned_data["action"]
        if action not in {a.id for a in self.actions}:
            raise ValidationError(
                _("“%(action)s” is not an action of this form.") % {"action": action},
                code="invalid_action",
            )
        return str(action)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.require_every_key and self.data is not None:
            missing = [s.name for s in self.specs if s.field_name not in self.data]
            if missing:
                raise ValidationError(
                    format_lazy(_("Missing required inputs: {}."), ", ".join(missing)),
                    code="missing",
                )
        return cleaned

    def save(
        self, *, reviewer: Any = None, guest_email: str = "", signed_in: Any = None
    ) -> Decision:
        """Record the decision through `Form.decide` (call after is_valid()).

        Raises `FormNotOpen` when someone got there first. The page's submission key makes a
        repeated post return the decision the first one made.
        """
        key = self.cleaned_data.get("submission_key") or None
        if key:
            existing = existing_decision(self.form_obj, key)
            if existing is not None:
                return existing
        try:
            return self.form_obj.decide(
                action_id=self.cleaned_data["action"],
                inputs=self.dify_inputs(),
                reviewer=reviewer,
                guest_email=guest_email,
                submission_key=key,
                signed_in=signed_in,
            )
        except IntegrityError:
            # Two posts of one page raced past the check above; the other made the decision.
            existing = existing_decision(self.form_obj, key) if key else None
            if existing is None:
                raise
            return existing

    def spec_for(self, name: str) -> InputSpec | None:
        return next((s for s in self.specs if s.name == name), None)

    def dify_inputs(self) -> dict[str, Any]:
        """The `inputs` object Dify expects, every key present (call after is_valid())."""
        inputs: dict[str, Any] = {}
        for spec in self.specs:
            value = self.cleaned_data.get(spec.field_name)
            if spec.kind == "file":
                inputs[spec.name] = value[0].to_dify() if value else None
            elif spec.kind == "file-list":
                inputs[spec.name] = [ref.to_dify() for ref in value or []]
            else:
                inputs[spec.name] = value if value is not None else ""
        return inputs

    def error_list(self) -> list[str]:
        """Every error as a sentence, prefixed with the input's name: for the API and for a summary."""
        messages = []
        for field_name, errors in self.errors.items():
            for error in errors:
                # With the language's own colon ("budget\uff1a" in Chinese).
                shown = labelled(field_name[3:], error) if field_name.startswith("in_") else error
                messages.append(str(shown))
        return messages

    def error_summary(self) -> list[str]:
        """Every error as a sentence, prefixed with the input's label as the page shows it
        ("Payment method: Choose an option."): for the page's summary above the form."""
        labels = {spec.field_name: spec.label for spec in self.specs}
        return [
            labelled(labels[field_name], error) if field_name in labels else str(error)
            for field_name, errors in self.errors.items()
            for error in errors
        ]


def small_int(text: str) -> int | None:
    """A positive id or page number from an address: ASCII digits that fit a database integer
    ("²" is a digit to `str.isdigit`, and "9" * 5000 is too long for `int`)."""
    if re.fullmatch(r"[0-9]{1,18}", text) is None:
        return None
    return int(text) or None


def existing_decision(form_obj: Form, submission_key: str) -> Decision | None:
    return Decision.objects.filter(form=form_obj, submission_key=submission_key).first()


def other_files(
    decision: Decision, form_obj: Form, given: Mapping[str, list[str] | None]
) -> list[str]:
    """The file inputs to which a decision sent again under its key gives other files than the
    decision has, in the form's order. `given`: each input's files as sent again, by input name,
    as the page and the API name them (our upload ids, web addresses; None for a value that
    reads as no files at all); an input not in it is not compared. The files are compared as
    Dify got them (an upload by Dify's id, an address as given) and in any order: the same
    files listed otherwise are the same decision. The page (sent again after an error or a
    timeout) and the API compare the same way."""
    stored = decision.inputs or {}
    specs = [s for s in input_specs(form_obj.definition or {}) if s.is_file and s.name in given]
    lines = {
        spec.name: None
        if given[spec.name] is None
        else [
            line.strip()
            for ref in given[spec.name] or []
            for line in str(ref).splitlines()
            if line.strip()
        ]
        for spec in specs
    }
    ids = {
        str(uuid.UUID(ref)) for refs in lines.values() for ref in refs or [] if is_upload_id(ref)
    }
    dify_ids = {
        str(public_id): upload_file_id
        for public_id, upload_file_id in Upload.objects.filter(
            form=form_obj, public_id__in=ids
        ).values_list("public_id", "upload_file_id")
    }

    def sent_again(ref: str) -> str:
        if is_upload_id(ref):
            ours = dify_ids.get(str(uuid.UUID(ref)))
            return f"dify:{ours}" if ours else f"upload:{uuid.UUID(ref)}"
        return f"url:{ref}"

    def had(item: Any) -> str:
        if isinstance(item, Mapping) and item.get("upload_file_id"):
            return f"dify:{item['upload_file_id']}"
        if isinstance(item, Mapping) and item.get("url"):
            return f"url:{item['url']}"
        return repr(item)

    changed = []
    for spec in specs:
        refs = lines[spec.name]
        value = stored.get(spec.name)
        items = value if isinstance(value, list) else [] if value is None else [value]
        if refs is None or sorted(map(sent_again, refs)) != sorted(map(had, items)):
            changed.append(spec.name)
    return changed


def inputs_from_dify(form_obj: Form, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A decision's Dify-shaped inputs turned back into form values, to refill the page.

    After Dify rejects a decision the reviewer fixes it instead of starting over; uploads are
    found again by their Dify id, web addresses are kept as typed.
    """
    specs = input_specs(form_obj.definition or {})
    file_ids: list[str] = []
    for spec in specs:
        if spec.is_file:
            value = inputs.get(spec.name)
            items = value if isinstance(value, list) else [value] if value else []
            file_ids += [str(i.get("upload_file_id")) for i in items if isinstance(i, Mapping)]
    uploads = {
        u.upload_file_id: str(u.public_id)
        for u in Upload.objects.filter(form=form_obj, upload_file_id__in=file_ids)
    }
    result: dict[str, Any] = {}
    for spec in specs:
        value = inputs.get(spec.name)
        if spec.is_file:
            items = value if isinstance(value, list) else [value] if value else []
            refs = []
            for item in items:
                if not isinstance(item, Mapping):
                    continue
                if item.get("transfer_method") == "remote_url" and item.get("url"):
                    refs.append(str(item["url"]))
                elif str(item.get("upload_file_id")) in uploads:
                    refs.append(uploads[str(item["upload_file_id"])])
            result[spec.name] = refs
        elif value is not None:
            result[spec.name] = value if isinstance(value, str) else str(value)
    return result


class FileNames:
    """Names for the file references Dify hands back (a file input's value, Dify's own file
    object), as people read them: the name the file was uploaded here under, else Dify's file
    name. `url=True` shows a web address a reviewer gave as it is; a file URL of Dify's is never
    shown (it is signed: it opens the file). The uploads are read once, at the first file."""

    def __init__(self, uploads: Any) -> None:
        self._uploads = uploads
        self._names: dict[str, str] | None = None

    def __call__(self, item: Any, *, url: bool = False) -> str:
        if not isinstance(item, Mapping):
            return gettext("[file]")
        if url and item.get("transfer_method") == "remote_url" and item.get("url"):
            return str(item["url"])
        if self._names is None:
            self._names = dict(self._uploads.values_list("upload_file_id", "name"))
        known = self._names.get(str(item.get("upload_file_id") or item.get("related_id") or ""))
        return known or str(item.get("filename") or item.get("name") or gettext("[file]"))


def not_delivered(form_obj: Form, decision: Decision | None) -> bool:
    """Whether the form's record is our own decision that never reached Dify: it failed, Dify
    had been answered elsewhere first and said nothing of that answer, or the form had closed
    in Dify (its time ran out there) before the decision arrived."""
    return (
        decision is not None
        and decision.status in (Decision.Status.FAILED, Decision.Status.REJECTED)
        and not form_obj.rendered_content
        and not form_obj.filled_data
        and form_obj.status
        in (form_obj.Status.FAILED, form_obj.Status.ANSWERED_ELSEWHERE, form_obj.Status.EXPIRED)
    )


# How Dify writes a file input in `rendered_content`: "[file]" for one, "[N files]" for a list.
_DIFY_FILE = re.compile(r"\[file\]|\[(\d+) files\]")


def _dify_file_placeholder(text: str) -> str:
    """Dify's English "[file]" / "[N files]" in the reader's language; other text as it is."""
    match = _DIFY_FILE.fullmatch(text)
    if match is None:
        return text
    if match.group(1) is None:
        return gettext("[file]")
    count = int(match.group(1))
    return ngettext("[%(n)d file]", "[%(n)d files]", count) % {"n": count}


def _rendered_with_files(form_obj: Form, decision: Decision | None) -> str:
    """Dify's `rendered_content`, its file inputs as people read them: the names they were
    uploaded under when the decision was ours and delivered (Dify writes only "[file]" or
    "[N files]"), else Dify's placeholders in the reader's language. The rest as Dify wrote
    it. Each input's place is found by matching the content as asked against the rendered one;
    where they do not line up, only the placeholders are translated."""
    from inbox.markdown import PLACEHOLDER

    rendered = form_obj.rendered_content
    content = form_obj.content or str((form_obj.definition or {}).get("form_content") or "")
    kinds = {spec.name: spec.kind for spec in input_specs(form_obj.definition or {})}
    places = list(PLACEHOLDER.finditer(content))
    if not any(kinds.get(m.group(1).strip()) in ("file", "file-list") for m in places):
        return rendered
    pattern, start = [], 0
    for match in places:
        pattern += [re.escape(content[start : match.start()]), "(.*?)"]
        start = match.end()
    pattern.append(re.escape(content[start:]))
    aligned = re.fullmatch("".join(pattern), rendered, re.DOTALL)
    if aligned is None:
        return _DIFY_FILE.sub(lambda m: _dify_file_placeholder(m.group(0)), rendered)
    values: Mapping[str, Any] = {}
    if decision is not None and decision.status == Decision.Status.DELIVERED:
        # Ours, and Dify took it: the files are those uploaded here.
        values = decision.inputs if isinstance(decision.inputs, Mapping) else {}
    file_name = FileNames(Upload.objects.filter(form=form_obj))
    parts, start = [], 0
    for index, match in enumerate(places, start=1):
        parts.append(rendered[start : aligned.start(index)])
        text = aligned.group(index)
        name = match.group(1).strip()
        kind = kinds.get(name)
        value = values.get(name)
        if kind == "file" and isinstance(value, Mapping):
            text = file_name(value, url=True)
        elif kind == "file-list" and isinstance(value, list):
            text = ", ".join(file_name(item, url=True) for item in value)
        elif kind in ("file", "file-list"):
            text = _dify_file_placeholder(text)
        parts.append(text)
        start = aligned.end(index)
    parts.append(rendered[start:])
    return "".join(parts)


def answered_content(form_obj: Form, decision: Decision | None) -> str:
    """The form's content as answered: Dify's own record when a fill event brought it (its
    `rendered_content`, its files named as `_rendered_with_files` says); else the content with each input's place filled with what was sent,
    as Dify fills it: the values of our decision Dify accepted, those Dify said were submitted
    elsewhere, or (`not_delivered`) those of our decision that never reached Dify. A file reads as its name when it was uploaded here. Empty when nothing says what
    was answered (the content is then shown as it was asked)."""
    from inbox.markdown import PLACEHOLDER

    values = _answered_values(form_obj, decision)
    content = form_obj.content or str((form_obj.definition or {}).get("form_content") or "")
    if form_obj.rendered_content:
        return _rendered_with_files(form_obj, decision) + _unplaced(form_obj, values, content)
    if not isinstance(values, Mapping) or not content:
        return ""
    kinds = {spec.name: spec.kind for spec in input_specs(form_obj.definition or {})}
    file_name = FileNames(Upload.objects.filter(form=form_obj))

    def fill(match: Any) -> str:
        return _answer_text(match.group(1).strip(), values, kinds, file_name)

    return PLACEHOLDER.sub(fill, content) + _unplaced(form_obj, values, content, file_name)


def _answered_values(form_obj: Form, decision: Decision | None) -> Any:
    """What was answered, as `answered_content` reads it; None when nothing says."""
    values: Any = None
    if decision is not None and decision.status == Decision.Status.DELIVERED:
        values = decision.inputs
    elif form_obj.filled_data:
        values = form_obj.filled_data
    elif not_delivered(form_obj, decision):
        # What was decided here and never reached Dify (it failed, or the form was answered
        # elsewhere first): shown as such, so the reviewer's words are not lost.
        values = decision.inputs if decision is not None else None
    return values


def _answer_text(
    name: str, values: Mapping[str, Any], kinds: dict[str, str], file_name: Any
) -> str:
    value = values.get(name)
    if value is None:
        return ""
    if kinds.get(name) == "file":
        return str(file_name(value, url=True))
    if kinds.get(name) == "file-list":
        items = value if isinstance(value, list) else []
        return ", ".join(file_name(item, url=True) for item in items)
    return value if isinstance(value, str) else str(value)


def _unplaced(form_obj: Form, values: Any, content: str, file_name: Any = None) -> str:
    """The answers to inputs the content has no place for (shown after it while the form was
    open): neither Dify's record nor the filled content holds them, so they follow it, each
    under its label, rather than vanish once the form is decided."""
    from inbox.markdown import PLACEHOLDER

    if not isinstance(values, Mapping):
        return ""
    placed = {m.group(1).strip() for m in PLACEHOLDER.finditer(content or "")}
    specs = [s for s in input_specs(form_obj.definition or {}) if s.name not in placed]
    if not specs:
        return ""
    kinds = {spec.name: spec.kind for spec in specs}
    file_name = file_name or FileNames(Upload.objects.filter(form=form_obj))
    lines = []
    for spec in specs:
        text = _answer_text(spec.name, values, kinds, file_name)
        if text.strip():
            lines.append(labelled(f"**{spec.label}**", text.strip()))
    return "".join(f"\n\n{line}" for line in lines)


class LoginForm(AuthenticationForm):
    """Django's login form, whose fields point at the error a failed login shows
    (registration/login.html): a screen reader on either field hears that it was refused.

    A deactivated account given its right password is told so (the `inactive` error), and not
    signed in. Its password is checked here, once, as the backend would an active account's: a
    wrong password reads the same, and takes as long, whatever the account's state."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "inactive": _("This account is deactivated. Ask your administrator."),
    }

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if username is not None and password:
            model = get_user_model()
            user = model._default_manager.filter(**{model.USERNAME_FIELD: username}).first()
            if user is not None and not user.is_active:
                if user.check_password(password):
                    raise ValidationError(self.error_messages["inactive"], code="inactive")
                raise self.get_invalid_login_error()
        return super().clean()

    def full_clean(self) -> None:
        super().full_clean()
        if not self.errors:
            return
        for name in ("username", "password"):
            self.fields[name].widget.attrs.update(
                {"aria-invalid": "true", "aria-describedby": "login-error"}
            )


# The start of a run id, as a row shows it (eight characters of Dify's workflow run id).
RUN_ID_START = re.compile(r"[0-9A-Fa-f-]{6,64}")
