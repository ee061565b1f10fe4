"""Users, revoked access tokens, the audit log and notifications."""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models
from django.utils import timezone

from algoterm.ids import PublicIdField


class Role(models.TextChoices):
    USER = "user", "User (view only)"
    TRADER = "trader", "Trader"
    ADMIN = "admin", "Admin"


ROLE_RANK = {Role.USER: 0, Role.TRADER: 1, Role.ADMIN: 2}


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **fields) -> User:
        """Low-level creation for tests and createsuperuser; the product registers users via services."""
        if not email:
            raise ValueError("email is required")
        user = self.model(email=self.normalize_email(email).lower(), **fields)
        user.set_password(password)
        user.full_clean(exclude=["password"])
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **fields) -> User:
        fields["role"] = Role.ADMIN
        fields["is_superuser"] = True
        return self.create_user(email, password, **fields)


class User(AbstractBaseUser, PermissionsMixin):
    id = PublicIdField(prefix="usr")
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=150)
    phone = models.CharField(max_length=20, help_text="E.164, e.g. +919876543210")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.TRADER)
    is_active = models.BooleanField(default=True, help_text="Off = deactivated: every token stops working at once.")
    date_joined = models.DateTimeField(default=timezone.now)
    deactivated_at = models.DateTimeField(null=True, blank=True)
    tokens_revoked_at = models.DateTimeField(
        null=True, blank=True, help_text="Access tokens issued up to this moment are refused (a revoked token family)."
    )

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS = ["name", "phone"]

    class Meta:
        ordering = ["date_joined"]
        indexes = [models.Index(fields=["role", "is_active"])]

    def __str__(self) -> str:
        return self.email

    @property
    def is_staff(self) -> bool:
        """Admins use the Django admin; the role is the single source of that right."""
        return self.is_active and self.role == Role.ADMIN

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    @property
    def can_trade(self) -> bool:
        return self.role in (Role.TRADER, Role.ADMIN)

    def has_perm(self, perm, obj=None) -> bool:
        return (self.is_active and self.role == Role.ADMIN) or super().has_perm(perm, obj)

    def has_module_perms(self, app_label) -> bool:
        return (self.is_active and self.role == Role.ADMIN) or super().has_module_perms(app_label)

    @property
    def status(self) -> str:
        return "active" if self.is_active else "deactivated"


class RevokedAccessToken(models.Model):
    """An access token refused before its expiry (logout). Kept in PostgreSQL, not only in Redis, so the check that
    guards every request works through a Redis outage; rows go once the token would have expired anyway."""

    jti = models.CharField(max_length=255, primary_key=True)
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.jti


class AuditEvent(models.Model):
    """Append-only record of who did what to what. Never updated or deleted (enforced in PostgreSQL too)."""

    class Kind(models.TextChoices):
        AUTH = "auth"
        USER = "user"
        ADMIN = "admin"
        BROKER = "broker"
        ORDER = "order"
        RMS = "rms"
        STRATEGY = "strategy"
        BILLING = "billing"
        CONFIG = "config"
        SYSTEM = "system"

    id = PublicIdField(prefix="evt")
    occurred_at = models.DateTimeField(default=timezone.now, db_index=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    action = models.CharField(max_length=64, help_text="dotted name, e.g. auth.login_failed")
    actor = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.PROTECT, related_name="audit_events_as_actor"
    )
    target_type = models.CharField(max_length=32, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=128, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-occurred_at"]
        indexes = [
            models.Index(fields=["kind", "-occurred_at"]),
            models.Index(fields=["actor", "-occurred_at"]),
            models.Index(fields=["target_type", "target_id"]),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.target_type}:{self.target_id}"

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            raise ValueError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("audit events are append-only")


class Notification(models.Model):
    class Level(models.TextChoices):
        INFO = "info"
        SUCCESS = "success"
        WARNING = "warning"
        ERROR = "error"

    id = PublicIdField(prefix="ntf")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=48, help_text="e.g. order.filled, rms.breach, billing.payment_failed")
    level = models.CharField(max_length=10, choices=Level.choices, default=Level.INFO)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "read_at", "-created_at"])]

    def __str__(self) -> str:
        return self.title

    @property
    def is_read(self) -> bool:
        return self.read_at is not None
