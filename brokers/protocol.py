"""The one broker interface: our vocabulary, typed values, one error taxonomy, and the adapter contract.

Every adapter translates between these types and its broker's wire format; nothing outside `brokers.adapters`
ever sees a broker's own field names, codes or exceptions.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, ClassVar

from algoterm.api.errors import AppError, ErrorCode

# --- vocabulary --------------------------------------------------------------------------------------------------


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class Product(StrEnum):
    MIS = "MIS"  # intraday
    CNC = "CNC"  # delivery
    NRML = "NRML"  # carry-forward F&O


# The share of an order's value a broker blocks as margin, by product: intraday is leveraged (about 5x for equity),
# delivery and carry-forward are not. The simulated exchange charges it; the pre-trade funds check estimates with it.
MARGIN_RATE = {Product.MIS: Decimal("0.20"), Product.CNC: Decimal("1"), Product.NRML: Decimal("1")}


class OrderType(StrEnum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"
    SL = "SL"  # stop-loss limit
    SL_M = "SL-M"  # stop-loss market


class Validity(StrEnum):
    DAY = "DAY"
    IOC = "IOC"


class BrokerOrderStatus(StrEnum):
    PENDING = "PENDING"  # received, not yet at the exchange
    OPEN = "OPEN"
    TRIGGER_PENDING = "TRIGGER_PENDING"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"

    @property
    def is_final(self) -> bool:
        return self in (self.FILLED, self.CANCELLED, self.REJECTED, self.EXPIRED)


# Exchanges as they appear in our canonical symbols `EXCHANGE:TRADINGSYMBOL`.
EXCHANGES = ("NSE", "BSE", "NFO", "BFO", "MCX", "CDS")


def split_symbol(symbol: str) -> tuple[str, str]:
    """`NSE:INFY` -> ("NSE", "INFY"); raises InvalidInput for anything else."""
    exchange, sep, tradingsymbol = symbol.partition(":")
    if not sep or exchange not in EXCHANGES or not tradingsymbol:
        raise InvalidInput(f"Symbols look like NSE:INFY; got {symbol!r}.")
    return exchange, tradingsymbol


# --- values ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderRequest:
    symbol: str
    side: Side
    quantity: int
    order_type: OrderType
    product: Product
    price: Decimal | None = None
    trigger_price: Decimal | None = None
    validity: Validity = Validity.DAY
    tag: str = ""  # our order id in compact form: comes back on the broker's order so we can reconcile by it
    algo_id: str = ""  # the exchange algo id every API order must carry
    market_protection: Decimal | None = None  # percent; None lets the adapter apply the broker's default


@dataclass(frozen=True)
class ModifyRequest:
    quantity: int | None = None
    price: Decimal | None = None
    trigger_price: Decimal | None = None
    order_type: OrderType | None = None


@dataclass(frozen=True)
class BrokerOrder:
    broker_order_id: str
    symbol: str
    side: Side
    quantity: int
    filled_quantity: int
    order_type: OrderType
    product: Product
    status: BrokerOrderStatus
    price: Decimal | None = None
    trigger_price: Decimal | None = None
    average_price: Decimal | None = None
    validity: Validity = Validity.DAY
    tag: str = ""
    status_message: str = ""
    placed_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def pending_quantity(self) -> int:
        return 0 if self.status.is_final else self.quantity - self.filled_quantity


@dataclass(frozen=True)
class BrokerTrade:
    trade_id: str
    broker_order_id: str
    symbol: str
    side: Side
    quantity: int
    price: Decimal
    traded_at: datetime | None = None


@dataclass(frozen=True)
class BrokerPosition:
    symbol: str
    product: Product
    quantity: int  # net: positive long, negative short
    average_price: Decimal
    last_price: Decimal | None = None
    realized_pnl: Decimal = Decimal("0")
    unrealized_pnl: Decimal = Decimal("0")
    buy_quantity: int = 0
    sell_quantity: int = 0


@dataclass(frozen=True)
class Holding:
    symbol: str
    quantity: int
    average_price: Decimal
    last_price: Decimal | None = None


@dataclass(frozen=True)
class Funds:
    available_cash: Decimal
    used_margin: Decimal
    opening_balance: Decimal


@dataclass(frozen=True)
class Quote:
    symbol: str
    last_price: Decimal
    bid: Decimal | None = None
    ask: Decimal | None = None
    bid_quantity: int = 0
    ask_quantity: int = 0
    volume: int = 0
    open: Decimal | None = None
    high: Decimal | None = None
    low: Decimal | None = None
    close: Decimal | None = None
    timestamp: datetime | None = None
    oi: int = 0  # open interest (derivatives)
    oi_change: int = 0  # since the previous session's close


@dataclass(frozen=True)
class HistoricalCandle:
    """One candle of a broker's historical data; `start` is aware (a daily candle starts at 00:00 IST)."""

    start: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: int
    oi: int | None = None


