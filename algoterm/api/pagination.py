"""The one list shape: {"items", "page", "page_size", "total", "total_pages"}."""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response

from algoterm.api.errors import ValidationFailed

MAX_PAGE_SIZE = 100
MAX_PAGE = 1_000_000  # far past any list's end, well inside the database's OFFSET range
PAGE_PARAMETERS = ("page", "page_size")


class PagePagination(BasePagination):
    """`?page=1&page_size=20` (at most 100). A page past the end is an empty page, not an error."""

    def _positive_int(self, request: Request, name: str, default: int, maximum: int | None = None) -> int:
        raw = request.query_params.get(name)
        if raw in (None, ""):
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ValidationFailed(errors={name: ["Must be a whole number."]}) from None
        if value < 1 or (maximum is not None and value > maximum):
            bound = f"between 1 and {maximum}" if maximum else "at least 1"
            raise ValidationFailed(errors={name: [f"Must be {bound}."]})
        return value

    def paginate_queryset(self, queryset, request: Request, view=None) -> list[Any]:
        self.page_size = self._positive_int(
            request, "page_size", settings.REST_FRAMEWORK["PAGE_SIZE"], maximum=MAX_PAGE_SIZE
        )
        self.page = self._positive_int(request, "page", 1, maximum=MAX_PAGE)
        self.total = (
            queryset.count() if hasattr(queryset, "count") and not isinstance(queryset, list) else len(queryset)
        )
        offset = (self.page - 1) * self.page_size
        return list(queryset[offset : offset + self.page_size])

    def get_paginated_response(self, data: list[Any]) -> Response:
        return Response(
            {
                "items": data,
                "page": self.page,
                "page_size": self.page_size,
                "total": self.total,
                "total_pages": math.ceil(self.total / self.page_size) if self.total else 0,
            }
        )

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["items", "page", "page_size", "total", "total_pages"],
            "properties": {
                "items": schema,
                "page": {"type": "integer", "example": 1},
                "page_size": {"type": "integer", "example": 20},
                "total": {"type": "integer", "example": 42},
                "total_pages": {"type": "integer", "example": 3},
            },
        }

    def get_schema_operation_parameters(self, view) -> list[dict[str, Any]]:
        return [
            {"name": "page", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1}},
            {
                "name": "page_size",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": 20},
            },
        ]
