"""GET /api/instruments: search and filter the instrument master."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import extend_schema, extend_schema_view

from algoterm.api.views import ListApi
from marketdata.selectors import instrument_list
from marketdata.serializers import InstrumentListQuery, InstrumentOutput


@extend_schema_view(
    get=extend_schema(
        tags=["market data"],
        responses={200: InstrumentOutput(many=True)},
        summary="Search the instrument master",
    )
)
class InstrumentListApi(ListApi):
    filter_serializer_class = InstrumentListQuery
    output_serializer_class = InstrumentOutput

    def list_selector(self, *, user, filters):
        return instrument_list(user=user, **filters)


urlpatterns = [path("instruments", InstrumentListApi.as_view(), name="instrument-list")]
