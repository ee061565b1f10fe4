"""System control and runtime configuration routes (admin)."""

from django.urls import path

from algoterm import system_api

urlpatterns = [
    path("system/status", system_api.SystemStatusApi.as_view(), name="system-status"),
    path("system/mode", system_api.SystemModeApi.as_view(), name="system-mode"),
    path("system/start", system_api.SystemStartApi.as_view(), name="system-start"),
    path("system/stop", system_api.SystemStopApi.as_view(), name="system-stop"),
]
