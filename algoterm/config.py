"""Runtime configuration: sections operators change without a deploy (market hours, holidays, a new user's risk
defaults, order freeze quantities, the market feed `serve` runs), each validated before it is stored and audited.

A section that was never stored answers its default, which is today's behaviour: the calendar's built-in session
times and holiday list, the `RMS_DEFAULT_*` and `MARKET_FEED*` settings, NSE's freeze limits below. Defaults are
computed on every read (settings may change under tests); only stored rows are cached, briefly, in the shared Django
cache, and forgotten when a section changes, so every process sees a change at once.

The store sits in the core, below the apps whose data it holds, so it imports none of them: the app that owns a
section registers it (its default, validation and audit summary) with `section_register` from its
`AppConfig.ready()` (market data registers `market_hours`, `holidays` and `feed`), and accounts registers the audit
log writer with `config_audit_connect`. A change while no audit writer is registered fails and stores nothing.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import time
from time import monotonic
from typing import TYPE_CHECKING, Any, Protocol

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.utils import timezone

from algoterm.api.errors import AppError, ErrorCode, NotFound, ValidationFailed
from algoterm.locking import rows_locked
from algoterm.logging import redact_value
from algoterm.models import ConfigSection
from algoterm.realtime import ops_publish

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser

logger = logging.getLogger(__name__)

MARKET_HOURS = "market_hours"
HOLIDAYS = "holidays"
RMS_DEFAULTS = "rms_defaults"
FREEZE_QUANTITIES = "freeze_quantities"
FEED = "feed"
# The order the admin API, its schema and exports list the sections in, whatever order the apps register them in;
# a section not named here follows, in the order it was registered.
SECTION_ORDER = (MARKET_HOURS, HOLIDAYS, RMS_DEFAULTS, FREEZE_QUANTITIES, FEED)

EXPORT_FORMAT_VERSION = 1
CACHE_SECONDS = 30  # a bound on staleness should an invalidation be missed (a row edited outside these services)
_CACHE_PREFIX = "config:section:"
_NOT_STORED = "-"  # cached marker: no row, the default applies

# NSE's quantity freeze limits for index derivatives, in units per order (circular of 30 January 2026, effective
# 1 February 2026; NSE revises them with the index levels, so check https://www.nseindia.com circulars
# "Quantity freeze limits for indices"). Stock derivatives have limits too; add them by underlying as needed.
NSE_FREEZE_QUANTITIES: dict[str, int] = {
    "NIFTY": 1800,
    "BANKNIFTY": 600,
    "FINNIFTY": 1800,
    "MIDCPNIFTY": 2800,
    "NIFTYNXT50": 600,
}

_CLOCK = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_UNDERLYING = re.compile(r"^[A-Z0-9][A-Z0-9&_-]{0,31}$")
_MAX_COUNT = 2_147_483_647  # the limits' database columns
_MAX_FREEZE = 10_000_000

Errors = dict[str, list[str]]


# --- helpers for the sections' validators (the apps' too) ----------------------------------------------------------


def error_add(errors: Errors, field: str, message: str) -> None:
    errors.setdefault(field, []).append(message)


def clock_parse(value: Any) -> time | None:
    """A strict 24-hour "HH:MM", else None."""
    return time.fromisoformat(value) if isinstance(value, str) and _CLOCK.match(value) else None


def is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def keys_check(data: Any, *, known: tuple[str, ...], errors: Errors, prefix: str = "") -> bool:
    """`data` is a JSON object with exactly the `known` keys; records what is wrong, answers whether to go on."""
    if not isinstance(data, dict):
        error_add(errors, prefix.rstrip("."), "Must be an object.")
        return False
    for key in sorted(set(data) - set(known), key=str):
        error_add(errors, f"{prefix}{key}", "Unknown field.")
    for key in known:
        if key not in data:
            error_add(errors, f"{prefix}{key}", "This field is required.")
    return True


# --- the registry ---------------------------------------------------------------------------------------------------


def changes_by_field(before: dict, after: dict) -> dict:
    """What changed, key by key, for the audit log (the summary a section without its own uses)."""
    return {
        key: {"from": before.get(key), "to": after.get(key)}
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    }


@dataclass(frozen=True)
class Section:
    name: str
    description: str
    default: Callable[[], dict]
    validate: Callable[[Any], Errors]
    # A short account of what a change did, for the audit log: (before, after) -> details.
    changes: Callable[[dict, dict], dict] = changes_by_field


SECTIONS: dict[str, Section] = {}


def section_register(section: Section) -> None:
    """Make `section` one of the store's sections (again: the latest registration of a name wins)."""
    registered = {**SECTIONS, section.name: section}
    ordered = [name for name in SECTION_ORDER if name in registered]
    ordered += [name for name in registered if name not in SECTION_ORDER]
    # Filled in place: other modules hold the mapping itself.
    SECTIONS.clear()
    SECTIONS.update((name, registered[name]) for name in ordered)


