"""Candles: 1-minute OHLCV folded from ticks, higher intervals derived from those in the database, CSV import.

Only 1-minute candles (and imported daily ones) are stored. 3m ... 1h are grouped from 1-minute candles by the
database in Asia/Kolkata, in buckets aligned to the 09:15 open (a 1h candle starts at 09:15, 10:15 ... 15:15);
1d groups a whole IST day (its candle starts at 00:00 IST), and a stored daily candle wins over a derived one.

Candles also come from a broker's historical-data API (`candles_import_from_broker`), in requests no longer than the
broker allows.
"""

from __future__ import annotations

import csv
import threading
import time as clock
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.db.models import F, Max, Min, Sum, Value, Window
from django.db.models.expressions import RowRange
from django.db.models.functions import ExtractHour, ExtractMinute, Floor, LastValue, RowNumber, TruncDate

from accounts.services import audit_record
from algoterm.api.errors import ValidationFailed
from brokers.gateway import GuardedAdapter, adapter_for
from brokers.models import BrokerAccount
from brokers.protocol import BrokerRateLimited, HistoricalCandle, InvalidInput, Quote, split_symbol
from marketdata.models import Candle

IST = ZoneInfo(settings.MARKET_TIMEZONE)
MINUTE = "1m"
DAY = "1d"
INTERVAL_MINUTES = {"1m": 1, "3m": 3, "5m": 5, "15m": 15, "30m": 30, "1h": 60}
INTERVALS = (*INTERVAL_MINUTES, DAY)
# The longest span one request may cover, per interval (the same limits Kite's historical API sets).
MAX_SPAN_DAYS = {"1m": 60, "3m": 100, "5m": 100, "15m": 200, "30m": 200, "1h": 400, "1d": 2000}
SESSION_OPEN_MINUTE = 9 * 60 + 15
CSV_COLUMNS = ("symbol", "timestamp", "open", "high", "low", "close", "volume")
_CENT = Decimal("0.01")
_MAX_REPORTED_ERRORS = 50
# How often one chunk of a broker import waits out the broker's rate limit before the import gives up.
_RATE_LIMIT_RETRIES = 3


@dataclass(frozen=True)
class CandleBar:
    symbol: str
    interval: str
    start: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: int
    oi: int | None = None


# --- storing ---------------------------------------------------------------------------------------------------


def candles_upsert(*, candles: Iterable[CandleBar], batch_size: int = 2000) -> int:
    """Insert or overwrite candles by (symbol, interval, start), in bulk; returns how many were written."""
    unique = {(bar.symbol, bar.interval, bar.start): bar for bar in candles}
    rows = [
        Candle(
            symbol=bar.symbol,
            interval=bar.interval,
            start=bar.start,
            open=bar.open,
            high=bar.high,
            low=bar.low,
            close=bar.close,
            volume=bar.volume,
            oi=bar.oi,
        )
        for bar in unique.values()
    ]
    if rows:
        Candle.objects.bulk_create(
            rows,
            batch_size=batch_size,
            update_conflicts=True,
            unique_fields=["symbol", "interval", "start"],
            update_fields=["open", "high", "low", "close", "volume", "oi"],
        )
    return len(rows)


class _OpenMinute:
    """A minute still taking ticks, changed in place: a new frozen CandleBar per tick cost more than the rest of a
    tick's way through the builder."""

    __slots__ = ("symbol", "start", "open", "high", "low", "close", "volume", "oi")

    def __init__(self, symbol: str, start: datetime, price: Decimal, volume: int, oi: int | None) -> None:
        self.symbol, self.start = symbol, start
        self.open = self.high = self.low = self.close = price
        self.volume, self.oi = volume, oi

    def bar(self) -> CandleBar:
        return CandleBar(
            self.symbol, MINUTE, self.start, self.open, self.high, self.low, self.close, self.volume, self.oi
        )


