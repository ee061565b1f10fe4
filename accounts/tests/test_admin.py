import pytest
from django.test import Client

from accounts.models import AuditEvent, Role, User
from accounts.tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def console(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


def test_admin_pages_render_for_admins_only(console, trader):
    for url in (
        "/admin/",
        "/admin/accounts/user/",
        "/admin/accounts/user/add/",
        f"/admin/accounts/user/{trader.pk}/change/",
        "/admin/accounts/auditevent/",
        "/admin/accounts/notification/",
        "/admin/django_celery_beat/periodictask/",
    ):
        assert console.get(url).status_code == 200, url
    outsider = Client()
    outsider.force_login(trader)
    assert outsider.get("/admin/accounts/user/").status_code == 302  # to the admin login


def test_user_search_and_filters(console):
    UserFactory(email="findme@example.com")
    page = console.get("/admin/accounts/user/", {"q": "findme", "role__exact": "trader"}).content.decode()
    assert "findme@example.com" in page


def test_admin_creates_a_user_with_a_normalised_phone(console):
    response = console.post(
        "/admin/accounts/user/add/",
        {
            "email": "Desk@Example.com",
            "name": "Desk",
            "phone": "98111 22233",
            "role": Role.USER,
            "password1": "Desk-Password-2026",
            "password2": "Desk-Password-2026",
            "usable_password": "true",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    user = User.objects.get(email="desk@example.com")
    assert user.phone == "+919811122233" and user.check_password("Desk-Password-2026")


def test_deactivate_action_goes_through_the_service(console, admin_user, trader):
    response = console.post(
        "/admin/accounts/user/", {"action": "deactivate_users", "_selected_action": [trader.pk, admin_user.pk]}
    )

    assert response.status_code == 302
    trader.refresh_from_db()
    admin_user.refresh_from_db()
    assert not trader.is_active and admin_user.is_active  # an admin cannot deactivate themselves
    assert AuditEvent.objects.filter(action="admin.user_deactivate", actor=admin_user, target_id=trader.pk).exists()


def test_audit_log_is_read_only_in_the_admin(console, trader):
    from accounts.services import audit_record

    event = audit_record(action="auth.login", actor=trader)
    assert console.get(f"/admin/accounts/auditevent/{event.pk}/change/").status_code == 200  # view only
    assert console.post(f"/admin/accounts/auditevent/{event.pk}/delete/").status_code == 403
    assert console.get("/admin/accounts/auditevent/add/").status_code == 403