# The candle intervals we import from brokers: the ones we store.
HISTORICAL_INTERVALS = ("1m", "1d")


@dataclass(frozen=True)
class BrokerInstrument:
    """One row of a broker's published instrument master, in our vocabulary. The instrument master
    (`marketdata.instruments`) derives our canonical symbol from it: `EXCHANGE:TRADINGSYMBOL` for cash and
    indices, Kite's contract tradingsymbols (from underlying, expiry, strike and type) for derivatives."""

    exchange: str  # one of EXCHANGES: NSE, BSE, NFO, BFO, MCX, CDS
    instrument_type: str  # EQ, FUT, CE, PE or INDEX
    tradingsymbol: str  # cash: the exchange's symbol (INFY); indices: the broker's index name; F&O: the broker's
    broker_id: str  # what the broker trades and quotes it by: Dhan's security id, Fyers' symbol (NSE:SBIN-EQ)
    name: str = ""
    underlying: str = ""  # derivatives: the underlying's symbol (NIFTY, RELIANCE)
    expiry: date | None = None
    strike: Decimal | None = None
    lot_size: int = 1
    tick_size: Decimal = Decimal("0.05")
    exchange_token: str = ""  # the exchange's own numeric token, where the master gives it
    isin: str = ""


@dataclass(frozen=True)
class BrokerSession:
    """What a completed login gives us; stored encrypted on the account."""

    access_token: str
    broker_user_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --- errors: every adapter raises only these -----------------------------------------------------------------------


class BrokerError(AppError):
    """A broker call failed in a way we could not map: 502 BROKER_ERROR."""

    code = ErrorCode.BROKER_ERROR


class SessionExpired(BrokerError):
    code = ErrorCode.BROKER_SESSION_EXPIRED


class OrderRejected(BrokerError):
    """The broker refused the order; `detail` carries the broker's own message."""

    code = ErrorCode.ORDER_REJECTED


class BrokerRateLimited(BrokerError):
    code = ErrorCode.RATE_LIMITED

    def __init__(self, detail: str | None = None, *, retry_after: float = 1.0) -> None:
        retry = max(1, int(retry_after + 0.999))
        super().__init__(detail, extra={"retry_after": retry}, headers={"Retry-After": str(retry)})


class BrokerUnavailable(BrokerError):
    """Network failure, timeout, 5xx, a garbage body, or the circuit is open."""

    code = ErrorCode.BROKER_UNAVAILABLE


class InvalidInput(BrokerError):
    code = ErrorCode.VALIDATION_ERROR


