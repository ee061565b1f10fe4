import os
import subprocess
import sys

import pytest
from django.conf import settings
from rest_framework_simplejwt.tokens import RefreshToken

from accounts.models import AuditEvent, Role, User
from accounts.tests.factories import AdminFactory, UserFactory
from algoterm.testing import assert_error, assert_other_user_gets_404, assert_requires_auth, client_for

pytestmark = pytest.mark.django_db


def url(user) -> str:
    return f"/api/users/{user.pk}"


def test_a_user_updates_their_own_name_and_phone(trader_client, trader):
    response = trader_client.patch(url(trader), {"name": "  Ravi K  ", "phone": "+91 91234 56789"}, format="json")

    assert response.status_code == 200, response.json()
    assert response.json()["name"] == "Ravi K"
    assert response.json()["phone"] == "+919123456789"
    event = AuditEvent.objects.get(action="user.profile_update", target_id=trader.pk)
    assert event.details["changes"]["name"][1] == "Ravi K"


@pytest.mark.parametrize("field", ["role", "status"])
def test_nobody_changes_their_own_role_or_status(field):
    admin = AdminFactory()
    for user in (UserFactory(role=Role.USER), UserFactory(), admin):
        value = "admin" if field == "role" else "deactivated"
        assert_error(client_for(user).patch(url(user), {field: value}, format="json"), 403, "PERMISSION_DENIED")
        user.refresh_from_db()
        assert user.is_active


@pytest.mark.parametrize(
    "payload", [{}, {"phone": "0000"}, {"name": ""}, {"role": "superuser"}, {"email": "new@example.com"}]
)
def test_update_rejects_invalid_input(trader_client, trader, payload):
    body = assert_error(trader_client.patch(url(trader), payload, format="json"), 400, "VALIDATION_ERROR")
    assert body["errors"]


def test_another_users_id_is_404_for_non_admins(trader):
    assert_other_user_gets_404("patch", url(trader), {"name": "Mallory"})
    trader.refresh_from_db()
    assert trader.name != "Mallory"


def test_update_requires_auth(trader):
    assert_requires_auth("patch", url(trader), {"name": "x"})


def test_an_admin_changes_role_and_it_is_audited(admin_client, admin_user, trader):
    response = admin_client.patch(url(trader), {"role": "user"}, format="json")

    assert response.status_code == 200
    assert response.json()["role"] == "user"
    event = AuditEvent.objects.get(action="admin.user_role_change", target_id=trader.pk)
    assert event.actor == admin_user
    assert event.details["changes"]["role"] == ["trader", "user"]


def test_an_admin_cannot_edit_someone_elses_profile(admin_client, trader):
    assert_error(admin_client.patch(url(trader), {"name": "x"}, format="json"), 403, "PERMISSION_DENIED")


def test_deactivation_by_an_admin_takes_effect_at_once_for_issued_tokens(admin_client, trader):
    refresh = RefreshToken.for_user(trader)
    victim = client_for(trader)
    assert victim.get("/api/users/me").status_code == 200

    response = admin_client.patch(url(trader), {"status": "deactivated"}, format="json")

    assert response.status_code == 200
    assert response.json()["status"] == "deactivated"
    assert_error(victim.get("/api/users/me"), 403, "ACCOUNT_DEACTIVATED")
    from rest_framework.test import APIClient

    refreshed = APIClient().post("/api/auth/refresh", {"refresh": str(refresh)}, format="json")
    assert refreshed.status_code in (401, 403)
    assert AuditEvent.objects.filter(action="admin.user_deactivate", target_id=trader.pk).exists()

    assert admin_client.patch(url(trader), {"status": "active"}, format="json").json()["status"] == "active"
    assert client_for(trader).get("/api/users/me").status_code == 200


def test_deactivating_twice_is_an_invalid_state(admin_client, trader):
    from accounts import services

    services.user_deactivate(actor=None, user=trader)
    trader.refresh_from_db()
    with pytest.raises(Exception) as raised:
        services.user_deactivate(actor=None, user=trader)
    assert getattr(raised.value, "code", None) == "INVALID_STATE"


@pytest.mark.django_db(transaction=True)  # the second process commits its user: flushed after the test
def test_createsuperuser_noinput_reads_the_environment(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SUPERUSER_EMAIL": "Ops@Example.com",
        "DJANGO_SUPERUSER_PASSWORD": "Ops-Password-2026",
        "DJANGO_SUPERUSER_NAME": "Ops",
        "DJANGO_SUPERUSER_PHONE": "+919811111111",
    }
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("postgresql"):
        env["DATABASE_URL"] = f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
    else:
        pytest.fail("this test writes through a second process and needs PostgreSQL (make test sets DATABASE_URL)")

    result = subprocess.run(
        [sys.executable, "manage.py", "createsuperuser", "--noinput"], env=env, capture_output=True, text=True
    )

    assert result.returncode == 0, result.stderr
    user = User.objects.get(email="ops@example.com")
    assert user.role == Role.ADMIN and user.is_staff and user.name == "Ops" and user.check_password("Ops-Password-2026")
