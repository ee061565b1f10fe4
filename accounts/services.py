"""Every write of the accounts app: registration, sessions, profile and role changes, audit, notifications."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth import authenticate, password_validation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from accounts import login_limits
from accounts.models import ROLE_RANK, AuditEvent, Notification, RevokedAccessToken, Role, User
from accounts.signals import notification_created, trading_revoked_send
from accounts.validators import normalize_email, normalize_phone
from algoterm import realtime, request_context
from algoterm.api.errors import (
    AccountDeactivated,
    AuthInvalid,
    ErrorCode,
    InvalidState,
    PermissionDenied,
    RateLimited,
    ValidationFailed,
)
from algoterm.locking import row_locked, rows_locked

logger = logging.getLogger(__name__)


# --- audit -------------------------------------------------------------------------------------------------------


def audit_record(
    *,
    action: str,
    actor: User | None = None,
    target: Any = None,
    target_type: str = "",
    target_id: str = "",
    details: dict[str, Any] | None = None,
    ip: str | None = None,
) -> AuditEvent:
    """Append one audit event. `action` is `<kind>.<verb>`; request id and client IP come from the context."""
    kind = action.split(".", 1)[0]
    if kind not in AuditEvent.Kind.values:
        raise ValueError(f"audit action {action!r} has an unknown kind")
    if target is not None:
        target_type = target_type or target._meta.model_name
        target_id = target_id or str(target.pk)
    return AuditEvent.objects.create(
        kind=kind,
        action=action,
        actor=actor,
        target_type=target_type,
        target_id=target_id,
        ip=ip or request_context.current_client_ip(),
        request_id=request_context.current_request_id() or "",
        details=details or {},
    )


# --- tokens --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenPair:
    access: str
    refresh: str
    access_expires_in: int
    refresh_expires_in: int


class _UncheckedRefreshToken(RefreshToken):
    """Verifies signature and expiry only; rotation checks the blacklist itself, under a row lock."""

    def check_blacklist(self) -> None:
        return None


def _issue_tokens(user: User) -> TokenPair:
    refresh = RefreshToken.for_user(user)
    return TokenPair(
        access=str(refresh.access_token),
        refresh=str(refresh),
        access_expires_in=int(jwt_settings.ACCESS_TOKEN_LIFETIME.total_seconds()),
        refresh_expires_in=int(jwt_settings.REFRESH_TOKEN_LIFETIME.total_seconds()),
    )


def _parse_refresh(raw: str) -> RefreshToken:
    try:
        return _UncheckedRefreshToken(raw)
    except TokenError:
        raise AuthInvalid("The refresh token is invalid or has expired.") from None


def _locked_outstanding(token: RefreshToken) -> OutstandingToken | None:
    """The token's row, locked until the transaction ends, so two requests never both spend it."""
    return rows_locked(OutstandingToken.objects.filter(jti=token[jwt_settings.JTI_CLAIM])).first()


def _access_token_revoke(token: AccessToken) -> None:
    """Refuse this access token until it would have expired anyway (authentication reads the row)."""
    expires_at = datetime.fromtimestamp(token["exp"], tz=UTC)
    if expires_at > timezone.now():
        RevokedAccessToken.objects.get_or_create(jti=token["jti"], defaults={"expires_at": expires_at})


def _revoke_all_refresh_tokens(user: User) -> int:
    outstanding = OutstandingToken.objects.filter(user=user, expires_at__gt=timezone.now()).exclude(
        blacklistedtoken__isnull=False
    )
    revoked = [BlacklistedToken(token=token) for token in outstanding]
    BlacklistedToken.objects.bulk_create(revoked, ignore_conflicts=True)
    return len(revoked)


# --- registration and sessions -------------------------------------------------------------------------------------


def _validated_password(password: str, user: User) -> None:
    try:
        password_validation.validate_password(password, user=user)
    except DjangoValidationError as error:
        raise ValidationFailed(errors={"password": list(error.messages)}) from None


