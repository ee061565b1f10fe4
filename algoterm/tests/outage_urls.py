"""The real routes plus views that hit a dependency outage on purpose: `?kind=` picks the exception."""

import kombu.exceptions
import redis.exceptions
from django import db
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.views import APIView

from algoterm.urls import urlpatterns as real_urlpatterns

OUTAGES = {
    "redis-refused": redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
    "redis-timeout": redis.exceptions.TimeoutError("Timeout reading from 127.0.0.1:6379"),
    "redis-loading": redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
    "db-down": db.OperationalError("connection to server at 127.0.0.1, port 5432 failed: Connection refused"),
    "db-gone": db.InterfaceError("connection already closed"),
    "broker-down": kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
}


class OutageApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def get(self, request):
        raise OUTAGES[request.query_params["kind"]]


def outage_django_view(request):
    raise OUTAGES[request.GET["kind"]]


urlpatterns = [
    path("outage/api", OutageApi.as_view()),
    path("outage/django", outage_django_view),
    *real_urlpatterns,
]
