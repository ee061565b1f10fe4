"""Parsers of the shared API layer."""

from __future__ import annotations

from rest_framework.parsers import BaseParser

from algoterm.api.errors import PayloadTooLarge
from algoterm.api.middleware import request_body_limit


class RawBodyParser(BaseParser):
    """The body's exact bytes, for webhooks that are signed over them (Razorpay) or sent with any content type
    (TradingView's alerts arrive as text/plain): the view decodes them itself. Reads at most one byte past the
    route's limit (the middleware refuses longer declared bodies before this runs)."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None) -> bytes:
        if stream is None:
            return b""
        request = (parser_context or {}).get("request")
        limit = request_body_limit(request.path if request is not None else "")
        body = stream.read(limit + 1)
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.", max_bytes=limit)
        return body
