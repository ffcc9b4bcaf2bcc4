"""The release before this one keeps working on this one's schema, for the while they run side
by side during an upgrade, or after an image-only rollback (README "Upgrading"): a column added
since is one it never names, so a NOT NULL one needs a database default."""

from __future__ import annotations

import uuid

import pytest
from django.apps import apps
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.db.models import NOT_PROVIDED
from django.utils import timezone

from inbox.models import DifyApp, MessageFile

# The last migration of the release before (README "Upgrading").
PREVIOUS_RELEASE = ("inbox", "0033_message_files")

pytestmark = pytest.mark.django_db


def test_every_not_null_column_added_since_the_previous_release_has_a_database_default(
    db: None,
) -> None:
    before = MigrationLoader(connection).project_state(PREVIOUS_RELEASE).apps
    missing = []
    for model in apps.get_app_config("inbox").get_models():
        try:
            old = before.get_model("inbox", model._meta.object_name)
        except LookupError:
            continue  # a table the previous release does not know
        known = {f.column for f in old._meta.local_concrete_fields}
        for field in model._meta.local_concrete_fields:
            if field.column not in known and not field.null and field.db_default is NOT_PROVIDED:
                missing.append(f"{model._meta.db_table}.{field.column}")
    assert missing == []


def test_a_message_file_inserted_as_the_previous_release_does_gets_no_start_input(
    dify_app: DifyApp,
) -> None:
    """Its insert names the columns it knows; input_name is left to the database."""
    fields = {f.column: f for f in MessageFile._meta.local_concrete_fields}
    values = {
        "public_id": uuid.uuid4(),
        "dify_user": "inbox-alice",
        "upload_file_id": "up-old",
        "name": "note.txt",
        "size": 4,
        "mime_type": "text/plain",
        "extension": "txt",
        "category": "document",
        "uploaded_by_username": "alice",
        "created_at": timezone.now(),
        "app_id": dify_app.pk,
    }
    params = [fields[c].get_db_prep_value(v, connection) for c, v in values.items()]
    columns = ", ".join(connection.ops.quote_name(c) for c in values)
    marks = ", ".join(["%s"] * len(values))
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO inbox_messagefile ({columns}) VALUES ({marks})", params)
    stored = MessageFile.objects.get(upload_file_id="up-old")
    assert stored.input_name == ""
