import pytest
from django.db import connection, transaction
from django.db.utils import DatabaseError

from accounts.services import audit_record

pytestmark = pytest.mark.django_db


def test_audit_events_are_append_only_in_code_and_in_postgresql(trader):
    event = audit_record(action="auth.login", actor=trader, target=trader, details={"k": "v"})
    assert event.kind == "auth" and event.target_id == trader.pk and event.id.startswith("evt_")

    event.details = {"k": "tampered"}
    with pytest.raises(ValueError):
        event.save()
    with pytest.raises(ValueError):
        event.delete()

    assert connection.vendor == "postgresql", "the append-only trigger is PostgreSQL's; make test sets DATABASE_URL"
    for statement in ("UPDATE accounts_auditevent SET action = 'x'", "DELETE FROM accounts_auditevent"):
        with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)


def test_audit_action_kind_must_be_known():
    with pytest.raises(ValueError):
        audit_record(action="mystery.thing")
