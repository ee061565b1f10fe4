"""Every write of the brokers app: connecting accounts, completing broker logins, session lifecycle, disconnecting."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core import signing
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import User
from accounts.selectors import user_row_lock
from accounts.services import audit_record, notification_create
from algoterm.api.errors import InvalidState, NotFound, ValidationFailed
from algoterm.locking import row_locked
from billing.services import require_broker_account_slot
from brokers import exchange
from brokers.egress import proxy_url_is_public
from brokers.gateway import adapter_for, build_adapter
from brokers.models import AccountStatus, Broker, BrokerAccount
from brokers.protocol import BrokerError, BrokerSession, SessionExpired
from brokers.sessions import broker_session_mark_expired

logger = logging.getLogger(__name__)
IST = ZoneInfo(settings.MARKET_TIMEZONE)
_STATE_SALT = "brokers.login-state"

REQUIRED_CREDENTIALS: dict[str, tuple[str, ...]] = {
    Broker.PAPER: (),
    Broker.ZERODHA: ("api_key", "api_secret"),
    Broker.DHAN: ("client_id", "access_token"),
    Broker.FYERS: ("client_id", "secret_key"),
}
OPTIONAL_CREDENTIALS: dict[str, tuple[str, ...]] = {Broker.PAPER: ("opening_balance",)}


@dataclass(frozen=True)
class ConnectResult:
    account: BrokerAccount
    login_url: str | None


def callback_url(broker: str) -> str:
    return f"{settings.PUBLIC_BASE_URL.rstrip('/')}/api/brokers/callback/{broker}"


def session_expiry_after(moment: datetime) -> datetime:
    """The next daily cut-off (06:00 IST by default) after `moment`: brokers end API sessions every day."""
    hour, minute = (int(part) for part in settings.BROKER_SESSION_EXPIRY_TIME.split(":"))
    local = moment.astimezone(IST)
    cutoff = datetime.combine(local.date(), time(hour, minute), tzinfo=IST)
    if cutoff <= local:
        cutoff += timedelta(days=1)
    return cutoff


def _clean_credentials(broker: str, credentials: dict[str, Any]) -> dict[str, Any]:
    required = REQUIRED_CREDENTIALS[broker]
    allowed = set(required) | set(OPTIONAL_CREDENTIALS.get(broker, ()))
    errors: dict[str, list[str]] = {}
    for name in sorted(set(credentials) - allowed):
        errors[f"credentials.{name}"] = ["Unknown field for this broker."]
    for name in required:
        value = credentials.get(name)
        if not isinstance(value, str) or not value.strip():
            errors[f"credentials.{name}"] = ["This field is required."]
    cleaned = {name: str(credentials[name]).strip() for name in required if name in credentials}
    if broker == Broker.PAPER and credentials.get("opening_balance") is not None:
        try:
            balance = Decimal(str(credentials["opening_balance"]))
        except InvalidOperation:
            balance = Decimal("-1")
        if not balance.is_finite():
            balance = Decimal("-1")
        if not (Decimal("1000") <= balance <= Decimal("100000000")):
            errors["credentials.opening_balance"] = ["Between 1,000 and 10,00,00,000 rupees."]
        cleaned["opening_balance"] = str(balance)
    if errors:
        raise ValidationFailed(errors=errors)
    return cleaned


def _validated_proxy(proxy_url: str) -> str:
    """An http(s) proxy whose host resolves to public addresses only; one message whatever is wrong with it."""
    if not proxy_url:
        return ""
    if not proxy_url_is_public(proxy_url):
        raise ValidationFailed(
            errors={
                "proxy_url": ["An http(s) proxy on a public address, like http://user:pass@proxy.example.com:3128."]
            }
        )
    return proxy_url


def masked_proxy(proxy_url: str) -> str:
    """The proxy without its password, for showing."""
    if not proxy_url:
        return ""
    parts = urlsplit(proxy_url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, "", "", ""))


def _login_state(account: BrokerAccount) -> str:
    """A signed, expiring state for one login link. Its nonce makes it single-use: completing a login clears it,
    and a newer link replaces it."""
    account.login_nonce = secrets.token_urlsafe(16)
    BrokerAccount.objects.filter(pk=account.pk).update(login_nonce=account.login_nonce)
    payload = {"account": account.pk, "owner": account.owner_id, "nonce": account.login_nonce}
    return signing.dumps(payload, salt=_STATE_SALT, compress=True)


def _account_from_state(state: str, broker: str) -> BrokerAccount:
    try:
        data = signing.loads(state, salt=_STATE_SALT, max_age=settings.BROKER_LOGIN_STATE_MAX_AGE)
    except signing.BadSignature:
        raise ValidationFailed(errors={"state": ["The login link is invalid or has expired; start again."]}) from None
    account = (
        BrokerAccount.objects.select_related("owner")
        .filter(pk=data.get("account"), owner_id=data.get("owner"), broker=broker, deleted_at__isnull=True)
        .first()
    )
    if account is None or not account.owner.is_active:
        raise NotFound()
    if not account.login_nonce or not secrets.compare_digest(account.login_nonce, str(data.get("nonce", ""))):
        raise ValidationFailed(errors={"state": ["This login link was already used or replaced; start again."]})
    return account


def _adapter(account: BrokerAccount, credentials: dict[str, Any] | None = None, session: dict | None = None):
    return build_adapter(
        broker=account.broker,
        credentials=credentials if credentials is not None else account.credentials,
        session=session,
        account_ref=account.pk,
        proxy_url=account.proxy_url,
    )


def _store_session(account: BrokerAccount, session: BrokerSession, *, actor: User | None, via: str) -> BrokerAccount:
    """Under the row lock, so a disconnect that committed while the broker answered is never undone."""
    fresh_credentials = account.credentials
    account = row_locked(BrokerAccount.objects.all(), pk=account.pk)
    if account.deleted_at is not None:
        raise InvalidState("This broker account was disconnected during the login.")
    account.credentials = fresh_credentials
    now = timezone.now()
    stored: dict[str, Any] = {"access_token": session.access_token, "broker_user_id": session.broker_user_id}
    if session.extra:  # e.g. Fyers' refresh token: encrypted with the rest, never shown or logged
        stored["extra"] = session.extra
    renewed_until = account.session_expires_at if via == "renewal" else None
    account.session = stored
    account.client_id = session.broker_user_id or account.client_id
    account.status = AccountStatus.CONNECTED
    account.connected_at = now
    # A session renewed before the day's cut-off serves the next trading day: it lasts until the cut-off after.
    account.session_expires_at = (
        None if account.broker == Broker.PAPER else session_expiry_after(max(now, renewed_until or now))
    )
    account.last_error = ""
    account.last_error_at = None
    account.login_nonce = ""
    account.save()
    audit_record(action="broker.session_start", actor=actor, target=account, details={"via": via})
    return account


def _record_error(account: BrokerAccount, error: BrokerError) -> None:
    """Remember what went wrong; a failed or abandoned re-login never takes a working session offline."""
    rows = BrokerAccount.objects.filter(pk=account.pk)
    rows.update(last_error=str(error.detail)[:500], last_error_at=timezone.now())
    rows.exclude(status=AccountStatus.CONNECTED).update(status=AccountStatus.ERROR)


def broker_account_connect(
    *,
    user: User,
    broker: str,
    credentials: dict[str, Any],
    label: str = "",
    proxy_url: str = "",
) -> ConnectResult:
    """Paper connects at once; Dhan's token is checked at Dhan first; OAuth brokers answer with a login URL whose
    signed, expiring state binds the callback to this user and account."""
    if broker not in Broker.values:
        raise ValidationFailed(errors={"broker": [f"One of {', '.join(Broker.values)}."]})
    require_broker_account_slot(
        user=user, current=BrokerAccount.objects.filter(owner=user, deleted_at__isnull=True).count()
    )
    credentials = _clean_credentials(broker, credentials)
    proxy_url = _validated_proxy(proxy_url)
    adapter = build_adapter(broker=broker, credentials=credentials, session=None, account_ref="", proxy_url=proxy_url)
    session = None
    if not adapter.uses_oauth and broker != Broker.PAPER:
        try:
            session = adapter.complete_login(params={}, redirect_uri="")
        except BrokerError as error:
            raise ValidationFailed(
                f"The broker refused these credentials: {error.detail}", errors={"credentials": [str(error.detail)]}
            ) from None
    with transaction.atomic():
        # Counted again under the user's row lock: two connects at once cannot both take the last slot.
        user_row_lock(user=user)
        require_broker_account_slot(
            user=user, current=BrokerAccount.objects.filter(owner=user, deleted_at__isnull=True).count()
        )
        account = BrokerAccount(
            owner=user,
            broker=broker,
            label=label.strip() or Broker(broker).label,
            proxy_url=proxy_url,
            algo_id=settings.BROKER_DEFAULT_ALGO_ID,  # the operator's to change, per account, in the admin
        )
        account.credentials = credentials
        account.save()
        audit_record(action="broker.connect", actor=user, target=account, details={"broker": broker})
        if adapter.uses_oauth:
            login_url = _adapter(account).login_url(state=_login_state(account), redirect_uri=callback_url(broker))
            return ConnectResult(account, login_url)
        if session is None:
            session = _adapter(account).complete_login(params={}, redirect_uri="")
        return ConnectResult(_store_session(account, session, actor=user, via="connect"), None)


def broker_login_complete(*, broker: str, params: dict[str, str]) -> BrokerAccount:
    """The OAuth callback: the state says whose account this is; the broker's parameters become a session."""
    account = _account_from_state(params.get("state", ""), broker)
    try:
        session = _adapter(account).complete_login(params=params, redirect_uri=callback_url(broker))
    except BrokerError as error:
        _record_error(account, error)
        raise
    with transaction.atomic():
        account = _store_session(account, session, actor=account.owner, via="oauth")
        notification_create(
            user=account.owner,
            kind="broker.connected",
            title=f"{account.label} connected",
            body="Your broker session is active until the next daily re-login.",
            level="success",
            data={"account_id": account.pk},
        )
    return account


