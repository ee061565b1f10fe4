from django.apps import AppConfig


def _paper_fills_reconcile(venue: str, client_id: str, order_ids: list[str]) -> None:
    """A quote filled resting paper orders: the paper account (whose exchange client id is our account id) is
    reconciled at once, as a broker's postback would make us do."""
    from brokers.models import Venue
    from orders.tasks import reconcile_account

    if venue == Venue.PAPER:
        reconcile_account.delay(client_id)


class OrdersConfig(AppConfig):
    """Orders and their state machine, trades, positions, portfolio and reconciliation."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "orders"

    def ready(self) -> None:
        from brokers.exchange import order_changes_listen

        order_changes_listen(_paper_fills_reconcile)
