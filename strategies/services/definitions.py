"""Defining strategies: the API's input, its validation, create, update, delete, the webhook secret, and the
definition the live engine and the backtester read."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import date, time
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import User
from accounts.services import audit_record
from algoterm.api.errors import InvalidState, NotFound, ValidationFailed
from algoterm.locking import rows_locked
from brokers.models import BrokerAccount
from brokers.selectors import broker_account_get
from marketdata.instruments import instrument_get
from marketdata.selectors import instrument_derivatives_exist

from ..definitions import (
    ExitLevel,
    ExitUnit,
    ExpiryChoice,
    Kind,
    LegDefinition,
    LegInstrument,
    StrategyDefinition,
    StrikeChoice,
)
from ..models import Leg, Strategy, StrategyAccount, StrategyStatus
from ..rules import RuleError, rule_parse
from .clock import IST


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
    if leg.instrument != LegInstrument.EQUITY and not instrument_derivatives_exist(underlying=leg.underlying):
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
    strategy = rows_locked(Strategy.objects.filter(user=user, pk=strategy_id)).first()
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
