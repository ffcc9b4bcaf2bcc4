"""The JSON API (`/api/v1/...`), authenticated with per-user bearer tokens.

Every endpoint is a plain function view wrapped in `api_view`, which authenticates the token,
exempts the view from CSRF (there is no cookie session) and turns `ApiError` into a JSON error
envelope `{"error": {"code", "message", "details"?}}`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from inbox.forms import DecisionForm, action_specs, existing_decision, input_specs
from inbox.markdown import excerpt
from inbox.models import ApiToken, Decision, Form
from inbox.uploads import UploadRejected, upload_to_dify
from inbox.views import PAGE_SIZE, TAB_STATUSES, InboxFilters, inbox_rows, ordering, page_state


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details

    def response(self) -> JsonResponse:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return JsonResponse({"error": body}, status=self.status)


def api_view(
    methods: list[str],
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                if request.method not in methods:
                    raise ApiError(405, "method_not_allowed", f"Use {' or '.join(methods)}.")
                header = request.headers.get("Authorization", "")
                scheme, _, raw = header.partition(" ")
                if scheme.lower() != "bearer" or not raw.strip():
                    raise ApiError(401, "unauthorized", "Send 'Authorization: Bearer <token>'.")
                user = ApiToken.authenticate(raw.strip())
                if user is None:
                    raise ApiError(401, "unauthorized", "The API token is not valid.")
                request.user = user
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return exc.response()

        return wrapper

    return decorate


def json_body(request: HttpRequest) -> dict[str, Any]:
    """The request's JSON object, or a 400 that says what is wrong with it."""
    if not request.body:
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    try:
        body = json.loads(request.body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    return body


# ---------------------------------------------------------------------------------------------
# Forms: list, detail, file upload, decision. The same DecisionForm as the HTML page validates.
# ---------------------------------------------------------------------------------------------

_INPUT_KEYS = (
    "type",
    "output_variable_name",
    "default",
    "option_source",
    "allowed_file_types",
    "allowed_file_extensions",
    "allowed_file_upload_methods",
    "number_limits",
)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _get_api_form(request: HttpRequest, public_id: Any) -> Form:
    form = (
        Form.objects.for_user(request.user)
        .select_related("run__app", "run__started_by")
        .filter(public_id=public_id)
        .first()
    )
    if form is None:
        raise ApiError(404, "not_found", "No such form, or you may not see it.")
    return form


def _decision_json(decision: Decision | None) -> dict[str, Any] | None:
    if decision is None:
        return None
    return {
        "id": str(decision.public_id),
        "status": decision.status,
        "action": decision.action_id,
        "decided_by": decision.decider_label,
        "last_error": decision.last_error,
        "created_at": _iso(decision.created_at),
        "delivered_at": _iso(decision.delivered_at),
    }


def _form_summary(request: HttpRequest, form: Form, content: str) -> dict[str, Any]:
    return {
        "id": str(form.public_id),
        "status": form.status,
        "app": form.run.app.name,
        "run": {
            "id": str(form.run.public_id),
            "status": form.run.status,
            "workflow_run_id": form.run.workflow_run_id,
        },
        "node_id": form.node_id,
        "node_title": form.node_title,
        "excerpt": excerpt(content),
        "created_at": _iso(form.created_at),
        "expiration_time": _iso(form.expiration_time),
        "url": request.build_absolute_uri(reverse("inbox:form", args=[form.public_id])),
    }


@api_view(["GET"])
def forms_list(request: HttpRequest) -> HttpResponse:
    """`GET /api/v1/forms?status=pending&app=&node=&q=&sort=&page=`"""
    status = request.GET.get("status", "pending")
    statuses: tuple[str, ...] | None
    if status == "all":
        statuses = None
    elif status in Form.Status.values:
        statuses = (status,)
    elif status in TAB_STATUSES:
        statuses = TAB_STATUSES[status]
    else:
        raise ApiError(400, "invalid_param", f"Unknown status {status!r}.")
    filters = InboxFilters.from_query(request.GET)
    forms = filters.apply(Form.objects.for_user(request.user), with_status=False)
    if statuses is not None:
        forms = forms.filter(status__in=statuses)
    total = forms.count()
    pages = max(1, -(-total // PAGE_SIZE))
    page = min(filters.page, pages)
    rows = inbox_rows(forms).order_by(*ordering(filters.sort))[
        (page - 1) * PAGE_SIZE : page * PAGE_SIZE
    ]
    return JsonResponse(
        {
            "count": total,
            "page": page,
            "pages": pages,
            "results": [_form_summary(request, f, getattr(f, "content_head", "")) for f in rows],
        }
    )


@api_view(["GET"])
def form_detail(request: HttpRequest, public_id: Any) -> HttpResponse:
    """`GET /api/v1/forms/{id}`: the definition, never the token."""
    form = _get_api_form(request, public_id)
    definition = form.definition or {}
    body = _form_summary(request, form, form.content)
    body.update(
        {
            "answerable": page_state(form) == "open",
            "content": form.content or definition.get("form_content", ""),
            "inputs": [
                {k: raw[k] for k in _INPUT_KEYS if k in raw}
                for raw in definition.get("inputs") or []
                if isinstance(raw, dict)
            ],
            "resolved_default_values": definition.get("resolved_default_values") or {},
            "actions": [
                {"id": a.id, "title": a.title, "button_style": a.button_style}
                for a in action_specs(definition)
            ],
            "approval_channels": form.approval_channels or [],
            "decided_at": _iso(form.decided_at),
            "rendered_content": form.rendered_content,
            "filled_action_id": form.filled_action_id,
            "filled_action_text": form.filled_action_text,
            "uploads": [
                {
                    "id": str(u.public_id),
                    "input": u.input_name,
                    "name": u.name,
                    "size": u.size,
                    "type": u.category,
                }
                for u in form.uploads.all()
            ],
            "decision": _decision_json(form.decisions.select_related("reviewer").first()),
        }
    )
    return JsonResponse(body)


@api_view(["POST"])
def form_files(request: HttpRequest, public_id: Any) -> HttpResponse:
    """`POST /api/v1/forms/{id}/files` (multipart: `input`, `file`): upload to Dify first."""
    form = _get_api_form(request, public_id)
    name = request.POST.get("input", "")
    spec = next((s for s in input_specs(form.definition or {}) if s.name == name), None)
    if spec is None or not spec.is_file:
        raise ApiError(400, "invalid_param", f"{name!r} is not a file input of this form.")
    fileobj = request.FILES.get("file")
    if fileobj is None:
        raise ApiError(400, "no_file_uploaded", "Send the file in a multipart field named 'file'.")
    if page_state(form) != "open":
        raise ApiError(409, "form_not_open", "This form can no longer be answered.")
    try:
        upload = upload_to_dify(form, spec, fileobj, request.user)
    except UploadRejected as exc:
        raise ApiError(400, "upload_rejected", exc.message) from None
    return JsonResponse(
        {
            "id": str(upload.public_id),
            "input": upload.input_name,
            "name": upload.name,
            "size": upload.size,
            "type": upload.category,
            "mime_type": upload.mime_type,
        },
        status=201,
    )


def _file_refs(value: Any) -> list[str] | None:
    """An API file value as the form's references: upload ids and web addresses."""
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    refs = []
    for item in items:
        if isinstance(item, str):
            refs.append(item)
        elif isinstance(item, dict):
            ref = item.get("upload_id") or item.get("url") or item.get("id")
            if not isinstance(ref, str):
                raise ApiError(
                    400,
                    "invalid_form_data",
                    "A file is {'upload_id': ...} from /files, or {'url': 'https://...'}.",
                )
            refs.append(ref)
        else:
            raise ApiError(400, "invalid_form_data", "A file value must be an object or a string.")
    return refs


@api_view(["POST"])
def form_decision(request: HttpRequest, public_id: Any) -> HttpResponse:
    """`POST /api/v1/forms/{id}/decision` `{"action", "inputs", "submission_key"?}` → 202."""
    form = _get_api_form(request, public_id)
    body = json_body(request)
    inputs = body.get("inputs", {})
    if not isinstance(inputs, dict):
        raise ApiError(400, "invalid_form_data", "'inputs' must be an object.")
    key = body.get("submission_key") or ""
    if not isinstance(key, str) or len(key) > 64:
        raise ApiError(400, "invalid_param", "'submission_key' must be a string of at most 64.")
    if key:
        decision = existing_decision(form, key)
        if decision is not None:
            return JsonResponse({"decision": _decision_json(decision)}, status=202)
    if page_state(form) != "open":
        raise ApiError(409, "form_not_open", "This form can no longer be answered.")
    dform = DecisionForm(form, require_every_key=True)
    data: dict[str, Any] = {"action": body.get("action") or "", "submission_key": key}
    for spec in dform.specs:
        if spec.name in inputs:
            value = inputs[spec.name]
            data[spec.field_name] = _file_refs(value) if spec.is_file else value
    dform = DecisionForm(form, data, require_every_key=True)
    if not dform.is_valid():
        errors = dform.error_list()
        raise ApiError(
            400,
            "invalid_form_data",
            " ".join(errors),
            details={name: [str(e) for e in errs] for name, errs in dform.errors.items()},
        )
    from inbox.models import FormNotOpen  # Form.decide's refusal

    try:
        decision = dform.save(reviewer=request.user)
    except FormNotOpen as exc:
        raise ApiError(409, "form_not_open", str(exc)) from None
    return JsonResponse({"decision": _decision_json(decision)}, status=202)
