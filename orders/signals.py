"""What the order pipeline announces. Receivers connect in their `AppConfig.ready()`, so the services never import
them: this app's WebSocket pushes (`orders.receivers`, which render through `orders.presenters`) and the risk
engine above it."""

from django.dispatch import Signal

# Sent with `order` inside the transaction that saved a change of status, terms or fills, at the point the change
# is told to the user (the push itself waits for the commit). Sent with `send`: a push that cannot be rendered is a
# bug, and fails the change as it did when the services rendered it themselves.
order_changed = Signal()

# Sent with `trade` and then `position` inside the transaction that recorded a fill, in that order.
trade_recorded = Signal()
position_changed = Signal()

# Sent with `user_id` and `order_id` once the transaction that recorded a fill has committed: the user's MTM changed
# without a tick (the risk engine re-evaluates them). Sent with `send_robust`: a fill must not fail on a listener.
fill_applied = Signal()
