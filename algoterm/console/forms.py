"""Admin forms for the email-login user."""

from django.contrib.auth.forms import BaseUserCreationForm, UserChangeForm
from django.core.exceptions import ValidationError

from accounts.models import User
from accounts.selectors import user_by_email
from accounts.validators import normalize_email, normalize_phone


class _PhoneCleaning:
    def clean_phone(self):
        try:
            return normalize_phone(self.cleaned_data["phone"])
        except ValueError as error:
            raise ValidationError(str(error)) from None


class UserCreationAdminForm(_PhoneCleaning, BaseUserCreationForm):
    class Meta:
        model = User
        fields = ("email", "name", "phone", "role")

    def clean_email(self):
        email = normalize_email(self.cleaned_data["email"])
        if user_by_email(email=email) is not None:
            raise ValidationError("An account with this email already exists.")
        return email


class UserChangeAdminForm(_PhoneCleaning, UserChangeForm):
    class Meta:
        model = User
        fields = ("email", "name", "phone", "role")
