"""GET /api/instruments: search and filter the instrument master."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from algoterm.api.pagination import PagePagination, paginate
from algoterm.api.serializers import InputSerializer
from brokers.adapters.base import EXCHANGES
from marketdata.models import Instrument, InstrumentType
from marketdata.selectors import instrument_list


class InstrumentListQuery(InputSerializer):
    search = serializers.CharField(required=False, allow_blank=True, max_length=64)
    exchange = serializers.ChoiceField(choices=EXCHANGES, required=False)
    instrument_type = serializers.ChoiceField(choices=InstrumentType.choices, required=False)
    underlying = serializers.CharField(required=False, allow_blank=True, max_length=32)
    expiry = serializers.DateField(required=False, input_formats=["%Y-%m-%d"])
    include_inactive = serializers.BooleanField(required=False, default=False)
    # Pagination reads these itself; they are listed so the unknown-field check lets them through.
    page = serializers.IntegerField(required=False)
    page_size = serializers.IntegerField(required=False)

    def to_internal_value(self, data):
        # Query strings spell choices in any case: ?exchange=nfo&instrument_type=ce.
        data = {key: data.get(key) for key in data}
        for name in ("exchange", "instrument_type"):
            if isinstance(data.get(name), str):
                data[name] = data[name].upper()
        return super().to_internal_value(data)


class InstrumentOutput(serializers.ModelSerializer):
    strike = serializers.DecimalField(max_digits=12, decimal_places=2, coerce_to_string=False, allow_null=True)
    tick_size = serializers.DecimalField(max_digits=8, decimal_places=4, coerce_to_string=False)

    class Meta:
        model = Instrument
        fields = [
            "symbol",
            "exchange",
            "segment",
            "tradingsymbol",
            "name",
            "underlying",
            "instrument_type",
            "expiry",
            "strike",
            "lot_size",
            "tick_size",
            "is_active",
        ]
        read_only_fields = fields


class InstrumentListApi(APIView):
    pagination_class = PagePagination

    @extend_schema(
        tags=["market data"],
        parameters=[
            OpenApiParameter("search", str, description="part of the symbol, tradingsymbol or name (any case)"),
            OpenApiParameter("exchange", str, enum=list(EXCHANGES)),
            OpenApiParameter("instrument_type", str, enum=list(InstrumentType.values)),
            OpenApiParameter("underlying", str, description="e.g. NIFTY, RELIANCE"),
            OpenApiParameter("expiry", str, description="YYYY-MM-DD"),
            OpenApiParameter("include_inactive", bool, description="also instruments no longer listed"),
        ],
        responses={200: InstrumentOutput(many=True)},
        summary="Search the instrument master",
    )
    def get(self, request: Request) -> Response:
        query = InstrumentListQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        filters = {key: value for key, value in query.validated_data.items() if key not in ("page", "page_size")}
        instruments = instrument_list(user=request.user, **filters)
        return paginate(request=request, queryset=instruments, serializer_class=InstrumentOutput, view=self)


urlpatterns = [path("instruments", InstrumentListApi.as_view(), name="instrument-list")]
