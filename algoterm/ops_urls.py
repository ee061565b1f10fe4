"""Operations routes: component health and Prometheus metrics."""

urlpatterns: list = []
