"""The operators' dashboard: the platform's figures at a glance, with charts.

The figures are reads only (selectors over every app's tables, for operators rather than one user); the charts are
matplotlib PNGs embedded in the page as base64, like the billing revenue report. The page is an admin view,
registered in this app's `admin.py` and linked from the admin index.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.db.models import Q
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from accounts.selectors import user_platform_figures
from algoterm.models import Alert, AlertSeverity
from billing.selectors import payment_platform_captured
from brokers.models import AccountStatus, Broker
from brokers.prices import REFERENCE_PRICES
from brokers.selectors import broker_account_platform_counts
from marketdata.quotes import quotes_get
from marketdata.selectors import instrument_listed_symbols
from orders.selectors import order_platform_day_figures
from rms.selectors import rms_platform_breaches_by_reason, rms_platform_restricted_count
from rms.services import mtm_book

IST = ZoneInfo("Asia/Kolkata")
ACTIVE_WINDOW = timedelta(days=30)
# Symbols whose quotes tell the feed's lag: the listed indices and stocks (what every feed follows), capped so one
# page view stays one cache round trip of bounded size.
FEED_LAG_SYMBOLS_CAP = 1000
FEED_FRESH_SECONDS = 5
FEED_STALE_SECONDS = 30  # as the metrics gauge judges it
MARKET_HOURS = range(9, 16)  # IST hours always drawn on the orders chart, whatever else had orders
PAISE_PER_RUPEE = Decimal(100)
TOP_REJECTIONS = 5
REFRESH_SECONDS = 60
ALERT_HISTORY_SIZE = 50  # the last alerts the page lists
ALERT_TIMELINE = timedelta(days=1)
SEVERITY_COLOURS = {AlertSeverity.CRITICAL: "#c62828", AlertSeverity.WARNING: "#f9a825"}

STATUS_COLOURS = {
    "connected": "#2e7d32",
    "login_required": "#f9a825",
    "expired": "#ef6c00",
    "error": "#c62828",
    "disconnected": "#9e9e9e",
}


def ist_day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tzinfo=IST)
    return start, start + timedelta(days=1)


def ist_month_bounds(day: date) -> tuple[datetime, datetime]:
    first = day.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return datetime.combine(first, time(0), tzinfo=IST), datetime.combine(following, time(0), tzinfo=IST)


# --- figures -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserFigures:
    total: int
    active: int  # not deactivated
    seen_recently: int  # active and logged in within ACTIVE_WINDOW
    deactivated: int
    active_by_role: dict[str, int]


def users_figures(*, now: datetime) -> UserFigures:
    counts = user_platform_figures(seen_since=now - ACTIVE_WINDOW)
    return UserFigures(
        total=counts["total"],
        active=counts["active"],
        seen_recently=counts["seen"],
        deactivated=counts["total"] - counts["active"],
        active_by_role=counts["active_by_role"],
    )


@dataclass(frozen=True)
class AccountFigures:
    """Broker accounts (not deleted) by broker and session state."""

    brokers: list[str]
    statuses: list[str]
    counts: dict[tuple[str, str], int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def connected(self) -> int:
        return sum(count for (_, status), count in self.counts.items() if status == "connected")

    def count(self, broker: str, status: str) -> int:
        return self.counts.get((broker, status), 0)

    def rows(self) -> list[tuple[str, list[int], int]]:
        return [
            (broker, [self.count(broker, status) for status in self.statuses], self.broker_total(broker))
            for broker in self.brokers
        ]

    def broker_total(self, broker: str) -> int:
        return sum(self.count(broker, status) for status in self.statuses)


def accounts_figures() -> AccountFigures:
    counts = broker_account_platform_counts()
    return AccountFigures(brokers=list(Broker.values), statuses=list(AccountStatus.values), counts=counts)


@dataclass(frozen=True)
class PositionFigures:
    open_positions: int
    users_with_open_positions: int
    platform_mtm: Decimal  # today's MTM of every user, on the quotes the feeds published
    users_in_loss: int


def positions_figures(*, day: date) -> PositionFigures:
    book = mtm_book(day=day)
    open_counts = book.open_positions if book.open_positions is not None else []
    return PositionFigures(
        open_positions=int(sum(open_counts)),
        users_with_open_positions=int(sum(1 for count in open_counts if count > 0)),
        platform_mtm=Decimal(str(round(float(book.mtm.sum()), 2))).quantize(Decimal("0.01")),
        users_in_loss=int((book.mtm < 0).sum()),
    )


@dataclass(frozen=True)
class OrderFigures:
    placed: int
    rejected: int
    filled: int
    placed_by_hour: dict[int, int]  # IST hour -> orders created in it
    rejected_by_hour: dict[int, int]
    top_rejections: list[tuple[str, int]]  # (status message, count)

    @property
    def rejection_rate(self) -> float:
        return round(100 * self.rejected / self.placed, 1) if self.placed else 0.0

    @property
    def hours(self) -> list[int]:
        seen = set(self.placed_by_hour) | set(self.rejected_by_hour) | {MARKET_HOURS.start, MARKET_HOURS.stop - 1}
        return list(range(min(seen), max(seen) + 1))


def orders_figures(*, day: date) -> OrderFigures:
    start, end = ist_day_bounds(day)
    figures = order_platform_day_figures(start=start, end=end, tz=IST, top_rejections=TOP_REJECTIONS)
    return OrderFigures(
        placed=figures["placed"],
        rejected=figures["rejected"],
        filled=figures["filled"],
        placed_by_hour=figures["placed_by_hour"],
        rejected_by_hour=figures["rejected_by_hour"],
        top_rejections=[(message or "(no message)", count) for message, count in figures["top_rejections"]],
    )


@dataclass(frozen=True)
class RiskFigures:
    breaches: int
    breaches_by_reason: dict[str, int]
    users_restricted: int  # today's state REDUCING or HALTED


def risk_figures(*, day: date) -> RiskFigures:
    start, end = ist_day_bounds(day)
    by_reason = rms_platform_breaches_by_reason(start=start, end=end)
    restricted = rms_platform_restricted_count(day=day)
    return RiskFigures(breaches=sum(by_reason.values()), breaches_by_reason=by_reason, users_restricted=restricted)


@dataclass(frozen=True)
class RevenueFigures:
    month: date  # its first day
    total: Decimal  # rupees captured this IST month
    payments: int
    by_day: dict[date, Decimal] = field(default_factory=dict)
    days_so_far: int = 0


def revenue_figures(*, day: date) -> RevenueFigures:
    start, end = ist_month_bounds(day)
    captured = payment_platform_captured(start=start, end=end, tz=IST)
    return RevenueFigures(
        month=start.date(),
        total=Decimal(captured["paise"] or 0) / PAISE_PER_RUPEE,
        payments=captured["payments"],
        by_day={paid_on: Decimal(paise) / PAISE_PER_RUPEE for paid_on, paise in captured["by_day"].items()},
        days_so_far=day.day,
    )


@dataclass(frozen=True)
class FeedFigures:
    symbols_checked: int
    symbols_quoted: int
    newest: datetime | None
    newest_symbol: str
    lag_seconds: float | None

    @property
    def state(self) -> str:
        if self.lag_seconds is None:
            return "no quotes"
        if self.lag_seconds <= FEED_FRESH_SECONDS:
            return "live"
        return "lagging" if self.lag_seconds <= FEED_STALE_SECONDS else "stale"


def feed_lag_symbols() -> list[str]:
    listed = instrument_listed_symbols(limit=FEED_LAG_SYMBOLS_CAP)
    return sorted(set(listed) | set(REFERENCE_PRICES))


def feed_figures(*, now: datetime) -> FeedFigures:
    """How old the newest quote in the quote cache is: the feed's lag as the platform sees it."""
    symbols = feed_lag_symbols()
    quotes = quotes_get(symbols)
    stamped = [(quote.timestamp, symbol) for symbol, quote in quotes.items() if quote.timestamp is not None]
    if not stamped:
        return FeedFigures(len(symbols), len(quotes), None, "", None)
    newest, symbol = max(stamped)
    return FeedFigures(len(symbols), len(quotes), newest, symbol, round((now - newest).total_seconds(), 1))


