"""The Celery application. Tasks live in each app's tasks.py and only parse ids and call a service."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "algoterm.settings")

app = Celery("algoterm")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
