import pickle
import random
import time
import warnings
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest

from strategies.rules import (
    CandleSeries,
    Comparison,
    Logical,
    Not,
    RuleError,
    candle_series,
    rule_evaluate,
    rule_parse,
    rule_true_on_last_bar,
    rule_warm_up_start,
)

# 09:15 IST, the cash market's open.
MARKET_OPEN_UTC = datetime(2024, 3, 4, 3, 45, tzinfo=UTC)


def bars(
    closes: list[float],
    *,
    opens: list[float] | None = None,
    highs: list[float] | None = None,
    lows: list[float] | None = None,
    volumes: list[float] | None = None,
    starts: list[datetime] | None = None,
    timeframe_minutes: int = 1,
) -> CandleSeries:
    count = len(closes)
    return candle_series(
        starts=starts or [MARKET_OPEN_UTC + timedelta(minutes=timeframe_minutes * index) for index in range(count)],
        opens=opens or closes,
        highs=highs or [close + 1 for close in closes],
        lows=lows or [close - 1 for close in closes],
        closes=closes,
        volumes=volumes or [100.0] * count,
        timeframe_minutes=timeframe_minutes,
    )


def bars_where(text: str, series: CandleSeries) -> list[int]:
    return np.flatnonzero(rule_evaluate(rule_parse(text), series)).tolist()


def assert_values(expression: str, series: CandleSeries, expected: list[float | None]) -> None:
    """`expression` on each bar is `expected` (None: not yet known), read through rules alone."""
    known = rule_evaluate(rule_parse(f"{expression} == {expression}"), series)
    assert known.tolist() == [value is not None for value in expected]
    for index, value in enumerate(expected):
        if value is None:
            continue
        near = f"{expression} > {value - 1e-6:.7f} and {expression} < {value + 1e-6:.7f}"
        assert rule_evaluate(rule_parse(near), series)[index], f"{expression} on bar {index} is not {value}"


def refusal(text: str) -> RuleError:
    with pytest.raises(RuleError) as caught:
        rule_parse(text)
    return caught.value


# --- Indicators -----------------------------------------------------------------------------------------------------


def test_sma_is_the_rolling_mean_once_n_bars_exist():
    series = bars([2, 4, 6, 8, 4, 2])

    assert_values("sma(close, 3)", series, [None, None, 4, 6, 6, 14 / 3])
    assert_values("sma(close, 1)", series, [2, 4, 6, 8, 4, 2])
    assert bars_where("sma(close, 7) > 0", series) == []


def test_ema_is_seeded_with_the_sma_then_smoothed_by_two_over_n_plus_one():
    series = bars([2, 4, 6, 8, 4, 2])

    # alpha = 0.5: seed (2+4+6)/3 = 4, then 4/2+8/2 = 6, 6/2+4/2 = 5, 5/2+2/2 = 3.5
    assert_values("ema(close, 3)", series, [None, None, 4, 6, 5, 3.5])


def test_rsi_uses_wilders_smoothing():
    series = bars([10, 11, 10.5, 11.5, 12, 11])

    # Changes +1 -0.5 +1 +0.5 -1. First averages: gain 2/3, loss 1/6, RS 4 -> 80. Then gain (2/3*2+0.5)/3 = 11/18,
    # loss (1/6*2)/3 = 1/9, RS 5.5 -> 100-100/6.5. Then gain 11/27, loss 11/27, RS 1 -> 50.
    assert_values("rsi(3)", series, [None, None, None, 80, 100 - 100 / 6.5, 50])
    assert_values("rsi(close, 3)", series, [None, None, None, 80, 100 - 100 / 6.5, 50])


def test_rsi_is_100_when_prices_never_fall():
    assert_values("rsi(2)", bars([5, 6, 7, 7]), [None, None, 100, 100])


