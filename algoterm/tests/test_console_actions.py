"""The operators' console actions that call services: square off, halt and resume a user from the users page, and
re-sync the instrument master; each one's effect and its `admin.<verb>` audit row. And every model is in the admin."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.contrib import admin
from django.test import Client

from accounts.models import AuditEvent
from algoterm.models import ConfigSection, PlatformState
from brokers import instruments as broker_instruments
from brokers.models import AccountStatus, BrokerAccount
from marketdata.models import Instrument
from orders import services as order_services
from orders.models import LegRole, Order, OrderSource, OrderStatus, Position
from orders.tests.conftest import eager_tasks, instruments, market, paper, publish_quote  # noqa: F401
from orders.tests.factories import EQUITY, OPTION
from rms import services as rms_services
from rms.models import RmsEvent, RmsState, TradingState

pytestmark = pytest.mark.django_db
# Orders fill and follow-ups run on commit, and the Kite simulator's thread reads the master: those tests commit.
committing = pytest.mark.django_db(transaction=True)

USERS = "/admin/accounts/user/"
INSTRUMENTS = "/admin/marketdata/instrument/"
RESYNC = "/admin/marketdata/instrument/resync/"
OUR_APPS = {"accounts", "algoterm", "billing", "brokers", "marketdata", "orders", "rms", "strategies"}


@pytest.fixture
def console(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


@pytest.fixture
def holding(trader, paper, market, eager_tasks):  # noqa: F811
    """The trader holds 10 INFY (MIS) on paper."""
    market(EQUITY, "1500")
    spec = order_services.OrderSpec(
        account_id=paper.pk, symbol=EQUITY, side="BUY", quantity=10, order_type="MARKET", product="MIS"
    )
    assert order_services.order_place(user=trader, spec=spec).status == OrderStatus.FILLED
    return Position.objects.get(account=paper, symbol=EQUITY)


def texts(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def act(console: Client, action: str, *users, url: str = USERS):
    response = console.post(url, {"action": action, "_selected_action": [user.pk for user in users]}, follow=True)
    assert response.status_code == 200
    return response


def audits(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("occurred_at"))


# --- users ---------------------------------------------------------------------------------------------------------


@committing
def test_square_off_closes_the_users_positions_and_is_audited(console, admin_user, trader, holding):
    response = act(console, "square_off_users", trader)

    assert Position.objects.get(pk=holding.pk).quantity == 0
    closing = Order.objects.get(role=LegRole.SQUARE_OFF)
    assert (closing.side, closing.quantity, closing.status, closing.source) == ("SELL", 10, "FILLED", OrderSource.RMS)
    event = RmsEvent.objects.get(user=trader, kind=RmsEvent.Kind.SQUARE_OFF)
    assert event.actor == admin_user and event.details["placed"] == [closing.pk]
    [audit] = audits("admin.user_square_off")
    assert (audit.kind, audit.actor, audit.target_type, audit.target_id) == ("admin", admin_user, "user", trader.pk)
    assert audit.details["outcome"] == "done" and audit.details["placed"] == [closing.pk]
    assert any("1 closing order(s) placed" in text for text in texts(response)), texts(response)

    response = act(console, "square_off_users", trader)  # nothing left: reported, nothing placed
    assert Order.objects.filter(role=LegRole.SQUARE_OFF).count() == 1
    assert any("had nothing to close" in text for text in texts(response)), texts(response)


@committing
def test_halt_then_resume_from_the_users_page(console, admin_user, trader, holding):
    response = act(console, "halt_users", trader)

    state = RmsState.objects.get(user=trader, trading_day=rms_services.trading_day())
    assert (state.status, state.reason) == (TradingState.HALTED, rms_services.Reason.OPERATOR_HALT)
    assert Position.objects.get(pk=holding.pk).quantity == 0
    assert RmsEvent.objects.get(user=trader, kind=RmsEvent.Kind.BREACH).actor == admin_user
    [audit] = audits("admin.user_halt")
    assert (audit.actor, audit.target_id, audit.details) == (admin_user, trader.pk, {"outcome": "done"})
    assert any("1 user(s) halted" in text for text in texts(response)), texts(response)

    response = act(console, "halt_users", trader)  # already halted: said so, audited as such, no second breach
    assert RmsEvent.objects.filter(user=trader, kind=RmsEvent.Kind.BREACH).count() == 1
    assert audits("admin.user_halt")[-1].details == {"outcome": "already halted"}
    assert any("already halted" in text for text in texts(response)), texts(response)

    response = act(console, "resume_users", trader)
    state.refresh_from_db()
    assert state.status == TradingState.NORMAL
    assert RmsEvent.objects.get(user=trader, kind=RmsEvent.Kind.RESUME).actor == admin_user
    [audit] = audits("admin.user_resume")
    assert (audit.actor, audit.target_id, audit.details) == (admin_user, trader.pk, {"from": TradingState.HALTED})
    assert any(f"{trader.email} (was HALTED)" in text for text in texts(response)), texts(response)


def test_resuming_a_user_who_trades_normally_changes_nothing(console, trader):
    response = act(console, "resume_users", trader)
    assert not RmsEvent.objects.filter(user=trader).exists()
    assert not RmsState.objects.filter(user=trader).exists()
    assert audits("admin.user_resume") == []
    assert any("were not halted" in text for text in texts(response)), texts(response)


def test_the_users_page_offers_every_action(console):
    html = console.get(USERS).content.decode()
    for action in ("deactivate_users", "reactivate_users", "square_off_users", "halt_users", "resume_users"):
        assert f'value="{action}"' in html, action


# --- instruments -----------------------------------------------------------------------------------------------------


def test_resync_loads_the_demo_universe_without_a_zerodha_account(console, admin_user):
    page = console.get(RESYNC)
    assert page.status_code == 200 and "the generated demo universe" in page.content.decode()
    assert 'href="/admin/marketdata/instrument/resync/"' in console.get(INSTRUMENTS).content.decode()

    response = console.post(RESYNC, follow=True)

    assert response.redirect_chain[-1][0] == INSTRUMENTS
    active = Instrument.objects.filter(is_active=True).count()
    assert active > 1000 and Instrument.objects.filter(symbol="NSE:NIFTY 50").exists()
    [audit] = audits("admin.instruments_resync")
    assert audit.actor == admin_user
    assert audit.details["source"] == "demo"
    assert (audit.details["outcome"], audit.details["total"], audit.details["created"]) == ("done", active, active)
    assert any(f"{active} active, {active} new" in text for text in texts(response)), texts(response)


def test_resync_is_also_an_action_on_the_instruments_page(console, instruments):  # noqa: F811
    picked = Instrument.objects.get(symbol=OPTION)  # a test contract the demo universe does not list
    response = console.post(INSTRUMENTS, {"action": "resync_instruments", "_selected_action": [picked.pk]}, follow=True)
    assert response.status_code == 200
    picked.refresh_from_db()
    assert not picked.is_active and Instrument.objects.get(symbol=EQUITY).is_active
    assert audits("admin.instruments_resync")[0].details["source"] == "demo"
    assert any(text.startswith("Instruments re-synced from the generated demo") for text in texts(response))


def test_production_refuses_the_demo_universe(console, settings, instruments):  # noqa: F811
    settings.IS_PRODUCTION = True
    before = list(Instrument.objects.order_by("symbol").values_list("symbol", "is_active"))
    assert "No Zerodha account is connected" in console.get(RESYNC).content.decode()

    response = console.post(RESYNC, follow=True)

    assert list(Instrument.objects.order_by("symbol").values_list("symbol", "is_active")) == before
    assert audits("admin.instruments_resync") == []
    assert any("must not replace the real master" in text for text in texts(response)), texts(response)


@committing
def test_resync_reads_a_connected_zerodha_accounts_dump(console, settings, admin_user, trader):
    from algoterm.sandbox.simulators.kite import KiteSimulator
    from brokers.tests.conftest import serving

    app = KiteSimulator()
    app.register_app("console-key", "console-secret", "http://127.0.0.1/callback")
    with serving(app) as server:
        settings.KITE_ROOT_URL = server.url
        account = BrokerAccount(owner=trader, broker="zerodha", label="Kite", status=AccountStatus.CONNECTED)
        account.credentials = {"api_key": "console-key", "api_secret": "console-secret"}
        account.session = {"access_token": app.issue_session("console-key", "ZX1"), "broker_user_id": "ZX1"}
        account.save()
        assert f"Zerodha account Kite ({account.pk})" in console.get(RESYNC).content.decode()

        response = console.post(RESYNC, follow=True)

    listed = set(Instrument.objects.filter(is_active=True).values_list("symbol", flat=True))
    assert listed == {instrument.symbol for instrument in broker_instruments.DEMO_INSTRUMENTS}
    [audit] = audits("admin.instruments_resync")
    assert (audit.details["source"], audit.details["account_id"], audit.details["total"]) == (
        "zerodha",
        account.pk,
        len(listed),
    )
    assert any("re-synced from the instrument dump of Zerodha" in text for text in texts(response)), texts(response)


def test_a_failed_resync_changes_nothing_and_says_why(console, settings, trader, instruments):  # noqa: F811
    settings.KITE_ROOT_URL = "http://127.0.0.1:9"  # nothing listens there
    settings.BROKER_TIMEOUT_SECONDS = 1
    account = BrokerAccount(owner=trader, broker="zerodha", label="Kite", status=AccountStatus.CONNECTED)
    account.credentials = {"api_key": "k", "api_secret": "s"}
    account.session = {"access_token": "t", "broker_user_id": "ZX1"}
    account.save()
    before = list(Instrument.objects.order_by("symbol").values_list("symbol", "is_active"))

    response = console.post(RESYNC, follow=True)

    assert list(Instrument.objects.order_by("symbol").values_list("symbol", "is_active")) == before
    [audit] = audits("admin.instruments_resync")
    assert (audit.details["source"], audit.details["outcome"]) == ("zerodha", "failed") and audit.details["detail"]
    assert any(text.startswith("Nothing was changed") for text in texts(response)), texts(response)


def test_traders_cannot_resync(trader, instruments):  # noqa: F811
    outsider = Client()
    outsider.force_login(trader)
    assert outsider.post(RESYNC).status_code == 302
    assert Instrument.objects.count() == 5 and audits("admin.instruments_resync") == []


# --- every model in the admin -----------------------------------------------------------------------------------------


def test_every_model_of_ours_is_in_the_admin_and_its_list_renders(console):
    PlatformState.objects.create(pk=1)
    ConfigSection.objects.create(name="feed", data={"source": "simulated"})
    missing = [
        model._meta.label
        for model in apps.get_models()
        if model._meta.app_label in OUR_APPS and model not in admin.site._registry
    ]
    assert missing == []
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label in OUR_APPS:
            url = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
            assert console.get(url).status_code == 200, url
            if model_admin.search_fields:
                assert console.get(url, {"q": "x"}).status_code == 200, url


def test_platform_rows_are_read_only_in_the_admin(console):
    PlatformState.objects.create(pk=1)
    section = ConfigSection.objects.create(name="feed", data={"source": "simulated"})
    assert console.get("/admin/algoterm/platformstate/1/change/").status_code == 200
    page = console.get(f"/admin/algoterm/configsection/{section.pk}/change/").content.decode()
    assert "&quot;source&quot;: &quot;simulated&quot;" in page and 'name="_save"' not in page
    assert console.get("/admin/algoterm/configsection/add/").status_code == 403
    assert console.post(f"/admin/algoterm/configsection/{section.pk}/change/", {"name": "x"}).status_code == 403
    assert console.post(f"/admin/algoterm/configsection/{section.pk}/delete/", {"post": "yes"}).status_code == 403
    assert ConfigSection.objects.get(pk=section.pk).name == "feed"