def _normalized_phone(phone: str) -> str:
    try:
        return normalize_phone(phone)
    except ValueError as error:
        raise ValidationFailed(errors={"phone": [str(error)]}) from None


@transaction.atomic
def user_register(*, name: str, email: str, phone: str, password: str) -> tuple[User, TokenPair]:
    email = normalize_email(email)
    user = User(email=email, name=name.strip(), phone=_normalized_phone(phone), role=Role.TRADER)
    _validated_password(password, user)
    user.set_password(password)
    if User.objects.filter(email=email).exists():
        raise ValidationFailed(errors={"email": ["An account with this email already exists."]})
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:  # a concurrent registration of the same email won the race
        raise ValidationFailed(errors={"email": ["An account with this email already exists."]}) from None
    audit_record(action="auth.register", actor=user, target=user)
    tokens = _issue_tokens(user)
    notification_create(
        user=user,
        kind="account.welcome",
        title="Welcome to AlgoTerm",
        body="Connect a broker account or start with the paper broker to place your first order.",
    )
    return user, tokens


def auth_login(*, email: str, password: str) -> tuple[User, TokenPair]:
    """Failures say the same thing whether or not the email exists, and count toward the per-IP/email limit."""
    email = normalize_email(email)
    ip = request_context.current_client_ip()
    wait = login_limits.attempt_begin(ip=ip, email=email)
    if wait:
        logger.warning("login refused: too many failures", extra={"client_ip": ip})
        raise RateLimited("Too many failed logins. Try again later.", retry_after=wait)
    user = authenticate(None, email=email, password=password)
    if user is None:
        with transaction.atomic():
            audit_record(action="auth.login_failed", details={"email": email})
        raise AuthInvalid("Invalid email or password.")
    login_limits.attempt_succeeded(ip=ip, email=email)
    if not user.is_active:
        with transaction.atomic():
            audit_record(action="auth.login_refused", actor=user, target=user, details={"reason": "deactivated"})
        raise AccountDeactivated()
    with transaction.atomic():
        user.last_login = timezone.now()
        user.save(update_fields=["last_login"])
        audit_record(action="auth.login", actor=user, target=user)
        return user, _issue_tokens(user)


def auth_refresh(*, refresh: str) -> TokenPair:
    """Rotate: the presented refresh token is spent and a new pair issued. A spent token never works again,
    even when two requests present it at once (the outstanding-token row is locked)."""
    token = _parse_refresh(refresh)
    with transaction.atomic():
        outstanding = _locked_outstanding(token)
        if outstanding is None or outstanding.user is None:
            raise AuthInvalid("The refresh token is invalid or has expired.")
        user = outstanding.user
        reused = BlacklistedToken.objects.filter(token=outstanding).exists()
        if not reused and user.is_active:
            BlacklistedToken.objects.create(token=outstanding)
            return _issue_tokens(user)
    if not user.is_active:
        raise AccountDeactivated()
    ended_with_its_family = (
        user.tokens_revoked_at is not None
        and outstanding.created_at is not None
        and outstanding.created_at <= user.tokens_revoked_at
    )
    if not ended_with_its_family:
        _token_family_revoke(user=user, reused_jti=outstanding.jti)
    raise AuthInvalid("This refresh token has already been used or revoked; log in again.")


@transaction.atomic
def _token_family_revoke(*, user: User, reused_jti: str) -> None:
    """A spent refresh token came back: someone holds a copy (stolen, or a client replaying it). Whichever of the two
    rotated first, neither can be told apart from the other, so every session of the user ends: all refresh tokens
    and every access token issued so far. The user is told, and logs in again with the password."""
    revoked = _revoke_all_refresh_tokens(user)
    User.objects.filter(pk=user.pk).update(tokens_revoked_at=timezone.now())
    audit_record(
        action="auth.refresh_reused",
        actor=user,
        target=user,
        details={"jti": reused_jti, "revoked_refresh_tokens": revoked, "revoked_access_tokens": "all"},
    )
    notification_create(
        user=user,
        kind="account.sessions_revoked",
        title="You were signed out everywhere",
        body="A sign-in token of your account was used twice, which happens when it was copied. Every session has "
        "been ended; log in again, and change your password if you did not expect this.",
        level=Notification.Level.WARNING,
    )
    realtime.user_sockets_close(
        user_id=user.pk, code=ErrorCode.AUTH_INVALID, reason="Every session of this account was ended."
    )


