"""Every write of the strategies app: defining strategies, starting and stopping them (with their beat entries),
firing their legs through the order pipeline exactly once per (strategy, day, leg, action), webhooks, rules, the
strategy-level MTM watch and backtests."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from time import monotonic
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from accounts.models import Notification, User
from accounts.services import audit_record, notification_create
from algoterm.api.errors import AppError, ErrorCode, InvalidState, NotFound, ValidationFailed
from algoterm.config import freeze_quantity
from billing.services import require_backtest_slot, require_live_trading, require_running_strategy_slot
from brokers.adapters.base import OrderType, Side
from brokers.models import AccountStatus, Broker, BrokerAccount
from brokers.selectors import broker_account_get, broker_account_list
from marketdata import calendar
from marketdata.instruments import instrument_get, monthly_expiry
from marketdata.models import Instrument, InstrumentType
from marketdata.quotes import quotes_get
from orders.models import LegRole, Order, OrderSource, OrderStatus, Position, Trade
from orders.services import OrderSpec, order_cancel, order_place, quantities_within_freeze

from . import legs as leg_choice
from .definitions import (
    ExitLevel,
    ExitUnit,
    ExpiryChoice,
    Kind,
    LegDefinition,
    LegInstrument,
    StrategyDefinition,
    StrikeChoice,
)
from .models import (
    Backtest,
    BacktestStatus,
    FireAction,
    FireStatus,
    Leg,
    RunMode,
    RunStatus,
    Signal,
    SignalStatus,
    Strategy,
    StrategyAccount,
    StrategyFire,
    StrategyRun,
    StrategyStatus,
    WebhookRejectionCount,
)

logger = logging.getLogger(__name__)

IST = ZoneInfo("Asia/Kolkata")
FIRE_TASK = "strategies.tasks.fire"
SCHEDULE_DESCRIPTION = "[strategy] created by start, removed by stop"
STRATEGY_LEVEL = -1  # the `leg` of fires acting on the whole strategy
WEBHOOK_ACTIONS = ("BUY", "SELL", "SHORT", "COVER", "EXIT")
CANCELLABLE_OWN = frozenset({OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED, OrderStatus.PENDING_MODIFY})


# --- defining ----------------------------------------------------------------------------------------------------


@dataclass
class LegInput:
    underlying: str
    instrument: str
    side: str
    lots: int
    option_type: str = ""
    expiry: str = ExpiryChoice.CURRENT_WEEK
    expiry_date: date | None = None
    strike: str = StrikeChoice.ATM
    strike_offset: int = 0
    premium: Decimal | None = None
    strike_price: Decimal | None = None
    stop_loss_unit: str = ""
    stop_loss: Decimal | None = None
    target_unit: str = ""
    target: Decimal | None = None


@dataclass
class AccountInput:
    account_id: str
    multiplier: int = 1


@dataclass
class StrategyInput:
    """A strategy as the API sends it; on update, only the `fields_set` change."""

    name: str = ""
    kind: str = Kind.TIME_BASED
    exit_time: time | None = None
    entry_time: time | None = None
    weekdays: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    product: str = "MIS"
    mtm_stop_loss: Decimal | None = None
    mtm_target: Decimal | None = None
    reentries: int = 0
    trailing_stop: Decimal | None = None
    rule_symbol: str = ""
    timeframe_minutes: int = 1
    entry_rule: str = ""
    exit_rule: str = ""
    accounts: list[AccountInput] = field(default_factory=list)
    legs: list[LegInput] = field(default_factory=list)
    fields_set: frozenset[str] = frozenset()


_SCALAR_FIELDS = (
    "name",
    "kind",
    "exit_time",
    "entry_time",
    "weekdays",
    "product",
    "mtm_stop_loss",
    "mtm_target",
    "reentries",
    "trailing_stop",
    "rule_symbol",
    "timeframe_minutes",
    "entry_rule",
    "exit_rule",
)


def _add(errors: dict[str, list[str]], name: str, message: str) -> None:
    errors.setdefault(name, []).append(message)


def _accounts_resolve(*, user: User, accounts: list[AccountInput]) -> list[tuple[BrokerAccount, int]]:
    """The user's own accounts, or 404 for any that is not (a foreign id reads as missing)."""
    return [(broker_account_get(user=user, account_id=entry.account_id), entry.multiplier) for entry in accounts]


def _leg_errors(errors: dict[str, list[str]], index: int, leg: LegInput, *, today: date) -> None:
    prefix = f"legs.{index}"
    if leg.instrument == LegInstrument.OPTION:
        if leg.option_type not in ("CE", "PE"):
            _add(errors, f"{prefix}.option_type", "An option leg needs option_type CE or PE.")
    elif leg.option_type:
        _add(errors, f"{prefix}.option_type", "Only option legs have an option type.")
    if (
        leg.instrument != LegInstrument.EQUITY
        and not Instrument.objects.filter(
            underlying=leg.underlying, instrument_type__in=(InstrumentType.FUT, InstrumentType.CE, InstrumentType.PE)
        ).exists()
    ):
        _add(errors, f"{prefix}.underlying", f"No derivatives of {leg.underlying} are listed.")
    if leg.instrument == LegInstrument.EQUITY and instrument_get(symbol=f"NSE:{leg.underlying}") is None:
        _add(errors, f"{prefix}.underlying", f"NSE:{leg.underlying} is not a listed instrument.")
    if leg.expiry == ExpiryChoice.FIXED:
        if leg.expiry_date is None:
            _add(errors, f"{prefix}.expiry_date", "A fixed expiry needs expiry_date.")
        elif leg.expiry_date < today:
            _add(errors, f"{prefix}.expiry_date", "The expiry date has passed.")
    elif leg.expiry_date is not None:
        _add(errors, f"{prefix}.expiry_date", "expiry_date goes with expiry 'fixed' only.")
    if leg.instrument == LegInstrument.OPTION:
        if leg.strike == StrikeChoice.CLOSEST_PREMIUM and (leg.premium is None or leg.premium <= 0):
            _add(errors, f"{prefix}.premium", "Choosing the strike by premium needs a positive premium.")
        if leg.strike == StrikeChoice.FIXED and (leg.strike_price is None or leg.strike_price <= 0):
            _add(errors, f"{prefix}.strike_price", "A fixed strike needs a positive strike_price.")
        if leg.strike != StrikeChoice.ATM and leg.strike_offset:
            _add(errors, f"{prefix}.strike_offset", "strike_offset goes with strike 'atm' only.")
    for name in ("stop_loss", "target"):
        value, unit = getattr(leg, name), getattr(leg, f"{name}_unit")
        if value is not None and not unit:
            _add(errors, f"{prefix}.{name}_unit", f"Say whether {name} is in points or percent.")
        if value is not None and unit == ExitUnit.PERCENT and value >= 100 and name == "stop_loss":
            continue  # a short option's stop at +100% (premium doubling) is a common, valid choice
        if value is None and unit:
            _add(errors, f"{prefix}.{name}", f"{name}_unit needs a {name} value.")