def broker_account_refresh(
    *, user: User, account: BrokerAccount, credentials: dict[str, Any] | None = None
) -> ConnectResult:
    """A fresh login: a new login URL for OAuth brokers, a new token for Dhan, a reset for paper."""
    adapter = _adapter(account)
    if adapter.uses_oauth:
        if credentials:
            raise ValidationFailed(errors={"credentials": ["Log in through the login URL instead."]})
        return ConnectResult(
            account, adapter.login_url(state=_login_state(account), redirect_uri=callback_url(account.broker))
        )
    new_credentials = account.credentials
    if account.broker == Broker.DHAN:
        if not credentials or not credentials.get("access_token"):
            raise ValidationFailed(errors={"credentials.access_token": ["Dhan needs a new access token."]})
        new_credentials = {**new_credentials, "access_token": str(credentials["access_token"]).strip()}
    try:
        session = _adapter(account, credentials=new_credentials).complete_login(params={}, redirect_uri="")
    except BrokerError as error:
        _record_error(account, error)
        raise
    with transaction.atomic():
        account.credentials = new_credentials
        return ConnectResult(_store_session(account, session, actor=user, via="refresh"), None)


def broker_account_disconnect(*, user: User, account: BrokerAccount) -> None:
    """Log out at the broker (best effort), wipe every secret, keep the row for the orders that refer to it."""
    if account.status == AccountStatus.CONNECTED:
        try:
            _adapter(account, session=account.session).logout()
        except BrokerError as error:
            logger.warning("broker logout failed", extra={"account_id": account.pk, "error": str(error.detail)})
    with transaction.atomic():
        locked = row_locked(BrokerAccount.objects.all(), pk=account.pk)
        if locked.deleted_at is not None:
            raise InvalidState("This broker account is already disconnected.")
        locked.credentials = {}
        locked.session = {}
        locked.status = AccountStatus.DISCONNECTED
        locked.session_expires_at = None
        locked.deleted_at = timezone.now()
        locked.save()
        audit_record(action="broker.disconnect", actor=user, target=locked)


