"""The demo's set-up: its logins, one simulator per broker with credentials printed for newcomers, and the Razorpay
simulator sending webhooks to this server with the paid plans synced."""

from __future__ import annotations

import importlib
import importlib.util
import logging

from django.conf import settings

from accounts.models import Role
from algoterm.sandbox.simulators.base import SimulatorApp, SimulatorServer
from algoterm.sandbox.simulators.razorpay import RazorpaySimulator
from billing.services import plans_sync

logger = logging.getLogger(__name__)

DEMO_USERS = [
    {
        "email": "admin@example.com",
        "password": "Admin@Demo2026",
        "name": "Demo Admin",
        "phone": "+919800000001",
        "role": Role.ADMIN,
    },
    {
        "email": "trader@example.com",
        "password": "Trader@Demo2026",
        "name": "Demo Trader",
        "phone": "+919800000002",
        "role": Role.TRADER,
    },
]

DEMO_CREDENTIALS = {
    "kite": {"api_key": "demo-kite-key", "api_secret": "demo-kite-secret"},
    "dhan": {"client_id": "1000000001", "access_token": "demo-dhan-access-token"},
    "fyers": {"client_id": "DEMO1234-100", "secret_key": "demo-fyers-secret"},
}
BROKER_OF_SIMULATOR = {"kite": "zerodha", "dhan": "dhan", "fyers": "fyers"}
SIMULATOR_MODULES = "algoterm.sandbox.simulators"


def _simulator_module(name: str):
    # By name: a build may leave a simulator's module out (see available_simulators).
    return importlib.import_module(f"{SIMULATOR_MODULES}.{name}")


def simulator_app(name: str) -> SimulatorApp:
    """A simulator with the demo credentials registered."""
    callback = f"{settings.PUBLIC_BASE_URL.rstrip('/')}/api/brokers/callback/{BROKER_OF_SIMULATOR[name]}"
    credentials = DEMO_CREDENTIALS[name]
    if name == "kite":
        app = _simulator_module("kite").KiteSimulator()
        app.register_app(
            credentials["api_key"],
            credentials["api_secret"],
            callback,
            postback_url=f"{settings.PUBLIC_BASE_URL.rstrip('/')}/api/brokers/postback/zerodha",
        )
    elif name == "dhan":
        app = _simulator_module("dhan").DhanSimulator()
        app.register_client(credentials["client_id"], credentials["access_token"])
    else:
        app = _simulator_module("fyers").FyersSimulator()
        app.register_app(credentials["client_id"], credentials["secret_key"])
    return app


def available_simulators() -> list[str]:
    """Simulators whose modules exist in this build."""
    return [name for name in ("kite", "dhan", "fyers") if importlib.util.find_spec(f"{SIMULATOR_MODULES}.{name}")]


# a broker's live-feed simulator listens at its REST port + 10 (KITE_TICKER_URL, DHAN_FEED_URL, FYERS_FEED_URL)
FEED_PORT_OFFSET = 10
# and its order-update socket at + 20 (DHAN_ORDER_SOCKET_URL, FYERS_ORDER_SOCKET_URL)
ORDER_SOCKET_PORT_OFFSET = 20


def demo_simulators_start(name: str, *, port: int) -> list:
    """Start one simulated broker for the demo: its REST simulator, its live-feed socket (streaming the shared market
    every second) and, for Dhan and Fyers, its order-update socket, all accepting the sessions the REST simulator
    issued."""
    app = simulator_app(name)
    servers: list = [SimulatorServer(app, port=port).start()]
    if name == "kite":
        ticker = _simulator_module("kite_ticker").KiteTickerSimulator
        servers.append(ticker(port=port + FEED_PORT_OFFSET, stream_interval=1.0, authorize=app.has_session).start())
    elif name == "dhan":
        feed = _simulator_module("dhan_feed").DhanFeedSimulator
        servers.append(feed(port=port + FEED_PORT_OFFSET, stream_interval=1.0, authorize=app.client_for_token).start())
    elif name == "fyers":
        # Its symbol-token lookup and index mapping go on the REST simulator, as Fyers serves them from its data host.
        feed = _simulator_module("fyers_feed").FyersFeedSimulator(
            port=port + FEED_PORT_OFFSET, serve_http=False, stream_interval=1.0, authorize=app.user_for_token
        )
        feed.routes_add(app)
        servers.append(feed.start())
    if name == "dhan":
        orders = _simulator_module("dhan_order_socket").DhanOrderSocketSimulator
        servers.append(orders(port=port + ORDER_SOCKET_PORT_OFFSET, authorize=app.client_for_token).start())
    elif name == "fyers":
        module = _simulator_module("fyers_order_socket")
        socket = module.FyersOrderSocketSimulator(
            port=port + ORDER_SOCKET_PORT_OFFSET, authorize=module.fyers_sessions(app)
        )
        servers.append(socket.start())
    return servers


def razorpay_simulator_start(*, port: int) -> SimulatorServer:
    """Start the Razorpay simulator with the configured (demo) keys and link the plans to it; returns the server."""
    app = RazorpaySimulator(
        key_id=settings.RAZORPAY_KEY_ID,
        key_secret=settings.RAZORPAY_KEY_SECRET,
        webhook_secret=settings.RAZORPAY_WEBHOOK_SECRET,
        webhook_url=f"{settings.PUBLIC_BASE_URL.rstrip('/')}/api/billing/webhook",
    )
    server = SimulatorServer(app, port=port).start()
    try:
        plans_sync()
    except Exception:  # the demo still serves; `manage.py billing_sync_plans` can link the plans later
        logger.exception("could not sync the plans to the Razorpay simulator")
    return server
