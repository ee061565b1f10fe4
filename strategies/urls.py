from django.urls import path

from strategies import api

urlpatterns = [
    path("strategies", api.StrategyListCreateApi.as_view(), name="strategies"),
    path("strategies/<str:strategy_id>", api.StrategyDetailApi.as_view(), name="strategy-detail"),
    path("strategies/<str:strategy_id>/start", api.StrategyStartApi.as_view(), name="strategy-start"),
    path("strategies/<str:strategy_id>/stop", api.StrategyStopApi.as_view(), name="strategy-stop"),
    path("strategies/<str:strategy_id>/runs", api.StrategyRunListApi.as_view(), name="strategy-runs"),
    path("strategies/<str:strategy_id>/backtests", api.BacktestListApi.as_view(), name="strategy-backtests"),
    path(
        "strategies/<str:strategy_id>/backtests/<str:backtest_id>",
        api.BacktestDetailApi.as_view(),
        name="strategy-backtest",
    ),
    path(
        "strategies/<str:strategy_id>/backtests/<str:backtest_id>/chart.png",
        api.BacktestChartApi.as_view(),
        name="strategy-backtest-chart",
    ),
    path("strategies/<str:strategy_id>/webhook", api.StrategyWebhookApi.as_view(), name="strategy-webhook"),
    path(
        "strategies/<str:strategy_id>/webhook/rotate",
        api.WebhookSecretRotateApi.as_view(),
        name="strategy-webhook-rotate",
    ),
    path("signals", api.SignalListApi.as_view(), name="signals"),
    path("signals/<str:signal_id>", api.SignalDetailApi.as_view(), name="signal-detail"),
]
