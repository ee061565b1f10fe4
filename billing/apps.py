from django.apps import AppConfig


class BillingConfig(AppConfig):
    """Plans, entitlements, Razorpay subscriptions, payments and webhooks."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "billing"

    def ready(self) -> None:
        from billing.profile import profile_sections_register  # loads models: only once the app registry is ready

        profile_sections_register()
