"""/ws/market-data: ticks for the symbols a connection subscribes to.

`subscription` `{"action": "subscribe"|"unsubscribe", "symbols": [...], "mode": "ltp"|"quote"}` answers a subscribe
with a `snapshot` `{"quotes": {symbol: payload}, "missing": [...]}` of the cached quotes, then `ticks` messages
`{"ticks": [payload, ...]}`: one message per send carrying every subscribed symbol that moved since the last one
(ltp mode: `{symbol, ltp, timestamp}`; quote mode: the full quote as `GET /api/quotes` shows it).

One writer task per connection sends what is due: first its messages (snapshots, errors, pongs) in order, then the
latest tick of each symbol that moved, conflated (latest price wins) while the previous send is still being read. A
client that reads so slowly that one send stays unfinished for WS_SLOW_CLIENT_SECONDS (or lets WS_SEND_QUEUE
messages pile up) is told with a non-recoverable `error` (RATE_LIMITED) and closed with CLOSE_TOO_SLOW (4429); it
never holds up other connections, and its backlog never grows past one payload per subscribed symbol.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from algoterm.api.errors import AppError, ErrorCode, ValidationFailed
from algoterm.api.ws import ProtocolConsumer
from algoterm.outages import DEPENDENCY_ERRORS
from billing.selectors import entitlements_for
from marketdata import selectors
from marketdata.quotes import quote_encode, quotes_get
from marketdata.tickhub import tick_hub, tick_payload

logger = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 4429
MODES = ("ltp", "quote")
DEFAULT_MAX_SYMBOLS = 100
DEFAULT_SEND_QUEUE = 1000
_ERROR_SEND_TIMEOUT = 1.0


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
        self.queue_limit = getattr(settings, "WS_SEND_QUEUE", DEFAULT_SEND_QUEUE)
        self.slow_after = float(settings.WS_SLOW_CLIENT_SECONDS)
        self.farewell_seconds = float(settings.WS_SLOW_CLIENT_FAREWELL_SECONDS)
        self.outbox: collections.deque[str] = collections.deque()
        self.ticks_due: dict[str, str] = {}
        self.sending_since: float | None = None
        self.due = asyncio.Event()
        self.snapshots_pending = 0  # while a snapshot is being read, ticks wait so none is overtaken by it
        self.dropping = False
        self.dropper: asyncio.Future | None = None
        self.hub = tick_hub()
        self.writer = asyncio.create_task(self._write())

    # --- sending: everything after connect goes through the writer --------------------------------------------------

    async def send_message(self, message_type: str, payload: dict[str, Any]) -> None:
        if not hasattr(self, "outbox"):
            await super().send_message(message_type, payload)  # before authentication: the 4401 path
            return
        if self.dropping:
            return
        if len(self.outbox) >= self.queue_limit:
            await self._drop_slow_client()
            return
        self.outbox.append(json.dumps({"t": message_type, "p": payload}))
        self.due.set()

    def tick_offer(self, symbol: str, text: str, now: float) -> None:
        """From the hub: the latest payload of a subscribed symbol; replaces one not sent yet."""
        if self.dropping:
            return
        since = self.sending_since
        if since is not None and now - since > self.slow_after:
            self.dropping = True
            self.dropper = asyncio.ensure_future(self._drop_slow_client())
            return
        self.ticks_due[symbol] = text
        self.due.set()

    async def _write(self) -> None:
        while True:
            await self.due.wait()
            self.due.clear()
            while self.outbox:
                await self._transmit(self.outbox.popleft())
            if self.ticks_due and not self.snapshots_pending:
                due, self.ticks_due = self.ticks_due, {}
                await self._transmit('{"t":"ticks","p":{"ticks":[' + ",".join(due.values()) + "]}}")

    async def _transmit(self, text: str) -> None:
        self.sending_since = time.monotonic()
        try:
            await self.send(text_data=text)
        finally:
            self.sending_since = None

    async def _drop_slow_client(self) -> None:
        """Stop queueing for this client, tell it why and close with 4429 as soon as it reads again; if it has not
        read within WS_SLOW_CLIENT_FAREWELL_SECONDS, leave it (the web server closes the socket when the app ends)."""
        self._stop_sending()
        error = {
            "message": "Too slow: this connection reads ticks more slowly than they are sent.",
            "code": str(ErrorCode.RATE_LIMITED),
            "recoverable": False,
        }
        with contextlib.suppress(asyncio.TimeoutError, OSError):
            await asyncio.wait_for(self._say_goodbye(json.dumps({"t": "error", "p": error})), self.farewell_seconds)
        # Ends this consumer (and its channel-layer receive loop) even while the socket itself stays stuck.
        try:
            await self.channel_layer.send(self.channel_name, {"type": "connection.abandon"})
        except DEPENDENCY_ERRORS:  # Redis is down: the outage ends this connection anyway
            logger.warning("a dropped market-data connection could not be let go", exc_info=True)

    async def _say_goodbye(self, text: str) -> None:
        await self.send(text_data=text)
        await self.close(code=CLOSE_TOO_SLOW)

    async def connection_abandon(self, event: dict[str, Any]) -> None:
        await self.websocket_disconnect({"type": "websocket.disconnect", "code": CLOSE_TOO_SLOW})

    def _stop_sending(self) -> None:
        self.dropping = True
        self.writer.cancel()
        self.hub.detach(self)
        self.modes.clear()
        self.outbox.clear()
        self.ticks_due.clear()

    async def send_last(self, text: str) -> None:
        """Ahead of whatever is still queued: it stops here, and the client learns why at once."""
        if not hasattr(self, "writer"):
            await super().send_last(text)
            return
        self._stop_sending()
        with contextlib.suppress(asyncio.TimeoutError, OSError):
            await asyncio.wait_for(self.send(text_data=text), _ERROR_SEND_TIMEOUT)

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "writer"):
            self.writer.cancel()
            self.hub.detach(self)
            if self.dropper is not None and self.dropper is not asyncio.current_task():
                self.dropper.cancel()

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
                self.ticks_due.pop(symbol, None)
            self.hub.detach(self, gone)
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
        previous = {symbol: self.modes[symbol] for symbol in symbols if symbol in self.modes}
        for symbol in symbols:
            self.modes[symbol] = mode
        # Ticks are offered from here on and the snapshot is read after that, while the writer holds ticks back
        # until the snapshot is queued: a tick racing the subscription is in the snapshot or sent after it, never
        # lost and never overtaken by an older snapshot.
        self.snapshots_pending += 1
        try:
            await self.hub.attach(self, new)
            if new:
                quotes = await database_sync_to_async(quotes_get)(symbols)
        except BaseException:
            self.hub.detach(self, new)  # nothing was subscribed: no ticks, no modes
            for symbol in new:
                self.modes.pop(symbol, None)
            self.modes.update(previous)
            raise
        finally:
            self.snapshots_pending -= 1
            if self.ticks_due:
                self.due.set()  # ticks held back for the snapshot may go now
        await self._send_snapshot(symbols, quotes)

    async def handle_request_snapshot(self, payload: dict[str, Any]) -> None:
        symbols = list(self.modes)
        self.snapshots_pending += 1
        try:
            quotes = await database_sync_to_async(quotes_get)(symbols)
        finally:
            self.snapshots_pending -= 1
            if self.ticks_due:
                self.due.set()  # ticks held back for the snapshot may go now
        await self._send_snapshot(symbols, quotes)

    async def _send_snapshot(self, symbols: list[str], quotes: dict) -> None:
        await self.send_message(
            "snapshot",
            {
                "quotes": {
                    symbol: tick_payload(quote_encode(quote), self.modes[symbol])
                    for symbol, quote in quotes.items()
                    if symbol in self.modes
                },
                "missing": [symbol for symbol in symbols if symbol not in quotes],
            },
        )
