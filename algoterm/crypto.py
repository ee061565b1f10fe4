"""Encryption of secrets at rest (broker keys and tokens, webhook secrets) with rotatable Fernet keys.

ENCRYPTION_KEYS lists Fernet keys newest first: the first encrypts, all of them decrypt, and
`manage.py rotate_encryption` re-encrypts stored values under the first key so old keys can be retired.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models


class DecryptionFailed(Exception):
    """A stored secret cannot be decrypted with any configured key."""


@lru_cache(maxsize=4)
def _fernet_for(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("ENCRYPTION_KEYS is empty: secrets cannot be encrypted.")
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except ValueError as error:
        raise ImproperlyConfigured("ENCRYPTION_KEYS holds a value that is not a Fernet key.") from error


def _fernet() -> MultiFernet:
    return _fernet_for(tuple(settings.ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> str:
    try:
        return _fernet().decrypt(ciphertext.encode()).decode()
    except InvalidToken as error:
        raise DecryptionFailed("stored secret cannot be decrypted with the configured ENCRYPTION_KEYS") from error


def rotate(ciphertext: str) -> str:
    """The same secret encrypted under the newest key."""
    try:
        return _fernet().rotate(ciphertext.encode()).decode()
    except InvalidToken as error:
        raise DecryptionFailed("stored secret cannot be decrypted with the configured ENCRYPTION_KEYS") from error


class EncryptedTextField(models.TextField):
    """A text column stored as Fernet ciphertext; Python sees plaintext. Not searchable, by design."""

    def from_db_value(self, value, expression, connection):
        if value is None or value == "":
            return value
        return decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encrypt(value)
