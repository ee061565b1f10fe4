"""Webhook signals (TradingView, ChartInk): authenticating, parsing, refusing and acting on them."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from accounts.services import audit_record
from algoterm.api.errors import AppError, ErrorCode, NotFound
from algoterm.config import freeze_quantity
from algoterm.counters import STRATEGY_WEBHOOK_REFUSED, counter_add
from brokers.protocol import OrderType, Side
from marketdata.instruments import instrument_get
from marketdata.models import InstrumentType
from orders.models import OrderSource
from orders.services import OrderSpec, order_place

from ..definitions import WEBHOOK_ACTIONS, Kind
from ..models import RunStatus, Signal, SignalStatus, Strategy, StrategyRun, WebhookRejectionCount
from .clock import _today_ist
from .fires import _trading_accounts
from .runs import _own_open_quantities, run_exit
from .signals import signal_announce


class WebhookRefused(AppError):
    """A webhook call refused after it was counted; `signal` is the rejected Signal, None past the day's bound."""

    def __init__(self, detail: str, *, code: ErrorCode, signal: Signal | None) -> None:
        super().__init__(detail, code=code, extra={"signal_id": signal.pk if signal is not None else None})
        self.signal = signal


@dataclass(frozen=True)
class WebhookCall:
    strategy_id: str
    body: bytes
    secret: str  # from the header or query string; the body's `secret` field is read here too
    query_action: str = ""
    query_quantity: str = ""
    remote_addr: str | None = None


@dataclass(frozen=True)
class ParsedSignal:
    source: str
    action: str
    symbols: list[str]
    quantity: int | None
    dedupe_key: str
    sent_at: datetime | None


