"""How RMS hears what the floors below it announce, and what it registers with them. `RmsConfig.ready()` calls
`receivers_connect()` once."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.cache import cache

from marketdata.signals import ticks_published
from orders.hooks import pre_trade_check_register
from orders.signals import fill_applied
from rms.services import check_order, evaluation_request
from rms.tasks import evaluate_symbols, funds_snapshot_refresh

logger = logging.getLogger(__name__)

FUNDS_REFRESH_WINDOW = 2  # seconds


def on_ticks_published(sender: object, *, symbols: list[str], **kwargs: object) -> None:
    """Tick-driven RMS: the users holding these symbols are evaluated at once rather than at the next sweep."""
    if not settings.RMS_TICK_EVALUATION:
        return
    try:
        evaluate_symbols.delay(symbols)
    except Exception:  # the sweep still runs; a tick must reach its subscribers whatever happens here
        logger.exception("tick-driven risk evaluation could not be queued")


def on_fill_applied(sender: object, *, user_id: str, account_id: str | None = None, **kwargs: object) -> None:
    """A fill changed the user's MTM (realized PnL, a new position) without a tick: they are evaluated again, and the
    account's funds snapshot is refreshed off the order path."""
    try:
        evaluation_request(user_id=user_id)
        # A burst of fills asks for one refresh per account and window, not one per fill (queueing costs more than
        # the check it saves); the snapshot is still never older than RMS_FUNDS_MAX_AGE_SECONDS.
        # Nothing reads the snapshot when the funds check is off.
        queue_refresh = settings.RMS_FUNDS_CHECK and account_id is not None
        if queue_refresh and cache.add(f"rms:funds-refresh-queued:{account_id}", True, FUNDS_REFRESH_WINDOW):
            funds_snapshot_refresh.delay(account_id)
    except Exception:  # the beat sweep evaluates everyone anyway; a fill must not fail on this
        logger.exception("risk re-evaluation after a fill could not be queued")


def receivers_connect() -> None:
    ticks_published.connect(on_ticks_published, dispatch_uid="rms.evaluate_on_ticks")
    fill_applied.connect(on_fill_applied, dispatch_uid="rms.evaluate_after_fill")
    # Every order that adds exposure passes this check before it goes out (orders refuses all of them without one).
    pre_trade_check_register(check_order)
