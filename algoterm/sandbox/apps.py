from django.apps import AppConfig


class SandboxConfig(AppConfig):
    """The demo's and the tests' stand-ins: broker and Razorpay simulators, demo seeding and their commands."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "algoterm.sandbox"
    label = "sandbox"
