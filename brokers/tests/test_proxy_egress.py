"""A broker account's egress proxy reaches only public addresses: refused when saved, and again at every connection
(a name that rebinds to our network, a proxy stored before the check, a background task using it). The internet is
mocked only at name resolution; nothing here connects anywhere but loopback."""

import socket
from collections.abc import Iterator

import pytest

from accounts.tests.factories import UserFactory
from algoterm.sandbox.simulators.dhan import DhanSimulator
from algoterm.testing import assert_error, client_for
from brokers.egress import PROXY_UNREACHABLE
from brokers.models import BrokerAccount
from brokers.tests.conftest import serving
from brokers.tests.test_api import CONNECT, KITE_KEY, KITE_SECRET, connect_zerodha, kite_sim  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

PUBLIC_ADDRESS = "8.8.8.8"  # only ever an answer of the mocked resolver: the tests never connect to it
DHAN_CLIENT, DHAN_TOKEN = "1100000009", "dhan-token-for-proxy-tests"


@pytest.fixture
def dns(monkeypatch) -> dict[str, list[str]]:
    """Names under `.proxy.test` answer from this map; each answer is used once, the last one for ever after."""
    answers: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else str(host)
        if not name.endswith(".proxy.test"):
            return real(host, port, *args, **kwargs)
        queue = answers.get(name)
        if not queue:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        address = queue.pop(0) if len(queue) > 1 else queue[0]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sockaddr = (address, int(port or 0), 0, 0) if family == socket.AF_INET6 else (address, int(port or 0))
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


