from django.apps import AppConfig


class BillingConfig(AppConfig):
    """Plans, entitlements, Razorpay subscriptions, payments and webhooks."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "billing"
