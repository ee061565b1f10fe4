"""Input and output shapes of the accounts API."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import Notification, Role, User
from algoterm.api.serializers import InputSerializer
from billing.selectors import entitlements_for, subscription_current
from billing.serializers import CurrentSubscriptionOutput, EntitlementsOutput


class UserOutput(serializers.ModelSerializer):
    status = serializers.ChoiceField(choices=["active", "deactivated"], read_only=True)

    class Meta:
        model = User
        fields = ["id", "email", "name", "phone", "role", "status", "date_joined", "last_login"]
        read_only_fields = fields


class TokenPairOutput(serializers.Serializer):
    token_type = serializers.ChoiceField(choices=["Bearer"], default="Bearer")
    access = serializers.CharField()
    refresh = serializers.CharField()
    access_expires_in = serializers.IntegerField(help_text="seconds")
    refresh_expires_in = serializers.IntegerField(help_text="seconds")


class SessionOutput(TokenPairOutput):
    user = UserOutput()


class RegisterInput(InputSerializer):
    name = serializers.CharField(max_length=150)
    email = serializers.EmailField(max_length=254)
    phone = serializers.CharField(max_length=20, help_text="Indian mobile; +91 optional, e.g. 9876543210")
    password = serializers.CharField(write_only=True, max_length=128, style={"input_type": "password"})


class LoginInput(InputSerializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(write_only=True, max_length=128, style={"input_type": "password"})


class RefreshInput(InputSerializer):
    refresh = serializers.CharField(max_length=2048)


class UserUpdateInput(InputSerializer):
    name = serializers.CharField(max_length=150, required=False)
    phone = serializers.CharField(max_length=20, required=False)
    role = serializers.ChoiceField(choices=Role.choices, required=False, help_text="admins only")
    status = serializers.ChoiceField(choices=["active", "deactivated"], required=False, help_text="admins only")

    def validate(self, attrs):
        if not attrs:
            raise serializers.ValidationError("Send at least one of name, phone, role, status.")
        return attrs


class MeOutput(UserOutput):
    unread_notifications = serializers.IntegerField(read_only=True)
    subscription = serializers.SerializerMethodField(help_text="the subscription that entitles you now, if any")
    entitlements = serializers.SerializerMethodField(help_text="what your plan lets you do now, and on what basis")

    class Meta(UserOutput.Meta):
        fields = UserOutput.Meta.fields + ["unread_notifications", "subscription", "entitlements"]
        read_only_fields = fields

    @extend_schema_field(CurrentSubscriptionOutput(allow_null=True))
    def get_subscription(self, user) -> dict | None:
        current = subscription_current(user=user)
        return CurrentSubscriptionOutput(current).data if current is not None else None

    @extend_schema_field(EntitlementsOutput)
    def get_entitlements(self, user) -> dict:
        return entitlements_for(user=user).as_dict()


class NotificationOutput(serializers.ModelSerializer):
    is_read = serializers.BooleanField(read_only=True)
    data = serializers.DictField(read_only=True, help_text="what the notification is about, by kind (ids, amounts)")

    class Meta:
        model = Notification
        fields = ["id", "kind", "level", "title", "body", "data", "created_at", "read_at", "is_read"]
        read_only_fields = fields


class NotificationListQuery(InputSerializer):
    unread = serializers.BooleanField(required=False, allow_null=True, default=None)
    kind = serializers.CharField(required=False, max_length=48)
    page = serializers.IntegerField(required=False)
    page_size = serializers.IntegerField(required=False)


class MarkedReadOutput(serializers.Serializer):
    marked_read = serializers.IntegerField()
