"""How WebSockets authenticate their access token: the accounts app registers its authenticator from its
AppConfig.ready(), so the WebSocket base (core) never imports accounts. With none registered every socket is
refused, never let in."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from algoterm.api.errors import AuthInvalid

logger = logging.getLogger(__name__)

# raw access token -> (the active user, the verified token with its `jti` and `exp`); raises AppError when refused
TokenAuthenticator = Callable[[str], tuple[Any, Any]]

_authenticator: TokenAuthenticator | None = None


def socket_authenticator_register(authenticator: TokenAuthenticator) -> None:
    """Set how sockets authenticate (one authenticator; registering again replaces it)."""
    global _authenticator
    _authenticator = authenticator


def socket_token_authenticate(raw_token: str) -> tuple[Any, Any]:
    """(user, verified token) by the registered authenticator; AuthInvalid when none is registered."""
    authenticator = _authenticator
    if authenticator is None:
        logger.error("no WebSocket token authenticator registered; refusing the socket")
        raise AuthInvalid("Sockets cannot authenticate on this server.")
    return authenticator(raw_token)