class MinuteCandleBuilder:
    """Folds ticks into 1-minute candles per symbol and stores each minute once it has closed.

    Volume is the growth of the quote's cumulative day volume between ticks (a drop means a new session). A minute
    closes when a tick of a later minute arrives (for any symbol: the batch's clock moves everyone on) or when
    `minutes_close(now=...)` is called, which the feed process does on a timer so quiet symbols close too.
    Thread-safe: broker feeds publish from their own threads.
    """

    def __init__(self, *, persist: Callable[..., int] = candles_upsert) -> None:
        self.persist = persist
        self._lock = threading.Lock()
        self._open: dict[str, _OpenMinute] = {}
        self._closed_through: dict[str, datetime] = {}  # the last minute stored per symbol: it is never rewritten
        self._day_volume: dict[str, int] = {}
        self.minutes_written = 0

    def ticks_add(self, quotes: Iterable[Quote], *, now: datetime | None = None) -> int:
        """Fold a batch of ticks in; returns how many closed minutes were stored."""
        closed: list[CandleBar] = []
        latest: datetime | None = None
        minutes: dict[datetime | None, datetime] = {}  # a batch's ticks mostly share a few timestamps
        with self._lock:
            for quote in quotes:
                stamp = quote.timestamp
                minute = minutes.get(stamp)
                if minute is None:
                    minute = minutes[stamp] = _minute_of(stamp or now or datetime.now(tz=UTC))
                if latest is None or minute > latest:
                    latest = minute
                traded = self._traded_since_last(quote)
                symbol = quote.symbol
                bar = self._open.get(symbol)
                stored = self._closed_through.get(symbol)
                late = (bar is not None and minute < bar.start) or (stored is not None and minute <= stored)
                if late:
                    # A tick stamped in a minute already closed (exchange clocks lag and differ between symbols):
                    # its trades count in the open minute, and the stored candle is never rewritten by a stub.
                    if bar is not None:
                        bar.volume += traded
                    continue
                if bar is not None and minute > bar.start:
                    closed.append(bar.bar())
                    self._closed_through[symbol] = bar.start
                    bar = None
                price = quote.last_price
                if bar is None:
                    self._open[symbol] = _OpenMinute(symbol, minute, price, traded, quote.oi or None)
                    continue
                if price > bar.high:
                    bar.high = price
                elif price < bar.low:
                    bar.low = price
                bar.close = price
                bar.volume += traded
                bar.oi = quote.oi or bar.oi
            if latest is not None:
                closed += self._pop_before(latest)
        return self._store(closed)

    def minutes_close(self, *, now: datetime) -> int:
        """Store and forget every minute that ended by `now`; returns how many."""
        with self._lock:
            closed = self._pop_before(_minute_of(now))
        return self._store(closed)

    def flush(self) -> int:
        """Store every open minute as it stands (on shutdown); they stay open."""
        with self._lock:
            bars = [bar.bar() for bar in self._open.values()]
        return self._store(bars)

    def open_candle(self, symbol: str) -> CandleBar | None:
        with self._lock:
            bar = self._open.get(symbol)
            return None if bar is None else bar.bar()

    def _traded_since_last(self, quote: Quote) -> int:
        previous = self._day_volume.get(quote.symbol)
        self._day_volume[quote.symbol] = quote.volume
        if previous is None:
            return 0  # the first tick seen carries the whole day so far, not this minute's trades
        return quote.volume - previous if quote.volume >= previous else quote.volume

    def _pop_before(self, minute: datetime) -> list[CandleBar]:
        done = [bar for bar in self._open.values() if bar.start < minute]
        for bar in done:
            del self._open[bar.symbol]
            self._closed_through[bar.symbol] = bar.start
        return [bar.bar() for bar in done]

    def _store(self, bars: list[CandleBar]) -> int:
        if not bars:
            return 0
        written = self.persist(candles=bars)
        self.minutes_written += written
        return written


def _minute_of(moment: datetime) -> datetime:
    # IST is UTC+05:30, so minute boundaries agree in both.
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


# --- reading -----------------------------------------------------------------------------------------------------