def _strategy_errors(data: StrategyInput, *, today: date) -> dict[str, list[str]]:
    from .rules import RuleError, rule_parse

    errors: dict[str, list[str]] = {}
    if data.exit_time is None:
        _add(errors, "exit_time", "Every strategy needs an exit time.")
    if data.kind == Kind.TIME_BASED:
        if data.entry_time is None:
            _add(errors, "entry_time", "A time-based strategy needs an entry time.")
        elif data.exit_time is not None and data.entry_time >= data.exit_time:
            _add(errors, "exit_time", "The exit time must follow the entry time.")
    elif data.entry_time is not None:
        _add(errors, "entry_time", "Only time-based strategies have an entry time.")
    if not data.weekdays:
        _add(errors, "weekdays", "Pick at least one weekday.")
    if data.kind in (Kind.TIME_BASED, Kind.RULE) and not data.legs:
        _add(errors, "legs", f"A {data.kind.replace('_', '-')} strategy needs at least one leg.")
    if data.kind == Kind.RULE:
        if not data.rule_symbol:
            _add(errors, "rule_symbol", "A rule strategy needs the symbol whose candles its rules read.")
        elif instrument_get(symbol=data.rule_symbol) is None:
            _add(errors, "rule_symbol", f"{data.rule_symbol} is not a listed instrument.")
        if not data.entry_rule:
            _add(errors, "entry_rule", "A rule strategy needs an entry rule.")
        for name in ("entry_rule", "exit_rule"):
            text = getattr(data, name)
            if text:
                try:
                    rule_parse(text)
                except RuleError as error:
                    _add(errors, name, str(error))
    else:
        for name in ("entry_rule", "exit_rule", "rule_symbol"):
            if getattr(data, name):
                _add(errors, name, "Only rule strategies have rules.")
    if data.mtm_stop_loss is not None and data.mtm_stop_loss <= 0:
        _add(errors, "mtm_stop_loss", "The MTM stop-loss is a positive amount of loss.")
    if data.mtm_target is not None and data.mtm_target <= 0:
        _add(errors, "mtm_target", "The MTM target is a positive amount of profit.")
    if data.trailing_stop is not None and not any(leg.stop_loss is not None for leg in data.legs):
        _add(errors, "trailing_stop", "A trailing stop trails the legs' stop-losses: give a leg a stop-loss.")
    if data.reentries and not any(leg.stop_loss is not None for leg in data.legs):
        _add(errors, "reentries", "Re-entries follow a leg's stop-loss: give a leg a stop-loss.")
    for index, leg in enumerate(data.legs):
        _leg_errors(errors, index, leg, today=today)
    return errors


def _strategy_write(*, strategy: Strategy, data: StrategyInput, accounts, replace_legs: bool) -> None:
    strategy.updated_at = timezone.now()
    try:
        with transaction.atomic():
            strategy.save()
    except IntegrityError:
        raise ValidationFailed(errors={"name": ["You already have a strategy with this name."]}) from None
    if accounts is not None:
        strategy.accounts.all().delete()
        StrategyAccount.objects.bulk_create(
            StrategyAccount(strategy=strategy, account=account, multiplier=multiplier)
            for account, multiplier in accounts
        )
    if replace_legs:
        strategy.legs.all().delete()
        Leg.objects.bulk_create(
            Leg(strategy=strategy, position=position, **vars(leg)) for position, leg in enumerate(data.legs)
        )


def _input_of(strategy: Strategy) -> StrategyInput:
    return StrategyInput(
        **{name: getattr(strategy, name) for name in _SCALAR_FIELDS},
        accounts=[AccountInput(entry.account_id, entry.multiplier) for entry in strategy.accounts.all()],
        legs=[
            LegInput(**{name: getattr(leg, name) for name in LegInput.__dataclass_fields__})
            for leg in strategy.legs.all()
        ],
    )


@transaction.atomic
def strategy_create(*, user: User, data: StrategyInput) -> tuple[Strategy, str]:
    """The new draft and its webhook secret, which is shown this once (stored encrypted)."""
    accounts = _accounts_resolve(user=user, accounts=data.accounts)
    errors = _strategy_errors(data, today=timezone.localdate(timezone=IST))
    if errors:
        raise ValidationFailed(errors=errors)
    secret = secrets.token_urlsafe(32)
    strategy = Strategy(user=user, **{name: getattr(data, name) for name in _SCALAR_FIELDS})
    strategy.webhook_secret = secret
    strategy.webhook_secret_rotated_at = timezone.now()
    _strategy_write(strategy=strategy, data=data, accounts=accounts, replace_legs=True)
    audit_record(action="strategy.create", actor=user, target=strategy, details={"kind": strategy.kind})
    return strategy, secret


def _lock_own(*, user: User, strategy_id: str) -> Strategy:
    strategy = Strategy.objects.select_for_update().filter(user=user, pk=strategy_id).first()
    if strategy is None:
        raise NotFound()
    return strategy


@transaction.atomic
def strategy_update(*, user: User, strategy_id: str, data: StrategyInput) -> Strategy:
    """Change a strategy that is not running (409 INVALID_STATE while it runs: stop it first)."""
    strategy = _lock_own(user=user, strategy_id=strategy_id)
    if strategy.status == StrategyStatus.RUNNING:
        raise InvalidState("Stop the strategy before changing it.")
    merged = _input_of(strategy)
    for name in data.fields_set:
        setattr(merged, name, getattr(data, name))
    accounts = _accounts_resolve(user=user, accounts=merged.accounts) if "accounts" in data.fields_set else None
    errors = _strategy_errors(merged, today=timezone.localdate(timezone=IST))
    if errors:
        raise ValidationFailed(errors=errors)
    for name in _SCALAR_FIELDS:
        setattr(strategy, name, getattr(merged, name))
    _strategy_write(strategy=strategy, data=merged, accounts=accounts, replace_legs="legs" in data.fields_set)
    audit_record(action="strategy.update", actor=user, target=strategy, details={"fields": sorted(data.fields_set)})
    return strategy


@transaction.atomic
def strategy_delete(*, user: User, strategy_id: str) -> None:
    strategy = _lock_own(user=user, strategy_id=strategy_id)
    if strategy.status == StrategyStatus.RUNNING:
        raise InvalidState("Stop the strategy before deleting it.")
    audit_record(action="strategy.delete", actor=user, target=strategy, details={"name": strategy.name})
    _schedules_remove(strategy=strategy)
    strategy.delete()


@transaction.atomic
def strategy_webhook_secret_rotate(*, user: User, strategy_id: str) -> str:
    """A new secret replaces the old at once; the old one is refused from now on."""
    strategy = _lock_own(user=user, strategy_id=strategy_id)
    secret = secrets.token_urlsafe(32)
    strategy.webhook_secret = secret
    strategy.webhook_secret_rotated_at = timezone.now()
    strategy.save(update_fields=["webhook_secret", "webhook_secret_rotated_at"])
    audit_record(action="strategy.rotate_secret", actor=user, target=strategy)
    return secret


def definition_of(strategy: Strategy) -> StrategyDefinition:
    def level(unit: str, value: Decimal | None) -> ExitLevel | None:
        return ExitLevel(ExitUnit(unit), value) if value is not None and unit else None

    return StrategyDefinition(
        kind=Kind(strategy.kind),
        legs=tuple(
            LegDefinition(
                underlying=leg.underlying,
                instrument=LegInstrument(leg.instrument),
                side=leg.side,
                lots=leg.lots,
                option_type=leg.option_type,
                expiry=ExpiryChoice(leg.expiry),
                expiry_date=leg.expiry_date,
                strike=StrikeChoice(leg.strike),
                strike_offset=leg.strike_offset,
                premium=leg.premium,
                strike_price=leg.strike_price,
                stop_loss=level(leg.stop_loss_unit, leg.stop_loss),
                target=level(leg.target_unit, leg.target),
            )
            for leg in strategy.legs.all()
        ),
        exit_time=strategy.exit_time,
        entry_time=strategy.entry_time,
        weekdays=tuple(strategy.weekdays),
        product=strategy.product,
        mtm_stop_loss=strategy.mtm_stop_loss,
        mtm_target=strategy.mtm_target,
        reentries=strategy.reentries,
        trailing_stop=strategy.trailing_stop,
        rule_symbol=strategy.rule_symbol,
        timeframe_minutes=strategy.timeframe_minutes,
        entry_rule=strategy.entry_rule,
        exit_rule=strategy.exit_rule,
    )