@transaction.atomic
def auth_logout(*, user: User, refresh: str, access: AccessToken | None = None) -> None:
    """Ends this device's session: its refresh token is revoked and its access token refused from now on."""
    token = _parse_refresh(refresh)
    outstanding = _locked_outstanding(token)
    if outstanding is None or outstanding.user_id != user.pk:
        raise ValidationFailed(errors={"refresh": ["This refresh token does not belong to your session."]})
    BlacklistedToken.objects.get_or_create(token=outstanding)
    if access is not None:
        _access_token_revoke(access)
        realtime.user_sockets_close(
            user_id=user.pk, code=ErrorCode.AUTH_INVALID, reason="Logged out.", jti=access["jti"]
        )
    audit_record(action="auth.logout", actor=user, target=user)


# --- users -------------------------------------------------------------------------------------------------------

SELF_EDITABLE_FIELDS = frozenset({"name", "phone"})
ADMIN_EDITABLE_FIELDS = frozenset({"role", "status"})


@transaction.atomic
def user_update(*, actor: User, user: User, data: dict[str, Any]) -> User:
    """Self: name and phone. Admin: role and status of other users. Nobody raises their own role."""
    is_self = actor.pk == user.pk
    allowed = (SELF_EDITABLE_FIELDS if is_self else frozenset()) | (
        ADMIN_EDITABLE_FIELDS if actor.is_admin and not is_self else frozenset()
    )
    refused = sorted(set(data) - allowed)
    if refused:
        if is_self and set(refused) & ADMIN_EDITABLE_FIELDS:
            raise PermissionDenied("You cannot change your own role or status.")
        raise PermissionDenied(f"You cannot change: {', '.join(refused)}.")
    user = row_locked(User.objects, pk=user.pk)
    changes: dict[str, list[Any]] = {}
    if "name" in data:
        name = data["name"].strip()
        if not name:
            raise ValidationFailed(errors={"name": ["This field may not be blank."]})
        changes["name"] = [user.name, name]
        user.name = name
    if "phone" in data:
        phone = _normalized_phone(data["phone"])
        changes["phone"] = [user.phone, phone]
        user.phone = phone
    if "role" in data and data["role"] != user.role:
        if data["role"] not in Role.values:
            raise ValidationFailed(errors={"role": [f"Must be one of {', '.join(Role.values)}."]})
        changes["role"] = [user.role, data["role"]]
        user.role = data["role"]
    if changes:
        user.save(update_fields=list(changes))
        action = "admin.user_role_change" if "role" in changes else "user.profile_update"
        audit_record(action=action, actor=actor, target=user, details={"changes": changes})
    if "role" in changes:
        role_change_settle(actor=actor, user=user, previous_role=changes["role"][0])
    if "status" in data:
        if data["status"] == "deactivated" and user.is_active:
            user = user_deactivate(actor=actor, user=user, reason="status changed by admin")
        elif data["status"] == "active" and not user.is_active:
            user = user_reactivate(actor=actor, user=user)
    return user


def role_change_settle(*, actor: User | None, user: User, previous_role: str) -> None:
    """What a role change sets off (made here or in the admin's form): a user who could trade and no longer can
    has their running strategies stopped."""
    if User(role=previous_role).can_trade and not user.can_trade:
        trading_revoked_send(user=user, actor=actor, reason=f"role changed to {user.get_role_display()}")
    if previous_role != user.role:
        realtime.user_role_changed(user_id=user.pk, role=user.role)


def _rank(role: str) -> int:
    return ROLE_RANK[Role(role)]


