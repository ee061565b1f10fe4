"""A backtest's equity curve as a PNG: equity above, drawdown from the running peak below.

Drawn on a matplotlib Figure with the Agg canvas directly, never through pyplot, so worker threads share no global
figure state and nothing needs a display.
"""

from __future__ import annotations

import io
from datetime import datetime

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from marketdata.calendar import IST

from .backtest import BacktestResult

_EQUITY_COLOUR = "#1f6feb"
_DRAWDOWN_COLOUR = "#d1242f"


def _rupees(value: float, _position: int | None = None) -> str:
    return f"{'-' if value < 0 else ''}₹{abs(value):,.0f}"


def _local(moment: datetime) -> datetime:
    # Naive IST, so the axis shows market dates and times whatever matplotlib's own time zone setting is.
    return moment.astimezone(IST).replace(tzinfo=None)


def equity_chart_png(result: BacktestResult, *, title: str) -> bytes:
    """The equity curve of `result` (capital + cumulative PnL at each day's close) and its drawdown, as PNG bytes."""
    moments = [_local(moment) for moment, _ in result.equity_curve]
    equity = [float(value) for _, value in result.equity_curve]
    drawdown = []
    peak = equity[0] if equity else 0.0
    for value in equity:
        peak = max(peak, value)
        drawdown.append(value - peak)

    figure = Figure(figsize=(10, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    equity_axes, drawdown_axes = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    figure.suptitle(title)
    equity_axes.plot(moments, equity, color=_EQUITY_COLOUR, linewidth=1.4, marker="o" if len(moments) < 40 else None)
    if equity:
        equity_axes.axhline(equity[0], color="#6e7781", linewidth=0.8, linestyle="--")
    equity_axes.set_ylabel("Equity")
    equity_axes.yaxis.set_major_formatter(FuncFormatter(_rupees))
    equity_axes.grid(True, alpha=0.3)
    summary = (
        f"PnL {_rupees(float(result.total_pnl))}   win rate {result.win_rate}%   "
        f"max drawdown {_rupees(float(result.max_drawdown))} "
        f"({result.max_drawdown_pct}%)   Sharpe {result.sharpe if result.sharpe is not None else '-'}   "
        f"{len(result.trades)} trades over {result.days} days"
    )
    equity_axes.set_title(summary, fontsize=9, loc="left")

    drawdown_axes.fill_between(moments, drawdown, 0, color=_DRAWDOWN_COLOUR, alpha=0.35, linewidth=0)
    drawdown_axes.plot(moments, drawdown, color=_DRAWDOWN_COLOUR, linewidth=1)
    drawdown_axes.set_ylabel("Drawdown")
    drawdown_axes.yaxis.set_major_formatter(FuncFormatter(_rupees))
    drawdown_axes.grid(True, alpha=0.3)
    locator = AutoDateLocator()
    drawdown_axes.xaxis.set_major_locator(locator)
    drawdown_axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
