"""System control and runtime configuration routes (admin)."""

urlpatterns: list = []
