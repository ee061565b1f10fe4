"""Reads of the instrument master for the API. The master is shared by every user; selectors take the user all
the same, as every selector does, so entitlements can narrow it later."""

from __future__ import annotations

from datetime import date

from django.db.models import Q, QuerySet

from marketdata.models import Instrument


def instrument_list(
    *,
    user,
    search: str = "",
    exchange: str = "",
    instrument_type: str = "",
    underlying: str = "",
    expiry: date | None = None,
    include_inactive: bool = False,
) -> QuerySet[Instrument]:
    """Instruments matching every given filter; `search` looks in symbol, tradingsymbol and name, ignoring case."""
    instruments = Instrument.objects.all()
    if not include_inactive:
        instruments = instruments.filter(is_active=True)
    if search:
        instruments = instruments.filter(
            Q(symbol__icontains=search) | Q(tradingsymbol__icontains=search) | Q(name__icontains=search)
        )
    if exchange:
        instruments = instruments.filter(exchange=exchange.upper())
    if instrument_type:
        instruments = instruments.filter(instrument_type=instrument_type.upper())
    if underlying:
        instruments = instruments.filter(underlying=underlying.upper())
    if expiry is not None:
        instruments = instruments.filter(expiry=expiry)
    return instruments.order_by("symbol")
