"""Zerodha through the official `kiteconnect` SDK."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import requests
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kite_errors

from brokers.egress import PublicProxyAdapter, session_guard
from brokers.instruments import by_symbol
from brokers.protocol import (
    BrokerAdapter,
    BrokerError,
    BrokerOrder,
    BrokerOrderStatus,
    BrokerPosition,
    BrokerRateLimited,
    BrokerSession,
    BrokerTrade,
    BrokerUnavailable,
    Funds,
    HistoricalCandle,
    Holding,
    InvalidInput,
    ModifyRequest,
    OrderRejected,
    OrderRequest,
    OrderType,
    Product,
    Quote,
    SessionExpired,
    Side,
    Validity,
    split_symbol,
    to_decimal,
)

T = TypeVar("T")
IST = ZoneInfo("Asia/Kolkata")

# Our vocabulary -> Kite's (Kite's words are ours for these, but the tables keep the mapping explicit and tested).
SIDE_TO_KITE = {Side.BUY: "BUY", Side.SELL: "SELL"}
PRODUCT_TO_KITE = {Product.MIS: "MIS", Product.CNC: "CNC", Product.NRML: "NRML"}
ORDER_TYPE_TO_KITE = {OrderType.MARKET: "MARKET", OrderType.LIMIT: "LIMIT", OrderType.SL: "SL", OrderType.SL_M: "SL-M"}
VALIDITY_TO_KITE = {Validity.DAY: "DAY", Validity.IOC: "IOC"}
SIDE_FROM_KITE = {value: key for key, value in SIDE_TO_KITE.items()}
# Kite's other products held in our three: bracket/cover orders are intraday, margin-funded delivery is delivery.
PRODUCT_FROM_KITE = {value: key for key, value in PRODUCT_TO_KITE.items()} | {
    "BO": Product.MIS,
    "CO": Product.MIS,
    "MTF": Product.CNC,
}
ORDER_TYPE_FROM_KITE = {value: key for key, value in ORDER_TYPE_TO_KITE.items()}
VALIDITY_FROM_KITE = {value: key for key, value in VALIDITY_TO_KITE.items()} | {"TTL": Validity.DAY}
# Kite's order statuses (including its transient ones) -> ours; OPEN with fills becomes PARTIALLY_FILLED.
STATUS_FROM_KITE = {
    "PUT ORDER REQ RECEIVED": BrokerOrderStatus.PENDING,
    "VALIDATION PENDING": BrokerOrderStatus.PENDING,
    "OPEN PENDING": BrokerOrderStatus.PENDING,
    "AMO REQ RECEIVED": BrokerOrderStatus.PENDING,
    "MODIFY VALIDATION PENDING": BrokerOrderStatus.OPEN,
    "MODIFY PENDING": BrokerOrderStatus.OPEN,
    "CANCEL PENDING": BrokerOrderStatus.OPEN,
    "OPEN": BrokerOrderStatus.OPEN,
    "UPDATE": BrokerOrderStatus.OPEN,  # postbacks only: a working order was modified or partly filled
    "TRIGGER PENDING": BrokerOrderStatus.TRIGGER_PENDING,
    "COMPLETE": BrokerOrderStatus.FILLED,
    "CANCELLED": BrokerOrderStatus.CANCELLED,
    "REJECTED": BrokerOrderStatus.REJECTED,
}
INTERVAL_TO_KITE = {"1m": "minute", "1d": "day"}
KITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
# -1 asks Kite to apply its automatic market protection, which SEBI requires on API market orders.
AUTO_MARKET_PROTECTION = -1


def status_from_kite(status: str, filled_quantity: int) -> BrokerOrderStatus:
    ours = STATUS_FROM_KITE.get(status.upper(), BrokerOrderStatus.PENDING)
    if ours == BrokerOrderStatus.OPEN and filled_quantity > 0:
        return BrokerOrderStatus.PARTIALLY_FILLED
    return ours


def _call(operation: Callable[[], T]) -> T:
    """Runs one SDK call and turns every failure into our taxonomy. Messages from the broker are passed on;
    bodies of garbage responses (which the SDK puts in its exception text) are not."""
    try:
        return operation()
    except kite_errors.TokenException as error:
        raise SessionExpired(f"Zerodha session expired or invalid: {error}") from None
    except kite_errors.InputException as error:
        raise InvalidInput(f"Zerodha: {error}") from None
    except kite_errors.OrderException as error:
        raise OrderRejected(f"Zerodha: {error}") from None
    except kite_errors.DataException:
        raise BrokerUnavailable("Zerodha answered with a response we could not read.") from None
    except kite_errors.NetworkException as error:
        if error.code == 429:
            raise BrokerRateLimited("Zerodha rate limit reached.", retry_after=1) from None
        raise BrokerUnavailable(f"Zerodha network error: {error}") from None
    except kite_errors.KiteException as error:
        if error.code >= 500:
            raise BrokerUnavailable(f"Zerodha is unavailable (HTTP {error.code}).") from None
        raise BrokerError(f"Zerodha: {error}") from None
    except requests.Timeout:
        raise BrokerUnavailable("Zerodha did not answer in time.") from None
    except requests.RequestException:
        raise BrokerUnavailable("Zerodha could not be reached.") from None


def _kite_time(value: Any) -> datetime | None:
    """Kite's "YYYY-MM-DD HH:MM:SS" (exchange time, IST), which the SDK parses into naive datetimes and postbacks
    carry as text; we keep them aware."""
    if isinstance(value, str):
        try:
            value = datetime.strptime(value, KITE_TIME_FORMAT)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=IST)


def _decimal(value: Any) -> Decimal | None:
    decimal = to_decimal(value)
    return decimal if decimal else None


def order_from_kite(data: dict[str, Any]) -> BrokerOrder:
    """One Kite order dict (an order book row, the last history entry, or a postback body) as a BrokerOrder.
    Raises KeyError, ValueError, TypeError, AttributeError or decimal.InvalidOperation when a field is missing or
    malformed."""
    filled = int(data.get("filled_quantity") or 0)
    return BrokerOrder(
        broker_order_id=str(data["order_id"]),
        symbol=f"{data['exchange']}:{data['tradingsymbol']}",
        side=SIDE_FROM_KITE[data["transaction_type"]],
        quantity=int(data["quantity"]),
        filled_quantity=filled,
        order_type=ORDER_TYPE_FROM_KITE[data["order_type"]],
        product=PRODUCT_FROM_KITE[data["product"]],
        status=status_from_kite(data["status"], filled),
        price=_decimal(data.get("price")),
        trigger_price=_decimal(data.get("trigger_price")),
        average_price=_decimal(data.get("average_price")),
        validity=VALIDITY_FROM_KITE.get(data.get("validity") or "DAY", Validity.DAY),
        tag=data.get("tag") or "",
        status_message=data.get("status_message") or "",
        placed_at=_kite_time(data.get("order_timestamp")),
        updated_at=_kite_time(data.get("exchange_timestamp")),
    )


class ZerodhaAdapter(BrokerAdapter):
    broker = "zerodha"
    uses_oauth = True

    def __repr__(self) -> str:
        return f"ZerodhaAdapter(account={self.account_ref})"

    _client: KiteConnect | None = None

    def _kite(self) -> KiteConnect:
        """One SDK client (and so one pooled HTTPS connection) per adapter."""
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def _new_client(self) -> KiteConnect:
        kite = KiteConnect(
            api_key=self.credentials["api_key"],
            access_token=self.session.access_token if self.session else None,
            root=self.config.base_url,
            timeout=self.config.timeout,
            proxies={"http": self.config.proxy_url, "https": self.config.proxy_url} if self.config.proxy_url else None,
        )
        kite._default_login_uri = self.config.extra.get("login_url", kite._default_login_uri)
        session_guard(kite.reqsession, PublicProxyAdapter(self.config.proxy_url))
        return kite

    # --- login ----------------------------------------------------------------------------------------------------

    def login_url(self, *, state: str, redirect_uri: str) -> str:
        # Kite sends users back to the redirect URL registered for the app; `redirect_params` rides along.
        return f"{self._kite().login_url()}&{urlencode({'redirect_params': urlencode({'state': state})})}"

    def complete_login(self, *, params: dict[str, str], redirect_uri: str) -> BrokerSession:
        if params.get("status") not in (None, "success") or not params.get("request_token"):
            raise SessionExpired("Zerodha login was not completed.")
        data = _call(lambda: self._kite().generate_session(params["request_token"], self.credentials["api_secret"]))
        self.session = BrokerSession(access_token=data["access_token"], broker_user_id=data.get("user_id", ""))
        return self.session

    def logout(self) -> None:
        if self.session:
            _call(lambda: self._kite().invalidate_access_token())

    # --- orders ---------------------------------------------------------------------------------------------------

    def place_order(self, request: OrderRequest) -> str:
        exchange, tradingsymbol = split_symbol(request.symbol)
        params: dict[str, Any] = {
            "variety": "regular",
            "exchange": exchange,
            "tradingsymbol": tradingsymbol,
            "transaction_type": SIDE_TO_KITE[request.side],
            "quantity": request.quantity,
            "product": PRODUCT_TO_KITE[request.product],
            "order_type": ORDER_TYPE_TO_KITE[request.order_type],
            "validity": VALIDITY_TO_KITE[request.validity],
            "price": request.price,
            "trigger_price": request.trigger_price,
            "tag": request.tag or None,
            "algo_id": request.algo_id or None,
        }
        if request.order_type in (OrderType.MARKET, OrderType.SL_M):
            protection = request.market_protection
            params["market_protection"] = AUTO_MARKET_PROTECTION if protection is None else protection
        return str(_call(lambda: self._kite().place_order(**params)))

    def modify_order(self, broker_order_id: str, request: ModifyRequest) -> None:
        _call(
            lambda: self._kite().modify_order(
                variety="regular",
                order_id=broker_order_id,
                quantity=request.quantity,
                price=request.price,
                trigger_price=request.trigger_price,
                order_type=ORDER_TYPE_TO_KITE[request.order_type] if request.order_type else None,
            )
        )

    def cancel_order(self, broker_order_id: str) -> None:
        _call(lambda: self._kite().cancel_order(variety="regular", order_id=broker_order_id))

    def orders(self) -> list[BrokerOrder]:
        return [order_from_kite(data) for data in _call(lambda: self._kite().orders())]

    def order(self, broker_order_id: str) -> BrokerOrder:
        history = _call(lambda: self._kite().order_history(broker_order_id))
        if not history:
            raise InvalidInput(f"No order {broker_order_id} at Zerodha.")
        return order_from_kite(history[-1])

    def trades(self) -> list[BrokerTrade]:
        return [
            BrokerTrade(
                trade_id=str(data["trade_id"]),
                broker_order_id=str(data["order_id"]),
                symbol=f"{data['exchange']}:{data['tradingsymbol']}",
                side=SIDE_FROM_KITE[data["transaction_type"]],
                quantity=int(data["quantity"]),
                price=to_decimal(data["average_price"]),
                traded_at=_kite_time(data.get("fill_timestamp")),
            )
            for data in _call(lambda: self._kite().trades())
        ]

    def positions(self) -> list[BrokerPosition]:
        return [
            BrokerPosition(
                symbol=f"{data['exchange']}:{data['tradingsymbol']}",
                product=PRODUCT_FROM_KITE[data["product"]],
                quantity=int(data["quantity"]),
                average_price=to_decimal(data["average_price"]),
                last_price=to_decimal(data.get("last_price")),
                realized_pnl=to_decimal(data.get("realised") or 0),
                unrealized_pnl=to_decimal(data.get("unrealised") or 0),
                buy_quantity=int(data.get("buy_quantity") or 0),
                sell_quantity=int(data.get("sell_quantity") or 0),
            )
            for data in _call(lambda: self._kite().positions())["net"]
        ]

    def holdings(self) -> list[Holding]:
        return [
            Holding(
                symbol=f"{data['exchange']}:{data['tradingsymbol']}",
                quantity=int(data["quantity"]) + int(data.get("t1_quantity") or 0),
                average_price=to_decimal(data["average_price"]),
                last_price=to_decimal(data.get("last_price")),
            )
            for data in _call(lambda: self._kite().holdings())
        ]

    def funds(self) -> Funds:
        equity = _call(lambda: self._kite().margins("equity"))
        return Funds(
            available_cash=to_decimal(equity["net"]),
            used_margin=to_decimal(equity["utilised"].get("debits") or 0),
            opening_balance=to_decimal(equity["available"].get("opening_balance") or 0),
        )

    def quotes(self, symbols: list[str]) -> dict[str, Quote]:
        for symbol in symbols:
            split_symbol(symbol)
        data = _call(lambda: self._kite().quote(*symbols)) if symbols else {}
        result = {}
        for symbol, item in data.items():
            depth = item.get("depth") or {}
            best_bid = (depth.get("buy") or [{}])[0]
            best_ask = (depth.get("sell") or [{}])[0]
            ohlc = item.get("ohlc") or {}
            result[symbol] = Quote(
                symbol=symbol,
                last_price=to_decimal(item["last_price"]),
                bid=_decimal(best_bid.get("price")),
                ask=_decimal(best_ask.get("price")),
                bid_quantity=int(best_bid.get("quantity") or 0),
                ask_quantity=int(best_ask.get("quantity") or 0),
                volume=int(item.get("volume") or 0),
                open=_decimal(ohlc.get("open")),
                high=_decimal(ohlc.get("high")),
                low=_decimal(ohlc.get("low")),
                close=_decimal(ohlc.get("close")),
                timestamp=_kite_time(item.get("timestamp")),
            )
        return result

    def historical_candles(
        self, *, symbol: str, interval: str, start: datetime, end: datetime
    ) -> list[HistoricalCandle]:
        kite_interval = INTERVAL_TO_KITE.get(interval)
        if kite_interval is None:
            raise InvalidInput(f"Zerodha historical candles come as {', '.join(INTERVAL_TO_KITE)}; got {interval!r}.")
        split_symbol(symbol)
        instrument = by_symbol(symbol)
        if instrument is None or not instrument.kite_token:
            raise InvalidInput(f"Zerodha has no instrument {symbol}.")
        # Kite reads from/to as exchange time and includes `to`; our range is half-open, hence the filter below.
        rows = _call(
            lambda: self._kite().historical_data(
                instrument.kite_token,
                start.astimezone(IST).strftime(KITE_TIME_FORMAT),
                end.astimezone(IST).strftime(KITE_TIME_FORMAT),
                kite_interval,
                continuous=False,
                oi=True,
            )
        )
        candles = []
        for row in rows:
            opening = _kite_time(row.get("date"))
            if opening is None:
                raise BrokerUnavailable("Zerodha sent a historical candle without a readable timestamp.")
            opening = opening.astimezone(IST)
            if not start <= opening < end:
                continue
            candles.append(
                HistoricalCandle(
                    start=opening,
                    open=to_decimal(row["open"]),
                    high=to_decimal(row["high"]),
                    low=to_decimal(row["low"]),
                    close=to_decimal(row["close"]),
                    volume=int(row.get("volume") or 0),
                    # Kite reports 0 open interest for instruments that have none; we store that as no OI.
                    oi=int(row.get("oi") or 0) or None,
                )
            )
        return candles

    def instruments(self) -> list[dict]:
        # The SDK reads GET /instruments (CSV) into dicts with Kite's columns, already typed.
        return _call(lambda: self._kite().instruments())
