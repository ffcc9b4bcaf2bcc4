"""Indexes built with CREATE INDEX CONCURRENTLY by migrations that are not atomic (0031, 0038, 0041):
the table stays readable and writable while an index builds. Not a migration itself (its name
starts with "_", which Django's loader passes over)."""

from __future__ import annotations

from typing import Any


def build(cursor: Any, name: str, table: str, definition: str) -> None:
    """Build index `name` on `table` `definition` unless it is there; one left invalid by an
    interrupted build is dropped and built again."""
    cursor.execute(
        "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", [name]
    )
    row = cursor.fetchone()
    if row is not None and not row[0]:  # left behind by an interrupted build
        cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    cursor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} {definition}")


def drop(cursor: Any, name: str) -> None:
    cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
