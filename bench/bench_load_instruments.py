"""How fast the instrument master loads: a 100k-row Kite instrument CSV through `instruments_load_kite_csv`
(validate everything, then one transaction of batched upserts), first into an empty table and then again over it,
against a naive loader (one `update_or_create` per row) timed over a 2k-row sample and extrapolated.

Runs on a throw-away PostgreSQL database (created and dropped here) on the server of DATABASE_URL, or the local
server when DATABASE_URL is not a PostgreSQL URL."""

import csv
import os
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.quick import sized  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "algoterm.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import psycopg  # noqa: E402

ROWS = sized(100_000, 4_000)
NAIVE_SAMPLE = sized(2_000, 200)
SERVER_URL = os.environ.get("DATABASE_URL", "")
if not SERVER_URL.startswith(("postgres://", "postgresql://")):
    SERVER_URL = "postgres://postgres@127.0.0.1:5432/postgres"
BENCH_DATABASE = f"bench_instruments_{os.getpid()}"


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def write_kite_csv(path: Path, rows: int) -> None:
    """`rows` option contracts in Kite's format: 500 underlyings x 2 expiries x 50 strikes x CE/PE."""
    from marketdata.instruments import KITE_CSV_COLUMNS

    expiries = (date(2026, 12, 29), date(2027, 1, 26))
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(KITE_CSV_COLUMNS)
        for number in range(rows):
            underlying = f"STOCK{number // 200:04d}"
            expiry = expiries[(number // 100) % 2]
            strike = 1000 + 10 * ((number // 2) % 50)
            option_type = "CE" if number % 2 == 0 else "PE"
            exchange_token = 5_000_000 + number
            tradingsymbol = f"{underlying}{expiry:%y}{expiry:%b}".upper() + f"{strike}{option_type}"
            writer.writerow(
                [
                    exchange_token * 256 + 2,
                    exchange_token,
                    tradingsymbol,
                    underlying,
                    "0.0",
                    (expiry + timedelta(days=0)).isoformat(),
                    f"{strike}.0",
                    "0.05",
                    "500",
                    option_type,
                    "NFO-OPT",
                    "NFO",
                ]
            )


def main() -> None:
    admin_url = _with_database(SERVER_URL, "postgres")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{BENCH_DATABASE}"')
    try:
        os.environ["DATABASE_URL"] = _with_database(SERVER_URL, BENCH_DATABASE)
        run()
    finally:
        from django.db import connections

        for connection in connections.all(initialized_only=True):
            connection.close()
            if connection.vendor == "postgresql":
                connection.close_pool()  # the pool keeps its connections open past close()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')


def run() -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from marketdata.instruments import instrument_record_from_kite, instruments_load_kite_csv
    from marketdata.models import Instrument

    call_command("migrate", verbosity=0)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "instruments.csv"
        write_kite_csv(path, ROWS)

        started = time.perf_counter()
        first = instruments_load_kite_csv(source=path)
        first_seconds = time.perf_counter() - started
        assert first.created == ROWS and Instrument.objects.count() == ROWS

        started = time.perf_counter()
        again = instruments_load_kite_csv(source=path)
        again_seconds = time.perf_counter() - started
        assert again.updated == ROWS

        with path.open(newline="") as handle:
            sample = [row for _, row in zip(range(NAIVE_SAMPLE), csv.DictReader(handle), strict=False)]
        started = time.perf_counter()
        for row in sample:
            record = instrument_record_from_kite(row)
            fields = {name: value for name, value in record.__dict__.items() if name != "symbol"}
            Instrument.objects.update_or_create(symbol=record.symbol, defaults={**fields, "is_active": True})
        naive_seconds = (time.perf_counter() - started) * ROWS / NAIVE_SAMPLE

    def line(name: str, seconds: float) -> str:
        return f"| {name:<44} | {ROWS:>7} | {seconds:8.2f} | {ROWS / seconds:>9.0f} |"

    print(f"\ninstrument load, Kite CSV, {connection.vendor} {connection.pg_version // 10000}")
    print("| loader                                       |   rows  |  seconds |   rows/s  |")
    print("|----------------------------------------------|---------|----------|-----------|")
    print(line("bulk upsert, first load (empty table)", first_seconds))
    print(line("bulk upsert, reload (every row updated)", again_seconds))
    print(line(f"naive update_or_create ({NAIVE_SAMPLE} rows, extrapolated)", naive_seconds))
    print(f"\nreload is {naive_seconds / again_seconds:.0f}x faster than row by row")


if __name__ == "__main__":
    main()
