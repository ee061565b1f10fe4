"""Every WebSocket route; each app contributes its own list."""

from django.urls import re_path

from accounts.routing import websocket_urlpatterns as accounts_ws
from algoterm.api.ws import NotFoundConsumer
from algoterm.console.routing import websocket_urlpatterns as console_ws
from marketdata.routing import websocket_urlpatterns as marketdata_ws

websocket_urlpatterns = [*accounts_ws, *marketdata_ws, *console_ws, re_path(r"^.*$", NotFoundConsumer.as_asgi())]
