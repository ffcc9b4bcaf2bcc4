"""The delivery pump: its one row (whether a `deliver_queued` task is on its way), the index of
its queue (due decisions, oldest first), and the mark on a decision whose last attempt never
reached Dify (sent as soon as a delivery to its app gets through again)."""

from __future__ import annotations

from typing import Any

from django.db import migrations, models


def create_row(apps: Any, schema_editor: Any) -> None:
    apps.get_model("inbox", "DeliveryPump").objects.get_or_create(pk=1)


class Migration(migrations.Migration):
    dependencies = [
        ("inbox", "0003_search_trigram_indexes"),
    ]

    operations = [
        migrations.CreateModel(
            name="DeliveryPump",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("requested_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "verbose_name": "delivery pump",
            },
        ),
        migrations.RunPython(create_row, migrations.RunPython.noop),
        migrations.AddField(
            model_name="decision",
            name="dify_unreachable",
            field=models.BooleanField(default=False),
        ),
        migrations.AddIndex(
            model_name="decision",
            index=models.Index(fields=["status", "next_attempt_at"], name="decision_due_idx"),
        ),
    ]
