"""Fewer morning logins: the user's consent to renewing a Fyers session with the refresh token and their PIN, the
renewal before the daily cut-off, and the notification when a user must log in by hand. Through the Fyers SDK
against the Fyers simulator."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.db import connection

from accounts.models import AuditEvent
from accounts.tests.factories import UserFactory
from algoterm.sandbox.simulators.base import SimulatorServer
from algoterm.sandbox.simulators.fyers import FyersSimulator
from brokers.gateway import adapter_for as gateway_adapter
from brokers.models import AccountStatus, Broker, BrokerAccount
from brokers.services import broker_sessions_expire_due, broker_sessions_renew

from .conftest import serving
from .test_fyers import APP_ID, REDIRECT_URI, SECRET
from .test_fyers_renew import log_in

pytestmark = pytest.mark.django_db(transaction=True)
IST = ZoneInfo("Asia/Kolkata")
BEFORE_CUTOFF = datetime(2026, 12, 8, 5, 30, tzinfo=IST)  # 30 minutes before Tuesday's 06:00 cut-off


@pytest.fixture
def server(settings) -> Iterator[SimulatorServer]:
    app = FyersSimulator()
    app.register_app(APP_ID, SECRET, redirect_uri=REDIRECT_URI)
    with serving(app) as running:
        settings.FYERS_API_URL = f"{running.url}/api/v3"
        settings.FYERS_DATA_URL = f"{running.url}/data"
        yield running


def fyers_account(server: SimulatorServer, owner) -> BrokerAccount:
    session = log_in(server)
    account = BrokerAccount(owner=owner, broker=Broker.FYERS, label="My Fyers", status=AccountStatus.CONNECTED)
    account.credentials = {"client_id": APP_ID, "secret_key": SECRET}
    account.session = {
        "access_token": session.access_token,
        "broker_user_id": session.broker_user_id,
        "extra": session.extra,
    }
    account.session_expires_at = datetime(2026, 12, 8, 6, 0, tzinfo=IST)
    account.save()
    return account


def consent(client, account: BrokerAccount, **body):
    return client.post(f"/api/brokers/{account.pk}/session-renewal", body, format="json")


def test_consent_needs_the_pin_and_is_recorded_without_it(server, trader, trader_client):
    account = fyers_account(server, trader)

    missing = consent(trader_client, account, enabled=True)
    assert missing.status_code == 400 and "pin" in missing.json()["errors"]
    assert consent(trader_client, account, enabled=True, pin="12a4").status_code == 400

    answer = consent(trader_client, account, enabled=True, pin="1234")
    assert answer.status_code == 200
    body = answer.json()
    assert body["session_renewal_consented_at"] is not None
    assert "1234" not in answer.content.decode()
    account.refresh_from_db()
    assert account.credentials["pin"] == "1234"
    with connection.cursor() as cursor:  # at rest, the PIN is encrypted with the other credentials
        cursor.execute("SELECT credentials_encrypted FROM brokers_brokeraccount WHERE id = %s", [account.pk])
        assert "1234" not in cursor.fetchone()[0]
    event = AuditEvent.objects.get(action="broker.session_renewal_consent")
    assert event.details == {"enabled": True, "with_pin": True}

    withdrawn = consent(trader_client, account, enabled=False)
    assert withdrawn.status_code == 200 and withdrawn.json()["session_renewal_consented_at"] is None
    account.refresh_from_db()
    assert "pin" not in account.credentials


def test_consent_is_refused_where_the_broker_cannot_renew_and_for_others(server, trader, trader_client, api_client):
    paper = BrokerAccount.objects.create(owner=trader, broker=Broker.PAPER, label="Paper")
    answer = consent(trader_client, paper, enabled=True)
    assert answer.status_code == 400 and answer.json()["error_code"] == "VALIDATION_ERROR"

    someone_else = fyers_account(server, UserFactory())
    assert consent(trader_client, someone_else, enabled=True, pin="1234").status_code == 404
    assert consent(api_client, someone_else, enabled=True, pin="1234").status_code == 401
    someone_else.refresh_from_db()
    assert someone_else.session_renewal_consented_at is None


def test_a_consented_session_is_renewed_before_the_cutoff_and_lasts_a_day_more(server, trader, trader_client):
    account = fyers_account(server, trader)
    assert consent(trader_client, account, enabled=True, pin="1234").status_code == 200
    old_token = account.session["access_token"]

    with time_machine.travel(datetime(2026, 12, 7, 20, 0, tzinfo=IST), tick=False):
        assert broker_sessions_renew() == {}  # not due yet: the cut-off is hours away
    with time_machine.travel(BEFORE_CUTOFF, tick=False):
        assert broker_sessions_renew() == {"renewed": 1}

    account.refresh_from_db()
    assert account.status == AccountStatus.CONNECTED
    assert account.session["access_token"] != old_token
    assert account.session["extra"]["refresh_token"]
    assert account.session_expires_at == datetime(2026, 12, 9, 6, 0, tzinfo=IST)
    # The renewed token works at the broker.
    assert gateway_adapter(account).funds().available_cash >= 0
    assert not trader.notifications.filter(kind="broker.renewal_failed").exists()


def test_a_refused_renewal_tells_the_user_once_to_log_in(server, trader, trader_client):
    account = fyers_account(server, trader)
    assert consent(trader_client, account, enabled=True, pin="9876").status_code == 200  # not the PIN Fyers has

    with time_machine.travel(BEFORE_CUTOFF, tick=False):
        assert broker_sessions_renew() == {"refused": 1}
        assert broker_sessions_renew() == {}  # not tried (nor told) again in this window

    notes = trader.notifications.filter(kind="broker.renewal_failed")
    assert notes.count() == 1 and "log in" in notes.get().title.lower()
    account.refresh_from_db()
    assert account.status == AccountStatus.CONNECTED  # the old token still works until the cut-off


def test_a_consented_fyers_session_that_expired_is_renewed_from_its_refresh_token(server, trader, trader_client):
    account = fyers_account(server, trader)
    assert consent(trader_client, account, enabled=True, pin="1234").status_code == 200

    after_cutoff = datetime(2026, 12, 8, 6, 10, tzinfo=IST)  # the renewal window was missed (the platform was down)
    with time_machine.travel(after_cutoff, tick=False):
        assert [expired.pk for expired in broker_sessions_expire_due()] == [account.pk]
        account.refresh_from_db()
        assert account.status == AccountStatus.EXPIRED and account.session["access_token"] == ""
        assert account.session["extra"]["refresh_token"]  # kept, because the owner consented
        assert broker_sessions_renew() == {"renewed": 1}

    account.refresh_from_db()
    assert account.status == AccountStatus.CONNECTED and account.session["access_token"]
    assert account.session_expires_at == datetime(2026, 12, 9, 6, 0, tzinfo=IST)
    assert gateway_adapter(account).funds().available_cash >= 0


def test_without_consent_an_expired_session_keeps_nothing(server, trader):
    account = fyers_account(server, trader)
    with time_machine.travel(datetime(2026, 12, 8, 6, 10, tzinfo=IST), tick=False):
        broker_sessions_expire_due()
        assert broker_sessions_renew() == {}
    account.refresh_from_db()
    assert account.status == AccountStatus.EXPIRED and account.session == {}