def test_indicators_compose_and_highest_lowest_roll():
    series = bars([2, 4, 6, 8, 4, 2])

    # sma(close,3) is [-, -, 4, 6, 6, 14/3]; its own 2-bar mean starts a bar later.
    assert_values("sma(sma(close, 3), 2)", series, [None, None, None, 5, 6, 16 / 3])
    assert_values("highest(close, 3)", series, [None, None, 6, 8, 8, 8])
    assert_values("lowest(close, 3)", series, [None, None, 2, 4, 4, 2])
    assert_values("ema(close - 2, 3) + 2", series, [None, None, 4, 6, 5, 3.5])


def test_vwap_weights_typical_price_by_volume_and_restarts_each_ist_day():
    day_one = datetime(2024, 3, 4, 9, 0, tzinfo=UTC)  # 14:30 IST
    # 19:00 UTC on 4 March is 00:30 IST on 5 March: a new trading date though the UTC date is the same.
    day_two = datetime(2024, 3, 4, 19, 0, tzinfo=UTC)
    series = bars(
        [10, 12, 20, 21],
        highs=[11, 13, 21, 24],
        lows=[9, 11, 19, 18],
        volumes=[100, 300, 50, 50],
        starts=[day_one, day_one + timedelta(minutes=1), day_two, day_two + timedelta(minutes=1)],
    )

    # Typical prices 10, 12 | 20, 21: (1000 + 3600) / 400 = 11.5, then afresh 20 and (1000 + 1050) / 100.
    assert_values("vwap()", series, [10, 11.5, 20, 20.5])


def test_vwap_is_unknown_until_the_day_trades_volume():
    series = bars([10, 12, 14], volumes=[0, 0, 50])

    assert_values("vwap()", series, [None, None, 14])


# --- Conditions -----------------------------------------------------------------------------------------------------


def test_crosses_fire_only_on_the_bar_of_the_cross():
    series = bars([9, 10, 11, 12, 9, 11, 10, 10, 11])

    # Touching 10 (bar 1) is not crossing above it; 11 -> 10 (bar 6) is not crossing below it.
    assert bars_where("close crosses_above 10", series) == [2, 5, 8]
    assert bars_where("close crosses_below 10", series) == [4]


def test_crossing_of_two_moving_series():
    series = bars([5, 5, 5, 8, 2, 2], opens=[6, 6, 6, 6, 6, 1])

    assert bars_where("close crosses_above open", series) == [3, 5]
    assert bars_where("close crosses_below open", series) == [4]
    # sma(close, 2) is [-, 5, 5, 6.5, 5, 2].
    assert bars_where("sma(close, 2) crosses_above 5.5", series) == [3]
    assert bars_where("sma(close, 2) crosses_below 5.5", series) == [4]


def test_time_is_the_ist_close_time_of_each_bar():
    # Bars open at 09:15, 09:20, ... IST and close five minutes later.
    series = bars([1, 2, 3, 4], timeframe_minutes=5)

    assert series.minute_of_day.tolist() == [9 * 60 + 20, 9 * 60 + 25, 9 * 60 + 30, 9 * 60 + 35]
    assert bars_where("time >= 09:30", series) == [2, 3]
    assert bars_where("time == 09:25 or time > 09:30", series) == [1, 3]
    assert bars_where("time crosses_above 09:27", series) == [2]


def test_candle_series_dates_bars_by_their_ist_start():
    last_minute = datetime(2024, 3, 4, 18, 29, tzinfo=UTC)  # 23:59 IST on 4 March, closing at midnight
    series = candle_series(
        starts=[last_minute, last_minute + timedelta(minutes=1)],
        opens=[1, 1],
        highs=[1, 1],
        lows=[1, 1],
        closes=[1, 1],
        volumes=[1, 1],
    )

    assert series.minute_of_day.tolist() == [0, 1]
    assert series.day.tolist() == [datetime(2024, 3, 4).toordinal(), datetime(2024, 3, 5).toordinal()]


def test_candle_series_refuses_naive_times_and_ragged_arrays():
    with pytest.raises(ValueError, match="time zone"):
        candle_series(starts=[datetime(2024, 3, 4, 9, 15)], opens=[1], highs=[1], lows=[1], closes=[1], volumes=[1])
    with pytest.raises(ValueError, match="differ in length"):
        candle_series(starts=[MARKET_OPEN_UTC], opens=[1, 2], highs=[1], lows=[1], closes=[1], volumes=[1])


