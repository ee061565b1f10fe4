from django.urls import path

from rms import api

urlpatterns = [
    path("rms/config", api.RiskConfigApi.as_view(), name="rms-config"),
    path("rms/status", api.RmsStatusApi.as_view(), name="rms-status"),
    path("rms/squareoff", api.RmsSquareOffApi.as_view(), name="rms-squareoff"),
]
