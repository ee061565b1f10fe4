"""Firing a strategy's legs through the order pipeline exactly once per (strategy, day, leg, action)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Notification
from accounts.services import audit_record, notification_create
from algoterm.api.errors import AppError
from algoterm.locking import row_locked
from brokers.models import BrokerAccount
from brokers.protocol import OrderType, Side
from marketdata.instruments import instrument_get, monthly_expiry
from marketdata.models import InstrumentType
from marketdata.quotes import quotes_get
from marketdata.selectors import instrument_contract_expiries, instrument_contract_list
from orders.models import OrderSource
from orders.services import OrderSpec, order_place

from .. import legs as leg_choice
from ..definitions import ExpiryChoice, LegDefinition, LegInstrument, StrategyDefinition, StrikeChoice
from ..models import FireAction, FireStatus, RunMode, RunStatus, Strategy, StrategyFire, StrategyRun, StrategyStatus
from .clock import IST, _runnable_today, _today_ist
from .definitions import definition_of
from .runs import _paper_account, _run_end, run_exit

STRATEGY_LEVEL = -1  # the `leg` of fires acting on the whole strategy


@dataclass(frozen=True)
class ResolvedLeg:
    symbol: str
    lot_size: int
    reference_price: Decimal | None
    tick_size: Decimal


def _contract_types(leg: LegDefinition) -> list[str]:
    return [leg.option_type] if leg.instrument == LegInstrument.OPTION else [InstrumentType.FUT]


def leg_resolve(*, leg: LegDefinition, day: date) -> ResolvedLeg:
    """The contract `leg` means today, from the instrument master and the quote cache."""
    if leg.instrument == LegInstrument.EQUITY:
        instrument = instrument_get(symbol=f"NSE:{leg.underlying}")
        if instrument is None:
            raise leg_choice.LegUnresolvable(f"NSE:{leg.underlying} is not listed")
    else:
        types = _contract_types(leg)
        offered = instrument_contract_expiries(underlying=leg.underlying, instrument_types=types, expiring_from=day)
        exchange = leg_choice.derivatives_exchange(leg.underlying)
        monthly = [expiry for expiry in offered if expiry == _monthly_of(exchange, expiry)]
        choice = leg.expiry
        if leg.instrument == LegInstrument.FUTURE and choice in (ExpiryChoice.CURRENT_WEEK, ExpiryChoice.NEXT_WEEK):
            choice = ExpiryChoice.CURRENT_MONTH if choice == ExpiryChoice.CURRENT_WEEK else ExpiryChoice.NEXT_MONTH
        expiry = leg_choice.expiry_pick(choice=choice, day=day, offered=offered, monthly=monthly, fixed=leg.expiry_date)
        series = instrument_contract_list(
            underlying=leg.underlying, instrument_types=types, expiring_from=day, expiry=expiry
        )
        if leg.instrument == LegInstrument.FUTURE:
            instrument = series[0] if series else None
        else:
            by_strike = {contract.strike: contract for contract in series}
            spot_symbol = leg_choice.spot_symbol(leg.underlying)
            spot_quote = quotes_get([spot_symbol]).get(spot_symbol)
            if spot_quote is None and leg.strike == StrikeChoice.ATM:
                raise leg_choice.LegUnresolvable(f"no price for {spot_symbol}")
            premiums = None
            if leg.strike == StrikeChoice.CLOSEST_PREMIUM:
                quotes = quotes_get([contract.symbol for contract in by_strike.values()])
                premiums = {
                    strike: quotes[contract.symbol].last_price
                    for strike, contract in by_strike.items()
                    if contract.symbol in quotes
                }
            strike = leg_choice.strike_pick(
                choice=leg.strike,
                spot=spot_quote.last_price if spot_quote is not None else Decimal(0),
                strikes=list(by_strike),
                offset=leg.strike_offset,
                premium=leg.premium,
                premiums=premiums,
                fixed=leg.strike_price,
            )
            instrument = by_strike[strike]
    quote = quotes_get([instrument.symbol]).get(instrument.symbol)
    return ResolvedLeg(
        symbol=instrument.symbol,
        lot_size=instrument.lot_size,
        reference_price=quote.last_price if quote is not None else None,
        tick_size=instrument.tick_size,
    )


def _monthly_of(exchange: str, expiry: date) -> date:
    return monthly_expiry(exchange=exchange, year=expiry.year, month=expiry.month)


def _on_tick(value: Decimal, tick: Decimal) -> Decimal:
    return (value / tick).quantize(Decimal(1), rounding=ROUND_HALF_UP) * tick


def _exit_prices(*, leg: LegDefinition, side: str, reference: Decimal | None, tick: Decimal):
    """Absolute stop-loss and target for the order pipeline, measured from the price at the fire."""
    if reference is None:
        return None, None
    direction = 1 if side == Side.BUY else -1
    stop = target = None
    if leg.stop_loss is not None:
        stop = _on_tick(reference - direction * leg.stop_loss.distance(reference), tick)
        stop = stop if stop > 0 else None
    if leg.target is not None:
        target = _on_tick(reference + direction * leg.target.distance(reference), tick)
        target = target if target > 0 else None
    return target, stop


def _trading_accounts(*, strategy: Strategy, run: StrategyRun) -> list[tuple[BrokerAccount, int]]:
    """Where the run's orders go: its accounts, or in paper mode the user's paper account in their stead."""
    entries = [(entry.account, entry.multiplier) for entry in strategy.accounts.select_related("account")]
    if run.mode == RunMode.PAPER:
        paper = _paper_account(strategy.user)
        return [(paper, multiplier) for _, multiplier in entries] if paper is not None else []
    return entries


def _fire_claim(
    *, strategy: Strategy, run: StrategyRun, day: date, leg: int, action: str, attempt: int = 0, scheduled_for=None
) -> StrategyFire | None:
    """Insert the fire's row; None when it already exists (the task arrived twice, or another worker has it)."""
    try:
        with transaction.atomic():
            return StrategyFire.objects.create(
                strategy=strategy,
                run=run,
                trading_day=day,
                leg=leg,
                action=action,
                attempt=attempt,
                scheduled_for=scheduled_for,
            )
    except IntegrityError:
        return None