def candles_get(*, symbol: str, interval: str, start: datetime, end: datetime) -> list[CandleBar]:
    """Candles of `interval` starting in [start, end), oldest first."""
    if interval not in INTERVALS:
        raise ValidationFailed(errors={"interval": [f"One of {', '.join(INTERVALS)}."]})
    if interval == DAY:
        start = ist_day_start(start.astimezone(IST).date())  # a day starting mid-range would be a partial candle
    minutes = Candle.objects.filter(symbol=symbol, interval=MINUTE, start__gte=start, start__lt=end)
    if interval == MINUTE:
        return [_bar_of(row) for row in minutes.order_by("start")]
    day = TruncDate("start", tzinfo=IST)
    if interval == DAY:
        derived = _grouped(minutes, partition=[day], interval=DAY, symbol=symbol, size=None)
        stored = {
            bar.start: bar
            for bar in map(
                _bar_of,
                Candle.objects.filter(symbol=symbol, interval=DAY, start__gte=start, start__lt=end),
            )
        }
        by_start = {bar.start: bar for bar in derived} | stored
        return [by_start[moment] for moment in sorted(by_start)]
    size = INTERVAL_MINUTES[interval]
    minute_of_day = ExtractHour("start", tzinfo=IST) * 60 + ExtractMinute("start", tzinfo=IST)
    # Shifted to stay positive so integer division floors (minutes before 09:15 fall in earlier buckets).
    bucket = Floor((minute_of_day - Value(SESSION_OPEN_MINUTE) + Value(1000 * size)) / Value(size))
    return _grouped(
        minutes.annotate(bucket=bucket), partition=[day, F("bucket")], interval=interval, symbol=symbol, size=size
    )


def _grouped(minutes, *, partition: list, interval: str, symbol: str, size: int | None) -> list[CandleBar]:
    """One row per bucket: the first minute's own open, the partition's high, low, volume and last close and OI."""
    ordered = {"partition_by": partition, "order_by": F("start").asc()}
    whole = {**ordered, "frame": RowRange(start=None, end=None)}
    rows = (
        minutes.annotate(
            day=TruncDate("start", tzinfo=IST),
            position=Window(RowNumber(), **ordered),
            bucket_high=Window(Max("high"), partition_by=partition),
            bucket_low=Window(Min("low"), partition_by=partition),
            bucket_volume=Window(Sum("volume"), partition_by=partition),
            bucket_close=Window(LastValue("close"), **whole),
            bucket_oi=Window(LastValue("oi"), **whole),
        )
        .filter(position=1)
        .order_by("start")
    )
    bars = []
    for row in rows:
        midnight = datetime.combine(row.day, time(0), tzinfo=IST)
        opening = (
            midnight
            if size is None
            else midnight + timedelta(minutes=SESSION_OPEN_MINUTE + (int(row.bucket) - 1000) * size)
        )
        bars.append(
            CandleBar(
                symbol=symbol,
                interval=interval,
                start=opening,
                open=row.open,
                high=row.bucket_high,
                low=row.bucket_low,
                close=row.bucket_close,
                volume=row.bucket_volume or 0,
                oi=row.bucket_oi,
            )
        )
    return bars


def _bar_of(row: Candle) -> CandleBar:
    return CandleBar(row.symbol, row.interval, row.start, row.open, row.high, row.low, row.close, row.volume, row.oi)


# --- CSV import --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CandleImportResult:
    rows: int
    created: int
    updated: int


def candles_import_csv(
    *,
    lines: Iterable[str],
    interval: str = MINUTE,
    batch_size: int = 2000,
    on_progress: Callable[[int], None] | None = None,
) -> CandleImportResult:
    """Import `symbol,timestamp,open,high,low,close,volume[,oi]` rows (with that header) as `interval` candles.

    All or nothing: any invalid row refuses the whole file with VALIDATION_ERROR naming the lines (`line N`).
    Idempotent: a candle already stored for (symbol, interval, start) is overwritten. Naive timestamps are IST;
    daily candles are stored at 00:00 IST of their date; prices are rounded to 2 decimals.
    `on_progress(rows)` is called after each stored batch.
    """
    if interval not in (MINUTE, DAY):
        raise ValidationFailed(errors={"interval": ["Candles are imported as 1m or 1d."]})
    reader = csv.DictReader(lines)
    header = [name.strip().lower() for name in (reader.fieldnames or [])]
    missing = [name for name in CSV_COLUMNS if name not in header]
    if missing:
        raise ValidationFailed(
            "The CSV header must name symbol,timestamp,open,high,low,close,volume[,oi].",
            errors={"header": [f"Missing column {name!r}." for name in missing]},
        )
    reader.fieldnames = header
    errors: dict[str, list[str]] = {}
    rows = created = 0
    batch: list[CandleBar] = []
    with transaction.atomic():
        for line_number, record in enumerate(reader, start=2):
            try:
                bar = _parse_csv_row(record, interval=interval)
            except ValueError as error:
                errors[f"line {line_number}"] = [str(error)]
                if len(errors) >= _MAX_REPORTED_ERRORS:
                    break
                continue
            batch.append(bar)
            rows += 1
            if len(batch) >= batch_size:
                created += _store_import_batch(batch, errors_so_far=errors)
                batch = []
                if on_progress:
                    on_progress(rows)
        if errors:
            shown = f"{len(errors)}{'+' if len(errors) >= _MAX_REPORTED_ERRORS else ''}"
            raise ValidationFailed(f"{shown} invalid rows; nothing was imported.", errors=errors)
        created += _store_import_batch(batch, errors_so_far=errors)
        if on_progress and batch:
            on_progress(rows)
    return CandleImportResult(rows=rows, created=created, updated=rows - created)


