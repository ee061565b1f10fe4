"""/ws/market-data: ticks for the symbols a connection subscribes to.

`subscription` `{"action": "subscribe"|"unsubscribe", "symbols": [...], "mode": "ltp"|"quote"}` answers a subscribe
with a `snapshot` `{"quotes": {symbol: payload}, "missing": [...]}` of the cached quotes, then `tick` messages as the
feed publishes (ltp mode: `{symbol, ltp, timestamp}`; quote mode: the full quote as `GET /api/quotes` shows it).

Everything sent goes through a bounded per-connection queue drained by one writer task, so ticks for a client that
reads too slowly pile up in its own queue, never in the channel layer or in other connections. When the queue is
full the client gets a non-recoverable `error` (RATE_LIMITED) and the connection closes with CLOSE_TOO_SLOW (4429).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from algoterm.api.errors import AppError, ErrorCode, ValidationFailed
from algoterm.api.ws import ProtocolConsumer
from billing.selectors import entitlements_for
from marketdata import selectors
from marketdata.quotes import _encode, quotes_get
from marketdata.ticks import symbol_group

CLOSE_TOO_SLOW = 4429
MODES = ("ltp", "quote")
DEFAULT_MAX_SYMBOLS = 100
DEFAULT_SEND_QUEUE = 1000
_ERROR_SEND_TIMEOUT = 1.0


def _payload_for(encoded_quote: dict[str, Any], mode: str) -> dict[str, Any]:
    return selectors.ltp_payload(encoded_quote) if mode == "ltp" else selectors.quote_payload(encoded_quote)


@database_sync_to_async
def _symbols_unknown(symbols: list[str], quoted: set[str]) -> list[str]:
    return selectors.symbols_unknown(symbols=symbols, quoted=quoted)


class MarketDataConsumer(ProtocolConsumer):
    async def on_authenticated(self) -> None:
        self.modes: dict[str, str] = {}
        server_limit = getattr(settings, "WS_MAX_SYMBOLS", DEFAULT_MAX_SYMBOLS)
        entitlements = await database_sync_to_async(entitlements_for)(user=self.user)
        plan_limit = entitlements.websocket_symbols
        self.max_symbols = server_limit if plan_limit is None else min(server_limit, plan_limit)
        self.plan_limits_symbols = plan_limit is not None and plan_limit < server_limit
        self.outbox: asyncio.Queue[str] = asyncio.Queue(maxsize=getattr(settings, "WS_SEND_QUEUE", DEFAULT_SEND_QUEUE))
        self.dropping = False
        self.writer = asyncio.create_task(self._drain_outbox())

    # --- sending: everything after connect goes through the outbox --------------------------------------------------

    async def send_message(self, message_type: str, payload: dict[str, Any]) -> None:
        if not hasattr(self, "outbox"):
            await super().send_message(message_type, payload)  # before authentication: the 4401 path
            return
        if self.dropping:
            return
        try:
            self.outbox.put_nowait(json.dumps({"t": message_type, "p": payload}))
        except asyncio.QueueFull:
            await self._drop_slow_client()

    async def _drain_outbox(self) -> None:
        while True:
            text = await self.outbox.get()
            await self._transmit(text)

    async def _transmit(self, text: str) -> None:
        await self.send(text_data=text)

    async def _drop_slow_client(self) -> None:
        error = {
            "message": "Too slow: ticks queued faster than this connection reads them.",
            "code": str(ErrorCode.RATE_LIMITED),
        }
        await self.send_last(json.dumps({"t": "error", "p": {**error, "recoverable": False}}))
        await self.close(code=CLOSE_TOO_SLOW)

    async def send_last(self, text: str) -> None:
        """Ahead of whatever ticks are still queued: they stop here, and the client learns why at once."""
        if not hasattr(self, "writer"):
            await super().send_last(text)
            return
        self.dropping = True
        self.writer.cancel()
        await self._leave_groups(list(self.modes))
        self.modes.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.send(text_data=text), _ERROR_SEND_TIMEOUT)

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "writer"):
            self.writer.cancel()
            await self._leave_groups(list(self.modes))

    # --- client messages ------------------------------------------------------------------------------------------

    async def handle_subscription(self, payload: dict[str, Any]) -> None:
        action, mode = payload.get("action"), payload.get("mode", "ltp")
        symbols = payload.get("symbols")
        if action not in ("subscribe", "unsubscribe"):
            raise ValidationFailed('"action" must be "subscribe" or "unsubscribe".')
        if mode not in MODES:
            raise ValidationFailed('"mode" must be "ltp" or "quote".')
        if not isinstance(symbols, list) or not symbols or not all(isinstance(symbol, str) for symbol in symbols):
            raise ValidationFailed('"symbols" must be a non-empty list of symbols like "NSE:INFY".')
        if len(symbols) > self.max_symbols:
            self._refuse_over_limit(f"At most {self.max_symbols} symbols per connection.")
        symbols = list(dict.fromkeys(selectors.symbol_normalize(symbol)[:64] for symbol in symbols))
        if action == "unsubscribe":
            gone = [symbol for symbol in symbols if symbol in self.modes]
            for symbol in gone:
                del self.modes[symbol]
            await self._leave_groups(gone)
            return
        await self._subscribe(symbols, mode)

    def _refuse_over_limit(self, message: str) -> None:
        if self.plan_limits_symbols:
            raise AppError(f"{message} (your plan's limit)", code=ErrorCode.PLAN_REQUIRED)
        raise ValidationFailed(message)

    async def _subscribe(self, symbols: list[str], mode: str) -> None:
        new = [symbol for symbol in symbols if symbol not in self.modes]
        if len(self.modes) + len(new) > self.max_symbols:
            self._refuse_over_limit(
                f"At most {self.max_symbols} symbols per connection; {len(self.modes)} subscribed already."
            )
        quotes = await database_sync_to_async(quotes_get)(symbols)
        unknown = await _symbols_unknown(symbols, set(quotes))
        if unknown:
            raise ValidationFailed(f"Unknown symbols {unknown[:20]}; nothing was subscribed.")
        for symbol in symbols:
            self.modes[symbol] = mode
        # One at a time: concurrent group calls from many connections would exhaust the channel layer's Redis pool.
        for symbol in new:
            await self.channel_layer.group_add(symbol_group(symbol), self.channel_name)
        await self._send_snapshot(symbols, quotes)

    async def handle_request_snapshot(self, payload: dict[str, Any]) -> None:
        symbols = list(self.modes)
        await self._send_snapshot(symbols, await database_sync_to_async(quotes_get)(symbols))

    async def _send_snapshot(self, symbols: list[str], quotes: dict) -> None:
        await self.send_message(
            "snapshot",
            {
                "quotes": {
                    symbol: _payload_for(_encode(quote), self.modes[symbol])
                    for symbol, quote in quotes.items()
                    if symbol in self.modes
                },
                "missing": [symbol for symbol in symbols if symbol not in quotes],
            },
        )

    async def _leave_groups(self, symbols: list[str]) -> None:
        for symbol in symbols:
            await self.channel_layer.group_discard(symbol_group(symbol), self.channel_name)

    # --- the tick bus ---------------------------------------------------------------------------------------------

    async def md_tick(self, event: dict[str, Any]) -> None:
        mode = self.modes.get(event["symbol"]) if hasattr(self, "modes") else None
        if mode is not None:
            await self.send_message("tick", _payload_for(event["quote"], mode))