# --- the contract ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterConfig:
    """Where and how to reach the broker: base URL (a simulator in tests and the demo), timeout, egress proxy."""

    base_url: str = ""
    timeout: float = 7.0
    proxy_url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class BrokerAdapter(abc.ABC):
    """One broker account's connection. Credentials and session come decrypted from the account; the adapter
    never logs them. Every method raises only BrokerError subclasses."""

    broker: str = ""
    uses_oauth: bool = False

    def __init__(
        self, *, credentials: dict[str, Any], session: BrokerSession | None, config: AdapterConfig, account_ref: str
    ) -> None:
        self.credentials = credentials
        self.session = session
        self.config = config
        self.account_ref = account_ref  # our account id: paper uses it as its exchange account

    # login ------------------------------------------------------------------------------------------------------

    def login_url(self, *, state: str, redirect_uri: str) -> str | None:
        """Where the user logs in at the broker (OAuth brokers); None when credentials alone suffice."""
        return None

    @abc.abstractmethod
    def complete_login(self, *, params: dict[str, str], redirect_uri: str) -> BrokerSession:
        """Exchange what the broker's redirect (or the connect request) carried for a session."""

    def logout(self) -> None:  # noqa: B027  (most brokers have no logout; those that do override it)
        """End the session at the broker; best effort."""

    # trading ----------------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def place_order(self, request: OrderRequest) -> str:
        """Returns the broker's order id."""

    @abc.abstractmethod
    def modify_order(self, broker_order_id: str, request: ModifyRequest) -> None: ...

    @abc.abstractmethod
    def cancel_order(self, broker_order_id: str) -> None: ...

    @abc.abstractmethod
    def orders(self) -> list[BrokerOrder]: ...

    def order(self, broker_order_id: str) -> BrokerOrder:
        for order in self.orders():
            if order.broker_order_id == broker_order_id:
                return order
        raise InvalidInput(f"No order {broker_order_id} at the broker.")

    def orders_by_tag(self, tag: str) -> list[BrokerOrder]:
        """Reconciliation: what the broker knows of the order we tagged, if anything."""
        return [order for order in self.orders() if order.tag == tag]

    @abc.abstractmethod
    def trades(self) -> list[BrokerTrade]: ...

    @abc.abstractmethod
    def positions(self) -> list[BrokerPosition]: ...

    @abc.abstractmethod
    def holdings(self) -> list[Holding]: ...

    @abc.abstractmethod
    def funds(self) -> Funds: ...

    @abc.abstractmethod
    def quotes(self, symbols: list[str]) -> dict[str, Quote]: ...

    # instrument master ---------------------------------------------------------------------------------------

    # The longest range one historical request may cover, by interval, in days (the broker's own limits); the
    # importer cuts longer ranges into chunks of this size.
    historical_max_span_days: ClassVar[dict[str, int]] = {"1m": 60, "1d": 2000}

    def instruments(self) -> list[dict]:
        """The broker's instrument dump as rows with the columns of Kite's instrument CSV
        (`marketdata.instruments.KITE_CSV_COLUMNS`), the instrument master's interchange format."""
        raise InvalidInput(f"{self.broker or 'This broker'} offers no instrument dump")

    # historical data -----------------------------------------------------------------------------------------

    # session renewal -------------------------------------------------------------------------------------------

    renews_sessions: bool = False

    def session_renew(self) -> BrokerSession:
        """A fresh session without the browser (Fyers' refresh token with the user's PIN, Dhan's RenewToken), for
        brokers with `renews_sessions`; raises SessionExpired when the broker refuses (the user must log in)."""
        raise InvalidInput(f"{self.broker or 'This broker'} cannot renew a session without a login")

    def historical_candles(
        self, *, symbol: str, interval: str, start: datetime, end: datetime
    ) -> list[HistoricalCandle]:
        """Candles of `interval` (one of HISTORICAL_INTERVALS) starting in [start, end), oldest first. Callers keep
        each request within the broker's span limits."""
        raise InvalidInput(f"{self.broker or 'This broker'} offers no historical data")


def to_decimal(value: Any) -> Decimal | None:
    """Broker numbers (floats, strings, ints) as exact Decimals rounded to paise; None and '' stay None."""
    if value is None or value == "":
        return None
    return Decimal(str(value)).quantize(Decimal("0.01"))
