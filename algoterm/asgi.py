"""ASGI entry point: Django for HTTP, Channels for WebSockets under /ws/."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "algoterm.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402  (Django must be set up first)

from algoterm.api.middleware import RequestBodyLimitASGIMiddleware  # noqa: E402
from algoterm.api.ws import websocket_stack  # noqa: E402
from algoterm.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": RequestBodyLimitASGIMiddleware(django_asgi_app),
        "websocket": websocket_stack(URLRouter(websocket_urlpatterns)),
    }
)
