"""Indexes for the runs search on PostgreSQL (the Runs page's and `GET /api/v1/runs`'s `q`).

The search (`views_runs.search_runs`) is an OR of conditions on the run's own columns: part of a
chatflow's message (`UPPER(query) LIKE`), the kept username (`UPPER(started_by_username) =`),
the start of the Dify run id or of the run's own (`LIKE 'start%'`), and a start input's value
(a case-insensitive regular expression on the inputs' JSON text, `inputs::text ~*`). No B-tree
serves a LIKE with a leading wildcard or a regular expression, so at 100k runs every search
that found fewer than a page's worth read every run (a quarter to half a second). `pg_trgm`'s
GIN indexes answer LIKE and regular expressions alike; B-trees (pattern operators, so whatever
the database's collation) the username and the ids' starts. With every part indexed PostgreSQL
combines them (BitmapOr) and reads only the runs found; the search's conditions are unchanged,
so it finds exactly what it found before (the index chooses candidates, the condition decides).
A value the index cannot narrow (fewer than three letters of a word, such as a two-character
Chinese name, or any non-ASCII word in a database whose LC_CTYPE is C) is found as before, by
reading runs newest first until a page is full.

Built with CREATE INDEX CONCURRENTLY, so the migration is not atomic: the runs table stays
readable and writable while it builds (it takes a SHARE UPDATE EXCLUSIVE lock, which only holds
off other schema changes and VACUUM of the table, and waits for transactions already open on it
to finish). It reads the table twice; at 100,000 runs this took about 4 s on a 2-core host, the
inputs' trigram index most of it (about 14 MB; the others 1-3 MB). An index left invalid by an
interrupted build is dropped and built again when the migration runs again. Where `pg_trgm`
cannot be created (see 0003) only the B-trees are built and the search works without the
others. Other databases (SQLite, the embedded setup) are left as they are.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import migrations

from inbox.migrations import _concurrently as concurrently

logger = logging.getLogger(__name__)

# name -> what follows "ON inbox_run"; each expression as Django writes the search's condition.
TRIGRAM_INDEXES = {
    "run_query_trgm": "USING gin (UPPER(query) gin_trgm_ops)",
    "run_inputs_trgm": "USING gin ((inputs::text) gin_trgm_ops)",
}
BTREE_INDEXES = {
    "run_started_by_username_upper": "(UPPER(started_by_username))",
    "run_workflow_run_id_start": "(workflow_run_id varchar_pattern_ops)",
    "run_public_id_start": "((public_id::text) text_pattern_ops)",
}


def _has_trgm(cursor: Any) -> bool:
    try:
        cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except Exception as exc:
        logger.warning("pg_trgm is not available, the runs search goes without trigrams: %s", exc)
        return False
    return True


def create(apps: Any, schema_editor: Any) -> None:
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        indexes = {**BTREE_INDEXES, **(TRIGRAM_INDEXES if _has_trgm(cursor) else {})}
        for name, definition in indexes.items():
            concurrently.build(cursor, name, "inbox_run", definition)


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for name in {**TRIGRAM_INDEXES, **BTREE_INDEXES}:
            concurrently.drop(cursor, name)


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run in a transaction.
    atomic = False

    dependencies = [("inbox", "0030_app_contact_failure")]

    operations = [migrations.RunPython(create, drop)]