def _fire_finish(fire: StrategyFire, *, status: str, order_ids: list[str], detail: str = "") -> None:
    fire.status = status
    fire.order_ids = order_ids
    fire.detail = detail[:300]
    fire.save(update_fields=["status", "order_ids", "detail"])


def leg_place(
    *,
    strategy: Strategy,
    run: StrategyRun,
    definition: StrategyDefinition,
    index: int,
    day: date,
    symbol: str | None = None,
) -> list[str]:
    """Place leg `index` in every account of the run; `symbol` re-uses an earlier entry's contract (re-entry)."""
    leg = definition.legs[index]
    resolved = leg_resolve(leg=leg, day=day)
    if symbol is not None and symbol != resolved.symbol:
        instrument = instrument_get(symbol=symbol)
        quote = quotes_get([symbol]).get(symbol)
        resolved = ResolvedLeg(
            symbol=symbol,
            lot_size=instrument.lot_size,
            reference_price=quote.last_price if quote is not None else None,
            tick_size=instrument.tick_size,
        )
    target, stop = _exit_prices(leg=leg, side=leg.side, reference=resolved.reference_price, tick=resolved.tick_size)
    placed = []
    for account, multiplier in _trading_accounts(strategy=strategy, run=run):
        spec = OrderSpec(
            account_id=account.pk,
            symbol=resolved.symbol,
            side=leg.side,
            quantity=leg.lots * resolved.lot_size * multiplier,
            order_type=OrderType.MARKET,
            product=definition.product,
            target=target,
            stop_loss=stop,
            trailing_stop=definition.trailing_stop if stop is not None else None,
            tag=strategy.pk,
        )
        order = order_place(user=strategy.user, spec=spec, source=OrderSource.STRATEGY, strategy_ref=strategy.pk)
        placed.append(order.pk)
    return placed


