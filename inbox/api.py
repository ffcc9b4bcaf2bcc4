"""The JSON API (`/api/v1/...`), authenticated with per-user bearer tokens.

Every endpoint is a plain function view wrapped in `api_view`, which authenticates the token,
exempts the view from CSRF (there is no cookie session) and turns `ApiError` into a JSON error
envelope `{"error": {"code", "message", "details"?}}`.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from inbox.forms import DecisionForm, action_specs, existing_decision, input_specs
from inbox.markdown import excerpt
from inbox.models import ApiToken, Decision, DifyApp, Form, FormNotOpen, Upload
from inbox.uploads import UploadRejected, too_large, upload_to_dify
from inbox.views import (
    PAGE_SIZE,
    SORTS,
    TAB_STATUSES,
    InboxFilters,
    inbox_rows,
    ordering,
    page_state,
)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.retry_after = retry_after

    def response(self) -> JsonResponse:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        response = JsonResponse({"error": body}, status=self.status)
        if self.retry_after is not None:
            response["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return response


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
            except RequestDataTooBig:
                # Django's own answer would be an HTML page.
                return ApiError(
                    413,
                    "request_too_large",
                    f"The request body is over {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes; "
                    "files go to the upload call, one at a time.",
                ).response()

        return wrapper

    return decorate


@csrf_exempt
def not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    """Any other address under /api/: an answer in the API's shape, not an HTML page."""
    return ApiError(
        404, "not_found", f"No such API address: {request.method} {request.path}"
    ).response()


def json_body(request: HttpRequest) -> dict[str, Any]:
    """The request's JSON object, or a 400 that says what is wrong with it."""
    if not request.body:
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    try:
        body = json.loads(request.body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"The request body is not valid JSON: {exc}") from None
    except (ValueError, RecursionError):
        # Valid JSON that Python will not read: an integer of over 4,300 digits, or arrays
        # nested thousands deep.
        raise ApiError(
            400, "invalid_json", "The request body holds a number too long or nesting too deep."
        ) from None
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
        # Queued, but waiting for Dify to accept the app again (a refused key).
        "held": decision.held_for_app,
        "created_at": _iso(decision.created_at),
        "delivered_at": _iso(decision.delivered_at),
        # Delivered, but Dify never said the answer it took was this one (a lost answer, then
        # "already submitted"): presumed ours.
        "delivery_presumed": decision.delivery_presumed,
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
    query = request.GET.copy()
    sort = query.get("sort", "")
    if sort and sort not in SORTS:
        raise ApiError(
            400, "invalid_param", f"Unknown sort {sort!r}; one of: {', '.join(sorted(SORTS))}."
        )
    if name := query.get("app", ""):
        # The app by its name, as everywhere in the API (its id is accepted too).
        app = DifyApp.objects.filter(name=name).only("pk").first()
        if app is None and name.isdigit():
            app = DifyApp.objects.filter(pk=int(name)).only("pk").first()
        if app is None:
            raise ApiError(400, "invalid_param", f"Unknown app {name!r}.")
        query["app"] = str(app.pk)
    filters = InboxFilters.from_query(query, request.user)
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
                # The caller's own, as on the page: another reviewer's files are theirs.
                for u in Upload.owned(form, reviewer=request.user)
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
        dropped = too_large(request)
        if dropped:
            # Dropped as it arrived: larger than Dify takes for any kind of file.
            raise ApiError(413, "upload_rejected", " ".join(dropped))
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
        if decision is not None and decision.action_id != (body.get("action") or ""):
            # The same key is the same decision, sent again: another action under it is not
            # that, and would read as accepted if answered 202.
            raise ApiError(
                409,
                "submission_key_reused",
                f"This submission_key was already used for a decision on this form with the "
                f"action {decision.action_id!r}; send a new key for another decision.",
                details={"decision": _decision_json(decision)},
            )
        if decision is not None:
            return JsonResponse({"decision": _decision_json(decision)}, status=202)
    if page_state(form) != "open":
        # Who got there first, when, and with which action (or why it closed otherwise).
        refusal = form.refusal(force=True)
        raise ApiError(
            409,
            "form_not_open",
            str(refusal),
            details={"decision": _decision_json(refusal.decision)} if refusal.decision else None,
        )
    dform = DecisionForm(form, require_every_key=True)
    # Dify would store a key the form does not have with the submission (CONTRACT 4): a typo
    # is refused here instead, by its name.
    _refuse_unknown(inputs, [spec.name for spec in dform.specs], "invalid_form_data", "form")
    data: dict[str, Any] = {"action": body.get("action") or "", "submission_key": key}
    for spec in dform.specs:
        if spec.name in inputs:
            value = inputs[spec.name]
            if not spec.is_file and not isinstance(value, str):
                # A paragraph or a select is text; Dify would store a number or an object as
                # whatever Python prints for it (CONTRACT D4), as starting a run refuses it.
                raise ApiError(
                    400,
                    "invalid_form_data",
                    f"'{spec.name}' must be a string.",
                    details={spec.name: ["Must be a string."]},
                )
            data[spec.field_name] = _file_refs(value) if spec.is_file else value
    dform = DecisionForm(
        form, data, require_every_key=True, uploads=Upload.owned(form, reviewer=request.user)
    )
    if not dform.is_valid():
        errors = dform.error_list()
        # Keyed as the request names them: an input by its name, not the page's field name.
        named = {spec.field_name: spec.name for spec in dform.specs}
        raise ApiError(
            400,
            "invalid_form_data",
            " ".join(errors),
            details={
                named.get(field, field): [str(e) for e in errs]
                for field, errs in dform.errors.items()
            },
        )
    try:
        decision = dform.save(reviewer=request.user)
    except FormNotOpen as exc:
        details = {"decision": _decision_json(exc.decision)} if exc.decision else None
        raise ApiError(409, "form_not_open", str(exc), details=details) from None
    return JsonResponse({"decision": _decision_json(decision)}, status=202)


