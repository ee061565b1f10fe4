"""The pre-trade check: every order that adds exposure passes the risk gate before it goes out. The order pipeline
asks it through `orders.hooks` (registered in `RmsConfig.ready()`), so orders never imports the risk engine."""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from accounts.models import User
from accounts.selectors import user_by_id
from algoterm.api.errors import AppError, RiskRejected
from algoterm.system import platform_state
from brokers.gateway import adapter_for
from brokers.models import BrokerAccount
from brokers.protocol import MARGIN_RATE, BrokerError, Product
from orders.hooks import OrderIntent
from orders.selectors import open_position_symbols, orders_placed_on
from rms.models import RmsState, TradingState
from rms.services.common import IST, PAISE, Reason, trading_day
from rms.services.limits import Limits, limits_for
from rms.services.monitor import user_mtm

logger = logging.getLogger(__name__)


def _refuse(reason: str, detail: str) -> None:
    raise RiskRejected(detail, reason=reason)


def _check_may_trade(user: User, *, source: str) -> None:
    """The owner as stored now, not as a caller loaded them: a strategy or webhook may act for a user deactivated
    or demoted a moment ago. A user's own request was authenticated from the stored row moments ago."""
    current = user if source == "api" else user_by_id(user_id=user.pk)
    if current is None or not current.is_active:
        _refuse(Reason.USER_DEACTIVATED, "The account is deactivated; new orders are refused. Exits still go out.")
    if not current.can_trade:
        _refuse(Reason.ROLE_CANNOT_TRADE, "The account is view-only; new orders are refused. Exits still go out.")


def _check_not_halted(*, limits: Limits, state: RmsState | None) -> None:
    platform = platform_state()
    if platform.trading_halted:
        _refuse(
            Reason.PLATFORM_HALTED,
            f"Trading is stopped platform-wide ({platform.halt_reason}); new orders are refused and working orders "
            "cannot grow. Exits are still allowed.",
        )
    if limits.kill_switch or (state is not None and state.status == TradingState.HALTED):
        why = "your kill switch is on" if limits.kill_switch else f"trading is halted today ({state.reason})"
        _refuse(
            Reason.TRADING_HALTED,
            f"New orders are refused and working orders cannot grow: {why}. Exits are still allowed.",
        )


