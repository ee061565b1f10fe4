"""Operations routes: component health and Prometheus metrics."""

from django.urls import path

from algoterm import ops_api

urlpatterns = [
    path("health/components", ops_api.HealthComponentsApi.as_view(), name="health-components"),
    path("metrics", ops_api.MetricsApi.as_view(), name="metrics"),
]
