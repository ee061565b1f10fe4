from django.core.management.base import BaseCommand

from algoterm.scheduling import periodic_tasks_sync


class Command(BaseCommand):
    help = "Create or update the system's periodic tasks in django-celery-beat (idempotent)."

    def handle(self, *args, **options):
        result = periodic_tasks_sync()
        for name in result.synced:
            self.stdout.write(f"  synced   {name}")
        for name in result.disabled:
            self.stdout.write(f"  disabled {name} (no longer defined in code)")
        self.stdout.write(self.style.SUCCESS(f"{len(result.synced)} periodic task(s) in sync."))
