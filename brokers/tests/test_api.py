"""The broker routes end to end: paper, and Zerodha through its login page on the Kite simulator."""

import logging
import urllib.parse
from datetime import timedelta

import pytest
from django.db import connection
from rest_framework.test import APIClient

from accounts.models import Notification, Role
from accounts.tests.factories import UserFactory
from algoterm.sandbox.simulators.kite import KiteSimulator
from algoterm.testing import assert_error, assert_other_user_gets_404, assert_requires_auth, client_for
from brokers.models import AccountStatus, BrokerAccount
from brokers.tests.conftest import serving
from brokers.tests.test_zerodha import submit_login_form

CONNECT = "/api/brokers/connect"
ACCOUNTS = "/api/brokers/accounts"
KITE_KEY, KITE_SECRET = "app-key-1", "app-secret-very-private"


@pytest.fixture
def kite_sim(settings):
    app = KiteSimulator()
    settings.PUBLIC_BASE_URL = "http://127.0.0.1:1"
    app.register_app(KITE_KEY, KITE_SECRET, "http://127.0.0.1:1/api/brokers/callback/zerodha")
    with serving(app) as server:
        settings.KITE_ROOT_URL = server.url
        settings.KITE_LOGIN_URL = f"{server.url}/connect/login"
        yield app


def connect_paper(client, **extra):
    return client.post(CONNECT, {"broker": "paper", "label": "Practice", **extra}, format="json")


def connect_zerodha(client) -> tuple[dict, APIClient]:
    started = client.post(
        CONNECT, {"broker": "zerodha", "credentials": {"api_key": KITE_KEY, "api_secret": KITE_SECRET}}, format="json"
    )
    assert started.status_code == 201, started.json()
    params = submit_login_form(started.json()["login_url"])
    callback = APIClient().get("/api/brokers/callback/zerodha", params)  # the browser: no JWT
    assert callback.status_code == 200, callback.json()
    return callback.json(), client


# --- paper -------------------------------------------------------------------------------------------------------

pytestmark = pytest.mark.django_db


def test_paper_connects_at_once_with_its_funds(trader_client):
    response = connect_paper(trader_client, credentials={"opening_balance": 250000})

    assert response.status_code == 201, response.json()
    account = response.json()["account"]
    assert (
        account["id"].startswith("acc_") and account["status"] == "connected" and response.json()["login_url"] is None
    )
    funds = trader_client.get(f"/api/brokers/{account['id']}/funds").json()
    assert funds == {"available_cash": 250000.0, "used_margin": 0.0, "opening_balance": 250000.0}
    listed = trader_client.get(ACCOUNTS).json()
    assert listed["total"] == 1 and listed["items"][0]["label"] == "Practice"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"broker": "robinhood"}, "broker"),
        ({"broker": "zerodha", "credentials": {"api_key": "k"}}, "credentials.api_secret"),
        ({"broker": "zerodha", "credentials": {"api_key": "k", "api_secret": "s", "pin": "1"}}, "credentials.pin"),
        ({"broker": "paper", "credentials": {"opening_balance": "lots"}}, "credentials.opening_balance"),
        ({"broker": "paper", "proxy_url": "not a url"}, "proxy_url"),
        ({"broker": "paper", "colour": "red"}, "colour"),
        ({}, "broker"),
    ],
)
def test_connect_rejects_bad_input(trader_client, payload, field):
    body = assert_error(trader_client.post(CONNECT, payload, format="json"), 400, "VALIDATION_ERROR")
    assert field in body["errors"]
    assert not BrokerAccount.objects.exists()


def test_the_algo_id_is_the_operators_not_the_users(trader_client, settings):
    body = assert_error(connect_paper(trader_client, algo_id="MY-OWN-ALGO"), 400, "VALIDATION_ERROR")
    assert "algo_id" in body["errors"]
    assert not BrokerAccount.objects.exists()

    account = connect_paper(trader_client).json()["account"]

    assert account["algo_id"] == settings.BROKER_DEFAULT_ALGO_ID
    assert BrokerAccount.objects.get(pk=account["id"]).algo_id == settings.BROKER_DEFAULT_ALGO_ID


def test_a_view_only_user_cannot_connect():
    viewer = UserFactory(role=Role.USER)
    assert_error(connect_paper(client_for(viewer)), 403, "PERMISSION_DENIED")


def test_routes_require_auth(trader_client):
    account_id = connect_paper(trader_client).json()["account"]["id"]
    assert_requires_auth("post", CONNECT, {"broker": "paper"})
    assert_requires_auth("get", ACCOUNTS)
    assert_requires_auth("delete", f"/api/brokers/{account_id}")
    assert_requires_auth("post", f"/api/brokers/{account_id}/refresh", {})
    assert_requires_auth("get", f"/api/brokers/{account_id}/funds")


def test_another_users_account_is_404_everywhere(trader_client):
    account_id = connect_paper(trader_client).json()["account"]["id"]
    assert_other_user_gets_404("get", f"/api/brokers/{account_id}/funds")
    assert_other_user_gets_404("post", f"/api/brokers/{account_id}/refresh", {})
    assert_other_user_gets_404("delete", f"/api/brokers/{account_id}")
    assert BrokerAccount.objects.get(pk=account_id).status == AccountStatus.CONNECTED


def test_list_filters_and_validates(trader_client):
    connect_paper(trader_client)
    assert trader_client.get(ACCOUNTS, {"broker": "zerodha"}).json()["total"] == 0
    assert_error(trader_client.get(ACCOUNTS, {"status": "happy"}), 400, "VALIDATION_ERROR")


