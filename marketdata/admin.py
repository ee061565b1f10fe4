"""Operators' views of the instrument master and stored candles (written by loaders and feeds, not by hand), and the
re-sync of the master: from a connected Zerodha account's instrument dump, else (outside production) the generated
demo universe. The re-sync is an action and a button on the instruments page; both call the loader service."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from accounts.services import audit_record
from algoterm.api.errors import AppError
from brokers.models import Broker, BrokerAccount
from brokers.selectors import broker_account_latest_connected
from marketdata.instruments import InstrumentLoadError, instruments_load_demo, instruments_load_from_account
from marketdata.models import Candle, Instrument, InstrumentMasterLoad


@dataclass(frozen=True)
class ResyncSource:
    description: str
    account: BrokerAccount | None = None
    refused: bool = False

    @property
    def name(self) -> str:
        return "zerodha" if self.account is not None else "demo"


def resync_source() -> ResyncSource:
    """Zerodha is the one broker with an instrument dump; the demo universe would replace a real master with made-up
    contracts, so production refuses it."""
    account = broker_account_latest_connected(broker=Broker.ZERODHA)
    if account is not None:
        return ResyncSource(f"the instrument dump of Zerodha account {account.label} ({account.pk})", account)
    if settings.IS_PRODUCTION:
        return ResyncSource(
            "No Zerodha account is connected, and in production the generated demo universe must not replace the "
            "real master. Connect one, or load Kite's instrument CSV with `manage.py load_instruments --csv`.",
            refused=True,
        )
    return ResyncSource("the generated demo universe")


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
    actions = ["resync_instruments"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def get_urls(self):
        return [
            path("resync/", self.admin_site.admin_view(self.resync_view), name="marketdata_instrument_resync"),
            *super().get_urls(),
        ]

    @admin.action(description="Re-sync the whole instrument master (the selection does not matter)")
    def resync_instruments(self, request, queryset) -> None:
        self._resync(request)

    def resync_view(self, request):
        if request.method == "POST":
            self._resync(request)
            return HttpResponseRedirect(reverse("admin:marketdata_instrument_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Re-sync instruments",
            "source": resync_source(),
            "active": Instrument.objects.filter(is_active=True).count(),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/marketdata/instrument/resync.html", context)

    def _resync(self, request) -> None:
        source = resync_source()
        if source.refused:
            self.message_user(request, source.description, level=messages.ERROR)
            return
        details = {"source": source.name, "account_id": source.account.pk if source.account else None}
        try:
            if source.account is not None:
                result = instruments_load_from_account(account=source.account)
            else:
                result = instruments_load_demo()
        except (InstrumentLoadError, AppError) as error:
            problem = str(getattr(error, "detail", error))
            audit_record(
                action="admin.instruments_resync",
                actor=request.user,
                details={**details, "outcome": "failed", "detail": problem},
            )
            self.message_user(
                request, f"Nothing was changed: {source.description} could not be loaded. {problem}", messages.ERROR
            )
            return
        counts = {name: getattr(result, name) for name in ("total", "created", "updated", "deactivated", "skipped")}
        audit_record(
            action="admin.instruments_resync", actor=request.user, details={**details, "outcome": "done", **counts}
        )
        self.message_user(
            request,
            f"Instruments re-synced from {source.description}: {result.total} active, {result.created} new, "
            f"{result.updated} updated, {result.deactivated} marked inactive ({result.seconds:.1f}s).",
            messages.SUCCESS,
        )


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


@admin.register(InstrumentMasterLoad)
class InstrumentMasterLoadAdmin(admin.ModelAdmin):
    """Each refresh of a broker's instrument master and what it did; `manage.py load_instruments --broker` or the
    daily refresh writes them."""

    list_display = ["broker", "started_at", "outcome", "attempt", "rows", "created", "updated", "removed", "message"]
    list_filter = ["broker", "outcome"]
    date_hierarchy = "started_at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
