"""Normalisation of user-entered identity fields, shared by the API, the admin and commands."""

from __future__ import annotations

import phonenumbers

DEFAULT_PHONE_REGION = "IN"


def normalize_phone(raw: str) -> str:
    """A mobile number as E.164 (+919876543210); Indian numbers may omit +91. Raises ValueError if invalid."""
    try:
        parsed = phonenumbers.parse(raw, DEFAULT_PHONE_REGION)
    except phonenumbers.NumberParseException as error:
        raise ValueError("Enter a valid phone number, e.g. +919876543210.") from error
    if not phonenumbers.is_valid_number(parsed):
        raise ValueError("Enter a valid phone number, e.g. +919876543210.")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(raw: str) -> str:
    return raw.strip().lower()
