"""How the rest of the platform reaches a broker: `adapter_for(account)` gives the account's adapter behind
pacing, the circuit breaker and session checks. Nothing else constructs adapters."""

from __future__ import annotations

import importlib
import logging
from typing import Any

from django.conf import settings

from algoterm.models import PlatformMode
from algoterm.system import platform_state
from brokers.models import AccountStatus, Broker, BrokerAccount
from brokers.protection import CircuitBreaker, pace_order
from brokers.protocol import (
    AdapterConfig,
    BrokerAdapter,
    BrokerError,
    BrokerInstrument,
    BrokerOrder,
    BrokerSession,
    BrokerUnavailable,
    SessionExpired,
)
from brokers.sessions import broker_session_mark_expired

logger = logging.getLogger(__name__)

ADAPTERS = {
    "paper": "brokers.adapters.paper.PaperAdapter",
    "zerodha": "brokers.adapters.zerodha.ZerodhaAdapter",
    "dhan": "brokers.adapters.dhan.DhanAdapter",
    "fyers": "brokers.adapters.fyers.FyersAdapter",
}


def adapter_class(broker: str) -> type[BrokerAdapter]:
    module_name, _, class_name = ADAPTERS[broker].rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


def adapter_config(broker: str, *, proxy_url: str = "") -> AdapterConfig:
    base_url, extra = {
        "paper": ("", {}),
        "zerodha": (settings.KITE_ROOT_URL, {"login_url": settings.KITE_LOGIN_URL}),
        "dhan": (settings.DHAN_BASE_URL, {}),
        "fyers": (settings.FYERS_API_URL, {"data_url": settings.FYERS_DATA_URL}),
    }[broker]
    return AdapterConfig(base_url=base_url, timeout=settings.BROKER_TIMEOUT_SECONDS, proxy_url=proxy_url, extra=extra)


# The brokers that publish an instrument master anyone may download (no session needed).
PUBLIC_MASTERS = ("dhan", "fyers")


def instrument_master_fetch(*, broker: str) -> list[BrokerInstrument]:
    """Dhan's or Fyers' published instrument master (their adapters know the files); BrokerError when the download
    fails or the file is not what the broker publishes."""
    if broker not in PUBLIC_MASTERS:
        raise BrokerError(f"{broker} publishes no open instrument master; Kite's dump needs an account.")
    module = importlib.import_module(ADAPTERS[broker].rpartition(".")[0])
    try:
        return module.instrument_master_fetch(timeout=settings.INSTRUMENT_MASTER_TIMEOUT_SECONDS)
    except BrokerError:
        raise
    except Exception as error:  # an adapter's own bug must read as a failed download, never crash the refresh
        logger.exception("the %s instrument master download failed", broker)
        raise BrokerUnavailable(f"The {broker} instrument master could not be read: {type(error).__name__}.") from None


def build_adapter(
    *, broker: str, credentials: dict[str, Any], session: dict[str, Any] | None, account_ref: str, proxy_url: str = ""
) -> BrokerAdapter:
    return adapter_class(broker)(
        credentials=credentials,
        session=BrokerSession(**session) if session else None,
        config=adapter_config(broker, proxy_url=proxy_url),
        account_ref=account_ref,
    )


class GuardedAdapter:
    """The account's adapter with pacing on order writes, a circuit breaker on every call, and session expiry
    recorded on the account the moment the broker reports it."""

    PACED = frozenset({"place_order", "modify_order", "cancel_order"})
    GUARDED = PACED | frozenset(
        {
            "orders",
            "order",
            "orders_by_tag",
            "trades",
            "positions",
            "holdings",
            "funds",
            "quotes",
            "logout",
            "instruments",
            "historical_candles",
        }
    )

    def __init__(self, account: BrokerAccount, inner: BrokerAdapter | PaperRouted) -> None:
        self.account = account
        self.inner = inner
        self.breaker = CircuitBreaker(account.pk)

    def __repr__(self) -> str:
        return f"GuardedAdapter({self.inner!r})"

    def __getattr__(self, name: str):
        attribute = getattr(self.inner, name)
        if name not in self.GUARDED:
            return attribute

        def guarded(*args, **kwargs):
            if name in self.PACED:
                pace_order(account_id=self.account.pk, broker=self.account.broker)
            self.breaker.before_call()
            try:
                result = attribute(*args, **kwargs)
            except BrokerUnavailable:
                self.breaker.record_failure()
                raise
            except SessionExpired:
                self.breaker.record_success()
                broker_session_mark_expired(account=self.account, reason="the broker reported the session expired")
                raise
            except BrokerError:
                self.breaker.record_success()  # the broker answered (a rejection, bad input): it is up
                raise
            self.breaker.record_success()
            return result

        return guarded


def require_connected(account: BrokerAccount) -> None:
    """409 BROKER_SESSION_EXPIRED unless the account has a live session."""
    if account.status != AccountStatus.CONNECTED:
        raise SessionExpired(f"Broker account {account.label} needs a login ({account.status}).")


class PaperRouted:
    """Platform paper mode (`algoterm.system`) for a real account: its trading book (orders, trades, positions,
    holdings, funds) is the paper broker's, on an exchange account of its own bound to our account id, so
    placing, cancelling and reconciling that account stay consistent while paper mode lasts. Market data, the
    instrument dump and the session still come from the real broker."""

    TRADING_BOOK = frozenset(
        {
            "place_order",
            "modify_order",
            "cancel_order",
            "orders",
            "order",
            "orders_by_tag",
            "trades",
            "positions",
            "holdings",
            "funds",
            "order_as_placed",
        }
    )

    def __init__(self, *, real: BrokerAdapter, paper: BrokerAdapter) -> None:
        self.real = real
        self.paper = paper

    def __repr__(self) -> str:
        return f"PaperRouted({self.paper!r}, instead of {self.real!r})"

    def __getattr__(self, name: str):
        return getattr(self.paper if name in self.TRADING_BOOK else self.real, name)


def adapter_for(account: BrokerAccount) -> GuardedAdapter:
    """The connected account's adapter; 409 BROKER_SESSION_EXPIRED when it needs a login first.

    In platform paper mode a real account trades on the paper broker instead (see `PaperRouted`)."""
    require_connected(account)
    inner = build_adapter(
        broker=account.broker,
        credentials=account.credentials,
        session=account.session,
        account_ref=account.pk,
        proxy_url=account.proxy_url,
    )
    if account.broker != Broker.PAPER and platform_state().mode == PlatformMode.PAPER:
        # The paper adapter funds the account's exchange account with PAPER_OPENING_BALANCE on first use.
        paper = build_adapter(
            broker=Broker.PAPER,
            credentials={"opening_balance": settings.PAPER_OPENING_BALANCE},
            session=None,
            account_ref=account.pk,
        )
        inner = PaperRouted(real=inner, paper=paper)
    return GuardedAdapter(account, inner)


def kite_order_parse(payload: dict[str, Any]) -> BrokerOrder:
    """A Kite order as Kite pushes it (postback or ticker update), in our vocabulary. Raises what the field parsing
    raises (KeyError, ValueError...) on a malformed one."""
    # The Kite adapter brings its SDK: loaded with the first push, like adapter_for loads it with the first call.
    from brokers.adapters.zerodha import order_from_kite

    return order_from_kite(payload)
