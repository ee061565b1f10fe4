from django.urls import path

from accounts import admin_api, api

urlpatterns = [
    path("auth/register", api.RegisterApi.as_view(), name="auth-register"),
    path("auth/login", api.LoginApi.as_view(), name="auth-login"),
    path("auth/refresh", api.RefreshApi.as_view(), name="auth-refresh"),
    path("auth/logout", api.LogoutApi.as_view(), name="auth-logout"),
    path("users/me", api.MeApi.as_view(), name="users-me"),
    path("users/<str:user_id>", api.UserDetailApi.as_view(), name="users-detail"),
    path("notifications", api.NotificationListApi.as_view(), name="notifications-list"),
    path("notifications/read-all", api.NotificationReadAllApi.as_view(), name="notifications-read-all"),
    path("notifications/<str:notification_id>/read", api.NotificationReadApi.as_view(), name="notifications-read"),
    path("admin/users", admin_api.AdminUserListApi.as_view(), name="admin-users"),
    path(
        "admin/users/<str:user_id>/deactivate", admin_api.AdminUserDeactivateApi.as_view(), name="admin-user-deactivate"
    ),
    path("admin/payments", admin_api.AdminPaymentListApi.as_view(), name="admin-payments"),
    path("admin/logs", admin_api.AdminAuditListApi.as_view(), name="admin-logs"),
]
