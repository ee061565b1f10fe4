import logging
import time

from django.core.management.base import BaseCommand

from algoterm.console.alerts import alerts_evaluate

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Evaluate the platform alerts once, or every --every seconds until stopped: a watchdog that needs no Celery "
        "worker or beat, so it still raises workers.* and beat.stale when they are gone."
    )

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, default=0.0, help="seconds between evaluations (0: once)")

    def handle(self, *args, **options):
        every = options["every"]
        while True:
            try:
                evaluation = alerts_evaluate()
            except Exception:
                if not every:
                    raise
                logger.exception("alert evaluation failed; trying again in %s s", every)
            else:
                states = ", ".join(f"{name} {state}" for name, state in evaluation.states.items())
                self.stdout.write(
                    f"{states}; raised {evaluation.raised or 'nothing'}; cleared {evaluation.cleared or 'nothing'}"
                )
            if not every:
                return
            time.sleep(every)