def _store_import_batch(batch: list[CandleBar], *, errors_so_far: dict) -> int:
    """Stores the batch (unless the file already failed) and returns how many of its candles are new."""
    if not batch or errors_so_far:
        return 0
    keys = {(bar.symbol, bar.start) for bar in batch}
    existing = set(
        Candle.objects.filter(
            symbol__in={bar.symbol for bar in batch},
            interval=batch[0].interval,
            start__in={bar.start for bar in batch},
        ).values_list("symbol", "start")
    )
    candles_upsert(candles=batch)
    return len(keys - existing)


def _parse_csv_row(record: dict, *, interval: str) -> CandleBar:
    if None in record or any(record.get(name) is None for name in CSV_COLUMNS):
        raise ValueError("Wrong number of fields.")
    symbol = record["symbol"].strip().upper()
    try:
        split_symbol(symbol)
    except InvalidInput as error:
        raise ValueError(error.detail) from None
    start = _parse_timestamp(record["timestamp"].strip(), interval=interval)
    open_, high, low, close = (_parse_price(record[name], name) for name in ("open", "high", "low", "close"))
    if high < max(open_, close, low) or low > min(open_, close):
        raise ValueError("high must be the highest and low the lowest of open, high, low, close.")
    volume = _parse_count(record["volume"], "volume")
    raw_oi = (record.get("oi") or "").strip()
    oi = _parse_count(raw_oi, "oi") if raw_oi else None
    return CandleBar(symbol, interval, start, open_, high, low, close, volume, oi)


def _parse_timestamp(raw: str, *, interval: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"timestamp {raw[:40]!r} is not ISO 8601 (2024-01-02T09:15:00+05:30).") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=IST)
    if interval == DAY:
        return datetime.combine(moment.astimezone(IST).date(), time(0), tzinfo=IST)
    if moment.second or moment.microsecond:
        raise ValueError("1-minute candles start on a whole minute.")
    return moment


def _parse_price(raw: str, name: str) -> Decimal:
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise ValueError(f"{name} {raw[:20]!r} is not a number.") from None
    if not value.is_finite() or value <= 0 or value >= Decimal("1e12"):
        raise ValueError(f"{name} must be a positive price.")
    return value.quantize(_CENT, rounding=ROUND_HALF_UP)


def _parse_count(raw: str, name: str) -> int:
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise ValueError(f"{name} {raw[:20]!r} is not a number.") from None
    if not value.is_finite() or value < 0 or value != value.to_integral_value() or value >= Decimal(2**63):
        raise ValueError(f"{name} must be a whole number, 0 or more.")
    return int(value)


# --- broker import -----------------------------------------------------------------------------------------------


def candles_import_chunks(
    *, interval: str, start: datetime, end: datetime, max_span_days: int | None = None
) -> list[tuple[datetime, datetime]]:
    """[start, end) cut into consecutive ranges of at most `max_span_days` (the broker's own limit for one request;
    by default the longest range our candles API serves)."""
    if interval not in (MINUTE, DAY):
        raise ValidationFailed(errors={"interval": ["Candles are imported as 1m or 1d."]})
    if start.tzinfo is None or end.tzinfo is None:
        raise ValidationFailed(errors={"from": ["Give an aware datetime."]})
    if end <= start:
        raise ValidationFailed(errors={"to": ["Must be after from."]})
    longest = timedelta(days=max_span_days or MAX_SPAN_DAYS[interval])
    chunks = []
    cursor = start
    while cursor < end:
        chunk_end = min(cursor + longest, end)
        chunks.append((cursor, chunk_end))
        cursor = chunk_end
    return chunks


