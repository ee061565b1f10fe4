"""The operators' risk pages: profiles edited through the profile service (its validation shown on the form, its
audit kept), the RMS event log and daily states read-only, and the halt and resume actions going through the
services."""

from __future__ import annotations

from datetime import time, timedelta
from decimal import Decimal

import pytest
from django.test import Client

from accounts.models import AuditEvent
from algoterm.api.errors import RiskRejected
from orders import services as order_services
from orders.models import LegRole, Order, OrderSource, OrderStatus, Position
from orders.tests.conftest import eager_tasks, instruments, market, paper, publish_quote  # noqa: F401
from orders.tests.factories import EQUITY
from rms import services
from rms.models import RiskProfile, RmsEvent, RmsState, TradingState

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def console(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


@pytest.fixture
def holding(trader, paper, market, eager_tasks):  # noqa: F811
    """The trader holds 10 INFY (MIS) on paper, bought at 1500; today's risk state exists."""
    market(EQUITY, "1500")
    spec = order_services.OrderSpec(
        account_id=paper.pk, symbol=EQUITY, side="BUY", quantity=10, order_type="MARKET", product="MIS"
    )
    assert order_services.order_place(user=trader, spec=spec).status == OrderStatus.FILLED
    assert Position.objects.get(account=paper, symbol=EQUITY).quantity == 10
    return services.state_today(user_id=trader.pk)


def profile_form(profile: RiskProfile, **changes) -> dict:
    """The change form as the admin page posts it (empty boxes as empty strings, the kill switch unticked)."""
    data = {}
    for name in services.PROFILE_FIELDS:
        value = getattr(profile, name)
        if name in ("allowed_products", "allowed_segments"):
            value = "[]" if not value else str(value).replace("'", '"')
        data[name] = "" if value is None else value
    data.pop("kill_switch")
    data.update(changes)
    return data


def texts(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_pages_render_for_an_admin(console, trader, holding):
    profile = services.profile_get_or_create(user=trader)
    services.user_halt(actor=trader, user=trader)
    event = RmsEvent.objects.filter(user=trader, kind=RmsEvent.Kind.BREACH).get()
    for url in (
        "/admin/rms/riskprofile/",
        f"/admin/rms/riskprofile/?q={trader.email}&kill_switch__exact=0",
        f"/admin/rms/riskprofile/{profile.pk}/change/",
        "/admin/rms/riskprofile/add/",
        "/admin/rms/rmsevent/",
        f"/admin/rms/rmsevent/?q={trader.email}&kind__exact=breach&reason__exact=OPERATOR_HALT",
        f"/admin/rms/rmsevent/{event.pk}/change/",
        "/admin/rms/rmsstate/",
        f"/admin/rms/rmsstate/?q={trader.email}&status__exact=HALTED",
        f"/admin/rms/rmsstate/{holding.pk}/change/",
    ):
        response = console.get(url)
        assert response.status_code == 200, url
    assert trader.email in console.get("/admin/rms/riskprofile/").content.decode()
    events = console.get("/admin/rms/rmsevent/").content.decode()
    assert "OPERATOR_HALT" in events and "delete_selected" not in events
    states = console.get("/admin/rms/rmsstate/").content.decode()
    assert "halt_users" in states and "resume_users" in states and "delete_selected" not in states
    # Events and states are the engine's: the admin can only look.
    assert console.get("/admin/rms/rmsevent/add/").status_code == 403
    assert console.post(f"/admin/rms/rmsevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert console.get("/admin/rms/rmsstate/add/").status_code == 403
    assert console.post(f"/admin/rms/rmsstate/{holding.pk}/change/", {"status": "NORMAL"}).status_code == 403
    assert RmsState.objects.get(pk=holding.pk).status == TradingState.HALTED
    assert 'name="_save"' not in console.get(f"/admin/rms/rmsstate/{holding.pk}/change/").content.decode()


def test_a_trader_gets_no_access(trader, holding):
    outsider = Client()
    outsider.force_login(trader)
    profile = services.profile_get_or_create(user=trader)
    for url in (
        "/admin/rms/riskprofile/",
        f"/admin/rms/riskprofile/{profile.pk}/change/",
        "/admin/rms/rmsevent/",
        "/admin/rms/rmsstate/",
    ):
        assert outsider.get(url).status_code == 302, url  # to the admin login
    response = outsider.post("/admin/rms/rmsstate/", {"action": "halt_users", "_selected_action": [holding.pk]})
    assert response.status_code == 302
    assert RmsState.objects.get(pk=holding.pk).status == TradingState.NORMAL
    assert Position.objects.get(user=trader, symbol=EQUITY).quantity == 10


def test_breached_today_filter(console, trader, admin_user, holding):
    from accounts.tests.factories import UserFactory

    calm = services.state_today(user_id=UserFactory(email="calm@example.com").pk)
    yesterday = RmsState.objects.create(
        user=UserFactory(email="yesterday@example.com"),
        trading_day=services.trading_day() - timedelta(days=1),
        status=TradingState.HALTED,
        reason=services.Reason.DAILY_LOSS_LIMIT_HIT,
    )
    services.user_halt(actor=admin_user, user=trader)

    response = console.get("/admin/rms/rmsstate/", {"breached_today": "yes"})

    assert response.status_code == 200
    shown = {state.pk for state in response.context["cl"].result_list}
    assert shown == {holding.pk}
    assert calm.pk not in shown and yesterday.pk not in shown
    everything = console.get("/admin/rms/rmsstate/")
    assert {state.pk for state in everything.context["cl"].result_list} == {holding.pk, calm.pk, yesterday.pk}


def test_halt_action_halts_and_squares_off_a_paper_position(console, admin_user, trader, paper, holding):  # noqa: F811
    response = console.post(
        "/admin/rms/rmsstate/", {"action": "halt_users", "_selected_action": [holding.pk]}, follow=True
    )

    assert response.status_code == 200
    state = RmsState.objects.get(pk=holding.pk)
    assert (state.status, state.reason, state.square_off_pending) == (
        TradingState.HALTED,
        services.Reason.OPERATOR_HALT,
        False,
    )
    assert Position.objects.get(account=paper, symbol=EQUITY).quantity == 0
    closing = Order.objects.get(role=LegRole.SQUARE_OFF)
    assert (closing.user, closing.side, closing.quantity, closing.status, closing.source) == (
        trader,
        "SELL",
        10,
        OrderStatus.FILLED,
        OrderSource.RMS,
    )
    breach = RmsEvent.objects.get(user=trader, kind=RmsEvent.Kind.BREACH)
    assert (breach.reason, breach.actor) == (services.Reason.OPERATOR_HALT, admin_user)
    assert RmsEvent.objects.get(user=trader, kind=RmsEvent.Kind.SQUARE_OFF).details["placed"] == [closing.pk]
    assert AuditEvent.objects.filter(action="rms.breach", actor=admin_user, target_id=trader.pk).exists()
    assert any("1 user(s) halted" in text for text in texts(response)), texts(response)

    # Again: already halted, nothing placed twice.
    response = console.post(
        "/admin/rms/rmsstate/", {"action": "halt_users", "_selected_action": [holding.pk]}, follow=True
    )
    assert Order.objects.filter(role=LegRole.SQUARE_OFF).count() == 1
    assert any("already halted" in text for text in texts(response)), texts(response)
    # A halted user's new entries are refused.
    with pytest.raises(RiskRejected):
        order_services.order_place(
            user=trader,
            spec=order_services.OrderSpec(
                account_id=paper.pk, symbol=EQUITY, side="BUY", quantity=1, order_type="MARKET", product="MIS"
            ),
        )


def test_resume_action_sets_normal(console, admin_user, trader, holding):
    services.user_halt(actor=admin_user, user=trader)
    assert RmsState.objects.get(pk=holding.pk).status == TradingState.HALTED

    response = console.post(
        "/admin/rms/rmsstate/", {"action": "resume_users", "_selected_action": [holding.pk]}, follow=True
    )

    assert response.status_code == 200
    state = RmsState.objects.get(pk=holding.pk)
    assert (state.status, state.reason, state.square_off_pending) == (TradingState.NORMAL, "", False)
    resume = RmsEvent.objects.get(user=trader, kind=RmsEvent.Kind.RESUME)
    assert resume.actor == admin_user and resume.details["from"] == TradingState.HALTED
    assert AuditEvent.objects.filter(action="rms.resume", actor=admin_user, target_id=trader.pk).exists()
    assert any(f"{trader.email} (was HALTED)" in text for text in texts(response)), texts(response)

    # Nothing to resume: reported, not recorded again.
    response = console.post(
        "/admin/rms/rmsstate/", {"action": "resume_users", "_selected_action": [holding.pk]}, follow=True
    )
    assert RmsEvent.objects.filter(user=trader, kind=RmsEvent.Kind.RESUME).count() == 1
    assert any("were not halted" in text for text in texts(response)), texts(response)


def test_an_inconsistent_profile_edit_shows_errors_and_changes_nothing(console, trader):
    profile = services.profile_get_or_create(user=trader)
    before = {name: getattr(profile, name) for name in services.PROFILE_FIELDS}

    response = console.post(
        f"/admin/rms/riskprofile/{profile.pk}/change/",
        profile_form(profile, max_daily_loss="-5", profit_lock_at="2000", profit_lock_amount="2500"),
    )

    assert response.status_code == 200  # the form again, with the service's reasons on the fields
    errors = response.context["adminform"].form.errors
    assert errors["max_daily_loss"] == ["Must be positive; leave it empty to turn the rule off."]
    assert errors["profit_lock_amount"] == ["The locked profit must be less than the MTM that locks it."]
    profile.refresh_from_db()
    assert {name: getattr(profile, name) for name in services.PROFILE_FIELDS} == before
    assert not RmsEvent.objects.filter(kind=RmsEvent.Kind.CONFIG).exists()
    assert not AuditEvent.objects.filter(action="rms.config").exists()


def test_a_profile_edit_goes_through_the_service(console, admin_user, trader):
    profile = services.profile_get_or_create(user=trader)

    response = console.post(
        f"/admin/rms/riskprofile/{profile.pk}/change/",
        profile_form(profile, max_daily_loss="5000", daily_profit_target="9000", allowed_products='["MIS"]'),
    )

    assert response.status_code == 302, response.context["adminform"].form.errors
    profile.refresh_from_db()
    assert (profile.max_daily_loss, profile.daily_profit_target, profile.allowed_products) == (
        Decimal("5000"),
        Decimal("9000"),
        ["MIS"],
    )
    config = RmsEvent.objects.get(user=trader, kind=RmsEvent.Kind.CONFIG)
    assert config.actor == admin_user
    assert config.details == {
        "max_daily_loss": "5000",
        "daily_profit_target": "9000",
        "allowed_products": "['MIS']",
    }
    audit = AuditEvent.objects.get(action="rms.config", actor=admin_user)
    assert audit.target_id == trader.pk and audit.details["max_daily_loss"] == "5000"


def test_an_account_override_is_judged_with_what_it_inherits(console, trader, paper):  # noqa: F811
    services.profile_update(
        actor=trader,
        user=trader,
        data={
            "trading_window_start": time(9, 15),
            "trading_window_end": time(15, 30),
            "auto_square_off_time": time(15, 15),
        },
    )
    form = {
        "user": trader.pk,
        "account": paper.pk,
        **{name: "" for name in services.PROFILE_FIELDS if name != "kill_switch"},
        "allowed_products": "[]",
        "allowed_segments": "[]",
    }

    # A window that closes before the inherited square-off time is refused, and no override is created.
    response = console.post(
        "/admin/rms/riskprofile/add/", {**form, "trading_window_start": "09:15", "trading_window_end": "15:00"}
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["auto_square_off_time"] == ["Must fall inside the trading window."]
    assert not RiskProfile.objects.filter(user=trader, account=paper).exists()

    # MTM rules belong to the user's profile, never to one account.
    response = console.post("/admin/rms/riskprofile/add/", {**form, "max_daily_loss": "1000"})
    assert response.status_code == 200 and "max_daily_loss" in response.context["adminform"].form.errors

    response = console.post(
        "/admin/rms/riskprofile/add/", {**form, "trading_window_start": "09:30", "trading_window_end": "15:20"}
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    override = RiskProfile.objects.get(user=trader, account=paper)
    assert override.trading_window_end == time(15, 20) and override.auto_square_off_time is None  # inherits it
    assert services.limits_for(user=trader, account=paper).auto_square_off_time == time(15, 15)
    assert RmsEvent.objects.filter(user=trader, kind=RmsEvent.Kind.CONFIG).count() == 2


def test_a_refusal_at_save_time_is_reported_not_logged_as_a_change(console, trader, monkeypatch):
    """Should the profile change between the form's check and the save, the service's refusal is what counts."""
    from django.contrib.admin.models import LogEntry

    from algoterm.api.errors import ValidationFailed

    profile = services.profile_get_or_create(user=trader)

    def refuse(**kwargs):
        raise ValidationFailed("These risk settings are inconsistent.", errors={"max_daily_loss": ["Too late."]})

    monkeypatch.setattr(services, "profile_update", refuse)
    response = console.post(
        f"/admin/rms/riskprofile/{profile.pk}/change/", profile_form(profile, max_daily_loss="5000"), follow=True
    )

    assert response.redirect_chain[-1][0].endswith(f"/admin/rms/riskprofile/{profile.pk}/change/")
    assert any(text.startswith("Nothing was saved.") and "Too late." in text for text in texts(response))
    assert not any("was changed successfully" in text for text in texts(response))
    assert not LogEntry.objects.exists()
    profile.refresh_from_db()
    assert profile.max_daily_loss is None
