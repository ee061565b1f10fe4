import threading
from datetime import timedelta

import pytest
from django.db import connection
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from accounts.models import AuditEvent, Notification, User
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from algoterm.testing import assert_error, assert_requires_auth, client_for

pytestmark = pytest.mark.django_db

REGISTER = "/api/auth/register"
LOGIN = "/api/auth/login"
REFRESH = "/api/auth/refresh"
LOGOUT = "/api/auth/logout"
ME = "/api/users/me"

NEW_USER = {"name": "Asha Rao", "email": "Asha.Rao@Example.com", "phone": "98765 43210", "password": "Nifty-Options-42"}


def login(client: APIClient, email: str, password: str = DEFAULT_PASSWORD, ip: str = "10.0.0.1"):
    return client.post(LOGIN, {"email": email, "password": password}, format="json", REMOTE_ADDR=ip)


# --- register ----------------------------------------------------------------------------------------------------


def test_register_creates_a_trader_and_returns_a_working_session(api_client):
    response = api_client.post(REGISTER, NEW_USER, format="json")

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["user"]["email"] == "asha.rao@example.com"
    assert body["user"]["phone"] == "+919876543210"
    assert body["user"]["role"] == "trader"
    assert body["user"]["id"].startswith("usr_")
    assert body["token_type"] == "Bearer"
    assert body["access_expires_in"] == 15 * 60
    assert body["refresh_expires_in"] == 7 * 24 * 3600
    me = APIClient()
    me.credentials(HTTP_AUTHORIZATION=f"Bearer {body['access']}")
    assert me.get(ME).json()["email"] == "asha.rao@example.com"
    user = User.objects.get(email="asha.rao@example.com")
    assert user.password.startswith("argon2")
    assert AuditEvent.objects.filter(action="auth.register", actor=user).exists()
    assert Notification.objects.filter(user=user, kind="account.welcome").exists()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"phone": "12345"}, "phone"),
        ({"password": "short"}, "password"),
        ({"password": "password123"}, "password"),
        ({"password": "12345678901234"}, "password"),
        ({"name": ""}, "name"),
        ({"role": "admin"}, "role"),
    ],
)
def test_register_rejects_invalid_input_by_field(api_client, change, field):
    response = api_client.post(REGISTER, {**NEW_USER, **change}, format="json")

    body = assert_error(response, 400, "VALIDATION_ERROR")
    assert field in body["errors"]
    assert not User.objects.filter(email="asha.rao@example.com").exists()


def test_register_requires_every_field(api_client):
    body = assert_error(api_client.post(REGISTER, {}, format="json"), 400, "VALIDATION_ERROR")
    assert set(body["errors"]) == {"name", "email", "phone", "password"}


def test_register_refuses_an_email_taken_in_any_case(api_client):
    UserFactory(email="asha.rao@example.com")

    body = assert_error(api_client.post(REGISTER, NEW_USER, format="json"), 400, "VALIDATION_ERROR")
    assert "email" in body["errors"]
    assert User.objects.filter(email="asha.rao@example.com").count() == 1


# --- login -------------------------------------------------------------------------------------------------------


def test_login_returns_tokens_and_user(api_client, trader):
    response = login(api_client, trader.email.upper())

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["user"]["id"] == trader.pk
    assert AccessToken(body["access"])["user_id"] == trader.pk
    assert AuditEvent.objects.filter(action="auth.login", actor=trader, ip="10.0.0.1").exists()


def test_failed_login_does_not_reveal_whether_the_email_exists(api_client, trader):
    wrong_password = assert_error(login(api_client, trader.email, "Wrong-password-1"), 401, "AUTH_INVALID")
    unknown_email = assert_error(login(api_client, "nobody@example.com", "Wrong-password-1"), 401, "AUTH_INVALID")

    assert wrong_password["detail"] == unknown_email["detail"]
    assert set(wrong_password) == set(unknown_email)
    assert AuditEvent.objects.filter(action="auth.login_failed").count() == 2


def test_deactivated_user_cannot_log_in(api_client, trader):
    trader.is_active = False
    trader.save()

    assert_error(login(api_client, trader.email), 403, "ACCOUNT_DEACTIVATED")
    assert_error(login(api_client, trader.email, "Wrong-password-1"), 401, "AUTH_INVALID")


def test_failures_from_another_ip_cannot_lock_the_owner_out(api_client, trader):
    for _ in range(5):
        assert_error(login(api_client, trader.email, "Wrong-password-1", ip="203.0.113.9"), 401, "AUTH_INVALID")

    attacker = login(api_client, trader.email, ip="203.0.113.9")  # even with the right password, from that IP
    owner = login(api_client, trader.email, ip="198.51.100.7")

    assert_error(attacker, 429, "RATE_LIMITED")
    assert 800 < int(attacker["Retry-After"]) <= 901
    assert owner.status_code == 200
    assert AccessToken(owner.json()["access"])["user_id"] == trader.pk


