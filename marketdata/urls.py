import importlib
import importlib.util

# Each area's module defines its own routes (instruments, quotes and candles, option chain).
urlpatterns = []
for area in ("instruments", "quotes", "options"):
    if importlib.util.find_spec(f"marketdata.api.{area}"):
        urlpatterns += importlib.import_module(f"marketdata.api.{area}").urlpatterns
