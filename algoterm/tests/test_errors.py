import logging

import pytest
from django.test import Client

from algoterm.api.errors import ERROR_REGISTRY, ErrorCode, flatten_errors
from algoterm.testing import assert_error

pytestmark = pytest.mark.django_db


def test_every_registry_code_has_a_status_and_message():
    assert set(ERROR_REGISTRY) == set(ErrorCode)
    for status, message in ERROR_REGISTRY.values():
        assert 400 <= status < 600 and message


def test_malformed_json_is_a_validation_error(api_client):
    response = api_client.post("/api/auth/login", data="{not json", content_type="application/json")
    body = assert_error(response, 400, "VALIDATION_ERROR")
    assert "JSON" in body["detail"]


def test_non_json_body_is_unsupported_media_type(api_client):
    response = api_client.post("/api/auth/login", data="email=a", content_type="application/x-www-form-urlencoded")
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")


def test_wrong_method_is_405(api_client):
    body = assert_error(api_client.get("/api/auth/login"), 405, "METHOD_NOT_ALLOWED")
    assert "GET" in body["detail"]


def test_unknown_api_path_is_404_envelope(api_client):
    assert_error(api_client.get("/api/does-not-exist"), 404, "NOT_FOUND")
    assert_error(api_client.delete("/api/does/not/exist"), 404, "NOT_FOUND")


def test_unknown_non_api_path_is_404_envelope():
    assert_error(Client().get("/nowhere"), 404, "NOT_FOUND")


def test_permission_denied_is_403(trader_client, trader):
    assert_error(
        trader_client.patch(f"/api/users/{trader.pk}", {"role": "admin"}, format="json"), 403, "PERMISSION_DENIED"
    )


@pytest.mark.urls("algoterm.tests.error_urls")
@pytest.mark.parametrize("url", ["/boom/api", "/boom/django"])
def test_uncaught_exceptions_are_500_envelopes_that_leak_nothing(url, caplog):
    client = Client(raise_request_exception=False)
    with caplog.at_level(logging.ERROR):
        response = client.get(url, HTTP_X_REQUEST_ID="trace-500")

    body = assert_error(response, 500, "INTERNAL_ERROR")
    assert body["request_id"] == "trace-500"
    assert "secret" not in response.content.decode() and "internal detail" not in response.content.decode()
    assert any(record.levelno == logging.ERROR for record in caplog.records)


def test_request_id_is_echoed_or_generated(api_client):
    assert api_client.get("/api/version", HTTP_X_REQUEST_ID="abc-123")["X-Request-ID"] == "abc-123"
    generated = api_client.get("/api/version")["X-Request-ID"]
    assert len(generated) == 32
    assert api_client.get("/api/version", HTTP_X_REQUEST_ID="bad id\nwith newline")["X-Request-ID"] != "bad id"


def test_security_headers(api_client):
    response = api_client.get("/api/version")
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cache-Control"] == "no-store"


def test_nested_validation_errors_are_flattened_to_dotted_fields():
    nested = {"legs": [{}, {"strike": ["Required."]}], "non_field_errors": ["Bad combination."], "name": ["Blank."]}
    assert flatten_errors(nested) == {
        "legs.1.strike": ["Required."],
        "non_field_errors": ["Bad combination."],
        "name": ["Blank."],
    }
