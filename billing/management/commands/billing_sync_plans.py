from django.core.management.base import BaseCommand

from billing.models import Plan
from billing.services import plans_sync


class Command(BaseCommand):
    help = "Create the paid plans at Razorpay, once: linked plans are kept, plans Razorpay already has are linked."

    def handle(self, *args, **options):
        total = Plan.objects.filter(is_active=True, is_trial=False).count()
        done = [0]

        def progress(code: str) -> None:
            done[0] += 1
            self.stdout.write(f"  [{done[0]}/{total}] {code}")

        results = plans_sync(progress=progress)
        for result in results:
            self.stdout.write(f"  {result.code:<10} {result.razorpay_plan_id:<24} {result.action}")
        created = sum(result.action == "created" for result in results)
        self.stdout.write(self.style.SUCCESS(f"{len(results)} plan(s) in sync with Razorpay; {created} created."))
