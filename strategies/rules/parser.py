"""The recursive-descent parser: tokens into a checked tree (grammar, types, limits), and the history it needs
(`Rule.lookback`)."""

from __future__ import annotations

from typing import TypeVar

from .language import (
    _COMPARISON_OPERATORS,
    _CROSSING_OPERATORS,
    _KEYWORDS,
    FUNCTION_NAMES,
    MAX_NESTING,
    MAX_NODES,
    MAX_PERIOD,
    SERIES_NAMES,
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
    RuleError,
    Series,
    TimeOfDay,
    ValueKind,
    Vwap,
)
from .tokens import _check_characters, _Token, _tokenize, _TokenType

_N = TypeVar("_N", bound=Node)


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
