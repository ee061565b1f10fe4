"""Reads of the brokers app, scoped to the user who asks."""

from __future__ import annotations

from django.db.models import Count, Exists, OuterRef, Prefetch, QuerySet

from accounts.models import User
from algoterm.api.errors import NotFound
from brokers.gateway import adapter_for
from brokers.models import AccountStatus, Broker, BrokerAccount, SimOrder, Venue
from brokers.protocol import Funds


def broker_account_list(*, user: User, broker: str | None = None, status: str | None = None) -> QuerySet[BrokerAccount]:
    accounts = BrokerAccount.objects.filter(owner=user, deleted_at__isnull=True)
    if broker:
        accounts = accounts.filter(broker=broker)
    if status:
        accounts = accounts.filter(status=status)
    return accounts.order_by("created_at", "id")


def broker_account_get(*, user: User, account_id: str) -> BrokerAccount:
    account = BrokerAccount.objects.filter(owner=user, pk=account_id, deleted_at__isnull=True).first()
    if account is None:
        raise NotFound()
    return account


def broker_account_funds(*, user: User, account_id: str) -> Funds:
    """Live from the broker: 409 BROKER_SESSION_EXPIRED when a login is needed, 503 when the broker is down."""
    return adapter_for(broker_account_get(user=user, account_id=account_id)).funds()


def paper_account_get(*, user: User) -> BrokerAccount | None:
    """The user's connected paper account (the oldest, if there are several); None when there is none."""
    return broker_account_list(user=user, broker=Broker.PAPER, status=AccountStatus.CONNECTED).first()


# --- platform-wide, for the operator console (every user's accounts) -------------------------------------------------


def broker_account_live_prefetch(*, users: QuerySet[User], broker: str | None = None) -> QuerySet[User]:
    """The users with their live (not deleted) broker accounts prefetched into `live_broker_accounts`, oldest
    first; with `broker`, only users holding a live account at that broker."""
    if broker:
        users = users.filter(
            Exists(BrokerAccount.objects.filter(owner=OuterRef("pk"), broker=broker, deleted_at__isnull=True))
        )
    live_accounts = BrokerAccount.objects.filter(deleted_at__isnull=True).order_by("created_at", "id")
    return users.prefetch_related(Prefetch("broker_accounts", queryset=live_accounts, to_attr="live_broker_accounts"))


def broker_account_platform_counts() -> dict[tuple[str, str], int]:
    """Live (not deleted) broker accounts of every user, counted per (broker, status)."""
    grouped = (
        BrokerAccount.objects.filter(deleted_at__isnull=True)
        .order_by()
        .values_list("broker", "status")
        .annotate(count=Count("pk"))
    )
    return {(broker, status): count for broker, status, count in grouped}


def broker_account_platform_connected() -> list[tuple[str, str]]:
    """(id, broker) of every user's live, connected broker account."""
    return list(
        BrokerAccount.objects.filter(deleted_at__isnull=True, status=AccountStatus.CONNECTED).values_list(
            "pk", "broker"
        )
    )


def broker_accounts_market_data(*, broker: str | None = None, connected_only: bool = True) -> list[BrokerAccount]:
    """The accounts an operator designated as the platform's market-data sources, in failover order (priority, then
    the oldest); with `connected_only`, only those whose session is live."""
    accounts = BrokerAccount.objects.filter(deleted_at__isnull=True, market_data_priority__isnull=False).exclude(
        broker=Broker.PAPER
    )
    if broker:
        accounts = accounts.filter(broker=broker)
    if connected_only:
        accounts = accounts.filter(status=AccountStatus.CONNECTED)
    return list(accounts.select_related("owner").order_by("market_data_priority", "created_at", "id"))


def broker_account_any_connected(*, broker: str) -> BrokerAccount | None:
    """The oldest live, connected account at `broker` (any user's): what platform chores fall back to."""
    return (
        BrokerAccount.objects.filter(deleted_at__isnull=True, status=AccountStatus.CONNECTED, broker=broker)
        .order_by("created_at", "id")
        .first()
    )


def sim_order_paper_tags(*, tags: list[str]) -> set[str]:
    """Which of these order tags the simulated exchange's paper venue holds (orders platform paper mode sent
    there)."""
    return set(SimOrder.objects.filter(account__venue=Venue.PAPER, tag__in=tags).values_list("tag", flat=True))


def broker_account_find(*, account_id: str, include_disconnected: bool = True) -> BrokerAccount | None:
    """Any user's broker account by id, for operators' commands (not scoped to a user: never for a user's request);
    None when there is none. `include_disconnected=False` leaves out accounts their owner disconnected."""
    accounts = BrokerAccount.objects.filter(pk=account_id)
    if not include_disconnected:
        accounts = accounts.filter(deleted_at__isnull=True)
    return accounts.first()


def broker_account_latest_connected(*, broker: str) -> BrokerAccount | None:
    """The most recently connected live account of `broker` across all users (operators' platform-wide tasks, such
    as re-syncing the instrument master from a Zerodha dump); None when there is none."""
    return (
        BrokerAccount.objects.filter(broker=broker, status=AccountStatus.CONNECTED, deleted_at__isnull=True)
        .order_by("-connected_at", "pk")
        .first()
    )
