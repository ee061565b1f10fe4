from django.urls import path

from orders import api, postback

urlpatterns = [
    path("orders", api.OrderListCreateApi.as_view(), name="orders"),
    path("orders/bulk", api.OrderBulkApi.as_view(), name="orders-bulk"),
    path("orders/<str:order_id>", api.OrderDetailApi.as_view(), name="order-detail"),
    path("trades", api.TradeListApi.as_view(), name="trades"),
    path("positions", api.PositionListApi.as_view(), name="positions"),
    path("positions/squareoff", api.SquareOffApi.as_view(), name="positions-squareoff"),
    path("portfolio", api.PortfolioApi.as_view(), name="portfolio"),
    path("brokers/postback/<str:broker>", postback.BrokerPostbackApi.as_view(), name="broker-postback"),
]
