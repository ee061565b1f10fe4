"""Loading broker instrument dumps into the instrument master, and writing instruments back out as Kite rows.

Kite's instrument dump is the interchange format (`KITE_CSV_COLUMNS`): the CSV file, the rows the broker adapters
return from `instruments()`, the demo universe and the Kite simulator's `/instruments` all use its columns.

Mapping a Kite row to an Instrument:
* symbol `EXCHANGE:TRADINGSYMBOL`; indices are Kite's segment `INDICES` (Kite calls their type EQ) and become INDEX.
* underlying: the `name` column for derivatives (NIFTY, RELIANCE), the tradingsymbol for equities, and for the
  indices with derivatives the name their contracts use (`NSE:NIFTY 50` -> NIFTY), so an option chain finds its spot.
* Dhan's security id is the exchange's own token, which Kite publishes as `exchange_token`, except for indices,
  whose Dhan ids (IDX_I segment) are listed here; the static table in `brokers.instruments` wins where it knows one.
* Fyers: as `brokers.symbols.to_fyers_symbol` spells it (`NSE:SBIN-EQ`, `NSE:<tradingsymbol>` for NFO,
  `BSE:<tradingsymbol>` for BFO, `BSE:<tradingsymbol>-A` for BSE cash), and `NSE:NIFTY50-INDEX`-style names for
  indices: the known ones from the Fyers adapter, the rest by dropping spaces (our best guess; Fyers' own symbol
  master is the authority).
* Rows of exchanges we do not trade (BCD, NCO...) are skipped and counted; any other unreadable row fails the load.

A load validates every row first and writes nothing if one is bad; then it upserts everything in one transaction
and (for a full load) marks instruments the dump no longer lists inactive, so the table is never empty or
half-written.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

from django.db import transaction
from django.utils import timezone

from brokers import instruments as static_instruments
from brokers.gateway import adapter_for
from brokers.protocol import EXCHANGES
from brokers.symbols import INDEX_TO_FYERS, to_fyers_symbol
from marketdata.models import Instrument, InstrumentType

KITE_CSV_COLUMNS = (
    "instrument_token",
    "exchange_token",
    "tradingsymbol",
    "name",
    "last_price",
    "expiry",
    "strike",
    "tick_size",
    "lot_size",
    "instrument_type",
    "segment",
    "exchange",
)
KITE_INDEX_SEGMENT = "INDICES"
DERIVATIVE_TYPES = frozenset({InstrumentType.FUT, InstrumentType.CE, InstrumentType.PE})
OPTION_TYPES = frozenset({InstrumentType.CE, InstrumentType.PE})

# Indices with derivatives, by the name their contracts carry.
INDEX_UNDERLYINGS: dict[str, str] = {
    "NSE:NIFTY 50": "NIFTY",
    "NSE:NIFTY BANK": "BANKNIFTY",
    "NSE:NIFTY FIN SERVICE": "FINNIFTY",
    "NSE:NIFTY MID SELECT": "MIDCPNIFTY",
    "NSE:NIFTY NEXT 50": "NIFTYNXT50",
    "BSE:SENSEX": "SENSEX",
    "BSE:BANKEX": "BANKEX",
    "BSE:SENSEX50": "SENSEX50",
}
# Dhan quotes indices in its IDX_I segment under ids of its own.
INDEX_DHAN_SECURITY_IDS: dict[str, str] = {
    "NSE:NIFTY 50": "13",
    "NSE:INDIA VIX": "21",
    "NSE:NIFTY BANK": "25",
    "NSE:NIFTY FIN SERVICE": "27",
    "NSE:NIFTY MID SELECT": "442",
    "BSE:SENSEX": "51",
    "BSE:BANKEX": "69",
}
WRITE_BATCH_SIZE = 2000
_MAX_REPORTED_ERRORS = 20
_PAISE = Decimal("0.01")

# (phase, rows just processed, total rows or None): "validate" then "write".
Progress = Callable[[str, int, int | None], None]


class InstrumentLoadError(ValueError):
    """The dump could not be read; nothing was written. `problems` names the rows ("line 12: ...")."""

    def __init__(self, problems: list[str], *, total_problems: int | None = None) -> None:
        self.problems = problems
        self.total_problems = total_problems if total_problems is not None else len(problems)
        more = self.total_problems - len(problems)
        suffix = f" (and {more} more)" if more > 0 else ""
        super().__init__(f"{self.total_problems} bad instrument row(s), nothing loaded: {'; '.join(problems)}{suffix}")


@dataclass(frozen=True)
class InstrumentRecord:
    """One validated instrument, ready to be written."""

    symbol: str
    exchange: str
    segment: str
    tradingsymbol: str
    name: str
    underlying: str
    instrument_type: str
    expiry: date | None
    strike: Decimal | None
    lot_size: int
    tick_size: Decimal
    kite_token: int | None
    dhan_security_id: str
    fyers_symbol: str


@dataclass(frozen=True)
class LoadResult:
    total: int  # instruments in the dump, now active
    created: int
    updated: int
    deactivated: int
    skipped: int  # rows of exchanges we do not trade
    seconds: float
    problems: list[str] = field(default_factory=list)


# --- reading Kite rows ------------------------------------------------------------------------------------------


def _text(row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    return "" if value is None else str(value).strip()


def _integer(row: Mapping[str, Any], column: str, *, minimum: int = 0) -> int:
    raw = _text(row, column)
    try:
        value = int(Decimal(raw)) if raw else 0
    except (InvalidOperation, ValueError, OverflowError):
        raise ValueError(f"{column} {raw!r} is not a whole number") from None
    if Decimal(raw or "0") != value or value < minimum:
        raise ValueError(f"{column} {raw!r} must be a whole number of at least {minimum}")
    return value


def _decimal(row: Mapping[str, Any], column: str) -> Decimal:
    raw = _text(row, column) or "0"
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"{column} {raw!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{column} {raw!r} must be a number of at least 0")
    return value


def _expiry(row: Mapping[str, Any]) -> date | None:
    value = row.get("expiry")
    if isinstance(value, date):
        return value
    raw = _text(row, "expiry")
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"expiry {raw!r} is not a YYYY-MM-DD date") from None


def fyers_symbol_for(*, symbol: str, instrument_type: str) -> str:
    if instrument_type == InstrumentType.INDEX:
        exchange, _, tradingsymbol = symbol.partition(":")
        return INDEX_TO_FYERS.get(symbol) or f"{exchange}:{tradingsymbol.replace(' ', '')}-INDEX"
    return to_fyers_symbol(symbol)


def instrument_record_from_kite(row: Mapping[str, Any]) -> InstrumentRecord | None:
    """One Kite dump row as an InstrumentRecord; None for exchanges we do not trade; ValueError if unreadable."""
    exchange = _text(row, "exchange").upper()
    if exchange not in EXCHANGES:
        return None
    segment = _text(row, "segment").upper()
    tradingsymbol = _text(row, "tradingsymbol")
    if not tradingsymbol or len(tradingsymbol) > 48:
        raise ValueError(f"tradingsymbol {tradingsymbol!r} must be 1 to 48 characters")
    symbol = f"{exchange}:{tradingsymbol}"
    kite_type = _text(row, "instrument_type").upper()
    if segment == KITE_INDEX_SEGMENT:
        instrument_type = InstrumentType.INDEX
    elif kite_type in (InstrumentType.EQ, InstrumentType.FUT, InstrumentType.CE, InstrumentType.PE):
        instrument_type = InstrumentType(kite_type)
    else:
        raise ValueError(f"instrument_type {kite_type!r} is not EQ, FUT, CE or PE")
    name = _text(row, "name")[:120]
    kite_token = _integer(row, "instrument_token", minimum=1)
    exchange_token = _integer(row, "exchange_token")
    expiry = _expiry(row)
    strike = _decimal(row, "strike").quantize(_PAISE, rounding=ROUND_HALF_UP)
    tick_size = _decimal(row, "tick_size")
    lot_size = _integer(row, "lot_size")
    if strike >= Decimal("1e10") or tick_size >= Decimal("1e4"):
        raise ValueError("strike or tick_size is out of range")
    if instrument_type in DERIVATIVE_TYPES:
        if expiry is None:
            raise ValueError(f"{symbol} is a {instrument_type} without an expiry")
        if not name:
            raise ValueError(f"{symbol} is a derivative without an underlying name")
        underlying = name
    elif instrument_type == InstrumentType.INDEX:
        underlying = INDEX_UNDERLYINGS.get(symbol, tradingsymbol)
    else:
        underlying = tradingsymbol
    if instrument_type in OPTION_TYPES and strike <= 0:
        raise ValueError(f"{symbol} is an option without a strike")
    if instrument_type != InstrumentType.INDEX and (lot_size < 1 or tick_size <= 0):
        raise ValueError(f"{symbol} needs a lot_size and tick_size above 0")
    known = static_instruments.static_by_symbol(symbol)
    if known is not None:
        dhan_security_id = known.dhan_security_id
    elif instrument_type == InstrumentType.INDEX:
        dhan_security_id = INDEX_DHAN_SECURITY_IDS.get(symbol, "")
    else:
        dhan_security_id = str(exchange_token) if exchange_token else ""
    return InstrumentRecord(
        symbol=symbol,
        exchange=exchange,
        segment=segment[:16],
        tradingsymbol=tradingsymbol,
        name=name,
        underlying=underlying[:32],
        instrument_type=instrument_type.value,
        expiry=expiry if instrument_type in DERIVATIVE_TYPES else None,
        strike=strike if instrument_type in OPTION_TYPES else None,
        lot_size=lot_size,
        tick_size=tick_size,
        kite_token=kite_token,
        dhan_security_id=dhan_security_id,
        fyers_symbol=fyers_symbol_for(symbol=symbol, instrument_type=instrument_type),
    )


def instruments_validate_kite_rows(
    *, rows: Iterable[Mapping[str, Any]], first_line: int = 2, progress: Progress | None = None
) -> tuple[list[InstrumentRecord], int]:
    """Every row validated (records, rows skipped); InstrumentLoadError naming the bad rows if any is unreadable.
    `first_line` numbers the rows in messages (2 for a CSV with a header)."""
    records: list[InstrumentRecord] = []
    problems: list[str] = []
    problem_count = skipped = 0
    seen_symbols: set[str] = set()
    seen_tokens: set[int] = set()
    pending = 0
    for line, row in enumerate(rows, start=first_line):
        try:
            record = instrument_record_from_kite(row)
            if record is not None and record.symbol in seen_symbols:
                raise ValueError(f"{record.symbol} appears twice")
            if record is not None and record.kite_token in seen_tokens:
                raise ValueError(f"instrument_token {record.kite_token} appears twice")
        except ValueError as error:
            problem_count += 1
            if len(problems) < _MAX_REPORTED_ERRORS:
                problems.append(f"line {line}: {error}")
            continue
        if record is None:
            skipped += 1
        else:
            seen_symbols.add(record.symbol)
            seen_tokens.add(record.kite_token)
            records.append(record)
        pending += 1
        if progress and pending >= WRITE_BATCH_SIZE:
            progress("validate", pending, None)
            pending = 0
    if progress and pending:
        progress("validate", pending, None)
    if problem_count:
        raise InstrumentLoadError(problems, total_problems=problem_count)
    if not records:
        raise InstrumentLoadError(["the dump holds no instruments we trade"])
    return records, skipped


# --- writing ----------------------------------------------------------------------------------------------------


_RECORD_FIELDS = [field.name for field in dataclasses.fields(InstrumentRecord)]
_UPDATE_FIELDS = [
    "exchange",
    "segment",
    "tradingsymbol",
    "name",
    "underlying",
    "instrument_type",
    "expiry",
    "strike",
    "lot_size",
    "tick_size",
    "kite_token",
    "dhan_security_id",
    "fyers_symbol",
    "is_active",
    "updated_at",
]


def _batches(items: list[Any]) -> Iterable[list[Any]]:
    size = WRITE_BATCH_SIZE
    for start in range(0, len(items), size):
        yield items[start : start + size]


def instrument_from_record(record: InstrumentRecord, *, now: datetime, **overrides: Any) -> Instrument:
    """An unsaved, active Instrument with the record's fields (`overrides` win)."""
    fields = {name: getattr(record, name) for name in _RECORD_FIELDS}
    return Instrument(**{**fields, **overrides}, is_active=True, updated_at=now)


