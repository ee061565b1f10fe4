"""Every broker's published instrument master merged into the one Instrument master, and the daily refresh that
keeps yesterday's master when a download fails or looks wrong.

Kite's dump stays the reference (`loader`): it owns the Kite tokens and, on a full load, retires what it no longer
lists. Dhan's scrip master and Fyers' symbol master are merged by our canonical symbol: each sets only its own
broker's id on the instruments it lists (Dhan's security id, Fyers' symbol), creates the instruments no master had
yet (a deployment without a Zerodha account still gets its universe), and takes its id off the instruments it no
longer lists. Derivatives get Kite's contract tradingsymbols from their underlying, expiry, strike and type; a
contract is monthly when it is the last expiry of its underlying in that month, as Kite names them.

A refresh (`instrument_master_refresh`: beat before the open, `manage.py load_instruments --broker`) downloads,
checks and writes in that order and writes nothing unless the download passes: the master must not shrink by more
than INSTRUMENT_MASTER_MAX_DROP against the instruments the broker lists now, and must still list the indices
(INSTRUMENT_MASTER_REQUIRED_INDICES) it listed before. Each attempt is one InstrumentMasterLoad row; a failed or
refused one is retried by the task and raises an alert until a load succeeds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from brokers.gateway import adapter_for, instrument_master_fetch
from brokers.models import Broker, BrokerAccount
from brokers.protocol import EXCHANGES, BrokerError, BrokerInstrument
from brokers.selectors import broker_account_any_connected, broker_accounts_market_data
from brokers.symbols import INDEX_FROM_FYERS
from marketdata.instruments.expiries import kite_future_tradingsymbol, kite_option_tradingsymbol
from marketdata.instruments.loader import (
    DERIVATIVE_TYPES,
    INDEX_DHAN_SECURITY_IDS,
    INDEX_UNDERLYINGS,
    OPTION_TYPES,
    InstrumentLoadError,
    InstrumentRecord,
    LoadResult,
    Progress,
    fyers_symbol_for,
    instrument_from_record,
    instruments_upsert,
    instruments_validate_kite_rows,
)
from marketdata.models import Instrument, InstrumentMasterLoad, InstrumentType

logger = logging.getLogger(__name__)

MASTER_BROKERS = (Broker.ZERODHA.value, Broker.DHAN.value, Broker.FYERS.value)
# The Instrument column each merged master owns.
BROKER_ID_FIELD = {Broker.DHAN.value: "dhan_security_id", Broker.FYERS.value: "fyers_symbol"}
_INDEX_FROM_DHAN = {security_id: symbol for symbol, security_id in INDEX_DHAN_SECURITY_IDS.items()}
_PAISE = Decimal("0.01")
_WRITE_BATCH = 2000


class MasterRefused(Exception):
    """The download arrived but looks wrong; yesterday's master is kept. `reasons` say why."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("; ".join(reasons))


# --- broker rows -> records ---------------------------------------------------------------------------------------


def _monthly_expiries(rows: Iterable[BrokerInstrument]) -> set[tuple[str, str, date]]:
    """(exchange, underlying, expiry) of each underlying's last expiry in a month: the contracts Kite names monthly."""
    last: dict[tuple[str, str, int, int], date] = {}
    for row in rows:
        if row.expiry is None or row.instrument_type not in DERIVATIVE_TYPES:
            continue
        key = (row.exchange, row.underlying, row.expiry.year, row.expiry.month)
        if key not in last or row.expiry > last[key]:
            last[key] = row.expiry
    return {(exchange, underlying, expiry) for (exchange, underlying, _, _), expiry in last.items()}


