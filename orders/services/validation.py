"""An order as asked for, and everything we can check before the broker sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from django.utils import timezone

from accounts.models import User
from algoterm.api.errors import ValidationFailed
from algoterm.config import freeze_quantity
from brokers.models import BrokerAccount
from brokers.prices import quote_for
from brokers.protocol import OrderType, Product, Side, Validity
from brokers.selectors import broker_account_get
from marketdata.instruments import instrument_get
from marketdata.models import InstrumentType
from orders.services.transitions import IST


@dataclass
class OrderSpec:
    """One order as asked for, before it is validated."""

    account_id: str
    symbol: str
    side: str
    quantity: int
    order_type: str
    product: str
    price: Decimal | None = None
    trigger_price: Decimal | None = None
    validity: str = Validity.DAY
    target: Decimal | None = None
    stop_loss: Decimal | None = None
    trailing_stop: Decimal | None = None
    tag: str = ""


@dataclass
class ValidatedOrder:
    spec: OrderSpec
    account: BrokerAccount
    lot_size: int
    tick_size: Decimal
    reference_price: Decimal
    errors: dict[str, list[str]] = field(default_factory=dict)


def _add(errors: dict[str, list[str]], name: str, message: str) -> None:
    errors.setdefault(name, []).append(message)


def _on_tick(value: Decimal, tick: Decimal) -> bool:
    return (value / tick) == (value / tick).to_integral_value()


def _check_prices(
    errors: dict[str, list[str]],
    *,
    side: str,
    order_type: str,
    price: Decimal | None,
    trigger_price: Decimal | None,
    tick_size: Decimal,
) -> None:
    """The price rules of each order type, and the tick size."""
    if order_type == OrderType.MARKET:
        if price is not None:
            _add(errors, "price", "Market orders take no price.")
        if trigger_price is not None:
            _add(errors, "trigger_price", "Market orders take no trigger price.")
    elif order_type == OrderType.LIMIT:
        if price is None:
            _add(errors, "price", "Limit orders need a price.")
        if trigger_price is not None:
            _add(errors, "trigger_price", "Limit orders take no trigger price; use SL for a stop-limit.")
    elif order_type == OrderType.SL:
        if price is None:
            _add(errors, "price", "SL orders need a limit price.")
        if trigger_price is None:
            _add(errors, "trigger_price", "SL orders need a trigger price.")
        if price is not None and trigger_price is not None:
            if side == Side.BUY and trigger_price > price:
                _add(errors, "trigger_price", "A buy stop's trigger must be at or below its limit price.")
            if side == Side.SELL and trigger_price < price:
                _add(errors, "trigger_price", "A sell stop's trigger must be at or above its limit price.")
    elif order_type == OrderType.SL_M:
        if price is not None:
            _add(errors, "price", "SL-M orders take no limit price.")
        if trigger_price is None:
            _add(errors, "trigger_price", "SL-M orders need a trigger price.")
    for name, value in (("price", price), ("trigger_price", trigger_price)):
        if value is None:
            continue
        if value <= 0:
            _add(errors, name, "Must be positive.")
        elif not _on_tick(value, tick_size):
            _add(errors, name, f"Must be a multiple of the tick size {tick_size.normalize()}.")


def order_validate(*, user: User, spec: OrderSpec, prefix: str = "") -> ValidatedOrder:
    """Everything we can know before the broker sees the order; 400 with every problem at once."""
    errors: dict[str, list[str]] = {}
    account = broker_account_get(user=user, account_id=spec.account_id)
    instrument = instrument_get(symbol=spec.symbol)
    lot_size, tick_size, freeze = 1, Decimal("0.05"), None
    if instrument is None:
        _add(errors, "symbol", f"Unknown instrument {spec.symbol}.")
    elif not instrument.is_active or instrument.instrument_type == InstrumentType.INDEX:
        _add(errors, "symbol", f"{spec.symbol} does not trade.")
    elif instrument.expiry is not None and instrument.expiry < timezone.localdate(timezone=IST):
        _add(errors, "symbol", f"{spec.symbol} expired on {instrument.expiry.isoformat()}.")
    else:
        lot_size, tick_size = instrument.lot_size, Decimal(instrument.tick_size)
        if instrument.instrument_type != InstrumentType.EQ:
            freeze = freeze_quantity(underlying=instrument.underlying)
        if spec.product == Product.CNC and instrument.instrument_type != InstrumentType.EQ:
            _add(errors, "product", "CNC (delivery) is for equity; use NRML or MIS for derivatives.")
        if spec.product == Product.NRML and instrument.instrument_type == InstrumentType.EQ:
            _add(errors, "product", "NRML is for derivatives; use CNC or MIS for equity.")
    if spec.quantity <= 0:
        _add(errors, "quantity", "Must be positive.")
    elif spec.quantity % lot_size:
        _add(errors, "quantity", f"Must be a multiple of the lot size {lot_size}.")
    elif freeze is not None and spec.quantity > freeze:
        _add(
            errors,
            "quantity",
            f"Above the exchange's freeze quantity of {freeze} units per order for {instrument.underlying}; "
            "split it into orders of at most that many.",
        )
    _check_prices(
        errors,
        side=spec.side,
        order_type=spec.order_type,
        price=spec.price,
        trigger_price=spec.trigger_price,
        tick_size=tick_size,
    )
    if spec.validity == Validity.IOC and spec.order_type in (OrderType.SL, OrderType.SL_M):
        _add(errors, "validity", "Stop orders cannot be IOC.")
    reference = spec.price or spec.trigger_price or quote_for(spec.symbol).last_price
    _check_exits(errors, spec=spec, reference=reference, tick_size=tick_size)
    if errors:
        raise ValidationFailed(
            "The order is invalid.", errors={f"{prefix}{key}": value for key, value in errors.items()}
        )
    return ValidatedOrder(spec=spec, account=account, lot_size=lot_size, tick_size=tick_size, reference_price=reference)


def _check_exits(errors: dict[str, list[str]], *, spec: OrderSpec, reference: Decimal, tick_size: Decimal) -> None:
    for name in ("target", "stop_loss", "trailing_stop"):
        value = getattr(spec, name)
        if value is None:
            continue
        if value <= 0:
            _add(errors, name, "Must be positive.")
        elif not _on_tick(value, tick_size):
            _add(errors, name, f"Must be a multiple of the tick size {tick_size.normalize()}.")
    buying = spec.side == Side.BUY
    if spec.target is not None and (spec.target <= reference if buying else spec.target >= reference):
        _add(
            errors,
            "target",
            f"A {spec.side.lower()} order's target must be {'above' if buying else 'below'} its price ({reference}).",
        )
    if spec.stop_loss is not None and (spec.stop_loss >= reference if buying else spec.stop_loss <= reference):
        _add(
            errors,
            "stop_loss",
            f"A {spec.side.lower()} order's stop-loss must be {'below' if buying else 'above'}"
            f" its price ({reference}).",
        )
    if spec.trailing_stop is not None and spec.stop_loss is None:
        _add(errors, "trailing_stop", "A trailing stop needs a stop_loss to trail.")
