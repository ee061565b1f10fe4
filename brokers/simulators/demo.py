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
        app.register_app(credentials["api_key"], credentials["api_secret"], callback)
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