def strategy_fire(*, strategy_id: str, run_id: str, action: str, now: datetime | None = None) -> list[StrategyFire]:
    """What the beat entry asks for: enter every leg, or exit the strategy. Each (day, leg, action) acts once."""
    now = now or timezone.now()
    run = StrategyRun.objects.select_related("strategy", "strategy__user").filter(pk=run_id).first()
    if run is None or run.strategy_id != strategy_id or run.status != RunStatus.RUNNING:
        return []  # a schedule left from a run that ended: nothing to do
    strategy = run.strategy
    day = _today_ist(now)
    if not _runnable_today(strategy, day):
        return []
    at = strategy.entry_time if action == FireAction.ENTRY else strategy.exit_time
    scheduled_for = datetime.combine(day, at, tzinfo=IST) if at is not None else None
    if action == FireAction.EXIT:
        fire = _fire_claim(
            strategy=strategy, run=run, day=day, leg=STRATEGY_LEVEL, action=action, scheduled_for=scheduled_for
        )
        if fire is None:
            return []
        placed = run_exit(run=run, reason="exit_time")
        _fire_finish(fire, status=FireStatus.PLACED, order_ids=placed)
        _completed_check(strategy=strategy, run=run, day=day)
        return [fire]
    definition = definition_of(strategy)
    fires = []
    for index in range(len(definition.legs)):
        fire = _fire_claim(strategy=strategy, run=run, day=day, leg=index, action=action, scheduled_for=scheduled_for)
        if fire is None:
            continue
        fires.append(_leg_fire(strategy=strategy, run=run, definition=definition, fire=fire, index=index, day=day))
    failed = [fire for fire in fires if fire.status == FireStatus.FAILED]
    if failed:
        _fires_failed(strategy=strategy, run=run, failed=failed)
    return fires


def _leg_fire(
    *,
    strategy: Strategy,
    run: StrategyRun,
    definition: StrategyDefinition,
    fire: StrategyFire,
    index: int,
    day: date,
    symbol: str | None = None,
) -> StrategyFire:
    try:
        placed = leg_place(strategy=strategy, run=run, definition=definition, index=index, day=day, symbol=symbol)
    except leg_choice.LegUnresolvable as error:
        _fire_finish(fire, status=FireStatus.FAILED, order_ids=[], detail=f"leg {index + 1}: {error}")
    except AppError as error:
        order_id = error.extra.get("order_id") if error.extra else None
        _fire_finish(
            fire,
            status=FireStatus.FAILED,
            order_ids=[order_id] if order_id else [],
            detail=f"leg {index + 1}: {error.code}: {error.detail}",
        )
    else:
        _fire_finish(fire, status=FireStatus.PLACED, order_ids=placed)
    audit_record(
        action="strategy.fire",
        actor=None,
        target=strategy,
        details={"run": run.pk, "leg": index, "action": fire.action, "status": fire.status, "orders": fire.order_ids},
    )
    return fire


def _fires_failed(*, strategy: Strategy, run: StrategyRun, failed: list[StrategyFire]) -> None:
    """A leg that cannot be placed leaves the strategy half-built: say so loudly, once per fire."""
    detail = "; ".join(fire.detail for fire in failed)
    notification_create(
        user=strategy.user,
        kind="strategy",
        title=f"{strategy.name}: {len(failed)} leg(s) not placed",
        body=detail,
        level=Notification.Level.ERROR,
        data={"strategy_id": strategy.pk, "run_id": run.pk},
    )
    Strategy.objects.filter(pk=strategy.pk).update(status_message=detail[:300])


def _completed_check(*, strategy: Strategy, run: StrategyRun, day: date) -> None:
    """A strategy whose every leg names a fixed expiry that has now passed has nothing left to trade."""
    fixed = [leg.expiry_date for leg in strategy.legs.all() if leg.expiry == ExpiryChoice.FIXED]
    if fixed and len(fixed) == strategy.legs.count() and max(fixed) <= day:
        with transaction.atomic():
            locked = row_locked(Strategy.objects, pk=strategy.pk)
            if locked.status == StrategyStatus.RUNNING:
                _run_end(strategy=locked, run=run, status=RunStatus.COMPLETED, message="every expiry has passed")
                audit_record(action="strategy.complete", actor=None, target=locked, details={"run": run.pk})
