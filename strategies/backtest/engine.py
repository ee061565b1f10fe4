"""The engine: a strategy's contracts resolved and priced per day, time-based and rule-based days worked through,
and the trades they make."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

import numpy as np

from marketdata.calendar import is_trading_day
from marketdata.chain import expiry_moment, risk_free_rate
from marketdata.instruments import DEMO_INDICES, DEMO_STOCKS, kite_future_tradingsymbol, kite_option_tradingsymbol
from marketdata.options import black_scholes_price
from marketdata.selectors import instrument_derivative_lot_size

from .. import legs as leg_choice
from ..candles import _SECONDS_PER_DAY, _ist_midnight, _Minutes, _minutes_load, _moment
from ..definitions import ExpiryChoice, LegDefinition, LegInstrument, StrategyDefinition, StrikeChoice
from ..rules import RuleError, rule_evaluate, rule_history, rule_parse
from .contract_candles import _ContractCandles, _PremiumQuestion, _stored_premiums
from .exits import _ForcedExit, _leg_segments, _LegExits, _mtm_breach, _Segment, _segments_cut
from .pricing import (
    _BAR_PRICES,
    _SECONDS_PER_YEAR,
    _Bars,
    _bars_aligned,
    _black_scholes_bars,
    _Clock,
    _Contract,
    _EntryPoint,
    _paise,
    _price_at,
)
from .results import BacktestError, BacktestSignal, BacktestTrade, ExitReason, PricedBy


@dataclass
class _Priced:
    contract: _Contract
    bars: _Bars
    priced_by: str


class _Backtest:
    def __init__(
        self,
        *,
        definition: StrategyDefinition,
        start: date,
        end: date,
        volatility: float,
        signals: Sequence[BacktestSignal],
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.definition = definition
        self.start, self.end = start, end
        self.volatility = volatility
        self.rate = risk_free_rate()
        self.signals = signals
        self.progress = progress
        self.contract_candles = _ContractCandles()
        self._series: dict[str, _Minutes] = {}
        self._lot_sizes: dict[tuple[str, LegInstrument], int] = {}
        self._expiries: dict[tuple[str, date], tuple[list[date], list[date]]] = {}
        self._underlying_bars: dict[tuple[str, date], _Bars] = {}
        self._modelled: dict[tuple[str, date], _Bars] = {}
        self.leg_exits = [
            _LegExits(
                stop_loss=leg.stop_loss,
                target=leg.target,
                trail=float(definition.trailing_stop) if definition.trailing_stop is not None else None,
                reentries=max(definition.reentries, 0),
            )
            for leg in definition.legs
        ]

    # data

    def minutes(self, symbol: str) -> _Minutes:
        if symbol not in self._series:
            self._series[symbol] = _minutes_load(symbol, since=self.start, until=self.end)
        return self._series[symbol]

    def no_candles(self, symbol: str) -> BacktestError:
        return BacktestError(f"no candles for {symbol} between {self.start} and {self.end}")

    def selected_days(self, minutes: Iterable[_Minutes]) -> list[date]:
        days = set()
        for series in minutes:
            days.update(series.day_slices)
        return sorted(
            day
            for day in days
            if self.start <= day <= self.end and is_trading_day(day) and day.weekday() in self.definition.weekdays
        )

    def underlying_bars(self, underlying: str, clock: _Clock) -> _Bars:
        key = (underlying, clock.day)
        if key not in self._underlying_bars:
            symbol = leg_choice.spot_symbol(underlying)
            day = self.minutes(symbol).day(clock.day)
            if day is None:
                raise BacktestError(f"no candles for {symbol} on {clock.day}")
            if len(self._underlying_bars) > 64:  # only the current day's are needed again
                self._underlying_bars.clear()
            self._underlying_bars[key] = _bars_aligned(day, clock.starts)
        return self._underlying_bars[key]

    def lot_size(self, leg: LegDefinition) -> int:
        key = (leg.underlying, leg.instrument)
        if key in self._lot_sizes:
            return self._lot_sizes[key]
        if leg.instrument == LegInstrument.EQUITY:
            size = 1
        else:
            size = instrument_derivative_lot_size(underlying=leg.underlying)
            if size is None:
                known = {index.underlying: index.lot_size for index in DEMO_INDICES} | {
                    stock.tradingsymbol: stock.lot_size for stock in DEMO_STOCKS
                }
                size = known.get(leg.underlying)
            if not size:
                raise BacktestError(f"no lot size is known for {leg.underlying}: load the instrument master")
        self._lot_sizes[key] = size
        return size

    # contracts

    def calendar_expiries(self, underlying: str, day: date) -> tuple[list[date], list[date]]:
        key = (underlying, day)
        if key not in self._expiries:
            self._expiries[key] = leg_choice.calendar_expiries(underlying=underlying, day=day)
        return self._expiries[key]

    def resolve(self, points: Sequence[_EntryPoint]) -> list[list[_Contract]]:
        """Each entry point's contracts, one per leg. Strikes chosen by premium are priced in one batch."""
        resolved: list[list[_Contract | None]] = []
        by_premium: list[tuple[int, int, Decimal, list[Decimal], _Contract]] = []  # point, leg, spot, strikes, draft
        for point_index, point in enumerate(points):
            contracts: list[_Contract | None] = []
            for leg_index, leg in enumerate(self.definition.legs):
                try:
                    contract, strikes, spot = self._contract_draft(leg_index, leg, point)
                except leg_choice.LegUnresolvable as error:
                    raise BacktestError(f"{point.clock.day}: leg {leg_index + 1}: {error}") from error
                if strikes is not None:
                    by_premium.append((point_index, leg_index, spot, strikes, contract))
                contracts.append(contract if strikes is None else None)
            resolved.append(contracts)
        if by_premium:
            self._strikes_by_premium(points, by_premium, resolved)
        return [[contract for contract in contracts if contract is not None] for contracts in resolved]

    def _contract_draft(
        self, leg_index: int, leg: LegDefinition, point: _EntryPoint
    ) -> tuple[_Contract, list[Decimal] | None, Decimal]:
        """The leg's contract at `point`; for a strike chosen by premium, a draft without it and the strikes."""
        day = point.clock.day
        quantity = leg.lots * self.lot_size(leg)
        spot = _paise(_price_at(self.underlying_bars(leg.underlying, point.clock), point))
        base = {"leg": leg_index, "instrument": leg.instrument, "underlying": leg.underlying, "side": leg.side}
        if leg.instrument == LegInstrument.EQUITY:
            return _Contract(symbol=leg_choice.spot_symbol(leg.underlying), quantity=quantity, **base), None, spot
        every, monthly = self.calendar_expiries(leg.underlying, day)
        exchange = leg_choice.derivatives_exchange(leg.underlying)
        if leg.instrument == LegInstrument.FUTURE:
            # Futures are monthly: a week choice means the month it falls in, as the live engine reads it.
            choice = {
                ExpiryChoice.CURRENT_WEEK: ExpiryChoice.CURRENT_MONTH,
                ExpiryChoice.NEXT_WEEK: ExpiryChoice.NEXT_MONTH,
            }.get(leg.expiry, leg.expiry)
            expiry = leg_choice.expiry_pick(
                choice=choice, day=day, offered=monthly, monthly=monthly, fixed=leg.expiry_date
            )
            symbol = f"{exchange}:{kite_future_tradingsymbol(underlying=leg.underlying, expiry=expiry)}"
            return _Contract(symbol=symbol, quantity=quantity, expiry=expiry, **base), None, spot
        expiry = leg_choice.expiry_pick(
            choice=leg.expiry, day=day, offered=every, monthly=monthly, fixed=leg.expiry_date
        )
        strikes = leg_choice.strike_grid(underlying=leg.underlying, spot=spot)
        if leg.strike == StrikeChoice.FIXED and leg.strike_price is not None and leg.strike_price > 0:
            strikes.append(leg.strike_price)  # any strike can be asked for by price, not only those near the money
        draft = _Contract(symbol="", quantity=quantity, expiry=expiry, is_call=leg.option_type == "CE", **base)
        if leg.strike == StrikeChoice.CLOSEST_PREMIUM:
            return draft, strikes, spot
        strike = leg_choice.strike_pick(
            choice=leg.strike, spot=spot, strikes=strikes, offset=leg.strike_offset, fixed=leg.strike_price
        )
        return self._with_strike(draft, strike, monthly), None, spot

    def _with_strike(self, draft: _Contract, strike: Decimal, monthly: list[date]) -> _Contract:
        leg = self.definition.legs[draft.leg]
        assert draft.expiry is not None
        tradingsymbol = kite_option_tradingsymbol(
            underlying=leg.underlying,
            expiry=draft.expiry,
            strike=strike,
            option_type=leg.option_type,
            monthly=draft.expiry in monthly,
        )
        symbol = f"{leg_choice.derivatives_exchange(leg.underlying)}:{tradingsymbol}"
        return _Contract(
            leg=draft.leg,
            symbol=symbol,
            instrument=draft.instrument,
            underlying=draft.underlying,
            side=draft.side,
            quantity=draft.quantity,
            expiry=draft.expiry,
            strike=float(strike),
            is_call=draft.is_call,
        )

    def _strikes_by_premium(
        self,
        points: Sequence[_EntryPoint],
        by_premium: list[tuple[int, int, Decimal, list[Decimal], _Contract]],
        resolved: list[list[_Contract | None]],
    ) -> None:
        """Premiums of every candidate strike priced like the legs: stored candles where the contract has them at
        the entry, Black-Scholes otherwise; then the strike closest to the leg's premium."""
        candidates: list[list[_Contract]] = []
        questions: list[_PremiumQuestion] = []
        for point_index, _, _, strikes, draft in by_premium:
            point = points[point_index]
            _, monthly = self.calendar_expiries(draft.underlying, point.clock.day)
            options = [self._with_strike(draft, strike, monthly) for strike in strikes]
            candidates.append(options)
            questions.append(
                _PremiumQuestion(
                    day=point.clock.day,
                    bar_start=int(point.clock.starts[point.bar]),
                    at_open=point.at_open,
                    symbols=tuple(option.symbol for option in options),
                )
            )
        stored = _stored_premiums(questions)
        for question_index, ((point_index, leg_index, spot, strikes, draft), options) in enumerate(
            zip(by_premium, candidates)
        ):
            point = points[point_index]
            assert draft.expiry is not None
            years = max(expiry_moment(expiry=draft.expiry).timestamp() - point.price_epoch, 0) / _SECONDS_PER_YEAR
            modelled = black_scholes_price(
                spot=float(spot),
                strike=np.array([float(strike) for strike in strikes]),
                years=years,
                volatility=self.volatility,
                rate=self.rate,
                is_call=draft.is_call,
            )
            premiums = {
                strike: _paise(stored.get((question_index, option.symbol), float(price)))
                for strike, option, price in zip(strikes, options, modelled)
            }
            leg = self.definition.legs[leg_index]
            try:
                strike = leg_choice.strike_pick(
                    choice=leg.strike, spot=spot, strikes=strikes, premium=leg.premium, premiums=premiums
                )
            except leg_choice.LegUnresolvable as error:
                raise BacktestError(f"{point.clock.day}: leg {leg_index + 1}: {error}") from error
            resolved[point_index][leg_index] = options[strikes.index(strike)]

    def priced(self, contract: _Contract, clock: _Clock) -> _Priced:
        if contract.instrument != LegInstrument.OPTION:
            return _Priced(contract, self.underlying_bars(contract.underlying, clock), PricedBy.CANDLES)
        stored = self.contract_candles.day(contract.symbol, clock.day)
        if stored is not None:
            return _Priced(contract, _bars_aligned(stored, clock.starts), PricedBy.CANDLES)
        self.options_model([(contract, clock)])
        return _Priced(contract, self._modelled[(contract.symbol, clock.day)], PricedBy.BLACK_SCHOLES)

    def options_model(self, wanted: Sequence[tuple[_Contract, _Clock]]) -> None:
        """Black-Scholes bars of every (option, day) in `wanted` that has no candles of its own, in one vectorised
        call over all their days end to end; `priced` reads them from here."""
        todo = {
            (contract.symbol, clock.day): (contract, clock)
            for contract, clock in wanted
            if contract.instrument == LegInstrument.OPTION
            and (contract.symbol, clock.day) not in self._modelled
            and self.contract_candles.day(contract.symbol, clock.day) is None
        }
        if not todo:
            return
        underlyings = [self.underlying_bars(contract.underlying, clock) for contract, clock in todo.values()]
        lengths = [len(clock.starts) for _, clock in todo.values()]
        strikes, expiries, calls = [], [], []
        for contract, _ in todo.values():
            assert contract.expiry is not None and contract.strike is not None
            strikes.append(contract.strike)
            expiries.append(expiry_moment(expiry=contract.expiry).timestamp())
            calls.append(contract.is_call)
        modelled = _black_scholes_bars(
            _Bars(*(np.concatenate([getattr(bars, name) for bars in underlyings]) for name in _BAR_PRICES)),
            np.concatenate([clock.starts for _, clock in todo.values()]),
            strike=np.repeat(strikes, lengths),
            expiry_epoch=np.repeat(expiries, lengths),
            is_call=np.repeat(calls, lengths),
            volatility=self.volatility,
            rate=self.rate,
        )
        ends = np.cumsum(lengths)
        for key, first, end in zip(todo, ends - lengths, ends):
            self._modelled[key] = _Bars(*(getattr(modelled, name)[first:end] for name in _BAR_PRICES))

    # a cycle: the legs entered together until all are out

    def cycle(
        self, contracts: list[_Contract], *, entry: _EntryPoint, forced: _ForcedExit, realized_before: float
    ) -> tuple[list[_Segment], list[_Priced], str | None]:
        """The legs' stays from `entry` until `forced`, cut short by the strategy's MTM limits (whose reason is
        returned when they end the day)."""
        priced = [self.priced(contract, entry.clock) for contract in contracts]
        segments: list[_Segment] = []
        for index, leg in enumerate(priced):
            segments += _leg_segments(
                leg.bars,
                contract=index,
                sign=leg.contract.sign,
                entry=entry,
                forced=forced,
                exits=self.leg_exits[leg.contract.leg],
            )
        closes = [leg.bars.close for leg in priced]
        breach = _mtm_breach(
            segments,
            closes=closes,
            signed_quantities=[leg.contract.sign * leg.contract.quantity for leg in priced],
            first=entry.bar if entry.at_open else entry.bar + 1,
            last=forced.bar - 1 if forced.at_open else forced.bar,
            realized_before=realized_before,
            stop_loss=self.definition.mtm_stop_loss,
            target=self.definition.mtm_target,
        )
        if breach is None:
            return segments, priced, None
        bar, reason = breach
        return _segments_cut(segments, bar=bar, reason=reason, closes=closes), priced, reason

    def forced_exit(self, clock: _Clock) -> _ForcedExit:
        bar = clock.first_bar_from(self.definition.exit_time)
        if bar < len(clock.starts):
            return _ForcedExit(bar, False, ExitReason.EXIT_TIME)
        return _ForcedExit(len(clock.starts) - 1, False, ExitReason.END)

    # the kinds

    def time_based(self, clocks: list[_Clock]) -> list[list[BacktestTrade]]:
        assert self.definition.entry_time is not None
        plans: list[tuple[_EntryPoint, _ForcedExit] | None] = []
        for clock in clocks:
            entry_bar = clock.first_bar_from(self.definition.entry_time)
            forced = self.forced_exit(clock)
            tradable = entry_bar < len(clock.starts) and entry_bar < forced.bar
            plans.append((_EntryPoint(clock, entry_bar, at_open=False), forced) if tradable else None)
        resolved = iter(self.resolve([plan[0] for plan in plans if plan is not None]))
        contracts_by_day = [next(resolved) if plan is not None else [] for plan in plans]
        # Every option contract's candles of its day in one query, before the days are worked through.
        self.contract_candles.prefetch(
            (contract.symbol, clock.day)
            for clock, contracts in zip(clocks, contracts_by_day)
            for contract in contracts
            if contract.instrument == LegInstrument.OPTION
        )
        self.options_model(
            [(contract, clock) for clock, contracts in zip(clocks, contracts_by_day) for contract in contracts]
        )
        days: list[list[BacktestTrade]] = []
        for index, (plan, contracts) in enumerate(zip(plans, contracts_by_day)):
            trades: list[BacktestTrade] = []
            if plan is not None:
                entry, forced = plan
                segments, priced, _ = self.cycle(contracts, entry=entry, forced=forced, realized_before=0.0)
                trades = _trades_of(segments, priced, entry.clock)
            days.append(trades)
            self.report(index + 1, len(plans))
        return days

    def rule_based(self, clocks: list[_Clock]) -> list[list[BacktestTrade]]:
        entries, exits = self.rule_moments()
        days: list[list[BacktestTrade]] = []
        for index, clock in enumerate(clocks):
            days.append(self.rule_day(clock, entries, exits))
            self.report(index + 1, len(clocks))
        return days

    def rule_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Epoch seconds at which the entry and the exit rule hold on a closed rule bar (the bar's end)."""
        definition = self.definition
        try:
            entry_rule = rule_parse(definition.entry_rule)
            exit_rule = rule_parse(definition.exit_rule) if definition.exit_rule.strip() else None
        except RuleError as error:
            raise BacktestError(f"the rule cannot be read: {error}") from error
        history = rule_history(
            symbol=definition.rule_symbol,
            timeframe_minutes=definition.timeframe_minutes,
            rules=[rule for rule in (entry_rule, exit_rule) if rule is not None],
            first_day=self.start,
            end=_ist_midnight(self.end + timedelta(days=1)),
        )
        if not len(history.series):
            raise self.no_candles(definition.rule_symbol)
        ends = history.ends
        entry_at = ends[rule_evaluate(entry_rule, history.series)]
        exit_at = ends[rule_evaluate(exit_rule, history.series)] if exit_rule is not None else ends[:0]
        return entry_at, exit_at

    def rule_day(self, clock: _Clock, entry_moments: np.ndarray, exit_moments: np.ndarray) -> list[BacktestTrade]:
        forced = self.forced_exit(clock)
        day_start = int(_ist_midnight(clock.day).timestamp())

        def bars_of(moments: np.ndarray) -> np.ndarray:
            today = moments[(moments >= day_start) & (moments < day_start + _SECONDS_PER_DAY)]
            bars = np.unique(np.searchsorted(clock.starts, today, side="left"))
            return bars[bars < len(clock.starts)]

        entry_bars, exit_bars = bars_of(entry_moments), bars_of(exit_moments)
        trades: list[BacktestTrade] = []
        realized = 0.0
        flat_from = 0
        while True:
            waiting = entry_bars[(entry_bars >= flat_from) & (entry_bars < forced.bar)]
            if not len(waiting):
                return trades
            entry = _EntryPoint(clock, int(waiting[0]), at_open=True)
            later_exits = exit_bars[(exit_bars > entry.bar) & (exit_bars <= forced.bar)]
            exit_here = _ForcedExit(int(later_exits[0]), True, ExitReason.RULE) if len(later_exits) else forced
            contracts = self.resolve([entry])[0]
            segments, priced, ended = self.cycle(contracts, entry=entry, forced=exit_here, realized_before=realized)
            trades += _trades_of(segments, priced, clock)
            if ended is not None:
                return trades
            contracts_held = [leg.contract for leg in priced]
            realized += sum(
                segment.pnl_per_unit(contracts_held[segment.contract].sign) * contracts_held[segment.contract].quantity
                for segment in segments
            )
            flat_from = max(segment.exit_bar for segment in segments) + 1

    def report(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)


def _trades_of(segments: list[_Segment], priced: list[_Priced], clock: _Clock) -> list[BacktestTrade]:
    trades = []
    for segment in segments:
        contract = priced[segment.contract].contract
        entry_price, exit_price = _paise(segment.entry_price), _paise(segment.exit_price)
        trades.append(
            BacktestTrade(
                leg=contract.leg,
                symbol=contract.symbol,
                side=contract.side,
                quantity=contract.quantity,
                entry_at=_moment(clock.starts[segment.entry_bar]),
                entry_price=entry_price,
                exit_at=_moment(clock.starts[segment.exit_bar]),
                exit_price=exit_price,
                exit_reason=segment.reason,
                pnl=(exit_price - entry_price) * contract.sign * contract.quantity,
                priced_by=priced[segment.contract].priced_by,
            )
        )
    return sorted(trades, key=lambda trade: (trade.entry_at, trade.leg, trade.exit_at))