def broker_sessions_expire_due(*, now: datetime | None = None, dry_run: bool = False) -> list[BrokerAccount]:
    """Every connected account whose daily session has ended; marked expired unless dry_run."""
    now = now or timezone.now()
    due = list(
        BrokerAccount.objects.filter(
            status=AccountStatus.CONNECTED, session_expires_at__isnull=False, session_expires_at__lte=now
        ).select_related("owner")
    )
    if not dry_run:
        for account in due:
            broker_session_mark_expired(account=account, reason="daily session end")
    return due


def broker_session_check(*, account: BrokerAccount) -> str:
    """Ask the broker whether the session still works (funds is the cheapest call every broker has)."""
    if account.status != AccountStatus.CONNECTED:
        return f"not connected ({account.status})"
    try:
        adapter_for(account).funds()
    except BrokerError as error:
        return f"failed: {error.detail}"
    return "session works"


# --- renewing sessions without a login ---------------------------------------------------------------------------

FYERS_PIN_LENGTH = 4


def broker_session_renewal_set(*, user: User, account: BrokerAccount, enabled: bool, pin: str = "") -> BrokerAccount:
    """The user's consent (or its withdrawal) to our renewing the account's session before the cut-off without a
    browser login: Fyers with the refresh token and the user's PIN (kept encrypted with the credentials), Dhan with
    its RenewToken. Recorded with its time and an audit row (never the PIN)."""
    adapter = _adapter(account)
    if enabled and not adapter.renews_sessions:
        raise ValidationFailed(
            f"{Broker(account.broker).label} sessions cannot be renewed without a login.",
            errors={"enabled": ["This broker needs its daily login."]},
        )
    needs_pin = account.broker == Broker.FYERS
    pin = pin.strip()
    if enabled and needs_pin and not (pin.isdigit() and len(pin) == FYERS_PIN_LENGTH):
        raise ValidationFailed(errors={"pin": ["Fyers renews a session with your 4-digit PIN."]})
    with transaction.atomic():
        account = row_locked(BrokerAccount.objects.all(), pk=account.pk)
        if account.deleted_at is not None:
            raise NotFound()
        credentials = dict(account.credentials)
        credentials.pop("pin", None)
        if enabled and needs_pin:
            credentials["pin"] = pin
        account.credentials = credentials
        account.session_renewal_consented_at = timezone.now() if enabled else None
        account.save(update_fields=["credentials_encrypted", "session_renewal_consented_at"])
        audit_record(
            action="broker.session_renewal_consent",
            actor=user,
            target=account,
            details={"enabled": enabled, "with_pin": bool(enabled and needs_pin)},
        )
    return account


