from django.apps import AppConfig

from algoterm.api.socket_auth import socket_authenticator_register


class AccountsConfig(AppConfig):
    """Users, roles, authentication, profile, notifications and the audit log."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"

    def ready(self) -> None:
        # These modules load models: importable only once the app registry is ready.
        from accounts.authentication import authenticate_access_token
        from accounts.receivers import receivers_connect
        from accounts.services import audit_record
        from algoterm.config import config_audit_connect

        socket_authenticator_register(authenticate_access_token)
        config_audit_connect(audit_record)
        receivers_connect()
