"""Runtime configuration routes (admin)."""

urlpatterns: list = []
