"""The outbox keeps how often a row failed for a while, and sets aside (``failed``, with
its ``error``) a row that can never be sent."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("ws4tx", "0001_initial")]
    operations = [
        migrations.AddField(
            model_name="outbox", name="attempts",
            field=models.PositiveIntegerField(default=0)),
        migrations.AddField(
            model_name="outbox", name="failed",
            field=models.DateTimeField(blank=True, null=True)),
        migrations.AddField(
            model_name="outbox", name="error",
            field=models.TextField(blank=True, default="")),
    ]