def canonical_symbol(*, broker: str, row: BrokerInstrument, monthly: set[tuple[str, str, date]]) -> str:
    """Our `EXCHANGE:TRADINGSYMBOL` for a broker's master row; ValueError when the row cannot name one."""
    if row.instrument_type == InstrumentType.INDEX:
        known = _INDEX_FROM_DHAN.get(row.broker_id) if broker == Broker.DHAN else INDEX_FROM_FYERS.get(row.broker_id)
        return known or f"{row.exchange}:{row.tradingsymbol}"
    if row.instrument_type == InstrumentType.EQ:
        return f"{row.exchange}:{row.tradingsymbol}"
    if not row.underlying or row.expiry is None:
        raise ValueError(f"{row.broker_id} is a {row.instrument_type} without an underlying or expiry")
    if row.instrument_type == InstrumentType.FUT:
        return f"{row.exchange}:{kite_future_tradingsymbol(underlying=row.underlying, expiry=row.expiry)}"
    if row.strike is None or row.strike <= 0:
        raise ValueError(f"{row.broker_id} is an option without a strike")
    tradingsymbol = kite_option_tradingsymbol(
        underlying=row.underlying,
        expiry=row.expiry,
        strike=row.strike,
        option_type=row.instrument_type,
        monthly=(row.exchange, row.underlying, row.expiry) in monthly,
    )
    return f"{row.exchange}:{tradingsymbol}"


def instrument_records_from_master(
    *, broker: str, rows: list[BrokerInstrument]
) -> tuple[list[InstrumentRecord], int, list[str]]:
    """(records, rows skipped, problems) of a Dhan or Fyers master. Rows of exchanges or types we do not trade are
    skipped; rows that cannot be read are counted as problems (a master of millions of rows always has a few odd
    ones: they are reported, not fatal) and the first duplicate of a symbol wins."""
    monthly = _monthly_expiries(rows)
    records: dict[str, InstrumentRecord] = {}
    skipped = 0
    problems: list[str] = []
    for row in rows:
        if row.exchange not in EXCHANGES or row.instrument_type not in InstrumentType.values:
            skipped += 1
            continue
        try:
            symbol = canonical_symbol(broker=broker, row=row, monthly=monthly)
            if len(symbol) > 64 or not row.broker_id:
                raise ValueError(f"{symbol!r} is too long or has no {broker} id")
        except ValueError as error:
            problems.append(str(error))
            continue
        if symbol in records:
            continue
        exchange, _, tradingsymbol = symbol.partition(":")
        instrument_type = InstrumentType(row.instrument_type)
        is_derivative = instrument_type in DERIVATIVE_TYPES
        if is_derivative:
            underlying = row.underlying
        elif instrument_type == InstrumentType.INDEX:
            underlying = INDEX_UNDERLYINGS.get(symbol, tradingsymbol)
        else:
            underlying = tradingsymbol
        records[symbol] = InstrumentRecord(
            symbol=symbol,
            exchange=exchange,
            segment=_segment(exchange, instrument_type),
            tradingsymbol=tradingsymbol[:48],
            name=(row.name or row.underlying or tradingsymbol)[:120],
            underlying=underlying[:32],
            instrument_type=instrument_type.value,
            expiry=row.expiry if is_derivative else None,
            strike=row.strike.quantize(_PAISE, rounding=ROUND_HALF_UP) if instrument_type in OPTION_TYPES else None,
            lot_size=max(1, int(row.lot_size or 1)),
            tick_size=row.tick_size if row.tick_size and row.tick_size > 0 else Decimal("0.05"),
            kite_token=None,
            dhan_security_id=row.broker_id if broker == Broker.DHAN else "",
            fyers_symbol=row.broker_id if broker == Broker.FYERS else "",
        )
    return list(records.values()), skipped, problems


def _segment(exchange: str, instrument_type: InstrumentType) -> str:
    """Kite's segment names, so instruments look alike whichever master created them."""
    if instrument_type == InstrumentType.INDEX:
        return "INDICES"
    if instrument_type == InstrumentType.EQ:
        return exchange
    return f"{exchange}-{'FUT' if instrument_type == InstrumentType.FUT else 'OPT'}"


# --- merging ------------------------------------------------------------------------------------------------------