# --- platform alerts (raised and cleared by algoterm.console.alerts) --------------------------------------------------


def alerts_open() -> list[Alert]:
    """Every open alert, critical first, then newest first."""
    alerts = sorted(Alert.objects.filter(ended_at__isnull=True), key=lambda alert: alert.started_at, reverse=True)
    return sorted(alerts, key=lambda alert: alert.severity != AlertSeverity.CRITICAL)


def alerts_history(*, limit: int = ALERT_HISTORY_SIZE) -> list[Alert]:
    """The last `limit` alerts, open or ended, newest first."""
    return list(Alert.objects.select_related("cleared_by").order_by("-started_at", "-id")[:limit])


def alerts_since(*, since: datetime) -> list[Alert]:
    """Alerts open at any moment since `since`, oldest first."""
    return list(Alert.objects.filter(Q(ended_at__isnull=True) | Q(ended_at__gte=since)).order_by("started_at", "id"))


@dataclass(frozen=True)
class AlertFigures:
    open: list[Alert]
    history: list[Alert]
    timeline: list[Alert]  # every alert open at some moment of the last ALERT_TIMELINE
    since: datetime

    at: datetime

    @property
    def critical_open(self) -> int:
        return sum(1 for alert in self.open if alert.severity == AlertSeverity.CRITICAL)

    def history_rows(self) -> list[tuple[Alert, str]]:
        """Each alert of the history with how long it lasted (so far, while open)."""
        return [
            (alert, duration_text(((alert.ended_at or self.at) - alert.started_at).total_seconds()))
            for alert in self.history
        ]


