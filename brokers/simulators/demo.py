"""The demo's simulator set-up: one app or client per simulated broker, with credentials printed for newcomers."""

from __future__ import annotations

from django.conf import settings

from brokers.simulators.base import SimulatorApp

DEMO_CREDENTIALS = {
    "kite": {"api_key": "demo-kite-key", "api_secret": "demo-kite-secret"},
    "dhan": {"client_id": "1000000001", "access_token": "demo-dhan-access-token"},
    "fyers": {"client_id": "DEMO1234-100", "secret_key": "demo-fyers-secret"},
}
BROKER_OF_SIMULATOR = {"kite": "zerodha", "dhan": "dhan", "fyers": "fyers"}


def simulator_app(name: str) -> SimulatorApp:
    """A simulator with the demo credentials registered."""
    callback = f"{settings.PUBLIC_BASE_URL.rstrip('/')}/api/brokers/callback/{BROKER_OF_SIMULATOR[name]}"
    credentials = DEMO_CREDENTIALS[name]
    if name == "kite":
        from brokers.simulators.kite import KiteSimulator

        app = KiteSimulator()
        app.register_app(
            credentials["api_key"],
            credentials["api_secret"],
            callback,
            postback_url=f"{settings.PUBLIC_BASE_URL.rstrip('/')}/api/brokers/postback/zerodha",
        )
    elif name == "dhan":
        from brokers.simulators.dhan import DhanSimulator

        app = DhanSimulator()
        app.register_client(credentials["client_id"], credentials["access_token"])
    else:
        from brokers.simulators.fyers import FyersSimulator

        app = FyersSimulator()
        app.register_app(credentials["client_id"], credentials["secret_key"])
    return app


def available_simulators() -> list[str]:
    """Simulators whose modules exist in this build."""
    import importlib.util

    return [name for name in ("kite", "dhan", "fyers") if importlib.util.find_spec(f"brokers.simulators.{name}")]


FEED_PORT_OFFSET = 10  # a broker's live-feed simulator listens at its REST port + 10 (KITE_TICKER_URL, DHAN_FEED_URL)


def demo_simulators_start(name: str, *, port: int) -> list:
    """Start one simulated broker for the demo: its REST simulator and, for Kite and Dhan, its live-feed socket
    (streaming the shared market every second, accepting the sessions the REST simulator issued)."""
    from brokers.simulators.base import SimulatorServer

    app = simulator_app(name)
    servers: list = [SimulatorServer(app, port=port).start()]
    if name == "kite":
        from brokers.simulators.kite_ticker import KiteTickerSimulator

        servers.append(
            KiteTickerSimulator(port=port + FEED_PORT_OFFSET, stream_interval=1.0, authorize=app.has_session).start()
        )
    elif name == "dhan":
        from brokers.simulators.dhan_feed import DhanFeedSimulator

        servers.append(
            DhanFeedSimulator(port=port + FEED_PORT_OFFSET, stream_interval=1.0, authorize=app.client_for_token).start()
        )
    return servers
