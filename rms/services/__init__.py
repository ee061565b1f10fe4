"""Risk management: pre-trade checks, the MTM monitor, breaches and square-off, kill switches.

The sweep evaluates every user with positions today in one set-based pass (one quote fetch, MTM summed per account
in SQL, the users' limits and states in a few queries); a breach is handled once per user and day under the state
row's lock, and a square-off a dead worker left half-done is resumed by the next sweep.

This package is the RMS's service API; by sub-domain: `limits` (profiles, ceilings, the limits in force),
`checks` (the pre-trade check), `monitor` (MTM and the sweep), `breaches` (breach handling, square-off),
`controls` (an operator's square-off, halt and resume), and `common` (reasons, the trading day, its state row).
"""

from rms.services.breaches import SQUARE_OFF_CLAIM_SECONDS, auto_square_off, breach_handle, breach_square_off
from rms.services.checks import check_order, funds_snapshot_refresh
from rms.services.common import (
    IST,
    OPS_EVENT_KINDS,
    PAISE,
    SEVERITY,
    STATE_AFTER,
    Reason,
    rms_event_ops_view,
    rms_event_record,
    state_today,
    trading_day,
)
from rms.services.controls import user_halt, user_resume, user_square_off
from rms.services.evaluation import evaluation_pending_take, evaluation_request
from rms.services.limits import (
    CAP_FIELDS,
    CEILING_FIELDS,
    CHANGE_UNITS,
    LIST_FIELDS,
    PROFILE_FIELDS,
    WINDOW_FIELDS,
    Limits,
    ceiling_validate,
    ceilings_for,
    limits_by_user,
    limits_for,
    pending_view,
    platform_ceiling_get,
    platform_ceiling_update,
    profile_get_or_create,
    profile_update,
    profile_validate,
    profiles_in_force,
    trading_started,
    user_ceiling_update,
)
from rms.services.monitor import (
    Breach,
    MtmBook,
    SweepResult,
    mtm_book,
    profit_lock_level,
    profit_lock_raise,
    sweep,
    user_mtm,
    users_holding,
)

__all__ = [
    "CAP_FIELDS",
    "CEILING_FIELDS",
    "CHANGE_UNITS",
    "IST",
    "OPS_EVENT_KINDS",
    "LIST_FIELDS",
    "PAISE",
    "PROFILE_FIELDS",
    "SEVERITY",
    "SQUARE_OFF_CLAIM_SECONDS",
    "STATE_AFTER",
    "WINDOW_FIELDS",
    "Breach",
    "Limits",
    "MtmBook",
    "Reason",
    "SweepResult",
    "auto_square_off",
    "breach_handle",
    "breach_square_off",
    "ceiling_validate",
    "ceilings_for",
    "evaluation_pending_take",
    "evaluation_request",
    "check_order",
    "funds_snapshot_refresh",
    "limits_by_user",
    "limits_for",
    "mtm_book",
    "pending_view",
    "platform_ceiling_get",
    "platform_ceiling_update",
    "profile_get_or_create",
    "profile_update",
    "profile_validate",
    "profiles_in_force",
    "profit_lock_level",
    "profit_lock_raise",
    "rms_event_ops_view",
    "rms_event_record",
    "state_today",
    "sweep",
    "trading_day",
    "trading_started",
    "user_ceiling_update",
    "user_halt",
    "user_mtm",
    "user_resume",
    "user_square_off",
    "users_holding",
]
