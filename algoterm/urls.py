from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from algoterm import views

api_patterns = [
    path("", include("accounts.urls")),
    path("", include("brokers.urls")),
    path("", include("marketdata.urls")),
    path("", include("orders.urls")),
    path("", include("rms.urls")),
    path("", include("strategies.urls")),
    path("", include("billing.urls")),
    path("", include("algoterm.console.urls")),
    path("health", views.HealthApi.as_view(), name="health"),
    path("version", views.VersionApi.as_view(), name="version"),
    path("schema", SpectacularAPIView.as_view(), name="schema"),
    re_path(r"^.*$", views.ApiNotFound.as_view()),
]

urlpatterns = [
    path("api/", include(api_patterns)),
    path("docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("redoc", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("admin/", admin.site.urls),
]

handler400 = "algoterm.api.errors.handler400"
handler403 = "algoterm.api.errors.handler403"
handler404 = "algoterm.api.errors.handler404"
handler500 = "algoterm.api.errors.handler500"
