"""OpenAPI generation: every operation documents the error envelope for the statuses it can answer."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework.permissions import AllowAny

from algoterm.api.serializers import ErrorSerializer

_DESCRIPTIONS = {
    "400": "Invalid input: `error_code` VALIDATION_ERROR, `errors` by field.",
    "401": "AUTH_REQUIRED or AUTH_INVALID.",
    "403": "PERMISSION_DENIED, ACCOUNT_DEACTIVATED or PLAN_REQUIRED.",
    "404": "NOT_FOUND: missing, or owned by another user.",
    "429": "RATE_LIMITED, with a Retry-After header.",
    "500": "INTERNAL_ERROR.",
    "503": "SERVICE_UNAVAILABLE: a dependency (database, Redis, task queue) is down; retry after Retry-After.",
}


class AutoSchema(SpectacularAutoSchema):
    def _error_statuses(self) -> list[str]:
        statuses = ["400"] if self.method in ("POST", "PUT", "PATCH") or self._has_query_input() else []
        public = any(isinstance(permission, AllowAny) for permission in self.view.get_permissions())
        if not public:
            statuses += ["401", "403"]
        if "{" in self.path:
            statuses.append("404")
        statuses += ["429", "500", "503"]  # any route may meet a database or Redis outage
        return statuses

    def _has_query_input(self) -> bool:
        return self._is_list_view() or bool(getattr(self.view, "filterset_class", None))

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for status in self._error_statuses():
            if status not in responses:
                responses[status] = self._get_response_for_code(
                    OpenApiResponse(ErrorSerializer, description=_DESCRIPTIONS[status]), status, direction=direction
                )
        return responses


class AccessTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.AccessTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
