import time

import pytest

from algoterm.testing import assert_error, celery_worker_process

pytestmark = pytest.mark.django_db


@pytest.fixture
def running_worker():
    with celery_worker_process():
        yield


def test_health_is_ok_with_database_redis_and_a_worker(api_client, running_worker):
    response = api_client.get("/api/health")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "ok" and body["mode"] == "distributed"
    for name in ("database", "redis", "workers"):
        assert body["components"][name]["status"] == "up"
        assert body["components"][name]["latency_ms"] >= 0
    assert body["components"]["workers"]["info"]["count"] >= 1
    assert body["components"]["database"]["info"]["vendor"] == "postgresql"


def test_scheduler_component_follows_the_heartbeat_task_run_by_a_real_worker(api_client, running_worker):
    from algoterm.tasks import heartbeat

    assert api_client.get("/api/health").json()["components"]["scheduler"]["status"] == "down"

    heartbeat.delay()
    deadline = time.monotonic() + 60  # a bound for a loaded machine, not a figure
    while api_client.get("/api/health").json()["components"]["scheduler"]["status"] != "up":
        assert time.monotonic() < deadline, "the worker never ran the heartbeat task"
        time.sleep(0.2)

    scheduler = api_client.get("/api/health").json()["components"]["scheduler"]
    assert scheduler["required"] is False and scheduler["info"]["last_heartbeat_age_s"] < 20


def test_health_is_503_when_no_worker_answers(api_client):
    body = assert_error(api_client.get("/api/health"), 503, "SERVICE_UNAVAILABLE")
    assert body["components"]["workers"]["status"] == "down"
    assert body["components"]["redis"]["status"] == "up"


def test_health_is_503_with_redis_down(api_client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there: a real, refused connection

    body = assert_error(api_client.get("/api/health"), 503, "SERVICE_UNAVAILABLE")

    assert body["status"] == "unavailable"
    assert body["components"]["redis"]["status"] == "down"
    assert body["components"]["workers"]["status"] == "down"
    assert body["components"]["database"]["status"] == "up"
    assert "redis" in body["detail"]


def test_version_is_public(api_client):
    body = api_client.get("/api/version").json()
    assert body["name"] == "AlgoTerm" and body["api_version"] == "1" and body["ws_protocol_version"] == 1
