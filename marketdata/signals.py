"""What market data announces to the floors above it. They connect in their `AppConfig.ready()`, so market data
never imports them."""

from django.dispatch import Signal

# Sent by the tick bus once the quote cache holds a batch of fresh ticks, with `symbols`: the instruments that moved.
ticks_published = Signal()

# Sent for each order update that arrived on a Zerodha account's Kite ticker, with `account_id` and `data` (the
# postback-shaped dict). Sent with `send`: a receiver's error reaches the feed, which logs it and keeps ticking.
kite_order_update_received = Signal()