def duration_text(seconds: float) -> str:
    minutes, seconds = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def alerts_figures(*, now: datetime) -> AlertFigures:
    since = now - ALERT_TIMELINE
    return AlertFigures(
        open=alerts_open(), history=alerts_history(), timeline=alerts_since(since=since), since=since, at=now
    )


@dataclass(frozen=True)
class Dashboard:
    at: datetime
    day: date
    users: UserFigures
    accounts: AccountFigures
    positions: PositionFigures
    orders: OrderFigures
    risk: RiskFigures
    revenue: RevenueFigures
    feed: FeedFigures
    alerts: AlertFigures


def dashboard_get(*, now: datetime | None = None) -> Dashboard:
    now = now or timezone.now()
    day = timezone.localtime(now, IST).date()
    return Dashboard(
        at=now,
        day=day,
        users=users_figures(now=now),
        accounts=accounts_figures(),
        positions=positions_figures(day=day),
        orders=orders_figures(day=day),
        risk=risk_figures(day=day),
        revenue=revenue_figures(day=day),
        feed=feed_figures(now=now),
        alerts=alerts_figures(now=now),
    )


# --- charts ------------------------------------------------------------------------------------------------------


def _png(figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _figure(height: float = 3.2):
    from matplotlib.figure import Figure  # heavy: loaded only when a page draws its charts

    figure = Figure(figsize=(6.4, height), dpi=100)
    return figure, figure.add_subplot()


def _nothing_yet(axes, text: str) -> None:
    axes.text(0.5, 0.5, text, transform=axes.transAxes, ha="center", va="center", color="#777777")


def orders_chart_png(orders: OrderFigures) -> bytes:
    """Orders created per IST hour today: placed beside rejected."""
    figure, axes = _figure()
    hours = orders.hours
    positions = list(range(len(hours)))
    axes.bar(
        [p - 0.2 for p in positions],
        [orders.placed_by_hour.get(h, 0) for h in hours],
        0.4,
        label="placed",
        color="#1565c0",
    )
    axes.bar(
        [p + 0.2 for p in positions],
        [orders.rejected_by_hour.get(h, 0) for h in hours],
        0.4,
        label="rejected",
        color="#c62828",
    )
    axes.set_xticks(positions, [f"{h:02d}" for h in hours])
    axes.set_xlabel("hour (IST)")
    axes.set_ylabel("orders")
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.set_ylim(0, max([1, *orders.placed_by_hour.values()]) * 1.25)  # room for the legend above the bars
    axes.legend(loc="upper right", frameon=False, ncols=2)
    axes.grid(axis="y", alpha=0.3)
    if not orders.placed:
        _nothing_yet(axes, "no orders today")
    return _png(figure)


def accounts_chart_png(accounts: AccountFigures) -> bytes:
    """Broker accounts per broker, stacked by session state."""
    figure, axes = _figure()
    bottoms = [0] * len(accounts.brokers)
    for status in accounts.statuses:
        heights = [accounts.count(broker, status) for broker in accounts.brokers]
        axes.bar(
            accounts.brokers, heights, bottom=bottoms, label=status.replace("_", " "), color=STATUS_COLOURS.get(status)
        )
        bottoms = [bottom + height for bottom, height in zip(bottoms, heights, strict=True)]
    axes.set_ylabel("accounts")
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.set_ylim(0, max([1, *bottoms]))
    axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize="small")
    axes.grid(axis="y", alpha=0.3)
    if not accounts.total:
        _nothing_yet(axes, "no broker accounts")
    return _png(figure)