def instruments_upsert(
    *, records: list[InstrumentRecord], full: bool = True, skipped: int = 0, progress: Progress | None = None
) -> LoadResult:
    """Writes validated records in one transaction: insert or update by symbol, and with `full` mark every other
    active instrument inactive. Any failure rolls the whole load back."""
    started = time.perf_counter()
    now = timezone.now()
    incoming = {record.symbol: record for record in records}
    token_owner = {record.kite_token: record.symbol for record in records if record.kite_token is not None}
    with transaction.atomic():
        existing = list(
            Instrument.objects.values_list("pk", "symbol", "kite_token", "dhan_security_id", "is_active").iterator(
                chunk_size=10_000
            )
        )
        existing_dhan = {symbol: dhan for _, symbol, _, dhan, _ in existing if dhan}
        existing_fyers = dict(Instrument.objects.exclude(fyers_symbol="").values_list("symbol", "fyers_symbol"))
        # Exchanges recycle tokens of expired contracts: free a token its new owner needs before the upsert.
        stale_token_pks = [
            pk
            for pk, symbol, token, _, _ in existing
            if token is not None and token in token_owner and token_owner[token] != symbol
        ]
        for batch in _batches(stale_token_pks):
            Instrument.objects.filter(pk__in=batch).update(kite_token=None)
        absent_pks = [pk for pk, symbol, _, _, active in existing if active and symbol not in incoming] if full else []
        for batch in _batches(absent_pks):
            Instrument.objects.filter(pk__in=batch).update(is_active=False, updated_at=now)
        objects = [
            instrument_from_record(
                record,
                now=now,
                # Dhan's and Fyers' own masters own their ids (`masters`): what Kite's dump implies only fills a gap.
                dhan_security_id=existing_dhan.get(record.symbol) or record.dhan_security_id,
                fyers_symbol=existing_fyers.get(record.symbol) or record.fyers_symbol,
            )
            for record in records
        ]
        for batch in _batches(objects):
            Instrument.objects.bulk_create(
                batch, update_conflicts=True, unique_fields=["symbol"], update_fields=_UPDATE_FIELDS
            )
            if progress:
                progress("write", len(batch), len(objects))
    existing_symbols = {symbol for _, symbol, _, _, _ in existing}
    created = sum(1 for symbol in incoming if symbol not in existing_symbols)
    return LoadResult(
        total=len(records),
        created=created,
        updated=len(records) - created,
        deactivated=len(absent_pks),
        skipped=skipped,
        seconds=time.perf_counter() - started,
    )


