"""GET /api/metrics (Prometheus text) and GET /api/health/components: who may read them, and what they say."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
import redis
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connections
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from accounts.models import Role
from accounts.tests.factories import UserFactory
from algoterm.celery import app as celery_app
from algoterm.testing import assert_error, assert_requires_auth, celery_worker_process, client_for
from brokers.prices import quote_at, quote_publish
from brokers.protection import CircuitBreaker
from marketdata.quotes import quotes_put
from orders.tests.factories import EQUITY, paper_account, standard_instruments

pytestmark = pytest.mark.django_db

METRICS, COMPONENTS = "/api/metrics", "/api/health/components"
SCRAPER_TOKEN = "scrape-token-0123456789abcdef0123456789abcdef"


def families(response) -> dict:
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {family.name: family for family in text_string_to_metric_families(response.content.decode())}


def value(parsed: dict, family: str, **labels) -> float | None:
    """The sample of `family` with exactly these labels (histograms: pass `sample=` for _count, _sum...)."""
    name = labels.pop("sample", family)
    matches = [s.value for s in parsed[family].samples if s.name == name and s.labels == labels]
    assert len(matches) <= 1, matches
    return matches[0] if matches else None


def scrape(client) -> dict:
    return families(client.get(METRICS))


# --- access ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [METRICS, COMPONENTS])
def test_admins_only_for_users(url, admin_client, trader_client):
    assert_requires_auth("GET", url)
    assert_error(trader_client.get(url), 403, "PERMISSION_DENIED")
    assert_error(client_for(UserFactory(role=Role.USER)).get(url), 403, "PERMISSION_DENIED")
    assert admin_client.get(url).status_code in (200, 503)  # 503: no worker runs in this test


@pytest.mark.parametrize("url", [METRICS, COMPONENTS])
def test_a_scraper_uses_the_metrics_token(url, settings):
    settings.METRICS_TOKEN = SCRAPER_TOKEN
    scraper = APIClient()

    scraper.credentials(HTTP_AUTHORIZATION=f"Bearer {SCRAPER_TOKEN}")
    assert scraper.get(url).status_code in (200, 503)
    scraper.credentials(HTTP_AUTHORIZATION=f"Bearer {SCRAPER_TOKEN}x")
    assert_error(scraper.get(url), 401, "AUTH_INVALID")
    scraper.credentials(HTTP_AUTHORIZATION=f"Bearer {SCRAPER_TOKEN}")
    assert_error(scraper.get("/api/users/me"), 401, "AUTH_INVALID")  # good for the operations routes only


def test_the_metrics_token_is_off_while_unset(settings):
    settings.METRICS_TOKEN = ""
    scraper = APIClient()
    scraper.credentials(HTTP_AUTHORIZATION="Bearer ")

    assert scraper.get(METRICS).status_code == 401


def test_loopback_is_let_in_only_when_allowed_and_judged_after_the_proxies(settings):
    local = APIClient(REMOTE_ADDR="127.0.0.1")
    assert_error(local.get(METRICS), 401, "AUTH_REQUIRED")

    settings.METRICS_ALLOW_LOCAL = True
    assert local.get(METRICS).status_code == 200
    assert APIClient(REMOTE_ADDR="::1").get(METRICS).status_code == 200
    assert_error(APIClient(REMOTE_ADDR="10.1.2.3").get(METRICS), 401, "AUTH_REQUIRED")
    # Behind one trusted proxy on this host, the client is who the proxy says, not the proxy's loopback address.
    settings.NUM_PROXIES = 1
    proxied = APIClient(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert_error(proxied.get(METRICS), 401, "AUTH_REQUIRED")
    assert APIClient(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="127.0.0.1").get(METRICS).status_code == 200


def test_metrics_answer_prometheus_text_whatever_the_accept_header(admin_client):
    accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1"
    assert families(admin_client.get(METRICS, HTTP_ACCEPT=accept))
    assert families(admin_client.get(METRICS, HTTP_ACCEPT="text/plain"))


# --- the families ---------------------------------------------------------------------------------------------


def test_every_reading_succeeds_and_every_named_family_is_there(admin_client):
    quotes_put([quote_at("NSE:NIFTY 50", "24350")])
    admin_client.get("/api/users/me")

    parsed = scrape(admin_client)

    for family in (
        "algoterm_http_request_duration_seconds",
        "algoterm_orders_placed_today",
        "algoterm_orders_rejected_today",
        "algoterm_rms_breaches_today",
        "algoterm_websocket_connections",
        "algoterm_feed_lag_seconds",
        "algoterm_feed_last_tick_timestamp_seconds",
        "algoterm_market_open",
        "algoterm_celery_queue_length",
        "algoterm_broker_circuits_open",
        "algoterm_broker_accounts_connected",
        "algoterm_metrics_reading_ok",
    ):
        assert family in parsed, family
    assert parsed["algoterm_http_request_duration_seconds"].type == "histogram"
    readings = {s.labels["reading"]: s.value for s in parsed["algoterm_metrics_reading_ok"].samples}
    assert readings == dict.fromkeys(("orders", "rms", "websockets", "feed", "celery", "brokers"), 1.0)


def test_request_latency_is_labelled_by_route_name_never_by_path(admin_client, trader_client):
    before = scrape(admin_client)
    count = "algoterm_http_request_duration_seconds_count"
    me = {"method": "GET", "route": "users-me", "status": "2xx"}
    missing = {"method": "GET", "route": "order-detail", "status": "4xx"}
    seen_me = value(before, "algoterm_http_request_duration_seconds", sample=count, **me) or 0
    seen_missing = value(before, "algoterm_http_request_duration_seconds", sample=count, **missing) or 0

    for _ in range(3):
        assert trader_client.get("/api/users/me").status_code == 200
    assert trader_client.get("/api/orders/ord_doesnotexist").status_code == 404
    assert trader_client.get("/api/no/such/route/ord_zzz").status_code == 404

    after = scrape(admin_client)
    assert value(after, "algoterm_http_request_duration_seconds", sample=count, **me) == seen_me + 3
    assert value(after, "algoterm_http_request_duration_seconds", sample=count, **missing) == seen_missing + 1
    total = value(
        after, "algoterm_http_request_duration_seconds", sample="algoterm_http_request_duration_seconds_sum", **me
    )
    assert 0 < total < 60
    labels = {v for s in after["algoterm_http_request_duration_seconds"].samples for v in s.labels.values()}
    assert not [label for label in labels if "doesnotexist" in label or "zzz" in label or "/" in label]
    assert "unnamed" in labels  # the JSON 404 catch-all


def test_orders_placed_and_rejected_today_per_broker(admin_client, trader, trader_client):
    standard_instruments()
    account = paper_account(trader)
    quote_publish(quote_at(EQUITY, "1500"))
    order = {"account_id": account.pk, "symbol": EQUITY, "quantity": 10, "order_type": "MARKET", "product": "MIS"}

    assert trader_client.post("/api/orders", {**order, "side": "BUY"}, format="json").status_code == 201
    assert trader_client.post("/api/orders", {**order, "side": "BUY"}, format="json").status_code == 201
    # A delivery sell with no holdings: the exchange refuses it.
    rejected = trader_client.post("/api/orders", {**order, "side": "SELL", "product": "CNC"}, format="json")
    assert_error(rejected, 422, "ORDER_REJECTED")

    parsed = scrape(admin_client)
    assert value(parsed, "algoterm_orders_placed_today", broker="paper") == 3
    assert value(parsed, "algoterm_orders_rejected_today", broker="paper") == 1
    for broker in ("zerodha", "dhan", "fyers"):
        assert value(parsed, "algoterm_orders_placed_today", broker=broker) == 0
        assert value(parsed, "algoterm_orders_rejected_today", broker=broker) == 0
    assert value(parsed, "algoterm_broker_accounts_connected", broker="paper") == 1


def test_rms_breaches_today(admin_client, trader):
    from rms.services import breach_handle

    before = scrape(admin_client)
    assert value(before, "algoterm_rms_breaches_today", reason="DAILY_LOSS_LIMIT_HIT") == 0

    assert breach_handle(user_id=trader.pk, reason="DAILY_LOSS_LIMIT_HIT", mtm=Decimal("-5000"))

    parsed = scrape(admin_client)
    assert value(parsed, "algoterm_rms_breaches_today", reason="DAILY_LOSS_LIMIT_HIT") == 1
    assert value(parsed, "algoterm_rms_breaches_today", reason="DAILY_PROFIT_TARGET_HIT") == 0


def test_feed_lag_follows_the_newest_quote(admin_client):
    assert "algoterm_feed_lag_seconds" not in scrape(admin_client)  # no feed has quoted yet

    quotes_put([quote_at("NSE:NIFTY BANK", "52400")])

    parsed = scrape(admin_client)
    assert 0 <= value(parsed, "algoterm_feed_lag_seconds") < 5
    assert abs(value(parsed, "algoterm_feed_last_tick_timestamp_seconds") - time.time()) < 5


def test_celery_queue_length_counts_messages_waiting_in_the_broker(admin_client):
    queue = celery_app.conf.task_default_queue
    before = value(scrape(admin_client), "algoterm_celery_queue_length", queue=queue)
    prefix = settings.CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"]
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    try:
        assert before == client.llen(f"{prefix}{queue}")
        # No worker runs here, so they wait; a name no worker knows, so a later test's worker just drops them.
        for _ in range(2):
            celery_app.send_task("algoterm.tests.ops_queue_probe", expires=5)

        assert value(scrape(admin_client), "algoterm_celery_queue_length", queue=queue) == before + 2
    finally:
        celery_app.control.purge()
        client.close()


def test_open_circuits_show_per_broker_and_fail_the_brokers_component(admin_client, trader, settings):
    account = paper_account(trader)
    assert value(scrape(admin_client), "algoterm_broker_circuits_open", broker="paper") == 0

    for _ in range(settings.BROKER_CIRCUIT_FAILURES):
        CircuitBreaker(account.pk).record_failure()

    assert value(scrape(admin_client), "algoterm_broker_circuits_open", broker="paper") == 1
    brokers = admin_client.get(COMPONENTS).json()["components"]["brokers"]
    assert brokers["status"] == "down" and "paper" in brokers["detail"] and brokers["required"] is False
    assert brokers["info"]["paper"] == {"connected": 1, "circuits_open": 1}


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_websocket_connections_are_counted_across_connect_and_disconnect():
    from algoterm.asgi import application

    admin = await database_sync_to_async(UserFactory)(role=Role.ADMIN)
    trader = await database_sync_to_async(UserFactory)()
    admin_client = await database_sync_to_async(client_for)(admin)

    @database_sync_to_async
    def connections_now(endpoint: str):
        return value(scrape(admin_client), "algoterm_websocket_connections", endpoint=endpoint)

    opened = []
    try:
        for path in ("/ws/events", "/ws/events", "/ws/market-data"):
            communicator = WebsocketCommunicator(application, f"{path}?token={AccessToken.for_user(trader)}")
            opened.append(communicator)
            connected, _ = await communicator.connect()
            assert connected
            assert (await communicator.receive_json_from(timeout=3))["t"] == "server_ready"
        refused = WebsocketCommunicator(application, "/ws/events?token=not-a-token")
        await refused.connect()
        assert (await refused.receive_json_from(timeout=3))["t"] == "error"
        await refused.disconnect()

        assert await connections_now("events") == 2
        assert await connections_now("market_data") == 1

        await opened.pop(0).disconnect()
        assert await connections_now("events") == 1
    finally:
        while opened:
            await opened.pop().disconnect()
        assert await connections_now("events") == 0 and await connections_now("market_data") == 0
        await database_sync_to_async(connections.close_all)()


# --- component health -----------------------------------------------------------------------------------------


def test_components_are_all_up_with_a_worker_and_a_fresh_feed(admin_client):
    with celery_worker_process():
        quotes_put([quote_at("NSE:NIFTY 50", "24350")])
        response = admin_client.get(COMPONENTS)

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "ok" and body["mode"] == "distributed"
    components = body["components"]
    assert set(components) == {
        "database",
        "redis",
        "workers",
        "scheduler",
        "holidays",
        "market_data",
        "order_streams",
        "queue",
        "feed",
        "brokers",
    }
    # No market-data account is designated and no order stream runs: nothing of theirs is down.
    for name in ("database", "redis", "workers", "queue", "feed", "brokers", "market_data", "order_streams"):
        assert components[name]["status"] == "up", (name, components[name])
    assert [name for name, component in components.items() if component["required"]] == [
        "database",
        "redis",
        "workers",
    ]
    assert components["workers"]["info"]["count"] >= 1
    assert celery_app.conf.task_default_queue in components["queue"]["info"]["queues"]
    assert components["feed"]["info"]["lag_s"] < 5


def test_components_are_503_listing_everything_when_no_worker_answers(admin_client):
    body = assert_error(admin_client.get(COMPONENTS), 503, "SERVICE_UNAVAILABLE")

    assert body["status"] == "unavailable" and "workers" in body["detail"]
    assert body["components"]["workers"]["status"] == "down"
    assert body["components"]["database"]["status"] == "up" and body["components"]["redis"]["status"] == "up"
    assert {"scheduler", "queue", "feed", "brokers"} <= set(body["components"])
    feed = body["components"]["feed"]  # no quote yet: a fault only while the market is open
    assert (feed["status"] == "down") is feed["info"]["market_open"] and feed["required"] is False