@transaction.atomic
def user_deactivate(*, actor: User | None, user: User, reason: str = "") -> User:
    """Deactivation is immediate: tokens already issued stop working, refresh tokens are revoked and live
    WebSocket connections are closed."""
    user = row_locked(User.objects, pk=user.pk)
    if actor is not None and actor.pk == user.pk:
        raise PermissionDenied("You cannot deactivate yourself.")
    if actor is not None and _rank(user.role) > _rank(actor.role):
        raise PermissionDenied("You cannot deactivate a user with a higher role.")
    if not user.is_active:
        raise InvalidState("The user is already deactivated.")
    user.is_active = False
    user.deactivated_at = timezone.now()
    user.save(update_fields=["is_active", "deactivated_at"])
    revoked = _revoke_all_refresh_tokens(user)
    audit_record(
        action="admin.user_deactivate", actor=actor, target=user, details={"reason": reason, "revoked_tokens": revoked}
    )
    trading_revoked_send(user=user, actor=actor, reason="account deactivated")
    realtime.user_sockets_close(user_id=user.pk, code=ErrorCode.ACCOUNT_DEACTIVATED, reason="Account deactivated.")
    return user


@transaction.atomic
def user_reactivate(*, actor: User | None, user: User) -> User:
    user = row_locked(User.objects, pk=user.pk)
    if user.is_active:
        raise InvalidState("The user is already active.")
    user.is_active = True
    user.deactivated_at = None
    user.save(update_fields=["is_active", "deactivated_at"])
    audit_record(action="admin.user_reactivate", actor=actor, target=user)
    return user


# --- notifications -----------------------------------------------------------------------------------------------


# No savepoint: it is part of the transaction of what it reports (a fill), which fails with it, and a savepoint
# costs two more statements on every fill.
@transaction.atomic(savepoint=False)
def notification_create(
    *,
    user: User,
    kind: str,
    title: str,
    body: str = "",
    level: str = Notification.Level.INFO,
    data: dict[str, Any] | None = None,
) -> Notification:
    """Store a notification and push it to the user's live connections once the transaction commits."""
    notification = Notification.objects.create(
        user=user, kind=kind, title=title, body=body, level=level, data=realtime.to_wire(data or {})
    )
    notification_created.send(sender=Notification, notification=notification)
    return notification


@transaction.atomic
def notification_mark_read(*, notification: Notification) -> Notification:
    if notification.read_at is None:
        notification.read_at = timezone.now()
        notification.save(update_fields=["read_at"])
    return notification


@transaction.atomic
def notification_mark_all_read(*, user: User) -> int:
    return Notification.objects.filter(user=user, read_at__isnull=True).update(read_at=timezone.now())


@transaction.atomic
def notifications_purge_old(*, older_than) -> int:
    deleted, _ = Notification.objects.filter(created_at__lt=older_than, read_at__isnull=False).delete()
    return deleted


@transaction.atomic
def tokens_purge_expired() -> int:
    """Expired tokens can no longer be presented, so their rows (refresh tokens with their blacklist entries, and
    access-token revocations) can go."""
    now = timezone.now()
    deleted, _ = OutstandingToken.objects.filter(expires_at__lte=now).delete()
    revocations, _ = RevokedAccessToken.objects.filter(expires_at__lte=now).delete()
    return deleted + revocations


@transaction.atomic
def user_provision(*, email: str, password: str, role: str, name: str = "", phone: str = "") -> tuple[User, bool]:
    """The user with this email, created with the role when absent (an admin gets the Django admin too); returns
    (user, created). For operators' tooling and demo seeding: no login, no tokens, an existing user is left as is."""
    existing = User.objects.filter(email=normalize_email(email)).first()
    if existing is not None:
        return existing, False
    fields = {"name": name, "phone": phone, "role": role}
    if role == Role.ADMIN:
        user = User.objects.create_superuser(email, password, **fields)
    else:
        user = User.objects.create_user(email, password, **fields)
    audit_record(action="user.provision", target=user, details={"role": role})
    return user, True
