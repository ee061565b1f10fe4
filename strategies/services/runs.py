"""Starting and stopping a strategy's run, and the run's own orders, positions, PnL and exits."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.models import Notification, User
from accounts.services import audit_record, notification_create
from algoterm.api.errors import AppError, ErrorCode, InvalidState
from algoterm.locking import rows_locked
from billing.services import require_live_trading, require_running_strategy_slot
from brokers.models import AccountStatus, Broker, BrokerAccount
from brokers.protocol import OrderType, Side
from brokers.selectors import paper_account_get
from marketdata.quotes import quotes_get
from orders.models import LegRole, Order, OrderSource, OrderStatus
from orders.selectors import position_quantity, strategy_fill_rows, strategy_order_list
from orders.services import OrderSpec, order_cancel, order_place, quantities_within_freeze

from ..models import RunMode, RunStatus, Strategy, StrategyRun, StrategyStatus
from .definitions import _lock_own

logger = logging.getLogger(__name__)

CANCELLABLE_OWN = frozenset({OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED, OrderStatus.PENDING_MODIFY})


def _paper_account(user: User) -> BrokerAccount | None:
    return paper_account_get(user=user)


def _require_startable(*, strategy: Strategy, mode: str) -> None:
    entries = list(strategy.accounts.select_related("account"))
    if not entries:
        raise InvalidState("Add a broker account to the strategy before starting it.")
    if mode == RunMode.PAPER:
        if _paper_account(strategy.user) is None:
            raise InvalidState("Paper mode trades in your paper account: connect one first.")
        return
    for entry in entries:
        account = entry.account
        if account.deleted_at is not None:
            raise InvalidState(f"Broker account {account.label} was removed.")
        if account.broker == Broker.PAPER:
            raise InvalidState(f"{account.label} is a paper account: start the strategy in paper mode.")
        if account.status != AccountStatus.CONNECTED:
            raise AppError(
                f"Broker account {account.label} needs a login ({account.status}).",
                code=ErrorCode.BROKER_SESSION_EXPIRED,
            )


@transaction.atomic
def strategy_start(*, user: User, strategy_id: str, mode: str) -> StrategyRun:
    """Paper or live: a run begins, and the minute dispatcher fires it at its entry and exit times from then on.
    409 when it already runs or cannot trade."""
    strategy = _lock_own(user=user, strategy_id=strategy_id)
    if strategy.status == StrategyStatus.RUNNING:
        raise InvalidState("The strategy is already running.")
    _require_startable(strategy=strategy, mode=mode)
    if mode == RunMode.LIVE:
        require_live_trading(user=user)
    require_running_strategy_slot(
        user=user, running=Strategy.objects.filter(user=user, status=StrategyStatus.RUNNING).count()
    )
    run = StrategyRun.objects.create(strategy=strategy, mode=mode)
    strategy.status = StrategyStatus.RUNNING
    strategy.status_message = ""
    strategy.save(update_fields=["status", "status_message", "updated_at"])
    audit_record(action="strategy.start", actor=user, target=strategy, details={"mode": mode, "run": run.pk})
    return run


def _run_end(*, strategy: Strategy, run: StrategyRun, status: str, message: str = "") -> None:
    run.status = status
    run.status_message = message[:300]
    run.ended_at = timezone.now()
    run.final_pnl = run_pnl(run=run).total
    run.save(update_fields=["status", "status_message", "ended_at", "final_pnl"])
    strategy.status = {
        RunStatus.STOPPED: StrategyStatus.STOPPED,
        RunStatus.COMPLETED: StrategyStatus.COMPLETED,
        RunStatus.ERROR: StrategyStatus.ERROR,
    }[status]
    strategy.status_message = message[:300]
    strategy.save(update_fields=["status", "status_message", "updated_at"])


def strategy_stop(*, user: User, strategy_id: str, exit_positions: bool) -> StrategyRun:
    """End the run (the dispatcher fires it no more); with `exit_positions` also cancel its working orders and square
    off its own positions (never the user's other positions)."""
    with transaction.atomic():
        strategy = _lock_own(user=user, strategy_id=strategy_id)
        run = strategy.runs.filter(status=RunStatus.RUNNING).first()
        if strategy.status != StrategyStatus.RUNNING or run is None:
            raise InvalidState("The strategy is not running.")
        _run_end(strategy=strategy, run=run, status=RunStatus.STOPPED, message="stopped by you")
        audit_record(
            action="strategy.stop", actor=user, target=strategy, details={"run": run.pk, "exit": exit_positions}
        )
    if exit_positions:
        run_exit(run=run, reason="stopped")
        # The PnL recorded by _run_end marked the open positions at the last price; the exits have now filled.
        StrategyRun.objects.filter(pk=run.pk).update(final_pnl=run_pnl(run=run).total)
    run.refresh_from_db()
    return run


@transaction.atomic
def strategies_stop_for_user(*, user: User, actor: User | None, reason: str) -> list[str]:
    """Stop every running strategy of a user who may no longer trade (deactivated, or moved to a view-only role),
    each audited and announced to its owner. Open positions and their exits stay: the RMS and the exits still
    close them, and nothing the strategy would place next gets past the risk gate anyway."""
    stopped = []
    running = rows_locked(Strategy.objects.filter(user=user, status=StrategyStatus.RUNNING))
    for strategy in running:
        run = strategy.runs.filter(status=RunStatus.RUNNING).first()
        if run is None:
            continue
        _run_end(strategy=strategy, run=run, status=RunStatus.STOPPED, message=f"stopped: {reason}")
        audit_record(
            action="strategy.stop",
            actor=actor,
            target=strategy,
            details={"run": run.pk, "exit": False, "reason": reason},
        )
        notification_create(
            user=user,
            kind="strategy",
            title=f"{strategy.name} was stopped",
            body=f"Your account can no longer trade ({reason}), so the strategy places no more orders. Its open "
            "positions and their stop-loss and target orders stay in place.",
            level=Notification.Level.WARNING,
            data={"strategy_id": strategy.pk, "run_id": run.pk},
        )
        stopped.append(strategy.pk)
    return stopped


# --- the strategy's own orders and positions ---------------------------------------------------------------------


def _run_window(run: StrategyRun) -> dict[str, Any]:
    """The run's orders as the orders app finds them: placed by its strategy while it ran."""
    # Exits placed by the stop itself belong to the run too: they follow `ended_at` by moments.
    until = run.ended_at + timedelta(minutes=5) if run.ended_at is not None else None
    return {"strategy_ref": run.strategy_id, "placed_from": run.started_at, "placed_until": until}


def run_orders(run: StrategyRun, *, statuses: frozenset[str] | None = None) -> list[Order]:
    """The run's own orders (with their accounts), newest first; only those in `statuses` when given."""
    return strategy_order_list(**_run_window(run), statuses=statuses)


@dataclass
class RunPnl:
    realized: Decimal
    unrealized: Decimal
    total: Decimal
    positions: list[dict[str, Any]]


def run_pnl(*, run: StrategyRun, since: datetime | None = None) -> RunPnl:
    """The run's PnL from its own fills: sells minus buys plus the open quantity at the last price."""
    books: dict[tuple[str, str, str], dict[str, Any]] = {}
    for account_id, symbol, product, side, quantity, price in strategy_fill_rows(**_run_window(run), traded_from=since):
        book = books.setdefault((account_id, symbol, product), {"net": 0, "cash": Decimal(0), "bought": 0})
        signed = quantity if side == Side.BUY else -quantity
        book["net"] += signed
        book["cash"] -= Decimal(signed) * price
    quotes = quotes_get(sorted({symbol for _, symbol, _ in books}))
    realized = unrealized = Decimal(0)
    positions = []
    for (account_id, symbol, product), book in sorted(books.items()):
        quote = quotes.get(symbol)
        last = quote.last_price if quote is not None else None
        if book["net"] == 0:
            realized += book["cash"]
            value = book["cash"]
        else:
            value = book["cash"] + (Decimal(book["net"]) * last if last is not None else Decimal(0))
            unrealized += value
        positions.append(
            {
                "account_id": account_id,
                "symbol": symbol,
                "product": product,
                "quantity": book["net"],
                "last_price": last,
                "pnl": value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP),
            }
        )
    cents = Decimal("0.01")
    return RunPnl(
        realized=realized.quantize(cents, rounding=ROUND_HALF_UP),
        unrealized=unrealized.quantize(cents, rounding=ROUND_HALF_UP),
        total=(realized + unrealized).quantize(cents, rounding=ROUND_HALF_UP),
        positions=positions,
    )


