import threading

from django.core.management.base import BaseCommand

from algoterm.sandbox.demo import razorpay_simulator_start


class Command(BaseCommand):
    help = "Serve the Razorpay simulator on 127.0.0.1 (the demo's payments), sending webhooks to this server."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, required=True)

    def handle(self, *args, port: int, **options):
        server = razorpay_simulator_start(port=port)
        self.stdout.write(f"Razorpay simulator on {server.url}; paid plans synced")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            server.stop()
