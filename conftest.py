import pytest
from django.conf import settings
from django.core.cache import cache


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
