"""Dify's validation of run inputs and of Human Input submissions, with its exact messages.

The submission checks run in Dify's order (CONTRACT §4): normalization (value shapes, file
resolution and count), the action, missing keys, then per-value checks. The first failure wins.
"""

from __future__ import annotations

import mimetypes
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlparse

from inbox.simulator.files import FILE_TYPES, TRANSFER_METHODS, category_of, extension_of
from inbox.simulator.scenarios import StartInput


class InvalidInput(ValueError):
    """A run's start inputs were refused (400 `invalid_param`)."""


class InvalidFormData(ValueError):
    """A submission was refused (400 `invalid_form_data`)."""


def validate_start_inputs(
    declared: Sequence[StartInput],
    given: Mapping[str, Any],
    find_upload: UploadLookup | None = None,
) -> dict[str, Any]:
    """Dify's `BaseAppGenerator._validate_inputs`: only declared variables are kept. A file
    input's mapping (a file-list's list of them) is resolved with `find_upload` (an upload of
    the run's own user) and checked against the input's config, as `_prepare_user_inputs`
    builds its files."""
    cleaned: dict[str, Any] = {}
    for entity in declared:
        name = entity.variable
        value = given.get(name)
        if entity.type == "file-list" and value == []:
            value = None
        if value is None or value == "":
            if entity.required:
                raise InvalidInput(f"{name} is required in input form")
            if entity.is_file:
                continue
            if value is None:
                # Left out: Dify puts the app's default in its place.
                cleaned[name] = entity.default
                continue
            if entity.type == "number":
                # Dify reads a blank number as none.
                cleaned[name] = None
                continue
            if entity.type != "select":
                cleaned[name] = value
                continue
        if entity.type in ("text-input", "paragraph"):
            if not isinstance(value, str):
                raise InvalidInput(f"{name} in input form must be a string")
            if entity.max_length is not None and len(value) > entity.max_length:
                raise InvalidInput(
                    f"{name} in input form must be less than {entity.max_length} characters"
                )
        elif entity.type == "select":
            if value not in entity.options:
                raise InvalidInput(
                    f"{name} in input form must be one of the following: {list(entity.options)}"
                )
        elif entity.type == "number":
            if isinstance(value, str):
                try:
                    value = float(value) if "." in value else int(value)
                except ValueError as exc:
                    raise InvalidInput(f"{name} in input form must be a valid number") from exc
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput(f"{name} in input form must be a valid number")
        elif entity.type == "checkbox" and not isinstance(value, bool):
            raise InvalidInput(f"{name} in input form must be a boolean")
        elif entity.type == "file":
            if not isinstance(value, Mapping):
                raise InvalidInput(f"{name} in input form must be a file")
            value = _start_files(entity, [value], find_upload)[0]
        elif entity.type == "file-list":
            if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
                raise InvalidInput(f"{name} in input form must be a list of files")
            value = _start_files(entity, value, find_upload)
        cleaned[name] = value
    return cleaned


def _start_files(
    entity: StartInput, mappings: Sequence[Mapping[str, Any]], find_upload: UploadLookup | None
) -> list[dict[str, Any]]:
    """A file start input's files as Dify's file factory builds them under the input's config
    (its kinds, extensions and methods; a file-list's `max_length`)."""
    config = dict(entity.file_config or {})
    limit = entity.max_length if entity.type == "file-list" else 1
    if limit and len(mappings) > limit:
        raise InvalidInput(f"Number of files exceeds the maximum limit {limit}")
    return validate_message_files(
        {**config, "number_limits": limit or 0},
        list(mappings),
        find_upload or (lambda _id: None),
    )


class ResolvedFile:
    """What Dify learns about a mapped file: its detected category and extension."""

    def __init__(self, category: str, extension: str) -> None:
        self.category = category
        self.extension = extension


# (upload_file_id) -> (extension, mime_type) of a stored upload, or None when it is not usable.
UploadLookup = Callable[[str], tuple[str, str] | None]


def _resolve_mapping(mapping: Mapping[str, Any], find_upload: UploadLookup) -> ResolvedFile:
    """Dify's `build_from_mapping(..., strict_type_validation=True)` for one file mapping."""
    method = mapping.get("transfer_method")
    if not method:
        raise InvalidFormData("transfer_method is required in file mapping")
    if method not in TRANSFER_METHODS:
        raise InvalidFormData(f"No matching enum found for value '{method}'")
    upload_id = mapping.get("upload_file_id")
    if method == "local_file" or upload_id:
        if not upload_id:
            raise InvalidFormData("Invalid upload file id")
        try:
            uuid.UUID(str(upload_id))
        except ValueError as exc:
            raise InvalidFormData("Invalid upload file id format") from exc
        found = find_upload(str(upload_id))
        if found is None:
            raise InvalidFormData("Invalid upload file")
        extension, mime_type = found
        # A local file without `type` counts as custom, which rarely matches (D6).
        specified = mapping.get("type", "custom") if method == "local_file" else mapping.get("type")
    else:
        url = mapping.get("url") or mapping.get("remote_url")
        if not url:
            raise InvalidFormData("Invalid file url")
        # Dify probes the URL; the simulator has no network, so it trusts the URL's file name.
        filename = unquote(urlparse(str(url)).path.rsplit("/", 1)[-1])
        extension = extension_of(filename)
        mime_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        specified = mapping.get("type")
    detected = category_of(extension, mime_type)
    if specified and detected != specified:
        raise InvalidFormData(
            "Detected file type does not match the specified type. Please verify the file."
        )
    return ResolvedFile(detected, f".{extension}" if extension else "")


