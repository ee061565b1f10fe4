"""Finding an instrument of the master by our symbol or by a broker's id for it."""

from __future__ import annotations

from marketdata.models import Instrument


def instrument_get(*, symbol: str) -> Instrument | None:
    return Instrument.objects.filter(symbol=symbol).first()


def instrument_get_by_kite_token(*, token: int) -> Instrument | None:
    return Instrument.objects.filter(kite_token=token).first()


def instrument_get_by_dhan_security_id(*, exchange: str, security_id: str) -> Instrument | None:
    """Dhan ids are unique only per exchange; an active instrument wins over a retired one that had the id."""
    return (
        Instrument.objects.filter(exchange=exchange, dhan_security_id=security_id)
        .order_by("-is_active", "-updated_at")
        .first()
    )
