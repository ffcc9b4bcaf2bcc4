"""Forms and runs for the delivery tests."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from django.utils import timezone

from inbox.models import Decision, DifyApp, Form, Run
from inbox.tasks import presume_delivered

_ids = itertools.count(1)

ACTIONS = [
    {"id": "approve", "title": "Approve", "button_style": "primary"},
    {"id": "reject", "title": "Reject", "button_style": "default"},
]


def make_run(app: DifyApp, **kwargs: Any) -> Run:
    n = next(_ids)
    kwargs.setdefault("workflow_run_id", f"R-delivery-{n}")
    kwargs.setdefault("dify_user", f"inbox-run-{n}")
    kwargs.setdefault("status", Run.Status.PAUSED)
    kwargs.setdefault("follow_wanted", False)
    return Run.objects.create(app=app, **kwargs)


def make_form(
    app: DifyApp,
    *,
    run: Run | None = None,
    expires_in: dt.timedelta | None = dt.timedelta(hours=5),
    **kwargs: Any,
) -> Form:
    n = next(_ids)
    kwargs.setdefault("form_id", f"F-delivery-{n}")
    kwargs.setdefault("form_token", f"secret-delivery-token-{n}")
    kwargs.setdefault("node_id", f"approval_{n}")
    kwargs.setdefault("node_title", "Manager approval")
    kwargs.setdefault(
        "definition",
        {
            "form_content": "Refund 120 EUR?\n\n{{#$output.note#}}",
            "inputs": [{"type": "paragraph", "output_variable_name": "note", "default": None}],
            "user_actions": ACTIONS,
            "resolved_default_values": {},
        },
    )
    if expires_in is not None:
        kwargs.setdefault("expiration_time", timezone.now() + expires_in)
    return Form.objects.create(run=run or make_run(app), **kwargs)


def simulated_forms(
    sim: Any, app: DifyApp, count: int, *, app_name: str = "refund-approval"
) -> list[Form]:
    """`count` runs started in the Dify simulator, each paused at its first form, recorded as
    the capture would record them (the same Dify user, the real form token)."""
    forms = []
    for _ in range(count):
        n = next(_ids)
        user = f"inbox-run-{n}"
        started = sim.start_run(app_name, user=user)
        data = started.forms[0]
        run = Run.objects.create(
            app=app,
            workflow_run_id=started.workflow_run_id,
            task_id=started.task_id,
            dify_user=user,
            status=Run.Status.PAUSED,
            follow_wanted=False,
        )
        expires = data.get("expiration_time")
        forms.append(
            Form.objects.create(
                run=run,
                form_id=data["form_id"],
                form_token=data["form_token"],
                node_id=data["node_id"],
                node_title=data["node_title"],
                content=data["form_content"],
                definition={
                    "form_content": data["form_content"],
                    "inputs": data["inputs"],
                    "user_actions": data["actions"],
                    "resolved_default_values": data.get("resolved_default_values") or {},
                },
                expiration_time=dt.datetime.fromtimestamp(expires, dt.UTC) if expires else None,
            )
        )
    return forms


def presume(form: Form, action_id: str = "approve", **kwargs: Any) -> Decision:
    """A decision on `form` delivered by presumption, recorded by the delivery's own verb: an
    attempt whose answer was lost (it may have been applied), then Dify's 412 "already
    submitted" with nothing showing whose answer it took (`tasks._settle_already_submitted`)."""
    Form.objects.filter(pk=form.pk).update(status=Form.Status.SUBMITTING)
    decision = Decision.objects.create(
        form=form,
        action_id=action_id,
        inputs={"note": "ours"},
        status=Decision.Status.DELIVERING,
        maybe_applied=True,
        **kwargs,
    )
    assert presume_delivered(decision.pk)
    decision = Decision.objects.get(pk=decision.pk)
    assert decision.delivery_presumed
    form.refresh_from_db()
    return decision
