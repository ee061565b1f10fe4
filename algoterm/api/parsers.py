"""Parsers of the shared API layer."""

from __future__ import annotations

from rest_framework.parsers import BaseParser


class RawBodyParser(BaseParser):
    """The body's exact bytes, for webhooks that are signed over them (Razorpay) or sent with any content type
    (TradingView's alerts arrive as text/plain): the view decodes them itself."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None) -> bytes:
        return stream.read() if stream is not None else b""
