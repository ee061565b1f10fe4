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

By module: `language` (limits, RuleError, the tree), `tokens` and `parser` (text to a checked tree), `series` (the
bars evaluated over), `indicators`, `evaluation`, and `history` (the bars a rule reads, live and in backtests).
"""

from .evaluation import rule_evaluate, rule_true_on_last_bar
from .history import RuleHistory, rule_history, rule_warm_up_start
from .language import (
    FUNCTION_NAMES,
    MAX_NESTING,
    MAX_NODES,
    MAX_PERIOD,
    MAX_TEXT_LENGTH,
    PERIOD_FUNCTIONS,
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
from .parser import rule_parse
from .series import IST, CandleSeries, candle_series

__all__ = [
    "FUNCTION_NAMES",
    "IST",
    "MAX_NESTING",
    "MAX_NODES",
    "MAX_PERIOD",
    "MAX_TEXT_LENGTH",
    "PERIOD_FUNCTIONS",
    "SERIES_NAMES",
    "Arithmetic",
    "CandleSeries",
    "Comparison",
    "Crossing",
    "Indicator",
    "Logical",
    "Negate",
    "Node",
    "Not",
    "Number",
    "Rule",
    "RuleError",
    "RuleHistory",
    "Series",
    "TimeOfDay",
    "ValueKind",
    "Vwap",
    "candle_series",
    "rule_evaluate",
    "rule_history",
    "rule_parse",
    "rule_true_on_last_bar",
    "rule_warm_up_start",
]
