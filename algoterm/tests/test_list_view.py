"""The list-route base: the filter serializer's errors in the envelope, the selector's input, the page shape."""

import pytest
from django.test import Client
from django.urls import path
from rest_framework import serializers
from rest_framework.permissions import AllowAny

from algoterm.api.serializers import InputSerializer
from algoterm.api.views import ListApi
from algoterm.testing import assert_error

ROWS = [{"n": n, "colour": "red" if n % 2 else "blue"} for n in range(1, 8)]  # 4 red, 3 blue
SELECTOR_CALLS: list[dict] = []


class ColourQuery(InputSerializer):
    colour = serializers.ChoiceField(choices=["red", "blue"], required=False)
    page = serializers.IntegerField(required=False)
    page_size = serializers.IntegerField(required=False)


class RowOutput(serializers.Serializer):
    n = serializers.IntegerField()
    colour = serializers.CharField()


class _Public(ListApi):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    output_serializer_class = RowOutput


class ColourListApi(_Public):
    filter_serializer_class = ColourQuery

    def list_selector(self, *, user, filters):
        SELECTOR_CALLS.append({"filters": filters, "kwargs": dict(self.kwargs)})
        return [row for row in ROWS if filters.get("colour") in (None, row["colour"])]

    def list_extra(self, *, user, filters, items):
        return {"reds": sum(1 for row in items if row["colour"] == "red")}


class UnfilteredListApi(_Public):
    def list_selector(self, *, user, filters):
        SELECTOR_CALLS.append({"filters": filters, "kwargs": dict(self.kwargs)})
        return ROWS


class NoSelectorListApi(_Public):
    pass


urlpatterns = [
    path("rows", ColourListApi.as_view()),
    path("shelves/<str:shelf>/rows", UnfilteredListApi.as_view()),
    path("broken", NoSelectorListApi.as_view()),
]

pytestmark = pytest.mark.urls(__name__)


@pytest.fixture(autouse=True)
def _fresh_calls():
    SELECTOR_CALLS.clear()


@pytest.fixture
def client():
    return Client(raise_request_exception=False)


def test_a_bad_filter_answers_the_envelope_before_the_selector_runs(client):
    body = assert_error(client.get("/rows?colour=green"), 400, "VALIDATION_ERROR")
    assert list(body["errors"]) == ["colour"]
    body = assert_error(client.get("/rows?color=red"), 400, "VALIDATION_ERROR")
    assert body["errors"] == {"color": ["Unknown field."]}
    body = assert_error(client.get("/rows?page=two"), 400, "VALIDATION_ERROR")
    assert list(body["errors"]) == ["page"]
    assert SELECTOR_CALLS == []


def test_the_selector_gets_the_filters_without_the_page(client):
    response = client.get("/rows?colour=red&page=1&page_size=3")
    assert response.status_code == 200
    assert SELECTOR_CALLS == [{"filters": {"colour": "red"}, "kwargs": {}}]


def test_one_page_in_the_list_shape_with_the_extra_keys_beside_it(client):
    body = client.get("/rows?page=2&page_size=3").json()
    assert body == {
        "items": [{"n": 4, "colour": "blue"}, {"n": 5, "colour": "red"}, {"n": 6, "colour": "blue"}],
        "page": 2,
        "page_size": 3,
        "total": 7,
        "total_pages": 3,
        "reds": 4,
    }
    last = client.get("/rows?page=3&page_size=3").json()
    assert [row["n"] for row in last["items"]] == [7]
    past_the_end = client.get("/rows?page=9&page_size=3").json()
    assert past_the_end["items"] == [] and past_the_end["total"] == 7 and past_the_end["page"] == 9


def test_the_extra_keys_count_every_filtered_row_not_only_the_page(client):
    body = client.get("/rows?colour=red&page_size=1").json()
    assert body["total"] == 4 and body["total_pages"] == 4 and len(body["items"]) == 1
    assert body["reds"] == 4


def test_a_page_out_of_range_answers_the_envelope(client):
    body = assert_error(client.get("/rows?page_size=101"), 400, "VALIDATION_ERROR")
    assert list(body["errors"]) == ["page_size"]
    body = assert_error(client.get("/rows?page=0"), 400, "VALIDATION_ERROR")
    assert list(body["errors"]) == ["page"]


def test_without_a_filter_serializer_the_selector_gets_no_filters_and_the_path(client):
    body = client.get("/shelves/top/rows?page_size=5").json()
    assert SELECTOR_CALLS == [{"filters": {}, "kwargs": {"shelf": "top"}}]
    assert (body["total"], body["total_pages"], len(body["items"])) == (7, 2, 5)
    assert "reds" not in body


def test_a_list_route_without_a_selector_fails_loudly(client):
    assert_error(client.get("/broken"), 500, "INTERNAL_ERROR")