def broker_sessions_renewal_due(*, now: datetime | None = None) -> list[BrokerAccount]:
    """Accounts whose owners consented: connected ones whose session ends within BROKER_SESSION_RENEW_AHEAD, and
    expired Fyers ones that kept their refresh token."""
    now = now or timezone.now()
    ending = Q(
        status=AccountStatus.CONNECTED,
        broker__in=[Broker.DHAN, Broker.FYERS],
        session_expires_at__lte=now + timedelta(seconds=settings.BROKER_SESSION_RENEW_AHEAD_SECONDS),
    )
    # Fyers' refresh token outlives the access token (15 days): an expired session that kept one can still renew.
    ended_renewable = Q(status=AccountStatus.EXPIRED, broker=Broker.FYERS) & ~Q(session_encrypted="")
    return list(
        BrokerAccount.objects.filter(
            ending | ended_renewable, deleted_at__isnull=True, session_renewal_consented_at__isnull=False
        )
        # A renewal the broker refused in this window is not tried (nor its owner told) again.
        .exclude(last_error_at__gte=now - timedelta(seconds=settings.BROKER_SESSION_RENEW_AHEAD_SECONDS))
        .select_related("owner")
    )


def broker_session_renew(*, account: BrokerAccount) -> str:
    """Renew one consented account's session at its broker: "renewed", "refused" (the user must log in: told so
    now, before the morning), or "unavailable" (the broker did not answer; the next run tries again)."""
    adapter = _adapter(account, session=account.session or None)
    try:
        session = adapter.session_renew()
    except SessionExpired as error:
        _record_error(account, error)
        notification_create(
            user=account.owner,
            kind="broker.renewal_failed",
            title=f"Log in to {account.label} before the open",
            body=f"We could not renew your broker session automatically: {error.detail}",
            level="warning",
            data={"account_id": account.pk},
        )
        audit_record(action="broker.session_renew", actor=None, target=account, details={"outcome": "refused"})
        return "refused"
    except BrokerError as error:  # the broker did not answer: the next run (every 15 minutes) tries again
        logger.warning("renewing the session of %s failed: %s", account.pk, error.code)
        return "unavailable"
    with transaction.atomic():
        if account.broker == Broker.DHAN:
            # Dhan's token is also the credential the account was connected with.
            account.credentials = {**account.credentials, "access_token": session.access_token}
        _store_session(account, session, actor=None, via="renewal")
    return "renewed"


def broker_sessions_renew(*, now: datetime | None = None) -> dict[str, int]:
    """Every due, consented account renewed (see `broker_session_renew`); counts by outcome."""
    outcomes: dict[str, int] = {}
    for account in broker_sessions_renewal_due(now=now):
        outcome = broker_session_renew(account=account)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


def broker_login_reminders_send() -> int:
    """Before the open: one reminder per user whose accounts need a login today."""
    accounts = (
        BrokerAccount.objects.filter(
            deleted_at__isnull=True,
            status__in=[AccountStatus.EXPIRED, AccountStatus.LOGIN_REQUIRED],
            owner__is_active=True,
        )
        .exclude(broker=Broker.PAPER)
        .select_related("owner")
        .order_by("owner_id")
    )
    owners = {account.owner_id: account.owner for account in accounts}
    sent = 0
    for owner in owners.values():
        notification_create(
            user=owner,
            kind="broker.login_reminder",
            title="Log in to your broker before 09:15",
            body="One or more of your broker accounts needs today's login before orders can go out.",
            level="warning",
        )
        sent += 1
    return sent


# --- the paper exchange, as other floors see it ---------------------------------------------------------------------


def paper_orders_match(*, symbols: list[str]) -> int:
    """New quotes for `symbols` reach the paper exchange: resting orders that now cross fill. Returns the fills."""
    return exchange.match_resting_orders_for(symbols=symbols)


def paper_order_changes_listen(listener: exchange.OrderChangeListener) -> None:
    """Call `listener(account, order_ids)` after every commit that changed paper orders (the paper broker's push)."""
    exchange.order_changes_listen(listener)
