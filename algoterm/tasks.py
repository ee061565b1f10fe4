from celery import shared_task

from algoterm.health import heartbeat_record


@shared_task(name="algoterm.tasks.heartbeat", ignore_result=True, expires=30)
def heartbeat() -> None:
    heartbeat_record()