def _own_open_quantities(run: StrategyRun) -> dict[tuple[str, str, str], int]:
    net: dict[tuple[str, str, str], int] = {}
    for account_id, symbol, product, side, quantity, _price in strategy_fill_rows(**_run_window(run)):
        key = (account_id, symbol, product)
        net[key] = net.get(key, 0) + (quantity if side == Side.BUY else -quantity)
    return {key: quantity for key, quantity in net.items() if quantity}


def run_exit(*, run: StrategyRun, reason: str, symbol: str | None = None) -> list[str]:
    """Cancel the run's working orders (pending entries and their target/stop-loss legs) and close what the run
    itself holds, capped by what the account still holds. Returns the exit orders' ids."""
    strategy = run.strategy
    for order in run_orders(run, statuses=CANCELLABLE_OWN):
        if symbol is not None and order.symbol != symbol:
            continue
        try:
            order_cancel(user=None, order=order, source=OrderSource.STRATEGY)
        except AppError as error:
            logger.warning("strategy %s could not cancel %s: %s", strategy.pk, order.pk, error.detail)
    placed = []
    for (account_id, held_symbol, product), quantity in sorted(_own_open_quantities(run).items()):
        if symbol is not None and held_symbol != symbol:
            continue
        account_net = position_quantity(account_id=account_id, symbol=held_symbol, product=product)
        # Close no more than the account still holds in the same direction (the user may have closed some).
        closable = min(abs(quantity), abs(account_net)) if account_net * quantity > 0 else 0
        if not closable:
            continue
        for slice_quantity in quantities_within_freeze(symbol=held_symbol, quantity=closable):
            spec = OrderSpec(
                account_id=account_id,
                symbol=held_symbol,
                side=Side.SELL if quantity > 0 else Side.BUY,
                quantity=slice_quantity,
                order_type=OrderType.MARKET,
                product=product,
                tag=strategy.pk,
            )
            try:
                order = order_place(
                    user=strategy.user,
                    spec=spec,
                    source=OrderSource.STRATEGY,
                    role=LegRole.SQUARE_OFF,
                    strategy_ref=strategy.pk,
                )
                placed.append(order.pk)
            except AppError as error:
                logger.warning("strategy %s exit of %s failed: %s", strategy.pk, held_symbol, error.detail)
                notification_create(
                    user=strategy.user,
                    kind="strategy",
                    title=f"{strategy.name}: exit of {held_symbol} failed",
                    body=error.detail,
                    level=Notification.Level.ERROR,
                    data={"strategy_id": strategy.pk},
                )
                break
    audit_record(
        action="strategy.exit",
        actor=None,
        target=strategy,
        details={"run": run.pk, "reason": reason, "orders": placed, "symbol": symbol},
    )
    return placed
