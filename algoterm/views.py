"""Platform routes: health, version, and the JSON 404 for unknown API paths."""

from __future__ import annotations

from dataclasses import asdict

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from algoterm.api.errors import ErrorCode, NotFound, envelope
from algoterm.health import platform_health

ComponentOutput = inline_serializer(
    "ComponentHealth",
    fields={
        "status": serializers.ChoiceField(choices=["up", "down"]),
        "latency_ms": serializers.FloatField(allow_null=True),
        "required": serializers.BooleanField(),
        "detail": serializers.CharField(),
        "info": serializers.DictField(),
    },
)
HealthOutput = inline_serializer(
    "Health",
    fields={
        "status": serializers.ChoiceField(choices=["ok", "unavailable"]),
        "mode": serializers.ChoiceField(choices=["embedded", "distributed"]),
        "checked_at": serializers.DateTimeField(),
        "components": serializers.DictField(child=ComponentOutput),
    },
)


class HealthApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        tags=["system"],
        responses={200: HealthOutput, 503: HealthOutput},
        summary="Platform health",
        description="200 when every required part is up; 503 (SERVICE_UNAVAILABLE envelope plus the same fields) "
        "when one is down. In embedded mode the in-process parts count as up.",
    )
    def get(self, request: Request) -> Response:
        components = platform_health()
        healthy = all(component.is_up for component in components.values() if component.required)
        body = {
            "status": "ok" if healthy else "unavailable",
            "mode": "embedded" if settings.EMBEDDED else "distributed",
            "checked_at": timezone.now(),
            "components": {name: asdict(component) for name, component in components.items()},
        }
        if healthy:
            return Response(body)
        down = ", ".join(name for name, component in components.items() if not component.is_up)
        return Response(
            envelope(code=ErrorCode.SERVICE_UNAVAILABLE, detail=f"Unavailable: {down}.", extra=body), status=503
        )


class VersionApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        tags=["system"],
        responses=inline_serializer(
            "Version",
            fields={
                "name": serializers.CharField(),
                "version": serializers.CharField(),
                "api_version": serializers.CharField(),
                "ws_protocol_version": serializers.IntegerField(),
                "commit": serializers.CharField(),
            },
        ),
        summary="Build and API version",
    )
    def get(self, request: Request) -> Response:
        return Response(
            {
                "name": "AlgoTerm",
                "version": settings.VERSION,
                "api_version": "1",
                "ws_protocol_version": settings.WS_PROTOCOL_VERSION,
                "commit": settings.GIT_COMMIT,
            }
        )


class ApiNotFound(APIView):
    """Unknown paths under /api/ answer the envelope whatever DEBUG says."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    schema = None

    def http_method_not_allowed(self, request, *args, **kwargs):
        raise NotFound()

    get = post = put = patch = delete = http_method_not_allowed