def test_failures_from_one_ip_over_many_emails_lock_that_ip(api_client, trader, settings):
    settings.LOGIN_FAILURE_IP_LIMIT = 5
    for attempt in range(5):
        login(api_client, f"guess{attempt}@example.com", "Wrong-password-1", ip="10.9.9.9")

    assert_error(login(api_client, trader.email, ip="10.9.9.9"), 429, "RATE_LIMITED")
    assert login(api_client, trader.email, ip="10.9.9.10").status_code == 200


def test_a_distributed_guess_leaves_each_ip_one_attempt_and_the_owner_in(api_client, trader, settings):
    settings.LOGIN_FAILURE_EMAIL_LIMIT = 3
    for attempt in range(4):
        assert_error(login(api_client, trader.email, "Wrong-password-1", ip=f"10.5.0.{attempt}"), 401, "AUTH_INVALID")

    assert_error(login(api_client, trader.email, "Wrong-password-1", ip="10.5.0.0"), 429, "RATE_LIMITED")
    assert login(api_client, trader.email, ip="10.5.1.1").status_code == 200


def test_a_successful_login_resets_the_email_count(api_client, trader):
    for attempt in range(4):
        login(api_client, trader.email, "Wrong-password-1", ip=f"10.3.0.{attempt}")
    assert login(api_client, trader.email, ip="10.3.1.1").status_code == 200

    for attempt in range(4):
        login(api_client, trader.email, "Wrong-password-1", ip=f"10.4.0.{attempt}")
    assert login(api_client, trader.email, ip="10.4.1.1").status_code == 200


@pytest.mark.parametrize("payload", [{}, {"email": "x@example.com"}, {"email": "nope", "password": "x"}])
def test_login_rejects_invalid_input(api_client, payload):
    assert_error(api_client.post(LOGIN, payload, format="json"), 400, "VALIDATION_ERROR")


# --- refresh -----------------------------------------------------------------------------------------------------


def test_refresh_rotates_and_a_used_refresh_token_is_refused(api_client, trader):
    first = login(api_client, trader.email).json()

    rotated = api_client.post(REFRESH, {"refresh": first["refresh"]}, format="json")
    assert rotated.status_code == 200
    assert rotated.json()["refresh"] != first["refresh"]
    assert AccessToken(rotated.json()["access"])["user_id"] == trader.pk

    assert_error(api_client.post(REFRESH, {"refresh": first["refresh"]}, format="json"), 401, "AUTH_INVALID")
    assert AuditEvent.objects.filter(action="auth.refresh_reused", actor=trader).exists()


def test_a_reused_refresh_token_ends_every_session_and_tells_the_user(api_client, trader, time_machine):
    time_machine.move_to("2026-03-02T05:00:00+00:00", tick=False)
    phone = login(api_client, trader.email, ip="10.0.0.1").json()
    laptop = login(api_client, trader.email, ip="10.0.0.2").json()
    stolen = phone["refresh"]
    time_machine.shift(5)
    rotated_by_thief = APIClient().post(REFRESH, {"refresh": stolen}, format="json").json()

    time_machine.shift(5)
    reused = APIClient().post(REFRESH, {"refresh": stolen}, format="json")  # the phone presents its (spent) copy

    assert_error(reused, 401, "AUTH_INVALID")
    for refresh in (rotated_by_thief["refresh"], laptop["refresh"]):
        assert_error(APIClient().post(REFRESH, {"refresh": refresh}, format="json"), 401, "AUTH_INVALID")
    for access in (rotated_by_thief["access"], laptop["access"], phone["access"]):
        other = APIClient()
        other.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
        assert_error(other.get(ME), 401, "AUTH_INVALID")
    notice = Notification.objects.get(user=trader, kind="account.sessions_revoked")
    assert notice.level == "warning"
    audit = AuditEvent.objects.get(action="auth.refresh_reused", actor=trader)
    assert audit.details["revoked_refresh_tokens"] == 2

    time_machine.shift(5)
    again = login(api_client, trader.email, ip="10.0.0.1").json()  # the owner logs in again with the password
    fresh = APIClient()
    fresh.credentials(HTTP_AUTHORIZATION=f"Bearer {again['access']}")
    assert fresh.get(ME).status_code == 200
    assert APIClient().post(REFRESH, {"refresh": again["refresh"]}, format="json").status_code == 200


@pytest.mark.parametrize("token", ["garbage", "a.b.c", ""])
def test_refresh_refuses_garbage(api_client, token):
    response = api_client.post(REFRESH, {"refresh": token}, format="json")
    assert response.status_code in (400, 401)
    assert response.json()["error_code"] in ("VALIDATION_ERROR", "AUTH_INVALID")


