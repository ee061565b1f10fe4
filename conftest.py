import importlib
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.conf import settings
from django.core.cache import cache

IST = ZoneInfo("Asia/Kolkata")
# The moment tests that need an open market run at: a Tuesday that is an NSE trading day, mid-session.
MARKET_OPEN_AT = datetime(2026, 12, 8, 10, 30, tzinfo=IST)


def pytest_addoption(parser):
    parser.addoption(
        "--clock",
        default="",
        help="run the whole session as if it were this ISO moment (e.g. 2026-12-06T23:00+05:30), ticking from "
        "there: proves the suite passes on a weekend, a holiday or at night",
    )


_session_traveller: list[time_machine.travel] = []


@pytest.fixture(scope="session", autouse=True)
def _session_clock(request):
    moment = request.config.getoption("--clock")
    if not moment:
        yield
        return
    traveller = time_machine.travel(datetime.fromisoformat(moment), tick=True)
    traveller.start()
    _session_traveller.append(traveller)
    yield
    _session_traveller.clear()
    traveller.stop()


@pytest.fixture
def wall_clock():
    """For a test that shares time with processes it starts (a Celery worker, a child it kills): they read the wall
    clock, so this test does too, whatever `--clock` says. Such a test must not depend on the day or the hour."""
    if not _session_traveller:
        yield
        return
    _session_traveller[0].stop()
    yield
    _session_traveller[0].start()


@pytest.fixture
def market_open(time_machine) -> datetime:
    """The one shared test clock for a trading day and a market hour: any test that needs the market open asks
    for it (directly or through a fixture) instead of trusting the wall clock. Ticks from there."""
    time_machine.move_to(MARKET_OPEN_AT, tick=True)
    return MARKET_OPEN_AT


def _clear_shared_state() -> None:
    if settings.EMBEDDED:
        cache.clear()
        return
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    # Only this run's cache keys: a developer's running stack may share the Redis server, and a test worker's
    # queues (under `<prefix>:celery:`) must survive between tests.
    keys = list(client.scan_iter(match=f"{settings.REDIS_KEY_PREFIX}:1:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(autouse=True)
def _migration_rows(request):
    """The rows migrations seed (the plans) for every test with the database. A transactional test's flush deletes
    them; serially those tests run last, but spread over parallel workers a later test on the same worker would
    find no plans."""
    uses_db = request.node.get_closest_marker("django_db") or {"db", "transactional_db"} & set(request.fixturenames)
    if not uses_db:
        return
    request.getfixturevalue("_django_db_helper" if request.node.get_closest_marker("django_db") else "db")
    from billing.models import Plan

    if not Plan.objects.exists():
        plans = importlib.import_module("billing.migrations.0002_plans").PLANS
        caps = importlib.import_module("billing.migrations.0003_plan_max_active_backtests").ACTIVE_BACKTESTS
        Plan.objects.bulk_create([Plan(**plan, max_active_backtests=caps[plan["code"]]) for plan in plans])


@pytest.fixture(autouse=True)
def _isolated_cache():
    _clear_shared_state()
    yield


@pytest.fixture
def api_client():
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def trader(db):
    from accounts.tests.factories import UserFactory

    return UserFactory()


@pytest.fixture
def admin_user(db):
    from accounts.tests.factories import AdminFactory

    return AdminFactory()


@pytest.fixture
def trader_client(trader):
    from algoterm.testing import client_for

    return client_for(trader)


@pytest.fixture
def admin_client(admin_user):
    from algoterm.testing import client_for

    return client_for(admin_user)
