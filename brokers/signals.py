"""What the brokers app announces to the floors above it. They connect in their `AppConfig.ready()`, so brokers
never imports them."""

from django.dispatch import Signal

# Sent for each order update a broker pushed on an account's order socket (Dhan's order-update WebSocket, Fyers'
# order socket), with `account_id` (the account whose token opened the socket), `broker` and `data`: the broker's
# order object as it arrived (Dhan: the message's `Data`; Fyers: the SDK's `orders` object). A push is only a signal
# that the order changed, never a fact: receivers read the order from the broker. Sent with `send`: a receiver's
# error reaches the stream, which logs it and keeps listening.
broker_order_update_received = Signal()
