"""The MTM monitor: the sweep evaluates every user with positions today in one set-based pass (the day's symbols,
one quote fetch, MTM summed per account in SQL, then the users' limits and states) and hands what breached to the
breach handling; the profit lock rises as MTM does."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal

import numpy as np
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from algoterm import realtime
from marketdata.quotes import quotes_get
from orders.selectors import mtm_by_account, mtm_symbols, mtm_user_ids, users_with_open_positions_in
from rms.models import RmsEvent, RmsState, TradingState, default_limits
from rms.services.breaches import auto_square_off, breach_handle, breach_square_off
from rms.services.common import IST, PAISE, SEVERITY, Reason, state_today, trading_day
from rms.services.limits import Limits, limits_by_user

logger = logging.getLogger(__name__)


@dataclass
class MtmBook:
    """MTM per user (and per account) for the users evaluated, with what it was computed from."""

    user_ids: list[str]
    mtm: np.ndarray  # per user, rupees rounded to paise (float64: a monitor's view)
    account_mtm: dict[str, float] = field(default_factory=dict)
    open_positions: np.ndarray | None = None
    mis_open: np.ndarray | None = None
    mtm_exact: list[Decimal] = field(default_factory=list)  # per user, to the paise: what the sweep acts on


def mtm_book(*, user_ids: list[str] | None = None, day: date | None = None) -> MtmBook:
    """One set-based computation: the symbols of every position of the day (open, or closed today) of the users,
    the latest quote of each in one fetch, and the sums per user and account in one aggregate query, exact.

    Only quotes a feed published count: a symbol without one adds its realized PnL alone, never a price the paper
    exchange would make up (a square-off on an invented price is worse than one sweep's blind spot)."""
    day = day or trading_day()
    symbols = mtm_symbols(user_ids=user_ids, day=day)
    if not symbols:
        return MtmBook(user_ids=[], mtm=np.zeros(0), open_positions=np.zeros(0), mis_open=np.zeros(0))
    prices = {symbol: quote.last_price for symbol, quote in quotes_get(sorted(symbols)).items()}
    totals: dict[str, list] = {}
    account_mtm: dict[str, float] = {}
    for user_id, account_id, mtm, open_count, mis_open in mtm_by_account(user_ids=user_ids, day=day, prices=prices):
        account_mtm[account_id] = float(mtm.quantize(PAISE))
        total = totals.setdefault(user_id, [Decimal("0"), 0, 0])
        total[0] += mtm
        total[1] += open_count
        total[2] += mis_open
    ordered = sorted(totals)
    exact = [totals[user_id][0].quantize(PAISE) for user_id in ordered]
    return MtmBook(
        user_ids=ordered,
        mtm=np.array([float(value) for value in exact], dtype=np.float64),
        account_mtm=account_mtm,
        open_positions=np.array([totals[user_id][1] for user_id in ordered], dtype=np.float64),
        mis_open=np.array([totals[user_id][2] for user_id in ordered], dtype=np.float64),
        mtm_exact=exact,
    )


def user_mtm(*, user: User, day: date | None = None) -> Decimal:
    book = mtm_book(user_ids=[user.pk], day=day)
    return book.mtm_exact[0] if book.user_ids else Decimal("0.00")


def profit_lock_level(*, mtm: Decimal, limits: Limits | dict) -> Decimal | None:
    """The profit locked at this MTM: `profit_lock_amount` once MTM reaches `profit_lock_at`, raised by
    `trailing_profit_step` for every `trailing_profit_every` gained beyond it."""
    get = limits.get if isinstance(limits, dict) else lambda name: getattr(limits, name)
    lock_at, amount = get("profit_lock_at"), get("profit_lock_amount")
    if lock_at is None or amount is None or mtm < lock_at:
        return None
    every, step = get("trailing_profit_every"), get("trailing_profit_step")
    if every and step:
        amount += step * int((mtm - lock_at) // every)
    return amount


@dataclass(frozen=True)
class Breach:
    user_id: str
    reason: str
    mtm: Decimal


@dataclass
class SweepResult:
    evaluated: int = 0
    breaches: list[Breach] = field(default_factory=list)
    locks_raised: int = 0
    resumed: int = 0
    auto_squared_off: int = 0


def sweep(*, user_ids: list[str] | None = None, now: datetime | None = None, act: bool = True) -> SweepResult:
    """Evaluate every user with positions today (or just `user_ids`) in one pass; handle what breached."""
    now = now or timezone.now()
    day = trading_day(now)
    book = mtm_book(user_ids=user_ids, day=day)
    result = SweepResult(evaluated=len(book.user_ids))
    if not book.user_ids:
        return result
    # Over everyone, the users are named by a subquery: an IN list of thousands of ids costs more than the rows.
    among = mtm_user_ids(day=day) if user_ids is None else book.user_ids
    profiles = limits_by_user(user_ids=book.user_ids, day=day, among=among)
    states = {
        row["user_id"]: row
        for row in RmsState.objects.filter(trading_day=day, user_id__in=among).values(
            "user_id", "status", "locked_profit", "square_off_pending", "auto_square_off_done_at", "mtm_baseline"
        )
    }
    local = timezone.localtime(now, IST).time()
    default_square_off: time | None = default_limits()["auto_square_off_time"]
    for index, user_id in enumerate(book.user_ids):
        profile = profiles.get(user_id, {})
        state = states.get(user_id, {})
        mtm = book.mtm_exact[index] - state.get("mtm_baseline", Decimal("0"))
        if state.get("square_off_pending"):
            result.resumed += 1
            if act:
                _guarded(breach_square_off, user_id=user_id, day=day)
            continue
        square_off_at = profile["auto_square_off_time"] if profile else default_square_off
        if (
            square_off_at
            and local >= square_off_at
            and book.mis_open[index] > 0
            and not state.get("auto_square_off_done_at")
        ):
            result.auto_squared_off += 1
            if act:
                _guarded(auto_square_off, user_id=user_id, mtm=mtm, day=day)
        if SEVERITY[state.get("status", TradingState.NORMAL)] >= SEVERITY[TradingState.HALTED]:
            continue
        reason = None
        loss = profile.get("max_daily_loss")
        target = profile.get("daily_profit_target")
        if loss is not None and mtm <= -loss:
            reason = Reason.DAILY_LOSS_LIMIT_HIT
        elif state.get("status") == TradingState.REDUCING:
            continue
        elif target is not None and mtm >= target:
            reason = Reason.DAILY_PROFIT_TARGET_HIT
        else:
            level = profit_lock_level(mtm=mtm, limits=profile) if profile else None
            locked = state.get("locked_profit")
            if level is not None and (locked is None or level > locked):
                result.locks_raised += 1
                if act:
                    _guarded(profit_lock_raise, user_id=user_id, level=level, mtm=mtm, day=day)
                locked = level
            if locked is not None and mtm < locked:
                reason = Reason.PROFIT_LOCK_HIT
        if reason:
            result.breaches.append(Breach(user_id=user_id, reason=reason, mtm=mtm))
            if act:
                _guarded(breach_handle, user_id=user_id, reason=reason, mtm=mtm, day=day)
    return result


def _guarded(action, **kwargs) -> None:
    """One user's trouble (a broker down, their own square-off holding the lock) must not keep the sweep from the
    users after them; what did not finish is still pending, or still breached, for the next sweep."""
    try:
        action(**kwargs)
    except Exception:
        logger.exception("RMS %s for %s failed; the next sweep retries", action.__name__, kwargs.get("user_id"))


@transaction.atomic
def profit_lock_raise(*, user_id: str, level: Decimal, mtm: Decimal, day: date) -> None:
    state = state_today(user_id=user_id, day=day, lock=True)
    if state.locked_profit is not None and state.locked_profit >= level:
        return
    state.locked_profit = level
    state.updated_at = timezone.now()
    state.save()
    RmsEvent.objects.create(user_id=user_id, kind=RmsEvent.Kind.PROFIT_LOCKED, mtm=mtm, details={"locked": str(level)})
    realtime.push_to_user(
        user_id=user_id,
        message_type="rms_alert",
        payload={"kind": "profit_locked", "locked_profit": level, "mtm": mtm},
    )


def users_holding(*, symbols: list[str]) -> list[str]:
    """Users with open positions in any of `symbols`: whom a tick on them may breach."""
    return users_with_open_positions_in(symbols=symbols)
