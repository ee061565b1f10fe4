from marketdata.api import instruments, options, quotes

urlpatterns = [*instruments.urlpatterns, *quotes.urlpatterns, *options.urlpatterns]
