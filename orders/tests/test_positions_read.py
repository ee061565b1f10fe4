"""GET /api/positions, the read the mobile app polls: its queries do not grow with the book, and the lean rendering
answers byte for byte what the serializers answer (items through `PositionOutput`, the groups and totals as the
book computed them position by position)."""

import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.renderers import JSONRenderer

from brokers.prices import quote_at
from marketdata.quotes import quotes_put
from orders.models import Position
from orders.selectors import PositionRow, last_prices, position_list
from orders.serializers import PositionOutput, positions_render
from orders.tests.factories import paper_account

pytestmark = pytest.mark.django_db

PAISE = Decimal("0.01")
DAY = date(2026, 12, 7)
# Authentication (the user row) and the positions: quotes come from the cache in one round trip.
POSITIONS_QUERIES = 2


def _seed(user, accounts, *, count: int, seed: int, quoted: bool = True) -> list[str]:
    """`count` positions over the accounts with awkward numbers: four-decimal averages on the half paisa, shorts,
    flat positions, times with and without microseconds."""
    rng = random.Random(seed)
    symbols = [f"NSE:READ{n:03d}" for n in range(max(1, count // len(accounts)) + 1)]
    rows, used = [], set()
    while len(rows) < count:
        account, symbol = rng.choice(accounts), rng.choice(symbols)
        product = rng.choice(("MIS", "NRML", "CNC"))
        if (account.pk, symbol, product) in used:
            continue
        used.add((account.pk, symbol, product))
        quantity = rng.choice((0, 1, -1, 25, -75, 1800))
        rows.append(
            Position(
                user=user,
                account=account,
                symbol=symbol,
                product=product,
                quantity=quantity,
                average_price=Decimal(rng.randint(1, 4_000_000)) / 10000 + rng.choice((0, Decimal("0.0050"))),
                realized_pnl=Decimal(rng.randint(-(10**7), 10**7)) / 100,
                trading_day=DAY - timedelta(days=rng.choice((0, 0, 1))),
                day_buy_quantity=rng.randint(0, 2000),
                day_sell_quantity=rng.randint(0, 2000),
                day_buy_value=Decimal(rng.randint(0, 10**9)) / 100,
                day_sell_value=Decimal(rng.randint(0, 10**9)) / 100,
                day_realized_pnl=Decimal(rng.randint(-(10**6), 10**6)) / 100,
                updated_at=datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
                + timedelta(seconds=rng.randint(0, 30000), microseconds=rng.choice((0, 1, 500000, 999999))),
            )
        )
    Position.objects.bulk_create(rows)
    if quoted:
        prices = [Decimal(rng.randint(1, 400000)) / 100 + Decimal("0.05") * rng.randint(0, 1) for _ in symbols]
        quotes_put([quote_at(symbol, price) for symbol, price in zip(symbols, prices, strict=True)])
    return symbols


def _reference(user, *, account_id=None) -> bytes:
    """The response as the serializers and a position-by-position book render it."""
    positions = list(position_list(user=user, account_id=account_id))
    quotes = last_prices([position.symbol for position in positions])

    def unrealized(position):
        quote = quotes.get(position.symbol)
        if quote is None or position.quantity == 0:
            return Decimal("0")
        return ((quote.last_price - position.average_price) * position.quantity).quantize(PAISE)

    groups = defaultdict(list)
    for position in positions:
        groups[(position.symbol, position.product)].append(position)
    consolidated = []
    for (symbol, product), members in groups.items():
        quantity = sum(member.quantity for member in members)
        same_side = [m for m in members if m.quantity and (m.quantity > 0) == (quantity > 0)]
        held = sum(abs(m.quantity) for m in same_side)
        average = (sum(abs(m.quantity) * m.average_price for m in same_side) / held).quantize(PAISE) if held else 0
        consolidated.append(
            {
                "symbol": symbol,
                "product": product,
                "quantity": quantity,
                "average_price": Decimal(average),
                "ltp": quotes[symbol].last_price if symbol in quotes else None,
                "unrealized_pnl": sum((unrealized(m) for m in members), Decimal("0")),
                "realized_pnl": sum((m.realized_pnl for m in members), Decimal("0")),
                "day_realized_pnl": sum((m.day_realized_pnl for m in members), Decimal("0")),
                "accounts": sorted({m.account_id for m in members}),
            }
        )
    total_unrealized = sum((unrealized(p) for p in positions), Decimal("0"))
    totals = {
        "realized_pnl": sum((p.realized_pnl for p in positions), Decimal("0")),
        "unrealized_pnl": total_unrealized,
        "day_pnl": sum((p.day_realized_pnl for p in positions), Decimal("0")) + total_unrealized,
        "open_positions": sum(1 for p in positions if p.quantity),
    }
    items = PositionOutput(positions, many=True, context={"quotes": quotes}).data
    return JSONRenderer().render({"items": items, "consolidated": consolidated, "totals": totals})


def test_the_positions_answer_is_the_serializers_to_the_byte(trader, trader_client, instruments):
    accounts = [paper_account(trader, label=f"Read {n}") for n in range(3)]
    _seed(trader, accounts, count=120, seed=17)
    response = trader_client.get("/api/positions")
    assert response.status_code == 200, response.json()
    assert response.content == _reference(trader)
    one = trader_client.get(f"/api/positions?account_id={accounts[1].pk}")
    assert one.content == _reference(trader, account_id=accounts[1].pk)


def test_the_portfolio_renders_its_positions_as_the_serializer_does(trader, trader_client, instruments):
    accounts = [paper_account(trader, label=f"Read {n}") for n in range(2)]
    _seed(trader, accounts, count=30, seed=5)
    positions = list(position_list(user=trader))
    quotes = last_prices([position.symbol for position in positions])
    expected = JSONRenderer().render(PositionOutput(positions, many=True, context={"quotes": quotes}).data)
    response = trader_client.get("/api/portfolio")
    assert response.status_code == 200, response.json()
    assert JSONRenderer().render(response.json()["positions"]) == expected


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "UTC", "America/New_York"])
def test_rendering_matches_the_serializer_on_edge_values(zone, settings):
    settings.TIME_ZONE = zone
    made = [
        PositionRow(
            account_id="acc_1",
            symbol=symbol,
            product=product,
            quantity=quantity,
            average_price=Decimal(average),
            realized_pnl=Decimal(realized),
            day_buy_quantity=buys,
            day_sell_quantity=sells,
            day_buy_value=Decimal("12345678.90"),
            day_sell_value=Decimal("0.00"),
            day_realized_pnl=Decimal(realized),
            trading_day=DAY,
            updated_at=at,
        )
        for symbol, product, quantity, average, realized, buys, sells, at in [
            ("NSE:A", "MIS", 10, "100.1250", "-0.05", 10, 0, datetime(2026, 12, 7, 4, 0, tzinfo=UTC)),
            ("NSE:A", "CNC", -3, "100.1350", "12.50", 0, 3, datetime(2026, 12, 7, 4, 0, 0, 1, tzinfo=UTC)),
            ("NSE:B", "NRML", 0, "0.0050", "0", 5, 5, datetime(2026, 6, 7, 9, 30, tzinfo=ZoneInfo("Asia/Kolkata"))),
            ("NSE:C", "MIS", 1800, "99999.9950", "-99999.99", 1800, 0, datetime(2026, 3, 8, 7, 0, tzinfo=UTC)),
        ]
    ]
    quotes = {"NSE:A": quote_at("NSE:A", "100.15"), "NSE:C": quote_at("NSE:C", "0.05")}  # NSE:B has none
    for context_quotes in (quotes, {}):
        expected = JSONRenderer().render(PositionOutput(made, many=True, context={"quotes": context_quotes}).data)
        assert JSONRenderer().render(positions_render(positions=made, quotes=context_quotes)) == expected


def test_the_positions_read_costs_the_same_queries_for_any_book(trader, trader_client, instruments):
    accounts = [paper_account(trader, label=f"Read {n}") for n in range(2)]
    _seed(trader, accounts, count=3, seed=1)
    with CaptureQueriesContext(connection) as small:
        assert trader_client.get("/api/positions").status_code == 200
    Position.objects.filter(user=trader).delete()
    _seed(trader, accounts, count=400, seed=2)
    with CaptureQueriesContext(connection) as large:
        response = trader_client.get("/api/positions")
    assert response.status_code == 200 and len(response.json()["items"]) == 400
    statements = "\n".join(query["sql"][:120] for query in large.captured_queries)
    assert len(small) == len(large) == POSITIONS_QUERIES, statements