@pytest.fixture
def listener() -> Iterator[tuple[int, callable]]:
    """An internal service on loopback; yields its port and a count of the connections it received."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.setblocking(False)
    accepted: list[socket.socket] = []

    def connections() -> int:
        while True:
            try:
                accepted.append(server.accept()[0])
            except BlockingIOError:
                return len(accepted)

    try:
        yield server.getsockname()[1], connections
    finally:
        for connection in accepted:
            connection.close()
        server.close()


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


@pytest.fixture
def dhan_sim(settings):
    app = DhanSimulator()
    app.register_client(DHAN_CLIENT, DHAN_TOKEN)
    with serving(app) as server:
        settings.DHAN_BASE_URL = f"{server.url}/v2"
        yield app


def connect_dhan(client, proxy_url: str):
    credentials = {"client_id": DHAN_CLIENT, "access_token": DHAN_TOKEN}
    return client.post(CONNECT, {"broker": "dhan", "credentials": credentials, "proxy_url": proxy_url}, format="json")


def connect_kite(client, proxy_url: str):
    credentials = {"api_key": KITE_KEY, "api_secret": KITE_SECRET}
    body = {"broker": "zerodha", "credentials": credentials, "proxy_url": proxy_url}
    return client.post(CONNECT, body, format="json")


REFUSED_PROXIES = [
    "http://127.0.0.1:{port}",
    "http://localhost:{port}",
    "http://[::1]:{port}",
    "http://[::ffff:127.0.0.1]:{port}",
    "http://0.0.0.0:{port}",
    "http://10.0.0.5:3128",
    "http://172.16.4.4:3128",
    "http://192.168.1.1:3128",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/",
    "http://[64:ff9b::7f00:1]:3128",
    "http://100.64.0.1:3128",
    "http://224.0.0.1:3128",
    "http://240.0.0.1:3128",
    "http://internal.proxy.test:3128",  # a name that resolves to a private address
    "http://mixed.proxy.test:3128",  # one public and one private answer
    "http://unknown.proxy.test:3128",  # does not resolve
    "socks5://{public}:1080",
    "ftp://{public}:21",
    "not a url",
]


def test_a_proxy_on_a_non_public_address_is_refused_when_saved_with_one_message(dns, listener, monkeypatch):
    port, connections = listener
    dns["internal.proxy.test"] = ["10.1.2.3"]
    public = "public.proxy.test"
    dns[public] = [PUBLIC_ADDRESS]
    real = socket.getaddrinfo

    def mixed(host, *args, **kwargs):
        if host == "mixed.proxy.test":
            return real(PUBLIC_ADDRESS, *args, **kwargs) + real("10.9.9.9", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", mixed)
    client = client_for(UserFactory())
    messages = set()

    for template in REFUSED_PROXIES:
        proxy_url = template.format(port=port, public=public)
        for connect in (connect_kite, connect_dhan):
            body = assert_error(connect(client, proxy_url), 400, "VALIDATION_ERROR")
            messages.add(tuple(body["errors"]["proxy_url"]))

    assert len(messages) == 1
    assert not BrokerAccount.objects.exists()
    assert connections() == 0


def test_a_proxy_on_a_public_address_is_accepted(dns, kite_sim):  # noqa: F811
    dns["squid.proxy.test"] = [PUBLIC_ADDRESS]
    client = client_for(UserFactory())

    response = connect_kite(client, "http://user:secret@squid.proxy.test:3128")

    assert response.status_code == 201, response.json()
    assert response.json()["account"]["proxy"] == "http://squid.proxy.test:3128"
    assert BrokerAccount.objects.get().proxy_url == "http://user:secret@squid.proxy.test:3128"


def test_a_proxy_name_that_rebinds_to_our_network_reaches_nothing(dns, listener, dhan_sim):
    port, connections = listener
    dns["rebind.proxy.test"] = [PUBLIC_ADDRESS, "127.0.0.1"]  # public when saved, loopback when connected
    client = client_for(UserFactory())

    body = assert_error(connect_dhan(client, f"http://rebind.proxy.test:{port}"), 400, "VALIDATION_ERROR")

    assert PROXY_UNREACHABLE in body["detail"]
    assert connections() == 0
    assert not BrokerAccount.objects.exists()


def test_a_stored_internal_proxy_is_never_used_and_every_failure_reads_the_same(
    dns,
    listener,
    kite_sim,  # noqa: F811
    settings,
):
    settings.BROKER_CIRCUIT_FAILURES = 100
    port, connections = listener
    owner = UserFactory()
    account, client = connect_zerodha(client_for(owner))
    stored = BrokerAccount.objects.get(pk=account["id"])
    answers = []

    # Stored before the check existed, or a public name that now resolves to our own network.
    dns["stale.proxy.test"] = ["127.0.0.1"]
    for proxy_url in (
        f"http://127.0.0.1:{port}",
        f"http://127.0.0.1:{closed_port()}",
        f"http://stale.proxy.test:{port}",
        "http://169.254.169.254:80",
    ):
        BrokerAccount.objects.filter(pk=stored.pk).update(proxy_url=proxy_url)
        body = assert_error(client.get(f"/api/brokers/{stored.pk}/funds"), 503, "BROKER_UNAVAILABLE")
        answers.append((body["detail"], body.get("errors")))

    assert connections() == 0
    assert len(set(map(str, answers))) == 1
    assert "could not be reached" in answers[0][0]


def test_an_operators_session_check_does_not_use_a_stored_internal_proxy(listener, kite_sim):  # noqa: F811
    from brokers import services

    port, connections = listener
    account, _ = connect_zerodha(client_for(UserFactory()))
    BrokerAccount.objects.filter(pk=account["id"]).update(proxy_url=f"http://127.0.0.1:{port}")

    verdict = services.broker_session_check(account=BrokerAccount.objects.get(pk=account["id"]))

    assert connections() == 0
    assert verdict == "failed: Zerodha could not be reached."


def test_without_a_proxy_the_broker_is_reached_directly(kite_sim):  # noqa: F811
    account, client = connect_zerodha(client_for(UserFactory()))

    assert client.get(f"/api/brokers/{account['id']}/funds").status_code == 200
