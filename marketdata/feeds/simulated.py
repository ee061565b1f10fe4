"""A simulated market: every active instrument ticks as if the exchange were open, with no broker and no internet.

Underlyings (indices and stocks) follow a geometric Brownian motion with their own volatility and rare small jumps;
futures trade at spot with cost of carry; options are priced from their underlying with Black-Scholes on a
volatility smile (IV rises away from the money, more steeply for low strikes, so out-of-the-money puts are richer).
Day volume and open interest evolve in lots, busiest near the money. Everything is vectorised with numpy, seeded
for reproducibility, and leaves the feed through the tick bus like any broker feed.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np
from django.conf import settings

from brokers.prices import REFERENCE_PRICES, synthetic_quote
from brokers.protocol import Quote
from marketdata.calendar import is_open
from marketdata.feeds.base import Backoff, Feed
from marketdata.models import Instrument, InstrumentType
from marketdata.options import DAYS_PER_YEAR, black_scholes_price
from marketdata.quotes import quotes_get
from marketdata.ticks import ticks_publish

logger = logging.getLogger(__name__)

IST = ZoneInfo(settings.MARKET_TIMEZONE)
RISK_FREE_RATE = 0.065
# The random walk runs on trading time: 252 sessions of 6h15m.
TRADING_SECONDS_PER_YEAR = 252 * 6.25 * 3600
SECONDS_PER_YEAR = DAYS_PER_YEAR * 24 * 3600
JUMPS_PER_TRADING_HOUR = 0.5
JUMP_SIZE = 0.003  # standard deviation of a jump's log return
SMILE_CURVATURE = 40.0  # IV grows by atm * curvature * ln(K/S)^2 on both wings
PUT_WING_SKEW = 0.4  # and by skew * |ln(K/S)| below the spot
DEFAULT_MAX_INSTRUMENTS = 2000
# Derivative names as instruments list them, and the index each one tracks.
INDEX_SPOTS = {
    "NIFTY": "NSE:NIFTY 50",
    "BANKNIFTY": "NSE:NIFTY BANK",
    "FINNIFTY": "NSE:NIFTY FIN SERVICE",
    "MIDCPNIFTY": "NSE:NIFTY MID SELECT",
    "SENSEX": "BSE:SENSEX",
    "BANKEX": "BSE:BANKEX",
}
_SPOT_TYPES = (InstrumentType.EQ, InstrumentType.INDEX)


def smile_volatility(
    *, atm_volatility: np.ndarray | float, spot: np.ndarray | float, strike: np.ndarray | float
) -> np.ndarray:
    """The simulated implied volatility of a strike. One IV per strike (calls and puts share it, so put-call parity
    holds), lowest at the money, rising on both wings and faster on the low-strike (out-of-the-money put) side."""
    moneyness = np.log(np.asarray(strike, dtype=float) / np.asarray(spot, dtype=float))
    atm = np.asarray(atm_volatility, dtype=float)
    smile = atm * (1.0 + SMILE_CURVATURE * moneyness**2) + PUT_WING_SKEW * np.maximum(-moneyness, 0.0)
    return np.clip(smile, 0.05, 2.5)


def _stable_fraction(symbol: str) -> float:
    """A number in [0, 1) fixed by the symbol, so per-instrument traits do not change between runs."""
    return int(hashlib.sha256(symbol.encode()).hexdigest()[:8], 16) / 2**32


def _expiry_moment(expiry: date | None) -> float:
    """Contracts expire at 15:30 IST on their expiry day (epoch seconds); NaN for none."""
    if expiry is None:
        return math.nan
    return datetime(expiry.year, expiry.month, expiry.day, 15, 30, tzinfo=IST).timestamp()


@dataclass(frozen=True)
class _Contract:
    symbol: str
    kind: str  # EQ, INDEX, FUT, CE, PE
    underlying: str  # key into the underlyings
    strike: float
    expires_at: float
    tick: Decimal
    lot: int


class SimulatedFeed(Feed):
    """Publishes one batch (every simulated instrument) every `interval` seconds; `step()` makes one batch now."""

    source = "simulated"

    def __init__(
        self,
        *,
        interval: float = 1.0,
        seed: int | None = None,
        symbols: list[str] | None = None,
        max_instruments: int = DEFAULT_MAX_INSTRUMENTS,
        follow_market_hours: bool = True,
        clock: Callable[[], datetime] | None = None,
        publish: Callable[[list[Quote]], int] = ticks_publish,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(publish=publish, backoff=backoff)
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.rng = np.random.default_rng(seed)
        self.only_symbols = set(symbols) if symbols else None
        self.max_instruments = max_instruments
        self.follow_market_hours = follow_market_hours
        self.clock = clock or (lambda: datetime.now(tz=UTC))
        self.contracts: list[_Contract] = []
        self.steps = 0

    # --- the loop -------------------------------------------------------------------------------------------------

    def stream(self, stop: threading.Event) -> None:
        self.load()
        logger.info("simulated feed: %d instruments every %.2fs", len(self.contracts), self.interval)
        while not stop.is_set():
            started = time.monotonic()
            # Outside market hours the market stands still (unless MARKET_ALWAYS_OPEN makes it trade around the clock).
            if not self.follow_market_hours or is_open(self.clock(), simulated=True):
                self.step()
            stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def step(self) -> list[Quote]:
        """Advance the market by one interval and publish every instrument's quote; returns the batch."""
        if not self.contracts:
            self.load()
        now = self.clock()
        self._roll_session_if_new_day(now)
        self._move_underlyings()
        self._price_contracts(now)
        self._evolve_activity()
        quotes = self._quotes(now)
        self.steps += 1
        self.publish(quotes)
        return quotes

    # --- the universe ---------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the instruments to simulate and their starting state (from the quote cache when it has them)."""
        now = self.clock()
        contracts = self._contracts_from_instruments(today=now.astimezone(IST).date())
        if not contracts:
            contracts = [
                _Contract(
                    symbol, "INDEX" if "NIFTY" in symbol else "EQ", symbol, math.nan, math.nan, Decimal("0.05"), 1
                )
                for symbol in REFERENCE_PRICES
            ]
        if self.only_symbols is not None:
            contracts = [contract for contract in contracts if contract.symbol in self.only_symbols]
        cached = quotes_get([contract.symbol for contract in contracts])
        self._load_underlyings(contracts, cached)
        self.contracts = self._within_cap(contracts)
        self._load_state(cached, today=now.astimezone(IST).date())

    def _contracts_from_instruments(self, *, today: date) -> list[_Contract]:
        rows = list(
            Instrument.objects.filter(is_active=True)
            .exclude(expiry__lt=today)
            .values_list(
                "symbol",
                "exchange",
                "tradingsymbol",
                "underlying",
                "instrument_type",
                "strike",
                "expiry",
                "tick_size",
                "lot_size",
            )
        )
        # A derivative names its underlying (NIFTY, RELIANCE); find the spot instrument that is it, NSE first.
        spot_of: dict[str, str] = {}
        for symbol, _exchange, tradingsymbol, underlying, kind, *_ in sorted(rows, key=lambda row: row[1] != "NSE"):
            if kind in _SPOT_TYPES:
                for name in (underlying, tradingsymbol):
                    if name:
                        spot_of.setdefault(name, symbol)
        spot_symbols = {row[0] for row in rows}
        for name, index_symbol in INDEX_SPOTS.items():
            if index_symbol in spot_symbols:
                spot_of[name] = index_symbol
        contracts = []
        for symbol, _exchange, _tradingsymbol, underlying, kind, strike, expiry, tick, lot in rows:
            if kind in _SPOT_TYPES:
                key = symbol
            else:
                # A derivative without a listed spot gets an unpublished one of its own.
                key = spot_of.get(underlying) or f"~{underlying or symbol}"
            contracts.append(
                _Contract(
                    symbol=symbol,
                    kind=kind,
                    underlying=key,
                    strike=float(strike) if strike is not None else math.nan,
                    expires_at=_expiry_moment(expiry),
                    tick=tick or Decimal("0.05"),
                    lot=lot or 1,
                )
            )
        return contracts

    def _load_underlyings(self, contracts: list[_Contract], cached: dict[str, Quote]) -> None:
        keys = sorted({contract.underlying for contract in contracts})
        self.underlying_index = {key: position for position, key in enumerate(keys)}
        prices, volatilities = [], []
        for key in keys:
            if key in cached:
                price = float(cached[key].last_price)
            elif key in REFERENCE_PRICES:
                price = float(REFERENCE_PRICES[key])
            elif key.startswith("~"):
                strikes = [c.strike for c in contracts if c.underlying == key and not math.isnan(c.strike)]
                price = float(np.median(strikes)) if strikes else 100 + 2900 * _stable_fraction(key)
            else:
                price = float(synthetic_quote(key).last_price)
            prices.append(price)
            is_index = key in INDEX_SPOTS.values() or key.lstrip("~") in INDEX_SPOTS
            low, high = (0.11, 0.17) if is_index else (0.20, 0.38)
            volatilities.append(low + (high - low) * _stable_fraction(key))
        self.spot = np.array(prices, dtype=float)
        self.volatility = np.array(volatilities, dtype=float)

    def _within_cap(self, contracts: list[_Contract]) -> list[_Contract]:
        """Keep every spot and future, then index options (what most users trade), then stock options, each
        nearest expiry and nearest the money first, up to the cap."""
        if len(contracts) <= self.max_instruments:
            return contracts
        kept = [contract for contract in contracts if contract.kind not in ("CE", "PE")]
        options = [contract for contract in contracts if contract.kind in ("CE", "PE")]

        index_spots = set(INDEX_SPOTS.values())

        def distance(contract: _Contract) -> tuple[int, float, float]:
            spot = self.spot[self.underlying_index[contract.underlying]]
            moneyness = abs(math.log(contract.strike / spot)) if contract.strike > 0 else math.inf
            return (0 if contract.underlying in index_spots else 1), contract.expires_at, moneyness

        options.sort(key=distance)
        room = max(0, self.max_instruments - len(kept))
        logger.info("simulated feed: %d instruments, simulating %d", len(contracts), len(kept) + room)
        return kept + options[:room]

    def _load_state(self, cached: dict[str, Quote], *, today: date) -> None:
        contracts = self.contracts
        count = len(contracts)
        self.kind = np.array([contract.kind for contract in contracts])
        self.is_option = np.isin(self.kind, ["CE", "PE"])
        self.is_call = self.kind == "CE"
        self.is_future = self.kind == "FUT"
        self.is_index = self.kind == "INDEX"
        self.owner = np.array([self.underlying_index[contract.underlying] for contract in contracts], dtype=int)
        self.strike = np.array([contract.strike for contract in contracts], dtype=float)
        self.expires_at = np.array([contract.expires_at for contract in contracts], dtype=float)
        self.tick = np.array([float(contract.tick) for contract in contracts], dtype=float)
        self.lot = np.array([contract.lot for contract in contracts], dtype=np.int64)
        self.session_date = today
        self.last = np.zeros(count)
        self._price_contracts(self.clock())
        self.prev_close = self.last.copy()
        self.day_open = self.last.copy()
        self.day_high = self.last.copy()
        self.day_low = self.last.copy()
        self.volume = np.zeros(count, dtype=np.int64)
        moneyness = self._moneyness()
        fraction = np.array([_stable_fraction(contract.symbol) for contract in contracts])
        option_lots = 200 + 8000 * np.exp(-((moneyness / 0.025) ** 2)) * (0.5 + fraction)
        self.oi = np.where(self.is_option, option_lots, np.where(self.is_future, 40_000 * (0.5 + fraction), 0)).astype(
            np.int64
        ) * np.where(self.is_option | self.is_future, self.lot, 0)
        self.session_oi = self.oi.copy()
        for position, contract in enumerate(contracts):
            quote = cached.get(contract.symbol)
            if quote is None:
                continue
            quoted_today = bool(quote.timestamp and quote.timestamp.astimezone(IST).date() == today)
            # A quote from an earlier day closed that day: its last price, not its own previous close, is ours.
            self.prev_close[position] = float((quote.close if quoted_today else None) or quote.last_price)
            if not quoted_today and quote.oi:
                self.oi[position] = self.session_oi[position] = quote.oi
            if quoted_today:
                self.day_open[position] = float(quote.open or quote.last_price)
                self.day_high[position] = float(quote.high or quote.last_price)
                self.day_low[position] = float(quote.low or quote.last_price)
                self.volume[position] = quote.volume
                if quote.oi:
                    self.oi[position] = quote.oi
                    self.session_oi[position] = quote.oi - quote.oi_change
        # Quoted spread in ticks: one for the liquid, wider for cheap far options.
        self.spread_ticks = np.where(self.is_option & (np.abs(moneyness) > 0.05), 2, 1)

    # --- one step -------------------------------------------------------------------------------------------------

    def _roll_session_if_new_day(self, now: datetime) -> None:
        today = now.astimezone(IST).date()
        if today == self.session_date:
            return
        self.session_date = today
        self.prev_close = self.last.copy()
        self.day_open = np.full_like(self.last, np.nan)
        self.day_high = np.full_like(self.last, -np.inf)
        self.day_low = np.full_like(self.last, np.inf)
        self.volume[:] = 0
        self.session_oi = self.oi.copy()

    def _move_underlyings(self) -> None:
        years = self.interval / TRADING_SECONDS_PER_YEAR
        shocks = self.rng.standard_normal(self.spot.size)
        log_returns = -0.5 * self.volatility**2 * years + self.volatility * math.sqrt(years) * shocks
        jumps = self.rng.random(self.spot.size) < JUMPS_PER_TRADING_HOUR * self.interval / 3600
        log_returns += np.where(jumps, self.rng.normal(0.0, JUMP_SIZE, self.spot.size), 0.0)
        self.spot = self.spot * np.exp(log_returns)

    def _years_left(self, now: datetime) -> np.ndarray:
        return np.nan_to_num(np.maximum(self.expires_at - now.timestamp(), 0.0) / SECONDS_PER_YEAR)

    def _moneyness(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nan_to_num(np.log(self.strike / self.spot[self.owner]), nan=0.0)

    def _price_contracts(self, now: datetime) -> None:
        spot = self.spot[self.owner]
        years = self._years_left(now)
        price = spot.copy()
        if self.is_future.any():
            price = np.where(self.is_future, spot * np.exp(RISK_FREE_RATE * years), price)
        if self.is_option.any():
            options = self.is_option
            atm = self.volatility[self.owner[options]] * 1.05
            volatility = smile_volatility(atm_volatility=atm, spot=spot[options], strike=self.strike[options])
            price[options] = black_scholes_price(
                spot=spot[options],
                strike=self.strike[options],
                years=years[options],
                volatility=volatility,
                rate=RISK_FREE_RATE,
                is_call=self.is_call[options],
            )
        ticks = np.rint(price / self.tick)
        # An option never trades below one tick.
        ticks = np.where(self.is_option, np.maximum(ticks, 1), ticks)
        self.last = ticks * self.tick
        self.last_ticks = ticks.astype(np.int64)

    def _evolve_activity(self) -> None:
        count = self.last.size
        self.day_open = np.where(np.isnan(self.day_open), self.last, self.day_open)
        self.day_high = np.maximum(self.day_high, self.last)
        self.day_low = np.minimum(self.day_low, self.last)
        closeness = np.exp(-((self._moneyness() / 0.025) ** 2))
        # Trades per second: stocks trade shares, derivatives trade lots (busiest at the money); indices do not trade.
        lots_per_second = np.where(self.is_option, 0.3 + 12 * closeness, np.where(self.is_future, 3.0, 150.0))
        traded = self.rng.poisson(lots_per_second * self.interval)
        traded = np.where(self.is_index, 0, traded) * np.where(self.is_option | self.is_future, self.lot, 1)
        self.volume += traded.astype(np.int64)
        # Open interest: positions opened minus closed, in lots, drifting up through the day near the money.
        derivative = self.is_option | self.is_future
        opened = self.rng.poisson((0.2 + 3 * closeness) * self.interval, count)
        closed = self.rng.poisson((0.15 + 2.4 * closeness) * self.interval, count)
        self.oi = np.maximum(0, self.oi + np.where(derivative, (opened - closed) * self.lot, 0))

    def _quotes(self, now: datetime) -> list[Quote]:
        timestamp = now.astimezone(UTC)
        spread = self.spread_ticks
        bid_ticks = np.maximum(self.last_ticks - spread, np.where(self.is_option, 0, 1))
        ask_ticks = self.last_ticks + spread
        depth_lots = self.rng.integers(1, 60, size=(2, self.last.size))
        bid_quantity = np.where(
            self.is_index, 0, depth_lots[0] * np.where(self.is_option | self.is_future, self.lot, 25)
        )
        ask_quantity = np.where(
            self.is_index, 0, depth_lots[1] * np.where(self.is_option | self.is_future, self.lot, 25)
        )
        quotes = []
        for position, contract in enumerate(self.contracts):
            tick = contract.tick
            last = _price(int(self.last_ticks[position]), tick)
            oi = int(self.oi[position])
            quotes.append(
                Quote(
                    symbol=contract.symbol,
                    last_price=last,
                    bid=None if self.is_index[position] else _price(int(bid_ticks[position]), tick),
                    ask=None if self.is_index[position] else _price(int(ask_ticks[position]), tick),
                    bid_quantity=int(bid_quantity[position]),
                    ask_quantity=int(ask_quantity[position]),
                    volume=int(self.volume[position]),
                    open=_near_tick(self.day_open[position], tick),
                    high=_near_tick(self.day_high[position], tick),
                    low=_near_tick(self.day_low[position], tick),
                    close=_near_tick(self.prev_close[position], tick),
                    timestamp=timestamp,
                    oi=oi,
                    oi_change=oi - int(self.session_oi[position]) if oi else 0,
                )
            )
        return quotes


_CENT = Decimal("0.01")


def _price(ticks: int, tick: Decimal) -> Decimal:
    value = tick * ticks
    return value.quantize(_CENT) if tick >= _CENT else value


def _near_tick(value: float, tick: Decimal) -> Decimal:
    return _price(round(value / float(tick)), tick)


def simulated_clock_from(start: datetime, *, step: timedelta) -> Callable[[], datetime]:
    """A clock for tests and replays: `start`, then one `step` later at every call."""
    moments = itertools.count()
    return lambda: start + step * next(moments)
