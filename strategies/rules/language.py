"""The rule language's vocabulary: its limits, its error, and the immutable tree a parsed rule is."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

MAX_TEXT_LENGTH = 500
MAX_NODES = 100
MAX_NESTING = 16
MAX_PERIOD = 500
_MAX_NUMBER_DIGITS = 15


class RuleError(ValueError):
    """The rule text is not a valid rule; `position` is the 0-based character index of the problem, if any."""

    def __init__(self, message: str, position: int | None = None) -> None:
        # Both in args, so the error pickles back to the same message and position.
        super().__init__(message, position)
        self.message = message
        self.position = position

    def __str__(self) -> str:
        if self.position is None:
            return self.message
        return f"{self.message} (at position {self.position})"


# --- The tree -------------------------------------------------------------------------------------------------------


class ValueKind(StrEnum):
    NUMBER = "number"
    TIME = "time of day"
    CONDITION = "condition (true/false)"


SERIES_NAMES = ("open", "high", "low", "close", "volume", "time")
# Functions reading a source expression and a period; vwap takes neither.
PERIOD_FUNCTIONS = ("sma", "ema", "rsi", "highest", "lowest")
FUNCTION_NAMES = (*PERIOD_FUNCTIONS, "vwap")
_COMPARISON_OPERATORS = (">", ">=", "<", "<=", "==", "!=")
_CROSSING_OPERATORS = ("crosses_above", "crosses_below")
_KEYWORDS = frozenset({"and", "or", "not", *_CROSSING_OPERATORS})


@dataclass(frozen=True)
class Node:
    kind: ClassVar[ValueKind]  # what the node evaluates to, for the parser's type checks


@dataclass(frozen=True)
class Number(Node):
    value: float

    kind: ClassVar[ValueKind] = ValueKind.NUMBER


@dataclass(frozen=True)
class TimeOfDay(Node):
    minutes: int  # since midnight

    kind: ClassVar[ValueKind] = ValueKind.TIME


@dataclass(frozen=True)
class Series(Node):
    name: str  # one of SERIES_NAMES

    @property
    def kind(self) -> ValueKind:
        return ValueKind.TIME if self.name == "time" else ValueKind.NUMBER


@dataclass(frozen=True)
class Indicator(Node):
    function: str  # one of PERIOD_FUNCTIONS
    source: Node
    period: int

    kind: ClassVar[ValueKind] = ValueKind.NUMBER


@dataclass(frozen=True)
class Vwap(Node):
    kind: ClassVar[ValueKind] = ValueKind.NUMBER


@dataclass(frozen=True)
class Negate(Node):
    operand: Node

    kind: ClassVar[ValueKind] = ValueKind.NUMBER


@dataclass(frozen=True)
class Arithmetic(Node):
    operator: str  # + - * /
    left: Node
    right: Node

    kind: ClassVar[ValueKind] = ValueKind.NUMBER


@dataclass(frozen=True)
class Comparison(Node):
    operator: str  # one of _COMPARISON_OPERATORS
    left: Node
    right: Node

    kind: ClassVar[ValueKind] = ValueKind.CONDITION


@dataclass(frozen=True)
class Crossing(Node):
    above: bool  # crosses_above, else crosses_below
    left: Node
    right: Node

    kind: ClassVar[ValueKind] = ValueKind.CONDITION


@dataclass(frozen=True)
class Not(Node):
    operand: Node

    kind: ClassVar[ValueKind] = ValueKind.CONDITION


@dataclass(frozen=True)
class Logical(Node):
    operator: str  # and | or
    left: Node
    right: Node

    kind: ClassVar[ValueKind] = ValueKind.CONDITION


@dataclass(frozen=True)
class Rule:
    text: str
    node: Node
    lookback: int  # bars of history before the rule's value on the last bar is known
