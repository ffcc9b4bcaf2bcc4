"""What the audit trail's codes mean, in the reader's language: the admin shows these labels
(its list columns and filters), while the trail keeps the codes (`AuditEntry.verb`,
`AuditEntry.object_type`) as they were written, for searches, exports and programs."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.utils.text import capfirst
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

VERB_LABELS: dict[str, Any] = {
    # Apps and routes, as administrators set them.
    "app_created": _("App created"),
    "app_changed": _("App changed"),
    "app_deleted": _("App deleted"),
    "app_connection_tested": _("App connection tested"),
    "app_refused": _("App refused by Dify"),
    "app_accepted": _("App accepted by Dify again"),
    "route_created": _("Route created"),
    "route_changed": _("Route changed"),
    "route_deleted": _("Route deleted"),
    # Runs.
    "run_started": _("Run started"),
    "run_start_failed": _("Run failed to start"),
    "run_ingested": _("Run ingested"),
    "run_stop_requested": _("Run stop requested"),
    "run_status_corrected": _("Run status corrected"),
    "run_never_started": _("Run never started"),
    "run_not_found": _("Run not found in Dify"),
    "run_gone": _("Run gone from Dify"),
    "run_back": _("Run back in Dify"),
    "run_closed_here": _("Run closed here by an administrator"),
    # Forms.
    "form_captured": _("Form captured"),
    "form_ingested": _("Form ingested"),
    "form_routed": _("Form routed"),
    "form_unrouted": _("Form not routed"),
    "form_opened": _("Form opened by a reviewer"),
    "form_claimed": _("Form taken"),
    "form_released": _("Form released"),
    "form_reassigned": _("Form reassigned"),
    "form_unassigned": _("Form lost an assignee"),
    "form_reopened": _("Form given back for a new decision"),
    "form_emails_resent": _("Form emails sent again"),
    "form_pending": _("Form pending"),
    "form_submitting": _("Form being submitted"),
    "form_submitted": _("Form submitted"),
    "form_expired": _("Form expired"),
    "form_answered_elsewhere": _("Form answered elsewhere"),
    "form_answer_learnt": _("Answer given in Dify learnt"),
    "form_not_answerable": _("Form only answerable in Dify"),
    "form_failed": _("Form delivery failed"),
    "form_gone": _("Form gone from Dify"),
    # Decisions and their delivery.
    "decision_made": _("Decision made"),
    "file_uploaded": _("File uploaded"),
    "delivery_started": _("Delivery started"),
    "delivery_retry_scheduled": _("Delivery retry scheduled"),
    "delivery_retry_requested": _("Delivery retry requested"),
    "delivery_resent": _("Delivery sent again"),
    "delivery_held": _("Delivery held"),
    "delivery_recovered": _("Delivery recovered"),
    "decision_delivered": _("Decision delivered"),
    "delivery_confirmed": _("Delivery confirmed by Dify"),
    "decision_rejected": _("Decision rejected by Dify"),
    "decision_failed": _("Decision delivery failed"),
    # Guests' links.
    "guest_link_opened": _("Guest link opened"),
    "guest_link_refused": _("Guest link refused"),
    "guest_link_used_signed_in": _("Guest link used while signed in"),
    "link_renewed": _("Link renewed"),
    "link_renewal_failed": _("Link renewal failed"),
    # Accounts and access.
    "login_throttled": _("Sign-in throttled"),
    "password_changed": _("Password changed"),
    "password_reset_requested": _("Password reset link asked for"),
    "password_link_sent": _("Set-password link sent by an administrator"),
    "password_reset": _("Password reset by email"),
    "user_created": _("Account created"),
    "user_changed": _("Account's address or name changed"),
    "user_access_changed": _("Account access changed"),
    "user_groups_changed": _("Account groups changed"),
    "user_permissions_changed": _("Account permissions changed"),
    "group_created": _("Group created"),
    "group_renamed": _("Group renamed"),
    "group_permissions_changed": _("Group permissions changed"),
    "user_deleted": _("Account deleted"),
    "user_anonymised": _("Account anonymised"),
    "person_erased": _("Person's address erased"),
    "api_token_issued": _("API token issued"),
    "api_token_revoked": _("API token revoked"),
    # The trail itself.
    "records_pruned": _("Records pruned"),
    "audit_exported": _("Audit entries exported"),
}


def verb_label(verb: str) -> str:
    """The verb's label, or the code itself for one this map does not know."""
    label = VERB_LABELS.get(verb)
    return str(label) if label is not None else verb


def object_type_label(object_type: str) -> str:
    """An entry's object type (a model's name, e.g. `difyapp`) as that model is called."""
    for model in apps.get_models():
        if model._meta.model_name == object_type:
            return str(capfirst(model._meta.verbose_name))
    return object_type


def object_label(entry: Any) -> str:
    """What an entry calls its object (`AuditEntry.object_repr`, written the same whoever acted),
    with what the trail keeps of it as a code in the reader's language: a decision's status
    then ("Approve refund · 3f2a… (Queued)"). Entries written before the status was kept
    apart name it in their text already, and are shown as written."""
    from inbox.models import Decision
    from inbox.reasons import worded

    shown = str(entry.object_repr)
    status = entry.details.get("status") if isinstance(entry.details, dict) else None
    if shown and entry.object_type == "decision" and status in Decision.Status.values:
        return worded(
            gettext("%(object)s (%(status)s)"),
            object=shown,
            status=str(Decision.Status(status).label),
        )
    return shown
