"""RMS events get their own id prefix, `rke_` (audit events keep `evt_`). Only new rows get it: the column is
unchanged and existing rows keep their `evt_` ids."""

from django.db import migrations

import algoterm.ids


class Migration(migrations.Migration):
    dependencies = [
        ("rms", "0003_operator_ceilings_and_pending_limits"),
    ]

    operations = [
        migrations.AlterField(
            model_name="rmsevent",
            name="id",
            field=algoterm.ids.PublicIdField(
                editable=False, max_length=21, prefix="rke", primary_key=True, serialize=False
            ),
        ),
    ]
