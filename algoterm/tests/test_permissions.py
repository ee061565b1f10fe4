import pytest
from django.contrib.auth.models import AnonymousUser
from rest_framework.test import APIRequestFactory

from accounts.models import Role
from accounts.tests.factories import UserFactory
from algoterm.api.permissions import IsAdmin, IsTrader

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("role", "admin", "trader"), [(Role.USER, False, False), (Role.TRADER, False, True), (Role.ADMIN, True, True)]
)
def test_role_permissions(role, admin, trader):
    request = APIRequestFactory().get("/")
    request.user = UserFactory(role=role)
    assert IsAdmin().has_permission(request, None) is admin
    assert IsTrader().has_permission(request, None) is trader
    request.user = AnonymousUser()
    assert not IsAdmin().has_permission(request, None) and not IsTrader().has_permission(request, None)
