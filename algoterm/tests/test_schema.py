import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def schema(django_db_blocker):
    with django_db_blocker.unblock():
        response = Client().get("/api/schema", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def test_schema_lists_the_foundation_routes(schema):
    for route in (
        "/api/auth/register",
        "/api/auth/login",
        "/api/auth/refresh",
        "/api/auth/logout",
        "/api/users/me",
        "/api/users/{user_id}",
        "/api/notifications",
        "/api/notifications/{notification_id}/read",
        "/api/health",
        "/api/version",
    ):
        assert route in schema["paths"], route


def test_every_operation_documents_its_errors_with_the_envelope(schema):
    error_ref = "#/components/schemas/Error"
    for route, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "500" in responses and "429" in responses, (method, route)
            if operation.get("security") and {"bearerAuth": []} in operation["security"]:
                assert "401" in responses, (method, route)
            if "{" in route:
                assert "404" in responses, (method, route)
            if method in ("post", "patch", "put"):
                assert "400" in responses, (method, route)
            assert responses["500"]["content"]["application/json"]["schema"]["$ref"] == error_ref


def test_list_routes_document_the_pagination_shape(schema):
    ok = schema["paths"]["/api/notifications"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    component = schema["components"]["schemas"][ok["$ref"].rsplit("/", 1)[1]]
    assert set(component["required"]) == {"items", "page", "page_size", "total", "total_pages"}
    names = {parameter["name"] for parameter in schema["paths"]["/api/notifications"]["get"]["parameters"]}
    assert {"page", "page_size", "unread"} <= names


def test_swagger_ui_is_served_without_the_internet():
    response = Client().get("/docs")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html and "cdn" not in html.lower()


def _declared(schema, method: str, route: str) -> set[str]:
    return set(schema["paths"][route][method]["responses"])


def test_the_statuses_routes_answer_are_the_ones_their_schema_declares(schema, trader_client):
    """The status rule a generated client and the schema-driven fuzzer rely on: a wrong password is a declared 401, a
    bad query a declared 400, another user's or a missing id in the path or the body a declared 404, an order's
    refusal a declared 422; every body a declared 413."""
    from django.test import Client

    wrong_password = Client().post(
        "/api/auth/login", {"email": "nobody@example.com", "password": "wrong-password-1"}, "application/json"
    )
    assert wrong_password.status_code == 401
    assert "401" in _declared(schema, "post", "/api/auth/login")
    assert "401" in _declared(schema, "post", "/api/auth/refresh")

    bad_query = trader_client.get("/api/candles", {"symbol": "NSE:INFY", "interval": "7m"})
    assert bad_query.status_code == 400
    assert "400" in _declared(schema, "get", "/api/candles")

    missing_order = trader_client.patch("/api/orders/ord_missing", {"quantity": 2}, format="json")
    assert missing_order.status_code == 404
    assert "404" in _declared(schema, "patch", "/api/orders/{order_id}")
    missing_account = trader_client.post(
        "/api/positions/squareoff", {"account_id": "acc_missing", "symbol": "NSE:INFY"}, format="json"
    )
    assert missing_account.status_code == 404
    assert "404" in _declared(schema, "post", "/api/positions/squareoff")
    assert {"404", "409", "422"} <= _declared(schema, "post", "/api/orders")

    for route, operations in schema["paths"].items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                assert {"400", "413"} <= set(operation["responses"]), (method, route)
            if any(parameter["in"] == "query" for parameter in operation.get("parameters", [])):
                assert "400" in operation["responses"], (method, route)


def test_ids_a_call_creates_link_to_the_calls_that_take_them(schema):
    """OpenAPI links let a client (and the stateful fuzzer) follow a created order or strategy to its own routes."""
    operation_ids = {
        (method, route): operation["operationId"]
        for route, operations in schema["paths"].items()
        for method, operation in operations.items()
    }
    placed = schema["paths"]["/api/orders"]["post"]["responses"]["201"]["links"]
    for method in ("get", "patch", "delete"):
        link = placed[operation_ids[(method, "/api/orders/{order_id}")]]
        assert link["parameters"] == {"order_id": "$response.body#/id"}

    started = schema["paths"]["/api/strategies/{strategy_id}/start"]["post"]["responses"]["201"]["links"]
    backtest = started[operation_ids[("get", "/api/strategies/{strategy_id}/backtests/{backtest_id}")]]
    assert backtest["parameters"] == {
        "backtest_id": "$response.body#/backtest/id",
        "strategy_id": "$request.path.strategy_id",
    }
    for operation in (link for links in _all_links(schema) for link in links.values()):
        assert operation["operationId"] in operation_ids.values()


def _all_links(schema):
    for operations in schema["paths"].values():
        for operation in operations.values():
            for response in operation["responses"].values():
                if "links" in response:
                    yield response["links"]


def test_times_of_day_are_documented_as_the_api_writes_them(schema):
    """A strategy's entry and exit times answer "09:20:00" (IST, no offset). JSON Schema's `format: time` demands an
    offset, so every strategy answer violated its own schema; the schema now states the shape the API writes."""
    import re
    from datetime import time

    from rest_framework import serializers

    written = serializers.TimeField().to_representation(time(9, 20))
    for component in ("StrategyOutput", "StrategyDetailOutput"):
        properties = schema["components"]["schemas"][component]["properties"]
        for name in ("entry_time", "exit_time"):
            assert "format" not in properties[name], (component, name)
            assert re.fullmatch(properties[name]["pattern"], written), (component, name)
            assert re.fullmatch(properties[name]["pattern"], "15:15")
            assert not re.fullmatch(properties[name]["pattern"], "25:00")


def test_every_query_parameter_fits_the_request_line_the_server_accepts(schema):
    """A query value as long as its schema allows, in 4-byte characters percent-encoded (12 bytes each), stays under
    the HTTP server's request-head limit: past it the server answers a plain-text 400 the API cannot shape (the fuzzer
    found one on /api/quotes, whose symbols were allowed 8,000 characters)."""
    worst_case_bytes_per_character = 12
    for route, operations in schema["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] != "query":
                    continue
                max_length = parameter.get("schema", {}).get("maxLength", 0)
                assert max_length * worst_case_bytes_per_character <= 48_000, (method, route, parameter["name"])