def test_not_binds_tightest_then_and_then_or():
    # Eight bars walk every combination of a (close > 1), b (open > 1) and c (volume > 1).
    combinations = [(a, b, c) for a in (0, 2) for b in (0, 2) for c in (0, 2)]
    series = bars(
        [a for a, _, _ in combinations],
        opens=[b for _, b, _ in combinations],
        volumes=[c for _, _, c in combinations],
    )
    expected = [index for index, (a, b, c) in enumerate(combinations) if (not a and b) or c]

    assert bars_where("not close > 1 and open > 1 or volume > 1", series) == expected
    assert bars_where("((not close > 1) and open > 1) or volume > 1", series) == expected
    assert bars_where("not (close > 1 and open > 1 or volume > 1)", series) != expected
    assert rule_parse("not close > 1 and open > 1 or volume > 1").node == Logical(
        "or",
        Logical("and", Not(rule_parse("close > 1").node), rule_parse("open > 1").node),
        rule_parse("volume > 1").node,
    )


def test_arithmetic_precedence():
    series = bars([2, 3])

    assert bars_where("close + 2 * 3 == 8", series) == [0]
    assert bars_where("(close + 2) * 3 == 15", series) == [1]
    assert bars_where("-close + 10 - 4 / 2 == 6", series) == [0]
    assert bars_where("close - 1 - 1 == 0", series) == [0]


def test_keywords_and_names_ignore_case():
    series = bars([2, 4, 6, 8, 4, 2])
    lower = rule_parse("ema(close, 3) > sma(close, 3) and time >= 09:17 or not rsi(2) < 50")
    shouted = rule_parse("EMA(Close, 3) > SMA(CLOSE,3) AND Time >= 09:17 Or NoT RSI(2) < 50")

    assert shouted.node == lower.node
    assert shouted.text == "EMA(Close, 3) > SMA(CLOSE,3) AND Time >= 09:17 Or NoT RSI(2) < 50"
    assert rule_evaluate(shouted, series).tolist() == rule_evaluate(lower, series).tolist()
    assert rule_evaluate(lower, series).any()


def test_division_by_zero_is_unknown_not_an_error():
    series = bars([5, 5, 5], highs=[6, 5, 6], lows=[4, 5, 4])

    assert bars_where("close / (high - low) > 0", series) == [0, 2]
    # Unknown stays unknown under not and !=, so neither holds on the flat bar.
    assert bars_where("not close / (high - low) > 0", series) == []
    assert bars_where("close / 0 != 1", series) == []


def test_unknown_sides_follow_three_valued_logic():
    series = bars([5, 1, 6, 7])

    # sma(close, 3) is unknown on bars 0 and 1: "or" still holds where close > 4, "and" never does there.
    assert bars_where("close > 4 or sma(close, 3) > 100", series) == [0, 2, 3]
    assert bars_where("close > 4 and sma(close, 3) > 1", series) == [2, 3]
    assert bars_where("not (close > 4 and sma(close, 3) > 100)", series) == [1, 2, 3]
    assert bars_where("not (close > 4 or sma(close, 3) > 1)", series) == []


def test_lookback_covers_the_longest_period_and_crosses():
    assert rule_parse("close > 10").lookback == 1
    assert rule_parse("ema(close, 9) crosses_above ema(close, 21)").lookback == 22
    assert rule_parse("rsi(14) < 70").lookback == 15  # 14 price changes take 15 bars
    assert rule_parse("sma(ema(close, 9), 5) > close").lookback == 13
    assert rule_parse("vwap() > close and time >= 09:30").lookback == 1


def test_lookback_bars_are_exactly_enough_for_the_last_bar():
    rule = rule_parse("sma(ema(close, 3), 2) crosses_above rsi(2)")
    rising_then_falling = [50, 40, 30, 20, 35, 60, 80, 100]

    known = rule_parse("sma(ema(close, 3), 2) == sma(ema(close, 3), 2) and rsi(2) == rsi(2)")
    first_known = np.flatnonzero(rule_evaluate(known, bars(rising_then_falling)))[0]
    assert first_known + 2 == rule.lookback  # the cross needs the bar before, too


