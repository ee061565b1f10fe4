"""The one list route: parse the query, call a selector, answer one page."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.db.models import QuerySet
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from algoterm.api.pagination import PAGE_PARAMETERS, PagePagination

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

ListItems = QuerySet | Sequence[Any]


# No docstrings on this class or its methods: the schema generator would print them as the description of every
# list route that does not write its own.
class ListApi(APIView):
    # A GET that answers one page of a list. A subclass names `filter_serializer_class` (the query string's input
    # serializer; None when the route takes no filters) and `output_serializer_class` (one item), and implements
    # `list_selector`; `list_extra` adds keys beside the page's. Its schema goes on the class:
    # `@extend_schema_view(get=extend_schema(...))`; the query parameters come from the filter serializer.

    pagination_class = PagePagination
    filter_serializer_class: type[serializers.Serializer] | None = None
    output_serializer_class: type[serializers.BaseSerializer]

    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        filters = self.list_filters(request=request)
        items = self.list_selector(user=request.user, filters=filters)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(items, request, view=self)
        data = self.output_serializer_class(page, many=True, context={"request": request}).data
        response = paginator.get_paginated_response(data)
        response.data.update(self.list_extra(user=request.user, filters=filters, items=items))
        return response

    def list_filters(self, *, request: Request) -> dict[str, Any]:
        if self.filter_serializer_class is None:
            return {}
        query = self.filter_serializer_class(data=request.query_params)
        query.is_valid(raise_exception=True)
        # The paginator reads the page itself; a filter serializer lists it only so that unknown names stay refused.
        return {key: value for key, value in query.validated_data.items() if key not in PAGE_PARAMETERS}

    def list_selector(self, *, user: AbstractBaseUser | AnonymousUser, filters: dict[str, Any]) -> ListItems:
        raise NotImplementedError(f"{type(self).__name__} names no list_selector")

    def list_extra(
        self, *, user: AbstractBaseUser | AnonymousUser, filters: dict[str, Any], items: ListItems
    ) -> dict[str, Any]:
        return {}
