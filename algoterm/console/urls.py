"""The operator console's routes (admin): system control, runtime configuration, operations (component health and
Prometheus metrics), and users, payments and the audit log."""

from django.urls import path

from algoterm.console import admin_api, config_api, ops_api, system_api

urlpatterns = [
    path("system/status", system_api.SystemStatusApi.as_view(), name="system-status"),
    path("system/mode", system_api.SystemModeApi.as_view(), name="system-mode"),
    path("system/start", system_api.SystemStartApi.as_view(), name="system-start"),
    path("system/stop", system_api.SystemStopApi.as_view(), name="system-stop"),
    path("config", config_api.ConfigListApi.as_view(), name="config"),
    path("config/export", config_api.ConfigExportApi.as_view(), name="config-export"),
    path("config/import", config_api.ConfigImportApi.as_view(), name="config-import"),
    path("config/<str:section>", config_api.ConfigSectionApi.as_view(), name="config-section"),
    path("health/components", ops_api.HealthComponentsApi.as_view(), name="health-components"),
    path("metrics", ops_api.MetricsApi.as_view(), name="metrics"),
    path("admin/users", admin_api.AdminUserListApi.as_view(), name="admin-users"),
    path(
        "admin/users/<str:user_id>/deactivate", admin_api.AdminUserDeactivateApi.as_view(), name="admin-user-deactivate"
    ),
    path("admin/payments", admin_api.AdminPaymentListApi.as_view(), name="admin-payments"),
    path("admin/logs", admin_api.AdminAuditListApi.as_view(), name="admin-logs"),
]