def _file_allowed(
    form_input: Mapping[str, Any], mapping: Mapping[str, Any], resolved: ResolvedFile | None
) -> bool:
    file_type = mapping.get("type")
    allowed_types = form_input.get("allowed_file_types") or []
    if allowed_types and file_type not in allowed_types:
        return False
    if file_type == "custom":
        extension = resolved.extension if resolved else ""
        if extension not in (form_input.get("allowed_file_extensions") or []):
            return False
    methods = form_input.get("allowed_file_upload_methods") or []
    return not (methods and mapping.get("transfer_method") not in methods)


def _check_file_mapping(
    form_input: Mapping[str, Any], mapping: Mapping[str, Any], resolved: ResolvedFile | None
) -> None:
    name = form_input["output_variable_name"]
    if mapping.get("type") not in FILE_TYPES:
        raise InvalidFormData(f"Invalid value for file input '{name}': unsupported file type")
    if mapping.get("transfer_method") not in TRANSFER_METHODS:
        raise InvalidFormData(f"Invalid value for file input '{name}': unsupported transfer method")
    if not _file_allowed(form_input, mapping, resolved):
        raise InvalidFormData(
            f"Invalid value for file input '{name}': file is not allowed by config"
        )


def validate_message_files(
    config: Mapping[str, Any] | None, files: Any, find_upload: UploadLookup
) -> list[dict[str, Any]]:
    """Dify's `file_factory.build_from_mappings` for a chat message's `files`, under the app's
    `file_upload` feature: ignored when the app takes no files; else each mapping resolved
    (an upload of the sender's own) and allowed by the feature, and at most `number_limits`.
    Raises InvalidInput (Dify: 400 `invalid_param`, its ValueError's message)."""
    if not config or not files:
        return []
    if not isinstance(files, list):
        raise InvalidInput("files must be a list")
    limit = config.get("number_limits") or 0
    if limit and len(files) > limit:
        raise InvalidInput(f"Number of files exceeds the maximum limit {limit}")
    kept = []
    for mapping in files:
        if not isinstance(mapping, Mapping):
            raise InvalidInput("Invalid file mapping")
        try:
            resolved = _resolve_mapping(mapping, find_upload)
        except InvalidFormData as exc:
            raise InvalidInput(str(exc)) from exc
        if mapping.get("type") not in FILE_TYPES or not _file_allowed(config, mapping, resolved):
            raise InvalidInput(
                f"File validation failed for file: {mapping.get('upload_file_id') or 'file'}"
            )
        kept.append(dict(mapping))
    return kept


def validate_submission(
    form_inputs: Sequence[Mapping[str, Any]],
    action_ids: Sequence[str],
    action: str,
    values: Mapping[str, Any],
    find_upload: UploadLookup,
) -> dict[str, Any]:
    """Check a submission the way Dify does; returns the values as stored (quirks applied)."""
    stored = dict(values)
    resolved: dict[int, ResolvedFile] = {}

    # 1. Normalization: shapes, file resolution and count.
    for form_input in form_inputs:
        name = form_input["output_variable_name"]
        if name not in values:
            continue
        value = values[name]
        kind = form_input["type"]
        if kind == "select" and not isinstance(value, str):
            raise InvalidFormData(f"Invalid value for select input '{name}': expected string")
        if kind == "file":
            if not isinstance(value, Mapping):
                raise InvalidFormData(f"Invalid value for file input '{name}': expected mapping")
            resolved[id(value)] = _resolve_mapping(value, find_upload)
        elif kind == "file-list":
            if not isinstance(value, list):
                raise InvalidFormData(f"Invalid value for file list input '{name}': expected list")
            if any(not isinstance(item, Mapping) for item in value):
                raise InvalidFormData(
                    f"Invalid value for file list input '{name}': expected list of mappings"
                )
            # Quirk kept from Dify: an item without a transfer method, or a remote item without
            # a URL, is dropped silently instead of being refused.
            kept = [
                item
                for item in value
                if item.get("transfer_method")
                and not (
                    item.get("transfer_method") == "remote_url"
                    and not (item.get("url") or item.get("remote_url"))
                )
            ]
            for item in kept:
                resolved[id(item)] = _resolve_mapping(item, find_upload)
            limit = form_input.get("number_limits") or 0
            if limit and len(kept) > limit:
                raise InvalidFormData(f"Number of files exceeds the maximum limit {limit}")
            stored[name] = kept

    # 2. The action.
    if action not in action_ids:
        raise InvalidFormData(f"Invalid action: {action}")

    # 3. Every input key, paragraphs included; an empty value is fine.
    missing = [
        i["output_variable_name"] for i in form_inputs if i["output_variable_name"] not in stored
    ]
    if missing:
        raise InvalidFormData(f"Missing required inputs: {', '.join(missing)}")

    # 4. Per-value checks. Unknown keys are kept, as Dify stores them.
    by_name = {i["output_variable_name"]: i for i in form_inputs}
    for name, value in stored.items():
        config = by_name.get(name)
        if config is None:
            continue
        form_input = config
        kind = form_input["type"]
        if kind == "select":
            source = form_input["option_source"]
            if source["type"] == "constant" and value not in source["value"]:
                raise InvalidFormData(f"Invalid value for select input '{name}': {value}")
        elif kind == "file":
            _check_file_mapping(form_input, value, resolved.get(id(value)))
        elif kind == "file-list":
            for item in value:
                _check_file_mapping(form_input, item, resolved.get(id(item)))
            limit = form_input.get("number_limits") or 0
            if limit and len(value) > limit:
                raise InvalidFormData(
                    f"Invalid value for file list input '{name}': exceeds number limit"
                )
    return stored
