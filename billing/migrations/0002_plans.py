"""The plans as data: a 14-day trial and the monthly and yearly plans. Their Razorpay plan ids are filled in by
`manage.py billing_sync_plans`; operators change limits and prices in the admin."""

from django.db import migrations

PLANS = [
    {
        "code": "trial",
        "name": "Trial",
        "description": "14 days of everything, no card needed",
        "price_paise": 0,
        "period": "daily",
        "interval": 14,
        "total_count": 1,
        "trial_days": 14,
        "is_trial": True,
        "max_broker_accounts": 3,
        "max_running_strategies": 3,
        "live_trading": True,
        "api_requests_per_minute": 300,
        "websocket_symbols": 100,
        "sort_order": 0,
    },
    {
        "code": "monthly",
        "name": "Monthly",
        "description": "Billed every month",
        "price_paise": 99_900,
        "period": "monthly",
        "interval": 1,
        "total_count": 120,
        "trial_days": 0,
        "is_trial": False,
        "max_broker_accounts": 5,
        "max_running_strategies": 10,
        "live_trading": True,
        "api_requests_per_minute": 600,
        "websocket_symbols": 200,
        "sort_order": 1,
    },
    {
        "code": "yearly",
        "name": "Yearly",
        "description": "Billed every year: two months free",
        "price_paise": 999_000,
        "period": "yearly",
        "interval": 1,
        "total_count": 10,
        "trial_days": 0,
        "is_trial": False,
        "max_broker_accounts": 10,
        "max_running_strategies": 25,
        "live_trading": True,
        "api_requests_per_minute": 1200,
        "websocket_symbols": 500,
        "sort_order": 2,
    },
]


def create_plans(apps, schema_editor):
    Plan = apps.get_model("billing", "Plan")
    for plan in PLANS:
        Plan.objects.update_or_create(code=plan["code"], defaults=plan)


def remove_plans(apps, schema_editor):
    apps.get_model("billing", "Plan").objects.filter(code__in=[plan["code"] for plan in PLANS]).delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunPython(create_plans, remove_plans)]
