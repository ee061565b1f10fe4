from django.urls import path

from brokers import api

urlpatterns = [
    path("brokers/connect", api.BrokerConnectApi.as_view(), name="brokers-connect"),
    path("brokers/callback/<str:broker>", api.BrokerCallbackApi.as_view(), name="brokers-callback"),
    path("brokers/accounts", api.BrokerAccountListApi.as_view(), name="brokers-accounts"),
    path("brokers/<str:account_id>", api.BrokerAccountDetailApi.as_view(), name="brokers-detail"),
    path("brokers/<str:account_id>/refresh", api.BrokerAccountRefreshApi.as_view(), name="brokers-refresh"),
    path(
        "brokers/<str:account_id>/session-renewal",
        api.BrokerSessionRenewalApi.as_view(),
        name="brokers-session-renewal",
    ),
    path("brokers/<str:account_id>/funds", api.BrokerFundsApi.as_view(), name="brokers-funds"),
]
