"""Access-token authentication for REST and WebSocket: the user is loaded on every request, so a deactivation
or a logout takes effect at once, also for tokens already issued. Revocations live in PostgreSQL and are read in the
same query as the user, so a Redis outage neither lets a logged-out token back in nor turns requests into errors."""

from __future__ import annotations

from django.db.models import Exists
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import AccessToken, Token

from accounts.models import RevokedAccessToken, User
from algoterm import request_context
from algoterm.api.errors import AccountDeactivated, AccountDeactivatedForDrf, AppError, AuthInvalid, AuthInvalidForDrf


def _issued_before_family_revocation(token: Token, user: User) -> bool:
    # `iat` has whole seconds: a token from the second of the revocation is refused too, never one from before it.
    return user.tokens_revoked_at is not None and int(token.get("iat", 0)) <= int(user.tokens_revoked_at.timestamp())


def _user_for_validated_token(token: Token) -> User:
    revoked = RevokedAccessToken.objects.filter(jti=token.get("jti"))
    user = User.objects.filter(pk=token.get("user_id")).annotate(token_revoked=Exists(revoked)).first()
    if user is None:
        raise AuthInvalid()
    if user.token_revoked or _issued_before_family_revocation(token, user):
        raise AuthInvalid("This token has been revoked; log in again.")
    if not user.is_active:
        raise AccountDeactivated()
    request_context.bind(user_id=user.pk)
    return user


def authenticate_access_token(raw_token: str) -> tuple[User, AccessToken]:
    """The active user an access token belongs to, and the verified token (WebSockets keep its `jti` and `exp` to
    follow a logout and the expiry); raises AuthInvalid or AccountDeactivated."""
    try:
        token = AccessToken(raw_token)
    except TokenError:
        raise AuthInvalid() from None
    return _user_for_validated_token(token), token


class AccessTokenAuthentication(JWTAuthentication):
    def get_user(self, validated_token: Token) -> User:
        try:
            return _user_for_validated_token(validated_token)
        except AccountDeactivated as error:
            raise AccountDeactivatedForDrf(error.detail) from None
        except AppError as error:
            raise AuthInvalidForDrf(error.detail) from None
