from django.apps import AppConfig


def _paper_fills_reconcile(venue: str, client_id: str, order_ids: list[str]) -> None:
    """A quote filled resting paper orders: the paper account (whose exchange client id is our account id) is
    reconciled at once, as a broker's postback would make us do."""
    from brokers.models import Venue
    from orders.tasks import reconcile_account

    if venue == Venue.PAPER:
        reconcile_account.delay(client_id)


def _events_snapshot(*, user) -> dict:
    """Part of the /ws/events snapshot: open orders and open positions as GET /api/orders?open=true and
    GET /api/positions?open=true render them, so a reconnecting client rebuilds its books from it."""
    from orders.selectors import last_prices, order_list, position_list
    from orders.serializers import OrderOutput, PositionOutput

    positions = list(position_list(user=user, open_only=True))
    quotes = last_prices([position.symbol for position in positions])
    return {
        "orders": OrderOutput(order_list(user=user, open_only=True), many=True).data,
        "positions": PositionOutput(positions, many=True, context={"quotes": quotes}).data,
    }


class OrdersConfig(AppConfig):
    """Orders and their state machine, trades, positions, portfolio and reconciliation."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "orders"

    def ready(self) -> None:
        from algoterm.realtime import snapshot_part_register
        from brokers.exchange import order_changes_listen
        from marketdata.signals import kite_order_update_received
        from orders.receivers import on_kite_order_update_received

        order_changes_listen(_paper_fills_reconcile)
        snapshot_part_register(_events_snapshot)
        kite_order_update_received.connect(on_kite_order_update_received, dispatch_uid="orders.kite_socket_update")
