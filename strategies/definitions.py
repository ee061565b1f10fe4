"""What a strategy trades, as plain values: the one shape the live engine (fires, webhooks, rules) and the
backtester both read, built from the models by `strategies.services.definition_of`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, time
from decimal import Decimal
from enum import StrEnum

# What a webhook may ask for, live and in a backtest's replay of stored signals.
WEBHOOK_ACTIONS = ("BUY", "SELL", "SHORT", "COVER", "EXIT")


class Kind(StrEnum):
    TIME_BASED = "time_based"
    WEBHOOK = "webhook"
    RULE = "rule"


class LegInstrument(StrEnum):
    OPTION = "OPT"
    FUTURE = "FUT"
    EQUITY = "EQ"


class ExpiryChoice(StrEnum):
    CURRENT_WEEK = "current_week"
    NEXT_WEEK = "next_week"
    CURRENT_MONTH = "current_month"
    NEXT_MONTH = "next_month"
    FIXED = "fixed"


class StrikeChoice(StrEnum):
    ATM = "atm"  # with strike_offset: ATM +/- n strike steps (+ is a higher strike)
    CLOSEST_PREMIUM = "closest_premium"
    FIXED = "fixed"


class ExitUnit(StrEnum):
    POINTS = "points"
    PERCENT = "percent"


@dataclass(frozen=True)
class ExitLevel:
    """A stop-loss or target measured from the entry price, in price points or percent of it."""

    unit: ExitUnit
    value: Decimal

    def distance(self, entry_price: Decimal) -> Decimal:
        if self.unit == ExitUnit.PERCENT:
            return entry_price * self.value / Decimal(100)
        return self.value


@dataclass(frozen=True)
class LegDefinition:
    underlying: str  # NIFTY, BANKNIFTY, SENSEX, RELIANCE...
    instrument: LegInstrument
    side: str  # BUY | SELL
    lots: int
    option_type: str = ""  # CE | PE for options
    expiry: ExpiryChoice = ExpiryChoice.CURRENT_WEEK
    expiry_date: date | None = None  # with ExpiryChoice.FIXED
    strike: StrikeChoice = StrikeChoice.ATM
    strike_offset: int = 0
    premium: Decimal | None = None  # with StrikeChoice.CLOSEST_PREMIUM
    strike_price: Decimal | None = None  # with StrikeChoice.FIXED
    stop_loss: ExitLevel | None = None
    target: ExitLevel | None = None


@dataclass(frozen=True)
class StrategyDefinition:
    kind: Kind
    legs: tuple[LegDefinition, ...]
    exit_time: time
    entry_time: time | None = None  # time_based only
    weekdays: tuple[int, ...] = (0, 1, 2, 3, 4)  # Monday = 0
    product: str = "MIS"
    mtm_stop_loss: Decimal | None = None  # rupees of loss, positive
    mtm_target: Decimal | None = None  # rupees of profit
    reentries: int = 0  # per leg and day, after its stop-loss is hit
    trailing_stop: Decimal | None = None  # points each leg's stop-loss trails the price by
    rule_symbol: str = ""  # rule strategies: whose candles the rules read
    timeframe_minutes: int = 1
    entry_rule: str = ""
    exit_rule: str = ""
    extra: dict = field(default_factory=dict)
