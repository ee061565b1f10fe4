"""Razorpay's plans and subscriptions API over HTTP, as the `razorpay` SDK expects it, with signed webhooks.

Point the SDK at the server root: `razorpay.Client(auth=(key_id, key_secret), base_url=sim.base_url)`. The SDK's
resources already carry the version (`client.plan` requests `/v1/plans`), so a base_url ending in `/v1` would
request `/v1/v1/plans` and get a 404 saying so.

Every `/v1` route needs HTTP Basic auth with the simulator's key id and secret. Errors use Razorpay's envelope
`{"error": {"code": "BAD_REQUEST_ERROR", "description": ...}}` (the SDK raises `BadRequestError`; injected faults
answer `SERVER_ERROR`, which it raises as `ServerError`). Unknown ids answer 400 like Razorpay does.

What a customer or their bank does is simulated by Python methods (`checkout`, `renew`, `fail_payment`,
`end_cycle`) and by the matching control routes `POST /__sim__/razorpay/<action>` with
`{"subscription_id": ...}`; `POST /__sim__/razorpay/webhooks` takes the queued webhooks. A subscription's
`short_url` is a local checkout page (`GET /checkout/<id>`) whose button completes the checkout.

Every event is kept in an outbox (`webhooks_take`) and, when a `webhook_url` is set and the server is running,
also POSTed there by one background thread in the order the events happened. A subscription cancelled at cycle end
stays active with `has_scheduled_changes: true`, `change_scheduled_at` (the cycle's end) and
`cancel_at_cycle_end: true` until `end_cycle` cancels it.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import copy
import hashlib
import hmac
import html
import json
import logging
import queue
import secrets
import string
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from algoterm.sandbox.simulators.base import BadRequestBody, SimRequest, SimResponse, SimulatorApp

logger = logging.getLogger(__name__)

IST = ZoneInfo("Asia/Kolkata")
WEBHOOK_TIMEOUT_SECONDS = 5.0
ID_ALPHABET = string.ascii_letters + string.digits
ID_LENGTH = 14
PERIODS = ("daily", "weekly", "monthly", "yearly")
MIN_DAILY_INTERVAL = 7  # Razorpay refuses daily plans that bill more often than weekly
MIN_AMOUNT_PAISE = 100
MAX_LIST_COUNT = 100
DEFAULT_LIST_COUNT = 10
CONTROL_PREFIX = "/__sim__/razorpay/"
CONTROL_ACTIONS = ("checkout", "renew", "fail_payment", "end_cycle")
FAILURE_DESCRIPTION = "Payment failed because the card was declined by the issuing bank."


class RazorpaySimulatorError(ValueError):
    """A simulated customer action that Razorpay would not allow in the subscription's current state."""


@dataclass(frozen=True)
class SimWebhook:
    event_id: str
    event: str
    body: bytes
    headers: dict[str, str]


def razorpay_id(prefix: str) -> str:
    return f"{prefix}_" + "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


def hmac_sha256_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def add_months(epoch: int, months: int) -> int:
    """Calendar months in IST (where Razorpay bills), keeping the day of month where the month allows."""
    moment = datetime.fromtimestamp(epoch, tz=IST)
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())


def advance(epoch: int, period: str, interval: int) -> int:
    if period == "daily":
        return epoch + interval * 86_400
    if period == "weekly":
        return epoch + interval * 7 * 86_400
    if period == "monthly":
        return add_months(epoch, interval)
    return add_months(epoch, 12 * interval)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _flag(value: Any, field_name: str) -> bool:
    """Razorpay takes booleans as true/false or 1/0."""
    if isinstance(value, bool):
        return value
    if value in (0, 1, "0", "1"):
        return int(value) == 1
    if value in ("true", "false"):
        return value == "true"
    raise BadRequestBody(f"The {field_name} field must be a boolean (true/false or 1/0).")


