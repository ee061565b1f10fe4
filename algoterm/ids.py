"""The one public-id generator: `ord_` + 17 lowercase base-36 characters.

The body packs a millisecond timestamp (41 bits) above 46 random bits, so ids are unguessable and never
sequential, yet created-later ids sort later and B-tree inserts stay local. The compact form (prefix and body
without the underscore) is exactly 20 lowercase alphanumerics: it fits Kite's order tag and Dhan's correlation id,
so an order's own id can travel to the broker and come back.
"""

from __future__ import annotations

import re
import secrets
import time

from django.db import models

PREFIXES = frozenset({"usr", "acc", "ord", "trd", "stg", "run", "bkt", "sig", "sub", "pay", "ntf", "evt", "rke", "alr"})
BODY_LENGTH = 17
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_TIMESTAMP_BITS = 41
_RANDOM_BITS = 46
_EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z; 41 bits of milliseconds last until 2094.
_ID_PATTERN = re.compile(rf"^([a-z]{{3}})_([0-9a-z]{{{BODY_LENGTH}}})$")


def _encode(number: int) -> str:
    chars = []
    for _ in range(BODY_LENGTH):
        number, remainder = divmod(number, 36)
        chars.append(_ALPHABET[remainder])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}; register it in algoterm.ids.PREFIXES")
    elapsed_ms = (time.time_ns() // 1_000_000 - _EPOCH_MS) & ((1 << _TIMESTAMP_BITS) - 1)
    return f"{prefix}_{_encode((elapsed_ms << _RANDOM_BITS) | secrets.randbits(_RANDOM_BITS))}"


def is_valid(value: object, prefix: str | None = None) -> bool:
    if not isinstance(value, str):
        return False
    match = _ID_PATTERN.match(value)
    return bool(match) and (prefix is None or match.group(1) == prefix)


def to_compact(public_id: str) -> str:
    """`ord_0abc...` -> `ord0abc...` (20 alphanumerics) for broker fields that allow no underscore."""
    if not is_valid(public_id):
        raise ValueError(f"not a public id: {public_id!r}")
    return public_id.replace("_", "", 1)


def from_compact(compact: str) -> str | None:
    candidate = f"{compact[:3]}_{compact[3:]}" if isinstance(compact, str) else ""
    return candidate if is_valid(candidate) else None


class PublicIdField(models.CharField):
    """Primary key holding a prefixed public id, generated on creation."""

    def __init__(self, *args, prefix: str, **kwargs) -> None:
        if prefix not in PREFIXES:
            raise ValueError(f"unknown id prefix {prefix!r}")
        self.prefix = prefix
        kwargs.setdefault("max_length", len(prefix) + 1 + BODY_LENGTH)
        kwargs.setdefault("primary_key", True)
        kwargs.setdefault("editable", False)
        kwargs["default"] = _generator(prefix)
        super().__init__(*args, **kwargs)

    def deconstruct(self):
        name, path, args, kwargs = super().deconstruct()
        kwargs["prefix"] = self.prefix
        kwargs.pop("default", None)
        return name, path, args, kwargs


class _generator:
    """A picklable, comparable default callable so migrations stay stable."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self) -> str:
        return new_id(self.prefix)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _generator) and other.prefix == self.prefix

    def __hash__(self) -> int:
        return hash(self.prefix)