class AuditRecorder(Protocol):
    def __call__(
        self, *, action: str, actor: Any, target_type: str, target_id: str, details: dict[str, Any]
    ) -> Any: ...


_audit_recorder: AuditRecorder | None = None


def config_audit_connect(recorder: AuditRecorder) -> None:
    """Register the writer of the audit log row every configuration change records (accounts registers it)."""
    global _audit_recorder
    _audit_recorder = recorder


def _audit(*, action: str, actor: AbstractBaseUser | None, target_id: str, details: dict[str, Any]) -> None:
    # A change nobody can trace is worse than no change: without a writer the caller's transaction rolls back.
    if _audit_recorder is None:
        raise ImproperlyConfigured("No configuration audit writer is registered; the change was not stored.")
    _audit_recorder(action=action, actor=actor, target_type="config", target_id=target_id, details=details)


# --- the core's own sections ---------------------------------------------------------------------------------------


def _rms_defaults_default() -> dict:
    start, _, end = settings.RMS_DEFAULT_TRADING_WINDOW.partition("-")
    return {
        "max_orders_per_day": settings.RMS_DEFAULT_MAX_ORDERS_PER_DAY or None,
        "max_open_positions": settings.RMS_DEFAULT_MAX_OPEN_POSITIONS or None,
        "trading_window": f"{start.strip()}-{end.strip()}" if start.strip() else "",
        "auto_square_off": settings.RMS_DEFAULT_AUTO_SQUARE_OFF.strip(),
    }


def _rms_defaults_validate(data: Any) -> Errors:
    errors: Errors = {}
    known = ("max_orders_per_day", "max_open_positions", "trading_window", "auto_square_off")
    if not keys_check(data, known=known, errors=errors):
        return errors
    for key in ("max_orders_per_day", "max_open_positions"):
        value = data.get(key)
        if key in data and value is not None and not (is_whole(value) and 0 < value <= _MAX_COUNT):
            error_add(errors, key, "Must be a positive whole number, or null for no limit.")
    window = data.get("trading_window")
    start = end = None
    if "trading_window" in data:
        if not isinstance(window, str):
            error_add(errors, "trading_window", 'Must be "HH:MM-HH:MM" (IST), or "" for none.')
        elif window:
            first, _, last = window.partition("-")
            start, end = clock_parse(first), clock_parse(last)
            if start is None or end is None:
                error_add(errors, "trading_window", 'Must be "HH:MM-HH:MM" (IST), or "" for none.')
            elif end <= start:
                error_add(errors, "trading_window", "The window must end after it starts.")
    if "auto_square_off" in data:
        raw = data.get("auto_square_off")
        square_off = clock_parse(raw)
        if raw != "" and square_off is None:
            error_add(errors, "auto_square_off", 'Must be a time as HH:MM (IST), or "" for none.')
        elif (
            square_off is not None
            and start is not None
            and end is not None
            and end > start
            and not start <= square_off <= end
        ):
            error_add(errors, "auto_square_off", "Must fall inside the trading window.")
    return errors


def _freeze_quantities_default() -> dict:
    return dict(NSE_FREEZE_QUANTITIES)


def _freeze_quantities_validate(data: Any) -> Errors:
    errors: Errors = {}
    if not isinstance(data, dict):
        return {"": ['Must be an object of underlying: units, e.g. {"NIFTY": 1800}.']}
    for key, value in data.items():
        if not isinstance(key, str) or not _UNDERLYING.match(key):
            error_add(errors, str(key), "Must be an underlying as instruments list it (upper case, e.g. NIFTY).")
        if not (is_whole(value) and 0 < value <= _MAX_FREEZE):
            error_add(errors, str(key), f"Must be a positive whole number of units, at most {_MAX_FREEZE}.")
    return errors


section_register(
    Section(
        RMS_DEFAULTS,
        'A new user\'s risk limits: {"max_orders_per_day": 1000, "max_open_positions": 100, '
        '"trading_window": "09:15-15:30", "auto_square_off": "15:15"}; null or "" turns one off.',
        _rms_defaults_default,
        _rms_defaults_validate,
    )
)
section_register(
    Section(
        FREEZE_QUANTITIES,
        'Most units one derivatives order may carry, per underlying: {"NIFTY": 1800, ...}.',
        _freeze_quantities_default,
        _freeze_quantities_validate,
    )
)


