from django.urls import path

from marketdata.consumers import MarketDataConsumer

websocket_urlpatterns = [path("ws/market-data", MarketDataConsumer.as_asgi())]
