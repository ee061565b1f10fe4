import pytest

from accounts import services
from accounts.models import Notification
from algoterm.testing import assert_error, assert_other_user_gets_404, assert_requires_auth

pytestmark = pytest.mark.django_db

LIST = "/api/notifications"


def notify(user, n: int = 1, **fields):
    return [services.notification_create(user=user, kind="test.kind", title=f"note {i}", **fields) for i in range(n)]


def test_list_is_paginated_newest_first_and_only_mine(trader_client, trader, admin_user):
    notify(trader, 25)
    notify(admin_user, 3)

    first = trader_client.get(LIST, {"page_size": 10}).json()
    last = trader_client.get(LIST, {"page_size": 10, "page": 3}).json()

    assert (first["total"], first["total_pages"], first["page"], first["page_size"]) == (25, 3, 1, 10)
    assert [item["title"] for item in first["items"][:2]] == ["note 24", "note 23"]
    assert len(last["items"]) == 5
    assert trader_client.get(LIST, {"page": 9}).json()["items"] == []


def test_unread_filter_and_mark_read(trader_client, trader):
    first, second = notify(trader, 2)

    response = trader_client.post(f"{LIST}/{first.pk}/read")

    assert response.status_code == 200
    assert response.json()["is_read"] is True
    unread = trader_client.get(LIST, {"unread": "true"}).json()
    assert [item["id"] for item in unread["items"]] == [second.pk]
    assert trader_client.get("/api/users/me").json()["unread_notifications"] == 1
    again = trader_client.post(f"{LIST}/{first.pk}/read").json()
    assert again["read_at"] == response.json()["read_at"]


def test_mark_all_read(trader_client, trader):
    notify(trader, 3)

    assert trader_client.post(f"{LIST}/read-all").json() == {"marked_read": 3}
    assert Notification.objects.filter(user=trader, read_at__isnull=True).count() == 0


@pytest.mark.parametrize(
    "query", [{"page": "0"}, {"page": "x"}, {"page_size": "101"}, {"unread": "maybe"}, {"colour": "red"}]
)
def test_list_rejects_invalid_query(trader_client, query):
    assert_error(trader_client.get(LIST, query), 400, "VALIDATION_ERROR")


def test_someone_elses_notification_is_404(trader):
    (note,) = notify(trader)
    assert_other_user_gets_404("post", f"{LIST}/{note.pk}/read")
    note.refresh_from_db()
    assert note.read_at is None


def test_notifications_require_auth(trader):
    (note,) = notify(trader)
    assert_requires_auth("get", LIST)
    assert_requires_auth("post", f"{LIST}/{note.pk}/read")
    assert_requires_auth("post", f"{LIST}/read-all")
