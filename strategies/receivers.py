"""Reactions of the strategies app to what other apps announce; each only delegates to a service."""

from __future__ import annotations

from strategies.services import strategies_monitor, strategies_stop_for_user


def on_trading_revoked(sender, *, user, actor, reason: str, **kwargs) -> None:
    strategies_stop_for_user(user=user, actor=actor, reason=reason)


def on_sweep_finished(sender, **kwargs) -> None:
    strategies_monitor()
