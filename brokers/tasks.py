from celery import shared_task

from brokers import services


@shared_task(name="brokers.tasks.expire_sessions")
def expire_sessions() -> int:
    return len(services.broker_sessions_expire_due())


@shared_task(name="brokers.tasks.remind_logins")
def remind_logins() -> int:
    return services.broker_login_reminders_send()


@shared_task(name="brokers.tasks.renew_sessions")
def renew_sessions() -> dict:
    return services.broker_sessions_renew()
