"""Maintenance commands: emergency square-off, the market-data purge and the audit log export. A dry run changes
nothing, a real run does and is audited, and each shows its progress on stderr."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.models import AuditEvent
from accounts.tests.factories import UserFactory
from marketdata.candles import IST
from marketdata.models import Candle
from orders import services as order_services
from orders.models import LegRole, Order, OrderStatus, Position
from orders.tests.conftest import eager_tasks, instruments, market, paper, publish_quote  # noqa: F401
from orders.tests.factories import EQUITY, paper_account
from rms.models import RmsEvent

pytestmark = pytest.mark.django_db


def run(*args, **options) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


# --- emergency square-off --------------------------------------------------------------------------------------------


def buy(user, account, quantity: int) -> None:
    spec = order_services.OrderSpec(
        account_id=account.pk, symbol=EQUITY, side="BUY", quantity=quantity, order_type="MARKET", product="MIS"
    )
    assert order_services.order_place(user=user, spec=spec).status == OrderStatus.FILLED


@pytest.fixture
def two_holders(trader, paper, market, eager_tasks):  # noqa: F811
    """The trader holds 10 INFY and a second user 4 INFY, both on paper; a third user holds nothing."""
    market(EQUITY, "1500")
    other = UserFactory(email="second@example.com")
    buy(trader, paper, 10)
    buy(other, paper_account(other), 4)
    UserFactory(email="idle@example.com")
    return trader, other


def open_quantities() -> list[int]:
    return sorted(Position.objects.exclude(quantity=0).values_list("quantity", flat=True))


@pytest.mark.django_db(transaction=True)
def test_emergency_square_off_dry_run_changes_nothing(two_holders, capsys):
    trader, other = two_holders
    orders_before, audits_before = Order.objects.count(), AuditEvent.objects.count()

    out, _ = run("emergency_square_off", "--dry-run")

    assert open_quantities() == [4, 10]
    assert Order.objects.count() == orders_before and AuditEvent.objects.count() == audits_before
    assert not RmsEvent.objects.filter(kind=RmsEvent.Kind.SQUARE_OFF).exists()
    assert f"would square off {trader.email}" in out and f"would square off {other.email}" in out
    assert "idle@example.com" not in out
    assert "Dry run: 2 user(s) would be squared off; nothing changed." in out


@pytest.mark.django_db(transaction=True)
def test_emergency_square_off_closes_everyone_as_the_system(two_holders, capsys):
    trader, other = two_holders

    out, _ = run("emergency_square_off", "--reason", "exchange glitch")

    assert open_quantities() == []
    closing = Order.objects.filter(role=LegRole.SQUARE_OFF).order_by("quantity")
    assert [(o.user, o.side, o.quantity, o.status) for o in closing] == [
        (other, "SELL", 4, OrderStatus.FILLED),
        (trader, "SELL", 10, OrderStatus.FILLED),
    ]
    events = RmsEvent.objects.filter(kind=RmsEvent.Kind.SQUARE_OFF)
    assert {event.user for event in events} == {trader, other} and {event.actor for event in events} == {None}
    audits = AuditEvent.objects.filter(action="system.emergency_square_off")
    assert {audit.target_id for audit in audits} == {trader.pk, other.pk}
    assert all(
        audit.actor is None and audit.details["reason"] == "exchange glitch" and audit.details["outcome"] == "done"
        for audit in audits
    )
    assert "2 user(s) squared off: 2 closing order(s) placed, 0 pending order(s) cancelled, 0 failure(s)." in out
    progress = capsys.readouterr().err
    assert "squaring off" in progress and "2/2" in progress

    out, _ = run("emergency_square_off")  # again: nobody holds anything now
    assert "No user holds an open position" in out


def test_emergency_square_off_with_nobody_holding(trader):
    out, _ = run("emergency_square_off")
    assert "No user holds an open position; nothing to do." in out
    assert not AuditEvent.objects.filter(action="system.emergency_square_off").exists()


# --- purge_market_data ---------------------------------------------------------------------------------------------


def candle(symbol: str, start: datetime, interval: str = "1m") -> Candle:
    price = Decimal("100")
    return Candle.objects.create(
        symbol=symbol, interval=interval, start=start, open=price, high=price, low=price, close=price, volume=1
    )


@pytest.fixture
def candles():
    """Per symbol: 1-minute candles 40 and 31 days ago (old), 29 days ago and today (kept); a daily one 400 days ago."""
    today = timezone.localtime(timezone.now(), IST).date()
    made = {"old": [], "kept": []}
    for symbol in ("NSE:INFY", "NSE:SBIN", "NSE:TCS"):
        for days, bucket in ((40, "old"), (31, "old"), (29, "kept"), (0, "kept")):
            start = datetime.combine(today - timedelta(days=days), time(9, 15), tzinfo=IST)
            made[bucket].append(candle(symbol, start).pk)
        made["kept"].append(candle(symbol, datetime.combine(today - timedelta(days=400), time(0), tzinfo=IST), "1d").pk)
    return made


def test_purge_dry_run_counts_and_deletes_nothing(candles):
    out, _ = run("purge_market_data", "--older-than-days", "30", "--dry-run")
    assert Candle.objects.count() == 15
    assert "Dry run: would delete 6 1-minute candles before" in out and "(3 symbol(s)" in out
    assert not AuditEvent.objects.filter(action="system.market_data_purge").exists()


def test_purge_deletes_old_minute_candles_in_batches(candles, capsys):
    out, _ = run("purge_market_data", "--older-than-days", "30", "--batch-size", "4")

    assert sorted(Candle.objects.values_list("pk", flat=True)) == sorted(candles["kept"])
    assert "Deleted 6 1-minute candles before" in out
    [audit] = AuditEvent.objects.filter(action="system.market_data_purge")
    assert (audit.details["deleted"], audit.details["interval"]) == (6, "1m")
    ist_today = timezone.localdate(timezone=ZoneInfo("Asia/Kolkata"))
    assert audit.details["before"].startswith((ist_today - timedelta(days=30)).isoformat())
    progress = capsys.readouterr().err
    assert "purging candles" in progress and "6/6" in progress

    out, _ = run("purge_market_data", "--older-than-days", "30")
    assert "nothing to purge" in out and Candle.objects.count() == 9


def test_purge_refuses_to_touch_today(candles):
    with pytest.raises(CommandError, match="at least 1"):
        run("purge_market_data", "--older-than-days", "0")
    assert Candle.objects.count() == 15


# --- export_audit_log ------------------------------------------------------------------------------------------------


@pytest.fixture
def audit_log(admin_user, trader):
    """Five events on three IST days, of three kinds (made as they are stored: the table takes inserts only)."""
    day = timezone.localtime(timezone.now(), IST).date()
    rows = [
        ("auth.login", trader, day - timedelta(days=2), {"via": "password"}),
        ("admin.user_deactivate", admin_user, day - timedelta(days=1), {"reason": 'fraud, "quoted"'}),
        ("auth.login", admin_user, day - timedelta(days=1), {}),
        ("rms.breach", None, day, {"mtm": "-5000.00"}),
        ("auth.logout", trader, day, {}),
    ]
    return [
        AuditEvent.objects.create(
            kind=action.split(".")[0],
            action=action,
            actor=actor,
            target_type="user",
            target_id=trader.pk,
            ip="10.1.2.3" if actor else None,
            details=details,
            occurred_at=datetime.combine(on, time(10, index), tzinfo=IST),
        )
        for index, (action, actor, on, details) in enumerate(rows)
    ]


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_export_writes_every_event_oldest_first(audit_log, admin_user, trader, tmp_path, capsys):
    target = tmp_path / "audit.csv"

    _, err = run("export_audit_log", "--output", str(target))

    with open(target, newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    assert header == [
        "occurred_at",
        "id",
        "kind",
        "action",
        "actor_id",
        "actor_email",
        "target_type",
        "target_id",
        "ip",
        "request_id",
        "details",
    ]
    rows = read_csv(target)
    assert [row["id"] for row in rows] == [event.pk for event in audit_log]
    assert [row["action"] for row in rows] == [event.action for event in audit_log]
    first, deactivation, breach = rows[0], rows[1], rows[3]
    assert datetime.fromisoformat(first["occurred_at"]) == audit_log[0].occurred_at
    assert first["occurred_at"].endswith("+00:00")  # stored UTC, written as such
    assert (first["actor_id"], first["actor_email"], first["target_id"], first["ip"]) == (
        trader.pk,
        trader.email,
        trader.pk,
        "10.1.2.3",
    )
    assert json.loads(deactivation["details"]) == {"reason": 'fraud, "quoted"'}
    assert deactivation["actor_email"] == admin_user.email
    assert (breach["actor_id"], breach["actor_email"], breach["ip"]) == ("", "", "")
    assert "5 audit event(s) exported" in err
    progress = capsys.readouterr().err
    assert "exporting audit log" in progress and "5/5" in progress
    [export] = AuditEvent.objects.filter(action="system.audit_export")
    assert export.details == {"kind": None, "from": None, "to": None, "rows": 5}
    assert not list(tmp_path.glob(".*.part"))


def test_export_filters_by_kind_and_ist_days(audit_log, tmp_path):
    day = timezone.localtime(timezone.now(), IST).date()
    target = tmp_path / "auth.csv"

    run("export_audit_log", "--output", str(target), "--kind", "auth", "--from", str(day - timedelta(days=1)))
    assert [row["action"] for row in read_csv(target)] == ["auth.login", "auth.logout"]

    run("export_audit_log", "--output", str(target), "--to", str(day - timedelta(days=1)), "--no-progress")
    assert [row["action"] for row in read_csv(target)] == ["auth.login", "admin.user_deactivate", "auth.login"]

    run("export_audit_log", "--output", str(target), "--kind", "billing")
    assert read_csv(target) == [] and open(target).read().startswith("occurred_at,id,kind,")


def test_export_to_stdout_and_bad_arguments(audit_log, tmp_path):
    out, _ = run("export_audit_log", "--output", "-", "--kind", "rms", "--no-progress")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["action"] for row in rows] == ["rms.breach"]

    with pytest.raises(CommandError, match="--from is after --to"):
        run("export_audit_log", "--output", str(tmp_path / "x.csv"), "--from", "2026-03-02", "--to", "2026-03-01")
    with pytest.raises(CommandError, match="no such directory"):
        run("export_audit_log", "--output", str(tmp_path / "missing" / "x.csv"))
    with pytest.raises(CommandError, match="invalid choice"):
        run("export_audit_log", "--output", "-", "--kind", "nonsense")
    assert not (tmp_path / "x.csv").exists()