def candles_import_from_broker(
    *,
    account: BrokerAccount,
    symbol: str,
    interval: str,
    start: datetime,
    end: datetime,
    on_progress: Callable[[int, int], None] | None = None,
) -> CandleImportResult:
    """Import `symbol`'s `interval` candles starting in [start, end) from the account's broker.

    The range goes to the broker in chunks it allows, each stored as it arrives (a failed import keeps the chunks
    before the failure; running it again completes it). Idempotent: candles already stored are overwritten with
    the broker's values. A rate-limited chunk is retried after the broker's wait. `on_progress(done, total)` is
    called after each chunk. Raises the adapter's BrokerError subclasses (InvalidInput for an unknown symbol,
    SessionExpired when the account needs a login).
    """
    symbol = symbol.strip().upper()
    split_symbol(symbol)
    adapter = adapter_for(account)
    broker_limits = getattr(adapter, "historical_max_span_days", None) or {}
    chunks = candles_import_chunks(interval=interval, start=start, end=end, max_span_days=broker_limits.get(interval))
    rows = created = 0
    for done, (chunk_start, chunk_end) in enumerate(chunks, start=1):
        candles = _historical_chunk(adapter, symbol=symbol, interval=interval, start=chunk_start, end=chunk_end)
        bars = [_bar_of_historical(candle, symbol=symbol, interval=interval) for candle in candles]
        starts = {bar.start for bar in bars}
        with transaction.atomic():
            already_stored = set(
                Candle.objects.filter(symbol=symbol, interval=interval, start__in=starts).values_list(
                    "start", flat=True
                )
            )
            candles_upsert(candles=bars)
        rows += len(starts)
        created += len(starts - already_stored)
        if on_progress:
            on_progress(done, len(chunks))
    return CandleImportResult(rows=rows, created=created, updated=rows - created)


def _historical_chunk(
    adapter: GuardedAdapter, *, symbol: str, interval: str, start: datetime, end: datetime
) -> list[HistoricalCandle]:
    retries = 0
    while True:
        try:
            return adapter.historical_candles(symbol=symbol, interval=interval, start=start, end=end)
        except BrokerRateLimited as error:
            retries += 1
            if retries > _RATE_LIMIT_RETRIES:
                raise
            clock.sleep(error.extra.get("retry_after", 1))


def _bar_of_historical(candle: HistoricalCandle, *, symbol: str, interval: str) -> CandleBar:
    # Brokers stamp daily candles differently (midnight, the 09:15 open, UTC); we store them at 00:00 IST.
    start = ist_day_start(candle.start.astimezone(IST).date()) if interval == DAY else candle.start
    return CandleBar(
        symbol, interval, start, candle.open, candle.high, candle.low, candle.close, candle.volume, candle.oi
    )


def candles_span_check(*, interval: str, start: datetime, end: datetime) -> None:
    """Refuse an empty or too long range for `interval`."""
    if end <= start:
        raise ValidationFailed(errors={"to": ["Must be after from."]})
    if end - start > timedelta(days=MAX_SPAN_DAYS[interval]):
        raise ValidationFailed(errors={"from": [f"{interval} candles cover at most {MAX_SPAN_DAYS[interval]} days."]})


def ist_day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=IST)


def candles_purge(*, before: datetime, batch_size: int = 5000, progress: Callable[[int], None] | None = None) -> int:
    """Delete the 1-minute candles that started before `before`, `batch_size` rows a statement (daily candles are
    kept); `progress` hears each batch's count. Audited; returns how many went."""
    old = Candle.objects.filter(interval=MINUTE, start__lt=before).order_by()
    deleted = 0
    while batch := list(old.values_list("pk", flat=True)[:batch_size]):
        count, _ = Candle.objects.filter(pk__in=batch).delete()
        deleted += count
        if progress is not None:
            progress(count)
    audit_record(
        action="system.market_data_purge",
        target_type="candle",
        details={"interval": MINUTE, "before": before.isoformat(), "deleted": deleted},
    )
    return deleted
