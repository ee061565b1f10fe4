"""`manage.py seed_demo`: the demo accounts have published passwords, so production refuses to create them."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from accounts.models import User
from brokers.models import BrokerAccount
from strategies.models import Strategy

pytestmark = pytest.mark.django_db


def test_seed_demo_refuses_production_and_creates_nothing(settings):
    settings.DJANGO_ENV = "production"

    with pytest.raises(CommandError, match="production"):
        call_command("seed_demo")

    assert not User.objects.exists()
    assert not BrokerAccount.objects.exists() and not Strategy.objects.exists()
