"""A leg's stays in the market: its stop-loss, target and trailing stop searched over whole days of bars, re-entries
after stops, and the strategy's MTM limits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from ..definitions import ExitLevel
from .pricing import _Bars, _EntryPoint
from .results import ExitReason

# A price that reaches a level exactly touches it, whatever the binary rounding of the two floats.
_TOUCH = 1e-7

_STOPS = (ExitReason.STOP_LOSS, ExitReason.TRAILING_STOP)


@dataclass(frozen=True)
class _LegExits:
    stop_loss: ExitLevel | None
    target: ExitLevel | None
    trail: float | None
    reentries: int


@dataclass
class _Segment:
    """One stay of a contract in the market: from its entry fill to its exit fill, bars counted on the clock."""

    contract: int  # index into the cycle's contracts
    entry_bar: int
    entry_price: float
    exit_bar: int
    exit_price: float
    reason: str

    def pnl_per_unit(self, sign: int) -> float:
        return sign * (self.exit_price - self.entry_price)


@dataclass(frozen=True)
class _ForcedExit:
    bar: int
    at_open: bool
    reason: str


def _first_exit(
    bars: _Bars, *, sign: int, entry_price: float, first: int, last: int, exits: _LegExits
) -> tuple[int, float, str] | None:
    """The first of bars first..last where the leg's stop or target fills: (bar, price, reason), or None."""
    if exits.stop_loss is None and exits.target is None and exits.trail is None:
        return None
    window = slice(first, last + 1)
    adverse, favourable = (bars.low[window], bars.high[window]) if sign > 0 else (bars.high[window], bars.low[window])
    # Everything in PnL per unit, so one code path serves long and short legs.
    adverse_pnl = sign * (adverse - entry_price)
    favourable_pnl = sign * (favourable - entry_price)
    entry_decimal = Decimal(repr(entry_price))
    fixed_stop = -float(exits.stop_loss.distance(entry_decimal)) if exits.stop_loss is not None else None
    stop: np.ndarray | float | None = fixed_stop
    if exits.trail is not None:
        best_before = np.maximum.accumulate(np.concatenate(([0.0], favourable_pnl[:-1])))
        trailing = best_before - exits.trail
        stop = trailing if fixed_stop is None else np.maximum(trailing, fixed_stop)
    target = float(exits.target.distance(entry_decimal)) if exits.target is not None else None
    hit = np.zeros(len(adverse_pnl), dtype=bool)
    if stop is not None:
        hit |= adverse_pnl <= stop + _TOUCH
    if target is not None:
        hit |= favourable_pnl >= target - _TOUCH
    if not hit.any():
        return None
    index = int(np.argmax(hit))
    bar = first + index
    open_pnl = sign * (float(bars.open[bar]) - entry_price)
    stop_here = None if stop is None else float(stop[index] if isinstance(stop, np.ndarray) else stop)
    if target is not None and open_pnl >= target - _TOUCH:
        return bar, round(entry_price + sign * open_pnl, 2), ExitReason.TARGET
    if stop_here is not None and adverse_pnl[index] <= stop_here + _TOUCH:
        trailed = exits.trail is not None and (fixed_stop is None or stop_here > fixed_stop + _TOUCH)
        reason = ExitReason.TRAILING_STOP if trailed else ExitReason.STOP_LOSS
        filled_pnl = min(stop_here, open_pnl)
        return bar, round(entry_price + sign * filled_pnl, 2), reason
    assert target is not None
    return bar, round(entry_price + sign * target, 2), ExitReason.TARGET


def _leg_segments(
    bars: _Bars, *, contract: int, sign: int, entry: _EntryPoint, forced: _ForcedExit, exits: _LegExits
) -> list[_Segment]:
    """The leg's stays from `entry` to `forced`, re-entering after stops while re-entries last."""
    segments: list[_Segment] = []
    reentries_left = exits.reentries
    bar, at_open = entry.bar, entry.at_open
    last_check = forced.bar - 1 if forced.at_open else forced.bar
    while True:
        entry_price = round(float(bars.open[bar] if at_open else bars.close[bar]), 2)
        first_check = bar if at_open else bar + 1
        hit = None
        if first_check <= last_check:
            hit = _first_exit(bars, sign=sign, entry_price=entry_price, first=first_check, last=last_check, exits=exits)
        if hit is None:
            exit_price = round(float(bars.open[forced.bar] if forced.at_open else bars.close[forced.bar]), 2)
            segments.append(_Segment(contract, bar, entry_price, forced.bar, exit_price, forced.reason))
            return segments
        exit_bar, exit_price, reason = hit
        segments.append(_Segment(contract, bar, entry_price, exit_bar, exit_price, reason))
        if reason not in _STOPS or reentries_left == 0 or exit_bar + 1 >= forced.bar:
            return segments
        reentries_left -= 1
        bar, at_open = exit_bar + 1, True


def _mtm_breach(
    segments: list[_Segment],
    *,
    closes: Sequence[np.ndarray],
    signed_quantities: Sequence[int],
    first: int,
    last: int,
    realized_before: float,
    stop_loss: Decimal | None,
    target: Decimal | None,
) -> tuple[int, str] | None:
    """The first bar in first..last at whose close the day's PnL breaches the strategy's MTM stop or target."""
    if (stop_loss is None and target is None) or last < first:
        return None
    mtm = np.full(last - first + 1, realized_before)
    for segment in segments:
        quantity = signed_quantities[segment.contract]
        held_from, held_until = max(segment.entry_bar, first), min(segment.exit_bar, last + 1)
        if held_from < held_until:
            unrealized = closes[segment.contract][held_from:held_until] - segment.entry_price
            mtm[held_from - first : held_until - first] += quantity * unrealized
        closed_from = max(segment.exit_bar, first)
        if closed_from <= last:
            mtm[closed_from - first :] += quantity * (segment.exit_price - segment.entry_price)
    hit = _mtm_limits_hit(mtm, stop_loss=stop_loss, target=target)
    return None if hit is None else (first + hit[0], hit[1])


def _mtm_limits_hit(mtm: np.ndarray, *, stop_loss: Decimal | None, target: Decimal | None) -> tuple[int, str] | None:
    """The first position in `mtm` (PnL at bar closes) at or beyond the MTM stop-loss or target, and which."""
    hit = np.zeros(len(mtm), dtype=bool)
    if stop_loss is not None:
        hit |= mtm <= -float(stop_loss) + _TOUCH
    if target is not None:
        hit |= mtm >= float(target) - _TOUCH
    if not hit.any():
        return None
    index = int(np.argmax(hit))
    lost = stop_loss is not None and mtm[index] <= -float(stop_loss) + _TOUCH
    return index, ExitReason.MTM_STOP_LOSS if lost else ExitReason.MTM_TARGET


def _segments_cut(segments: list[_Segment], *, bar: int, reason: str, closes: Sequence[np.ndarray]) -> list[_Segment]:
    """The stays as they are once everything still open is closed at `bar`'s close."""
    kept = []
    for segment in segments:
        if segment.entry_bar > bar:
            continue
        if segment.exit_bar > bar:
            segment = _Segment(
                segment.contract,
                segment.entry_bar,
                segment.entry_price,
                bar,
                round(float(closes[segment.contract][bar]), 2),
                reason,
            )
        kept.append(segment)
    return kept
