"""Indexes for the Submitted and "Outside the inbox" tabs' default order on PostgreSQL, most
recently decided first (`views.ordering`, sort `decided`), which 0038's index does not serve.

A tab lists several statuses (`views.TABS`) in one order, `decided_at` then `-id`:
`status IN ('submitting', 'submitted') ORDER BY decided_at DESC NULLS FIRST, id DESC` and
`status IN ('answered_elsewhere', 'not_answerable', 'gone') ORDER BY decided_at DESC NULLS LAST,
id DESC`. 0038's `(status, decided_at)` gives each status's forms in order, not the statuses
merged, has no `id`, and its backward order is NULLS FIRST: PostgreSQL read and sorted every
decided form for each page (0.5-0.9 s at 160k submitted forms). Each index here is partial, on
exactly a tab's statuses, in exactly its order, so a page reads its 50 entries (under a
millisecond). The API's `GET /api/v1/forms?status=submitted|elsewhere` orders the same way.
0038's index stays: the dashboard reads the forms decided in the last 30 days by it
(`decided_at >= ...`, any status; 0.26 s instead of a 0.45 s table scan at 300k forms).

Built with CREATE INDEX CONCURRENTLY, as 0031's and 0038's are (`_concurrently`): the forms
table stays readable and writable, the build waits for transactions already writing it, and
the migration is not atomic. An index left invalid by an interrupted build is dropped and built
again when the migration runs again. Other databases (SQLite, the embedded setup) are left as
they are.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

from inbox.migrations import _concurrently as concurrently

# name -> what follows "ON inbox_form"; the statuses as in views.TABS, the order as in
# views.ordering (which a test EXPLAINs against these).
INDEXES = {
    "form_submitted_decided": (
        "(decided_at DESC NULLS FIRST, id DESC) WHERE status IN ('submitting', 'submitted')"
    ),
    "form_elsewhere_decided": (
        "(decided_at DESC NULLS LAST, id DESC) "
        "WHERE status IN ('answered_elsewhere', 'not_answerable', 'gone')"
    ),
}


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for name, definition in INDEXES.items():
            concurrently.build(cursor, name, "inbox_form", definition)


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for name in INDEXES:
            concurrently.drop(cursor, name)


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run in a transaction.
    atomic = False

    dependencies = [("inbox", "0040_message_file_input_db_default")]

    operations = [migrations.RunPython(create, drop)]
