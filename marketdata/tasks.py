"""Market data's Celery tasks: they parse and delegate."""

from celery import shared_task
from django.conf import settings

from algoterm.tasking import task_send
from marketdata.instruments import masters
from marketdata.models import InstrumentMasterLoad


@shared_task(name="marketdata.tasks.refresh_instrument_masters")
def refresh_instrument_masters() -> list[str]:
    """Before the open: one refresh per broker master, each retried on its own."""
    brokers = masters.instrument_master_brokers_due()
    for broker in brokers:
        task_send(name="marketdata.tasks.refresh_instrument_master", args=(broker, 1))
    return brokers


@shared_task(name="marketdata.tasks.refresh_instrument_master")
def refresh_instrument_master(broker: str, attempt: int = 1) -> str:
    load = masters.instrument_master_refresh(broker=broker, attempt=attempt)
    if load.outcome != InstrumentMasterLoad.Outcome.LOADED and attempt < settings.INSTRUMENT_MASTER_RETRIES:
        task_send(
            name="marketdata.tasks.refresh_instrument_master",
            args=(broker, attempt + 1),
            countdown=settings.INSTRUMENT_MASTER_RETRY_SECONDS,
        )
    return load.outcome