class RazorpaySimulator(SimulatorApp):
    """Razorpay Subscriptions for the real SDK. Use `base_url=sim.base_url` (the server root, no `/v1`)."""

    name = "razorpay"

    def __init__(
        self,
        *,
        key_id: str,
        key_secret: str,
        webhook_secret: str,
        webhook_url: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key_id = key_id
        self.key_secret = key_secret
        self.webhook_secret = webhook_secret
        self.webhook_url = webhook_url
        self.clock = clock
        self.account_id = razorpay_id("acc")
        self._plans: dict[str, dict[str, Any]] = {}
        self._subscriptions: dict[str, dict[str, Any]] = {}
        self._payments: dict[str, dict[str, Any]] = {}
        self._outbox: list[SimWebhook] = []
        self._deliveries: queue.SimpleQueue[SimWebhook | None] | None = None
        self._lock = threading.RLock()
        super().__init__()

    # --- framework hooks ------------------------------------------------------------------------------------------

    def setup_routes(self) -> None:
        self.add_route("POST", r"/v1/plans", self.plan_create)
        self.add_route("GET", r"/v1/plans", self.plan_list)
        self.add_route("GET", r"/v1/plans/(?P<plan_id>[^/]+)", self.plan_fetch)
        self.add_route("POST", r"/v1/subscriptions", self.subscription_create)
        self.add_route("GET", r"/v1/subscriptions", self.subscription_list)
        self.add_route("GET", r"/v1/subscriptions/(?P<subscription_id>[^/]+)", self.subscription_fetch)
        self.add_route("POST", r"/v1/subscriptions/(?P<subscription_id>[^/]+)/cancel", self.subscription_cancel)
        self.add_route("POST", r"/v1/subscriptions/(?P<subscription_id>[^/]+)/pause", self.subscription_pause)
        self.add_route("POST", r"/v1/subscriptions/(?P<subscription_id>[^/]+)/resume", self.subscription_resume)
        self.add_route("GET", r"/checkout/(?P<subscription_id>[^/]+)", self.checkout_page)
        self.add_route("POST", r"/checkout/(?P<subscription_id>[^/]+)", self.checkout_submit)

    def error_response(self, status: int, message: str, kind: str = "") -> SimResponse:
        code = "SERVER_ERROR" if kind == "server" else "BAD_REQUEST_ERROR"
        if status == 404 and message == "Route not found.":
            message = "The requested URL was not found on the server (the SDK adds /v1; use the server root)."
        error = {
            "code": code,
            "description": message,
            "source": "NA" if kind == "server" else "business",
            "step": "NA",
            "reason": "server_error" if kind == "server" else "input_validation_failed",
            "metadata": {},
        }
        return SimResponse.json({"error": error}, status)

    def on_start(self) -> None:
        if not self.webhook_url:
            return
        deliveries: queue.SimpleQueue[SimWebhook | None] = queue.SimpleQueue()
        with self._lock:
            self._deliveries = deliveries
        threading.Thread(
            target=_deliver_webhooks,
            args=(self.webhook_url, deliveries),
            name="razorpay-sim-webhooks",
            daemon=True,
        ).start()

    def on_stop(self) -> None:
        with self._lock:
            deliveries, self._deliveries = self._deliveries, None
        if deliveries is not None:
            deliveries.put(None)

    def _control(self, request: SimRequest) -> SimResponse:
        if not request.path.startswith(CONTROL_PREFIX):
            return super()._control(request)
        action = request.path.removeprefix(CONTROL_PREFIX)
        if request.method != "POST":
            return self.error_response(405, "Control routes take POST.", "input")
        if action == "webhooks":
            return SimResponse.json([_webhook_json(webhook) for webhook in self.webhooks_take()])
        if action not in CONTROL_ACTIONS:
            return self.error_response(404, f"Unknown simulator action {action!r}.", "input")
        try:
            data = request.json() if request.body else {}
        except BadRequestBody as error:
            return self.error_response(400, str(error), "input")
        subscription_id = data.get("subscription_id") if isinstance(data, dict) else None
        if not isinstance(subscription_id, str) or not subscription_id:
            return self.error_response(400, "The subscription_id field is required.", "input")
        try:
            result = getattr(self, action)(subscription_id)
        except RazorpaySimulatorError as error:
            return self.error_response(400, str(error), "input")
        return SimResponse.json(result if result is not None else {"ok": True})

    # --- webhooks -------------------------------------------------------------------------------------------------

    def webhooks_take(self) -> list[SimWebhook]:
        """Remove and return the queued webhooks, oldest first."""
        with self._lock:
            taken, self._outbox = self._outbox, []
        return taken

    def _emit(self, event: str, **entities: dict[str, Any]) -> None:
        """Queue one event. Callers hold the lock, so outbox and sender get events in the order they happened."""
        body = json.dumps(
            {
                "entity": "event",
                "account_id": self.account_id,
                "event": event,
                "contains": list(entities),
                "payload": {name: {"entity": copy.deepcopy(entity)} for name, entity in entities.items()},
                "created_at": self._now(),
            },
            separators=(",", ":"),
        ).encode()
        event_id = razorpay_id("evt")
        webhook = SimWebhook(
            event_id=event_id,
            event=event,
            body=body,
            headers={
                "Content-Type": "application/json",
                "X-Razorpay-Signature": hmac_sha256_hex(self.webhook_secret, body),
                "X-Razorpay-Event-Id": event_id,
            },
        )
        self._outbox.append(webhook)
        if self._deliveries is not None:
            self._deliveries.put(webhook)

    # --- simulated customer and bank ------------------------------------------------------------------------------

    def checkout(
        self, subscription_id: str, *, email: str = "customer@example.com", contact: str = "+919876543210"
    ) -> dict[str, str]:
        """The customer completes Checkout: the card is authenticated and the first cycle is charged."""
        with self._lock:
            subscription = self._subscription_or_error(subscription_id)
            if subscription["status"] != "created":
                raise RazorpaySimulatorError(
                    f"Subscription {subscription_id} cannot be checked out in {subscription['status']} status."
                )
            now = self._now()
            plan = self._plans[subscription["plan_id"]]
            subscription.update(
                status="authenticated",
                customer_id=razorpay_id("cust"),
                payment_method="card",
                start_at=subscription["start_at"] or now,
            )
            subscription["end_at"] = self._end_at(subscription, plan)
            self._emit("subscription.authenticated", subscription=subscription)
            payment = self._record_payment(subscription, plan, captured=True, email=email, contact=contact)
            subscription.update(
                status="active", current_start=now, current_end=advance(now, plan["period"], plan["interval"])
            )
            self._count_paid_cycle(subscription)
            self._emit("subscription.activated", subscription=subscription)
            self._emit("subscription.charged", subscription=subscription, payment=payment)
            self._complete_if_done(subscription)
        return {
            "razorpay_payment_id": payment["id"],
            "razorpay_subscription_id": subscription_id,
            "razorpay_signature": hmac_sha256_hex(self.key_secret, f"{payment['id']}|{subscription_id}".encode()),
        }

    def renew(self, subscription_id: str) -> dict[str, Any]:
        """The next cycle is charged (a pending subscription's retry succeeds); the last one completes it."""
        with self._lock:
            subscription = self._chargeable_subscription(subscription_id)
            plan = self._plans[subscription["plan_id"]]
            payment = self._record_payment(subscription, plan, captured=True)
            start = subscription["current_end"]
            subscription.update(
                status="active", current_start=start, current_end=advance(start, plan["period"], plan["interval"])
            )
            self._count_paid_cycle(subscription)
            self._emit("subscription.charged", subscription=subscription, payment=payment)
            self._complete_if_done(subscription)
            return copy.deepcopy(payment)

    def fail_payment(self, subscription_id: str) -> dict[str, Any]:
        """A renewal charge fails: the subscription goes pending, and halted on a second failure in a row."""
        with self._lock:
            subscription = self._chargeable_subscription(subscription_id)
            plan = self._plans[subscription["plan_id"]]
            payment = self._record_payment(subscription, plan, captured=False)
            self._emit("payment.failed", payment=payment)
            subscription["auth_attempts"] += 1
            if subscription["status"] == "active":
                subscription["status"] = "pending"
                self._emit("subscription.pending", subscription=subscription)
            else:
                subscription.update(status="halted", charge_at=None)
                self._emit("subscription.halted", subscription=subscription)
            return copy.deepcopy(payment)

    def end_cycle(self, subscription_id: str) -> None:
        """The billing cycle ends: a cancellation scheduled for it takes effect, otherwise the next cycle is charged."""
        with self._lock:
            subscription = self._subscription_or_error(subscription_id)
            if subscription["cancel_at_cycle_end"] and subscription["status"] in ("active", "pending"):
                self._cancel_now(subscription)
                return
            self.renew(subscription_id)

    # --- REST: plans ----------------------------------------------------------------------------------------------

    def plan_create(self, request: SimRequest) -> SimResponse:
        if (denied := self._deny_unauthenticated(request)) is not None:
            return denied
        data = self._json_object(request)
        period, interval, item = data.get("period"), data.get("interval"), data.get("item")
        if period not in PERIODS:
            raise BadRequestBody(f"The period field is required and must be one of: {', '.join(PERIODS)}.")
        if not _positive_int(interval):
            raise BadRequestBody("The interval field is required and must be a positive integer.")
        if period == "daily" and interval < MIN_DAILY_INTERVAL:
            raise BadRequestBody(f"The interval must be at least {MIN_DAILY_INTERVAL} for daily plans.")
        if not isinstance(item, dict):
            raise BadRequestBody("The item field is required.")
        name, amount = item.get("name"), item.get("amount")
        currency, description = item.get("currency", "INR"), item.get("description")
        if not isinstance(name, str) or not name.strip():
            raise BadRequestBody("The item.name field is required.")
        if not _positive_int(amount):
            raise BadRequestBody("The item.amount field must be a positive integer (paise).")
        if amount < MIN_AMOUNT_PAISE:
            raise BadRequestBody("The amount must be at least INR 1.00.")
        if currency != "INR":
            raise BadRequestBody("The item.currency field must be INR.")
        if description is not None and not isinstance(description, str):
            raise BadRequestBody("The item.description field must be a string.")
        notes = self._notes(data)
        now = self._now()
        plan = {
            "id": razorpay_id("plan"),
            "entity": "plan",
            "interval": interval,
            "period": period,
            "item": {
                "id": razorpay_id("item"),
                "active": True,
                "name": name,
                "description": description,
                "amount": amount,
                "unit_amount": amount,
                "currency": currency,
                "type": "plan",
                "unit": None,
                "tax_inclusive": False,
                "hsn_code": None,
                "sac_code": None,
                "tax_rate": None,
                "tax_id": None,
                "tax_group_id": None,
                "created_at": now,
                "updated_at": now,
            },
            "notes": notes,
            "created_at": now,
        }
        with self._lock:
            self._plans[plan["id"]] = plan
            return SimResponse.json(plan)

    def plan_list(self, request: SimRequest) -> SimResponse:
        if (denied := self._deny_unauthenticated(request)) is not None:
            return denied
        with self._lock:
            return self._collection(request, list(self._plans.values()))

    def plan_fetch(self, request: SimRequest, plan_id: str) -> SimResponse:
        if (denied := self._deny_unauthenticated(request)) is not None:
            return denied
        with self._lock:
            plan = self._plans.get(plan_id)
            if plan is None:
                return self.error_response(400, "The id provided does not exist", "input")
            return SimResponse.json(plan)

    # --- REST: subscriptions --------------------------------------------------------------------------------------

    def subscription_create(self, request: SimRequest) -> SimResponse:
        if (denied := self._deny_unauthenticated(request)) is not None:
            return denied
        data = self._json_object(request)
        now = self._now()
        plan_id, total_count = data.get("plan_id"), data.get("total_count")
        quantity = data.get("quantity", 1)
        start_at, expire_by = data.get("start_at"), data.get("expire_by")
        if not isinstance(plan_id, str) or not plan_id:
            raise BadRequestBody("The plan_id field is required.")
        if not _positive_int(total_count):
            raise BadRequestBody("The total_count field is required and must be a positive integer.")
        if not _positive_int(quantity):
            raise BadRequestBody("The quantity field must be a positive integer.")
        if start_at is not None and (not _positive_int(start_at) or start_at <= now):
            raise BadRequestBody("The start_at field must be a future epoch timestamp.")
        if expire_by is not None and (not _positive_int(expire_by) or expire_by <= now):
            raise BadRequestBody("The expire_by field must be a future epoch timestamp.")
        customer_notify = _flag(data.get("customer_notify", True), "customer_notify")
        notes = self._notes(data)
        with self._lock:
            plan = self._plans.get(plan_id)
            if plan is None:
                return self.error_response(400, f"The plan_id {plan_id} does not exist.", "input")
            subscription_id = razorpay_id("sub")
            subscription: dict[str, Any] = {
                "id": subscription_id,
                "entity": "subscription",
                "plan_id": plan_id,
                "customer_id": None,
                "status": "created",
                "current_start": None,
                "current_end": None,
                "ended_at": None,
                "quantity": quantity,
                "notes": notes,
                "charge_at": start_at or now,
                "start_at": start_at,
                "end_at": None,
                "auth_attempts": 0,
                "total_count": total_count,
                "paid_count": 0,
                "customer_notify": customer_notify,
                "created_at": now,
                "expire_by": expire_by,
                "short_url": f"{self.base_url}/checkout/{subscription_id}",
                "has_scheduled_changes": False,
                "change_scheduled_at": None,
                "cancel_at_cycle_end": False,
                "source": "api",
                "payment_method": None,
                "offer_id": None,
                "remaining_count": total_count,
            }
            subscription["end_at"] = self._end_at(subscription, plan)
            self._subscriptions[subscription_id] = subscription
            return SimResponse.json(subscription)

    def subscription_list(self, request: SimRequest) -> SimResponse:
        if (denied := self._deny_unauthenticated(request)) is not None:
            return denied
        plan_id = request.arg("plan_id")
        with self._lock:
            subscriptions = [sub for sub in self._subscriptions.values() if plan_id in (None, sub["plan_id"])]
            return self._collection(request, subscriptions)

    def subscription_fetch(self, request: SimRequest, subscription_id: str) -> SimResponse:
        if (denied := self._deny_unauthenticated(request)) is not None:
            return denied
        with self._lock:
            subscription = self._subscriptions.get(subscription_id)
            if subscription is None:
                return self.error_response(400, "The id provided does not exist", "input")
            return SimResponse.json(subscription)

    def subscription_cancel(self, request: SimRequest, subscription_id: str) -> SimResponse:
        if (denied := self._deny_unauthenticated(request)) is not None:
            return denied
        data = self._json_object(request)
        at_cycle_end = _flag(data.get("cancel_at_cycle_end", False), "cancel_at_cycle_end")
        with self._lock:
            subscription = self._subscriptions.get(subscription_id)
            if subscription is None:
                return self.error_response(400, "The id provided does not exist", "input")
            if subscription["status"] in ("cancelled", "completed", "expired"):
                return self.error_response(
                    400, f"Subscription is not cancellable in {subscription['status']} status.", "input"
                )
            # Only a running cycle can be waited out; anything else is cancelled at once.
            if at_cycle_end and subscription["status"] in ("active", "pending"):
                subscription.update(
                    cancel_at_cycle_end=True,
                    has_scheduled_changes=True,
                    change_scheduled_at=subscription["current_end"],
                )
            else:
                self._cancel_now(subscription)
            return SimResponse.json(subscription)

    def subscription_pause(self, request: SimRequest, subscription_id: str) -> SimResponse:
        if (denied := self._deny_unauthenticated(request)) is not None:
            return denied
        data = self._json_object(request)
        if data.get("pause_at", "now") != "now":
            raise BadRequestBody("The pause_at field must be now.")
        with self._lock:
            subscription = self._subscriptions.get(subscription_id)
            if subscription is None:
                return self.error_response(400, "The id provided does not exist", "input")
            if subscription["status"] != "active":
                return self.error_response(
                    400, f"Subscription cannot be paused in {subscription['status']} status.", "input"
                )
            subscription.update(status="paused", paused_at=self._now(), pause_initiated_by="self", charge_at=None)
            self._emit("subscription.paused", subscription=subscription)
            return SimResponse.json(subscription)

    def subscription_resume(self, request: SimRequest, subscription_id: str) -> SimResponse:
        if (denied := self._deny_unauthenticated(request)) is not None:
            return denied
        data = self._json_object(request)
        if data.get("resume_at", "now") != "now":
            raise BadRequestBody("The resume_at field must be now.")
        with self._lock:
            subscription = self._subscriptions.get(subscription_id)
            if subscription is None:
                return self.error_response(400, "The id provided does not exist", "input")
            if subscription["status"] != "paused":
                return self.error_response(
                    400, f"Subscription cannot be resumed in {subscription['status']} status.", "input"
                )
            subscription.update(
                status="active", paused_at=None, pause_initiated_by=None, charge_at=subscription["current_end"]
            )
            self._emit("subscription.resumed", subscription=subscription)
            return SimResponse.json(subscription)

    # --- the checkout page behind short_url -----------------------------------------------------------------------

    def checkout_page(self, request: SimRequest, subscription_id: str) -> SimResponse:
        with self._lock:
            subscription = self._subscriptions.get(subscription_id)
            if subscription is None:
                return SimResponse.html("<h1>Unknown subscription</h1>", status=404)
            plan = self._plans[subscription["plan_id"]]
            amount = plan["item"]["amount"] * subscription["quantity"]
        return SimResponse.html(
            f"""<!doctype html><title>Razorpay (simulator) checkout</title>
<h1>Razorpay Checkout</h1><p>Local Razorpay simulator: no card is charged.</p>
<p>{html.escape(plan["item"]["name"])}: ₹{amount / 100:,.2f} every {plan["interval"]} {plan["period"]} period(s),
{subscription["total_count"]} cycles. Status: {html.escape(subscription["status"])}.</p>
<form method="post" action="/checkout/{html.escape(subscription_id)}"><button type="submit">Pay</button></form>"""
        )

    def checkout_submit(self, request: SimRequest, subscription_id: str) -> SimResponse:
        try:
            result = self.checkout(subscription_id)
        except RazorpaySimulatorError as error:
            return SimResponse.html(f"<h1>Checkout failed</h1><p>{html.escape(str(error))}</p>", status=400)
        rows = "".join(f"<dt>{key}</dt><dd>{html.escape(value)}</dd>" for key, value in result.items())
        return SimResponse.html(
            f"<!doctype html><title>Payment successful</title><h1>Payment successful</h1><dl>{rows}</dl>"
        )

    # --- helpers --------------------------------------------------------------------------------------------------

    def _now(self) -> int:
        return int(self.clock())

    def _deny_unauthenticated(self, request: SimRequest) -> SimResponse | None:
        scheme, _, encoded = (request.headers.get("Authorization") or "").partition(" ")
        try:
            key_id, _, key_secret = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            key_id = key_secret = ""
        authenticated = (
            scheme.lower() == "basic"
            and hmac.compare_digest(key_id.encode(), self.key_id.encode())
            and hmac.compare_digest(key_secret.encode(), self.key_secret.encode())
        )
        return None if authenticated else self.error_response(401, "Authentication failed", "input")

    @staticmethod
    def _json_object(request: SimRequest) -> dict[str, Any]:
        data = request.json()
        if not isinstance(data, dict):
            raise BadRequestBody("The request body must be a JSON object.")
        return data

    @staticmethod
    def _notes(data: dict[str, Any]) -> dict[str, Any]:
        notes = data.get("notes", {})
        if not isinstance(notes, dict):
            raise BadRequestBody("The notes field must be an object of key-value pairs.")
        if len(notes) > 15:
            raise BadRequestBody("The notes field may have at most 15 keys.")
        return notes

    def _collection(self, request: SimRequest, entities: list[dict[str, Any]]) -> SimResponse:
        try:
            count = int(request.arg("count", str(DEFAULT_LIST_COUNT)) or DEFAULT_LIST_COUNT)
            skip = int(request.arg("skip", "0") or 0)
        except ValueError as error:
            raise BadRequestBody("The count and skip fields must be integers.") from error
        if not 1 <= count <= MAX_LIST_COUNT or skip < 0:
            raise BadRequestBody(f"The count must be between 1 and {MAX_LIST_COUNT}; skip must not be negative.")
        newest_first = sorted(entities, key=lambda entity: entity["created_at"], reverse=True)
        page = newest_first[skip : skip + count]
        return SimResponse.json({"entity": "collection", "count": len(page), "items": page})

    def _subscription_or_error(self, subscription_id: str) -> dict[str, Any]:
        subscription = self._subscriptions.get(subscription_id)
        if subscription is None:
            raise RazorpaySimulatorError(f"Subscription {subscription_id} does not exist.")
        return subscription

    def _chargeable_subscription(self, subscription_id: str) -> dict[str, Any]:
        subscription = self._subscription_or_error(subscription_id)
        if subscription["status"] not in ("active", "pending"):
            raise RazorpaySimulatorError(
                f"Subscription {subscription_id} cannot be charged in {subscription['status']} status."
            )
        if subscription["cancel_at_cycle_end"]:
            raise RazorpaySimulatorError(
                f"Subscription {subscription_id} is cancelled at the end of this cycle; use end_cycle."
            )
        return subscription

    @staticmethod
    def _end_at(subscription: dict[str, Any], plan: dict[str, Any]) -> int:
        """When the last cycle ends, counting from the start (or creation, while no start is known)."""
        end = subscription["start_at"] or subscription["created_at"]
        for _ in range(subscription["total_count"]):
            end = advance(end, plan["period"], plan["interval"])
        return end

    def _record_payment(
        self,
        subscription: dict[str, Any],
        plan: dict[str, Any],
        *,
        captured: bool,
        email: str | None = None,
        contact: str | None = None,
    ) -> dict[str, Any]:
        amount = plan["item"]["amount"] * subscription["quantity"]
        previous = next(
            (
                payment
                for payment in reversed(self._payments.values())
                if payment["_subscription_id"] == subscription["id"]
            ),
            None,
        )
        payment = {
            "id": razorpay_id("pay"),
            "entity": "payment",
            "amount": amount,
            "currency": plan["item"]["currency"],
            "status": "captured" if captured else "failed",
            "order_id": razorpay_id("order"),
            "invoice_id": razorpay_id("inv"),
            "international": False,
            "method": "card",
            "amount_refunded": 0,
            "refund_status": None,
            "captured": captured,
            "description": plan["item"]["description"] or plan["item"]["name"],
            "card_id": previous["card_id"] if previous else razorpay_id("card"),
            "bank": None,
            "wallet": None,
            "vpa": None,
            "email": email or (previous["email"] if previous else None),
            "contact": contact or (previous["contact"] if previous else None),
            "customer_id": subscription["customer_id"],
            "token_id": previous["token_id"] if previous else razorpay_id("token"),
            "notes": {},
            # Razorpay's fee: 2% plus 18% GST on it, both in paise.
            "fee": amount * 236 // 10_000 if captured else None,
            "tax": amount * 36 // 10_000 if captured else None,
            "error_code": None if captured else "BAD_REQUEST_ERROR",
            "error_description": None if captured else FAILURE_DESCRIPTION,
            "error_source": None if captured else "bank",
            "error_step": None if captured else "payment_authorization",
            "error_reason": None if captured else "payment_declined",
            "acquirer_data": {"auth_code": f"{secrets.randbelow(1_000_000):06d}"} if captured else {},
            "created_at": self._now(),
        }
        self._payments[payment["id"]] = {**payment, "_subscription_id": subscription["id"]}
        return payment

    @staticmethod
    def _count_paid_cycle(subscription: dict[str, Any]) -> None:
        subscription["paid_count"] += 1
        subscription["remaining_count"] = subscription["total_count"] - subscription["paid_count"]
        subscription["auth_attempts"] = 0
        subscription["charge_at"] = subscription["current_end"]

    def _complete_if_done(self, subscription: dict[str, Any]) -> None:
        if subscription["paid_count"] < subscription["total_count"]:
            return
        subscription.update(status="completed", ended_at=self._now(), charge_at=None)
        self._emit("subscription.completed", subscription=subscription)

    def _cancel_now(self, subscription: dict[str, Any]) -> None:
        subscription.update(
            status="cancelled",
            ended_at=self._now(),
            charge_at=None,
            has_scheduled_changes=False,
            change_scheduled_at=None,
        )
        self._emit("subscription.cancelled", subscription=subscription)


def _webhook_json(webhook: SimWebhook) -> dict[str, Any]:
    return {
        "event_id": webhook.event_id,
        "event": webhook.event,
        "body": webhook.body.decode(),
        "headers": webhook.headers,
    }


def _deliver_webhooks(url: str, deliveries: queue.SimpleQueue[SimWebhook | None]) -> None:
    """One sender per served simulator, so webhooks arrive in the order the events happened; None stops it."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to the receiver, never a proxy
    while (webhook := deliveries.get()) is not None:
        request = urllib.request.Request(url, data=webhook.body, headers=webhook.headers, method="POST")
        try:
            opener.open(request, timeout=WEBHOOK_TIMEOUT_SECONDS).close()
        # A receiver that fails loses the event: Razorpay's retries are not simulated.
        except (OSError, ValueError) as error:
            logger.info("Razorpay simulator webhook %s to %s failed: %s", webhook.event_id, url, error)
