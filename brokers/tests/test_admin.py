import pytest
from django.test import Client

from brokers.models import AccountStatus, BrokerAccount

pytestmark = pytest.mark.django_db
SECRET, TOKEN = "super-secret-api-secret", "live-access-token-123"


@pytest.fixture
def console(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


@pytest.fixture
def account(trader) -> BrokerAccount:
    account = BrokerAccount(
        owner=trader,
        broker="zerodha",
        label="Kite",
        status=AccountStatus.CONNECTED,
        proxy_url="http://squid:proxy-password@10.0.0.5:3128",
    )
    account.credentials = {"api_key": "key-1", "api_secret": SECRET}
    account.session = {"access_token": TOKEN, "broker_user_id": "AB1"}
    account.save()
    return account


def test_admin_pages_never_show_secrets(console, account):
    pages = [
        console.get("/admin/brokers/brokeraccount/"),
        console.get(f"/admin/brokers/brokeraccount/{account.pk}/change/"),
    ]
    for page in pages:
        assert page.status_code == 200
        html = page.content.decode()
        for secret in (SECRET, TOKEN, "key-1", "proxy-password"):
            assert secret not in html
    assert "api_secret = ••••••" in pages[1].content.decode()
    assert "http://10.0.0.5:3128" in pages[1].content.decode()


def test_expire_action_goes_through_the_service(console, account):
    response = console.post(
        "/admin/brokers/brokeraccount/", {"action": "expire_sessions", "_selected_action": [account.pk]}
    )
    assert response.status_code == 302
    account.refresh_from_db()
    assert account.status == AccountStatus.EXPIRED and account.session == {}


def test_exchange_pages_render(console):
    for url in ("/admin/brokers/simaccount/", "/admin/brokers/simorder/", "/admin/brokers/simposition/"):
        assert console.get(url).status_code == 200
