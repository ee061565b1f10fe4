"""Base input serializer and the error schema."""

from __future__ import annotations

from rest_framework import serializers

from algoterm.api.errors import ErrorCode


class InputSerializer(serializers.Serializer):
    """Input that names a field we do not know is refused, so a typo never silently does nothing."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class ErrorSerializer(serializers.Serializer):
    """Every error response (status >= 400)."""

    detail = serializers.CharField()
    error_code = serializers.ChoiceField(choices=[(code.value, code.value) for code in ErrorCode])
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Validation errors by field; nested fields are dotted (legs.0.strike).",
    )
    request_id = serializers.CharField()
