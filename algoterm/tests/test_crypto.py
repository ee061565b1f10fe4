import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from algoterm import crypto


def test_round_trip_and_ciphertext_hides_the_secret(settings):
    settings.ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    ciphertext = crypto.encrypt("kite-api-secret")
    assert "kite-api-secret" not in ciphertext
    assert crypto.decrypt(ciphertext) == "kite-api-secret"


def test_rotation_keeps_old_values_readable_then_moves_them_to_the_new_key(settings):
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.ENCRYPTION_KEYS = [old_key]
    stored = crypto.encrypt("access-token")

    settings.ENCRYPTION_KEYS = [new_key, old_key]
    assert crypto.decrypt(stored) == "access-token"
    rotated = crypto.rotate(stored)

    settings.ENCRYPTION_KEYS = [new_key]
    assert crypto.decrypt(rotated) == "access-token"
    with pytest.raises(crypto.DecryptionFailed):
        crypto.decrypt(stored)


def test_bad_or_missing_keys_are_configuration_errors(settings):
    settings.ENCRYPTION_KEYS = ["not-a-key"]
    with pytest.raises(ImproperlyConfigured):
        crypto.encrypt("x")
    settings.ENCRYPTION_KEYS = []
    with pytest.raises(ImproperlyConfigured):
        crypto.encrypt("x")