def instruments_merge_master(
    *, broker: str, records: list[InstrumentRecord], progress: Progress | None = None
) -> LoadResult:
    """Writes a Dhan or Fyers master in one transaction: its id on every instrument it lists (created when new), and
    off every instrument it no longer lists. Kite's fields (tokens, names, lot sizes) are never overwritten."""
    field = BROKER_ID_FIELD[broker]
    started = time.perf_counter()
    now = timezone.now()
    incoming = {record.symbol: record for record in records}
    with transaction.atomic():
        existing = {
            symbol: (pk, broker_id)
            for pk, symbol, broker_id in Instrument.objects.values_list("pk", "symbol", field).iterator(
                chunk_size=10_000
            )
        }
        changed = [
            Instrument(pk=existing[symbol][0], **{field: getattr(record, field)}, is_active=True, updated_at=now)
            for symbol, record in incoming.items()
            if symbol in existing and existing[symbol][1] != getattr(record, field)
        ]
        for start in range(0, len(changed), _WRITE_BATCH):
            Instrument.objects.bulk_update(changed[start : start + _WRITE_BATCH], [field, "is_active", "updated_at"])
        new = [
            instrument_from_record(
                record,
                now=now,
                kite_token=None,
                # An instrument Fyers did not list yet gets our best guess at its Fyers symbol; Fyers' own wins later.
                fyers_symbol=record.fyers_symbol
                or fyers_symbol_for(symbol=record.symbol, instrument_type=record.instrument_type),
            )
            for symbol, record in incoming.items()
            if symbol not in existing
        ]
        for start in range(0, len(new), _WRITE_BATCH):
            Instrument.objects.bulk_create(new[start : start + _WRITE_BATCH])
            if progress:
                progress("write", len(new[start : start + _WRITE_BATCH]), len(new))
        dropped = [pk for symbol, (pk, broker_id) in existing.items() if broker_id and symbol not in incoming]
        # Fyers symbols are guessed for every instrument; only the ones Fyers' master set are its to take back.
        cleared = 0
        if broker == Broker.DHAN:
            for start in range(0, len(dropped), _WRITE_BATCH):
                cleared += Instrument.objects.filter(pk__in=dropped[start : start + _WRITE_BATCH]).update(
                    dhan_security_id="", updated_at=now
                )
        retired = _retire_expired(today=timezone.localdate(now))
    return LoadResult(
        total=len(records),
        created=len(new),
        updated=len(changed),
        deactivated=cleared + retired,
        skipped=0,
        seconds=time.perf_counter() - started,
    )


def _retire_expired(*, today: date) -> int:
    """Contracts past their expiry are inactive whichever master created them (Kite's full load does the same)."""
    return Instrument.objects.filter(is_active=True, expiry__lt=today).update(is_active=False)


# --- the guard ----------------------------------------------------------------------------------------------------


def _listed_now(broker: str) -> Q:
    if broker == Broker.ZERODHA:
        return Q(is_active=True, kite_token__isnull=False)
    return Q(is_active=True) & ~Q(**{BROKER_ID_FIELD[broker]: ""})


def instrument_master_check(*, broker: str, records: list[InstrumentRecord]) -> list[str]:
    """Why a downloaded master must not replace the one we have (empty when it may). The first load of a broker
    has nothing to compare with and passes when it is not empty."""
    reasons: list[str] = []
    if not records:
        return ["the download lists no instruments we trade"]
    listed = Instrument.objects.filter(_listed_now(broker))
    if (
        broker == Broker.FYERS
        and not InstrumentMasterLoad.objects.filter(broker=broker, outcome=InstrumentMasterLoad.Outcome.LOADED).exists()
    ):
        return []  # until Fyers' own master has loaded once, its column holds only our guesses
    before = listed.count()
    max_drop = settings.INSTRUMENT_MASTER_MAX_DROP
    if before and len(records) < before * (1 - max_drop):
        reasons.append(
            f"it lists {len(records)} instruments where we have {before} from {broker} "
            f"(a drop of {1 - len(records) / before:.0%}, more than the {max_drop:.0%} allowed)"
        )
    incoming = {record.symbol for record in records}
    required = set(settings.INSTRUMENT_MASTER_REQUIRED_INDICES)
    had = set(listed.filter(symbol__in=required).values_list("symbol", flat=True))
    missing = sorted(had - incoming)
    if missing:
        reasons.append(f"it lacks the indices {', '.join(missing)}")
    return reasons


# --- the refresh --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MasterDownload:
    records: list[InstrumentRecord]
    skipped: int
    problems: list[str]


def master_account(*, broker: str) -> BrokerAccount | None:
    """Kite's dump needs a session: the broker's designated market-data account, else any connected one."""
    designated = broker_accounts_market_data(broker=broker)
    return designated[0] if designated else broker_account_any_connected(broker=broker)


