"""What billing adds to the caller's profile (`GET /api/users/me`): the subscription that entitles them now and
their entitlements, registered as profile sections from BillingConfig.ready()."""

from __future__ import annotations

from accounts.models import User
from accounts.profile import profile_section_register
from billing.selectors import entitlements_for, subscription_current
from billing.serializers import CurrentSubscriptionOutput, EntitlementsOutput


def subscription_section(user: User) -> dict | None:
    current = subscription_current(user=user)
    return CurrentSubscriptionOutput(current).data if current is not None else None


def entitlements_section(user: User) -> dict:
    return entitlements_for(user=user).as_dict()


def profile_sections_register() -> None:
    profile_section_register(
        name="subscription",
        read=subscription_section,
        schema=CurrentSubscriptionOutput(allow_null=True),
        help_text="the subscription that entitles you now, if any",
    )
    profile_section_register(
        name="entitlements",
        read=entitlements_section,
        schema=EntitlementsOutput,
        help_text="what your plan lets you do now, and on what basis",
    )
