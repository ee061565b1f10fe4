"""The configuration store's hooks: sections the apps register, and the audit writer accounts registers. A change
must never be stored untraced."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from accounts.models import AuditEvent
from accounts.services import audit_record
from algoterm import config
from algoterm.models import ConfigSection

FEED = {"source": "", "interval_seconds": 5.0}


@pytest.fixture
def no_audit_writer(monkeypatch):
    monkeypatch.setattr(config, "_audit_recorder", None)


def test_accounts_registers_the_audit_log_as_the_writer():
    assert config._audit_recorder is audit_record


@pytest.mark.django_db
def test_a_change_without_an_audit_writer_fails_and_stores_nothing(no_audit_writer, admin_user):
    with pytest.raises(ImproperlyConfigured):
        config.config_put(actor=admin_user, name=config.FEED, data=FEED)

    assert not ConfigSection.objects.exists()
    assert config.config_get(name=config.FEED) != FEED


@pytest.mark.django_db
def test_an_import_without_an_audit_writer_fails_and_stores_nothing(no_audit_writer, admin_user):
    document = {"version": config.EXPORT_FORMAT_VERSION, "sections": {config.FEED: FEED}}

    with pytest.raises(ImproperlyConfigured):
        config.config_import(actor=admin_user, document=document)

    assert not ConfigSection.objects.exists()
    assert config.config_import(actor=admin_user, document=document, dry_run=True)["changed"] == [config.FEED]


@pytest.mark.django_db
def test_a_dry_run_needs_no_audit_writer(no_audit_writer, admin_user):
    document = {"version": config.EXPORT_FORMAT_VERSION, "sections": {config.FEED: FEED}}

    assert config.config_import(actor=admin_user, document=document, dry_run=True)["changed"] == [config.FEED]
    assert not AuditEvent.objects.exists()


def test_market_data_registers_its_sections_and_the_list_keeps_its_order():
    assert list(config.SECTIONS) == list(config.SECTION_ORDER)
    assert config.SECTIONS[config.HOLIDAYS].changes is not config.changes_by_field


def test_a_section_registers_in_its_place_and_a_second_registration_replaces_the_first(monkeypatch):
    monkeypatch.setattr(config, "SECTIONS", {})
    feed = config.Section(config.FEED, "feed", dict, lambda data: {})
    extra = config.Section("colours", "colours", dict, lambda data: {})
    market_hours = config.Section(config.MARKET_HOURS, "hours", dict, lambda data: {})

    for section in (feed, extra, market_hours):
        config.section_register(section)
    assert list(config.SECTIONS) == [config.MARKET_HOURS, config.FEED, "colours"]

    replacement = config.Section(config.FEED, "feed, again", dict, lambda data: {})
    config.section_register(replacement)
    assert list(config.SECTIONS) == [config.MARKET_HOURS, config.FEED, "colours"]
    assert config.section_of(config.FEED) is replacement