def test_refresh_refuses_an_access_token_and_an_expired_refresh_token(api_client, trader):
    tokens = login(api_client, trader.email).json()
    assert_error(api_client.post(REFRESH, {"refresh": tokens["access"]}, format="json"), 401, "AUTH_INVALID")

    expired = RefreshToken.for_user(trader)
    expired.set_exp(lifetime=timedelta(seconds=-1))
    assert_error(api_client.post(REFRESH, {"refresh": str(expired)}, format="json"), 401, "AUTH_INVALID")


def test_refresh_is_refused_for_a_deactivated_user(api_client, trader):
    tokens = login(api_client, trader.email).json()
    trader.is_active = False
    trader.save()

    assert_error(api_client.post(REFRESH, {"refresh": tokens["refresh"]}, format="json"), 403, "ACCOUNT_DEACTIVATED")


@pytest.mark.django_db(transaction=True)
def test_concurrent_refreshes_with_one_token_succeed_once():
    if connection.vendor != "postgresql":
        pytest.fail("row locking is a PostgreSQL guarantee: run the suite with DATABASE_URL set (make test does)")
    trader = UserFactory()
    refresh = str(RefreshToken.for_user(trader))
    statuses: list[int] = []
    barrier = threading.Barrier(4)

    def present() -> None:
        barrier.wait()
        statuses.append(APIClient().post(REFRESH, {"refresh": refresh}, format="json").status_code)
        connection.close()

    threads = [threading.Thread(target=present) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [200, 401, 401, 401]


# --- access tokens -----------------------------------------------------------------------------------------------


def test_me_requires_a_valid_access_token(api_client, trader):
    assert_requires_auth("get", ME)

    api_client.credentials(HTTP_AUTHORIZATION="Bearer garbage")
    assert_error(api_client.get(ME), 401, "AUTH_INVALID")

    expired = AccessToken.for_user(trader)
    expired.set_exp(lifetime=timedelta(seconds=-1))
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {expired}")
    assert_error(api_client.get(ME), 401, "AUTH_INVALID")

    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(trader)}")
    assert_error(api_client.get(ME), 401, "AUTH_INVALID")


def test_me_shows_profile_and_unread_count(trader_client, trader):
    body = trader_client.get(ME).json()

    assert body["id"] == trader.pk
    assert body["role"] == "trader"
    assert body["status"] == "active"
    assert body["unread_notifications"] == 0
    assert "password" not in body


def test_a_deactivated_user_holding_a_valid_token_is_refused_at_once(trader_client, trader):
    assert trader_client.get(ME).status_code == 200
    User.objects.filter(pk=trader.pk).update(is_active=False)

    assert_error(trader_client.get(ME), 403, "ACCOUNT_DEACTIVATED")


# --- logout ------------------------------------------------------------------------------------------------------


def test_logout_revokes_the_refresh_and_the_access_token(api_client, trader):
    tokens = login(api_client, trader.email).json()
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")

    assert api_client.post(LOGOUT, {"refresh": tokens["refresh"]}, format="json").status_code == 204

    assert_error(api_client.get(ME), 401, "AUTH_INVALID")
    assert_error(APIClient().post(REFRESH, {"refresh": tokens["refresh"]}, format="json"), 401, "AUTH_INVALID")
    assert AuditEvent.objects.filter(action="auth.logout", actor=trader).exists()


def test_logout_refuses_someone_elses_refresh_token(trader_client):
    other = RefreshToken.for_user(UserFactory())

    body = assert_error(trader_client.post(LOGOUT, {"refresh": str(other)}, format="json"), 400, "VALIDATION_ERROR")
    assert "refresh" in body["errors"]
    assert APIClient().post(REFRESH, {"refresh": str(other)}, format="json").status_code == 200


def test_logout_requires_auth_and_input(trader_client):
    assert_requires_auth("post", LOGOUT, {"refresh": "x"})
    assert_error(trader_client.post(LOGOUT, {}, format="json"), 400, "VALIDATION_ERROR")


def test_other_sessions_survive_a_logout(api_client, trader):
    phone = login(api_client, trader.email).json()
    tablet = login(api_client, trader.email).json()
    client_for_phone = APIClient()
    client_for_phone.credentials(HTTP_AUTHORIZATION=f"Bearer {phone['access']}")
    client_for_phone.post(LOGOUT, {"refresh": phone["refresh"]}, format="json")

    assert APIClient().post(REFRESH, {"refresh": tablet["refresh"]}, format="json").status_code == 200
    assert client_for(trader).get(ME).status_code == 200


def test_parallel_guesses_cannot_outrun_the_failure_count(settings):
    from accounts import login_limits

    verdicts = [login_limits.attempt_begin(ip="10.7.7.7", email="victim@example.com") for _ in range(8)]

    # Every attempt takes its slot before the password is checked, so the sixth is refused even if the first
    # five are still being hashed.
    assert verdicts[:5] == [0] * 5 and all(wait > 0 for wait in verdicts[5:])


def test_successful_logins_give_the_ip_its_slot_back(api_client, trader):
    for _ in range(8):
        assert login(api_client, trader.email, ip="10.8.8.8").status_code == 200
