"""Forms closed for good let go of their Dify token (`Form.TOKEN_DROPPED`): those closed before
this release lose theirs now. Nothing is sent for them again, so nothing needs it."""

from django.db import migrations

TOKEN_DROPPED = ("submitted", "expired", "answered_elsewhere", "gone")


def drop_tokens(apps, schema_editor):
    Form = apps.get_model("inbox", "Form")
    Form.objects.filter(status__in=TOKEN_DROPPED).exclude(form_token="").update(form_token="")


class Migration(migrations.Migration):
    dependencies = [("inbox", "0021_run_error_parts")]

    operations = [migrations.RunPython(drop_tokens, migrations.RunPython.noop, elidable=True)]
