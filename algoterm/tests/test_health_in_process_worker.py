"""Embedded mode: health asks the probe the composition root registers when it starts the in-process worker; with no
probe registered no worker was started, so workers are down."""

from __future__ import annotations

import pytest

from algoterm import health


@pytest.fixture
def embedded(settings, monkeypatch):
    settings.EMBEDDED = True
    monkeypatch.setattr(health, "_in_process_worker_probe", None)


def test_without_a_registered_probe_the_in_process_worker_is_down(embedded):
    workers = health.check_workers(broker_up=True)

    assert workers.status == "down" and workers.detail == "in-process worker is not running"
    assert workers.info == {"mode": "in-process", "count": 0}


@pytest.mark.parametrize("alive", [True, False])
def test_the_registered_probe_says_whether_the_in_process_worker_runs(embedded, alive):
    health.in_process_worker_probe_register(lambda: alive)

    workers = health.check_workers(broker_up=True)

    assert workers.is_up is alive
    assert workers.info == {"mode": "in-process", "count": 1 if alive else 0}