def _payload_of(body: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def _redacted(payload: dict[str, Any] | None) -> dict[str, Any]:
    if payload is None:
        return {}
    return {key: value for key, value in payload.items() if key.lower() not in ("secret", "passphrase", "token")}


def _webhook_rejection_count(*, strategy: Strategy, reason: str) -> int:
    """Count one refused call on the strategy's day (IST); returns the day's count including this one."""
    now = timezone.now()
    counts = WebhookRejectionCount.objects.filter(strategy=strategy, day=_today_ist(now))
    with transaction.atomic():
        if not counts.update(count=F("count") + 1, last_reason=reason, last_at=now):
            try:
                with transaction.atomic():
                    WebhookRejectionCount.objects.create(
                        strategy=strategy, day=_today_ist(now), count=1, last_reason=reason, last_at=now
                    )
            except IntegrityError:  # a concurrent refusal created the day's row first
                counts.update(count=F("count") + 1, last_reason=reason, last_at=now)
        return counts.values_list("count", flat=True).first() or 1


def _reject(
    *, strategy: Strategy, call: WebhookCall, payload, code: ErrorCode, reason: str, detail: str, parsed=None
) -> WebhookRefused:
    """Every refusal is counted; only the day's first STRATEGY_WEBHOOK_REJECTED_SIGNALS_PER_DAY are kept as
    signals, so unauthenticated callers cannot grow the table without bound."""
    counter_add(name=STRATEGY_WEBHOOK_REFUSED)
    refused_today = _webhook_rejection_count(strategy=strategy, reason=reason)
    if refused_today > settings.STRATEGY_WEBHOOK_REJECTED_SIGNALS_PER_DAY:
        return WebhookRefused(detail, code=code, signal=None)
    signal = Signal.objects.create(
        strategy=strategy,
        user=strategy.user,
        source=parsed.source if parsed else ("chartink" if payload and "stocks" in payload else "tradingview"),
        action=(parsed.action if parsed else "")[:6],
        symbol=(",".join(parsed.symbols) if parsed else "")[:64],
        quantity=parsed.quantity if parsed else None,
        status=SignalStatus.REJECTED,
        reason=reason,
        detail=detail[:300],
        dedupe_key=parsed.dedupe_key if parsed else "",
        payload=_redacted(payload),
        remote_addr=call.remote_addr,
    )
    signal_announce(signal=signal)
    return WebhookRefused(detail, code=code, signal=signal)


def _symbol_of(raw: str) -> str:
    text = raw.strip().upper()
    return text if ":" in text else f"NSE:{text}"


def _parse_signal(*, call: WebhookCall, payload: dict[str, Any], strategy: Strategy) -> ParsedSignal:
    """TradingView sends what the alert's message says (we document {action, symbol, quantity, id, timestamp});
    ChartInk sends its scan result (stocks, trigger_prices, triggered_at, scan_name), so the action and quantity
    come from the webhook URL's query string."""
    errors: dict[str, list[str]] = {}
    if "stocks" in payload:
        source = "chartink"
        symbols = [_symbol_of(stock) for stock in str(payload.get("stocks") or "").split(",") if stock.strip()]
        action = (call.query_action or "BUY").upper()
        quantity_text = call.query_quantity or str(payload.get("quantity") or "")
        sent_at = None
        identity = f"{payload.get('scan_name', '')}|{payload.get('triggered_at', '')}|{payload.get('stocks', '')}"
    else:
        source = "tradingview"
        symbol = payload.get("symbol") or payload.get("ticker") or ""
        symbols = [_symbol_of(str(symbol))] if symbol else []
        action = str(payload.get("action") or "").upper()
        quantity_text = str(payload.get("quantity") if payload.get("quantity") is not None else "")
        sent_at = _timestamp(payload.get("timestamp") or payload.get("time"), errors)
        identity = str(payload.get("id") or "") or json.dumps(_redacted(payload), sort_keys=True)
    if action not in WEBHOOK_ACTIONS:
        errors["action"] = [f"action must be one of {', '.join(WEBHOOK_ACTIONS)}."]
    if not symbols and action != "EXIT":
        errors["symbol"] = ["Which symbol? Send `symbol` (TradingView) or `stocks` (ChartInk)."]
    for symbol in symbols:
        if instrument_get(symbol=symbol) is None:
            errors.setdefault("symbol", []).append(f"{symbol} is not a listed instrument.")
    quantity = None
    if action in ("BUY", "SHORT") or quantity_text:
        try:
            quantity = int(quantity_text)
        except ValueError:
            errors["quantity"] = ["quantity must be a positive whole number of units."]
        else:
            quantity_limit = _webhook_quantity_limit(symbols)
            if quantity <= 0:
                errors["quantity"] = ["quantity must be a positive whole number of units."]
            elif quantity > quantity_limit:
                errors["quantity"] = [f"quantity must be at most {quantity_limit} units."]
            if "quantity" in errors:
                quantity = None
    digest = hashlib.sha256(f"{strategy.pk}|{source}|{identity}".encode()).hexdigest()
    parsed = ParsedSignal(
        source=source, action=action, symbols=symbols, quantity=quantity, dedupe_key=digest, sent_at=sent_at
    )
    if errors:
        raise _ParseFailed(parsed=parsed, errors=errors)
    return parsed


def _webhook_quantity_limit(symbols: list[str]) -> int:
    """The documented maximum, or a derivative's exchange freeze quantity when that is lower."""
    limit = settings.STRATEGY_WEBHOOK_MAX_QUANTITY
    for symbol in symbols:
        instrument = instrument_get(symbol=symbol)
        if instrument is not None and instrument.instrument_type != InstrumentType.EQ:
            limit = min(limit, freeze_quantity(underlying=instrument.underlying) or limit)
    return limit


class _ParseFailed(Exception):
    def __init__(self, *, parsed: ParsedSignal, errors: dict[str, list[str]]) -> None:
        super().__init__("invalid signal")
        self.parsed = parsed
        self.errors = errors


def _timestamp(value: Any, errors: dict[str, list[str]]) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        if isinstance(value, (int, float)) or str(value).isdigit():
            number = float(value)
            return datetime.fromtimestamp(number / 1000 if number > 1e11 else number, tz=timezone.UTC)
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        errors["timestamp"] = ["timestamp must be ISO 8601 or epoch seconds."]
        return None
    if timezone.is_naive(moment):
        errors["timestamp"] = ["timestamp needs a UTC offset."]
        return None
    return moment


def signal_receive(*, call: WebhookCall, now: datetime | None = None) -> Signal:
    """Authenticate by the strategy's own secret, refuse replays and stale calls, then act. Every call on an
    existing strategy is recorded as a Signal, accepted or rejected with its reason."""
    now = now or timezone.now()
    strategy = Strategy.objects.select_related("user").filter(pk=call.strategy_id).first()
    if strategy is None:
        raise NotFound()
    payload = _payload_of(call.body)
    offered = call.secret or (str(payload.get("secret") or "") if payload else "")
    if not strategy.webhook_secret or not hmac.compare_digest(
        offered.encode("utf-8"), strategy.webhook_secret.encode("utf-8")
    ):
        raise _reject(
            strategy=strategy,
            call=call,
            payload=payload,
            code=ErrorCode.AUTH_INVALID,
            reason="BAD_SECRET",
            detail="The webhook secret is wrong or was rotated.",
        )
    if payload is None:
        raise _reject(
            strategy=strategy,
            call=call,
            payload=None,
            code=ErrorCode.VALIDATION_ERROR,
            reason="BAD_PAYLOAD",
            detail="The body must be a JSON object.",
        )
    try:
        parsed = _parse_signal(call=call, payload=payload, strategy=strategy)
    except _ParseFailed as failure:
        refused = _reject(
            strategy=strategy,
            call=call,
            payload=payload,
            code=ErrorCode.VALIDATION_ERROR,
            reason="BAD_PAYLOAD",
            detail="; ".join(f"{name}: {' '.join(messages)}" for name, messages in failure.errors.items()),
            parsed=failure.parsed,
        )
        refused.errors = failure.errors
        raise refused from None
    max_age = timedelta(seconds=settings.STRATEGY_WEBHOOK_MAX_AGE_SECONDS)
    if parsed.sent_at is not None and not (now - max_age <= parsed.sent_at <= now + timedelta(seconds=60)):
        raise _reject(
            strategy=strategy,
            call=call,
            payload=payload,
            code=ErrorCode.VALIDATION_ERROR,
            reason="STALE",
            detail=f"The signal's timestamp is more than {max_age.seconds} seconds away from now.",
            parsed=parsed,
        )
    run = strategy.runs.filter(status=RunStatus.RUNNING).first()
    if strategy.kind != Kind.WEBHOOK or run is None:
        raise _reject(
            strategy=strategy,
            call=call,
            payload=payload,
            code=ErrorCode.INVALID_STATE,
            reason="NOT_RUNNING",
            detail="This strategy takes webhooks only while it runs as a webhook strategy.",
            parsed=parsed,
        )
    try:
        with transaction.atomic():
            signal = Signal.objects.create(
                strategy=strategy,
                user=strategy.user,
                source=parsed.source,
                action=parsed.action,
                symbol=",".join(parsed.symbols)[:64],
                quantity=parsed.quantity,
                status=SignalStatus.ACCEPTED,
                dedupe_key=parsed.dedupe_key,
                payload=_redacted(payload),
                remote_addr=call.remote_addr,
                received_at=now,
            )
    except IntegrityError:
        raise _reject(
            strategy=strategy,
            call=call,
            payload=payload,
            code=ErrorCode.CONFLICT,
            reason="REPLAYED",
            detail="This signal was already received; a replay does not trade again.",
            parsed=parsed,
        ) from None
    return _signal_act(signal=signal, run=run, parsed=parsed)


def _signal_act(*, signal: Signal, run: StrategyRun, parsed: ParsedSignal) -> Signal:
    strategy = run.strategy
    placed: list[str] = []
    problems: list[str] = []
    first_error: AppError | None = None
    if parsed.action == "EXIT":
        targets = parsed.symbols or [None]
        for symbol in targets:
            placed += run_exit(run=run, reason="signal", symbol=symbol)
    else:
        held = _own_open_quantities(run)
        for symbol in parsed.symbols:
            for account, multiplier in _trading_accounts(strategy=strategy, run=run):
                side, quantity = _signal_order(
                    action=parsed.action,
                    quantity=parsed.quantity,
                    multiplier=multiplier,
                    held=held.get((account.pk, symbol, strategy.product), 0),
                )
                if not quantity:
                    problems.append(f"{symbol} in {account.label}: no {_held_side(parsed.action)} position to close")
                    continue
                spec = OrderSpec(
                    account_id=account.pk,
                    symbol=symbol,
                    side=side,
                    quantity=quantity,
                    order_type=OrderType.MARKET,
                    product=strategy.product,
                    tag=strategy.pk,
                )
                try:
                    order = order_place(
                        user=strategy.user, spec=spec, source=OrderSource.STRATEGY, strategy_ref=strategy.pk
                    )
                    placed.append(order.pk)
                except AppError as error:
                    first_error = first_error or error
                    problems.append(f"{symbol} in {account.label}: {error.code}: {error.detail}")
    signal.order_ids = placed
    signal.detail = "; ".join(problems)[:300]
    if not placed and problems:
        signal.status = SignalStatus.REJECTED
        signal.reason = str(first_error.code) if first_error else "NO_POSITION"
    signal.save(update_fields=["order_ids", "detail", "status", "reason"])
    audit_record(
        action="strategy.signal",
        actor=None,
        target=strategy,
        details={"signal": signal.pk, "status": signal.status, "orders": placed},
    )
    signal_announce(signal=signal)
    return signal


def _held_side(action: str) -> str:
    return "long" if action == "SELL" else "short"


def _signal_order(*, action: str, quantity: int | None, multiplier: int, held: int) -> tuple[str, int]:
    """BUY opens or adds long, SHORT opens or adds short; SELL and COVER close the strategy's own long or short,
    never more than it holds (never flipping it)."""
    if action == "BUY":
        return Side.BUY, (quantity or 0) * multiplier
    if action == "SHORT":
        return Side.SELL, (quantity or 0) * multiplier
    wanted = quantity * multiplier if quantity else None
    # What there is to close: a short is no long to SELL, a long no short to COVER (never a negative quantity).
    closable = max(held, 0) if action == "SELL" else max(-held, 0)
    return (Side.SELL if action == "SELL" else Side.BUY), min(closable, wanted) if wanted else closable