# ---------------------------------------------------------------------------------------------
# Runs: start, read, stop, and ingest runs started elsewhere. Never a form token in an answer.
# ---------------------------------------------------------------------------------------------


def _run_json(request: HttpRequest, run: Any) -> dict[str, Any]:
    forms = list(run.forms.order_by("created_at", "id"))
    return {
        "id": str(run.public_id),
        "app": run.app.name,
        "workflow_run_id": run.workflow_run_id,
        "status": run.status,
        "dify_user": run.dify_user,
        "source": run.source,
        "inputs": run.inputs,
        "query": run.query,
        "answer": run.answer,
        "outputs": run.outputs,
        "error": run.error,
        "started_by": run.started_by.get_username() if run.started_by else None,
        "created_at": _iso(run.created_at),
        "finished_at": _iso(run.finished_at),
        "url": request.build_absolute_uri(reverse("inbox:run", args=[run.public_id])),
        "forms": [
            {
                "id": str(form.public_id),
                "status": form.status,
                "node_id": form.node_id,
                "node_title": form.node_title,
                "answerable": form.status == Form.Status.PENDING and form.is_answerable,
                "approval_channels": form.approval_channels or [],
                "expiration_time": _iso(form.expiration_time),
                "filled_action_id": form.filled_action_id,
                "filled_action_text": form.filled_action_text,
                "url": request.build_absolute_uri(reverse("inbox:form", args=[form.public_id])),
            }
            for form in forms
        ],
        "timeline": [
            {k: v for k, v in item.items() if k != "key"}
            for item in (run.timeline or [])
            if isinstance(item, dict)
        ],
    }


def _active_app(body: dict[str, Any]) -> Any:
    name = body.get("app")
    if not isinstance(name, str) or not name.strip():
        raise ApiError(400, "invalid_param", "'app' is required: the name of a Dify app.")
    app = DifyApp.objects.filter(name=name.strip(), is_active=True).first()
    if app is None:
        raise ApiError(400, "unknown_app", f"There is no active Dify app named {name.strip()!r}.")
    return app


