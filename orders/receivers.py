"""How the orders app hears what the floors below it announce; `OrdersConfig.ready()` connects these receivers."""

from __future__ import annotations

from typing import Any

from orders import postbacks


def on_kite_order_update_received(sender: object, *, account_id: str, data: dict[str, Any], **kwargs: object) -> None:
    """An order update that came on a Zerodha account's Kite ticker: applied as a postback for that account."""
    postbacks.kite_socket_update_apply(account_id=account_id, data=data)
