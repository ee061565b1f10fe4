"""RMS events have their own id prefix, `rke_`: an audit event (`evt_`) and a risk event never share one."""

from __future__ import annotations

from decimal import Decimal

import pytest

from algoterm.ids import is_valid
from rms.models import RmsEvent
from rms.services import Reason, breach_handle

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_tick_evaluation")]


def test_a_risk_event_gets_the_rke_prefix(trader):
    assert breach_handle(user_id=trader.pk, reason=Reason.DAILY_LOSS_LIMIT_HIT, mtm=Decimal("-1500"))

    breach = RmsEvent.objects.get(user=trader, kind=RmsEvent.Kind.BREACH)
    assert breach.pk.startswith("rke_") and is_valid(breach.pk, "rke")


def test_risk_events_stored_before_the_prefix_keep_their_ids(trader):
    RmsEvent.objects.create(id="evt_0abcdefghijklmnop", user=trader, kind=RmsEvent.Kind.CONFIG)

    assert RmsEvent.objects.get(pk="evt_0abcdefghijklmnop").kind == RmsEvent.Kind.CONFIG
