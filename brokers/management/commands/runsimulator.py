from django.core.management.base import BaseCommand, CommandError

from brokers.simulators.base import SimulatorServer
from brokers.simulators.demo import DEMO_CREDENTIALS, available_simulators, simulator_app


class Command(BaseCommand):
    help = "Serve a broker simulator (Kite, Dhan or Fyers protocol) on 127.0.0.1, backed by the simulated exchange."

    def add_arguments(self, parser):
        parser.add_argument("--broker", required=True, choices=["kite", "dhan", "fyers"])
        parser.add_argument("--port", type=int, required=True)

    def handle(self, *args, broker: str, port: int, **options):
        if broker not in available_simulators():
            raise CommandError(f"the {broker} simulator is not part of this build")
        server = SimulatorServer(simulator_app(broker), port=port)
        credentials = ", ".join(f"{key}={value}" for key, value in DEMO_CREDENTIALS[broker].items())
        self.stdout.write(f"{broker} simulator on {server.url} (demo credentials: {credentials})")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            server.stop()
