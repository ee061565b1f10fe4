"""A parsed rule evaluated over a series of bars, with unknown values kept unknown."""

from __future__ import annotations

import numpy as np

from .indicators import _INDICATORS, _known_quotient, _unknown_if_infinite, _vwap
from .language import (
    Arithmetic,
    Comparison,
    Crossing,
    Indicator,
    Logical,
    Negate,
    Node,
    Not,
    Number,
    Rule,
    Series,
    TimeOfDay,
    Vwap,
)
from .series import CandleSeries


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
