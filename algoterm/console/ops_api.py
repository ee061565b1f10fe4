"""Operations routes: `GET /api/health/components` and `GET /api/metrics` (Prometheus).

Both are for operators and their tools, never for app users. Access: an admin's access JWT; or
`Authorization: Bearer <settings.METRICS_TOKEN>` (a scraper's static token, off while the setting is empty); or,
with settings.METRICS_ALLOW_LOCAL, any request from a loopback address (the client address after NUM_PROXIES, so a
proxied request is judged by the address the proxy saw). Anyone else: 401 without credentials, 403 otherwise.
The public `GET /api/health` stays the load balancers' probe.
"""

from __future__ import annotations

import hmac
from dataclasses import asdict

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import AccessTokenAuthentication
from algoterm.api.errors import ErrorCode, envelope
from algoterm.api.middleware import request_client_ip
from algoterm.console import metrics
from algoterm.views import HealthOutput


class _Scraper:
    """`request.auth` of a request that presented the metrics token."""


SCRAPER = _Scraper()


class MetricsTokenAuthentication(BaseAuthentication):
    """Accepts exactly settings.METRICS_TOKEN as a bearer token; any other bearer token is left to the JWT
    authentication that follows. Only the operations routes use it."""

    def authenticate(self, request: Request):
        expected = settings.METRICS_TOKEN
        if not expected:
            return None
        scheme, _, credentials = get_authorization_header(request).decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), expected.encode()):
            return None
        return AnonymousUser(), SCRAPER

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class MetricsTokenScheme(OpenApiAuthenticationExtension):
    target_class = "algoterm.console.ops_api.MetricsTokenAuthentication"
    name = "metricsToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "The static token in settings METRICS_TOKEN, for Prometheus scrapers.",
        }


class IsOperatorOrInternal(BasePermission):
    message = "Only administrators and the metrics scraper can read this."

    def has_permission(self, request: Request, view) -> bool:
        if request.auth is SCRAPER:
            return True
        user = request.user
        if user is not None and user.is_authenticated:
            return bool(user.is_admin)
        return bool(settings.METRICS_ALLOW_LOCAL) and metrics.is_loopback(request_client_ip(request))


class FirstRendererNegotiation(BaseContentNegotiation):
    """Scrapers ask for text formats in Accept; the text body is written by the view, so errors stay JSON."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class _OpsView(APIView):
    authentication_classes = [MetricsTokenAuthentication, AccessTokenAuthentication]
    permission_classes = [IsOperatorOrInternal]
    content_negotiation_class = FirstRendererNegotiation


_ACCESS = (
    " Access: an admin's access token, the scraper token (settings METRICS_TOKEN) as a bearer token, or with "
    "METRICS_ALLOW_LOCAL a request from a loopback address."
)


class HealthComponentsApi(_OpsView):
    @extend_schema(
        tags=["system"],
        responses={
            200: HealthOutput,
            503: OpenApiResponse(HealthOutput, description="SERVICE_UNAVAILABLE envelope plus the same fields"),
        },
        summary="Health of every component, for operators",
        description="`GET /api/health`'s checks (database, redis, workers, scheduler: the beat heartbeat, "
        "holidays: whether the market calendar has this year's and, from 1 December, next year's NSE list) plus "
        "`queue` (Celery messages waiting per queue), `feed` (age of the newest index quote; stale counts only "
        "while the market is open) and `brokers` (connected accounts and open circuit breakers per broker; down "
        "when every connected account of a broker has its circuit open). 200 when every `required` component is "
        "up, else 503 with the envelope; the body lists every component either way." + _ACCESS,
    )
    def get(self, request: Request) -> Response:
        components = metrics.components_health()
        healthy = all(component.is_up for component in components.values() if component.required)
        body = {
            "status": "ok" if healthy else "unavailable",
            "mode": "embedded" if settings.EMBEDDED else "distributed",
            "checked_at": timezone.now(),
            "components": {name: asdict(component) for name, component in components.items()},
        }
        if healthy:
            return Response(body)
        down = ", ".join(name for name, component in components.items() if component.required and not component.is_up)
        return Response(
            envelope(code=ErrorCode.SERVICE_UNAVAILABLE, detail=f"Unavailable: {down}.", extra=body), status=503
        )


class MetricsApi(_OpsView):
    @extend_schema(
        tags=["system"],
        responses={
            (200, "text/plain"): OpenApiResponse(OpenApiTypes.STR, description="Prometheus text format 0.0.4"),
        },
        summary="Prometheus metrics",
        description="Families, all prefixed `algoterm_`: `http_request_duration_seconds` (histogram by method, "
        "route name and status class; per web process), `orders_placed_today` and `orders_rejected_today` (per "
        "broker, IST trading day), `rms_breaches_today` (per reason), `websocket_connections` (per endpoint, across "
        "processes), `feed_lag_seconds`, `feed_last_tick_timestamp_seconds`, `market_open`, `celery_queue_length` "
        "(per queue; absent in embedded mode), `broker_circuits_open` and `broker_accounts_connected` (per broker), "
        "`metrics_reading_ok` (0 when a reading failed this scrape), and the process collector's `process_*`."
        + _ACCESS,
    )
    def get(self, request: Request) -> HttpResponse:
        return HttpResponse(metrics.exposition(), content_type=metrics.CONTENT_TYPE)
