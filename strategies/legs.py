"""Choosing a leg's contract: which expiry and which strike. Pure functions over a trading day, the expiries and
strikes on offer and the spot, shared by live fires (which offer what the instrument master lists) and the
backtester (which offers the exchange calendar's expiries and a strike grid)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

from marketdata.chain import spot_symbol_for
from marketdata.instruments import DEMO_INDICES, monthly_expiries, stock_strike_step, weekly_expiries

from .definitions import ExpiryChoice, StrikeChoice

_BSE_UNDERLYINGS = {"SENSEX", "BANKEX", "SENSEX50"}
_INDEX_STEPS = {index.underlying: index.strike_step for index in DEMO_INDICES} | {
    "MIDCPNIFTY": Decimal(25),
    "NIFTYNXT50": Decimal(100),
    "BANKEX": Decimal(100),
}
# Since SEBI's 2025 rule one index per exchange keeps a weekly expiry.
_WEEKLY_UNDERLYINGS = {"NIFTY", "SENSEX"}


class LegUnresolvable(Exception):
    """The leg names no contract on offer (no such expiry or strike)."""


def derivatives_exchange(underlying: str) -> str:
    return "BFO" if underlying in _BSE_UNDERLYINGS else "NFO"


def spot_symbol(underlying: str) -> str:
    return spot_symbol_for(underlying=underlying)


def has_weeklies(underlying: str) -> bool:
    return underlying in _WEEKLY_UNDERLYINGS


def expiry_pick(
    *, choice: ExpiryChoice, day: date, offered: Sequence[date], monthly: Sequence[date], fixed: date | None = None
) -> date:
    """The expiry `choice` means on `day`, from the expiries `offered` (every listed one, weekly and monthly) and
    the `monthly` ones among them. Without weeklies the current week's expiry is simply the nearest."""
    upcoming = sorted(expiry for expiry in offered if expiry >= day)
    monthly_upcoming = sorted(expiry for expiry in monthly if expiry >= day)
    if choice == ExpiryChoice.FIXED:
        if fixed is None or fixed not in upcoming:
            raise LegUnresolvable(f"expiry {fixed} is not listed")
        return fixed
    position = {ExpiryChoice.CURRENT_WEEK: 0, ExpiryChoice.NEXT_WEEK: 1}.get(choice)
    if position is not None:
        if len(upcoming) <= position:
            raise LegUnresolvable(f"no {choice.value.replace('_', ' ')} expiry is listed")
        return upcoming[position]
    position = 0 if choice == ExpiryChoice.CURRENT_MONTH else 1
    if len(monthly_upcoming) <= position:
        raise LegUnresolvable(f"no {choice.value.replace('_', ' ')} expiry is listed")
    return monthly_upcoming[position]


def calendar_expiries(*, underlying: str, day: date) -> tuple[list[date], list[date]]:
    """The (all, monthly) expiries the exchange calendar gives `underlying` from `day`, for backtests over days
    the instrument master no longer lists."""
    exchange = derivatives_exchange(underlying)
    monthly = monthly_expiries(exchange=exchange, today=day, count=3)
    if not has_weeklies(underlying):
        return monthly, monthly
    return sorted(set(weekly_expiries(exchange=exchange, today=day, count=3)) | set(monthly)), monthly


def strike_step(*, underlying: str, spot: Decimal) -> Decimal:
    return _INDEX_STEPS.get(underlying) or stock_strike_step(spot)


def strike_grid(*, underlying: str, spot: Decimal, each_side: int = 15) -> list[Decimal]:
    step = strike_step(underlying=underlying, spot=spot)
    atm = (spot / step).quantize(Decimal(1), rounding=ROUND_HALF_UP) * step
    return [atm + offset * step for offset in range(-each_side, each_side + 1) if atm + offset * step > 0]


def strike_pick(
    *,
    choice: StrikeChoice,
    spot: Decimal,
    strikes: Sequence[Decimal],
    offset: int = 0,
    premium: Decimal | None = None,
    premiums: Mapping[Decimal, Decimal] | None = None,
    fixed: Decimal | None = None,
) -> Decimal:
    """The strike `choice` means: the listed strike nearest the spot moved `offset` listed strikes up or down;
    the one whose premium (from `premiums`) is closest to `premium`; or the `fixed` one if listed."""
    ordered = sorted(set(strikes))
    if not ordered:
        raise LegUnresolvable("no strikes are listed")
    if choice == StrikeChoice.FIXED:
        if fixed is None or fixed not in ordered:
            raise LegUnresolvable(f"strike {fixed} is not listed")
        return fixed
    if choice == StrikeChoice.CLOSEST_PREMIUM:
        priced = {strike: price for strike, price in (premiums or {}).items() if strike in ordered and price > 0}
        if premium is None or not priced:
            raise LegUnresolvable("no premiums to choose a strike by")
        # Ties go to the lower strike, so the choice is the same on every run.
        return min(priced, key=lambda strike: (abs(priced[strike] - premium), strike))
    atm_index = min(range(len(ordered)), key=lambda index: (abs(ordered[index] - spot), ordered[index]))
    target = atm_index + offset
    if not 0 <= target < len(ordered):
        raise LegUnresolvable(f"ATM{offset:+d} is beyond the listed strikes")
    return ordered[target]