# --- schedules ---------------------------------------------------------------------------------------------------


def _schedule_name(strategy: Strategy, action: str) -> str:
    return f"strategy {strategy.pk} {action}"


def _crontab_for(*, at: time, weekdays: Iterable[int]) -> CrontabSchedule:
    # cron counts Sunday as 0; ours is Python's Monday = 0.
    days = ",".join(str((day + 1) % 7) for day in sorted(set(weekdays)))
    schedule, _ = CrontabSchedule.objects.get_or_create(
        minute=str(at.minute),
        hour=str(at.hour),
        day_of_week=days,
        day_of_month="*",
        month_of_year="*",
        timezone=IST,
    )
    return schedule


def _schedules_create(*, strategy: Strategy, run: StrategyRun) -> list[PeriodicTask]:
    """Entry (time-based only) and exit entries on the strategy's weekdays in IST; holidays are skipped when the
    task runs, by the market calendar, since cron cannot know them."""
    times = [(FireAction.EXIT, strategy.exit_time)]
    if strategy.kind == Kind.TIME_BASED:
        times.insert(0, (FireAction.ENTRY, strategy.entry_time))
    created = []
    for action, at in times:
        task, _ = PeriodicTask.objects.update_or_create(
            name=_schedule_name(strategy, action),
            defaults={
                "task": FIRE_TASK,
                "crontab": _crontab_for(at=at, weekdays=strategy.weekdays),
                "interval": None,
                "kwargs": json.dumps({"strategy_id": strategy.pk, "run_id": run.pk, "action": action}),
                "enabled": True,
                "description": SCHEDULE_DESCRIPTION,
            },
        )
        created.append(task)
    return created


def _schedules_remove(*, strategy: Strategy) -> int:
    deleted, _ = PeriodicTask.objects.filter(name__startswith=f"strategy {strategy.pk} ").delete()
    return deleted


# --- starting and stopping ---------------------------------------------------------------------------------------


def _paper_account(user: User) -> BrokerAccount | None:
    return broker_account_list(user=user, broker=Broker.PAPER, status=AccountStatus.CONNECTED).first()


def _require_startable(*, strategy: Strategy, mode: str) -> None:
    entries = list(strategy.accounts.select_related("account"))
    if not entries:
        raise InvalidState("Add a broker account to the strategy before starting it.")
    if mode == RunMode.PAPER:
        if _paper_account(strategy.user) is None:
            raise InvalidState("Paper mode trades in your paper account: connect one first.")
        return
    for entry in entries:
        account = entry.account
        if account.deleted_at is not None:
            raise InvalidState(f"Broker account {account.label} was removed.")
        if account.broker == Broker.PAPER:
            raise InvalidState(f"{account.label} is a paper account: start the strategy in paper mode.")
        if account.status != AccountStatus.CONNECTED:
            raise AppError(
                f"Broker account {account.label} needs a login ({account.status}).",
                code=ErrorCode.BROKER_SESSION_EXPIRED,
            )


@transaction.atomic
def strategy_start(*, user: User, strategy_id: str, mode: str) -> StrategyRun:
    """Paper or live: a run begins and the beat entries are created. 409 when it already runs or cannot trade."""
    strategy = _lock_own(user=user, strategy_id=strategy_id)
    if strategy.status == StrategyStatus.RUNNING:
        raise InvalidState("The strategy is already running.")
    _require_startable(strategy=strategy, mode=mode)
    if mode == RunMode.LIVE:
        require_live_trading(user=user)
    require_running_strategy_slot(
        user=user, running=Strategy.objects.filter(user=user, status=StrategyStatus.RUNNING).count()
    )
    run = StrategyRun.objects.create(strategy=strategy, mode=mode)
    _schedules_create(strategy=strategy, run=run)
    strategy.status = StrategyStatus.RUNNING
    strategy.status_message = ""
    strategy.save(update_fields=["status", "status_message", "updated_at"])
    audit_record(action="strategy.start", actor=user, target=strategy, details={"mode": mode, "run": run.pk})
    return run


def _run_end(*, strategy: Strategy, run: StrategyRun, status: str, message: str = "") -> None:
    run.status = status
    run.status_message = message[:300]
    run.ended_at = timezone.now()
    run.final_pnl = run_pnl(run=run).total
    run.save(update_fields=["status", "status_message", "ended_at", "final_pnl"])
    _schedules_remove(strategy=strategy)
    strategy.status = {
        RunStatus.STOPPED: StrategyStatus.STOPPED,
        RunStatus.COMPLETED: StrategyStatus.COMPLETED,
        RunStatus.ERROR: StrategyStatus.ERROR,
    }[status]
    strategy.status_message = message[:300]
    strategy.save(update_fields=["status", "status_message", "updated_at"])


def strategy_stop(*, user: User, strategy_id: str, exit_positions: bool) -> StrategyRun:
    """End the run and remove its beat entries; with `exit_positions` also cancel its working orders and square
    off its own positions (never the user's other positions)."""
    with transaction.atomic():
        strategy = _lock_own(user=user, strategy_id=strategy_id)
        run = strategy.runs.filter(status=RunStatus.RUNNING).first()
        if strategy.status != StrategyStatus.RUNNING or run is None:
            raise InvalidState("The strategy is not running.")
        _run_end(strategy=strategy, run=run, status=RunStatus.STOPPED, message="stopped by you")
        audit_record(
            action="strategy.stop", actor=user, target=strategy, details={"run": run.pk, "exit": exit_positions}
        )
    if exit_positions:
        run_exit(run=run, reason="stopped")
        # The PnL recorded by _run_end marked the open positions at the last price; the exits have now filled.
        StrategyRun.objects.filter(pk=run.pk).update(final_pnl=run_pnl(run=run).total)
    run.refresh_from_db()
    return run


@transaction.atomic
def strategies_stop_for_user(*, user: User, actor: User | None, reason: str) -> list[str]:
    """Stop every running strategy of a user who may no longer trade (deactivated, or moved to a view-only role),
    each audited and announced to its owner. Open positions and their exits stay: the RMS and the exits still
    close them, and nothing the strategy would place next gets past the risk gate anyway."""
    stopped = []
    running = Strategy.objects.select_for_update().filter(user=user, status=StrategyStatus.RUNNING).order_by("pk")
    for strategy in running:
        run = strategy.runs.filter(status=RunStatus.RUNNING).first()
        if run is None:
            continue
        _run_end(strategy=strategy, run=run, status=RunStatus.STOPPED, message=f"stopped: {reason}")
        audit_record(
            action="strategy.stop",
            actor=actor,
            target=strategy,
            details={"run": run.pk, "exit": False, "reason": reason},
        )
        notification_create(
            user=user,
            kind="strategy",
            title=f"{strategy.name} was stopped",
            body=f"Your account can no longer trade ({reason}), so the strategy places no more orders. Its open "
            "positions and their stop-loss and target orders stay in place.",
            level=Notification.Level.WARNING,
            data={"strategy_id": strategy.pk, "run_id": run.pk},
        )
        stopped.append(strategy.pk)
    return stopped


