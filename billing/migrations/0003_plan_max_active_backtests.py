"""Each plan's cap on backtests queued or running at once: a backtest holds a worker slot, so the cap keeps one
user from filling the backtest queue."""

from django.db import migrations, models

ACTIVE_BACKTESTS = {"trial": 2, "monthly": 3, "yearly": 5}


def set_caps(apps, schema_editor):
    Plan = apps.get_model("billing", "Plan")
    for code, cap in ACTIVE_BACKTESTS.items():
        Plan.objects.filter(code=code).update(max_active_backtests=cap)


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_plans")]

    operations = [
        migrations.AddField(
            model_name="plan",
            name="max_active_backtests",
            field=models.PositiveSmallIntegerField(default=2, help_text="backtests queued or running at once"),
        ),
        migrations.RunPython(set_caps, migrations.RunPython.noop),
    ]
