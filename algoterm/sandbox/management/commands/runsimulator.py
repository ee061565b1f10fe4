import threading

from django.core.management.base import BaseCommand, CommandError

from algoterm.sandbox.demo import DEMO_CREDENTIALS, FEED_PORT_OFFSET, available_simulators, demo_simulators_start


class Command(BaseCommand):
    help = (
        "Serve a broker simulator (Kite, Dhan or Fyers protocol) on 127.0.0.1, backed by the simulated exchange; "
        "Kite and Dhan also get their live-feed socket at PORT + 10."
    )

    def add_arguments(self, parser):
        parser.add_argument("--broker", required=True, choices=["kite", "dhan", "fyers"])
        parser.add_argument("--port", type=int, required=True)

    def handle(self, *args, broker: str, port: int, **options):
        if broker not in available_simulators():
            raise CommandError(f"the {broker} simulator is not part of this build")
        servers = demo_simulators_start(broker, port=port)
        credentials = ", ".join(f"{key}={value}" for key, value in DEMO_CREDENTIALS[broker].items())
        feed = f", live feed on ws://127.0.0.1:{port + FEED_PORT_OFFSET}" if len(servers) > 1 else ""
        self.stdout.write(f"{broker} simulator on {servers[0].url}{feed} (demo credentials: {credentials})")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            for server in servers:
                server.stop()
