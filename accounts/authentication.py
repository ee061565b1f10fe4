"""Access-token authentication for REST and WebSocket: the user is loaded on every request, so a deactivation
or a logout takes effect at once, also for tokens already issued."""

from __future__ import annotations

from datetime import UTC, datetime

from django.core.cache import cache
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import AccessToken, Token

from accounts.models import User
from algoterm import request_context
from algoterm.api.errors import AccountDeactivated, AccountDeactivatedForDrf, AppError, AuthInvalid, AuthInvalidForDrf

_REVOKED_ACCESS_PREFIX = "revoked-access:"


def access_token_revoke(token: Token) -> None:
    """Refuse this access token until it would have expired anyway (logout)."""
    remaining = int(token["exp"] - datetime.now(tz=UTC).timestamp())
    if remaining > 0:
        cache.set(f"{_REVOKED_ACCESS_PREFIX}{token['jti']}", True, timeout=remaining + 1)


def _user_for_validated_token(token: Token) -> User:
    if cache.get(f"{_REVOKED_ACCESS_PREFIX}{token.get('jti')}"):
        raise AuthInvalid("This token has been revoked; log in again.")
    user = User.objects.filter(pk=token.get("user_id")).first()
    if user is None:
        raise AuthInvalid()
    if not user.is_active:
        raise AccountDeactivated()
    request_context.bind(user_id=user.pk)
    return user


def authenticate_access_token(raw_token: str) -> User:
    """The active user an access token belongs to; raises AuthInvalid or AccountDeactivated."""
    try:
        token = AccessToken(raw_token)
    except TokenError:
        raise AuthInvalid() from None
    return _user_for_validated_token(token)


class AccessTokenAuthentication(JWTAuthentication):
    def get_user(self, validated_token: Token) -> User:
        try:
            return _user_for_validated_token(validated_token)
        except AccountDeactivated as error:
            raise AccountDeactivatedForDrf(error.detail) from None
        except AppError as error:
            raise AuthInvalidForDrf(error.detail) from None
