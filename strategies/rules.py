"""Rule strategies' entry and exit conditions: a small declarative language over candles and indicators. The text is
read by a hand-written tokenizer and recursive-descent parser into an immutable tree of frozen dataclasses, which is
evaluated over whole numpy arrays. Nothing a user writes is ever run as Python. `rule_history` is the one way live
evaluation and backtests read the bars a rule needs.

Language (keywords and names in any case, free whitespace):

    rule       := expr                          -- must be a condition, e.g. "close > 10", not "close + 1"
    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | comparison
    comparison := sum [(">" | ">=" | "<" | "<=" | "==" | "!=" | "crosses_above" | "crosses_below") sum]
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/") unary)*
    unary      := "-" unary | primary
    primary    := NUMBER | HH:MM | series | function | "(" expr ")"
    series     := open | high | low | close | volume | time
    function   := sma(expr, n) | ema(expr, n) | rsi(n) | rsi(expr, n) | highest(expr, n) | lowest(expr, n) | vwap()

- NUMBER is a plain decimal (70, 0.5; no exponents, at most 15 digits); n is a whole number from 1 to 500.
- `time` is the time of day of the bar's close in IST; it and HH:MM literals (00:00-23:59) compare only with each
  other. Comparisons do not chain ("a < b < c" is an error); `not` binds looser than comparisons.
- `a crosses_above b` holds on bar i when a[i-1] <= b[i-1] and a[i] > b[i]; `crosses_below` mirrors it.
- sma: rolling mean. ema: alpha 2/(n+1), seeded with the sma of the first n values. rsi: Wilder's smoothing, 100
  when the average loss is 0; rsi(n) reads close. vwap: typical price (h+l+c)/3 weighted by volume, from each IST
  trading day's first bar. highest/lowest: rolling max/min.
- Values still warming up and x/0 are unknown. A comparison with an unknown side is unknown, `not` keeps it unknown,
  and/or decide when one known side suffices (false and ?, true or ?). A rule holds only where it is known true.
- Limits: 500 characters, 100 tree nodes, nesting (parentheses, calls, not, unary minus) 16 deep; only printable
  ASCII plus tab and newlines. Anything else is a RuleError carrying the 0-based character position.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import ClassVar, TypeVar
from zoneinfo import ZoneInfo

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import lfilter

from marketdata import calendar

IST = ZoneInfo("Asia/Kolkata")

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


_N = TypeVar("_N", bound=Node)


@dataclass(frozen=True)
class Rule:
    text: str
    node: Node
    lookback: int  # bars of history before the rule's value on the last bar is known


# --- Tokens ---------------------------------------------------------------------------------------------------------


class _TokenType(StrEnum):
    NUMBER = "number"
    TIME = "time"
    NAME = "name"
    OPERATOR = "operator"
    END = "end"


@dataclass(frozen=True)
class _Token:
    type: _TokenType
    text: str  # names lowercased
    position: int


_WHITESPACE = frozenset(" \t\r\n")
_TWO_CHARACTER_OPERATORS = frozenset({">=", "<=", "==", "!="})
_ONE_CHARACTER_OPERATORS = frozenset("+-*/(),<>")
_CHARACTER_HINTS = {
    "=": "use == to compare for equality",
    "!": "use != for 'not equal', or the word not",
    "&": "use the word and",
    "|": "use the word or",
    "'": "rules contain no text strings",
    '"': "rules contain no text strings",
    ":": "times of day are written HH:MM, e.g. 09:30",
}


def _is_name_start(character: str) -> bool:
    return character.isascii() and (character.isalpha() or character == "_")


def _is_name_part(character: str) -> bool:
    return character.isascii() and (character.isalnum() or character == "_")


def _is_digit(character: str) -> bool:
    return "0" <= character <= "9"


def _check_characters(text: str) -> None:
    if len(text) > MAX_TEXT_LENGTH:
        raise RuleError(f"a rule is at most {MAX_TEXT_LENGTH} characters long", MAX_TEXT_LENGTH)
    for position, character in enumerate(text):
        if character in _WHITESPACE:
            continue
        if not character.isascii():
            raise RuleError(f"character {ascii(character)} is not allowed; rules use plain ASCII", position)
        if not character.isprintable():
            raise RuleError(f"control character {ascii(character)} is not allowed", position)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    length = len(text)
    index = 0
    while index < length:
        character = text[index]
        if character in _WHITESPACE:
            index += 1
        elif _is_digit(character):
            token = _read_number_or_time(text, index)
            tokens.append(token)
            index += len(token.text)
        elif _is_name_start(character):
            end = index + 1
            while end < length and _is_name_part(text[end]):
                end += 1
            tokens.append(_Token(_TokenType.NAME, text[index:end].lower(), index))
            index = end
        elif text[index : index + 2] in _TWO_CHARACTER_OPERATORS:
            tokens.append(_Token(_TokenType.OPERATOR, text[index : index + 2], index))
            index += 2
        elif character in _ONE_CHARACTER_OPERATORS:
            tokens.append(_Token(_TokenType.OPERATOR, character, index))
            index += 1
        else:
            hint = _CHARACTER_HINTS.get(character)
            message = f"unexpected character {character!r}" + (f"; {hint}" if hint else "")
            raise RuleError(message, index)
    tokens.append(_Token(_TokenType.END, "", length))
    return tokens


def _read_number_or_time(text: str, start: int) -> _Token:
    length = len(text)
    end = start
    while end < length and _is_digit(text[end]):
        end += 1
    if end < length and text[end] == ":":
        return _read_time(text, start, end)
    if end < length and text[end] == ".":
        if end + 1 >= length or not _is_digit(text[end + 1]):
            raise RuleError("expected a digit after the decimal point", end + 1)
        end += 1
        while end < length and _is_digit(text[end]):
            end += 1
    if end < length and (_is_name_part(text[end]) or text[end] == "."):
        if text[end] in "eE":
            raise RuleError("numbers are plain decimals like 70 or 0.5; exponents are not supported", end)
        raise RuleError(f"unexpected {text[end]!r} right after a number", end)
    if end - start - text.count(".", start, end) > _MAX_NUMBER_DIGITS:
        raise RuleError(f"a number has at most {_MAX_NUMBER_DIGITS} digits", start)
    return _Token(_TokenType.NUMBER, text[start:end], start)


def _read_time(text: str, start: int, colon: int) -> _Token:
    minutes_end = colon + 1
    while minutes_end < len(text) and _is_name_part(text[minutes_end]):
        minutes_end += 1
    literal = text[start:minutes_end]
    if colon - start != 2 or minutes_end - colon != 3 or not literal[3:].isdigit():
        raise RuleError("times of day are written HH:MM, e.g. 09:30", start)
    if int(literal[:2]) > 23 or int(literal[3:]) > 59:
        raise RuleError(f"time of day {literal} is not between 00:00 and 23:59", start)
    return _Token(_TokenType.TIME, literal, start)


# --- Parsing --------------------------------------------------------------------------------------------------------


def _describe(token: _Token) -> str:
    return "the end of the rule" if token.type == _TokenType.END else repr(token.text)


def _kind_phrase(kind: ValueKind) -> str:
    return {ValueKind.NUMBER: "a number", ValueKind.TIME: "a time of day", ValueKind.CONDITION: "a condition"}[kind]


def _signature(function: str) -> str:
    if function == "vwap":
        return "vwap()"
    if function == "rsi":
        return "rsi(n) or rsi(series, n)"
    return f"{function}(series, n)"


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self._tokens = tokens
        self._index = 0
        self._node_count = 0
        self._depth = 0

    def parse(self) -> Node:
        first = self._peek()
        if first.type == _TokenType.END:
            raise RuleError("the rule is empty", 0)
        node = self._expression()
        trailing = self._peek()
        if trailing.type != _TokenType.END:
            raise RuleError(f"unexpected {_describe(trailing)} after a complete rule", trailing.position)
        if node.kind != ValueKind.CONDITION:
            raise RuleError(
                f"a rule must be a condition such as 'close > 10', but this is {_kind_phrase(node.kind)}",
                first.position,
            )
        return node

    # Token helpers

    def _peek(self, ahead: int = 0) -> _Token:
        return self._tokens[min(self._index + ahead, len(self._tokens) - 1)]

    def _advance(self) -> _Token:
        token = self._peek()
        if token.type != _TokenType.END:
            self._index += 1
        return token

    def _at(self, *texts: str) -> bool:
        token = self._peek()
        return token.type in (_TokenType.OPERATOR, _TokenType.NAME) and token.text in texts

    def _expect(self, text: str, message: str) -> _Token:
        token = self._peek()
        if token.type != _TokenType.OPERATOR or token.text != text:
            raise RuleError(f"{message}, found {_describe(token)}", token.position)
        return self._advance()

    def _made(self, node: _N, position: int) -> _N:
        self._node_count += 1
        if self._node_count > MAX_NODES:
            raise RuleError(f"the rule is too complex (more than {MAX_NODES} parts)", position)
        return node

    def _nest(self, token: _Token) -> None:
        self._depth += 1
        if self._depth > MAX_NESTING:
            raise RuleError(f"the rule nests more than {MAX_NESTING} levels deep", token.position)

    def _unnest(self) -> None:
        self._depth -= 1

    # Grammar, loosest binding first

    def _expression(self) -> Node:
        node = self._and_expression()
        while self._at("or"):
            operator = self._advance()
            node = self._logical(operator, node, self._and_expression())
        return node

    def _and_expression(self) -> Node:
        node = self._not_expression()
        while self._at("and"):
            operator = self._advance()
            node = self._logical(operator, node, self._not_expression())
        return node

    def _logical(self, operator: _Token, left: Node, right: Node) -> Node:
        for side in (left, right):
            if side.kind != ValueKind.CONDITION:
                raise RuleError(
                    f"'{operator.text}' joins conditions, but one side is {_kind_phrase(side.kind)}",
                    operator.position,
                )
        return self._made(Logical(operator.text, left, right), operator.position)

    def _not_expression(self) -> Node:
        if not self._at("not"):
            return self._comparison()
        operator = self._advance()
        self._nest(operator)
        operand = self._not_expression()
        self._unnest()
        if operand.kind != ValueKind.CONDITION:
            raise RuleError(f"'not' needs a condition, not {_kind_phrase(operand.kind)}", operator.position)
        return self._made(Not(operand), operator.position)

    def _comparison(self) -> Node:
        left = self._sum()
        if not self._at(*_COMPARISON_OPERATORS, *_CROSSING_OPERATORS):
            return left
        operator = self._advance()
        right = self._sum()
        if left.kind == ValueKind.CONDITION or right.kind == ValueKind.CONDITION:
            raise RuleError(
                f"'{operator.text}' compares numbers or times of day, not conditions; join conditions with and/or",
                operator.position,
            )
        if left.kind != right.kind:
            raise RuleError(
                f"'{operator.text}' compares {_kind_phrase(left.kind)} with {_kind_phrase(right.kind)}; "
                "compare time only with HH:MM times",
                operator.position,
            )
        if self._at(*_COMPARISON_OPERATORS, *_CROSSING_OPERATORS):
            raise RuleError("comparisons cannot be chained; join them with and", self._peek().position)
        if operator.text in _CROSSING_OPERATORS:
            node: Node = Crossing(operator.text == "crosses_above", left, right)
        else:
            node = Comparison(operator.text, left, right)
        return self._made(node, operator.position)

    def _sum(self) -> Node:
        node = self._product()
        while self._at("+", "-"):
            operator = self._advance()
            node = self._arithmetic(operator, node, self._product())
        return node

    def _product(self) -> Node:
        node = self._unary()
        while self._at("*", "/"):
            operator = self._advance()
            node = self._arithmetic(operator, node, self._unary())
        return node

    def _arithmetic(self, operator: _Token, left: Node, right: Node) -> Node:
        for side in (left, right):
            if side.kind != ValueKind.NUMBER:
                raise RuleError(
                    f"'{operator.text}' works on numbers, but one side is {_kind_phrase(side.kind)}",
                    operator.position,
                )
        return self._made(Arithmetic(operator.text, left, right), operator.position)

    def _unary(self) -> Node:
        if not self._at("-"):
            return self._primary()
        operator = self._advance()
        self._nest(operator)
        operand = self._unary()
        self._unnest()
        if operand.kind != ValueKind.NUMBER:
            raise RuleError(f"'-' negates numbers, not {_kind_phrase(operand.kind)}", operator.position)
        return self._made(Negate(operand), operator.position)

    def _primary(self) -> Node:
        token = self._peek()
        if token.type == _TokenType.NUMBER:
            self._advance()
            return self._made(Number(float(token.text)), token.position)
        if token.type == _TokenType.TIME:
            self._advance()
            minutes = int(token.text[:2]) * 60 + int(token.text[3:])
            return self._made(TimeOfDay(minutes), token.position)
        if token.type == _TokenType.OPERATOR and token.text == "(":
            self._advance()
            self._nest(token)
            node = self._expression()
            self._expect(")", f"expected ')' to close the '(' at position {token.position}")
            self._unnest()
            return node
        if token.type == _TokenType.NAME and token.text not in _KEYWORDS:
            return self._name()
        raise RuleError(f"expected a value, found {_describe(token)}", token.position)

    def _name(self) -> Node:
        token = self._advance()
        calls = self._at("(")
        if token.text in SERIES_NAMES:
            if calls:
                raise RuleError(f"'{token.text}' is a series, not a function", token.position)
            return self._made(Series(token.text), token.position)
        if token.text in FUNCTION_NAMES:
            if not calls:
                raise RuleError(f"{token.text} is a function: write {_signature(token.text)}", token.position)
            return self._call(token)
        shown = token.text if len(token.text) <= 30 else token.text[:30] + "..."
        if calls:
            raise RuleError(
                f"unknown function '{shown}'; the functions are {', '.join(FUNCTION_NAMES)}", token.position
            )
        raise RuleError(
            f"unknown name '{shown}'; the series are {', '.join(SERIES_NAMES)}, e.g. close > sma(close, 20)",
            token.position,
        )

    def _call(self, function: _Token) -> Node:
        opening = self._advance()
        self._nest(opening)
        usage = f"{function.text} takes {_signature(function.text)}"
        if function.text == "vwap":
            self._expect(")", usage)
            self._unnest()
            return self._made(Vwap(), function.position)
        closes_after_number = self._peek().type == _TokenType.NUMBER and self._peek(1).text == ")"
        if function.text == "rsi" and closes_after_number:
            source: Node = self._made(Series("close"), function.position)
        else:
            source_token = self._peek()
            source = self._expression()
            if source.kind != ValueKind.NUMBER:
                raise RuleError(
                    f"{function.text} reads a number series, not {_kind_phrase(source.kind)}", source_token.position
                )
            self._expect(",", usage)
        period = self._period()
        self._expect(")", usage)
        self._unnest()
        return self._made(Indicator(function.text, source, period), function.position)

    def _period(self) -> int:
        token = self._peek()
        if token.type != _TokenType.NUMBER or not token.text.isdigit() or not 1 <= int(token.text) <= MAX_PERIOD:
            raise RuleError(f"the period n must be a whole number from 1 to {MAX_PERIOD}", token.position)
        self._advance()
        return int(token.text)


def _bars_needed(node: Node) -> int:
    """Bars of history for `node`'s value on the last bar to be known (0 for constants)."""
    match node:
        case Number() | TimeOfDay():
            return 0
        case Series() | Vwap():
            return 1
        case Indicator(function="rsi", source=source, period=period):
            return max(_bars_needed(source), 1) + period  # n price changes take n + 1 bars
        case Indicator(source=source, period=period):
            return max(_bars_needed(source), 1) + period - 1
        case Negate(operand=operand) | Not(operand=operand):
            return _bars_needed(operand)
        case Crossing(left=left, right=right):
            return max(_bars_needed(left), _bars_needed(right), 1) + 1
        case Arithmetic(left=left, right=right) | Comparison(left=left, right=right) | Logical(left=left, right=right):
            return max(_bars_needed(left), _bars_needed(right))
    raise TypeError(f"not a rule node: {node!r}")