def check_order(*, user: User, intent: OrderIntent, now: datetime | None = None) -> None:
    """The risk gate: raise `RiskRejected` (422 RISK_REJECTED with `reason`) when the order, as it will stand,
    breaks a rule. Every path that adds exposure comes here: placing (API, bulk, strategies, webhooks, re-entries)
    and modifications that grow an order.

    Exits (orders that only reduce a position) pass every rule but the exchange's own: a risk engine must never
    stand between a trader and closing a position, whoever the owner is now. Growing a working exit is still
    growth: the kill switch and a halt refuse it. The RMS's own orders always pass.
    """
    if intent.source == "rms":
        return
    if intent.reduces_position and intent.new_order:
        return
    now = now or timezone.now()
    limits = limits_for(user=user, account=intent.account)
    state = RmsState.objects.filter(user=user, trading_day=trading_day(now)).first()
    status = state.status if state else TradingState.NORMAL
    if intent.reduces_position:
        _check_not_halted(limits=limits, state=state)
        return
    _check_may_trade(user, source=intent.source)
    _check_not_halted(limits=limits, state=state)
    if status == TradingState.REDUCING:
        _refuse(Reason.REDUCE_ONLY, f"Only exits are allowed for the rest of the day ({state.reason}).")
    local = timezone.localtime(now, IST).time()
    if limits.trading_window_start and not limits.trading_window_start <= local <= limits.trading_window_end:
        _refuse(
            Reason.OUTSIDE_TRADING_WINDOW,
            f"Your trading window is {limits.trading_window_start:%H:%M}-{limits.trading_window_end:%H:%M} IST.",
        )
    if intent.product == "MIS" and limits.auto_square_off_time and local >= limits.auto_square_off_time:
        _refuse(
            Reason.OUTSIDE_TRADING_WINDOW,
            f"Intraday positions are squared off at {limits.auto_square_off_time:%H:%M} IST; no new MIS orders now.",
        )
    if limits.allowed_products and intent.product not in limits.allowed_products:
        _refuse(Reason.PRODUCT_NOT_ALLOWED, f"{intent.product} is not among your allowed products.")
    exchange = intent.symbol.split(":", 1)[0]
    if limits.allowed_segments and exchange not in limits.allowed_segments:
        _refuse(Reason.SEGMENT_NOT_ALLOWED, f"{exchange} is not among your allowed segments.")
    lots = intent.quantity // max(intent.lot_size, 1)
    if limits.max_lots_per_order and lots > limits.max_lots_per_order:
        _refuse(Reason.MAX_LOTS_EXCEEDED, f"{lots} lots is more than your {limits.max_lots_per_order} per order.")
    value = (intent.reference_price * intent.quantity).quantize(PAISE)
    if limits.max_order_value and value > limits.max_order_value:
        _refuse(Reason.MAX_ORDER_VALUE_EXCEEDED, f"Order value {value} is over your limit {limits.max_order_value}.")
    if limits.max_orders_per_day and intent.new_order:
        placed = intent.orders_today
        if placed is None:
            placed = orders_placed_on(user=user, day=trading_day(now))
        if placed >= limits.max_orders_per_day:
            _refuse(Reason.MAX_ORDERS_PER_DAY, f"You have placed {placed} orders today, your daily limit.")
    if limits.max_open_positions:
        open_symbols = intent.open_symbols
        if open_symbols is None:
            open_symbols = open_position_symbols(user=user)
        if (intent.symbol, intent.product) not in open_symbols and len(open_symbols) >= limits.max_open_positions:
            _refuse(Reason.MAX_OPEN_POSITIONS, f"You already hold {len(open_symbols)} positions, your limit.")
    if limits.max_daily_loss:
        mtm = user_mtm(user=user, day=trading_day(now)) - (state.mtm_baseline if state else Decimal("0"))
        if mtm <= -limits.max_daily_loss:
            _refuse(Reason.DAILY_LOSS_LIMIT_HIT, f"Today's MTM {mtm} has reached your loss limit.")
    _check_funds(intent, value if intent.margin_value is None else intent.margin_value)


def _funds_key(account_id: str) -> str:
    return f"rms:funds:{account_id}"


def funds_snapshot_refresh(*, account: BrokerAccount) -> Decimal | None:
    """Ask the broker for the account's available cash once and keep it as the account's funds snapshot; None when
    the broker cannot say (the snapshot is left as it was)."""
    try:
        funds = adapter_for(account).funds()
    except (BrokerError, AppError) as error:
        logger.info("funds of %s unavailable for the pre-trade check: %s", account.pk, error.detail)
        return None
    cache.set(
        _funds_key(account.pk),
        {"available_cash": str(funds.available_cash), "taken_at": timezone.now().timestamp()},
        timeout=max(1, int(settings.RMS_FUNDS_MAX_AGE_SECONDS * 2)),
    )
    return funds.available_cash


def funds_snapshot_available(*, account: BrokerAccount) -> Decimal | None:
    """The account's available cash as last read from its broker: refreshed after its fills and whenever it is older
    than RMS_FUNDS_MAX_AGE_SECONDS (then read once, here). None when the broker cannot say."""
    snapshot = cache.get(_funds_key(account.pk))
    if snapshot is not None and timezone.now().timestamp() - snapshot["taken_at"] <= settings.RMS_FUNDS_MAX_AGE_SECONDS:
        return Decimal(snapshot["available_cash"])
    return funds_snapshot_refresh(account=account)


def _check_funds(intent: OrderIntent, value: Decimal) -> None:
    if not settings.RMS_FUNDS_CHECK:
        return
    required = (value * MARGIN_RATE[Product(intent.product)]).quantize(PAISE)
    # The broker checks margin itself: an answer a few seconds old (or none, when the funds read fails) only decides
    # whether we refuse first, and must not block trading.
    available = funds_snapshot_available(account=intent.account)
    if available is not None and required > available:
        _refuse(Reason.INSUFFICIENT_FUNDS, f"Needs about {required} of margin; {available} is available.")
