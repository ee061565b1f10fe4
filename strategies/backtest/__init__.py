"""Backtests of a StrategyDefinition over stored 1-minute candles.

The clock is the first leg's underlying (its spot candles, `strategies.legs.spot_symbol`); the days are the IST
trading days between `start` and `end` on which it has candles and whose weekday the strategy trades. A webhook
strategy's clock is every signal symbol's candles (and the first leg's underlying, if it has legs) taken together.
Each day is worked on with numpy over the day's bars; Python only steps from one event (an entry, a stop, a re-entry)
to the next.

How fills are priced, so results can be checked by hand:

- Every fill is stamped with the start of the minute candle it came from, in IST.
- A time-based entry fills at the close of the first bar starting at or after `entry_time`; the forced exit at the
  close of the first bar starting at or after `exit_time` ("exit_time"), or of the day's last bar if it has none
  ("end"). The strike is chosen with the spot at the entry price's moment.
- A leg's stop-loss and target are measured from its entry price (`ExitLevel.distance`). They are checked against
  each later bar's high and low and fill at the level, or at the bar's open when it opens beyond it; a bar that
  reaches both fills the stop (nothing tells which came first). The trailing stop (points) follows the best price
  of the bars before the current one; while it is tighter than the fixed stop its exits are "trailing_stop".
- A leg stopped out re-enters the same contract at the next bar's open, up to `reentries` times a day.
- The strategy's MTM (today's closed plus open PnL of its legs) is checked at each bar's close against
  `mtm_stop_loss` and `mtm_target`; a breach closes every open leg at that close and ends the strategy's day.
- Rule strategies evaluate `entry_rule`/`exit_rule` (strategies.rules) on `rule_symbol`'s bars of
  `timeframe_minutes`, aligned to 09:15 like stored candles, over the whole range so indicators carry across days;
  `rules.rule_history` reads them, as it does for live evaluation, from enough trading sessions before `start` for
  the rules' indicators to be known on its first bar.
  A rule bar counts once it has closed: when flat, the legs enter at the open of the first 1-minute bar starting at
  or after its end (the strike from the spot there); when holding, the exit rule closes everything at that open.
- Webhook strategies replay the recorded signals as the live engine reads them: BUY and SHORT open or add at the open
  of the symbol's first bar starting at or after the signal; SELL and COVER close the long or short they name, never
  more than held; EXIT closes the signal's symbol, or everything without one. Positions net per symbol.
  The MTM limits and `exit_time` apply; the legs' stop-losses and targets do not (signals name symbols, not legs).
- Options are priced from the contract's own stored candles when it has some that day ("candles"); otherwise by
  Black-Scholes on the underlying's bars ("black_scholes") with the given volatility, `chain.risk_free_rate()` and
  time to `chain.expiry_moment`: the open priced at the bar's start, high, low and close at its end, a call's high
  at the underlying's high and a put's at its low. Futures are priced at the underlying (no basis), equity at its own
  candles. Prices are rounded to the paisa and PnL computed from the rounded prices.

By module: `execute` (checking the definition and running it), `engine` (contracts resolved and priced, time-based
and rule-based days), `webhook` (signal replay), `exits` (legs' stops, targets, re-entries and the MTM limits),
`pricing` (the clock, bars aligned to it, Black-Scholes bars, contracts), `contract_candles` (option contracts' own
candles) and `results` (what goes in and comes out, and the statistics); the 1-minute candles themselves are read
by `strategies.candles`, which rule history shares.
"""

from .execute import backtest_execute
from .results import (
    TRADING_DAYS_PER_YEAR,
    BacktestError,
    BacktestResult,
    BacktestSignal,
    BacktestTrade,
    ExitReason,
    PricedBy,
)
from .webhook import WEBHOOK_ACTIONS

__all__ = [
    "TRADING_DAYS_PER_YEAR",
    "WEBHOOK_ACTIONS",
    "BacktestError",
    "BacktestResult",
    "BacktestSignal",
    "BacktestTrade",
    "ExitReason",
    "PricedBy",
    "backtest_execute",
]
