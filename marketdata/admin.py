"""Operators' views of the instrument master and stored candles (written by loaders and feeds, not by hand)."""

from django.contrib import admin

from marketdata.models import Candle, Instrument


@admin.register(Instrument)
class InstrumentAdmin(admin.ModelAdmin):
    list_display = [
        "symbol",
        "instrument_type",
        "underlying",
        "expiry",
        "strike",
        "lot_size",
        "kite_token",
        "is_active",
    ]
    list_filter = ["exchange", "instrument_type", "is_active"]
    search_fields = ["symbol", "tradingsymbol", "name", "underlying"]
    date_hierarchy = "expiry"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Candle)
class CandleAdmin(admin.ModelAdmin):
    list_display = ["symbol", "interval", "start", "open", "high", "low", "close", "volume"]
    list_filter = ["interval"]
    search_fields = ["symbol"]
    date_hierarchy = "start"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
