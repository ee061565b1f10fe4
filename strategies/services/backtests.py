"""Backtests as stored rows: starting them within the plan's limits, running them on a worker, expiring
the ones no worker will finish. The engine itself is the backtest module."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from time import monotonic
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Notification, User
from accounts.selectors import user_row_lock
from accounts.services import audit_record, notification_create
from algoterm.api.errors import ValidationFailed
from algoterm.failpoints import failpoint
from algoterm.locking import rows_locked
from algoterm.tasking import task_send_on_commit
from billing.services import require_backtest_slot

from ..backtest import BacktestError, BacktestSignal, backtest_execute
from ..models import Backtest, BacktestStatus, SignalStatus, Strategy
from .clock import IST
from .definitions import _add, _input_of, _lock_own, definition_of
from .webhooks import WEBHOOK_ACTIONS

logger = logging.getLogger(__name__)

BACKTEST_RUN_TASK = "strategies.tasks.backtest_run"


@dataclass(frozen=True)
class BacktestInput:
    start: date
    end: date
    capital: Decimal = Decimal("1000000")
    volatility: Decimal = Decimal("0.15")


def backtest_start(*, user: User, strategy_id: str, data: BacktestInput) -> Backtest:
    """Queue a backtest over stored candles; the worker runs it and reports progress on the row."""
    errors: dict[str, list[str]] = {}
    today = timezone.localdate(timezone=IST)
    if data.start > data.end:
        _add(errors, "end", "The end date must not precede the start date.")
    if data.end > today:
        _add(errors, "end", "Backtests read stored candles: the end date cannot be in the future.")
    if (data.end - data.start).days > settings.STRATEGY_BACKTEST_MAX_DAYS:
        _add(errors, "start", f"A backtest spans at most {settings.STRATEGY_BACKTEST_MAX_DAYS} days.")
    if data.capital <= 0:
        _add(errors, "capital", "Capital must be positive.")
    if not Decimal("0.01") <= data.volatility <= Decimal("3"):
        _add(errors, "volatility", "Volatility is an annual fraction between 0.01 and 3.")
    if errors:
        raise ValidationFailed(errors=errors)
    with transaction.atomic():
        # The user's row is the lock two concurrent starts queue on, so both cannot pass the plan's cap.
        user_row_lock(user=user)
        strategy = _lock_own(user=user, strategy_id=strategy_id)
        active = Backtest.objects.filter(user=user, status__in=ACTIVE_BACKTEST_STATUSES).count()
        require_backtest_slot(user=user, active=active)
        backtest = Backtest.objects.create(
            strategy=strategy,
            user=user,
            start_date=data.start,
            end_date=data.end,
            capital=data.capital,
            volatility=data.volatility,
            definition=_definition_json(strategy),
        )
        audit_record(action="strategy.backtest", actor=user, target=strategy, details={"backtest": backtest.pk})
        task_send_on_commit(name=BACKTEST_RUN_TASK, args=(backtest.pk,))
    return backtest


def _definition_json(strategy: Strategy) -> dict[str, Any]:
    snapshot = vars(_input_of(strategy)).copy()
    snapshot.pop("fields_set", None)
    snapshot["accounts"] = [vars(entry) for entry in snapshot["accounts"]]
    snapshot["legs"] = [vars(leg) for leg in snapshot["legs"]]
    return json.loads(json.dumps(snapshot, default=str))


ACTIVE_BACKTEST_STATUSES = (BacktestStatus.QUEUED, BacktestStatus.RUNNING)


class _BacktestTimedOut(Exception):
    """The backtest ran past its soft time limit (Celery's, or the deadline checked after every day)."""


def _time_limit_message() -> str:
    return (
        f"The backtest ran past its time limit of {settings.BACKTEST_SOFT_TIME_LIMIT_SECONDS} seconds and was "
        "stopped; backtest a shorter period."
    )


def backtest_execute_stored(*, backtest_id: str) -> Backtest:
    """Run a queued backtest once: a second delivery of the task finds it no longer queued. Past its soft time
    limit it stops and is marked failed with the reason (thread pools have no Celery time limits: the deadline
    checked after every day applies everywhere)."""
    from ..charts import equity_chart_png  # matplotlib loads only where a backtest is drawn: on the worker

    with transaction.atomic():
        backtest = rows_locked(Backtest.objects.select_related("strategy").filter(pk=backtest_id)).first()
        if backtest is None or backtest.status != BacktestStatus.QUEUED:
            return backtest
        backtest.status = BacktestStatus.RUNNING
        backtest.started_at = timezone.now()
        backtest.save(update_fields=["status", "started_at"])
    strategy = backtest.strategy
    last_reported = [-1]
    deadline = monotonic() + settings.BACKTEST_SOFT_TIME_LIMIT_SECONDS

    def progress(done: int, total: int) -> None:
        failpoint("strategies.backtest.day")
        if monotonic() > deadline:
            raise _BacktestTimedOut
        percent = int(done * 100 / total) if total else 100
        if percent >= last_reported[0] + 2 or percent == 100:
            last_reported[0] = percent
            Backtest.objects.filter(pk=backtest.pk).update(progress=min(percent, 99))

    signals = [
        BacktestSignal(at=signal.received_at, action=signal.action, symbol=signal.symbol, quantity=signal.quantity or 0)
        for signal in strategy.signals.filter(
            status=SignalStatus.ACCEPTED, received_at__date__gte=backtest.start_date
        ).exclude(source="rule")
        if signal.action in WEBHOOK_ACTIONS and "," not in signal.symbol
    ]
    try:
        result = backtest_execute(
            definition=definition_of(strategy),
            start=backtest.start_date,
            end=backtest.end_date,
            capital=backtest.capital,
            volatility=float(backtest.volatility),
            signals=signals,
            progress=progress,
        )
        chart = equity_chart_png(result, title=f"{strategy.name}: {backtest.start_date} to {backtest.end_date}")
    except BacktestError as error:
        return _backtest_finish(backtest=backtest, status=BacktestStatus.FAILED, error=str(error))
    except (SoftTimeLimitExceeded, _BacktestTimedOut):
        logger.warning("backtest %s ran past its time limit", backtest.pk)
        return _backtest_finish(backtest=backtest, status=BacktestStatus.FAILED, error=_time_limit_message())
    except Exception:
        logger.exception("backtest %s failed", backtest.pk)
        return _backtest_finish(backtest=backtest, status=BacktestStatus.FAILED, error="The backtest failed.")
    return _backtest_finish(backtest=backtest, status=BacktestStatus.SUCCEEDED, result=result.as_json(), chart=chart)


def _backtest_finish(
    *, backtest: Backtest, status: str, error: str = "", result: dict | None = None, chart: bytes | None = None
) -> Backtest:
    backtest.status = status
    backtest.error = error[:300]
    backtest.result = result
    backtest.chart_png = chart
    backtest.progress = 100
    backtest.finished_at = timezone.now()
    with transaction.atomic():
        backtest.save(update_fields=["status", "error", "result", "chart_png", "progress", "finished_at"])
        audit_record(
            action=f"strategy.backtest_{status}",
            target=backtest,
            details={"strategy": backtest.strategy_id, **({"error": backtest.error} if error else {})},
        )
    notification_create(
        user=backtest.user,
        kind="strategy",
        title=f"Backtest of {backtest.strategy.name} {'finished' if status == BacktestStatus.SUCCEEDED else 'failed'}",
        body=error,
        level=Notification.Level.INFO if status == BacktestStatus.SUCCEEDED else Notification.Level.WARNING,
        data={"strategy_id": backtest.strategy_id, "backtest_id": backtest.pk},
    )
    return backtest


def backtests_expire(*, now: datetime | None = None) -> int:
    """Fail the backtests no worker will finish: running past the hard time limit (its worker child was killed, or
    the worker died) or queued so long that their message was lost. Each held one of its user's backtest slots."""
    now = now or timezone.now()
    grace = timedelta(seconds=60)
    running_since = now - timedelta(seconds=settings.BACKTEST_HARD_TIME_LIMIT_SECONDS) - grace
    queued_since = now - timedelta(seconds=settings.BACKTEST_QUEUED_EXPIRY_SECONDS)
    stale = Backtest.objects.filter(
        Q(status=BacktestStatus.RUNNING, started_at__lt=running_since)
        | Q(status=BacktestStatus.QUEUED, created_at__lt=queued_since)
    ).values_list("pk", flat=True)
    expired = 0
    for backtest_id in stale:
        with transaction.atomic():
            backtest = rows_locked(
                Backtest.objects.select_related("strategy").filter(pk=backtest_id, status__in=ACTIVE_BACKTEST_STATUSES)
            ).first()
            if backtest is None:
                continue
            error = (
                _time_limit_message()
                if backtest.status == BacktestStatus.RUNNING
                else "The backtest waited too long for a worker and was dropped; start it again."
            )
            _backtest_finish(backtest=backtest, status=BacktestStatus.FAILED, error=error)
            expired += 1
    return expired