def section_of(name: str) -> Section:
    """The section called `name`; 404 NOT_FOUND for another name."""
    section = SECTIONS.get(name)
    if section is None:
        raise NotFound(f"No configuration section {name!r}; the sections are {', '.join(SECTIONS)}.")
    return section


def config_validate(*, name: str, data: Any) -> Errors:
    """What is wrong with `data` as section `name`, by field (dotted inside lists: NSE.2.date); empty when valid."""
    return section_of(name).validate(data)


def _prefixed(errors: Errors, prefix: str) -> Errors:
    return {f"{prefix}.{field}" if field else prefix: messages for field, messages in errors.items()}


# --- reads ----------------------------------------------------------------------------------------------------------


def _cache_key(name: str) -> str:
    return f"{_CACHE_PREFIX}{name}"


def config_stored(*, name: str) -> dict | None:
    """The section's stored data, None when it was never stored (the default applies); cached briefly."""
    section_of(name)
    cached = cache.get(_cache_key(name))
    if cached is None:
        row = ConfigSection.objects.filter(name=name).values_list("data", flat=True).first()
        cached = _NOT_STORED if row is None else row
        cache.set(_cache_key(name), cached, CACHE_SECONDS)
    return None if cached == _NOT_STORED else cached


_unreadable_logged_at: dict[str, float] = {}


def config_stored_or_builtin(*, name: str) -> dict | None:
    """`config_stored` for hot paths that must answer even when the store cannot be read (no database in this
    thread, a database or cache outage): None then, so the caller uses its built-ins; logged once a minute."""
    try:
        return config_stored(name=name)
    except Exception:  # noqa: BLE001 - the market calendar must keep answering
        now = monotonic()
        if now - _unreadable_logged_at.get(name, -math.inf) >= 60:
            _unreadable_logged_at[name] = now
            logger.warning("configuration section %s unreadable; using the built-in values", name, exc_info=True)
        return None


def config_get(*, name: str) -> dict:
    """A section's data: as stored, else its default."""
    stored = config_stored(name=name)
    return stored if stored is not None else section_of(name).default()


def freeze_quantity(*, underlying: str) -> int | None:
    """The most units one order in `underlying`'s derivatives may carry, None when no limit is configured."""
    return config_get(name=FREEZE_QUANTITIES).get(underlying) if underlying else None


def _state(name: str, row: ConfigSection | None) -> dict:
    return {
        "name": name,
        "description": SECTIONS[name].description,
        "data": row.data if row is not None else SECTIONS[name].default(),
        "version": row.version if row is not None else 0,
        "stored": row is not None,
        "updated_by": row.updated_by_id if row is not None else None,
        "updated_at": row.updated_at if row is not None else None,
    }


def config_section_get(*, name: str) -> dict:
    """One section with its version (0: never stored, the default applies), who changed it last and when."""
    section_of(name)
    return _state(name, ConfigSection.objects.filter(name=name).first())


def config_all() -> dict:
    """Every section as `config_section_get` describes it, by name."""
    rows = {row.name: row for row in ConfigSection.objects.filter(name__in=list(SECTIONS))}
    return {name: _state(name, rows.get(name)) for name in SECTIONS}


def config_export() -> dict:
    """A document of every section's effective data that `config_import` takes back."""
    return {
        "version": EXPORT_FORMAT_VERSION,
        "exported_at": timezone.now().isoformat(),
        "sections": {name: state["data"] for name, state in config_all().items()},
    }


# --- writes ---------------------------------------------------------------------------------------------------------


def _forget(name: str) -> None:
    # Now, for this transaction's own reads; and after commit, in case another process cached the old row meanwhile.
    cache.delete(_cache_key(name))
    transaction.on_commit(lambda: cache.delete(_cache_key(name)))


def _conflict(name: str, current: int) -> AppError:
    return AppError(
        f"The {name} section changed meanwhile (it is at version {current}); reload it and apply your change again.",
        code=ErrorCode.CONFLICT,
        extra={"current_version": current},
    )


def _ops_changes(before: dict, after: dict) -> dict:
    """Key by key, old -> new, for the operators' socket; a key that looks like a secret shows neither value."""
    return {
        key: {"from": redact_value(str(key), before.get(key)), "to": redact_value(str(key), after.get(key))}
        for key in sorted(set(before) | set(after), key=str)
        if before.get(key) != after.get(key)
    }


