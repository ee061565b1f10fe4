"""Firing a strategy's legs through the order pipeline exactly once per (strategy, day, leg, action)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
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
from orders.models import LegRole, OrderSource
from orders.selectors import strategy_order_list
from orders.services import OrderSpec, order_place

from .. import legs as leg_choice
from ..definitions import ExpiryChoice, LegDefinition, LegInstrument, StrategyDefinition, StrikeChoice
from ..models import FireAction, FireStatus, RunMode, RunStatus, Strategy, StrategyFire, StrategyRun, StrategyStatus
from .clock import IST, _runnable_today, _today_ist
from .definitions import definition_of
from .runs import _paper_account, _run_end, run_exit
from .scheduling import STRATEGY_LEVEL


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


class LegResolver:
    """Leg resolution shared by the fires of one chunk: the contract a leg means depends on the leg and the day,
    never on the user, so a burst of straddles on NIFTY reads the instrument master and the quotes once."""

    def __init__(self) -> None:
        self._resolved: dict[tuple, ResolvedLeg | leg_choice.LegUnresolvable] = {}

    def resolve(self, *, leg: LegDefinition, day: date) -> ResolvedLeg:
        key = (
            day,
            leg.underlying,
            leg.instrument,
            leg.option_type,
            leg.expiry,
            leg.expiry_date,
            leg.strike,
            leg.strike_offset,
            leg.premium,
            leg.strike_price,
        )
        if key not in self._resolved:
            try:
                self._resolved[key] = leg_resolve(leg=leg, day=day)
            except leg_choice.LegUnresolvable as error:
                self._resolved[key] = error
        resolved = self._resolved[key]
        if isinstance(resolved, leg_choice.LegUnresolvable):
            raise leg_choice.LegUnresolvable(str(resolved))
        return resolved


def leg_place(
    *,
    strategy: Strategy,
    run: StrategyRun,
    definition: StrategyDefinition,
    index: int,
    day: date,
    symbol: str | None = None,
    resolver: LegResolver | None = None,
    accounts: list[tuple[BrokerAccount, int]] | None = None,
) -> list[str]:
    """Place leg `index` in every account of the run; `symbol` re-uses an earlier entry's contract (re-entry)."""
    leg = definition.legs[index]
    resolved = (resolver or LegResolver()).resolve(leg=leg, day=day)
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
    if accounts is None:
        accounts = _trading_accounts(strategy=strategy, run=run)
    for account, multiplier in accounts:
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
    """Fire one strategy's entry or exit now, outside the minute dispatcher (which claims in bulk and calls
    `fires_execute`). Each (day, leg, action) acts once: returns the fires this call acted on."""
    now = now or timezone.now()
    run = StrategyRun.objects.select_related("strategy", "strategy__user").filter(pk=run_id).first()
    if run is None or run.strategy_id != strategy_id or run.status != RunStatus.RUNNING:
        return []  # a fire left from a run that ended: nothing to do
    strategy = run.strategy
    day = _today_ist(now)
    if not _runnable_today(strategy, day):
        return []
    at = strategy.entry_time if action == FireAction.ENTRY else strategy.exit_time
    scheduled_for = datetime.combine(day, at, tzinfo=IST) if at is not None else None
    if action == FireAction.EXIT:
        legs = [STRATEGY_LEVEL]
    else:
        legs = list(range(len(definition_of(strategy).legs)))
    claimed = [
        fire
        for leg in legs
        if (
            fire := _fire_claim(
                strategy=strategy, run=run, day=day, leg=leg, action=action, scheduled_for=scheduled_for
            )
        )
        is not None
    ]
    return _strategy_fires_act(strategy=strategy, run=run, fires=claimed, resolver=LegResolver())


def fires_execute(*, minute: datetime, strategy_ids: list[str]) -> int:
    """Act on the claimed entry and exit fires of `strategy_ids` due at `minute` (a chunk from the minute
    dispatcher or the recovery pass), each taken right before acting on it, so a chunk delivered twice acts once.
    Returns how many fires acted."""
    fires = list(
        StrategyFire.objects.filter(
            strategy_id__in=strategy_ids,
            scheduled_for=minute,
            action__in=(FireAction.ENTRY, FireAction.EXIT),
            status=FireStatus.CLAIMED,
        )
        .select_related("run", "strategy", "strategy__user")
        .order_by("strategy_id", "leg")
    )
    resolver = LegResolver()
    acted = 0
    by_strategy: dict[str, list[StrategyFire]] = {}
    for fire in fires:
        by_strategy.setdefault(fire.strategy_id, []).append(fire)
    for strategy_fires in by_strategy.values():
        first = strategy_fires[0]
        acted += len(
            _strategy_fires_act(strategy=first.strategy, run=first.run, fires=strategy_fires, resolver=resolver)
        )
    return acted


