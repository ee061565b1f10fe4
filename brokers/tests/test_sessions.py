"""The daily session lifecycle: expiry at 06:00 IST, the beat task, reminders, and the operator command."""

from datetime import datetime, timedelta
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.utils import timezone

from accounts.models import AuditEvent, Notification
from accounts.tests.factories import UserFactory
from brokers import services, tasks
from brokers.models import AccountStatus, BrokerAccount

IST = ZoneInfo("Asia/Kolkata")
pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("now", "expires"),
    [
        (datetime(2026, 11, 23, 5, 59, tzinfo=IST), datetime(2026, 11, 23, 6, 0, tzinfo=IST)),
        (datetime(2026, 11, 23, 6, 0, tzinfo=IST), datetime(2026, 11, 24, 6, 0, tzinfo=IST)),
        (datetime(2026, 11, 23, 14, 30, tzinfo=IST), datetime(2026, 11, 24, 6, 0, tzinfo=IST)),
        (datetime(2026, 11, 23, 23, 0, tzinfo=ZoneInfo("UTC")), datetime(2026, 11, 24, 6, 0, tzinfo=IST)),
    ],
)
def test_sessions_end_at_the_next_0600_ist(now, expires):
    assert services.session_expiry_after(now) == expires


def connected_account(owner, *, expires_in: timedelta, broker: str = "zerodha") -> BrokerAccount:
    account = BrokerAccount(owner=owner, broker=broker, label="K", status=AccountStatus.CONNECTED)
    account.session = {"access_token": "t", "broker_user_id": "AB1"}
    account.session_expires_at = timezone.now() + expires_in
    account.save()
    return account


def test_the_beat_task_expires_due_sessions_once_and_tells_the_owner(trader):
    due = connected_account(trader, expires_in=timedelta(minutes=-1))
    fresh = connected_account(trader, expires_in=timedelta(hours=5))

    assert tasks.expire_sessions() == 1
    assert tasks.expire_sessions() == 0

    due.refresh_from_db()
    fresh.refresh_from_db()
    assert due.status == AccountStatus.EXPIRED and due.session == {}
    assert fresh.status == AccountStatus.CONNECTED
    assert Notification.objects.filter(user=trader, kind="broker.session_expired").count() == 1
    assert AuditEvent.objects.filter(action="broker.session_expire", target_id=due.pk).count() == 1


def test_login_reminders_go_once_per_user_with_accounts_to_log_in(trader):
    connected_account(trader, expires_in=timedelta(minutes=-1))
    connected_account(trader, expires_in=timedelta(minutes=-1))
    tasks.expire_sessions()
    happy = UserFactory()
    connected_account(happy, expires_in=timedelta(hours=3))

    assert tasks.remind_logins() == 1
    assert Notification.objects.filter(user=trader, kind="broker.login_reminder").count() == 1
    assert not Notification.objects.filter(user=happy, kind="broker.login_reminder").exists()


def test_check_sessions_command_dry_run_changes_nothing(trader):
    due = connected_account(trader, expires_in=timedelta(minutes=-1))
    out = StringIO()

    call_command("brokers_check_sessions", "--dry-run", stdout=out)

    assert "would expire" in out.getvalue() and due.pk in out.getvalue()
    due.refresh_from_db()
    assert due.status == AccountStatus.CONNECTED
    call_command("brokers_check_sessions", stdout=StringIO())
    due.refresh_from_db()
    assert due.status == AccountStatus.EXPIRED
