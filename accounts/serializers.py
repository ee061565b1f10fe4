"""Input and output shapes of the accounts API."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import Notification, Role, User
from accounts.profile import ProfileSection, profile_sections
from algoterm.api.serializers import InputSerializer


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


class ProfileSectionField(serializers.Field):
    """A section another app adds to the profile (`accounts.profile`), read from the whole user."""

    def __init__(self, *, section: ProfileSection, **kwargs) -> None:
        self.section = section
        super().__init__(source="*", read_only=True, help_text=section.help_text, **kwargs)
        extend_schema_field(section.schema)(self)  # the schema documents the section as its owner says

    def to_representation(self, user: User):
        return self.section.read(user)


class MeOutput(UserOutput):
    unread_notifications = serializers.IntegerField(read_only=True)

    class Meta(UserOutput.Meta):
        fields = UserOutput.Meta.fields + ["unread_notifications"]
        read_only_fields = fields

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        for section in profile_sections():
            fields[section.name] = ProfileSectionField(section=section)
        return fields


class NotificationOutput(serializers.ModelSerializer):
    is_read = serializers.BooleanField(read_only=True)
    data = serializers.DictField(read_only=True, help_text="what the notification is about, by kind (ids, amounts)")

    class Meta:
        model = Notification
        fields = ["id", "kind", "level", "title", "body", "data", "created_at", "read_at", "is_read"]
        read_only_fields = fields


class NotificationListQuery(InputSerializer):
    unread = serializers.BooleanField(
        required=False, allow_null=True, default=None, help_text="only unread (true) or only read (false)"
    )
    kind = serializers.CharField(required=False, max_length=48)
    page = serializers.IntegerField(required=False)
    page_size = serializers.IntegerField(required=False)


class MarkedReadOutput(serializers.Serializer):
    marked_read = serializers.IntegerField()
