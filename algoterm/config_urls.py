"""Runtime configuration routes (admin)."""

from django.urls import path

from algoterm import config_api

urlpatterns = [
    path("config", config_api.ConfigListApi.as_view(), name="config"),
    path("config/export", config_api.ConfigExportApi.as_view(), name="config-export"),
    path("config/import", config_api.ConfigImportApi.as_view(), name="config-import"),
    path("config/<str:section>", config_api.ConfigSectionApi.as_view(), name="config-section"),
]