def test_short_and_empty_series_are_simply_false():
    rule = rule_parse("sma(close, 500) > 0")

    assert rule_evaluate(rule, bars([1, 2, 3])).tolist() == [False, False, False]
    assert rule_evaluate(rule, bars([])).tolist() == []
    assert rule_true_on_last_bar(rule, bars([])) is False


def test_true_on_last_bar():
    series = bars([9, 10, 11])

    assert rule_true_on_last_bar(rule_parse("close crosses_above 10"), series) is True
    assert rule_true_on_last_bar(rule_parse("close crosses_below 10"), series) is False


def test_evaluating_100k_bars_is_fast():
    count = 100_000
    closes = 20_000 + np.cumsum(np.random.default_rng(7).normal(0, 5, count))
    series = CandleSeries(
        open=closes,
        high=closes + 3,
        low=closes - 3,
        close=closes,
        volume=np.full(count, 100.0),
        minute_of_day=np.tile(np.arange(556, 931), count // 375 + 1)[:count],
        day=np.repeat(np.arange(count // 375 + 1), 375)[:count],
    )
    rule = rule_parse("ema(close,9) crosses_above ema(close,21) and rsi(14) < 70 and time >= 09:30")

    fastest = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        signals = rule_evaluate(rule, series)
        fastest = min(fastest, time.perf_counter() - started)

    assert fastest < 0.1
    assert signals.dtype == np.bool_ and len(signals) == count
    assert 0 < signals.sum() < count / 20


# --- Refusals -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "position", "says"),
    [
        ("__import__('os').system('x')", 11, "unexpected character"),
        ("close.__class__", 5, "unexpected character '.'"),
        ("close > 1; drop table", 9, "unexpected character ';'"),
        ("lambda: close", 6, "unexpected character ':'"),
        ("lambda > 1", 0, "unknown name 'lambda'"),
        ('close > "10"', 8, "no text strings"),
        ("'close > 1'", 0, "no text strings"),
        ("close > 1 && open > 1", 10, "use the word and"),
        ("close = 1", 6, "use =="),
        ("foo > 1", 0, "unknown name 'foo'"),
        ("eval(close) > 1", 0, "unknown function 'eval'"),
        ("close() > 1", 0, "not a function"),
        ("sma > 1", 0, "sma(series, n)"),
        ("sma(close) > 1", 9, "sma takes sma(series, n)"),
        ("sma(close, 5, 6) > 1", 12, "sma takes sma(series, n)"),
        ("vwap(close) > 1", 5, "vwap takes vwap()"),
        ("rsi(close) > 1", 9, "rsi(n) or rsi(series, n)"),
        ("sma(close, 100000) > 1", 11, "from 1 to 500"),
        ("sma(close, 0) > 1", 11, "from 1 to 500"),
        ("sma(close, 2.5) > 1", 11, "from 1 to 500"),
        ("sma(close, -5) > 1", 11, "from 1 to 500"),
        ("ema(close, high) > 1", 11, "from 1 to 500"),
        ("sma(close > 1, 5) > 1", 4, "reads a number series, not a condition"),
        ("close + 1", 0, "must be a condition"),
        ("09:30", 0, "must be a condition"),
        ("close > 1 and 2", 10, "'and' joins conditions"),
        ("not close", 0, "'not' needs a condition"),
        ("(close > 1) + 1 > 0", 12, "'+' works on numbers"),
        ("(close > 1) > (open > 1)", 12, "not conditions"),
        ("close > 09:30", 6, "compares a number with a time of day"),
        ("time - 09:15 > 30", 5, "'-' works on numbers"),
        ("close > open > low", 13, "cannot be chained"),
        ("close > 1 close", 10, "after a complete rule"),
        ("close > 1)", 9, "after a complete rule"),
        ("((close > 1)", 12, "expected ')' to close the '(' at position 0"),
        ("close >", 7, "found the end of the rule"),
        ("close > and", 8, "expected a value, found 'and'"),
        ("", 0, "empty"),
        ("   \n ", 0, "empty"),
        ("close > 1e3", 9, "exponents"),
        ("close > 1.", 10, "digit after the decimal point"),
        ("close > 5close", 9, "right after a number"),
        ("close > 1234567890123456", 8, "at most 15 digits"),
        ("time > 24:00", 7, "between 00:00 and 23:59"),
        ("time > 09:60", 7, "between 00:00 and 23:59"),
        ("time > 9:30", 7, "HH:MM"),
        ("time > 09:3", 7, "HH:MM"),
        ("time > 09:300", 7, "HH:MM"),
        ("close > 1\x00", 9, "control character"),
        ("close > 1\x1b[2J", 9, "control character"),
        ("cl\u00f6se > 1", 2, "plain ASCII"),
        ("close > 1\u202e", 9, "plain ASCII"),
        ("close\uff1e1", 5, "plain ASCII"),
    ],
)
def test_refusals_name_the_problem_and_its_position(text: str, position: int, says: str):
    error = refusal(text)

    assert error.position == position
    assert says in error.message
    assert str(error) == f"{error.message} (at position {position})"


def test_length_is_limited_before_anything_else():
    error = refusal("1" * 10_000)

    assert error.position == 500
    assert "at most 500 characters" in error.message
    assert rule_parse("close > " + "1" * 10 + " " * 482).lookback == 1  # 500 exactly is fine


def test_nesting_is_limited_to_16():
    sixteen = "(" * 16 + "close > 1" + ")" * 16
    assert bars_where(sixteen, bars([0, 2])) == [1]

    assert refusal("(" * 17 + "close > 1" + ")" * 17).position == 16
    assert refusal("not " * 17 + "close > 1").position == 64
    assert refusal("close > " + "-" * 17 + "1").position == 24
    error = refusal("sma(" * 17 + "close" + ", 2)" * 17 + " > 1")
    assert error.position == 67  # the 17th call's parenthesis
    assert "more than 16 levels" in error.message


def test_node_count_is_limited_to_100():
    # close, >, 1 and its minus are four nodes; every "+ 1" adds two.
    assert rule_parse("close > -1" + " + 1" * 48).lookback == 1
    error = refusal("close > --1" + " + 1" * 48)

    assert "too complex" in error.message
    assert error.position == 6  # the comparison, made last, is the 101st
    assert refusal("close > 1" + " + 1" * 60).position == len("close > 1" + " + 1" * 49) + 3


def test_hostile_input_is_refused_quickly():
    hostile = [
        "1" * 10_000,
        "(" * 1000 + "close" + ")" * 1000 + " > 1",
        "(" * 490,
        "not " * 120 + "close > 1",
        "-" * 490 + "1 > 0",
        "close > " + "+".join(["1"] * 240),
        "sma(" * 100,
        "a" * 499,
        "x" * 10_000_000,
    ]
    for text in hostile:
        started = time.perf_counter()
        with pytest.raises(RuleError):
            rule_parse(text)
        assert time.perf_counter() - started < 0.05, text[:20]


def test_non_text_is_a_rule_error():
    with pytest.raises(RuleError):
        rule_parse(None)  # type: ignore[arg-type]


def random_number(generator: random.Random, depth: int) -> str:
    if depth == 0:
        return generator.choice(["close", "open", "high", "low", "volume", "0", "3", "2.5", "vwap()"])
    inner = random_number(generator, depth - 1)
    period = generator.choice(["1", "2", "3", "14"])
    return generator.choice(
        [
            f"sma({inner}, {period})",
            f"ema({inner}, {period})",
            f"rsi({inner}, {period})",
            f"rsi({period})",
            f"highest({inner}, {period})",
            f"lowest({inner}, {period})",
            f"-{inner}",
            f"({inner})",
            f"{inner} {generator.choice('+-*/')} {random_number(generator, depth - 1)}",
        ]
    )


def random_condition(generator: random.Random, depth: int) -> str:
    numbers = random_number(generator, depth), random_number(generator, depth)
    comparisons = [">", ">=", "<", "<=", "==", "!=", "crosses_above", "crosses_below"]
    if depth == 0:
        return generator.choice([f"{numbers[0]} {generator.choice(comparisons)} {numbers[1]}", "time >= 09:17"])
    return generator.choice(
        [
            f"{numbers[0]} {generator.choice(comparisons)} {numbers[1]}",
            f"not {random_condition(generator, depth - 1)}",
            f"({random_condition(generator, depth - 1)})",
            f"{random_condition(generator, depth - 1)} and {random_condition(generator, depth - 1)}",
            f"{random_condition(generator, depth - 1)} or {random_condition(generator, depth - 1)}",
        ]
    )


def test_random_rules_and_their_mutations_only_ever_parse_or_raise_rule_error():
    debris = ["(", ")", ",", "+", "*", ">", "and", "not", "09:30", "'", ".", "__class__", ";", "=", "sma(", "7e1"]
    generator = random.Random(20240304)
    series = bars([10, 12, 11, 13, 9, 8, 12, 15, 14, 0], highs=[11, 12, 12, 14, 10, 8, 13, 16, 15, 0])
    accepted = mutants_refused = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's divide/overflow warnings must not leak either
        for _ in range(1500):
            valid = random_condition(generator, generator.randint(0, 3))
            words = valid.split(" ")
            cut = generator.randrange(len(words))
            mutant = " ".join(words[:cut] + [generator.choice(debris)] + words[cut + generator.randint(0, 1) :])
            for text in (valid, mutant):
                try:
                    rule = rule_parse(text)
                except RuleError as error:
                    assert error.position is not None and 0 <= error.position <= len(text)
                    if text is valid:
                        assert any(limit in error.message for limit in ("500 characters", "too complex", "16 levels"))
                    else:
                        mutants_refused += 1
                    continue
                accepted += 1
                result = rule_evaluate(rule, series)
                assert result.dtype == np.bool_ and len(result) == len(series)
    assert accepted > 1000
    assert mutants_refused > 500


def test_rule_error_is_a_value_error_that_survives_pickling():
    error = refusal("close > 1;")
    restored = pickle.loads(pickle.dumps(error))

    assert isinstance(error, ValueError)
    assert (restored.message, restored.position, str(restored)) == (error.message, 9, str(error))


def test_rules_and_series_are_immutable():
    rule = rule_parse("close > 1")
    series = bars([1, 2])

    with pytest.raises(AttributeError):
        rule.text = "open > 1"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        rule.node.operator = "<"  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        series.close[0] = 5
    assert isinstance(rule.node, Comparison)


# --- warm-up window ----------------------------------------------------------------------------------------------


def trading_days_from(first: date, before: date) -> int:
    from marketdata import calendar

    return sum(calendar.is_trading_day(first + timedelta(days=n)) for n in range((before - first).days))


@pytest.mark.django_db  # the calendar reads the configured holidays and session times
def test_the_warm_up_is_counted_in_trading_sessions_not_calendar_days():
    # ema(close, 200) on 60-minute bars: 6 whole bars a 375-minute session -> 34 sessions, plus 1 + 3 spare = 38.
    # Before Thursday 16 April 2026 they run back over 8 weekends and five holidays (Holi on 3 March, 26 and 31
    # March, 3 and 14 April): Monday 16 February, 59 calendar days back.
    first = rule_warm_up_start(bars=200, timeframe_minutes=60, before=date(2026, 4, 16))

    assert trading_days_from(first, date(2026, 4, 16)) == 38
    assert first == date(2026, 2, 16)


@pytest.mark.django_db
def test_a_short_rule_on_minute_bars_needs_the_session_before_only():
    # 30 one-minute bars: 1 session, plus 1 spare; from a Monday that reaches back over the weekend.
    assert rule_warm_up_start(bars=30, timeframe_minutes=1, before=date(2026, 4, 20)) == date(2026, 4, 16)
