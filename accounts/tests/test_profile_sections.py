"""Apps above accounts add sections to the profile (`GET /api/users/me`) through `accounts.profile`: billing's
subscription and entitlements are registered from its ready(), and a section renders after the profile's own fields."""

from __future__ import annotations

import pytest
from rest_framework import serializers

from accounts import profile
from accounts.serializers import MeOutput, UserOutput
from accounts.tests.factories import UserFactory
from algoterm.testing import client_for

pytestmark = pytest.mark.django_db


def test_billing_registers_its_sections_in_order():
    assert [section.name for section in profile.profile_sections()] == ["subscription", "entitlements"]


def test_a_registered_section_renders_after_the_profiles_own_fields(monkeypatch):
    monkeypatch.setattr(profile, "_sections", dict(profile._sections))
    profile.profile_section_register(
        name="greeting", read=lambda user: f"hello {user.name}", schema=serializers.CharField(), help_text="hi"
    )
    body = client_for(UserFactory(name="Asha")).get("/api/users/me").json()

    assert list(body)[: len(UserOutput.Meta.fields) + 1] == [*UserOutput.Meta.fields, "unread_notifications"]
    assert list(body)[-3:] == ["subscription", "entitlements", "greeting"]
    assert body["greeting"] == "hello Asha"
    assert MeOutput().fields["greeting"].read_only
