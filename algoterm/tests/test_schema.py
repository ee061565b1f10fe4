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