def _write(
    *, actor: AbstractBaseUser | None, name: str, row: ConfigSection | None, data: dict, via: str
) -> ConfigSection:
    """Every stored change comes through here (a PUT, an import), and is told to the operators on /ws/ops after
    commit."""
    before = row.data if row is not None else section_of(name).default()
    now = timezone.now()
    if row is None:
        try:
            with transaction.atomic():
                row = ConfigSection.objects.create(name=name, data=data, version=1, updated_by=actor, updated_at=now)
        except IntegrityError as error:  # another writer stored the section first
            raise _conflict(name, 1) from error
    else:
        row.data, row.version, row.updated_by, row.updated_at = data, row.version + 1, actor, now
        row.save(update_fields=["data", "version", "updated_by", "updated_at"])
    _forget(name)
    ops_publish(
        topic="config",
        message_type="config_change",
        payload={
            "section": name,
            "version": row.version,
            "via": via,
            "updated_by": getattr(actor, "pk", None),
            "updated_by_email": getattr(actor, "email", None),
            "updated_at": now,
            "changes": _ops_changes(before, data),
        },
    )
    return row


def config_put(
    *, actor: AbstractBaseUser | None, name: str, data: Any, expected_version: int | None = None
) -> ConfigSection:
    """Replace a section's data. 400 naming the fields (`data.<field>`) when invalid; 409 CONFLICT when
    `expected_version` is given and the section is no longer at it (0: never stored)."""
    section = section_of(name)
    errors = section.validate(data)
    if errors:
        raise ValidationFailed(f"The {name} section is invalid.", errors=_prefixed(errors, "data"))
    with transaction.atomic():
        row = rows_locked(ConfigSection.objects.filter(name=name)).first()
        current = row.version if row is not None else 0
        if expected_version is not None and expected_version != current:
            raise _conflict(name, current)
        before = row.data if row is not None else section.default()
        row = _write(actor=actor, name=name, row=row, data=data, via="put")
        _audit(
            action="config.update",
            actor=actor,
            target_id=name,
            details={"section": name, "version": row.version, "changes": section.changes(before, data)},
        )
    return row


def _document_errors(document: Any) -> Errors:
    errors: Errors = {}
    if not isinstance(document, dict):
        return {"": ["Must be an object as POST /api/config/export answers."]}
    for key in sorted(set(document) - {"version", "exported_at", "sections"}, key=str):
        error_add(errors, str(key), "Unknown field.")
    if document.get("version") != EXPORT_FORMAT_VERSION or isinstance(document.get("version"), bool):
        error_add(errors, "version", f"Must be {EXPORT_FORMAT_VERSION}, the export format this server reads.")
    if "exported_at" in document and not isinstance(document["exported_at"], str):
        error_add(errors, "exported_at", "Must be a timestamp string.")
    sections = document.get("sections")
    if not isinstance(sections, dict) or not sections:
        error_add(errors, "sections", "Must be an object with at least one section by name.")
        return errors
    for name, data in sections.items():
        if name not in SECTIONS:
            error_add(errors, f"sections.{name}", f"Unknown section; the sections are {', '.join(SECTIONS)}.")
            continue
        errors.update(_prefixed(SECTIONS[name].validate(data), f"sections.{name}"))
    return errors


def config_import(*, actor: AbstractBaseUser | None, document: Any, dry_run: bool = False) -> dict:
    """Apply an exported document's sections, all or nothing: every section is validated first (400 naming
    `document.sections.<name>.<field>`), then each one that differs is stored. Sections the document leaves out
    stay as they are. `dry_run` answers what would change and changes nothing."""
    errors = _document_errors(document)
    if errors:
        raise ValidationFailed("The configuration document is invalid.", errors=_prefixed(errors, "document"))
    sections: dict[str, dict] = document["sections"]
    with transaction.atomic():
        rows = {row.name: row for row in rows_locked(ConfigSection.objects.filter(name__in=list(sections)))}
        changes: dict[str, dict] = {}
        for name in SECTIONS:
            if name not in sections:
                continue
            row = rows.get(name)
            before = row.data if row is not None else SECTIONS[name].default()
            if sections[name] != before:
                changes[name] = SECTIONS[name].changes(before, sections[name])
                if not dry_run:
                    _write(actor=actor, name=name, row=row, data=sections[name], via="import")
        if changes and not dry_run:
            _audit(
                action="config.import",
                actor=actor,
                target_id=",".join(changes),
                details={"changed": list(changes), "changes": changes},
            )
    return {
        "dry_run": dry_run,
        "changed": list(changes),
        "unchanged": [name for name in SECTIONS if name in sections and name not in changes],
        "changes": changes,
    }