def instrument_master_download(*, broker: str, account: BrokerAccount | None = None) -> MasterDownload:
    """The broker's master as records (validated; nothing written). BrokerError when the download fails,
    InstrumentLoadError when Kite's dump has unreadable rows."""
    if broker == Broker.ZERODHA:
        account = account or master_account(broker=broker)
        if account is None:
            raise InstrumentLoadError(["no connected Zerodha account to download Kite's instrument dump with"])
        records, skipped = instruments_validate_kite_rows(rows=adapter_for(account).instruments(), first_line=1)
        return MasterDownload(records, skipped, [])
    rows = instrument_master_fetch(broker=broker)
    records, skipped, problems = instrument_records_from_master(broker=broker, rows=rows)
    return MasterDownload(records, skipped, problems)


def instrument_master_refresh(
    *,
    broker: str,
    account: BrokerAccount | None = None,
    attempt: int = 1,
    force: bool = False,
    progress: Progress | None = None,
) -> InstrumentMasterLoad:
    """Download, check and load one broker's master; the returned row says what happened. A failed download or a
    refused master changes no instrument (the row says why); `force` skips the guard, not the validation."""
    if broker not in MASTER_BROKERS:
        raise ValueError(f"{broker!r} publishes no instrument master we load")
    load = InstrumentMasterLoad.objects.create(
        broker=broker, attempt=attempt, outcome=InstrumentMasterLoad.Outcome.RUNNING
    )
    try:
        download = instrument_master_download(broker=broker, account=account)
        reasons = [] if force else instrument_master_check(broker=broker, records=download.records)
        if reasons:
            raise MasterRefused(reasons)
        if broker == Broker.ZERODHA:
            result = instruments_upsert(
                records=download.records, full=True, skipped=download.skipped, progress=progress
            )
        else:
            result = instruments_merge_master(broker=broker, records=download.records, progress=progress)
    except MasterRefused as refused:
        return _finish(load, InstrumentMasterLoad.Outcome.KEPT, f"Kept the previous master: {refused}.")
    except BrokerError as error:
        return _finish(load, InstrumentMasterLoad.Outcome.FAILED, f"The download failed: {error.detail}")
    except InstrumentLoadError as error:
        return _finish(load, InstrumentMasterLoad.Outcome.FAILED, f"The master is unreadable: {error}")
    note = (
        f"{len(download.problems)} unreadable rows left out, e.g. {download.problems[0]}" if download.problems else ""
    )
    return _finish(
        load,
        InstrumentMasterLoad.Outcome.LOADED,
        note,
        rows=result.total,
        created=result.created,
        updated=result.updated,
        removed=result.deactivated,
        skipped=download.skipped,
    )


def _finish(load: InstrumentMasterLoad, outcome: str, message: str, **counts: int) -> InstrumentMasterLoad:
    load.outcome = outcome
    load.message = message[:1000]
    load.finished_at = timezone.now()
    for name, value in counts.items():
        setattr(load, name, value)
    load.save()
    log = logger.info if outcome == InstrumentMasterLoad.Outcome.LOADED else logger.warning
    log("%s instrument master (attempt %d): %s %s", load.broker, load.attempt, outcome, message)
    return load


def instrument_master_failing() -> dict[str, InstrumentMasterLoad]:
    """The brokers whose latest finished refresh did not load, with that attempt (for the alert)."""
    failing = {}
    finished = InstrumentMasterLoad.objects.exclude(outcome=InstrumentMasterLoad.Outcome.RUNNING)
    for broker in MASTER_BROKERS:
        latest = finished.filter(broker=broker).order_by("-started_at", "-id").first()
        if latest is not None and latest.outcome != InstrumentMasterLoad.Outcome.LOADED:
            failing[broker] = latest
    return failing


def instrument_master_brokers_due() -> list[str]:
    """The brokers the daily refresh loads: Dhan and Fyers publish theirs openly; Kite's needs a connected account."""
    due = [broker for broker in MASTER_BROKERS if broker in settings.INSTRUMENT_MASTER_BROKERS]
    return [broker for broker in due if broker != Broker.ZERODHA or master_account(broker=broker) is not None]


__all__ = [
    "MASTER_BROKERS",
    "MasterRefused",
    "canonical_symbol",
    "instrument_master_brokers_due",
    "instrument_master_check",
    "instrument_master_failing",
    "instrument_master_refresh",
    "instrument_records_from_master",
    "instruments_merge_master",
]
