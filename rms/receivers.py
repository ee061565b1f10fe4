"""How RMS hears what the floors below it announce; `RmsConfig.ready()` connects these receivers."""

from __future__ import annotations

import logging

from django.conf import settings

from rms.tasks import evaluate_symbols

logger = logging.getLogger(__name__)


def on_ticks_published(sender: object, *, symbols: list[str], **kwargs: object) -> None:
    """Tick-driven RMS: the users holding these symbols are evaluated at once rather than at the next sweep."""
    if not settings.RMS_TICK_EVALUATION:
        return
    try:
        evaluate_symbols.delay(symbols)
    except Exception:  # the sweep still runs; a tick must reach its subscribers whatever happens here
        logger.exception("tick-driven risk evaluation could not be queued")
