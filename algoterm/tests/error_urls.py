"""The real routes plus views that fail on purpose, to prove the envelope for uncaught exceptions."""

from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.views import APIView

from algoterm.urls import urlpatterns as real_urlpatterns


class ExplodingApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def get(self, request):
        raise RuntimeError("secret internals: password=hunter2")


def exploding_django_view(request):
    raise KeyError("internal detail")


urlpatterns = [
    path("boom/api", ExplodingApi.as_view()),
    path("boom/django", exploding_django_view),
    *real_urlpatterns,
]
