"""Trigram indexes for the inbox search on PostgreSQL.

The search is a case-insensitive "contains" on the node title and the content
(`UPPER(col) LIKE UPPER('%words%')`), which no B-tree can serve: at 100k forms it read every
row. GIN indexes of the same UPPER() expressions with `pg_trgm` answer it from the index.
`pg_trgm` ships with PostgreSQL and is a trusted extension (the database owner may create it);
where it cannot be created the search still works, only without these indexes. Other
databases (SQLite, the embedded setup) are left as they are.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import migrations, transaction

logger = logging.getLogger(__name__)

INDEXES = {
    "inbox_form_title_trgm": "node_title",
    "inbox_form_content_trgm": "content",
}


def create(apps: Any, schema_editor: Any) -> None:
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    try:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except Exception as exc:
        logger.warning("pg_trgm is not available, the inbox search goes without indexes: %s", exc)
        return
    with connection.cursor() as cursor:
        for name, column in INDEXES.items():
            cursor.execute(
                f"CREATE INDEX IF NOT EXISTS {name} ON inbox_form "
                f"USING gin (UPPER({column}) gin_trgm_ops)"
            )


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for name in INDEXES:
            cursor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [("inbox", "0002_reviewer_profile")]

    operations = [migrations.RunPython(create, drop)]