def _fire_take(fire: StrategyFire) -> bool:
    """Take the claimed fire for this worker: no other worker holds it, or the one that did is presumed dead (its
    lease ran out). One conditional UPDATE, so two deliveries never both win."""
    taken_at = timezone.now()
    expired = taken_at - timedelta(seconds=settings.STRATEGY_FIRE_LEASE_SECONDS)
    taken = (
        StrategyFire.objects.filter(pk=fire.pk, status=FireStatus.CLAIMED)
        .filter(Q(taken_at__isnull=True) | Q(taken_at__lt=expired))
        .update(taken_at=taken_at)
    )
    return taken == 1


def _orphans(*, fire: StrategyFire, since: datetime) -> list[str]:
    """Orders the strategy placed for `fire` by a worker that died before recording them: its own orders of the
    fire's role since that worker took it, which no fire of the day names."""
    role = LegRole.SQUARE_OFF if fire.action == FireAction.EXIT else LegRole.ENTRY
    named = set()
    today = StrategyFire.objects.filter(strategy_id=fire.strategy_id, trading_day=fire.trading_day)
    for order_ids in today.values_list("order_ids", flat=True):
        named.update(order_ids)
    orders = strategy_order_list(strategy_ref=fire.strategy_id, placed_from=since, placed_until=None, statuses=None)
    return sorted(order.pk for order in orders if order.role == role and order.pk not in named)


def _strategy_fires_act(
    *, strategy: Strategy, run: StrategyRun, fires: list[StrategyFire], resolver: LegResolver
) -> list[StrategyFire]:
    if not fires:
        return []
    if run.status != RunStatus.RUNNING:
        for fire in fires:
            if _fire_take(fire):
                _fire_finish(fire, status=FireStatus.SKIPPED, order_ids=[], detail="the run had ended")
        return []
    acted, failed = [], []
    definition = None
    accounts = None
    day = fires[0].trading_day
    for fire in fires:
        previous = fire.taken_at
        if not _fire_take(fire):
            continue
        if previous is not None:
            adopted = _orphans(fire=fire, since=previous)
            if adopted:
                _fire_finish(
                    fire, status=FireStatus.PLACED, order_ids=adopted, detail="recorded after its worker was lost"
                )
                acted.append(fire)
                continue
        if fire.action == FireAction.EXIT:
            placed = run_exit(run=run, reason="exit_time")
            _fire_finish(fire, status=FireStatus.PLACED, order_ids=placed)
            _completed_check(strategy=strategy, run=run, day=day)
            acted.append(fire)
            continue
        definition = definition or definition_of(strategy)
        if fire.leg >= len(definition.legs):
            _fire_finish(fire, status=FireStatus.SKIPPED, order_ids=[], detail="the leg was removed")
            continue
        if accounts is None:
            accounts = _trading_accounts(strategy=strategy, run=run)
        _leg_fire(
            strategy=strategy,
            run=run,
            definition=definition,
            fire=fire,
            index=fire.leg,
            day=day,
            resolver=resolver,
            accounts=accounts,
        )
        acted.append(fire)
        if fire.status == FireStatus.FAILED:
            failed.append(fire)
    if failed:
        _fires_failed(strategy=strategy, run=run, failed=failed)
    return acted


def _leg_fire(
    *,
    strategy: Strategy,
    run: StrategyRun,
    definition: StrategyDefinition,
    fire: StrategyFire,
    index: int,
    day: date,
    symbol: str | None = None,
    resolver: LegResolver | None = None,
    accounts: list[tuple[BrokerAccount, int]] | None = None,
) -> StrategyFire:
    try:
        placed = leg_place(
            strategy=strategy,
            run=run,
            definition=definition,
            index=index,
            day=day,
            symbol=symbol,
            resolver=resolver,
            accounts=accounts,
        )
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
