"""Sections of the caller's profile (`GET /api/users/me`) owned by apps above accounts: billing adds the
subscription and the entitlements. Each app registers its sections from its AppConfig.ready(); the profile renders
them after its own fields, in the order registered, and the API schema documents each with the schema given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from accounts.models import User


@dataclass(frozen=True)
class ProfileSection:
    name: str
    read: Callable[[User], Any]  # the section as JSON-ready data for this user
    schema: Any  # what the section renders, for the schema: a serializer (class or instance) or an OpenAPI type
    help_text: str


_sections: dict[str, ProfileSection] = {}


def profile_section_register(*, name: str, read: Callable[[User], Any], schema: Any, help_text: str) -> None:
    """Add a section to the profile (registering a name again replaces that section in its place)."""
    _sections[name] = ProfileSection(name=name, read=read, schema=schema, help_text=help_text)


def profile_sections() -> list[ProfileSection]:
    return list(_sections.values())
