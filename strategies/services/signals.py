"""What the operators see of every signal, webhook or rule, accepted or refused: on /ws/ops `signals` as it is
recorded, and in that topic's snapshot."""

from __future__ import annotations

from typing import Any

from algoterm.realtime import ops_publish

from ..models import Signal


def signal_ops_view(signal: Signal) -> dict[str, Any]:
    return {
        "id": signal.pk,
        "strategy_id": signal.strategy_id,
        "user_id": signal.user_id,
        "source": signal.source,
        "action": signal.action,
        "symbol": signal.symbol,
        "quantity": signal.quantity,
        "status": signal.status,
        "reason": signal.reason,
        "detail": signal.detail,
        "order_ids": signal.order_ids,
        "remote_addr": signal.remote_addr,
        "received_at": signal.received_at,
    }


def signal_announce(*, signal: Signal) -> None:
    """After commit, the signal as it now stands goes to the operators (`signal` on the `signals` topic)."""
    ops_publish(topic="signals", message_type="signal", payload=signal_ops_view(signal))