# --- loaders ----------------------------------------------------------------------------------------------------


def instruments_load_kite_rows(
    *, rows: Iterable[Mapping[str, Any]], full: bool = True, progress: Progress | None = None, first_line: int = 1
) -> LoadResult:
    """Loads Kite dump rows (dicts with `KITE_CSV_COLUMNS`, as strings or as the Kite SDK types them)."""
    started = time.perf_counter()
    records, skipped = instruments_validate_kite_rows(rows=rows, first_line=first_line, progress=progress)
    result = instruments_upsert(records=records, full=full, skipped=skipped, progress=progress)
    return LoadResult(**{**result.__dict__, "seconds": time.perf_counter() - started})


def instruments_load_kite_csv(
    *, source: TextIO | str | Path, full: bool = True, progress: Progress | None = None
) -> LoadResult:
    """Loads Kite's instrument dump CSV from a path or an open text file. A missing column or any bad row raises
    InstrumentLoadError and writes nothing."""
    if isinstance(source, str | Path):
        with open(source, newline="", encoding="utf-8") as handle:
            return instruments_load_kite_csv(source=handle, full=full, progress=progress)
    reader = csv.DictReader(source)
    missing = [column for column in KITE_CSV_COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise InstrumentLoadError([f"line 1: the header lacks {', '.join(missing)}"])
    return instruments_load_kite_rows(rows=reader, full=full, progress=progress, first_line=2)


def instruments_load_from_account(*, account, full: bool = True, progress: Progress | None = None) -> LoadResult:
    """Loads the instrument dump of a connected broker account (only Zerodha offers one)."""
    rows = adapter_for(account).instruments()
    return instruments_load_kite_rows(rows=rows, full=full, progress=progress)


# --- Kite CSV out ------------------------------------------------------------------------------------------------


_KITE_SEGMENT_CODES = {"NSE": 1, "NFO": 2, "CDS": 3, "BSE": 4, "BFO": 5, "MCX": 7, KITE_INDEX_SEGMENT: 9}


def _kite_number(value: Decimal | None) -> str:
    return f"{float(value or 0)!r}"


def instrument_as_kite_row(instrument: Instrument) -> dict[str, str]:
    """An Instrument as a Kite dump row (the inverse of the load, for the simulator and exports)."""
    is_index = instrument.instrument_type == InstrumentType.INDEX
    token = instrument.kite_token or 0
    return {
        "instrument_token": str(token),
        "exchange_token": str(token // 256),
        "tradingsymbol": instrument.tradingsymbol,
        "name": instrument.name,
        "last_price": "0.0",
        "expiry": instrument.expiry.isoformat() if instrument.expiry else "",
        "strike": _kite_number(instrument.strike),
        "tick_size": _kite_number(instrument.tick_size),
        "lot_size": str(instrument.lot_size),
        "instrument_type": InstrumentType.EQ.value if is_index else instrument.instrument_type,
        "segment": KITE_INDEX_SEGMENT if is_index else instrument.segment,
        "exchange": instrument.exchange,
    }


def kite_csv_write(*, rows: Iterable[Mapping[str, Any]], target: TextIO) -> int:
    """Writes rows as Kite's instrument CSV; returns the number of rows."""
    writer = csv.DictWriter(target, fieldnames=KITE_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow({column: row.get(column, "") for column in KITE_CSV_COLUMNS})
        count += 1
    return count


def kite_csv_text(*, rows: Iterable[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    kite_csv_write(rows=rows, target=buffer)
    return buffer.getvalue()
