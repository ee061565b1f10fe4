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


def _change_form(account: BrokerAccount, **changes) -> dict:
    """The change form as an operator submits it (owner included, as a forged form would send it)."""
    return {
        "owner": account.owner_id,
        "broker": account.broker,
        "label": account.label,
        "client_id": account.client_id,
        "status": account.status,
        "session_expires_at_0": "",
        "session_expires_at_1": "",
        "last_error": account.last_error,
        "last_error_at_0": "",
        "last_error_at_1": "",
        "algo_id": account.algo_id,
        **changes,
    }


def test_an_operator_sets_an_accounts_algo_id_and_it_is_audited(console, account):
    from accounts.models import AuditEvent

    url = f"/admin/brokers/brokeraccount/{account.pk}/change/"

    response = console.post(url, _change_form(account, algo_id="NSE-ALGO-42"))

    assert response.status_code == 302, response.content.decode()[:2000]
    account.refresh_from_db()
    assert account.algo_id == "NSE-ALGO-42"
    event = AuditEvent.objects.filter(action="broker.admin_change").latest("occurred_at")
    assert event.details["algo_id"] == "NSE-ALGO-42"


def test_an_operator_cannot_reassign_a_broker_accounts_owner(console, account):
    from accounts.tests.factories import UserFactory

    someone_else = UserFactory()
    url = f"/admin/brokers/brokeraccount/{account.pk}/change/"
    assert 'name="owner"' not in console.get(url).content.decode()

    response = console.post(url, _change_form(account, owner=someone_else.pk, label="Moved"))

    assert response.status_code == 302
    account.refresh_from_db()
    assert account.owner_id != someone_else.pk and account.label == "Moved"
    account.owner = someone_else
    with pytest.raises(ValueError, match="owner cannot be changed"):
        account.save()
    assert BrokerAccount.objects.get(pk=account.pk).owner_id != someone_else.pk
