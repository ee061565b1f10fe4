"""Base input serializer and the error schema."""

from __future__ import annotations

import threading
from typing import Any

from rest_framework import serializers
from rest_framework.exceptions import ErrorDetail
from rest_framework.fields import empty

from algoterm.api.errors import ErrorCode


class InputSerializer(serializers.Serializer):
    """Input that names a field we do not know is refused, so a typo never silently does nothing."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class ItemInputSerializer(InputSerializer):
    """One item of a list in a request body (a strategy's legs, its accounts). A PATCH replaces such a list whole, so
    each item is validated whole: its required fields stay required and its defaults apply, however partial the
    request around it (DRF would skip both for every field under a partial root)."""

    def to_internal_value(self, data):
        validated = super().to_internal_value(data)
        if not getattr(self.root, "partial", False):
            return validated
        missing = {}
        for name, field in self.fields.items():
            if field.read_only or field.source in validated:
                continue
            if field.required:
                missing[name] = [ErrorDetail(field.error_messages["required"], code="required")]
            elif field.default is not empty:
                validated[field.source] = field.default() if callable(field.default) else field.default
        if missing:
            raise serializers.ValidationError(missing)
        return validated


class BlankAsNullChoiceField(serializers.ChoiceField):
    """An output enum whose absence is stored as a blank string: it answers null, never a value outside the enum."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    def to_representation(self, value):
        if value in ("", None):
            return None
        return super().to_representation(value)


class ErrorSerializer(serializers.Serializer):
    """Every error response (status >= 400). Besides the envelope, some errors name what they are about."""

    detail = serializers.CharField()
    error_code = serializers.ChoiceField(choices=[(code.value, code.value) for code in ErrorCode])
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Validation errors by field; nested fields are dotted (legs.0.strike).",
    )
    request_id = serializers.CharField()
    reason = serializers.CharField(
        required=False, help_text="RISK_REJECTED: the rule that refused (MAX_LOTS_EXCEEDED...); webhooks: the signal's"
    )
    order_id = serializers.CharField(required=False, help_text="ORDER_REJECTED: the order the broker rejected")
    order_ids = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="INVALID_STATE: the orders in the way"
    )
    signal_id = serializers.CharField(
        required=False, allow_null=True, help_text="webhooks: the signal the call was recorded as"
    )
    available_expiries = serializers.ListField(
        child=serializers.DateField(), required=False, help_text="option chain: the expiries that exist"
    )
    retry_after = serializers.IntegerField(
        required=False, help_text="RATE_LIMITED, SERVICE_UNAVAILABLE, BROKER_UNAVAILABLE: seconds to wait"
    )
    max_bytes = serializers.IntegerField(required=False, help_text="PAYLOAD_TOO_LARGE: the route's body limit")
    current_version = serializers.IntegerField(required=False, help_text="CONFLICT on config: the section's version")


_renderers = threading.local()


def rendered(serializer_class: type[serializers.BaseSerializer], instance: Any) -> dict[str, Any]:
    """`serializer_class(instance).data` for an output serializer that needs no context, without building its
    fields again: a ModelSerializer introspects its model on every instantiation, which costs more than rendering
    the object. One instance per class and thread does it once; `to_representation` keeps no state between calls."""
    cache = _renderers.__dict__.setdefault("by_class", {})
    serializer = cache.get(serializer_class)
    if serializer is None:
        serializer = cache[serializer_class] = serializer_class(context={})
    return serializer.to_representation(instance)
