from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class InboxConfig(AppConfig):
    name = "inbox"
    verbose_name = _("Approval inbox")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from pathlib import Path

        from django.conf import settings

        from inbox import checks, logs, models, signals  # noqa: F401 - checks registers the deploy checks

        logs.install()
        signals.connect()
        models.name_memberships()
        # The embedded broker and SQLite file live here; create it once so every process finds it.
        Path(settings.VAR_DIR).mkdir(parents=True, exist_ok=True)
        options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {})
        for key in ("data_folder_in", "processed_folder"):
            if key in options:
                Path(str(options[key])).mkdir(parents=True, exist_ok=True)
