"""The JSON API (`/api/v1/...`), authenticated with per-user bearer tokens.

Every endpoint is a plain function view wrapped in `api_view`, which authenticates the token,
exempts the view from CSRF (there is no cookie session) and turns `ApiError` into a JSON error
envelope `{"error": {"code", "message", "details"?}}`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import re
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext, pgettext
from django.views.decorators.csrf import csrf_exempt

from inbox.forms import (
    DecisionForm,
    action_specs,
    answered_content,
    existing_decision,
    input_specs,
    joined,
    other_files,
    small_int,
)
from inbox.markdown import excerpt
from inbox.middleware import audit_context_of
from inbox.models import ApiToken, Decision, DifyApp, Form, FormNotOpen, Upload
from inbox.names import display_name
from inbox.reasons import Refused, labelled, sentence_gap, worded
from inbox.uploads import (
    UploadRejected,
    dropped_count,
    dropped_status,
    too_large,
    upload_to_dify,
)
from inbox.views import (
    PAGE_SIZE,
    SORTS,
    TAB_STATUSES,
    InboxFilters,
    inbox_rows,
    ordering,
    page_state,
    status_q,
)

logger = logging.getLogger(__name__)


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

    @classmethod
    def of(cls, refused: Refused) -> ApiError:
        """The answer to a call the inbox refused."""
        details = refused.details()
        return cls(
            refused.status,
            refused.code,
            refused.message,
            details or None,
            retry_after=refused.retry_after,
        )

    def response(self) -> JsonResponse:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        response = JsonResponse({"error": body}, status=self.status)
        if self.retry_after is not None:
            response["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        if self.status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="api"'
        return response


# Text PostgreSQL cannot store (NUL) or that cannot be encoded at all (a lone surrogate, which
# JSON's "\ud800" escape can carry): refused where it enters, by where it is.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _unstorable(text: str) -> str | None:
    match = _UNSTORABLE.search(text)
    if match is None:
        return None
    if match.group() == "\x00":
        return gettext("a NUL character")
    return gettext("a lone surrogate (invalid Unicode)")


def _check_query(request: HttpRequest, known: tuple[str, ...]) -> None:
    for key, values in request.GET.lists():
        for text in [key, *values]:
            if what := _unstorable(text):
                raise ApiError(
                    400,
                    "invalid_param",
                    gettext("The query parameter %(name)s holds %(what)s.")
                    % {"name": repr(key), "what": what},
                )
    # As with body fields: a misspelt filter (`stauts=submitted`) would otherwise be dropped in
    # silence and the answer would look like the one asked for.
    unknown = sorted(key for key in request.GET if key not in known)
    if unknown:
        message = (
            gettext("Unknown query parameter %(name)s; it takes %(known)s.")
            if known
            else gettext("Unknown query parameter %(name)s; it takes none.")
        )
        raise ApiError(
            400,
            "invalid_param",
            message % {"name": repr(unknown[0][:40]), "known": ", ".join(known)},
            details={key[:40]: [gettext("Unknown query parameter.")] for key in unknown[:20]},
        )
    # Each takes one value: `mine=1&mine=0` would otherwise answer for the last one alone.
    repeated = sorted(key for key, values in request.GET.lists() if len(values) > 1)
    if repeated:
        raise ApiError(
            400,
            "invalid_param",
            gettext("The query parameter %(name)s is given more than once; it takes one value.")
            % {"name": repr(repeated[0])},
            details={key: [gettext("Given more than once.")] for key in repeated},
        )


def api_view(
    methods: list[str], *, query: tuple[str, ...] = ()
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """A call of the API: its methods (HEAD with GET), the bearer token, JSON errors, and the
    query parameters it takes (`query`, for GET; any other is refused by name)."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        allowed = [*methods, "HEAD"] if "GET" in methods else methods

        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method != "HEAD" or "GET" not in methods:
                return answer(request, *args, **kwargs)
            # HEAD is GET without the body: the same status and headers, its length included.
            request.method = "GET"
            try:
                response = answer(request, *args, **kwargs)
            finally:
                request.method = "HEAD"
            length = len(response.content)
            response.content = b""
            response["Content-Length"] = str(length)
            return response

        def answer(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                if request.method not in methods:
                    response = ApiError(
                        405,
                        "method_not_allowed",
                        gettext("Use %(methods)s.") % {"methods": " / ".join(methods)},
                    ).response()
                    response["Allow"] = ", ".join(allowed)
                    return response
                header = request.headers.get("Authorization", "")
                scheme, _, raw = header.partition(" ")
                if scheme.lower() != "bearer" or not raw.strip():
                    raise ApiError(
                        401, "unauthorized", gettext("Send 'Authorization: Bearer <token>'.")
                    )
                token = ApiToken.authenticate_token(raw.strip())
                if token is None:
                    # Only the token's holder learns its account was deactivated: a guess at a
                    # token matches none.
                    if ApiToken.of_deactivated_account(raw.strip()):
                        message = gettext(
                            "The API token's account is deactivated; an administrator can "
                            "activate it again."
                        )
                    else:
                        message = gettext("The API token is not valid.")
                    raise ApiError(401, "unauthorized", message)
                request.user = token.user
                request.api_token = token  # type: ignore[attr-defined]
                _check_query(request, query if request.method == "GET" else ())
                # Each entry the call records says it came through the API, and which token
                # (its id and prefix, never the secret): a token that leaked is traced.
                with audit_context_of(via="api", token_id=token.pk, token_prefix=token.prefix):
                    return view(request, *args, **kwargs)
            except ApiError as exc:
                return exc.response()
            # Django's own answers to these would be HTML pages.
            except RequestDataTooBig:
                return ApiError(
                    413,
                    "request_too_large",
                    gettext(
                        "The request body is over %(size)d bytes; files go to the upload call, "
                        "one at a time."
                    )
                    % {"size": settings.DATA_UPLOAD_MAX_MEMORY_SIZE},
                ).response()
            except MultiPartParserError as exc:
                return ApiError(
                    400,
                    "invalid_request",
                    gettext("The multipart body could not be read: %(error)s") % {"error": exc},
                ).response()
            except SuspiciousOperation as exc:
                # Too many fields or file parts, among others: said, not logged as an attack.
                return ApiError(400, "invalid_request", str(exc)).response()
            except (OperationalError, InterfaceError) as exc:
                # The database away (PostgreSQL restarting, the network): worth a retry.
                logger.warning(
                    "API %s %s: database unavailable: %s",
                    request.method,
                    request.path,
                    " ".join(str(exc).split())[:500] or type(exc).__name__,
                )
                return database_unavailable().response()
            except Exception:
                logger.exception("API %s %s failed", request.method, request.path)
                return ApiError(
                    500,
                    "internal_error",
                    gettext(
                        "The inbox failed to answer this request; nothing was changed by it. "
                        "It was logged for the administrators."
                    ),
                ).response()

        return wrapper

    return decorate


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's 400 for what is refused before any view runs (a Host header ALLOWED_HOSTS
    does not hold, among others): in the API's shape under /api/, the page elsewhere."""
    from django.core.exceptions import DisallowedHost
    from django.views import defaults

    if not request.path.startswith("/api/"):
        return defaults.bad_request(request, exception)  # type: ignore[arg-type]
    if isinstance(exception, DisallowedHost):
        message = gettext("The request's Host header names no address this server answers to.")
    else:
        message = gettext("The request was refused as malformed.")
    return ApiError(400, "invalid_request", message).response()


# Seconds a client is asked to wait when the database does not answer.
UNAVAILABLE_RETRY_AFTER = 30


def database_unavailable() -> ApiError:
    return ApiError(
        503,
        "unavailable",
        gettext(
            "The inbox cannot reach its database just now; try again shortly (a decision or "
            "start sent again with its submission_key counts once)."
        ),
        retry_after=UNAVAILABLE_RETRY_AFTER,
    )