# --- the strategy's own orders and positions ---------------------------------------------------------------------


def run_orders(run: StrategyRun):
    orders = Order.objects.filter(strategy_ref=run.strategy_id, created_at__gte=run.started_at)
    if run.ended_at is not None:
        # Exits placed by the stop itself belong to the run too: they follow `ended_at` by moments.
        orders = orders.filter(created_at__lte=run.ended_at + timedelta(minutes=5))
    return orders


@dataclass
class RunPnl:
    realized: Decimal
    unrealized: Decimal
    total: Decimal
    positions: list[dict[str, Any]]


def run_pnl(*, run: StrategyRun, since: datetime | None = None) -> RunPnl:
    """The run's PnL from its own fills: sells minus buys plus the open quantity at the last price."""
    trades = Trade.objects.filter(order__in=run_orders(run))
    if since is not None:
        trades = trades.filter(traded_at__gte=since)
    books: dict[tuple[str, str, str], dict[str, Any]] = {}
    for account_id, symbol, product, side, quantity, price in trades.values_list(
        "account_id", "symbol", "product", "side", "quantity", "price"
    ):
        book = books.setdefault((account_id, symbol, product), {"net": 0, "cash": Decimal(0), "bought": 0})
        signed = quantity if side == Side.BUY else -quantity
        book["net"] += signed
        book["cash"] -= Decimal(signed) * price
    quotes = quotes_get(sorted({symbol for _, symbol, _ in books}))
    realized = unrealized = Decimal(0)
    positions = []
    for (account_id, symbol, product), book in sorted(books.items()):
        quote = quotes.get(symbol)
        last = quote.last_price if quote is not None else None
        if book["net"] == 0:
            realized += book["cash"]
            value = book["cash"]
        else:
            value = book["cash"] + (Decimal(book["net"]) * last if last is not None else Decimal(0))
            unrealized += value
        positions.append(
            {
                "account_id": account_id,
                "symbol": symbol,
                "product": product,
                "quantity": book["net"],
                "last_price": last,
                "pnl": value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP),
            }
        )
    cents = Decimal("0.01")
    return RunPnl(
        realized=realized.quantize(cents, rounding=ROUND_HALF_UP),
        unrealized=unrealized.quantize(cents, rounding=ROUND_HALF_UP),
        total=(realized + unrealized).quantize(cents, rounding=ROUND_HALF_UP),
        positions=positions,
    )


def _own_open_quantities(run: StrategyRun) -> dict[tuple[str, str, str], int]:
    net: dict[tuple[str, str, str], int] = {}
    for account_id, symbol, product, side, quantity in Trade.objects.filter(order__in=run_orders(run)).values_list(
        "account_id", "symbol", "product", "side", "quantity"
    ):
        key = (account_id, symbol, product)
        net[key] = net.get(key, 0) + (quantity if side == Side.BUY else -quantity)
    return {key: quantity for key, quantity in net.items() if quantity}


def run_exit(*, run: StrategyRun, reason: str, symbol: str | None = None) -> list[str]:
    """Cancel the run's working orders (pending entries and their target/stop-loss legs) and close what the run
    itself holds, capped by what the account still holds. Returns the exit orders' ids."""
    strategy = run.strategy
    for order in run_orders(run).filter(status__in=CANCELLABLE_OWN).select_related("account"):
        if symbol is not None and order.symbol != symbol:
            continue
        try:
            order_cancel(user=None, order=order, source=OrderSource.STRATEGY)
        except AppError as error:
            logger.warning("strategy %s could not cancel %s: %s", strategy.pk, order.pk, error.detail)
    placed = []
    for (account_id, held_symbol, product), quantity in sorted(_own_open_quantities(run).items()):
        if symbol is not None and held_symbol != symbol:
            continue
        position = Position.objects.filter(account_id=account_id, symbol=held_symbol, product=product).first()
        account_net = position.quantity if position is not None else 0
        # Close no more than the account still holds in the same direction (the user may have closed some).
        closable = min(abs(quantity), abs(account_net)) if account_net * quantity > 0 else 0
        if not closable:
            continue
        for slice_quantity in quantities_within_freeze(symbol=held_symbol, quantity=closable):
            spec = OrderSpec(
                account_id=account_id,
                symbol=held_symbol,
                side=Side.SELL if quantity > 0 else Side.BUY,
                quantity=slice_quantity,
                order_type=OrderType.MARKET,
                product=product,
                tag=strategy.pk,
            )
            try:
                order = order_place(
                    user=strategy.user,
                    spec=spec,
                    source=OrderSource.STRATEGY,
                    role=LegRole.SQUARE_OFF,
                    strategy_ref=strategy.pk,
                )
                placed.append(order.pk)
            except AppError as error:
                logger.warning("strategy %s exit of %s failed: %s", strategy.pk, held_symbol, error.detail)
                notification_create(
                    user=strategy.user,
                    kind="strategy",
                    title=f"{strategy.name}: exit of {held_symbol} failed",
                    body=error.detail,
                    level=Notification.Level.ERROR,
                    data={"strategy_id": strategy.pk},
                )
                break
    audit_record(
        action="strategy.exit",
        actor=None,
        target=strategy,
        details={"run": run.pk, "reason": reason, "orders": placed, "symbol": symbol},
    )
    return placed


# --- firing ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedLeg:
    symbol: str
    lot_size: int
    reference_price: Decimal | None
    tick_size: Decimal


def _offered_contracts(leg: LegDefinition, *, day: date):
    types = [leg.option_type] if leg.instrument == LegInstrument.OPTION else [InstrumentType.FUT]
    return Instrument.objects.filter(
        underlying=leg.underlying, instrument_type__in=types, expiry__gte=day, is_active=True
    )


def leg_resolve(*, leg: LegDefinition, day: date) -> ResolvedLeg:
    """The contract `leg` means today, from the instrument master and the quote cache."""
    if leg.instrument == LegInstrument.EQUITY:
        instrument = instrument_get(symbol=f"NSE:{leg.underlying}")
        if instrument is None:
            raise leg_choice.LegUnresolvable(f"NSE:{leg.underlying} is not listed")
    else:
        contracts = _offered_contracts(leg, day=day)
        offered = sorted(set(contracts.values_list("expiry", flat=True)))
        exchange = leg_choice.derivatives_exchange(leg.underlying)
        monthly = [expiry for expiry in offered if expiry == _monthly_of(exchange, expiry)]
        choice = leg.expiry
        if leg.instrument == LegInstrument.FUTURE and choice in (ExpiryChoice.CURRENT_WEEK, ExpiryChoice.NEXT_WEEK):
            choice = ExpiryChoice.CURRENT_MONTH if choice == ExpiryChoice.CURRENT_WEEK else ExpiryChoice.NEXT_MONTH
        expiry = leg_choice.expiry_pick(choice=choice, day=day, offered=offered, monthly=monthly, fixed=leg.expiry_date)
        series = contracts.filter(expiry=expiry)
        if leg.instrument == LegInstrument.FUTURE:
            instrument = series.first()
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


def _today_ist(now: datetime) -> date:
    return now.astimezone(IST).date()


def _runnable_today(strategy: Strategy, day: date) -> bool:
    if calendar.market_always_open():
        return True  # the demo's simulated market trades every day
    return day.weekday() in strategy.weekdays and calendar.is_trading_day(day)


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
            locked = Strategy.objects.select_for_update().get(pk=strategy.pk)
            if locked.status == StrategyStatus.RUNNING:
                _run_end(strategy=locked, run=run, status=RunStatus.COMPLETED, message="every expiry has passed")
                audit_record(action="strategy.complete", actor=None, target=locked, details={"run": run.pk})


