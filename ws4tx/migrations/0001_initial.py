"""The outbox (ws4tx.models.Outbox)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(
            name="Outbox",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("created", models.DateTimeField(auto_now_add=True)),
                ("facility", models.CharField(max_length=128)),
                ("channels", models.JSONField()),
                ("payload", models.BinaryField()),
                ("expire", models.IntegerField()),
                ("key", models.CharField(max_length=200)),
            ],
            options={"ordering": ["id"], "verbose_name": "outbox message"},
        ),
    ]
