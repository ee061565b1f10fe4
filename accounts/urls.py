from django.urls import path

from accounts import api

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
]