def _require_may_start(request: HttpRequest) -> None:
    from inbox.models import Run

    if not Run.objects.may_start(request.user):
        raise ApiError(403, "forbidden", "You may not start or ingest runs.")


def _optional_text(body: dict[str, Any], key: str, *, limit: int) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise ApiError(
            400,
            "invalid_param",
            f"'{key}' must be a non-empty string of at most {limit} characters.",
        )
    return value.strip()


_START_TYPES = {
    "text-input": (str,),
    "paragraph": (str,),
    "select": (str,),
    "checkbox": (bool,),
}


def _refuse_unknown(inputs: dict[str, Any], names: list[str], code: str, what: str) -> None:
    """A 400 naming the first input the request gave that the app (or form) does not take."""
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise ApiError(
            400,
            code,
            f"Unknown input {unknown[0]!r}; this {what} takes: {', '.join(names) or 'none'}.",
            details={name: ["Unknown input."] for name in unknown},
        )


def _start_form_data(form_specs: list[Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """API inputs as the start form's data, with JSON types checked first: the form would
    otherwise read 12 as the text "12" and "yes" as a ticked box."""
    known = {spec.variable: spec for spec in form_specs}
    _refuse_unknown(inputs, sorted(known), "invalid_inputs", "app")
    data: dict[str, Any] = {}
    for spec in form_specs:
        # Left out, a checkbox is its default, as in Dify and on the start page.
        if spec.type == "checkbox" and inputs.get(spec.variable) is None and spec.checked:
            data[spec.field_name] = "on"
    for name, value in inputs.items():
        spec = known[name]
        if value is None:
            continue
        if not spec.supported:
            raise ApiError(
                400,
                "invalid_inputs",
                f"'{name}' is a {spec.type} input, which the inbox cannot send; start this run "
                "in Dify instead.",
                details={name: [f"The inbox cannot send {spec.type} inputs."]},
            )
        if spec.type == "number":
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ApiError(
                    400,
                    "invalid_inputs",
                    f"'{name}' must be a number.",
                    details={name: ["Must be a number."]},
                )
        elif spec.type in _START_TYPES and not isinstance(value, _START_TYPES[spec.type]):
            expected = "true or false" if spec.type == "checkbox" else "a string"
            raise ApiError(
                400,
                "invalid_inputs",
                f"'{name}' must be {expected}.",
                details={name: [f"Must be {expected}."]},
            )
        if spec.type == "checkbox":
            if value:
                data[spec.field_name] = "on"
            continue
        data[spec.field_name] = value
    return data


@api_view(["POST"])
def runs_create(request: HttpRequest) -> HttpResponse:
    """`POST /api/v1/runs` `{"app", "inputs", "query" (chatflow), "user"?}` → 201 the run."""
    from inbox.dify.errors import DifyError, DifyStatusError
    from inbox.runs import StartFailed, StartRunForm, app_parameters, default_dify_user, start_run

    _require_may_start(request)
    body = json_body(request)
    app = _active_app(body)
    inputs = body.get("inputs", {})
    if not isinstance(inputs, dict):
        raise ApiError(400, "invalid_param", "'inputs' must be an object.")
    query = body.get("query", "")
    if not isinstance(query, str):
        raise ApiError(400, "invalid_param", "'query' must be a string.")
    if query and app.mode != DifyApp.Mode.CHATFLOW:
        raise ApiError(
            400,
            "invalid_param",
            f"'query' is for chatflow apps; {app.name} is a workflow and takes only 'inputs'.",
        )
    dify_user = _optional_text(body, "user", limit=255) or default_dify_user(request.user)
    try:
        parameters = app_parameters(app)
    except DifyError as exc:
        # Recorded as the start page does; a refusal of the start itself, and Dify taking it,
        # are recorded by `start_run` for both.
        if isinstance(exc, DifyStatusError) and exc.refuses_app:
            app.note_refused(exc, "start")
        raise ApiError(
            502, "dify_unavailable", f"Dify's parameters could not be read: {exc}"
        ) from None
    form = StartRunForm(app, parameters)
    data = _start_form_data(form.specs, inputs)
    if query:
        data["query"] = query
    form = StartRunForm(app, parameters, data)
    if not form.is_valid():
        errors = form.error_messages()
        message = " ".join(
            f"{name}: {text}" if name != "__all__" else text
            for name, texts in errors.items()
            for text in texts
        )
        raise ApiError(400, "invalid_inputs", message, details=errors)
    try:
        run = start_run(
            app,
            inputs=form.dify_inputs(),
            query=form.cleaned_data.get("query", ""),
            dify_user=dify_user,
            started_by=request.user,
            source="api",
            labels=form.labels,
        )
    except StartFailed as exc:
        raise ApiError(exc.status, exc.code, exc.message, retry_after=exc.retry_after) from None
    return JsonResponse(_run_json(request, run), status=201)


def _get_api_run(request: HttpRequest, public_id: Any) -> Any:
    from inbox.models import Run

    run = (
        Run.objects.for_user(request.user)
        .select_related("app", "started_by")
        .filter(public_id=public_id)
        .first()
    )
    if run is None:
        raise ApiError(404, "not_found", "No such run, or you may not see it.")
    return run


@api_view(["GET"])
def run_detail(request: HttpRequest, public_id: Any) -> HttpResponse:
    """`GET /api/v1/runs/{id}`: status, outputs, answer, timeline and forms (never a token)."""
    return JsonResponse(_run_json(request, _get_api_run(request, public_id)))


@api_view(["POST"])
def run_stop(request: HttpRequest, public_id: Any) -> HttpResponse:
    """`POST /api/v1/runs/{id}/stop` → 202; the run's end arrives through its stream."""
    from inbox.dify.errors import DifyError
    from inbox.runs import RunNotStoppable, stop_run

    run = _get_api_run(request, public_id)
    if not (request.user.is_staff or run.started_by_id == request.user.pk):
        raise ApiError(
            403, "forbidden", "Only who started a run, or an administrator, may stop it."
        )
    try:
        stop_run(run, actor=request.user)
    except RunNotStoppable as exc:
        raise ApiError(409, "not_stoppable", exc.message) from None
    except DifyError as exc:
        raise ApiError(502, "dify_error", f"Dify did not stop the run: {exc}") from None
    run.refresh_from_db()
    return JsonResponse(_run_json(request, run), status=202)


@api_view(["POST"])
def ingest(request: HttpRequest) -> HttpResponse:
    """`POST /api/v1/ingest` `{"app", "workflow_run_id", "user", "form_token"?}`: follow a run
    started elsewhere. 201 when recorded now, 200 when it was already (nothing changes)."""
    from inbox.runs import IngestRefused, ingest_run

    _require_may_start(request)
    body = json_body(request)
    app = _active_app(body)
    workflow_run_id = body.get("workflow_run_id")
    if (
        not isinstance(workflow_run_id, str)
        or not workflow_run_id.strip()
        or len(workflow_run_id) > 64
    ):
        raise ApiError(
            400, "invalid_param", "'workflow_run_id' is required: the run id Dify gave the run."
        )
    user = body.get("user")
    if not isinstance(user, str) or not user.strip() or len(user) > 255:
        raise ApiError(
            400, "invalid_param", "'user' is required: the Dify user that started the run."
        )
    token = body.get("form_token") or ""
    if not isinstance(token, str) or len(token) > 512:
        raise ApiError(400, "invalid_param", "'form_token' must be a string.")
    try:
        run, created = ingest_run(
            app,
            workflow_run_id=workflow_run_id.strip(),
            dify_user=user.strip(),
            form_token=token.strip(),
            actor=request.user,
        )
    except IngestRefused as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    return JsonResponse(_run_json(request, run), status=201 if created else 200)