# --- the strategy-level watch (on the RMS sweep) -----------------------------------------------------------------


def _session_start(day: date) -> datetime:
    return datetime.combine(day, time(0, 0), tzinfo=IST)


def strategies_monitor(*, now: datetime | None = None) -> dict[str, int]:
    """For every running run: the strategy's MTM stop-loss and target (today's PnL of its own fills), and leg
    re-entries after a stop-loss. Called from the RMS sweep, so it runs on the same clock."""
    now = now or timezone.now()
    day = _today_ist(now)
    counts = {"mtm_exits": 0, "reentries": 0}
    runs = StrategyRun.objects.filter(status=RunStatus.RUNNING).select_related("strategy", "strategy__user")
    runs = runs.filter(_watched())
    for run in runs:
        strategy = run.strategy
        if not _runnable_today(strategy, day):
            continue
        local_time = now.astimezone(IST).time()
        if strategy.exit_time is not None and local_time >= strategy.exit_time:
            continue
        if strategy.mtm_stop_loss is not None or strategy.mtm_target is not None:
            if _mtm_check(run=run, day=day):
                counts["mtm_exits"] += 1
                continue
        if strategy.reentries:
            counts["reentries"] += _reentries_place(run=run, day=day)
    return counts


def _watched() -> Q:
    return (
        Q(strategy__mtm_stop_loss__isnull=False) | Q(strategy__mtm_target__isnull=False) | Q(strategy__reentries__gt=0)
    )


def _mtm_check(*, run: StrategyRun, day: date) -> bool:
    strategy = run.strategy
    if StrategyFire.objects.filter(strategy=strategy, trading_day=day, action=FireAction.MTM_EXIT).exists():
        return False
    pnl = run_pnl(run=run, since=max(run.started_at, _session_start(day))).total
    hit = None
    if strategy.mtm_stop_loss is not None and pnl <= -strategy.mtm_stop_loss:
        hit = "stop-loss"
    elif strategy.mtm_target is not None and pnl >= strategy.mtm_target:
        hit = "target"
    if hit is None:
        return False
    fire = _fire_claim(strategy=strategy, run=run, day=day, leg=STRATEGY_LEVEL, action=FireAction.MTM_EXIT)
    if fire is None:
        return False
    # Today's remaining entries and re-entries must not reopen what this exit closes.
    placed = run_exit(run=run, reason=f"mtm_{hit.replace('-', '_')}")
    _fire_finish(fire, status=FireStatus.PLACED, order_ids=placed, detail=f"MTM {hit} at {pnl}")
    notification_create(
        user=strategy.user,
        kind="strategy",
        title=f"{strategy.name}: MTM {hit} hit",
        body=f"The strategy's MTM reached {pnl}; its positions are being squared off for today.",
        level=Notification.Level.WARNING,
        data={"strategy_id": strategy.pk, "run_id": run.pk, "mtm": str(pnl)},
    )
    return True


def _reentries_place(*, run: StrategyRun, day: date) -> int:
    """A leg whose stop-loss filled is entered again in the same contract, up to the strategy's re-entries."""
    strategy = run.strategy
    if StrategyFire.objects.filter(strategy=strategy, trading_day=day, action=FireAction.MTM_EXIT).exists():
        return 0
    fires = StrategyFire.objects.filter(
        strategy=strategy,
        trading_day=day,
        action__in=(FireAction.ENTRY, FireAction.REENTRY, FireAction.RULE_ENTRY),
        status=FireStatus.PLACED,
    )
    latest: dict[int, StrategyFire] = {}
    for fire in fires.order_by("attempt", "created_at"):
        latest[fire.leg] = fire
    definition = None
    placed = 0
    for leg_index, fire in latest.items():
        if leg_index < 0 or fire.attempt >= strategy.reentries:
            continue
        stopped = Order.objects.filter(
            parent_id__in=fire.order_ids, role=LegRole.STOP_LOSS, status=OrderStatus.FILLED
        ).first()
        if stopped is None:
            continue
        claim = _fire_claim(
            strategy=strategy, run=run, day=day, leg=leg_index, action=FireAction.REENTRY, attempt=fire.attempt + 1
        )
        if claim is None:
            continue
        definition = definition or definition_of(strategy)
        _leg_fire(
            strategy=strategy,
            run=run,
            definition=definition,
            fire=claim,
            index=leg_index,
            day=day,
            symbol=stopped.symbol,
        )
        placed += 1
    return placed


# --- rules -------------------------------------------------------------------------------------------------------


def rules_evaluate(*, now: datetime | None = None) -> int:
    """Each running rule strategy against its symbol's last closed candle: enter when the entry rule turns true
    and the run holds nothing, exit when the exit rule does. Once per (strategy, day, bar) however often it runs."""
    from .rules import rule_history, rule_parse, rule_true_on_last_bar

    now = now or timezone.now()
    day = _today_ist(now)
    acted = 0
    runs = StrategyRun.objects.filter(status=RunStatus.RUNNING, strategy__kind=Kind.RULE).select_related(
        "strategy", "strategy__user"
    )
    for run in runs:
        strategy = run.strategy
        if not _runnable_today(strategy, day) or now.astimezone(IST).time() >= strategy.exit_time:
            continue
        entry_rule = rule_parse(strategy.entry_rule)
        exit_rule = rule_parse(strategy.exit_rule) if strategy.exit_rule else None
        history = rule_history(
            symbol=strategy.rule_symbol,
            timeframe_minutes=strategy.timeframe_minutes,
            rules=[rule for rule in (entry_rule, exit_rule) if rule is not None],
            first_day=day,
            end=now,
        )
        series, last_close = history.series, history.last_close
        if last_close is None or last_close.date() != day:
            continue
        bar_minute = last_close.hour * 60 + last_close.minute
        holding = bool(_own_open_quantities(run))
        if not holding and rule_true_on_last_bar(entry_rule, series):
            acted += _rule_act(run=run, day=day, action=FireAction.RULE_ENTRY, bar_minute=bar_minute, at=last_close)
        elif holding and exit_rule is not None and rule_true_on_last_bar(exit_rule, series):
            acted += _rule_act(run=run, day=day, action=FireAction.RULE_EXIT, bar_minute=bar_minute, at=last_close)
    return acted


def _rule_act(*, run: StrategyRun, day: date, action: str, bar_minute: int, at: datetime) -> int:
    strategy = run.strategy
    fire = _fire_claim(
        strategy=strategy, run=run, day=day, leg=STRATEGY_LEVEL, action=action, attempt=bar_minute, scheduled_for=at
    )
    if fire is None:
        return 0
    rule = strategy.entry_rule if action == FireAction.RULE_ENTRY else strategy.exit_rule
    if action == FireAction.RULE_EXIT:
        placed = run_exit(run=run, reason="exit_rule")
        _fire_finish(fire, status=FireStatus.PLACED, order_ids=placed, detail=rule)
    else:
        definition = definition_of(strategy)
        placed, problems = [], []
        for index in range(len(definition.legs)):
            leg_fire = _fire_claim(
                strategy=strategy, run=run, day=day, leg=index, action=FireAction.RULE_ENTRY, attempt=bar_minute
            )
            if leg_fire is None:
                continue
            _leg_fire(strategy=strategy, run=run, definition=definition, fire=leg_fire, index=index, day=day)
            placed += leg_fire.order_ids
            if leg_fire.status == FireStatus.FAILED:
                problems.append(leg_fire)
        _fire_finish(fire, status=FireStatus.FAILED if problems else FireStatus.PLACED, order_ids=placed, detail=rule)
        if problems:
            _fires_failed(strategy=strategy, run=run, failed=problems)
    Signal.objects.create(
        strategy=strategy,
        user=strategy.user,
        source="rule",
        action="ENTRY" if action == FireAction.RULE_ENTRY else "EXIT",
        symbol=strategy.rule_symbol,
        status=SignalStatus.ACCEPTED if fire.status == FireStatus.PLACED else SignalStatus.REJECTED,
        reason="" if fire.status == FireStatus.PLACED else "LEG_FAILED",
        detail=f"{rule} on the bar closing {at:%H:%M}"[:300],
        dedupe_key=f"rule:{day.isoformat()}:{action}:{bar_minute}",
        order_ids=fire.order_ids,
    )
    return 1


