from django.urls import path

from algoterm.console.ops_socket import OpsConsumer

websocket_urlpatterns = [path("ws/ops", OpsConsumer.as_asgi())]
