import django.utils.timezone
from django.db import migrations, models


def per_strategy_entries_delete(apps, schema_editor):
    """Strategies were fired by a beat entry each (entry and exit); the minute dispatcher replaces them all."""
    periodic_task = apps.get_model("django_celery_beat", "PeriodicTask")
    periodic_task.objects.filter(task="strategies.tasks.fire").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("strategies", "0002_webhook_rejection_count"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.CreateModel(
            name="FireMinute",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("minute", models.DateTimeField(unique=True)),
                ("started_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "dispatched_at",
                    models.DateTimeField(blank=True, help_text="when its last chunk was sent", null=True),
                ),
                ("fires", models.PositiveIntegerField(default=0, help_text="strategies sent to act (entry or exit)")),
                (
                    "skipped",
                    models.PositiveIntegerField(default=0, help_text="strategies whose entry was too late to take"),
                ),
            ],
            options={"ordering": ["-minute"]},
        ),
        migrations.AddField(
            model_name="strategyfire",
            name="sent_at",
            field=models.DateTimeField(blank=True, help_text="when a worker was last asked to act on it", null=True),
        ),
        migrations.AddField(
            model_name="strategyfire",
            name="taken_at",
            field=models.DateTimeField(blank=True, help_text="when a worker last took it (its lease)", null=True),
        ),
        migrations.AddIndex(
            model_name="strategy",
            index=models.Index(fields=["status", "entry_time"], name="strategy_due_entry"),
        ),
        migrations.AddIndex(
            model_name="strategy",
            index=models.Index(fields=["status", "exit_time"], name="strategy_due_exit"),
        ),
        migrations.AddIndex(
            model_name="strategyfire",
            index=models.Index(
                condition=models.Q(("status", "claimed")), fields=["sent_at"], name="strategy_fire_open"
            ),
        ),
        migrations.RunPython(per_strategy_entries_delete, migrations.RunPython.noop),
    ]
