"""Market-data routes, one module per area; each defines `urlpatterns`."""