def rule_parse(text: str) -> Rule:
    """The rule `text` states, checked against the language's grammar, types and limits; RuleError otherwise."""
    if not isinstance(text, str):
        raise RuleError("a rule must be text")
    _check_characters(text)
    node = _Parser(_tokenize(text)).parse()
    return Rule(text=text, node=node, lookback=max(_bars_needed(node), 1))


# --- Candles --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CandleSeries:
    """Closed bars, oldest first, one array element per bar."""

    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    minute_of_day: np.ndarray  # IST minutes since midnight of the bar's close (start + timeframe)
    day: np.ndarray  # ordinal of the bar's IST trading date, for vwap's daily reset

    def __post_init__(self) -> None:
        lengths = {len(getattr(self, name)) for name in self.__dataclass_fields__}
        if len(lengths) > 1:
            raise ValueError(f"candle arrays differ in length: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.close)


def _frozen_array(values: Iterable[object] | np.ndarray, dtype: type) -> np.ndarray:
    array = np.array(values, dtype=dtype)
    array.setflags(write=False)
    return array


def candle_series(
    *,
    starts: Sequence[datetime],
    opens: Sequence[float] | np.ndarray,
    highs: Sequence[float] | np.ndarray,
    lows: Sequence[float] | np.ndarray,
    closes: Sequence[float] | np.ndarray,
    volumes: Sequence[float] | np.ndarray,
    timeframe_minutes: int = 1,
) -> CandleSeries:
    """Bars from their aware (UTC) open times and prices; times of day and trading dates are taken in IST."""
    if timeframe_minutes < 1:
        raise ValueError("timeframe_minutes must be at least 1")
    local_starts = []
    for start in starts:
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError(f"bar start {start} has no time zone")
        local_starts.append(start.astimezone(IST))
    # IST keeps one offset all year, so the close's time of day is the start's plus the timeframe, wrapped.
    minute_of_day = [(moment.hour * 60 + moment.minute + timeframe_minutes) % 1440 for moment in local_starts]
    return CandleSeries(
        open=_frozen_array(opens, np.float64),
        high=_frozen_array(highs, np.float64),
        low=_frozen_array(lows, np.float64),
        close=_frozen_array(closes, np.float64),
        volume=_frozen_array(volumes, np.float64),
        minute_of_day=_frozen_array(minute_of_day, np.int64),
        day=_frozen_array([moment.date().toordinal() for moment in local_starts], np.int64),
    )


# --- Indicators (NaN where not yet known) ---------------------------------------------------------------------------


def _rolling(values: np.ndarray, period: int, reduce: Callable[..., np.ndarray]) -> np.ndarray:
    result = np.full(len(values), np.nan)
    if period <= len(values):
        # Each window reduced on its own (not a running sum) keeps equal prices exactly equal to their mean.
        result[period - 1 :] = reduce(sliding_window_view(values, period), axis=1)
    return result


def _finite_runs(values: np.ndarray) -> list[tuple[int, int]]:
    finite = np.isfinite(values)
    if finite.all():
        return [(0, len(values))] if len(values) else []
    edges = np.flatnonzero(np.diff(np.concatenate(([False], finite, [False])).astype(np.int8)))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def _smoothed(values: np.ndarray, period: int, alpha: float) -> np.ndarray:
    """avg[i] = (1 - alpha) * avg[i-1] + alpha * values[i], seeded with the mean of the first `period` values;
    an unknown value interrupts it and it seeds afresh after the next `period` known ones."""
    result = np.full(len(values), np.nan)
    for start, stop in _finite_runs(values):
        seeded_at = start + period - 1
        if seeded_at >= stop:
            continue
        seed = values[start : seeded_at + 1].mean()
        result[seeded_at] = seed
        if seeded_at + 1 < stop:
            result[seeded_at + 1 : stop], _ = lfilter(
                [alpha], [1.0, alpha - 1.0], values[seeded_at + 1 : stop], zi=[(1.0 - alpha) * seed]
            )
    return result


def _sma(values: np.ndarray, period: int) -> np.ndarray:
    return _rolling(values, period, np.mean)


def _ema(values: np.ndarray, period: int) -> np.ndarray:
    return _smoothed(values, period, 2.0 / (period + 1))


def _rsi(values: np.ndarray, period: int) -> np.ndarray:
    changes = np.diff(values, prepend=np.nan)
    average_gain = _smoothed(np.maximum(changes, 0.0), period, 1.0 / period)
    average_loss = _smoothed(np.maximum(-changes, 0.0), period, 1.0 / period)
    rsi = 100.0 - 100.0 / (1.0 + average_gain / average_loss)
    return np.where(average_loss == 0.0, 100.0, rsi)


def _vwap(series: CandleSeries) -> np.ndarray:
    typical_volume = (series.high + series.low + series.close) / 3.0 * series.volume
    traded_value = np.cumsum(typical_volume)
    traded_volume = np.cumsum(series.volume)
    if len(series):
        first_bars = np.flatnonzero(np.concatenate(([True], series.day[1:] != series.day[:-1])))
        bars_per_day = np.diff(np.append(first_bars, len(series)))
        # The running totals up to each day's first bar, subtracted from every bar of that day.
        before_value = np.repeat(traded_value[first_bars] - typical_volume[first_bars], bars_per_day)
        before_volume = np.repeat(traded_volume[first_bars] - series.volume[first_bars], bars_per_day)
        traded_value = traded_value - before_value
        traded_volume = traded_volume - before_volume
    return _known_quotient(traded_value, traded_volume)


def _known_quotient(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return _unknown_if_infinite(numerator / denominator)


def _unknown_if_infinite(values: np.ndarray) -> np.ndarray:
    # x/0 and overflow carry no usable value; NaN makes every comparison on them unknown.
    values[np.isinf(values)] = np.nan
    return values


_INDICATORS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "sma": _sma,
    "ema": _ema,
    "rsi": _rsi,
    "highest": lambda values, period: _rolling(values, period, np.max),
    "lowest": lambda values, period: _rolling(values, period, np.min),
}


# --- Evaluation -----------------------------------------------------------------------------------------------------


class _Evaluator:
    """Values of a rule's nodes over one series. Conditions are (true, known) pairs of bool arrays; numbers are
    float arrays with NaN for unknown. Repeated subexpressions are computed once."""

    def __init__(self, series: CandleSeries) -> None:
        self._series = series
        self._numbers: dict[Node, np.ndarray] = {}
        self._conditions: dict[Node, tuple[np.ndarray, np.ndarray]] = {}

    def number(self, node: Node) -> np.ndarray:
        if node not in self._numbers:
            self._numbers[node] = self._compute_number(node)
        return self._numbers[node]

    def condition(self, node: Node) -> tuple[np.ndarray, np.ndarray]:
        if node not in self._conditions:
            self._conditions[node] = self._compute_condition(node)
        return self._conditions[node]

    def _compute_number(self, node: Node) -> np.ndarray:
        bars = len(self._series)
        match node:
            case Number(value=value):
                return np.full(bars, value)
            case TimeOfDay(minutes=minutes):
                return np.full(bars, float(minutes))
            case Series(name="time"):
                return self._series.minute_of_day.astype(np.float64)
            case Series(name=name):
                return np.asarray(getattr(self._series, name), dtype=np.float64)
            case Vwap():
                return _vwap(self._series)
            case Indicator(function=function, source=source, period=period):
                return _INDICATORS[function](self.number(source), period)
            case Negate(operand=operand):
                return -self.number(operand)
            case Arithmetic(operator="/", left=left, right=right):
                return _known_quotient(self.number(left), self.number(right))
            case Arithmetic(operator=operator, left=left, right=right):
                left_values, right_values = self.number(left), self.number(right)
                combine = {"+": np.add, "-": np.subtract, "*": np.multiply}[operator]
                return _unknown_if_infinite(combine(left_values, right_values))
        raise TypeError(f"not a number node: {node!r}")

    def _compute_condition(self, node: Node) -> tuple[np.ndarray, np.ndarray]:
        match node:
            case Comparison(operator=operator, left=left, right=right):
                left_values, right_values = self.number(left), self.number(right)
                known = ~(np.isnan(left_values) | np.isnan(right_values))
                compare = {
                    ">": np.greater,
                    ">=": np.greater_equal,
                    "<": np.less,
                    "<=": np.less_equal,
                    "==": np.equal,
                    "!=": np.not_equal,
                }[operator]
                return compare(left_values, right_values) & known, known
            case Crossing(above=above, left=left, right=right):
                return self._crossing(self.number(left), self.number(right), above=above)
            case Not(operand=operand):
                true, known = self.condition(operand)
                return ~true & known, known
            case Logical(operator="and", left=left, right=right):
                left_true, left_known = self.condition(left)
                right_true, right_known = self.condition(right)
                left_false, right_false = left_known & ~left_true, right_known & ~right_true
                return left_true & right_true, (left_known & right_known) | left_false | right_false
            case Logical(operator="or", left=left, right=right):
                left_true, left_known = self.condition(left)
                right_true, right_known = self.condition(right)
                return left_true | right_true, (left_known & right_known) | left_true | right_true
        raise TypeError(f"not a condition node: {node!r}")

    @staticmethod
    def _crossing(left: np.ndarray, right: np.ndarray, *, above: bool) -> tuple[np.ndarray, np.ndarray]:
        known = ~(np.isnan(left) | np.isnan(right))
        known[1:] &= known[:-1]
        if len(known):
            known[0] = False
        previous_left, previous_right = np.roll(left, 1), np.roll(right, 1)
        if above:
            crossed = (previous_left <= previous_right) & (left > right)
        else:
            crossed = (previous_left >= previous_right) & (left < right)
        return crossed & known, known


def rule_evaluate(rule: Rule, series: CandleSeries) -> np.ndarray:
    """Per bar, whether the rule holds there; False wherever its value is unknown (warming up, x/0)."""
    with np.errstate(all="ignore"):
        true, _known = _Evaluator(series).condition(rule.node)
    return true


def rule_true_on_last_bar(rule: Rule, series: CandleSeries) -> bool:
    if len(series) == 0:
        return False
    return bool(rule_evaluate(rule, series)[-1])


# --- History: the bars a rule reads, live and in backtests ---------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RuleHistory:
    """A symbol's closed bars for rules, oldest first: the series and, per bar, when it closed (epoch seconds)."""

    series: CandleSeries
    ends: np.ndarray

    @property
    def last_close(self) -> datetime | None:
        """When the newest bar closed, in IST; None without bars."""
        return datetime.fromtimestamp(int(self.ends[-1]), tz=IST) if len(self.ends) else None


def rule_warm_up_start(*, bars: int, timeframe_minutes: int, before: date) -> date:
    """The first IST day whose bars, with those of the trading sessions up to `before`, give at least `bars` bars of
    `timeframe_minutes`: counted in trading sessions of the market calendar, so weekends and holidays in between
    never shorten the history."""
    # Only whole bars are counted (a session holds six 60-minute bars and a short seventh), which errs long.
    per_session = max(calendar.session_minutes() // timeframe_minutes, 1)
    sessions = math.ceil(bars / per_session)
    # Spare sessions for days with fewer bars than counted: a shortened session, minutes the feed missed, or a
    # holiday the list did not know about.
    sessions += 1 + sessions // 10
    return calendar.trading_days_back(before, sessions=sessions)


def rule_history(
    *, symbol: str, timeframe_minutes: int, rules: Sequence[Rule], first_day: date, end: datetime
) -> RuleHistory:
    """`symbol`'s bars of `timeframe_minutes` (built from stored 1-minute candles, aligned to 09:15 IST like stored
    candles) that have closed by `end`, from far enough before `first_day` that every rule's value is known on
    `first_day`'s first bar (Rule.lookback bars, see `rule_warm_up_start`). Live evaluation asks with today and now,
    backtests with their first day and the end of their last, so both read the same bars the same way."""
    # The backtest's loader: one query straight into numpy arrays, and the same 09:15-aligned buckets.
    from .backtest import _aggregated, _minutes_load

    needed = max((rule.lookback for rule in rules), default=1)
    since = rule_warm_up_start(bars=needed, timeframe_minutes=timeframe_minutes, before=first_day)
    until = (end - timedelta(microseconds=1)).astimezone(IST).date()
    bars = _aggregated(_minutes_load(symbol, since=since, until=until, volume=True), timeframe_minutes)
    ends = bars.starts + timeframe_minutes * 60
    closed = ends <= end.timestamp()
    series = candle_series(
        starts=[datetime.fromtimestamp(int(start), tz=UTC) for start in bars.starts[closed]],
        opens=bars.open[closed],
        highs=bars.high[closed],
        lows=bars.low[closed],
        closes=bars.close[closed],
        volumes=bars.volume[closed],
        timeframe_minutes=timeframe_minutes,
    )
    return RuleHistory(series=series, ends=ends[closed])
