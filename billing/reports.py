"""Revenue figures for operators: captured payments by plan and IST month, as a table and a chart."""

from __future__ import annotations

import io
from dataclasses import dataclass
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.db.models import Sum
from django.db.models.functions import TruncMonth

from .models import Payment, PaymentStatus

IST = ZoneInfo("Asia/Kolkata")


@dataclass(frozen=True)
class RevenueReport:
    plans: list[str]
    rows: list[tuple[str, list[Decimal]]]  # (YYYY-MM, rupees per plan in `plans` order)
    totals: list[Decimal]


def revenue_by_plan_and_month() -> RevenueReport:
    grouped = (
        Payment.objects.filter(status=PaymentStatus.CAPTURED)
        .annotate(month=TruncMonth("paid_at", tzinfo=IST))
        .values("month", "subscription__plan__name")
        .annotate(paise=Sum("amount_paise"))
        .order_by("month")
    )
    cells: dict[tuple[str, str], Decimal] = {}
    months: list[str] = []
    plans: list[str] = []
    for row in grouped:
        month, plan = row["month"].strftime("%Y-%m"), row["subscription__plan__name"]
        cells[(month, plan)] = Decimal(row["paise"]) / 100
        if month not in months:
            months.append(month)
        if plan not in plans:
            plans.append(plan)
    plans.sort()
    rows = [(month, [cells.get((month, plan), Decimal(0)) for plan in plans]) for month in months]
    totals = [sum((amounts[index] for _, amounts in rows), Decimal(0)) for index in range(len(plans))]
    return RevenueReport(plans=plans, rows=rows, totals=totals)


def revenue_chart_png(report: RevenueReport) -> bytes:
    """Stacked monthly bars, one colour a plan; empty bytes when there is no revenue yet."""
    if not report.rows:
        return b""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.6), dpi=100)
    axes = figure.add_subplot()
    months = [month for month, _ in report.rows]
    bottoms = [0.0] * len(months)
    for index, plan in enumerate(report.plans):
        heights = [float(amounts[index]) for _, amounts in report.rows]
        axes.bar(months, heights, bottom=bottoms, label=plan)
        bottoms = [bottom + height for bottom, height in zip(bottoms, heights, strict=True)]
    axes.set_ylabel("₹ captured")
    axes.yaxis.set_major_formatter(lambda value, _: f"₹{value:,.0f}")
    axes.legend(loc="upper left", frameon=False)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