def test_paper_refresh_reconnects(trader_client):
    account_id = connect_paper(trader_client).json()["account"]["id"]
    response = trader_client.post(f"/api/brokers/{account_id}/refresh", {}, format="json")
    assert response.status_code == 200 and response.json()["account"]["status"] == "connected"


# --- zerodha through the simulator ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_zerodha_connect_login_page_callback_and_funds(kite_sim, caplog):
    trader = UserFactory()
    client = client_for(trader)
    with caplog.at_level(logging.DEBUG):
        account, _ = connect_zerodha(client)

        assert account["status"] == "connected" and account["client_id"] == "ZX9876"
        assert account["session_expires_at"]
        funds = client.get(f"/api/brokers/{account['id']}/funds")
        assert funds.status_code == 200 and funds.json()["opening_balance"] > 0
    assert Notification.objects.filter(user=trader, kind="broker.connected").exists()

    every_answer = str(client.get(ACCOUNTS).json()) + str(account)
    assert KITE_SECRET not in every_answer
    assert KITE_SECRET not in caplog.text
    with connection.cursor() as cursor:
        cursor.execute("SELECT credentials_encrypted, session_encrypted FROM brokers_brokeraccount")
        stored = " ".join(cursor.fetchone())
    assert KITE_SECRET not in stored and KITE_KEY not in stored


@pytest.mark.django_db(transaction=True)
def test_callback_refuses_tampered_expired_or_misrouted_state(kite_sim, settings):
    client = client_for(UserFactory())
    started = client.post(
        CONNECT, {"broker": "zerodha", "credentials": {"api_key": KITE_KEY, "api_secret": KITE_SECRET}}, format="json"
    ).json()
    params = submit_login_form(started["login_url"])

    tampered = {**params, "state": params["state"][:-2] + "xx"}
    assert_error(APIClient().get("/api/brokers/callback/zerodha", tampered), 400, "VALIDATION_ERROR")
    assert_error(APIClient().get("/api/brokers/callback/fyers", params), 404, "NOT_FOUND")
    assert_error(APIClient().get("/api/brokers/callback/paper", params), 404, "NOT_FOUND")
    settings.BROKER_LOGIN_STATE_MAX_AGE = timedelta(seconds=-1)
    assert_error(APIClient().get("/api/brokers/callback/zerodha", params), 400, "VALIDATION_ERROR")
    assert BrokerAccount.objects.get().status == AccountStatus.LOGIN_REQUIRED


@pytest.mark.django_db(transaction=True)
def test_an_expired_broker_session_is_409_and_the_user_is_told(kite_sim):
    trader = UserFactory()
    account, client = connect_zerodha(client_for(trader))
    kite_sim.expire_sessions()

    assert_error(client.get(f"/api/brokers/{account['id']}/funds"), 409, "BROKER_SESSION_EXPIRED")
    assert BrokerAccount.objects.get(pk=account["id"]).status == AccountStatus.EXPIRED
    assert Notification.objects.filter(user=trader, kind="broker.session_expired").count() == 1
    assert_error(client.get(f"/api/brokers/{account['id']}/funds"), 409, "BROKER_SESSION_EXPIRED")

    relogin = client.post(f"/api/brokers/{account['id']}/refresh", {}, format="json").json()
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(relogin["login_url"]).query))
    assert query["api_key"] == KITE_KEY


@pytest.mark.django_db(transaction=True)
def test_disconnect_logs_out_at_the_broker_and_wipes_secrets(kite_sim):
    account, client = connect_zerodha(client_for(UserFactory()))
    token = BrokerAccount.objects.get(pk=account["id"]).session["access_token"]

    assert client.delete(f"/api/brokers/{account['id']}").status_code == 204

    stored = BrokerAccount.objects.get(pk=account["id"])
    assert stored.status == AccountStatus.DISCONNECTED and stored.credentials == {} and stored.session == {}
    assert token not in kite_sim._sessions
    assert client.get(ACCOUNTS).json()["total"] == 0
    assert_error(client.delete(f"/api/brokers/{account['id']}"), 404, "NOT_FOUND")


def test_a_nan_opening_balance_is_a_validation_error(trader_client):
    body = assert_error(connect_paper(trader_client, credentials={"opening_balance": "NaN"}), 400, "VALIDATION_ERROR")
    assert "credentials.opening_balance" in body["errors"]


@pytest.mark.django_db(transaction=True)
def test_an_abandoned_relogin_does_not_take_a_working_session_offline(kite_sim):
    account, client = connect_zerodha(client_for(UserFactory()))
    relogin = client.post(f"/api/brokers/{account['id']}/refresh", {}, format="json").json()
    state = dict(
        urllib.parse.parse_qsl(
            dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(relogin["login_url"]).query))["redirect_params"]
        )
    )["state"]

    cancelled = APIClient().get("/api/brokers/callback/zerodha", {"state": state, "status": "cancelled"})

    assert cancelled.status_code == 409
    stored = BrokerAccount.objects.get(pk=account["id"])
    assert stored.status == AccountStatus.CONNECTED and stored.last_error
    assert client.get(f"/api/brokers/{account['id']}/funds").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_a_login_link_works_once(kite_sim):
    client = client_for(UserFactory())
    started = client.post(
        CONNECT, {"broker": "zerodha", "credentials": {"api_key": KITE_KEY, "api_secret": KITE_SECRET}}, format="json"
    ).json()
    params = submit_login_form(started["login_url"])
    assert APIClient().get("/api/brokers/callback/zerodha", params).status_code == 200

    replay = {**submit_login_form(started["login_url"]), "state": params["state"]}
    body = assert_error(APIClient().get("/api/brokers/callback/zerodha", replay), 400, "VALIDATION_ERROR")
    assert "already used" in body["errors"]["state"][0]