def server_error(request: HttpRequest) -> HttpResponse:
    """Django's 500 for a failure outside the API's views (in a middleware, or any page's): in
    the API's shape under /api/, the page elsewhere. A database that does not answer (a
    connection failure) is a 503 with Retry-After instead: a retry will do."""
    import sys

    from django.template import loader
    from django.views import defaults

    # Django calls this while handling the exception, so it is still at hand.
    if isinstance(sys.exc_info()[1], OperationalError | InterfaceError):
        if request.path.startswith("/api/"):
            return database_unavailable().response()
        # The page asks nothing of the database, like the 500 page.
        response = HttpResponse(loader.get_template("503.html").render(), status=503)
        response["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER)
        return response
    if not request.path.startswith("/api/"):
        return defaults.server_error(request)
    return ApiError(
        500,
        "internal_error",
        gettext("The inbox failed to answer this request. It was logged for the administrators."),
    ).response()


@csrf_exempt
def not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    """Any other address under /api/: an answer in the API's shape, not an HTML page (and to
    HEAD, what GET would get, without its body)."""
    method = "GET" if request.method == "HEAD" else request.method
    response = ApiError(
        404,
        "not_found",
        gettext("No such API address: %(method)s %(path)s")
        % {"method": method, "path": request.path},
    ).response()
    if request.method == "HEAD":
        response["Content-Length"] = str(len(response.content))
        response.content = b""
    return response


def json_body(request: HttpRequest) -> dict[str, Any]:
    """The request's JSON object, or a 400 that says what is wrong with it."""
    if not request.body:
        raise ApiError(400, "invalid_json", gettext("The request body must be a JSON object."))
    try:
        body = json.loads(request.body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if not _json_content_type(request):
            # A form post or a file sent to a JSON call: say what the call takes, not where
            # the parser stumbled. (A JSON body sent as text/plain or with no Content-Type is
            # still read as JSON: clients that do that keep working.)
            sent = request.content_type or gettext("no Content-Type")
            raise ApiError(
                400,
                "invalid_json",
                gettext(
                    "This call takes a JSON object as its body, sent with 'Content-Type: "
                    "application/json'; this body (%(sent)s) is not JSON."
                )
                % {"sent": sent},
            ) from None
        raise ApiError(
            400,
            "invalid_json",
            # Where the parser stopped, not its (English) words.
            gettext("The request body is not valid JSON (line %(line)d, column %(column)d).")
            % {"line": exc.lineno, "column": exc.colno}
            if isinstance(exc, json.JSONDecodeError)
            else gettext("The request body is not valid JSON: it is not UTF-8 text."),
        ) from None
    except (ValueError, RecursionError):
        # Valid JSON that Python will not read: an integer of over 4,300 digits, or arrays
        # nested thousands deep.
        raise ApiError(
            400,
            "invalid_json",
            gettext("The request body holds a number too long or nesting too deep."),
        ) from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", gettext("The request body must be a JSON object."))
    if where := _unstorable_in(body, ""):
        path, what = where
        raise ApiError(
            400,
            "invalid_json",
            gettext("The request body holds %(what)s in %(path)s.") % {"what": what, "path": path},
            details={path: [gettext("Holds %(what)s.") % {"what": what}]},
        )
    return body


def _json_content_type(request: HttpRequest) -> bool:
    """Whether the request says its body is JSON: application/json, or a `+json` type."""
    kind = (request.content_type or "").lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


def _unstorable_in(value: Any, path: str) -> tuple[str, str] | None:
    """Where a JSON value holds text that cannot be stored or sent, as `inputs.note`."""
    if isinstance(value, str):
        what = _unstorable(value)
        return (path or "body", what) if what else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if what := _unstorable(key):
                return (
                    gettext("a key of %(path)s") % {"path": path} if path else gettext("a key"),
                    what,
                )
            if found := _unstorable_in(item, where):
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            if found := _unstorable_in(item, f"{path}[{index}]"):
                return found
    return None


def _refuse_unknown_keys(body: dict[str, Any], known: tuple[str, ...]) -> None:
    """A misspelt key ("submision_key") would be dropped in silence, and with it what it was
    for: refused by its name instead."""
    unknown = sorted(set(body) - set(known))
    if unknown:
        message = (
            gettext("Unknown field %(name)s; this call takes: %(known)s.")
            if known
            else gettext("Unknown field %(name)s; this call takes none.")
        )
        raise ApiError(
            400,
            "invalid_param",
            message % {"name": repr(unknown[0]), "known": ", ".join(known)},
            details={name: [gettext("Unknown field.")] for name in unknown},
        )


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
        raise ApiError(404, "not_found", gettext("No such form, or you may not see it."))
    return form


def _decision_json(decision: Decision | None) -> dict[str, Any] | None:
    if decision is None:
        return None
    return {
        "id": str(decision.public_id),
        "status": decision.status,
        "action": decision.action_id,
        # As sent to Dify: text as typed, files as Dify's upload ids (each with the id our
        # upload call returned for it, `upload`) or web addresses.
        "inputs": _with_upload_ids(decision),
        "decided_by": decision.decider_label,
        # Who, as a program matches them: the reviewer's username (as a run's `started_by`), or
        # the address of a guest who decided through an emailed link.
        "decided_by_username": decision.decider_username,
        "decided_by_email": decision.guest_email or None,
        "last_error": decision.last_error,
        # Queued, but waiting for Dify to accept the app again (a refused key).
        "held": decision.held_for_app,
        "created_at": _iso(decision.created_at),
        "delivered_at": _iso(decision.delivered_at),
        # Delivered, but Dify never said the answer it took was this one (a lost answer, then
        # "already submitted"): presumed ours.
        "delivery_presumed": decision.delivery_presumed,
    }


def _with_upload_ids(decision: Decision) -> dict[str, Any]:
    inputs = decision.inputs or {}
    wanted = [
        str(item["upload_file_id"])
        for value in inputs.values()
        for item in (value if isinstance(value, list) else [value])
        if isinstance(item, dict) and item.get("upload_file_id")
    ]
    if not wanted:
        return inputs
    ours = dict(
        Upload.objects.filter(form_id=decision.form_id, upload_file_id__in=wanted).values_list(
            "upload_file_id", "public_id"
        )
    )

    def named(item: Any) -> Any:
        if isinstance(item, dict) and item.get("upload_file_id") in ours:
            return {**item, "upload": str(ours[item["upload_file_id"]])}
        return item

    return {
        name: [named(item) for item in value] if isinstance(value, list) else named(value)
        for name, value in inputs.items()
    }


def _form_summary(request: HttpRequest, form: Form, content: str) -> dict[str, Any]:
    return {
        "id": str(form.public_id),
        "status": form.status_now,
        "app": form.run.app.name,
        "run": {
            "id": str(form.run.public_id),
            "status": form.run.status,
            "workflow_run_id": form.run.workflow_run_id,
            # A chatflow's form: the conversation and the message its run is in it.
            **_conversation_json(form.run, getattr(form, "run_turn", _UNKNOWN)),
        },
        "node_id": form.node_id,
        "node_title": form.node_title,
        "excerpt": excerpt(content),
        "created_at": _iso(form.created_at),
        "expiration_time": _iso(form.expiration_time),
        # Who is handling the open form (taken in the inbox), as the inbox's rows say it.
        "claimed_by": _holder(form),
        "url": request.build_absolute_uri(reverse("inbox:form", args=[form.public_id])),
    }


_UNKNOWN = object()


def _conversation_json(run: Any, turn: Any = _UNKNOWN) -> dict[str, Any]:
    """A run's place in its chatflow's conversation: Dify's `conversation_id` (null for a
    workflow, or a start Dify never named), what the message asked (`query`), and `turn`, its
    number among the conversation's messages in the inbox (null for a start Dify never took,
    which is no message of it). `turn`: as annotated on a list's rows (`turn_number`), else
    counted here."""
    from inbox.runs import turn_of

    return {
        "conversation_id": run.conversation_id or None,
        "query": run.query,
        "turn": turn_of(run) if turn is _UNKNOWN else turn,
    }


def _holder(form: Form) -> dict[str, str] | None:
    user = form.claimed_by if form.claimed_by_id and form.status_now == "pending" else None
    if user is None:
        return None
    return {"username": user.get_username(), "name": display_name(user)}


@api_view(["GET"], query=("status", "app", "node", "q", "sort", "page", "page_size", "mine"))
def forms_list(request: HttpRequest) -> HttpResponse:
    """`GET /api/v1/forms?status=pending&app=&node=&q=&sort=&page=&page_size=`"""
    status = request.GET.get("status") or "pending"
    statuses: tuple[str, ...] | None
    if status == "all":
        statuses = None
    elif status in TAB_STATUSES:
        # The inbox's tabs: "submitted" holds those on their way to Dify too, as on the page.
        statuses = TAB_STATUSES[status]
    elif status in Form.Status.values:
        statuses = (status,)
    else:
        known = sorted({"all", *TAB_STATUSES, *Form.Status.values})
        raise _unknown_value("status", status, known)
    if request.GET.get("mine", "") not in ("", "0", "1"):
        raise _param_error(
            "mine",
            gettext("'mine' is 1 (only forms assigned to you) or 0; got %(value)s.")
            % {"value": repr(request.GET["mine"][:20])},
            gettext("1 or 0."),
        )
    page, size = _paging(request, PAGE_SIZE)
    query = request.GET.copy()
    sort = query.get("sort", "")
    if sort and sort not in SORTS:
        raise _unknown_value("sort", sort, sorted(SORTS))
    if name := query.get("app", ""):
        query["app"] = str(_app_named(name).pk)
    filters = InboxFilters.from_query(query, request.user)
    forms = filters.apply(Form.objects.for_user(request.user), with_status=False)
    if statuses is not None:
        forms = forms.filter(status_q(statuses, timezone.now()))
    total = forms.count()
    pages = max(1, -(-total // size))
    # One form status is ordered as its tab is (the tab's index serves it).
    tab = next((key for key, held in TAB_STATUSES.items() if status in held), status)
    # A page past the last is empty, so a client reading page after page stops there.
    rows = (
        inbox_rows(forms).order_by(*ordering(filters.sort, tab))[(page - 1) * size : page * size]
        if page <= pages
        else []
    )
    return JsonResponse(
        {
            "count": total,
            "page": page,
            "pages": pages,
            "page_size": size,
            "next_page": page + 1 if page < pages else None,
            "results": [_form_summary(request, f, getattr(f, "content_head", "")) for f in rows],
        }
    )


@api_view(["GET"])
def form_detail(request: HttpRequest, public_id: Any) -> HttpResponse:
    """`GET /api/v1/forms/{id}`: the definition, never the token."""
    form = _get_api_form(request, public_id)
    definition = form.definition or {}
    decision = form.decisions.select_related("reviewer").first()
    body = _form_summary(request, form, form.content)
    body.update(
        {
            "answerable": page_state(form) == "open",
            "content": form.content or definition.get("form_content", ""),
            "inputs": _form_inputs_json(form, definition),
            "resolved_default_values": definition.get("resolved_default_values") or {},
            "actions": [
                {"id": a.id, "title": a.title, "button_style": a.button_style}
                for a in action_specs(definition)
            ],
            "approval_channels": form.approval_channels or [],
            "decided_at": _iso(form.decided_at),
            # Dify's own record of the answer when a fill event brought it; else, once
            # submitted, the content filled with what was sent, as the page shows it.
            "rendered_content": form.rendered_content
            or (answered_content(form, decision) if form.status == Form.Status.SUBMITTED else ""),
            "filled_action_id": form.filled_action_id,
            "filled_action_text": form.filled_action_text,
            "uploads": [
                {
                    "id": str(u.public_id),
                    "input": u.input_name,
                    "name": u.name,
                    "size": u.size,
                    "type": u.category,
                    "mime_type": u.mime_type,
                }
                # The caller's own, as on the page: another reviewer's files are theirs.
                for u in Upload.owned(form, reviewer=request.user)
            ],
            "decision": _decision_json(decision),
            # As for its run: whether Dify can be reached for the app, and the run followed.
            "dify": _dify_json(form.run),
        }
    )
    return JsonResponse(body)


def _form_inputs_json(form: Form, definition: dict[str, Any]) -> list[dict[str, Any]]:
    """A form's inputs as Dify defines them; a file input that takes uploads adds the largest
    file per kind Dify takes (`max_file_sizes`, in bytes, as the page names them beside it:
    the app's `GET /parameters` limits, Dify's defaults while it cannot be asked); null for
    one that takes web addresses only."""
    from inbox.uploads import size_limits, upload_limits

    specs = {spec.name: spec for spec in input_specs(definition) if spec.is_file}
    limits: dict[str, int] | None = None
    inputs = []
    for raw in definition.get("inputs") or []:
        if not isinstance(raw, dict):
            continue
        item = {k: raw[k] for k in _INPUT_KEYS if k in raw}
        spec = specs.get(str(raw.get("output_variable_name")))
        if spec is not None:
            if spec.allows_upload and limits is None:
                limits = upload_limits(form.run.app)
            item["max_file_sizes"] = size_limits(spec, limits or {}) if spec.allows_upload else None
        inputs.append(item)
    return inputs


def _refuse_closed(form: Form) -> None:
    """409: who got there first, when, and with which action (or why it closed otherwise)."""
    refusal = form.refusal(force=True)
    # The message says a time as a reader on the page would; the details say it exactly.
    details: dict[str, Any] = {"status": form.status_now}
    if refusal.decision:
        details["decision"] = _decision_json(refusal.decision)
    if form.expired_at is not None:
        details["expired_at"] = _iso(form.expired_at)
    raise ApiError(409, "form_not_open", str(refusal), details=details)


@api_view(["POST"])
def form_files(request: HttpRequest, public_id: Any) -> HttpResponse:
    """`POST /api/v1/forms/{id}/files` (multipart: `input`, `file`): upload to Dify first."""
    form = _get_api_form(request, public_id)
    if page_state(form) != "open":
        _refuse_closed(form)
    for key in request.POST:
        if key != "input":
            raise _param_error(
                key,
                gettext("Unknown field %(name)s; send 'input' and 'file'.") % {"name": repr(key)},
                gettext("Unknown field."),
            )
    _file_part_only(request)
    files = len(request.FILES.getlist("file")) + dropped_count(request)
    if len(request.POST.getlist("input")) > 1 or files > 1:
        raise ApiError(
            400,
            "invalid_param",
            gettext("Send one 'input' and one 'file' per call; upload each file on its own."),
            details={
                key: [gettext("Given more than once.")]
                for key, many in (("input", len(request.POST.getlist("input"))), ("file", files))
                if many > 1
            },
        )
    if "input" not in request.POST:
        # A JSON body, or a multipart one without the field: nothing names the input.
        raise _param_error(
            "input",
            gettext(
                "This call takes a multipart/form-data body: an 'input' field with the name of "
                "the form's file input, and the file in a part named 'file'."
            ),
            gettext("Required: the name of one of the form's file inputs."),
        )
    name = request.POST.get("input", "")
    specs = input_specs(form.definition or {})
    spec = next((s for s in specs if s.name == name), None)
    if spec is None or not spec.is_file:
        known = ", ".join(s.name for s in specs if s.is_file) or gettext("none")
        raise _param_error(
            "input",
            gettext("%(name)s is not a file input of this form; its file inputs: %(known)s.")
            % {"name": repr(name), "known": known},
            gettext("Not a file input of this form."),
        )
    fileobj = _the_file(request)
    try:
        upload = upload_to_dify(form, spec, fileobj, request.user)
    except UploadRejected as exc:
        raise _upload_refused(exc) from None
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


def _upload_refused(exc: UploadRejected) -> ApiError:
    """An upload the inbox or Dify refused, in the API's shape: the file's own fault
    (`upload_rejected`) is said of the `file` field in `details` too, beside Dify's status
    and code when Dify refused it."""
    error = ApiError.of(exc)
    if exc.code == "upload_rejected":
        error.details = {"file": [exc.message], **(error.details or {})}
    return error


def _file_refs(spec: Any, value: Any) -> list[str] | tuple[str, str] | None:
    """An API file value as the form's references: upload ids and web addresses; or, when it is
    none, the sentence and the detail that say so, by the input's name. A file is the id the
    upload call returned (as a string, or `{"upload": id}`) or, where the input takes them, a
    web address (as a string, or `{"url": ...}`); a `file` input takes one file (or null), a
    `file-list` a list of them."""
    from inbox.forms import is_upload_id

    name = spec.name
    if value is None:
        return None
    if spec.kind == "file-list" and not isinstance(value, list):
        said = worded(
            gettext(
                'A file list takes a list of files, even of one: [id] or [{"upload": id}], not '
                "%(type)s."
            ),
            type=_json_type(value),
        )
        return labelled(name, said), said
    if spec.kind == "file" and isinstance(value, list):
        said = gettext(
            'This input takes one file, not a list: its id as a string or as {"upload": id} '
            "(or null for none)."
        )
        return labelled(name, said), said
    items = value if isinstance(value, list) else [value]
    refs = []
    for item in items:
        ref = item
        by_url = False
        if isinstance(item, dict):
            by_url = "url" in item and not ("upload" in item or "upload_id" in item)
            # `upload_id` and `id`: read as they were before `upload` was documented.
            ref = item.get("upload") or item.get("upload_id") or item.get("url") or item.get("id")
        if not isinstance(ref, str):
            shape = gettext(
                "A file is the id the upload call (/files) returned, as a string or as "
                '{"upload": id}, or a web address, as a string or as {"url": "https://..."}.'
            )
            return labelled(name, shape), shape
        if not by_url and not (
            ref.strip().lower().startswith(("http://", "https://")) or is_upload_id(ref.strip())
        ):
            # Neither a web address nor an upload id: an id typed wrong or from another field,
            # said as such rather than as a web address typed wrong.
            said = gettext(
                "%(ref)s is not an upload id: give the id the upload call (/files) returned, or "
                "a web address starting with http:// or https://."
            ) % {"ref": repr(ref[:80])}
            return labelled(name, said), said
        refs.append(ref)
    return refs


def _scoped_key(user: Any, given: str) -> str:
    """A client's submission key as stored: its own, apart from every other caller's (two
    clients may both pick "1"), and from the page's keys, in the column's 64 characters."""
    return "api-" + hashlib.sha256(f"{user.pk}:{given}".encode()).hexdigest()[:60]


def _submission_key(request: HttpRequest, body: dict[str, Any]) -> str:
    """The body's `submission_key` as stored ("" when none was sent). An empty one is refused:
    taken as none, two calls sent with it would be two decisions or two runs."""
    given = body.get("submission_key")
    if given is None:
        return ""
    if not isinstance(given, str) or not 1 <= len(given) <= 64:
        raise _param_error(
            "submission_key",
            gettext(
                "'submission_key' must be a string of 1 to 64 characters (any characters), or "
                "be left out."
            ),
            gettext("A string of 1 to 64 characters."),
        )
    return _scoped_key(request.user, given)


def _other_text(decision: Decision, form: Form, inputs: dict[str, Any]) -> list[str]:
    """The text inputs to which a decision sent again under its key gives another value."""
    stored = decision.inputs or {}
    return [
        spec.name
        for spec in input_specs(form.definition or {})
        if not spec.is_file and spec.name in inputs and stored.get(spec.name) != inputs[spec.name]
    ]


def _sent_files(value: Any) -> list[str] | None:
    """A file input's value as sent again, read only to compare it with the decision's files
    (`other_files`): its references (upload ids, web addresses), a single one or a list, in any
    spelling a decision takes; None when it holds something that is no file reference. Not
    checked: a first sending is (`_file_refs`)."""
    refs = []
    for item in value if isinstance(value, list) else [] if value is None else [value]:
        ref = item
        if isinstance(item, dict):
            ref = item.get("upload") or item.get("upload_id") or item.get("url") or item.get("id")
        if not isinstance(ref, str):
            return None
        refs.append(ref)
    return refs


def _reused_key(decision: Decision, form: Form, action: str, inputs: dict[str, Any]) -> None:
    """A decision sent again under its key must be that decision: another action, other values
    or other files under it are another decision, which a 202 would make look accepted. A 409
    `submission_key_reused` that says what differs (`details.differs`: `action`, and
    `inputs.<name>` for each input)."""
    texts = _other_text(decision, form, inputs)
    files = other_files(
        decision,
        form,
        {
            spec.name: _sent_files(inputs[spec.name])
            for spec in input_specs(form.definition or {})
            if spec.is_file and spec.name in inputs
        },
    )
    differs = decision.action_id != action
    if not (differs or texts or files):
        return
    said = []
    if differs:
        said.append(
            gettext("another action (it was %(action)s)") % {"action": repr(decision.action_id)}
        )
    if texts:
        said.append(gettext("other values for %(names)s") % {"names": joined(texts)})
    if files:
        said.append(gettext("other files for %(names)s") % {"names": joined(files)})
    raise ApiError(
        409,
        "submission_key_reused",
        gettext(
            "This submission_key was already used for a decision on this form, and this one "
            "differs from it: %(what)s. Send a new key for another decision."
        )
        % {"what": pgettext("differences, one after another", "; ").join(said)},
        details={
            "decision": _decision_json(decision),
            "differs": (["action"] if differs else [])
            + [f"inputs.{name}" for name in [*texts, *files]],
        },
    )


def _refuse_undelivered(form: Form, decision: Decision) -> None:
    """A decision sent again under its key that will not reach Dify as it stands: a 409 that
    says what became of it, never the 202 of a decision on its way. Rejected: Dify refused it
    (its values, or the form had closed there), so a new decision needs a new key. Failed: its
    delivery gave up; an administrator may retry it."""
    if decision.status not in (Decision.Status.REJECTED, Decision.Status.FAILED):
        return
    reason = (decision.last_error or gettext("no reason was given")).rstrip()
    if not reason.endswith((".", "!", "?", "\u3002")):
        reason += "."  # its own sentence: ours follows it
    details = {"decision": _decision_json(decision), "status": form.status_now}
    if decision.status == Decision.Status.FAILED:
        raise ApiError(
            409,
            "decision_failed",
            gettext(
                "The decision sent under this submission_key was not delivered: %(reason)s An "
                "administrator may retry its delivery."
            )
            % {"reason": reason},
            details=details,
        )
    message = (
        gettext(
            "Dify rejected the decision sent under this submission_key: %(reason)s The form is "
            "open again: send the decision under a new submission_key."
        )
        if page_state(form) == "open"
        else gettext("Dify rejected the decision sent under this submission_key: %(reason)s")
    )
    raise ApiError(
        409,
        "decision_rejected",
        message % {"reason": reason},
        details=details,
    )


@api_view(["POST"])
def form_decision(request: HttpRequest, public_id: Any) -> HttpResponse:
    """`POST /api/v1/forms/{id}/decision` `{"action", "inputs", "submission_key"?}` → 202."""
    form = _get_api_form(request, public_id)
    body = json_body(request)
    _refuse_unknown_keys(body, ("action", "inputs", "submission_key"))
    inputs = body.get("inputs", {})
    if not isinstance(inputs, dict):
        raise ApiError(
            400,
            "invalid_form_data",
            gettext("'inputs' must be an object."),
            details={"inputs": [gettext("Must be an object.")]},
        )
    action = body.get("action")
    if not isinstance(action, str) or not action:
        names = ", ".join(a.id for a in action_specs(form.definition or {}))
        said = (
            gettext("'action' is required: the id of one of this form's actions (%(names)s).")
            if action is None or action == ""
            else gettext(
                "'action' must be a string: the id of one of this form's actions (%(names)s)."
            )
        )
        raise ApiError(
            400,
            "invalid_form_data",
            said % {"names": names},
            details={
                "action": [gettext("Must be the id of one of the form's actions, as a string.")]
            },
        )
    key = _submission_key(request, body)
    if key:
        decision = existing_decision(form, key)
        if decision is not None:
            _reused_key(decision, form, action, inputs)
            _refuse_undelivered(form, decision)
            return JsonResponse({"decision": _decision_json(decision)}, status=202)
        if Decision.objects.filter(submission_key=key).exclude(form=form).exists():
            raise ApiError(
                409,
                "submission_key_reused",
                gettext(
                    "You used this submission_key for a decision on another form; send a new key."
                ),
                details={"submission_key": [gettext("Used for a decision on another form.")]},
            )
    if page_state(form) != "open":
        _refuse_closed(form)
    dform = DecisionForm(form, require_every_key=True)
    # Dify would store a key the form does not have with the submission (CONTRACT 4): a typo
    # is refused here instead, by its name.
    _refuse_unknown(inputs, [spec.name for spec in dform.specs], "invalid_form_data", "form")
    data: dict[str, Any] = {"action": action, "submission_key": key}
    # A value of the wrong JSON type is said with the form's own errors of the others, every
    # input's at once (as a start says them): left out of the form's data (sent as none, so not
    # "missing"), what the form says of it gives way to that.
    wrong: dict[str, tuple[str, str]] = {}
    for spec in dform.specs:
        if spec.name not in inputs:
            continue
        value = inputs[spec.name]
        if spec.is_file:
            refs = _file_refs(spec, value)
            if isinstance(refs, tuple):
                wrong[spec.name] = refs
                refs = None
            data[spec.field_name] = refs
        elif isinstance(value, str):
            data[spec.field_name] = value
        else:
            # A paragraph or a select is text; Dify would store a number or an object as
            # whatever Python prints for it (CONTRACT D4), as starting a run refuses it.
            wrong[spec.name] = (
                gettext("'%(field)s' must be a string.") % {"field": spec.name},
                gettext("Must be a string."),
            )
            data[spec.field_name] = ""
    dform = DecisionForm(
        form, data, require_every_key=True, uploads=Upload.owned(form, reviewer=request.user)
    )
    if not dform.is_valid() or wrong:
        # Keyed as the request names them: an input by its name, not the page's field name;
        # in the form's order, the action first and the form's own errors last.
        named = {spec.field_name: spec.name for spec in dform.specs}
        found = {
            named.get(field, field): [str(e) for e in errs] for field, errs in dform.errors.items()
        }
        order = ["action", "submission_key", *(spec.name for spec in dform.specs), "__all__"]
        details: dict[str, Any] = {}
        sentences: list[str] = []
        for name in dict.fromkeys([*order, *found]):
            if name in wrong:
                details[name] = [wrong[name][1]]
                sentences.append(wrong[name][0])
            elif name in found:
                details[name] = found[name]
                sentences += [
                    labelled(name, text) if name in named.values() else text for text in found[name]
                ]
        # Every input must be sent (CONTRACT 4): each one left out is named on its own too.
        for spec in dform.specs:
            if spec.name not in inputs:
                details.setdefault(
                    spec.name, [gettext("Missing: every input of the form must be sent.")]
                )
        raise ApiError(400, "invalid_form_data", sentence_gap().join(sentences), details=details)
    try:
        decision = dform.save(reviewer=request.user)
    except FormNotOpen:
        # Another decision got there first (between the check above and the form's lock): told
        # as any closed form is, with its status and who decided.
        form.refresh_from_db()
        _refuse_closed(form)
    return JsonResponse({"decision": _decision_json(decision)}, status=202)


# ---------------------------------------------------------------------------------------------
# Runs: start, read, stop, and ingest runs started elsewhere. Never a form token in an answer.
# ---------------------------------------------------------------------------------------------


def _run_summary(request: HttpRequest, run: Any) -> dict[str, Any]:
    """A run as the list shows it; its detail adds inputs, outputs, forms and timeline."""
    return {
        "id": str(run.public_id),
        "app": run.app.name,
        # None until Dify has named the run (and for a start it never named).
        "workflow_run_id": run.workflow_run_id or None,
        "status": run.status,
        **_conversation_json(run, getattr(run, "turn", _UNKNOWN)),
        "dify_user": run.dify_user,
        "source": run.source,
        "error": run.error,
        # As it was when they started it: kept once their account is deleted.
        "started_by": run.started_by.get_username()
        if run.started_by
        else (run.started_by_username or None),
        "created_at": _iso(run.created_at),
        "finished_at": _iso(run.finished_at),
        "url": request.build_absolute_uri(reverse("inbox:run", args=[run.public_id])),
    }


def _dify_json(run: Any) -> dict[str, Any]:
    """Whether the inbox is in touch with Dify for this run, as the run and form pages say it
    (never Dify's message, which may quote the set-up: only its status and our reason).

    `state`: `ok`; `unreachable` (Dify did not answer the app's last calls: no connection, no
    answer in time, a 5xx; `reason` `streams_failing` when it was the run's event streams,
    else `not_reachable`); `refused` (Dify refuses the app: `reason` `app_not_found` when it
    answers 404 for the app as a whole, else `refused`, with Dify's HTTP status; a mode set up
    here that Dify's does not match refuses only starts, and is `ok` here); or `unpublished`
    (Dify says the app is not available, `reason` `app_unavailable`: it may have no published
    workflow, so no run of it can start, while the run's forms arrive and decisions on them
    go). `since`: when that began. `following`: `given_up` while the follower has given up on
    the run's events for now (its next try at `next_try`, when known), `key_unreadable` while a
    running follower cannot decrypt the app's API key with its INBOX_ENCRYPTION_KEYS (the run
    waits for a follower that can), else `ok`; `ended` once the run has ended. While the app is
    `unreachable` or `refused`, no new form of the run arrives and decisions wait."""
    app = run.app
    body = _app_health_json(app)
    given_up = bool(run.give_ups) and not run.is_finished and not run.events_unavailable
    next_try = run.refollow_after if given_up and run.refollow_after else None
    if run.is_finished:
        body["following"] = "ended"
    elif app.key_unreadable_now:
        body["following"] = "key_unreadable"
    else:
        body["following"] = "given_up" if given_up else "ok"
    body["next_try"] = _iso(next_try) if next_try and next_try > timezone.now() else None
    return body


def _app_health_json(app: DifyApp, *, starts: bool = False) -> dict[str, Any]:
    """What the inbox has on record of its touch with Dify for `app` (`_dify_json`'s `state`,
    `since`, `reason`, `dify_status`). `starts`: said of starting runs (the apps' list), where
    a mode set up here that Dify's does not match is `refused` too (`reason` `mode_mismatch`),
    as are a key this process cannot read (`reason` `api_key_unreadable`, nothing asked of
    Dify) and an app whose last connection test found a plain chat, completion or agent app
    (`reason` `app_unusable`: no Human Input node)."""
    from inbox.app_check import unusable_mode
    from inbox.models import APP_NOT_FOUND_REFUSAL

    if starts and app.api_key_sealed:
        return {
            "state": "refused",
            "since": None,
            "reason": "api_key_unreadable",
            "dify_status": None,
        }
    if starts and unusable_mode(app):
        return {"state": "refused", "since": None, "reason": "app_unusable", "dify_status": None}
    if app.unpublished:
        # Only starts need a published workflow: the runs' events, forms and submits go on.
        # (Said `refused`, `reason` `refused`, before: the README's API notes say so.)
        return {
            "state": "unpublished",
            "since": _iso(app.refused_at),
            "reason": "app_unavailable",
            "dify_status": app.refusal_status,
        }
    if app.refused_at is not None and (starts or not app.mode_mismatch):
        # (A mode set up here that Dify's does not match refuses only starts: the run's forms,
        # events and decisions go through, CONTRACT 7.10.)
        reason = (
            "mode_mismatch"
            if app.mode_mismatch
            else "app_not_found"
            if app.refusal_code == APP_NOT_FOUND_REFUSAL
            else "refused"
        )
        return {
            "state": "refused",
            "since": _iso(app.refused_at),
            "reason": reason,
            "dify_status": app.refusal_status,
        }
    if app.contact_failed_at is not None:
        return {
            "state": "unreachable",
            "since": _iso(app.contact_failed_since or app.contact_failed_at),
            "reason": "streams_failing" if app.streams_failing else "not_reachable",
            "dify_status": app.contact_failure_status,
        }
    return {"state": "ok", "since": None, "reason": None, "dify_status": None}


def _run_json(request: HttpRequest, run: Any) -> dict[str, Any]:
    forms = list(run.forms.order_by("created_at", "id"))
    # As on the run page: every form of the run is listed, but only those the caller may open
    # carry their address and may be answerable by them.
    visible = set(Form.objects.for_user(request.user).filter(run=run).values_list("pk", flat=True))
    # The timeline names forms by our id: not those the caller may not open.
    hidden = {str(form.public_id) for form in forms if form.pk not in visible}
    return {
        **_run_summary(request, run),
        "inputs": run.inputs,
        # The files a chatflow's message was sent with.
        "files": [_message_file_json(f) for f in run.message_files.all()],
        # Whether the inbox can reach Dify for the run's app, and follows its events.
        "dify": _dify_json(run),
        "answer": run.answer,
        "outputs": run.outputs,
        "forms": [
            {
                "id": str(form.public_id) if form.pk in visible else None,
                "visible": form.pk in visible,
                "status": form.status_now,
                "node_id": form.node_id,
                "node_title": form.node_title,
                "answerable": form.pk in visible and page_state(form) == "open",
                "approval_channels": form.approval_channels or [],
                "expiration_time": _iso(form.expiration_time),
                "filled_action_id": form.filled_action_id,
                "filled_action_text": form.filled_action_text,
                "url": (
                    request.build_absolute_uri(reverse("inbox:form", args=[form.public_id]))
                    if form.pk in visible
                    else None
                ),
            }
            for form in forms
        ],
        "timeline": _timeline_json(run, hidden),
    }


def _timeline_json(run: Any, hidden: set[str]) -> list[dict[str, Any]]:
    """The run's timeline as its page shows it (`shown_timeline`): a form is one entry, its
    pause's while it waits or closed unanswered, its answer's once answered (the outcome and the
    action, with when the run paused for it, `paused_at`, and how long it waited,
    `waited_seconds`); a Human Input node's own running/succeeded entry is left out. An entry
    keeps the fields the follower wrote (`event`, `node_id`, `title`, `status`, `action`, `at`,
    `form`, ...), but not its key, nor the id of a form the caller may not open."""
    from inbox.views_runs import shown_timeline, timeline_time

    entries = []
    for item, pause in shown_timeline(run.timeline):
        entry = {k: v for k, v in item.items() if k != "key" and not (k == "form" and v in hidden)}
        if pause is not None:
            entry["paused_at"] = pause.get("at")
            at = timeline_time(item.get("at") or item.get("created_at"))
            paused_at = timeline_time(pause.get("at"))
            entry["waited_seconds"] = (
                max(0, round((at - paused_at).total_seconds())) if at and paused_at else None
            )
        entries.append(entry)
    return entries


def _app_named(name: str) -> DifyApp:
    """A list's `app` filter: the app by its name, as everywhere in the API (its id, as the
    pages' filter sends it, is accepted too)."""
    app = DifyApp.objects.filter(name=name).only("pk").first()
    if app is None and (app_id := small_int(name)) is not None:
        app = DifyApp.objects.filter(pk=app_id).only("pk").first()
    if app is None:
        # As a start or an ingest names an app no active app has, with the field named.
        raise ApiError(
            400,
            "unknown_app",
            gettext("Unknown app “%(name)s”.") % {"name": name},
            details={"app": [gettext("Unknown app.")]},
        )
    return app


def _active_app(body: dict[str, Any]) -> Any:
    name = _text_param(body, "app", limit=100, required=gettext("the name of a Dify app"))
    app = DifyApp.objects.filter(name=name, is_active=True).first()
    if app is None:
        raise ApiError(
            400,
            "unknown_app",
            gettext("There is no active Dify app named %(name)s.") % {"name": repr(name)},
        )
    return app


def _json_type(value: Any) -> str:
    """What a JSON value is, as a caller would name it."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return gettext("a number")
    if isinstance(value, list):
        return gettext("an array")
    if isinstance(value, dict):
        return gettext("an object")
    return gettext("a string")


def _text_param(body: dict[str, Any], key: str, *, limit: int, required: str = "") -> str:
    """The body's text field `key`, checked one way for every field: a string (no other JSON
    type is taken for it, nor for "none"), not empty, at most `limit` characters, and without
    white space at its ends (Dify compares names, users and ids exactly). Left out (or null):
    "" when optional, refused when `required` (which says what the field is). Each refusal
    names the field in `details`."""
    value = body.get(key)
    if value is None:
        if not required:
            return ""
        raise _param_error(
            key,
            gettext("'%(field)s' is required: %(what)s.") % {"field": key, "what": required},
            gettext("Required."),
        )
    if not isinstance(value, str):
        raise _param_error(
            key,
            gettext("'%(field)s' must be a string, not %(type)s.")
            % {"field": key, "type": _json_type(value)},
            gettext("Must be a string."),
        )
    if not value.strip():
        raise _param_error(
            key,
            gettext("'%(field)s' is empty.") % {"field": key}
            if required
            else gettext("'%(field)s' is empty: leave it out, or send null, when there is none.")
            % {"field": key},
            gettext("Must not be empty."),
        )
    if len(value) > limit:
        raise _param_error(
            key,
            gettext("'%(field)s' is too long: %(length)d characters, at most %(limit)d.")
            % {"field": key, "length": len(value), "limit": limit},
            gettext("At most %(limit)d characters.") % {"limit": limit},
        )
    _refuse_padded(key, value)
    return value


def _param_error(key: str, message: str, detail: str) -> ApiError:
    return ApiError(400, "invalid_param", message, details={key: [detail]})


def _require_may_start(request: HttpRequest) -> None:
    from inbox.models import Run

    if not Run.objects.may_start(request.user):
        raise ApiError(403, "forbidden", gettext("You may not start or ingest runs."))


def _optional_text(body: dict[str, Any], key: str, *, limit: int) -> str:
    return _text_param(body, key, limit=limit)


# The lists' pages: any page up to MAX_PAGE (one past the last is empty), MAX_PAGE_SIZE rows
# at most. The bound keeps a page's offset within what the database counts, and its number
# exact in a client that reads JSON numbers as doubles.
MAX_PAGE = 1_000_000_000
MAX_PAGE_SIZE = 100


def _paging(request: HttpRequest, default_size: int) -> tuple[int, int]:
    """A list's `page` (from 1) and `page_size` (1 to MAX_PAGE_SIZE, `default_size` when not
    given), each refused by its name when it is no whole number in its range."""
    page = _whole_number_param("page", request.GET.get("page") or "1", MAX_PAGE)
    raw_size = request.GET.get("page_size") or ""
    if not raw_size:
        return page, default_size
    return page, _whole_number_param("page_size", raw_size, MAX_PAGE_SIZE)


def _whole_number_param(name: str, raw: str, maximum: int) -> int:
    """The query parameter `name` as a whole number from 1 to `maximum`, refused by its name
    otherwise."""
    value = small_int(raw)
    if value is None or value > maximum:
        raise _param_error(
            name,
            gettext("'%(name)s' must be a whole number from 1 to %(max)d; got %(value)s.")
            % {"name": name, "max": maximum, "value": repr(raw[:20])},
            gettext("A whole number from 1 to %(max)d.") % {"max": maximum},
        )
    return value


def _unknown_value(name: str, value: str, known: list[str]) -> ApiError:
    return _param_error(
        name,
        gettext("Unknown %(name)s %(value)s; one of: %(known)s.")
        % {"name": name, "value": repr(value[:40]), "known": ", ".join(known)},
        gettext("One of: %(known)s.") % {"known": ", ".join(known)},
    )


def _refuse_padded(key: str, value: str) -> None:
    """Dify tells users apart by the exact text: " ann" is not "ann". Trimmed in silence, a run
    would be under a user the caller did not name; kept, under one they did not mean."""
    if value != value.strip():
        raise _param_error(
            key,
            gettext(
                "'%(field)s' starts or ends with white space; Dify compares it exactly. Send it "
                "without."
            )
            % {"field": key},
            gettext("Starts or ends with white space."),
        )


# What a Dify run id may hold: Dify's are UUIDs. Never a character that would change the
# address it is put in (a "/", "." or "..", white space, "?", "#", "%").
_RUN_ID = re.compile(r"[A-Za-z0-9_-]+")


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
            (
                gettext("Unknown input %(name)s; this app takes: %(known)s.")
                if what == "app"
                else gettext("Unknown input %(name)s; this form takes: %(known)s.")
            )
            % {"name": repr(unknown[0]), "known": ", ".join(names) or gettext("none")},
            details={name: [gettext("Unknown input.")] for name in unknown},
        )


def _not_a_number(name: str) -> tuple[str, str]:
    """What a start says of a number input given something that is no number: another JSON
    type (true, an object) or a string that reads as none ("abc"), in the same words. A string
    of one ("130", "12.5") is taken, as Dify takes it."""
    return (
        gettext(
            "'%(name)s' must be a number: a JSON number, or a string holding one, such as "
            '"130" or "12.5".'
        )
        % {"name": name},
        gettext('Must be a number: a JSON number, or a string holding one, such as "130".'),
    )


def _start_form_data(
    form_specs: list[Any], inputs: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
    """API inputs as the start form's data, with JSON types checked first: the form would
    otherwise read 12 as the text "12" and "yes" as a ticked box. An input of the wrong type
    (or one the inbox cannot send) is left out of the data and returned by its name, with the
    sentence and the detail that say so, to be said with the form's own errors of the others."""
    known = {spec.variable: spec for spec in form_specs}
    _refuse_unknown(inputs, sorted(known), "invalid_inputs", "app")
    data: dict[str, Any] = {}
    wrong: dict[str, tuple[str, str]] = {}
    for spec in form_specs:
        # Left out, a checkbox is its default, as in Dify and on the start page.
        if spec.type == "checkbox" and inputs.get(spec.variable) is None and spec.checked:
            data[spec.field_name] = "on"
    for name, value in inputs.items():
        spec = known[name]
        if value is None or (spec.supported and spec.is_file):
            # A file input's uploads are looked up on their own (`_start_input_files`).
            continue
        if not spec.supported:
            wrong[name] = (
                gettext(
                    "'%(name)s' is a %(type)s input, which the inbox cannot send; start this run "
                    "in Dify instead."
                )
                % {"name": name, "type": spec.type},
                gettext("The inbox cannot send %(type)s inputs.") % {"type": spec.type},
            )
            continue
        if spec.type == "number":
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                wrong[name] = _not_a_number(name)
                continue
        elif spec.type in _START_TYPES and not isinstance(value, _START_TYPES[spec.type]):
            wrong[name] = (
                (
                    gettext("'%(name)s' must be true or false.")
                    if spec.type == "checkbox"
                    else gettext("'%(name)s' must be a string.")
                )
                % {"name": name},
                gettext("Must be true or false.")
                if spec.type == "checkbox"
                else gettext("Must be a string."),
            )
            data.pop(spec.field_name, None)
            continue
        if spec.type == "checkbox":
            if value:
                data[spec.field_name] = "on"
            continue
        data[spec.field_name] = value
    return data, wrong


RUNS_PAGE = 50


@api_view(["GET", "POST"], query=("status", "app", "page", "page_size", "q"))
def runs(request: HttpRequest) -> HttpResponse:
    """`GET /api/v1/runs`: the caller's runs; `POST`: start one."""
    return runs_create(request) if request.method == "POST" else runs_list(request)


def runs_list(request: HttpRequest) -> HttpResponse:
    """`GET /api/v1/runs?status=&app=&q=&page=&page_size=`: the runs the caller may see, newest
    first, 50 a page unless `page_size` says otherwise, without their timelines. A start
    answered `504 dify_no_answer` is here, as `failed` with its reason, beside any run Dify
    started for it."""
    from inbox.models import Run
    from inbox.runs import turn_number
    from inbox.views_runs import RUN_STATES, pending_counts, search_runs

    runs = (
        Run.objects.for_user(request.user)
        .select_related("app", "started_by")
        .annotate(turn=turn_number())
    )
    status = request.GET.get("status") or ""
    if status in RUN_STATES:
        runs = runs.filter(status__in=RUN_STATES[status])
    elif status in Run.Status.values:
        runs = runs.filter(status=status)
    elif status and status != "all":
        known = sorted({"all", *RUN_STATES, *Run.Status.values})
        raise _unknown_value("status", status, known)
    if name := request.GET.get("app") or "":
        runs = runs.filter(app=_app_named(name))
    if q := (request.GET.get("q") or "").strip():
        runs = search_runs(runs, q[:200])
    page, size = _paging(request, RUNS_PAGE)
    # Read one past the page rather than counting every run: whether there is a next page. A
    # page past the last is empty, as the forms' is.
    rows: list[Any] = list(runs.order_by("-created_at", "-pk")[(page - 1) * size : page * size + 1])
    more, rows = len(rows) > size, rows[:size]
    waiting = pending_counts(rows)
    return JsonResponse(
        {
            "page": page,
            "page_size": size,
            "next_page": page + 1 if more else None,
            "results": [
                {**_run_summary(request, run), "pending_forms": waiting.get(run.pk, 0)}
                for run in rows
            ],
        }
    )


# ---------------------------------------------------------------------------------------------
# Apps: what may be started, as the Apps page lists them, and each one's start inputs.
# ---------------------------------------------------------------------------------------------


def _app_json(request: HttpRequest, app: DifyApp, may_start: bool) -> dict[str, Any]:
    """An app as the Apps page lists it (`mode`: `workflow` or `chatflow`), with what is on
    record of starting it (`dify`, `_app_health_json`; `usable` while that is `ok`) and whether
    the caller may start runs (`may_start`, with the "Start a run" page's address)."""
    health = _app_health_json(app, starts=True)
    return {
        "name": app.name,
        "mode": app.mode,
        "usable": health["state"] == "ok",
        "dify": health,
        "may_start": may_start,
        "start_url": request.build_absolute_uri(reverse("inbox:app_start", args=[app.pk]))
        if may_start
        else None,
    }


def _file_inputs_json(spec: Any, limits: dict[str, int]) -> dict[str, Any]:
    """What files an input (an `InputSpec`) takes, named as a form's file inputs name them:
    its kinds, extensions and ways of sending, how many files, and the largest file per kind
    Dify takes, in bytes (`uploads.size_limits`, as the pages name them)."""
    from inbox.uploads import size_limits

    return {
        "allowed_file_types": list(spec.allowed_types),
        "allowed_file_extensions": list(spec.allowed_extensions),
        "allowed_file_upload_methods": list(spec.allowed_methods),
        "max_files": spec.ui_max_files,
        "max_file_sizes": size_limits(spec, limits) if spec.allows_upload else None,
    }


def _start_input_json(spec: Any, limits: dict[str, int]) -> dict[str, Any]:
    """A start input as the "Start a run" page builds its field (`runs.StartRunForm`)."""
    from inbox.runs import _typed_default

    item: dict[str, Any] = {
        "variable": spec.variable,
        "label": spec.label,
        "type": spec.type,
        # A checkbox left out is its default (false unless the app ticks it).
        "required": spec.required and spec.type != "checkbox",
        "default": spec.checked if spec.type == "checkbox" else _typed_default(spec),
        "options": list(spec.options) if spec.type == "select" else [],
        "max_length": spec.max_length if spec.type in ("text-input", "paragraph") else None,
        # False: of a kind the inbox cannot send (a file input taking web addresses only, a
        # type it does not know); a required one means the run is started in Dify.
        "supported": spec.supported,
    }
    if spec.is_file:
        item.update(_file_inputs_json(spec.file_spec, limits))
    return item


@api_view(["GET"])
def apps_list(request: HttpRequest) -> HttpResponse:
    """`GET /api/v1/apps`: the active apps, as the Apps page lists them, by name."""
    from inbox.app_check import last_tested_mode
    from inbox.models import Run

    may_start = Run.objects.may_start(request.user)
    # With the kind of app its last connection test found (an unusable one is not `usable`).
    apps = (
        DifyApp.objects.filter(is_active=True)
        .annotate(tested_mode=last_tested_mode())
        .order_by("name")
    )
    return JsonResponse(
        {"may_start": may_start, "results": [_app_json(request, a, may_start) for a in apps]}
    )


@api_view(["GET"])
def app_detail(request: HttpRequest, name: str) -> HttpResponse:
    """`GET /api/v1/apps/{name}`: the app, with its start inputs as the "Start a run" page builds
    them from Dify's `GET /parameters` (the same parameters, kept for a minute), and for a
    chatflow the message (`query`) and the files it may carry."""
    from inbox.app_check import unusable_mode
    from inbox.dify.files import limits_from_parameters
    from inbox.models import Run
    from inbox.runs import StartRunForm
    from inbox.uploads import message_file_spec

    app = DifyApp.objects.filter(name=name, is_active=True).first()
    if app is None:
        raise ApiError(
            404, "not_found", gettext("No active app named %(name)s.") % {"name": repr(name[:100])}
        )
    if not Run.objects.may_start(request.user):
        # As the "Start a run" page: its inputs are for those who may start runs.
        raise ApiError(403, "forbidden", gettext("You may not start or ingest runs."))
    if unusable_mode(app):
        # As the "Start a run" page: nothing to start, and Dify is not asked.
        body = _app_json(request, app, True)
        body.update({"startable": False, "inputs": [], "query": None, "message_files": None})
        return JsonResponse(body)
    # Dify away, busy or refusing: said as for a start (`502`, `429`, `503`), never a 500; a
    # refusal of the app is recorded as the page records it (the list's `dify` then says it).
    parameters = _start_parameters(app)
    form = StartRunForm(app, parameters)
    limits = limits_from_parameters(parameters)
    chatflow = app.mode == DifyApp.Mode.CHATFLOW
    message_spec = message_file_spec(parameters) if chatflow else None
    body = _app_json(request, app, True)
    body.update(
        {
            # False when a required input is one the inbox cannot send: start it in Dify.
            "startable": not form.blocked,
            "inputs": [_start_input_json(spec, limits) for spec in form.specs],
            # A chatflow's message: required, as on the page.
            "query": {"required": True} if chatflow else None,
            "message_files": _file_inputs_json(message_spec, limits) if message_spec else None,
        }
    )
    return JsonResponse(body)


def runs_create(request: HttpRequest) -> HttpResponse:
    """`POST /api/v1/runs` `{"app", "inputs", "query" (chatflow), "user"?, "submission_key"?,
    "conversation_id"? (chatflow)}` → 201 the run; 200 the same run when sent again under its
    submission key."""
    from inbox.runs import (
        SameStart,
        StartFailed,
        default_dify_user,
        parameters_cached,
        start_digest,
        start_run,
        started_under,
    )

    _require_may_start(request)
    body = json_body(request)
    _refuse_unknown_keys(
        body, ("app", "inputs", "query", "user", "submission_key", "conversation_id", "files")
    )
    key = _submission_key(request, body)
    app = _active_app(body)
    _refuse_unusable(app)
    inputs = body.get("inputs", {})
    if not isinstance(inputs, dict):
        raise _param_error(
            "inputs", gettext("'inputs' must be an object."), gettext("Must be an object.")
        )
    query = body.get("query", "")
    if not isinstance(query, str):
        raise _param_error(
            "query", gettext("'query' must be a string."), gettext("Must be a string.")
        )
    if query and app.mode != DifyApp.Mode.CHATFLOW:
        raise _param_error(
            "query",
            gettext("'query' is for chatflow apps; %(app)s is a workflow and takes only 'inputs'.")
            % {"app": app.name},
            gettext("Only a chatflow app takes a query."),
        )
    conversation_id = _conversation_id(body)
    if conversation_id:
        return _continue_conversation(request, app, body, key, conversation_id)
    dify_user = _optional_text(body, "user", limit=255) or default_dify_user(request.user)
    # A start with files is another start than the same one without.
    extra = [_file_ids(body)] if body.get("files") else []
    digest = start_digest(app.pk, inputs, query, dify_user, *extra)
    try:
        # Sent again: answered from what the first start did, without asking Dify anything.
        started_under(key, digest)
    except SameStart as same:
        return _same_start(request, same)
    cached = parameters_cached(app)
    parameters = _start_parameters(app)
    try:
        form, file_values, input_files = _start_form(
            request, app, parameters, inputs, query, dify_user
        )
    except ApiError as exc:
        if exc.code != "invalid_inputs" or not cached:
            raise
        # Checked against the parameters cached here: the app may have been republished with
        # other inputs meanwhile (an option added, an input added). Asked of Dify again once,
        # so a value Dify takes is not refused here.
        fresh = _start_parameters(app, fresh=True)
        if fresh == parameters:
            raise
        form, file_values, input_files = _start_form(request, app, fresh, inputs, query, dify_user)
    files = _message_files(request, app, body, dify_user)
    if set(files) & set(input_files):
        twice = gettext("The same file is attached twice.")
        raise ApiError(400, "invalid_inputs", twice, details={"files": [twice]})
    try:
        run = start_run(
            app,
            files=files,
            input_files=input_files,
            inputs={**form.dify_inputs(), **file_values},
            query=form.cleaned_data.get("query", ""),
            dify_user=dify_user,
            started_by=request.user,
            source="api",
            labels=form.labels,
            submission_key=key,
            submission_digest=digest,
        )
    except SameStart as same:
        return _same_start(request, same)
    except StartFailed as exc:
        raise ApiError.of(exc) from None
    return JsonResponse(_run_json(request, run), status=201)


def _refuse_unusable(app: DifyApp) -> None:
    """`409` `app_unusable` for an app whose last connection test found a plain chat,
    completion or agent app (as the Apps page marks it): no Human Input node, so nothing of it
    is started here, and Dify is not asked."""
    from inbox.app_check import unusable_mode

    if mode := unusable_mode(app):
        raise ApiError(
            409,
            "app_unusable",
            gettext(
                "%(app)s cannot be used here: Dify says it is a “%(mode)s” app. Such apps have "
                "no Human Input node, so no run of it can be started or decided here."
            )
            % {"app": app.name, "mode": mode},
            details={"dify_mode": mode},
        )


def _start_parameters(app: DifyApp, *, fresh: bool = False) -> dict[str, Any]:
    """The app's start parameters for `POST /api/v1/runs` (`fresh`: asked of Dify again);
    Dify not giving them is said as a start it refused would be."""
    from inbox.dify.errors import ApiKeyUnreadable, DifyError, DifyStatusError, TooManyRequests
    from inbox.runs import app_parameters

    try:
        return app_parameters(app, fresh=fresh)
    except DifyError as exc:
        # Recorded as the start page does; a refusal of the start itself, and Dify taking it,
        # are recorded by `start_run` for both.
        message = gettext("Dify's parameters could not be read: %(error)s") % {"error": exc}
        if isinstance(exc, ApiKeyUnreadable):
            # Not Dify's doing: this process cannot read the app's key (an administrator's to
            # put back, or to enter again).
            raise ApiError(503, "api_key_unreadable", str(exc)) from None
        if not isinstance(exc, DifyStatusError):
            # No answer at all (refused, reset, timed out): Dify could not be reached.
            raise ApiError(502, "dify_unavailable", message) from None
        if exc.refuses_app:
            app.note_refused(exc, "start")
        # As a refused start is said (nothing was started, so no run is kept): Dify busy is the
        # caller's to wait out; anything else is the set-up's or Dify's, never the inputs'.
        limited = isinstance(exc, TooManyRequests)
        raise ApiError(
            429 if limited else 502,
            "rate_limited" if limited else "dify_error",
            message,
            exc.said,
            retry_after=exc.retry_after if limited else None,
        ) from None


def _start_form(
    request: HttpRequest,
    app: DifyApp,
    parameters: dict[str, Any],
    inputs: dict[str, Any],
    query: str,
    dify_user: str,
) -> tuple[Any, dict[str, Any], list[Any]]:
    """A start's inputs checked against the app's `parameters`: the valid form, the file
    inputs' values as Dify takes them and their files; else `400 invalid_inputs`, every
    input's error at once."""
    from inbox.runs import StartRunForm

    form = StartRunForm(app, parameters)
    data, wrong = _start_form_data(form.specs, inputs)
    if query:
        data["query"] = query
    form = StartRunForm(app, parameters, data)
    valid = form.is_valid()
    for spec in form.specs:
        # A string that is no number ("abc"): said as another JSON type is, not in the page's
        # words ("Enter a number.").
        if spec.type == "number" and form.has_error(spec.field_name, "invalid"):
            wrong[spec.variable] = _not_a_number(spec.variable)
    file_values, input_files = _start_input_files(request, app, form.file_specs, inputs, dify_user)
    wrong.update({name: said for name, said in file_values.items() if isinstance(said, tuple)})
    if wrong or not valid:
        # Every input's error at once: those of the wrong JSON type (left out of the form's
        # data, so what the form says of them gives way to that) beside the form's own.
        errors = {} if valid else form.error_messages()
        for name, (_sentence, detail) in wrong.items():
            errors[name] = [detail]
        message = sentence_gap().join(
            wrong[name][0] if name in wrong else labelled(name, text) if name != "__all__" else text
            for name, texts in errors.items()
            for text in (texts[:1] if name in wrong else texts)
        )
        raise ApiError(400, "invalid_inputs", message, details=errors)
    return form, file_values, input_files


def _continue_conversation(
    request: HttpRequest, app: DifyApp, body: dict[str, Any], key: str, conversation_id: str
) -> HttpResponse:
    """`POST /api/v1/runs` with a `conversation_id`: the next message of a chatflow's
    conversation. Dify runs it with the inputs the conversation started with, under the user
    it began with: both are taken from the conversation's last run here, unless `user` says
    otherwise (a conversation begun in Dify)."""
    from inbox.runs import (
        ConversationBusy,
        SameStart,
        StartFailed,
        conversation_in_progress,
        conversation_of_others,
        conversation_start,
        default_dify_user,
        start_digest,
        start_run,
        started_under,
    )

    if app.mode != DifyApp.Mode.CHATFLOW:
        raise ApiError(
            400,
            "invalid_param",
            gettext("'conversation_id' is for chatflow apps; %(app)s is a workflow.")
            % {"app": app.name},
        )
    if body.get("inputs"):
        raise ApiError(
            400,
            "invalid_param",
            gettext(
                "'inputs' cannot be given with 'conversation_id': Dify runs every message of a "
                "conversation with the inputs it started with."
            ),
        )
    query = body.get("query", "")
    if not query.strip():
        raise ApiError(
            400,
            "invalid_inputs",
            labelled("query", gettext("This field is required.")),
            details={"query": [gettext("This field is required.")]},
        )
    if conversation_of_others(app, conversation_id, request.user):
        raise ApiError(
            403,
            "forbidden",
            gettext("Only who started this conversation, or an administrator, may go on with it."),
        )
    latest = conversation_start(app, conversation_id, request.user)
    given_user = _optional_text(body, "user", limit=255)
    dify_user = given_user or (latest.dify_user if latest else default_dify_user(request.user))
    inputs = latest.inputs if latest and latest.dify_user == dify_user else {}
    extra = [_file_ids(body)] if body.get("files") else []
    digest = start_digest(app.pk, {}, query, dify_user, conversation_id, *extra)
    try:
        # A message sent again under its key first: its own run is the conversation's last,
        # and may still be running.
        started_under(key, digest)
        busy = conversation_in_progress(app, conversation_id)
        if busy is not None:
            # Whoever sent it: checked again as the run is made (two sent at once).
            raise ConversationBusy(busy, request.user)
        files = _message_files(request, app, body, dify_user)
        run = start_run(
            app,
            files=files,
            inputs=inputs,
            query=query,
            dify_user=dify_user,
            started_by=request.user,
            source="api",
            labels=latest.input_labels if latest else {},
            submission_key=key,
            submission_digest=digest,
            conversation_id=conversation_id,
        )
    except SameStart as same:
        return _same_start(request, same)
    except StartFailed as exc:
        raise ApiError.of(exc) from None
    return JsonResponse(_run_json(request, run), status=201)


def _file_ref(item: Any) -> Any:
    """One of a start's `files`: `{"upload": id}`, as a decision's files are given
    ("upload_id" still read), or the id alone."""
    if isinstance(item, dict):
        return item.get("upload") or item.get("upload_id")
    return item


def _file_ids(body: dict[str, Any]) -> Any:
    """A start's `files` as its digest keeps them: the ids, in one spelling (checked by
    `_message_files`), so the same files sent again are the same start and others are not."""
    given = body.get("files")
    if not isinstance(given, list):
        return given
    ids = []
    for item in given:
        ref = _file_ref(item)
        try:
            ids.append(str(uuid.UUID(str(ref))))
        except ValueError:
            ids.append(ref)
    return ids


def _same_start(request: HttpRequest, same: Any) -> HttpResponse:
    """A start sent again under its submission key (a `SameStart`): the run it made, or what
    became of it, as the first answer said it; never a second run."""
    from inbox.models import Run
    from inbox.runs import LOST_START, start_lost

    run = same.run
    details = {"run": str(run.public_id)}
    if not same.same:
        raise ApiError(
            409,
            "submission_key_reused",
            gettext(
                "This submission_key was already used to start a run with another app, inputs, "
                "query or user; send a new key for another start."
            ),
            details,
        )
    if start_lost(run):
        # Its answer was lost, or its sender ended mid-start: it may have started the run, so
        # the same is said again (in the caller's language now, not the first call's).
        raise ApiError(504, "dify_no_answer", str(LOST_START), details)
    if run.status == Run.Status.STARTING:
        raise ApiError(
            409,
            "start_in_progress",
            gettext(
                "The start sent under this submission_key is still waiting for Dify; ask again "
                "in a moment."
            ),
            details,
            retry_after=1,
        )
    return JsonResponse(_run_json(request, run), status=200)


def _conversation_id(body: dict[str, Any]) -> str:
    """A chatflow conversation's id as given, in the one spelling Dify answers with ("" for
    none). Dify reads it as a UUID, so another spelling of the same id (upper case, no dashes)
    names the same conversation there, and must here too: who may go on with it, and whether a
    message of it is in flight, are looked up by it."""
    given = _optional_text(body, "conversation_id", limit=64)
    if not given:
        return ""
    try:
        return str(uuid.UUID(given))
    except ValueError:
        raise _param_error(
            "conversation_id",
            gettext("'conversation_id' must be a conversation's id, as a run's JSON gives it."),
            gettext("A conversation's id, as a run's JSON gives it."),
        ) from None


def _message_dify_user(request: HttpRequest, app: DifyApp, user: str, conversation_id: str) -> str:
    """The Dify user a chatflow's message is asked as, as `POST /api/v1/runs` picks it: `user`
    when given, else the conversation's (its last run here), else the caller's default."""
    from inbox.runs import conversation_of_others, conversation_start, default_dify_user

    if user:
        return user
    if conversation_id:
        if conversation_of_others(app, conversation_id, request.user):
            raise ApiError(
                403,
                "forbidden",
                gettext(
                    "Only who started this conversation, or an administrator, may go on with it."
                ),
            )
        latest = conversation_start(app, conversation_id, request.user)
        if latest is not None:
            return str(latest.dify_user)
    return default_dify_user(request.user)


def _parameters_of(app: DifyApp) -> dict[str, Any]:
    """The app's `GET /parameters` (cached briefly); `502 dify_unavailable` when Dify did not
    give them."""
    from inbox.dify.errors import DifyError
    from inbox.runs import app_parameters

    try:
        return app_parameters(app)
    except DifyError as exc:
        raise ApiError(
            502,
            "dify_unavailable",
            gettext("Dify's parameters could not be read: %(reason)s") % {"reason": exc},
        ) from None


def _message_file_spec(app: DifyApp) -> Any:
    """What files the app takes with a message (`uploads.message_file_spec`); refused when it
    takes none, or is no chatflow."""
    from inbox.uploads import message_file_spec

    if app.mode != DifyApp.Mode.CHATFLOW:
        raise _param_error(
            "input",
            gettext("Files go with a chatflow's message; %(app)s is a workflow.")
            % {"app": app.name},
            gettext("Required for a workflow: the start input the file is for."),
        )
    spec = message_file_spec(_parameters_of(app))
    if spec is None:
        raise _param_error(
            "app",
            gettext("%(app)s takes no uploaded files with a message.") % {"app": app.name},
            gettext("Takes no uploaded files with a message."),
        )
    return spec


def _cap_message_file(request: HttpRequest) -> None:
    """Before the body is read (`middleware.UploadSizeMiddleware` leaves this call to its view,
    once the token is known): one file. The app is named in the body, beside the file (and,
    for a start input's file, the input): a file after the `app` (and `input`) part is capped
    at that app's own limit for its kind, and dropped as it begins when the app (or the input)
    does not take its kind (`uploads.MessageFileCapHandler`); a file before it, at the largest
    limit of the kinds any active app takes with a message or in a file start input, its own
    limits checked once the whole body is read. No file is kept when no app takes one."""
    from inbox.dify.errors import DifyError
    from inbox.runs import app_parameters, start_inputs
    from inbox.uploads import cap_message_file, drop_uploads, file_cap, message_file_spec

    takes: dict[tuple[str, str], tuple[DifyApp, Any]] = {}
    caps = []
    for app in DifyApp.objects.filter(is_active=True):
        try:
            parameters = app_parameters(app)
        except DifyError:
            continue
        # What the app takes, by input: "" for a chatflow's message, else a start input.
        specs = {
            s.variable: s.file_spec for s in start_inputs(parameters) if s.supported and s.is_file
        }
        if app.mode == DifyApp.Mode.CHATFLOW and (spec := message_file_spec(parameters)):
            specs[""] = spec
        for input_name, spec in specs.items():
            takes[(app.name, input_name)] = (app, spec)
        if specs:
            caps.append(file_cap(app, list(specs.values())))

    def own_spec(app_name: str, input_name: str) -> tuple[DifyApp, Any] | None:
        # No `input` read yet while the app has file start inputs: it may still come after the
        # file, so the file is not judged by the message's kinds.
        if not input_name and any(a == app_name and i for a, i in takes):
            return None
        return takes.get((app_name, input_name))

    if caps:
        cap_message_file(request, max(caps), own_spec)
    else:
        drop_uploads(request)


def _the_file(request: HttpRequest) -> Any:
    """An upload call's file; refused when it was dropped as it arrived (larger than its
    cap) or not sent."""
    fileobj = request.FILES.get("file")
    if fileobj is None:
        dropped = too_large(request)
        if dropped:
            raise ApiError(
                dropped_status(request),
                "upload_rejected",
                sentence_gap().join(dropped),
                details={"file": dropped},
            )
        raise ApiError(
            400,
            "no_file_uploaded",
            gettext("Send the file in a multipart field named 'file'."),
            details={"file": [gettext("Required.")]},
        )
    return fileobj


def _file_part_only(request: HttpRequest) -> None:
    """An upload call's multipart body carries its file in a part named `file`, no other."""
    for key in request.FILES:
        if key != "file":
            raise _param_error(
                key,
                gettext("Unknown file field %(name)s; send the file as 'file'.")
                % {"name": repr(key)},
                gettext("Unknown field."),
            )


@api_view(["POST"])
def run_files(request: HttpRequest) -> HttpResponse:
    """`POST /api/v1/runs/files` (multipart: `app`, `file`, `user`?, `conversation_id`?): a file
    for a chatflow's message, uploaded to Dify first under the Dify user the message will be
    asked as (as `POST /api/v1/runs` picks it from the same fields); its `id` then goes in the
    start's `files`."""
    from inbox.uploads import upload_message_file

    _require_may_start(request)
    _cap_message_file(request)
    fields = ("app", "user", "conversation_id", "input")
    for key in request.POST:
        if key not in fields:
            raise _param_error(
                key,
                gettext(
                    "Unknown field %(field)s; send 'app', 'file' and 'input'?, 'user'?, "
                    "'conversation_id'?."
                )
                % {"field": repr(key)},
                gettext("Unknown field."),
            )
        if len(request.POST.getlist(key)) > 1:
            raise _param_error(
                key,
                gettext("%(field)s is given more than once.") % {"field": repr(key)},
                gettext("Given more than once."),
            )
    _file_part_only(request)
    if len(request.FILES.getlist("file")) + dropped_count(request) > 1:
        raise _param_error(
            "file",
            gettext("Send one 'file' per call; upload each on its own."),
            gettext("Given more than once."),
        )
    if "app" not in request.POST:
        raise _param_error(
            "app",
            gettext(
                "This call takes a multipart/form-data body: an 'app' field with the app's name "
                "and the file in a part named 'file' (and 'user' or 'conversation_id' as the run "
                "will be started with)."
            ),
            gettext("Required: the name of a Dify app."),
        )
    body = dict(request.POST.items())
    app = _active_app(body)
    input_name = _optional_text(body, "input", limit=255)
    spec = _start_file_spec(app, input_name) if input_name else _message_file_spec(app)
    dify_user = _message_dify_user(
        request,
        app,
        _optional_text(body, "user", limit=255),
        _conversation_id(body),
    )
    fileobj = _the_file(request)
    try:
        sent = upload_message_file(
            app,
            spec,
            fileobj,
            dify_user=dify_user,
            uploader=request.user,
            input_name=input_name,
        )
    except UploadRejected as exc:
        if exc.code == "upload_rejected":
            # The file's own fault, named as a file refused while it streamed in is
            # ("big.png: ..."), whichever part came first; a day's budget or a rate is not.
            exc.message = gettext("%(name)s: %(error)s") % {
                "name": fileobj.name or "file",
                "error": exc.message,
            }
        raise _upload_refused(exc) from None
    return JsonResponse({**_message_file_json(sent), "user": sent.dify_user}, status=201)


def _start_file_spec(app: DifyApp, input_name: str) -> Any:
    """What files the app's start input `input_name` takes (`StartInput.file_spec`); refused
    when the app has no such input, it is no file input, or it takes web addresses only."""
    from inbox.runs import start_inputs

    specs = start_inputs(_parameters_of(app))
    files = [s for s in specs if s.is_file]
    found = next((s for s in files if s.variable == input_name), None)
    if found is None:
        raise _param_error(
            "input",
            gettext("%(app)s has no file input %(name)s; its file inputs: %(known)s.")
            % {
                "app": app.name,
                "name": repr(input_name),
                "known": ", ".join(s.variable for s in files) or gettext("none"),
            },
            gettext("Not a file input of this app."),
        )
    if not found.supported:
        raise _param_error(
            "input",
            gettext(
                "The input %(name)s takes files by web address only, which the inbox cannot "
                "send; start this run in Dify instead."
            )
            % {"name": repr(input_name)},
            gettext("Takes files by web address only."),
        )
    return found.file_spec


def _message_file_json(sent: Any) -> dict[str, Any]:
    return {
        # The start input the file fills; null for a chatflow message's file.
        "input": sent.input_name or None,
        "id": str(sent.public_id),
        "name": sent.name,
        "size": sent.size,
        "type": sent.category,
        "mime_type": sent.mime_type,
    }


def _message_files(
    request: HttpRequest, app: DifyApp, body: dict[str, Any], dify_user: str
) -> list[Any]:
    """A start's `files`: the caller's own files from `POST /api/v1/runs/files`, uploaded for
    this app under the Dify user the run is asked as, no more than the app takes."""
    from inbox.models import MessageFile
    from inbox.uploads import too_many_files

    given = body.get("files")
    if given is None or given == []:
        return []
    shape = gettext("'files' is a list of {'upload': id} from POST /api/v1/runs/files.")
    if not isinstance(given, list):
        raise ApiError(400, "invalid_param", shape)
    ids: list[uuid.UUID] = []
    for item in given:
        try:
            ids.append(uuid.UUID(_file_ref(item)))
        except (TypeError, ValueError, AttributeError):
            raise ApiError(400, "invalid_param", shape) from None
    if len(set(ids)) < len(ids):
        # Dify would be sent the file as often as it is listed; the run records it once.
        twice = gettext("The same file is attached twice.")
        raise ApiError(400, "invalid_inputs", twice, details={"files": [twice]})
    spec = _message_file_spec(app)
    # As the pages cap them: Dify's own limit, else the inbox's.
    if (many := too_many_files(spec.ui_max_files, len(ids))) is not None:
        raise ApiError(400, "invalid_inputs", many, details={"files": [many]})
    found = {
        f.public_id: f
        # A start input's upload (`input_name`) was checked against that input's kinds, not
        # the message's: it is not one of the message's files.
        for f in MessageFile.objects.filter(
            public_id__in=ids, app=app, uploaded_by_id=request.user.pk, input_name=""
        )
    }
    files = []
    for file_id in ids:
        sent = found.get(file_id)
        if sent is None:
            message = gettext("No upload %(id)s of yours for %(app)s.") % {
                "id": file_id,
                "app": app.name,
            }
        elif sent.dify_user != dify_user:
            message = gettext(
                "The upload %(id)s was sent to Dify under the user %(sent)s, not %(user)s, "
                "which this run is asked as: Dify lets only that user use it."
            ) % {"id": file_id, "sent": repr(sent.dify_user), "user": repr(dify_user)}
        else:
            files.append(sent)
            continue
        raise ApiError(400, "invalid_inputs", message, details={"files": [message]})
    return files


def _start_input_files(
    request: HttpRequest, app: DifyApp, specs: list[Any], inputs: dict[str, Any], dify_user: str
) -> tuple[dict[str, Any], list[Any]]:
    """A start's file inputs (`specs`, those that take uploads): `{"upload": id}` for a file,
    a list of them for a file-list, each an upload of the caller's from `POST
    /api/v1/runs/files` for this app and input, under the run's Dify user, that no run has
    used, of a kind the input takes, no more than it takes. Returns ({variable: Dify's value,
    or (sentence, detail) when refused}, the files)."""
    from inbox.models import MessageFile
    from inbox.uploads import too_many_files

    values: dict[str, Any] = {}
    files: list[Any] = []
    for spec in specs:
        name, given = spec.variable, inputs.get(spec.variable)
        if given is None or given == []:
            if spec.required:
                required = gettext("This input is required: give the id of an upload for it.")
                values[name] = (f"{labelled(name, required)}", required)
            continue
        listed = given if spec.type == "file-list" else [given]
        ids: list[uuid.UUID] = []
        # A file is the id POST /api/v1/runs/files returned, as a string or as {"upload": id},
        # as a decision's files are given; a file-list is a list of them, even of one.
        for item in listed if isinstance(listed, list) else [None]:
            ref = _file_ref(item)
            try:
                ids.append(uuid.UUID(ref if isinstance(ref, str) else ""))
            except ValueError:
                ids = []
                break
        if not ids:
            shape = (
                gettext(
                    "A list of files, even of one: each the id POST /api/v1/runs/files returned, "
                    "as a string or as {'upload': id}."
                )
                if spec.type == "file-list"
                else gettext(
                    "One file: the id POST /api/v1/runs/files returned, as a string or as "
                    "{'upload': id}."
                )
            )
            values[name] = (labelled(name, shape), shape)
            continue
        problem = None
        if len(set(ids)) < len(ids):
            problem = gettext("The same file is attached twice.")
        elif many := too_many_files(spec.file_spec.ui_max_files, len(ids), start_input=True):
            problem = many
        found = {
            f.public_id: f
            for f in MessageFile.objects.filter(
                public_id__in=ids, app=app, uploaded_by_id=request.user.pk
            )
        }
        unused = set(
            MessageFile.objects.filter(pk__in=[f.pk for f in found.values()])
            .unused()
            .values_list("pk", flat=True)
        )
        chosen = []
        for file_id in ids:
            if problem is not None:
                break
            sent = found.get(file_id)
            if sent is None or sent.input_name != name:
                problem = gettext("No upload %(id)s of yours for this input.") % {"id": file_id}
            elif sent.dify_user != dify_user:
                problem = gettext(
                    "The upload %(id)s was sent to Dify under the user %(sent)s, not %(user)s, "
                    "which this run is asked as: Dify lets only that user use it."
                ) % {"id": file_id, "sent": repr(sent.dify_user), "user": repr(dify_user)}
            elif sent.pk not in unused:
                problem = gettext(
                    "The upload %(id)s was used by another run already: upload the file again."
                ) % {"id": file_id}
            elif spec.file_spec.file_type(sent.name, sent.mime_type) is None:
                problem = gettext(
                    "%(name)s is not a kind of file this input takes. Accepted: %(accepted)s."
                ) % {"name": sent.name, "accepted": spec.file_spec.accepted_label() or "—"}
            else:
                chosen.append(sent)
        if problem is not None:
            values[name] = (labelled(name, problem), problem)
            continue
        files += chosen
        mappings = [f.as_dify() for f in chosen]
        values[name] = mappings if spec.type == "file-list" else mappings[0]
    return values, files


def _get_api_run(request: HttpRequest, public_id: Any) -> Any:
    from inbox.models import Run

    run = (
        Run.objects.for_user(request.user)
        .select_related("app", "started_by")
        .filter(public_id=public_id)
        .first()
    )
    if run is None:
        raise ApiError(404, "not_found", gettext("No such run, or you may not see it."))
    return run


@api_view(["GET"])
def run_detail(request: HttpRequest, public_id: Any) -> HttpResponse:
    """`GET /api/v1/runs/{id}`: status, outputs, answer, timeline and forms (never a token)."""
    return JsonResponse(_run_json(request, _get_api_run(request, public_id)))


@api_view(["POST"])
def run_stop(request: HttpRequest, public_id: Any) -> HttpResponse:
    """`POST /api/v1/runs/{id}/stop` → 202; the run's end arrives through its stream."""
    from inbox.dify.errors import DifyError, DifyStatusError, TooManyRequests
    from inbox.runs import RunNotStoppable, stop_run

    run = _get_api_run(request, public_id)
    if request.body:
        # It takes nothing: a field sent (a reason, "force") would read as honoured.
        _refuse_unknown_keys(json_body(request), ())
    if not (request.user.is_staff or run.started_by_id == request.user.pk):
        raise ApiError(
            403,
            "forbidden",
            gettext("Only who started a run, or an administrator, may stop it."),
        )
    try:
        stop_run(run, actor=request.user)
    except RunNotStoppable as exc:
        raise ApiError(409, "not_stoppable", exc.message) from None
    except TooManyRequests as exc:
        raise ApiError(
            429,
            "rate_limited",
            gettext("Dify is receiving too many requests: %(error)s") % {"error": exc},
            exc.said,
            retry_after=exc.retry_after,
        ) from None
    except DifyStatusError as exc:
        raise ApiError(
            502,
            "dify_error",
            gettext("Dify did not stop the run: %(error)s") % {"error": exc},
            exc.said,
        ) from None
    except DifyError as exc:
        raise ApiError(
            502,
            "dify_unavailable",
            gettext("Dify could not be reached: %(error)s") % {"error": exc},
        ) from None
    run.refresh_from_db()
    return JsonResponse(_run_json(request, run), status=202)


@api_view(["POST"])
def ingest(request: HttpRequest) -> HttpResponse:
    """`POST /api/v1/ingest` `{"app", "workflow_run_id", "user", "form_token"?}`: follow a run
    started elsewhere. 201 when recorded now, 200 when it was already (nothing changes, but a
    run taken for gone that Dify has comes back, its snapshot read before the answer)."""
    from inbox.runs import IngestRefused, ingest_run

    _require_may_start(request)
    body = json_body(request)
    _refuse_unknown_keys(body, ("app", "workflow_run_id", "user", "form_token"))
    app = _active_app(body)
    workflow_run_id = _text_param(
        body, "workflow_run_id", limit=64, required=gettext("the run id Dify gave the run")
    )
    if not _RUN_ID.fullmatch(workflow_run_id):
        raise _param_error(
            "workflow_run_id",
            gettext(
                "'workflow_run_id' is not a Dify run id: Dify's are UUIDs, of letters, digits "
                "and dashes."
            ),
            gettext("Not a Dify run id."),
        )
    user = _text_param(
        body, "user", limit=255, required=gettext("the Dify user that started the run")
    )
    token = _text_param(body, "form_token", limit=512)
    try:
        run, created = ingest_run(
            app,
            workflow_run_id=workflow_run_id,
            dify_user=user,
            form_token=token,
            actor=request.user,
        )
    except IngestRefused as exc:
        raise ApiError.of(exc) from None
    return JsonResponse(_run_json(request, run), status=201 if created else 200)
