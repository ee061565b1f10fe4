"""The demo's Razorpay: the simulator on its port, sending webhooks to this server, with the paid plans synced."""

from __future__ import annotations

import logging

from django.conf import settings

logger = logging.getLogger(__name__)


def razorpay_simulator_start(*, port: int):
    """Start the simulator with the configured (demo) keys and link the plans to it; returns the server."""
    from billing.services import plans_sync
    from billing.simulator import RazorpaySimulator
    from brokers.simulators.base import SimulatorServer

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