# --- webhooks ----------------------------------------------------------------------------------------------------


class WebhookRefused(AppError):
    """A webhook call refused after it was counted; `signal` is the rejected Signal, None past the day's bound."""

    def __init__(self, detail: str, *, code: ErrorCode, signal: Signal | None) -> None:
        super().__init__(detail, code=code, extra={"signal_id": signal.pk if signal is not None else None})
        self.signal = signal


@dataclass(frozen=True)
class WebhookCall:
    strategy_id: str
    body: bytes
    secret: str  # from the header or query string; the body's `secret` field is read here too
    query_action: str = ""
    query_quantity: str = ""
    remote_addr: str | None = None


@dataclass(frozen=True)
class ParsedSignal:
    source: str
    action: str
    symbols: list[str]
    quantity: int | None
    dedupe_key: str
    sent_at: datetime | None


def _payload_of(body: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def _redacted(payload: dict[str, Any] | None) -> dict[str, Any]:
    if payload is None:
        return {}
    return {key: value for key, value in payload.items() if key.lower() not in ("secret", "passphrase", "token")}


def _webhook_rejection_count(*, strategy: Strategy, reason: str) -> int:
    """Count one refused call on the strategy's day (IST); returns the day's count including this one."""
    now = timezone.now()
    counts = WebhookRejectionCount.objects.filter(strategy=strategy, day=_today_ist(now))
    with transaction.atomic():
        if not counts.update(count=F("count") + 1, last_reason=reason, last_at=now):
            try:
                with transaction.atomic():
                    WebhookRejectionCount.objects.create(
                        strategy=strategy, day=_today_ist(now), count=1, last_reason=reason, last_at=now
                    )
            except IntegrityError:  # a concurrent refusal created the day's row first
                counts.update(count=F("count") + 1, last_reason=reason, last_at=now)
        return counts.values_list("count", flat=True).first() or 1


def _reject(
    *, strategy: Strategy, call: WebhookCall, payload, code: ErrorCode, reason: str, detail: str, parsed=None
) -> WebhookRefused:
    """Every refusal is counted; only the day's first STRATEGY_WEBHOOK_REJECTED_SIGNALS_PER_DAY are kept as
    signals, so unauthenticated callers cannot grow the table without bound."""
    refused_today = _webhook_rejection_count(strategy=strategy, reason=reason)
    if refused_today > settings.STRATEGY_WEBHOOK_REJECTED_SIGNALS_PER_DAY:
        return WebhookRefused(detail, code=code, signal=None)
    signal = Signal.objects.create(
        strategy=strategy,
        user=strategy.user,
        source=parsed.source if parsed else ("chartink" if payload and "stocks" in payload else "tradingview"),
        action=(parsed.action if parsed else "")[:6],
        symbol=(",".join(parsed.symbols) if parsed else "")[:64],
        quantity=parsed.quantity if parsed else None,
        status=SignalStatus.REJECTED,
        reason=reason,
        detail=detail[:300],
        dedupe_key=parsed.dedupe_key if parsed else "",
        payload=_redacted(payload),
        remote_addr=call.remote_addr,
    )
    return WebhookRefused(detail, code=code, signal=signal)


def _symbol_of(raw: str) -> str:
    text = raw.strip().upper()
    return text if ":" in text else f"NSE:{text}"


def _parse_signal(*, call: WebhookCall, payload: dict[str, Any], strategy: Strategy) -> ParsedSignal:
    """TradingView sends what the alert's message says (we document {action, symbol, quantity, id, timestamp});
    ChartInk sends its scan result (stocks, trigger_prices, triggered_at, scan_name), so the action and quantity
    come from the webhook URL's query string."""
    errors: dict[str, list[str]] = {}
    if "stocks" in payload:
        source = "chartink"
        symbols = [_symbol_of(stock) for stock in str(payload.get("stocks") or "").split(",") if stock.strip()]
        action = (call.query_action or "BUY").upper()
        quantity_text = call.query_quantity or str(payload.get("quantity") or "")
        sent_at = None
        identity = f"{payload.get('scan_name', '')}|{payload.get('triggered_at', '')}|{payload.get('stocks', '')}"
    else:
        source = "tradingview"
        symbol = payload.get("symbol") or payload.get("ticker") or ""
        symbols = [_symbol_of(str(symbol))] if symbol else []
        action = str(payload.get("action") or "").upper()
        quantity_text = str(payload.get("quantity") if payload.get("quantity") is not None else "")
        sent_at = _timestamp(payload.get("timestamp") or payload.get("time"), errors)
        identity = str(payload.get("id") or "") or json.dumps(_redacted(payload), sort_keys=True)
    if action not in WEBHOOK_ACTIONS:
        errors["action"] = [f"action must be one of {', '.join(WEBHOOK_ACTIONS)}."]
    if not symbols and action != "EXIT":
        errors["symbol"] = ["Which symbol? Send `symbol` (TradingView) or `stocks` (ChartInk)."]
    for symbol in symbols:
        if instrument_get(symbol=symbol) is None:
            errors.setdefault("symbol", []).append(f"{symbol} is not a listed instrument.")
    quantity = None
    if action in ("BUY", "SHORT") or quantity_text:
        try:
            quantity = int(quantity_text)
        except ValueError:
            errors["quantity"] = ["quantity must be a positive whole number of units."]
        else:
            quantity_limit = _webhook_quantity_limit(symbols)
            if quantity <= 0:
                errors["quantity"] = ["quantity must be a positive whole number of units."]
            elif quantity > quantity_limit:
                errors["quantity"] = [f"quantity must be at most {quantity_limit} units."]
            if "quantity" in errors:
                quantity = None
    digest = hashlib.sha256(f"{strategy.pk}|{source}|{identity}".encode()).hexdigest()
    parsed = ParsedSignal(
        source=source, action=action, symbols=symbols, quantity=quantity, dedupe_key=digest, sent_at=sent_at
    )
    if errors:
        raise _ParseFailed(parsed=parsed, errors=errors)
    return parsed


def _webhook_quantity_limit(symbols: list[str]) -> int:
    """The documented maximum, or a derivative's exchange freeze quantity when that is lower."""
    limit = settings.STRATEGY_WEBHOOK_MAX_QUANTITY
    for symbol in symbols:
        instrument = instrument_get(symbol=symbol)
        if instrument is not None and instrument.instrument_type != InstrumentType.EQ:
            limit = min(limit, freeze_quantity(underlying=instrument.underlying) or limit)
    return limit


class _ParseFailed(Exception):
    def __init__(self, *, parsed: ParsedSignal, errors: dict[str, list[str]]) -> None:
        super().__init__("invalid signal")
        self.parsed = parsed
        self.errors = errors


def _timestamp(value: Any, errors: dict[str, list[str]]) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        if isinstance(value, (int, float)) or str(value).isdigit():
            number = float(value)
            return datetime.fromtimestamp(number / 1000 if number > 1e11 else number, tz=timezone.UTC)
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        errors["timestamp"] = ["timestamp must be ISO 8601 or epoch seconds."]
        return None
    if timezone.is_naive(moment):
        errors["timestamp"] = ["timestamp needs a UTC offset."]
        return None
    return moment


def signal_receive(*, call: WebhookCall, now: datetime | None = None) -> Signal:
    """Authenticate by the strategy's own secret, refuse replays and stale calls, then act. Every call on an
    existing strategy is recorded as a Signal, accepted or rejected with its reason."""
    now = now or timezone.now()
    strategy = Strategy.objects.select_related("user").filter(pk=call.strategy_id).first()
    if strategy is None:
        raise NotFound()
    payload = _payload_of(call.body)
    offered = call.secret or (str(payload.get("secret") or "") if payload else "")
    if not strategy.webhook_secret or not hmac.compare_digest(
        offered.encode("utf-8"), strategy.webhook_secret.encode("utf-8")
    ):
        raise _reject(
            strategy=strategy,
            call=call,
            payload=payload,
            code=ErrorCode.AUTH_INVALID,
            reason="BAD_SECRET",
            detail="The webhook secret is wrong or was rotated.",
        )
    if payload is None:
        raise _reject(
            strategy=strategy,
            call=call,
            payload=None,
            code=ErrorCode.VALIDATION_ERROR,
            reason="BAD_PAYLOAD",
            detail="The body must be a JSON object.",
        )
    try:
        parsed = _parse_signal(call=call, payload=payload, strategy=strategy)
    except _ParseFailed as failure:
        refused = _reject(
            strategy=strategy,
            call=call,
            payload=payload,
            code=ErrorCode.VALIDATION_ERROR,
            reason="BAD_PAYLOAD",
            detail="; ".join(f"{name}: {' '.join(messages)}" for name, messages in failure.errors.items()),
            parsed=failure.parsed,
        )
        refused.errors = failure.errors
        raise refused from None
    max_age = timedelta(seconds=settings.STRATEGY_WEBHOOK_MAX_AGE_SECONDS)
    if parsed.sent_at is not None and not (now - max_age <= parsed.sent_at <= now + timedelta(seconds=60)):
        raise _reject(
            strategy=strategy,
            call=call,
            payload=payload,
            code=ErrorCode.VALIDATION_ERROR,
            reason="STALE",
            detail=f"The signal's timestamp is more than {max_age.seconds} seconds away from now.",
            parsed=parsed,
        )
    run = strategy.runs.filter(status=RunStatus.RUNNING).first()
    if strategy.kind != Kind.WEBHOOK or run is None:
        raise _reject(
            strategy=strategy,
            call=call,
            payload=payload,
            code=ErrorCode.INVALID_STATE,
            reason="NOT_RUNNING",
            detail="This strategy takes webhooks only while it runs as a webhook strategy.",
            parsed=parsed,
        )
    try:
        with transaction.atomic():
            signal = Signal.objects.create(
                strategy=strategy,
                user=strategy.user,
                source=parsed.source,
                action=parsed.action,
                symbol=",".join(parsed.symbols)[:64],
                quantity=parsed.quantity,
                status=SignalStatus.ACCEPTED,
                dedupe_key=parsed.dedupe_key,
                payload=_redacted(payload),
                remote_addr=call.remote_addr,
                received_at=now,
            )
    except IntegrityError:
        raise _reject(
            strategy=strategy,
            call=call,
            payload=payload,
            code=ErrorCode.CONFLICT,
            reason="REPLAYED",
            detail="This signal was already received; a replay does not trade again.",
            parsed=parsed,
        ) from None
    return _signal_act(signal=signal, run=run, parsed=parsed)


def _signal_act(*, signal: Signal, run: StrategyRun, parsed: ParsedSignal) -> Signal:
    strategy = run.strategy
    placed: list[str] = []
    problems: list[str] = []
    first_error: AppError | None = None
    if parsed.action == "EXIT":
        targets = parsed.symbols or [None]
        for symbol in targets:
            placed += run_exit(run=run, reason="signal", symbol=symbol)
    else:
        held = _own_open_quantities(run)
        for symbol in parsed.symbols:
            for account, multiplier in _trading_accounts(strategy=strategy, run=run):
                side, quantity = _signal_order(
                    action=parsed.action,
                    quantity=parsed.quantity,
                    multiplier=multiplier,
                    held=held.get((account.pk, symbol, strategy.product), 0),
                )
                if not quantity:
                    problems.append(f"{symbol} in {account.label}: no {_held_side(parsed.action)} position to close")
                    continue
                spec = OrderSpec(
                    account_id=account.pk,
                    symbol=symbol,
                    side=side,
                    quantity=quantity,
                    order_type=OrderType.MARKET,
                    product=strategy.product,
                    tag=strategy.pk,
                )
                try:
                    order = order_place(
                        user=strategy.user, spec=spec, source=OrderSource.STRATEGY, strategy_ref=strategy.pk
                    )
                    placed.append(order.pk)
                except AppError as error:
                    first_error = first_error or error
                    problems.append(f"{symbol} in {account.label}: {error.code}: {error.detail}")
    signal.order_ids = placed
    signal.detail = "; ".join(problems)[:300]
    if not placed and problems:
        signal.status = SignalStatus.REJECTED
        signal.reason = str(first_error.code) if first_error else "NO_POSITION"
    signal.save(update_fields=["order_ids", "detail", "status", "reason"])
    audit_record(
        action="strategy.signal",
        actor=None,
        target=strategy,
        details={"signal": signal.pk, "status": signal.status, "orders": placed},
    )
    return signal


def _held_side(action: str) -> str:
    return "long" if action == "SELL" else "short"


def _signal_order(*, action: str, quantity: int | None, multiplier: int, held: int) -> tuple[str, int]:
    """BUY opens or adds long, SHORT opens or adds short; SELL and COVER close the strategy's own long or short,
    never more than it holds (never flipping it)."""
    if action == "BUY":
        return Side.BUY, (quantity or 0) * multiplier
    if action == "SHORT":
        return Side.SELL, (quantity or 0) * multiplier
    wanted = quantity * multiplier if quantity else None
    # What there is to close: a short is no long to SELL, a long no short to COVER (never a negative quantity).
    closable = max(held, 0) if action == "SELL" else max(-held, 0)
    return (Side.SELL if action == "SELL" else Side.BUY), min(closable, wanted) if wanted else closable


# --- backtests ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BacktestInput:
    start: date
    end: date
    capital: Decimal = Decimal("1000000")
    volatility: Decimal = Decimal("0.15")


def backtest_start(*, user: User, strategy_id: str, data: BacktestInput) -> Backtest:
    """Queue a backtest over stored candles; the worker runs it and reports progress on the row."""
    from .tasks import backtest_run

    errors: dict[str, list[str]] = {}
    today = timezone.localdate(timezone=IST)
    if data.start > data.end:
        _add(errors, "end", "The end date must not precede the start date.")
    if data.end > today:
        _add(errors, "end", "Backtests read stored candles: the end date cannot be in the future.")
    if (data.end - data.start).days > settings.STRATEGY_BACKTEST_MAX_DAYS:
        _add(errors, "start", f"A backtest spans at most {settings.STRATEGY_BACKTEST_MAX_DAYS} days.")
    if data.capital <= 0:
        _add(errors, "capital", "Capital must be positive.")
    if not Decimal("0.01") <= data.volatility <= Decimal("3"):
        _add(errors, "volatility", "Volatility is an annual fraction between 0.01 and 3.")
    if errors:
        raise ValidationFailed(errors=errors)
    with transaction.atomic():
        # The user's row is the lock two concurrent starts queue on, so both cannot pass the plan's cap.
        User.objects.select_for_update().filter(pk=user.pk).values_list("pk", flat=True).get()
        strategy = _lock_own(user=user, strategy_id=strategy_id)
        active = Backtest.objects.filter(user=user, status__in=ACTIVE_BACKTEST_STATUSES).count()
        require_backtest_slot(user=user, active=active)
        backtest = Backtest.objects.create(
            strategy=strategy,
            user=user,
            start_date=data.start,
            end_date=data.end,
            capital=data.capital,
            volatility=data.volatility,
            definition=_definition_json(strategy),
        )
        audit_record(action="strategy.backtest", actor=user, target=strategy, details={"backtest": backtest.pk})
        transaction.on_commit(lambda: backtest_run.delay(backtest.pk))
    return backtest


def _definition_json(strategy: Strategy) -> dict[str, Any]:
    snapshot = vars(_input_of(strategy)).copy()
    snapshot.pop("fields_set", None)
    snapshot["accounts"] = [vars(entry) for entry in snapshot["accounts"]]
    snapshot["legs"] = [vars(leg) for leg in snapshot["legs"]]
    return json.loads(json.dumps(snapshot, default=str))


ACTIVE_BACKTEST_STATUSES = (BacktestStatus.QUEUED, BacktestStatus.RUNNING)


class _BacktestTimedOut(Exception):
    """The backtest ran past its soft time limit (Celery's, or the deadline checked after every day)."""


def _time_limit_message() -> str:
    return (
        f"The backtest ran past its time limit of {settings.BACKTEST_SOFT_TIME_LIMIT_SECONDS} seconds and was "
        "stopped; backtest a shorter period."
    )


def backtest_execute_stored(*, backtest_id: str) -> Backtest:
    """Run a queued backtest once: a second delivery of the task finds it no longer queued. Past its soft time
    limit it stops and is marked failed with the reason (thread pools have no Celery time limits: the deadline
    checked after every day applies everywhere)."""
    from celery.exceptions import SoftTimeLimitExceeded

    from algoterm.failpoints import failpoint

    from .backtest import BacktestError, BacktestSignal, backtest_execute
    from .charts import equity_chart_png

    with transaction.atomic():
        backtest = (
            Backtest.objects.select_for_update(of=("self",)).select_related("strategy").filter(pk=backtest_id).first()
        )
        if backtest is None or backtest.status != BacktestStatus.QUEUED:
            return backtest
        backtest.status = BacktestStatus.RUNNING
        backtest.started_at = timezone.now()
        backtest.save(update_fields=["status", "started_at"])
    strategy = backtest.strategy
    last_reported = [-1]
    deadline = monotonic() + settings.BACKTEST_SOFT_TIME_LIMIT_SECONDS

    def progress(done: int, total: int) -> None:
        failpoint("strategies.backtest.day")
        if monotonic() > deadline:
            raise _BacktestTimedOut
        percent = int(done * 100 / total) if total else 100
        if percent >= last_reported[0] + 2 or percent == 100:
            last_reported[0] = percent
            Backtest.objects.filter(pk=backtest.pk).update(progress=min(percent, 99))

    signals = [
        BacktestSignal(at=signal.received_at, action=signal.action, symbol=signal.symbol, quantity=signal.quantity or 0)
        for signal in strategy.signals.filter(
            status=SignalStatus.ACCEPTED, received_at__date__gte=backtest.start_date
        ).exclude(source="rule")
        if signal.action in WEBHOOK_ACTIONS and "," not in signal.symbol
    ]
    try:
        result = backtest_execute(
            definition=definition_of(strategy),
            start=backtest.start_date,
            end=backtest.end_date,
            capital=backtest.capital,
            volatility=float(backtest.volatility),
            signals=signals,
            progress=progress,
        )
        chart = equity_chart_png(result, title=f"{strategy.name}: {backtest.start_date} to {backtest.end_date}")
    except BacktestError as error:
        return _backtest_finish(backtest=backtest, status=BacktestStatus.FAILED, error=str(error))
    except (SoftTimeLimitExceeded, _BacktestTimedOut):
        logger.warning("backtest %s ran past its time limit", backtest.pk)
        return _backtest_finish(backtest=backtest, status=BacktestStatus.FAILED, error=_time_limit_message())
    except Exception:
        logger.exception("backtest %s failed", backtest.pk)
        return _backtest_finish(backtest=backtest, status=BacktestStatus.FAILED, error="The backtest failed.")
    return _backtest_finish(backtest=backtest, status=BacktestStatus.SUCCEEDED, result=result.as_json(), chart=chart)


def _backtest_finish(
    *, backtest: Backtest, status: str, error: str = "", result: dict | None = None, chart: bytes | None = None
) -> Backtest:
    backtest.status = status
    backtest.error = error[:300]
    backtest.result = result
    backtest.chart_png = chart
    backtest.progress = 100
    backtest.finished_at = timezone.now()
    with transaction.atomic():
        backtest.save(update_fields=["status", "error", "result", "chart_png", "progress", "finished_at"])
        audit_record(
            action=f"strategy.backtest_{status}",
            target=backtest,
            details={"strategy": backtest.strategy_id, **({"error": backtest.error} if error else {})},
        )
    notification_create(
        user=backtest.user,
        kind="strategy",
        title=f"Backtest of {backtest.strategy.name} {'finished' if status == BacktestStatus.SUCCEEDED else 'failed'}",
        body=error,
        level=Notification.Level.INFO if status == BacktestStatus.SUCCEEDED else Notification.Level.WARNING,
        data={"strategy_id": backtest.strategy_id, "backtest_id": backtest.pk},
    )
    return backtest


def backtests_expire(*, now: datetime | None = None) -> int:
    """Fail the backtests no worker will finish: running past the hard time limit (its worker child was killed, or
    the worker died) or queued so long that their message was lost. Each held one of its user's backtest slots."""
    now = now or timezone.now()
    grace = timedelta(seconds=60)
    running_since = now - timedelta(seconds=settings.BACKTEST_HARD_TIME_LIMIT_SECONDS) - grace
    queued_since = now - timedelta(seconds=settings.BACKTEST_QUEUED_EXPIRY_SECONDS)
    stale = Backtest.objects.filter(
        Q(status=BacktestStatus.RUNNING, started_at__lt=running_since)
        | Q(status=BacktestStatus.QUEUED, created_at__lt=queued_since)
    ).values_list("pk", flat=True)
    expired = 0
    for backtest_id in stale:
        with transaction.atomic():
            backtest = (
                Backtest.objects.select_for_update(of=("self",))
                .select_related("strategy")
                .filter(pk=backtest_id, status__in=ACTIVE_BACKTEST_STATUSES)
                .first()
            )
            if backtest is None:
                continue
            error = (
                _time_limit_message()
                if backtest.status == BacktestStatus.RUNNING
                else "The backtest waited too long for a worker and was dropped; start it again."
            )
            _backtest_finish(backtest=backtest, status=BacktestStatus.FAILED, error=error)
            expired += 1
    return expired
