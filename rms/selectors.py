"""Reads of the risk settings and of the risk state, always scoped to the user who asks."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.db.models import Count

from accounts.models import User
from algoterm.api.errors import AppError
from brokers.gateway import adapter_for
from brokers.models import AccountStatus, BrokerAccount
from brokers.selectors import broker_account_get as _broker_account_get
from brokers.selectors import broker_account_list
from marketdata.quotes import quotes_get
from marketdata.selectors import instrument_underlyings
from orders.selectors import orders_placed_on, position_list
from rms.models import RiskProfile, RmsEvent, RmsState, TradingState
from rms.services import (
    OPS_EVENT_KINDS,
    PAISE,
    PROFILE_FIELDS,
    ceilings_for,
    limits_for,
    mtm_book,
    pending_view,
    profiles_in_force,
    rms_event_ops_view,
    trading_day,
    trading_started,
)

ZERO = Decimal("0.00")


def broker_account_get(*, user: User, account_id: str) -> BrokerAccount:
    """One of the user's broker accounts; 404 for anyone else's."""
    return _broker_account_get(user=user, account_id=account_id)


def _profile_view(profile: RiskProfile) -> dict[str, Any]:
    view = {name: getattr(profile, name) for name in PROFILE_FIELDS}
    return {**view, "updated_at": profile.updated_at, "pending": pending_view(profile)}


def risk_config(*, user: User) -> dict[str, Any]:
    """The user's own limits (the profile is made with the defaults on the first read) and their accounts'
    overrides, each with what waits for the next trading day; the limits in force now; the operator's ceilings."""
    profile, overrides = profiles_in_force(user=user)
    return {
        "profile": _profile_view(profile),
        "overrides": [{**_profile_view(override), "account_id": override.account_id} for override in overrides],
        "effective": limits_for(user=user).values,
        "pending": pending_view(profile),
        "ceilings": ceilings_for(user=user),
        "trading_started": trading_started(user=user),
    }


def _money(value: float | Decimal | None) -> Decimal | None:
    return None if value is None else Decimal(str(value)).quantize(PAISE)


def _account_rows(*, user: User, account_mtm: dict[str, float]) -> list[dict[str, Any]]:
    """Each account's MTM and its funds, live from the broker; a broker that cannot answer is reported in
    `funds_error` and never fails the status."""
    rows = []
    for account in broker_account_list(user=user):
        row: dict[str, Any] = {
            "account_id": account.pk,
            "broker": account.broker,
            "mtm": _money(account_mtm.get(account.pk, 0)),
            "used_margin": None,
            "available_cash": None,
            "funds_error": "",
        }
        if account.status != AccountStatus.CONNECTED:
            row["funds_error"] = f"The account is not connected ({account.status}); log in to read its funds."
        else:
            try:
                funds = adapter_for(account).funds()
            except AppError as error:
                row["funds_error"] = str(error.detail)
            else:
                row["used_margin"] = _money(funds.used_margin)
                row["available_cash"] = _money(funds.available_cash)
        rows.append(row)
    return rows


def _exposure(positions: list) -> list[dict[str, Any]]:
    """Open positions at the feed's last price (the average price where the feed has none, as MTM does), summed per
    underlying: long and short values as positive amounts, net = long - short."""
    if not positions:
        return []
    symbols = sorted({position.symbol for position in positions})
    quotes = quotes_get(symbols)
    names = instrument_underlyings(symbols=symbols)
    sums: dict[str, dict[str, Decimal]] = defaultdict(lambda: {"long_value": ZERO, "short_value": ZERO})
    for position in positions:
        quote = quotes.get(position.symbol)
        price = quote.last_price if quote is not None else position.average_price
        value = (price * abs(position.quantity)).quantize(PAISE)
        underlying = names.get(position.symbol) or position.symbol.split(":", 1)[-1]
        sums[underlying]["long_value" if position.quantity > 0 else "short_value"] += value
    return [
        {"underlying": name, **values, "net_value": values["long_value"] - values["short_value"]}
        for name, values in sorted(sums.items())
    ]


def rms_status(*, user: User) -> dict[str, Any]:
    """Today's risk state, MTM against the limits, funds per account and exposure per underlying."""
    day = trading_day()
    state = RmsState.objects.filter(user=user, trading_day=day).first()
    limits = limits_for(user=user)
    book = mtm_book(user_ids=[user.pk], day=day)
    mtm = _money(book.mtm[0]) if book.user_ids else ZERO
    positions = list(position_list(user=user, open_only=True))
    max_loss = limits.max_daily_loss
    return {
        "trading_day": day,
        "state": state.status if state else TradingState.NORMAL,
        "reason": state.reason if state else "",
        "mtm": mtm,
        "locked_profit": state.locked_profit if state else None,
        "breached_at": state.breached_at if state else None,
        "kill_switch": limits.kill_switch,
        "open_positions": len(positions),
        "orders_today": orders_placed_on(user=user, day=day),
        "limits": limits.values,
        "loss_remaining": max_loss + mtm if max_loss is not None else None,
        "accounts": _account_rows(user=user, account_mtm=book.account_mtm),
        "exposure": _exposure(positions),
    }


# --- platform-wide, for the operator console (every user's risk state) -----------------------------------------------


def rms_platform_breaches_by_reason(*, start: datetime, end: datetime | None = None) -> dict[str, int]:
    """Breaches recorded in [start, end) (open-ended without `end`), every user's, counted per reason, by reason."""
    breaches = RmsEvent.objects.filter(kind=RmsEvent.Kind.BREACH, created_at__gte=start)
    if end is not None:
        breaches = breaches.filter(created_at__lt=end)
    return dict(breaches.order_by().values_list("reason").annotate(count=Count("pk")).order_by("reason"))


def rms_platform_restricted_count(*, day: date) -> int:
    """Users whose risk state on `day` is not NORMAL (REDUCING or HALTED)."""
    return RmsState.objects.filter(trading_day=day).exclude(status=TradingState.NORMAL).count()


def rms_platform_events_recent(*, limit: int) -> list[dict[str, Any]]:
    """The latest `limit` breaches and square-offs of every user, newest first, as the operators' socket shows them."""
    events = RmsEvent.objects.filter(kind__in=OPS_EVENT_KINDS).order_by("-created_at", "-id")[:limit]
    return [rms_event_ops_view(event) for event in events]