def revenue_chart_png(revenue: RevenueFigures) -> bytes:
    """Captured revenue per IST day of this month (the whole month drawn, bars up to today)."""
    figure, axes = _figure()
    days = [revenue.month.replace(day=number) for number in range(1, revenue.days_so_far + 1)]
    axes.bar(
        [day.day for day in days],
        [float(revenue.by_day.get(day, 0)) for day in days],
        color="#6a1b9a",
        label="captured",
    )
    month_days = ((revenue.month + timedelta(days=32)).replace(day=1) - timedelta(days=1)).day
    axes.set_xlim(0.4, month_days + 0.6)
    axes.set_xticks(range(1, month_days + 1, 2))
    axes.set_xlabel(f"day of {revenue.month:%B %Y}")
    axes.set_ylabel("₹ captured")
    axes.set_ylim(0, max([1.0, *(float(amount) for amount in revenue.by_day.values())]) * 1.1)
    axes.yaxis.set_major_formatter(lambda value, _: f"₹{value:,.0f}")
    axes.grid(axis="y", alpha=0.3)
    if not revenue.total:
        _nothing_yet(axes, "no captured payments this month")
    return _png(figure)


def alerts_timeline_png(alerts: AlertFigures, *, now: datetime) -> bytes:
    """The last day's alerts as bars on a time axis, one row per condition, coloured by severity."""
    figure, axes = _figure(height=max(2.0, 1.0 + 0.35 * len({alert.condition for alert in alerts.timeline})))
    conditions = sorted({alert.condition for alert in alerts.timeline}, reverse=True)
    row = {condition: index for index, condition in enumerate(conditions)}
    start, end = timezone.localtime(alerts.since, IST), timezone.localtime(now, IST)
    for alert in alerts.timeline:
        began = max(timezone.localtime(alert.started_at, IST), start)
        ended = timezone.localtime(alert.ended_at, IST) if alert.ended_at else end
        axes.barh(
            row[alert.condition],
            ended - began,
            left=began.replace(tzinfo=None),
            height=0.6,
            color=SEVERITY_COLOURS.get(alert.severity, "#777777"),
            alpha=0.9 if alert.ended_at is None else 0.6,
        )
    from matplotlib.dates import DateFormatter

    axes.set_xlim(start.replace(tzinfo=None), end.replace(tzinfo=None))
    axes.xaxis.set_major_formatter(DateFormatter("%H:%M"))
    axes.set_yticks(range(len(conditions)), conditions, fontsize="small")
    axes.set_ylim(-0.6, max(len(conditions), 1) - 0.4)
    axes.set_xlabel("last 24 hours (IST); red critical, amber warning")
    axes.grid(axis="x", alpha=0.3)
    if not conditions:
        _nothing_yet(axes, "no alerts in the last 24 hours")
    return _png(figure)


def charts_get(dashboard: Dashboard) -> dict[str, str]:
    """Each chart as base64 PNG text, ready for a data: URL."""
    charts = {
        "orders": orders_chart_png(dashboard.orders),
        "accounts": accounts_chart_png(dashboard.accounts),
        "revenue": revenue_chart_png(dashboard.revenue),
        "alerts": alerts_timeline_png(dashboard.alerts, now=dashboard.at),
    }
    return {name: base64.b64encode(png).decode("ascii") for name, png in charts.items()}


# --- the page ----------------------------------------------------------------------------------------------------


def _day_filter(field_name: str, day: date) -> str:
    return f"{field_name}__year={day.year}&{field_name}__month={day.month}&{field_name}__day={day.day}"


def dashboard_links(day: date) -> dict[str, str]:
    """Where each figure's rows are, in the admin, filtered to what the figure counts."""
    return {
        "users": reverse("admin:accounts_user_changelist") + "?is_active__exact=1",
        "accounts": reverse("admin:brokers_brokeraccount_changelist"),
        "positions": reverse("admin:orders_position_changelist"),
        "orders": reverse("admin:orders_order_changelist") + "?" + _day_filter("created_at", day),
        "rejected": reverse("admin:orders_order_changelist")
        + "?status__exact=REJECTED&"
        + _day_filter("created_at", day),
        "breaches": reverse("admin:rms_rmsevent_changelist") + "?kind__exact=breach&" + _day_filter("created_at", day),
        "restricted": reverse("admin:rms_rmsstate_changelist") + "?breached_today=yes",
        "revenue": reverse("admin:billing_payment_revenue"),
        "instruments": reverse("admin:marketdata_instrument_changelist"),
        "alerts": reverse("admin:algoterm_alert_changelist"),
    }


def dashboard_view(request, *, admin_site):
    dashboard = dashboard_get()
    context = {
        **admin_site.each_context(request),
        "title": "Operators' dashboard",
        "dashboard": dashboard,
        "at_ist": timezone.localtime(dashboard.at, IST),
        "charts": charts_get(dashboard),
        "links": dashboard_links(dashboard.day),
        "refresh_seconds": REFRESH_SECONDS,
    }
    return TemplateResponse(request, "admin/algoterm/dashboard.html", context)
