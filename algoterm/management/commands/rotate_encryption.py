"""Re-encrypt every encrypted column under the newest ENCRYPTION_KEYS key, so older keys can be retired."""

from django.apps import apps
from django.core.management.base import BaseCommand
from django.db import connection, transaction

from algoterm import crypto


class Command(BaseCommand):
    help = "Re-encrypt every EncryptedTextField value under the first key of ENCRYPTION_KEYS."

    def handle(self, *args, **options):
        total = 0
        for model in apps.get_models():
            fields = [field for field in model._meta.concrete_fields if isinstance(field, crypto.EncryptedTextField)]
            if not fields:
                continue
            table = connection.ops.quote_name(model._meta.db_table)
            pk = connection.ops.quote_name(model._meta.pk.column)
            for field in fields:
                column = connection.ops.quote_name(field.column)
                with transaction.atomic(), connection.cursor() as cursor:
                    # Raw SQL on purpose: no model instance (and no save() side effect) is involved.
                    cursor.execute(f"SELECT {pk}, {column} FROM {table} WHERE {column} <> ''")  # noqa: S608
                    rows = cursor.fetchall()
                    for row_pk, ciphertext in rows:
                        cursor.execute(
                            f"UPDATE {table} SET {column} = %s WHERE {pk} = %s",  # noqa: S608
                            [crypto.rotate(ciphertext), row_pk],
                        )
                    total += len(rows)
                    self.stdout.write(f"  {model._meta.label}.{field.name}: {len(rows)} value(s)")
        self.stdout.write(self.style.SUCCESS(f"{total} value(s) re-encrypted under the newest key."))
