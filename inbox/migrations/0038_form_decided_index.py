"""An index for the Submitted and "Outside the inbox" tabs' default order on PostgreSQL: most
recently decided first (`views.ordering`, sort `decided`).

Those tabs hold most of the forms table in time (every decided form stays there), so a page of
them ordered by `decided_at` would read and sort every decided form without it. A B-tree on
`(status, decided_at)` gives each status's forms in decision order, either way. (It does not
give a tab's order, several statuses merged with `id` after: 0040's partial indexes do. This one
serves the dashboard's forms decided lately.)

Built with CREATE INDEX CONCURRENTLY, as 0031 builds the runs' search indexes, so the forms table
stays readable and writable while it builds, and the migration is not atomic. An index left
invalid by an interrupted build is dropped and built again when the migration runs again. Other
databases (SQLite, the embedded setup) are left as they are.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

from inbox.migrations import _concurrently as concurrently

NAME = "form_status_decided_at"


def create(apps: Any, schema_editor: Any) -> None:
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        concurrently.build(cursor, NAME, "inbox_form", "(status, decided_at)")


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        concurrently.drop(cursor, NAME)


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run in a transaction.
    atomic = False

    dependencies = [("inbox", "0037_anonymise_permission")]

    operations = [migrations.RunPython(create, drop)]
