"""A fill reaches the user's /ws/events: order_update, trade, position_update and the fill notification."""

import pytest
from channels.db import database_sync_to_async
from django.db import connections

from accounts.tests.factories import UserFactory
from accounts.tests.test_events_ws import connect, token_for
from algoterm.testing import client_for
from brokers.prices import quote_at, quote_publish
from orders.tests.factories import EQUITY, paper_account, standard_instruments

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture(autouse=True)
async def _close_connections():
    yield
    await database_sync_to_async(connections.close_all)()


async def drain(communicator, *, until: set[str], timeout: float = 5) -> dict[str, list[dict]]:
    seen: dict[str, list[dict]] = {}
    while not until <= set(seen):
        message = await communicator.receive_json_from(timeout=timeout)
        seen.setdefault(message["t"], []).append(message["p"])
    return seen


@database_sync_to_async
def place_market_buy(user, account):
    quote_publish(quote_at(EQUITY, "1500"))
    return client_for(user).post(
        "/api/orders",
        {
            "account_id": account.pk,
            "symbol": EQUITY,
            "side": "BUY",
            "quantity": 5,
            "order_type": "MARKET",
            "product": "MIS",
        },
        format="json",
    )


@database_sync_to_async
def setup_trader():
    standard_instruments()
    user = UserFactory()
    return user, paper_account(user)


async def test_a_filled_order_is_pushed_on_the_events_socket():
    user, account = await setup_trader()
    communicator = await connect(f"/ws/events?token={token_for(user)}")
    assert (await communicator.receive_json_from())["t"] == "server_ready"

    response = await place_market_buy(user, account)
    assert response.status_code == 201, response.json()
    order_id = response.json()["id"]

    seen = await drain(communicator, until={"order_update", "trade", "position_update", "notification"})
    assert seen["order_update"][-1]["id"] == order_id and seen["order_update"][-1]["status"] == "FILLED"
    assert seen["trade"][0]["order_id"] == order_id and seen["trade"][0]["quantity"] == 5
    assert seen["position_update"][-1]["symbol"] == EQUITY and seen["position_update"][-1]["quantity"] == 5
    assert any(n["kind"] == "order_filled" for n in seen["notification"])
    await communicator.disconnect()


async def test_a_fill_is_told_once_in_the_order_it_happened():
    """The fill's four pushes leave as one channel-layer message; the socket unpacks them into four messages."""
    user, account = await setup_trader()
    communicator = await connect(f"/ws/events?token={token_for(user)}")
    assert (await communicator.receive_json_from())["t"] == "server_ready"
    assert (await communicator.receive_json_from())["t"] == "snapshot"

    response = await place_market_buy(user, account)
    assert response.status_code == 201, response.json()
    received = []
    while not await communicator.receive_nothing(timeout=0.5):
        received.append(await communicator.receive_json_from())
    assert [message["t"] for message in received] == ["trade", "position_update", "order_update", "notification"]
    assert received[2]["p"]["status"] == "FILLED" and received[2]["p"]["id"] == response.json()["id"]
    await communicator.disconnect()


async def test_other_users_do_not_see_my_orders():
    user, account = await setup_trader()
    other = await database_sync_to_async(UserFactory)()
    communicator = await connect(f"/ws/events?token={token_for(other)}")
    assert (await communicator.receive_json_from())["t"] == "server_ready"
    assert (await communicator.receive_json_from())["t"] == "snapshot"
    response = await place_market_buy(user, account)
    assert response.status_code == 201
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()
