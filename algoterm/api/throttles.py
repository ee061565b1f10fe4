"""Request-rate limits per client IP for the routes anyone may call without a token (login, registration, token
refresh, webhooks, broker postbacks): 429 RATE_LIMITED with Retry-After once an address spends its rate.

The address is the one the access log shows (after NUM_PROXIES trusted proxies), counts live in the cache (Redis
in production) so every web process shares them, and rates are settings (REST_FRAMEWORK's DEFAULT_THROTTLE_RATES,
each with an environment override). While Redis is down the limit lets requests through (logged once per outage):
the login failure limits and webhook secrets still protect these routes."""

from __future__ import annotations

import math

from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from algoterm.api.errors import RateLimited
from algoterm.api.middleware import request_client_ip
from algoterm.outages import REDIS_ERRORS, OutageNotice

_outage = OutageNotice("Redis for the per-IP request throttle (failing open)")


class ClientIpRateThrottle(SimpleRateThrottle):
    """A sliding window per (scope, client IP); subclasses name the scope whose rate applies."""

    scope: str

    def get_rate(self) -> str | None:
        # Read when the throttle is made, not when DRF's class was imported, so a changed setting applies.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_cache_key(self, request, view) -> str:
        client_ip = getattr(request, "client_ip", None) or request_client_ip(request) or "unknown"
        return f"throttle:ip:{self.scope}:{client_ip}"

    def allow_request(self, request, view) -> bool:
        try:
            allowed = super().allow_request(request, view)
        except REDIS_ERRORS as error:
            _outage.failed(error)
            return True
        _outage.succeeded()
        if allowed:
            return True
        # Raised here rather than left to DRF's Throttled, so the body carries `retry_after` as the contract says.
        raise RateLimited("Too many requests from your address; retry later.", retry_after=math.ceil(self.wait() or 1))


class LoginRateThrottle(ClientIpRateThrottle):
    scope = "login"


class RegisterRateThrottle(ClientIpRateThrottle):
    scope = "register"


class RefreshRateThrottle(ClientIpRateThrottle):
    scope = "refresh"


class StrategyWebhookRateThrottle(ClientIpRateThrottle):
    scope = "strategy_webhook"


class BrokerPostbackRateThrottle(ClientIpRateThrottle):
    scope = "broker_postback"


class BillingWebhookRateThrottle(ClientIpRateThrottle):
    scope = "billing_webhook"
