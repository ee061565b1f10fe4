"""Where a broker account's egress proxy may point: only at public addresses.

The proxy URL is the user's, so it is checked twice: when it is saved (its host must resolve, and only to public
addresses) and again at every connection to it, against the addresses the connection actually uses, so a name that
later resolves to our own network (DNS rebinding) or a proxy stored before this check reaches nothing of ours. Every
failure at or through the proxy reads the same to the user, so the proxy setting cannot map ports.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.timeout import _DEFAULT_TIMEOUT

PROXY_SCHEMES = ("http", "https")
PROXY_UNREACHABLE = "The broker could not be reached through this account's proxy."

# Not covered by `ipaddress`'s own flags: shared address space (CGNAT) and the AWS IPv6 metadata endpoint's range.
_REFUSED_NETWORKS = (
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("fd00:ec2::/32"),
)

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class EgressRefused(OSError):
    """The proxy's host is, or resolves to, an address that is not public."""


def address_is_public(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not address_is_public(str(embedded)):
            return False
    if any(ip in network for network in _REFUSED_NETWORKS if network.version == ip.version):
        return False
    return ip.is_global and not (
        ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback or ip.is_link_local
    )


def public_addresses(host: str, port: int) -> list[tuple]:
    """Every address `host` resolves to, as `getaddrinfo` rows; EgressRefused unless each one is public."""
    try:
        rows = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise EgressRefused(f"cannot resolve {host!r}") from error
    if not rows or not all(address_is_public(str(row[4][0])) for row in rows):
        raise EgressRefused(f"{host!r} is not a public address")
    return rows


def proxy_url_is_public(proxy_url: str) -> bool:
    """For saving a proxy: a URL we can use (http or https, a host) whose host resolves to public addresses only."""
    try:
        parts = urlsplit(proxy_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    if parts.scheme not in PROXY_SCHEMES or not parts.hostname:
        return False
    try:
        public_addresses(parts.hostname, port)
    except EgressRefused:
        return False
    return True


def _connect_public(host: str, port: int, timeout, source_address, socket_options) -> socket.socket:
    """urllib3's `create_connection`, connecting only to addresses checked in this very resolution."""
    last_error: OSError | None = None
    for family, kind, protocol, _, address in public_addresses(host, port):
        sock = None
        try:
            sock = socket.socket(family, kind, protocol)
            for option in socket_options or ():
                sock.setsockopt(*option)
            if timeout is not _DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(address)
            return sock
        except OSError as error:
            last_error = error
            if sock is not None:
                sock.close()
    raise last_error or EgressRefused(f"no address for {host!r}")


class _PublicOnly:
    """A urllib3 connection (in a proxy pool, every socket goes to the proxy) that connects only to public hosts."""

    def _new_conn(self) -> socket.socket:
        try:
            return _connect_public(self._dns_host, self.port, self.timeout, self.source_address, self.socket_options)
        except TimeoutError as error:
            raise ConnectTimeoutError(self, PROXY_UNREACHABLE) from error
        except OSError as error:
            raise NewConnectionError(self, PROXY_UNREACHABLE) from error


class _PublicHTTPConnection(_PublicOnly, HTTPConnection):
    pass


class _PublicHTTPSConnection(_PublicOnly, HTTPSConnection):
    pass


class _PublicHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection


def _endpoint(proxy_url: str) -> tuple[str, int | None]:
    try:
        parts = urlsplit(proxy_url if "://" in proxy_url else f"http://{proxy_url}")
        return (parts.hostname or "").lower(), parts.port
    except ValueError:
        return "", None


class PublicProxyAdapter(HTTPAdapter):
    """The requests transport of a broker SDK session. Connections through the account's proxy (`user_proxy`) go
    only to public addresses, and whatever goes wrong at or through it is one `ProxyError` with one message; direct
    connections and the operator's own environment proxies are left as they are."""

    def __init__(self, user_proxy: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self._user_proxy = _endpoint(user_proxy) if user_proxy else None

    def _is_user_proxy(self, proxy: str | None) -> bool:
        return bool(proxy) and self._user_proxy is not None and _endpoint(proxy) == self._user_proxy

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        if not self._is_user_proxy(proxy):
            return super().proxy_manager_for(proxy, **proxy_kwargs)
        if urlsplit(proxy).scheme.lower() not in PROXY_SCHEMES:
            raise requests.exceptions.ProxyError(PROXY_UNREACHABLE)
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = {"http": _PublicHTTPConnectionPool, "https": _PublicHTTPSConnectionPool}
        return manager

    def send(self, request, **kwargs):  # type: ignore[override]
        if not self._is_user_proxy(requests.utils.select_proxy(request.url, kwargs.get("proxies") or {})):
            return super().send(request, **kwargs)
        try:
            return super().send(request, **kwargs)
        except requests.RequestException:
            raise requests.exceptions.ProxyError(PROXY_UNREACHABLE, request=request) from None


def session_guard(session: requests.Session, adapter: PublicProxyAdapter) -> requests.Session:
    """Mount the public-only proxy transport on an SDK's requests session, for every scheme."""
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
