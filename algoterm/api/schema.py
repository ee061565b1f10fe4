"""OpenAPI generation: every operation documents the error envelope for the statuses it can answer."""

from __future__ import annotations

import re

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerFieldExtension
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.plumbing import force_instance
from drf_spectacular.utils import OpenApiResponse
from rest_framework.permissions import AllowAny

from algoterm.api.serializers import ErrorSerializer

_DESCRIPTIONS = {
    "400": "Invalid input: `error_code` VALIDATION_ERROR, `errors` by field.",
    "401": "AUTH_REQUIRED or AUTH_INVALID.",
    "403": "PERMISSION_DENIED, ACCOUNT_DEACTIVATED or PLAN_REQUIRED.",
    "404": "NOT_FOUND: missing, or owned by another user.",
    "409": "IDEMPOTENCY_KEY_REUSED, or CONFLICT while the first request with this Idempotency-Key is in flight.",
    "413": "PAYLOAD_TOO_LARGE: the body is over the route's limit (`max_bytes`).",
    "415": "UNSUPPORTED_MEDIA_TYPE: send application/json.",
    "422": "RISK_REJECTED (`reason` names the rule) or ORDER_REJECTED by the broker (`order_id`).",
    "429": "RATE_LIMITED, with a Retry-After header.",
    "500": "INTERNAL_ERROR.",
    "503": "SERVICE_UNAVAILABLE: a dependency (database, Redis, task queue) is down; retry after Retry-After.",
}


# Operation ids a client generator turns into method names. The rule (`AutoSchema.get_operation_id`) names
# collections `_list`, `_create`, single resources `_get`, `_update`, `_replace`, `_delete`, and an action route by its
# last word; these read better said the way a trader would.
_OPERATION_IDS = {
    ("POST", "/api/orders"): "orders_place",
    ("PATCH", "/api/orders/{order_id}"): "orders_modify",
    ("DELETE", "/api/orders/{order_id}"): "orders_cancel",
    ("POST", "/api/orders/bulk"): "orders_bulk_place",
    ("POST", "/api/rms/config"): "rms_config_update",
    ("GET", "/api/positions"): "positions_list",
    ("GET", "/api/admin/payments"): "admin_payments_list",
    ("DELETE", "/api/brokers/{account_id}"): "brokers_disconnect",
    ("GET", "/api/strategies/{strategy_id}/backtests/{backtest_id}/chart.png"): "strategies_backtests_chart",
}

_REQUEST_ID_HEADER = {
    "schema": {"type": "string"},
    "description": "This request's id (echoed if the client sent one); error bodies carry it as `request_id`.",
}
_RETRY_AFTER_HEADER = {"schema": {"type": "integer", "minimum": 1}, "description": "Seconds to wait before retrying."}
_IDEMPOTENT_REPLAYED_HEADER = {
    "schema": {"type": "string", "enum": ["true"]},
    "description": "Present when this is the stored first response to the same Idempotency-Key and body.",
}


_BODY_METHODS = ("POST", "PUT", "PATCH")

# What a route's own rules add to the statuses its shape implies (see `AutoSchema._error_statuses`).
_ROUTE_STATUSES: dict[tuple[str, str], tuple[str, ...]] = {
    # a wrong password or refresh token, or one of a deactivated account
    ("POST", "/api/auth/login"): ("401", "403"),
    ("POST", "/api/auth/refresh"): ("401", "403"),
}


# Input that names something that may not exist: an id, or an instrument (answered 404 when nothing is listed on it).
_RESOURCE_NAMES = ("symbol", "symbols", "underlying")


def _names_a_resource(names: list[str]) -> bool:
    return any(name.endswith(("_id", "_ids")) or name in _RESOURCE_NAMES for name in names)


def _field_names(serializer) -> list[str]:
    from rest_framework import serializers

    if isinstance(serializer, serializers.ListSerializer):
        serializer = serializer.child
    if not isinstance(serializer, serializers.Serializer):
        return []
    names = []
    for name, field in serializer.fields.items():
        if field.read_only:
            continue
        names.append(name)
        if isinstance(field, serializers.ListField):
            field = field.child
        names.extend(_field_names(field))
    return names


class AutoSchema(SpectacularAutoSchema):
    def get_override_parameters(self):
        """A list route (`ListApi`) documents its query parameters from its filter serializer, the one that parses
        them, so the two cannot drift; a parameter the route's `@extend_schema` names as well refines that one (a
        description, an enum)."""
        explicit = super().get_override_parameters()
        filters = getattr(self.view, "filter_serializer_class", None)
        if filters is None or self.method != "GET":
            return explicit
        return [filters, *explicit]

    def _process_override_parameters(self, direction="request"):
        parameters = super()._process_override_parameters(direction)
        if getattr(self.view, "filter_serializer_class", None) is not None:
            # Where the paginator documents the page (a plain page of items), its words stand.
            for paged in self._get_pagination_parameters():
                parameters.pop((paged["name"], paged["in"]), None)
        return parameters

    def _error_statuses(self) -> list[str]:
        """The error statuses this operation can answer, from its shape; the schema-driven fuzzing run proves them.

        400 wherever there is input to refuse (a body, a query parameter, a path parameter other than an id);
        413 and 415 wherever a body can be sent;
        401 wherever a token is read (a bad one is refused even on a public route) or a credential is checked;
        403 wherever a role, an active account or a plan is required;
        404 wherever the request names a resource (a path parameter, an id or an instrument in its body or query);
        409 and 422 wherever an Idempotency-Key is taken (a reused key or one still in flight; the risk engine's or
        the broker's refusal of the order it sends);
        what the route's own rules add (`_ROUTE_STATUSES`); 429, 500 and 503 everywhere.
        """
        has_body = self.method in _BODY_METHODS
        parameters = self._get_parameters()
        query = [parameter for parameter in parameters if parameter.get("in") == "query"]
        checked_in_path = [
            parameter
            for parameter in parameters
            if parameter.get("in") == "path" and not parameter["name"].endswith("_id")
        ]
        statuses = set(_ROUTE_STATUSES.get((self.method, self.path), ()))
        if has_body or query or checked_in_path:
            statuses.add("400")
        if has_body:
            statuses |= {"413", "415"}
        public = any(isinstance(permission, AllowAny) for permission in self.view.get_permissions())
        if getattr(self.view, "authentication_classes", None) or not public:
            statuses.add("401")
        if not public:
            statuses.add("403")
        query_names = [parameter["name"] for parameter in query]
        if "{" in self.path or _names_a_resource([*query_names, *self._request_field_names()]):
            statuses.add("404")
        if any(getattr(parameter, "name", None) == "Idempotency-Key" for parameter in self.get_override_parameters()):
            statuses |= {"409", "422"}  # an order goes out: the key's conflicts, the risk engine's or broker's refusal
        statuses |= {"429", "500", "503"}  # any route may be throttled or meet a database or Redis outage
        return sorted(statuses)

    def _request_field_names(self) -> list[str]:
        """Every field name of the request body, nested ones included (a bulk order's legs name their account)."""
        if self.method not in _BODY_METHODS:
            return []
        return _field_names(force_instance(self.get_request_serializer()))

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for status in self._error_statuses():
            if status not in responses:
                responses[status] = self._get_response_for_code(
                    OpenApiResponse(ErrorSerializer, description=_DESCRIPTIONS[status]), status, direction=direction
                )
        return responses

    def get_operation_id(self) -> str:
        explicit = _OPERATION_IDS.get((self.method, self.path))
        if explicit:
            return explicit
        segments = [segment for segment in self.path.split("/") if segment and segment != "api"]
        words = [segment.split(".")[0].replace("-", "_") for segment in segments if not segment.startswith("{")]
        words = words or ["root"]
        if self.method == "GET":
            return "_".join([*words, "list" if self._is_list_view() else "get"])
        if self.method == "POST" and len(words) > 1 and not hasattr(self.view, "get"):
            return "_".join(words)  # an action route: auth_login, strategies_start, positions_squareoff
        verb = {"POST": "create", "PUT": "replace", "PATCH": "update", "DELETE": "delete"}[self.method]
        return "_".join([*words, verb])

    def _get_serializer_field_meta(self, field, direction):
        meta = super()._get_serializer_field_meta(field, direction)
        if direction == "request" and getattr(field.parent, "partial", False):
            # A PATCH changes only what it sends: a default would make a generated client reset what it left out.
            meta.pop("default", None)
        return meta

    def _get_response_headers_for_code(self, status_code, direction="response"):
        headers = super()._get_response_headers_for_code(status_code, direction)
        headers = dict(headers or {})
        headers.setdefault("X-Request-ID", _REQUEST_ID_HEADER)
        idempotent = any(
            getattr(parameter, "name", None) == "Idempotency-Key" for parameter in self.get_override_parameters()
        )
        if str(status_code) in ("429", "503") or (idempotent and str(status_code) == "409"):
            headers.setdefault("Retry-After", _RETRY_AFTER_HEADER)
        if idempotent:
            headers.setdefault("Idempotent-Replayed", _IDEMPOTENT_REPLAYED_HEADER)
        return headers


# A time of day as the API reads and writes it (IST, no offset): "09:20" or "09:20:00". JSON Schema's `format: time`
# is RFC 3339's full-time, which requires an offset, so every answer would violate its own schema.
_TIME_OF_DAY = r"^([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,6})?)?$"


class TimeOfDayField(OpenApiSerializerFieldExtension):
    target_class = "rest_framework.fields.TimeField"
    match_subclasses = True

    def map_serializer_field(self, auto_schema, direction):
        return {"type": "string", "pattern": _TIME_OF_DAY, "example": "09:20"}


class AccessTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.AccessTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}


# --- OpenAPI links: the id a call creates or lists flows into the calls that take it --------------------------------

_PATH_PARAMETER = re.compile(r"\{(\w+)\}")
# Where a collection's ids come from besides `POST <collection>` (its `id`) and `GET <collection>` (its first item).
_PRODUCERS_ELSEWHERE: dict[str, list[tuple[str, str, str]]] = {
    "/api/brokers": [("/api/brokers/connect", "post", "/id"), ("/api/brokers/accounts", "get", "/items/0/id")],
    "/api/users": [("/api/users/me", "get", "/id"), ("/api/admin/users", "get", "/items/0/id")],
    "/api/strategies/{strategy_id}/backtests": [("/api/strategies/{strategy_id}/start", "post", "/backtest/id")],
    "/api/signals": [("/api/strategies/{strategy_id}/webhook", "post", "/signal_id")],
}


def openapi_links(result, generator, request, public):
    """drf-spectacular postprocessing hook: OpenAPI links from each call that creates or lists a resource to every
    call that takes its id in the path (POST /api/orders -> GET, PATCH, DELETE /api/orders/{order_id}), so a client
    or a stateful fuzzer can follow them. Other path parameters of the target come from the producer's own path."""
    paths = result.get("paths", {})
    components = result.get("components", {}).get("schemas", {})
    producers_of: dict[str, list[tuple[str, dict, str]]] = {}  # an id's name -> (path, operation, pointer)
    for path, operations in paths.items():
        for parameter in _PATH_PARAMETER.findall(path):
            collection = path[: path.index("{" + parameter + "}")].rstrip("/")
            producers = [(collection, "post", "/id"), (collection, "get", "/items/0/id")]
            for producer_path, method, pointer in [*producers, *_PRODUCERS_ELSEWHERE.get(collection, [])]:
                producer = paths.get(producer_path, {}).get(method)
                if producer is None:
                    continue
                if not _PATH_PARAMETER.search(producer_path):
                    producers_of.setdefault(parameter, []).append((producer_path, producer, pointer))
                for target_method, target in operations.items():
                    parameters = _link_parameters(path, parameter, pointer, producer_path)
                    if parameters is None:
                        continue
                    _link(producer, components, pointer, target, {"parameters": parameters}, f"{target_method} {path}")
    # The same ids named in a request body (an order's account_id): merged into the generated body.
    for path, operations in paths.items():
        for target_method, target in operations.items():
            body = target.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            for name in _top_level_properties(body, components):
                for _producer_path, producer, pointer in producers_of.get(name, []):
                    link = {"requestBody": {name: f"$response.body#{pointer}"}}
                    _link(producer, components, pointer, target, link, f"{target_method} {path}")
    return result


def _link(producer: dict, components: dict, pointer: str, target: dict, link: dict, label: str) -> None:
    if "operationId" not in target:
        return
    for response in _success_responses(producer, components, pointer):
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", target["operationId"])
        response.setdefault("links", {})[name] = {
            "operationId": target["operationId"],
            **link,
            "description": f"{label.upper().split(' ')[0]} {label.split(' ', 1)[1]} with the id from this answer",
        }


def _top_level_properties(schema: dict, components: dict) -> list[str]:
    while "$ref" in schema:
        schema = components.get(schema["$ref"].rsplit("/", 1)[-1], {})
    return list(schema.get("properties", {}))


def _link_parameters(path: str, parameter: str, pointer: str, producer_path: str) -> dict[str, str] | None:
    parameters = {parameter: f"$response.body#{pointer}"}
    for other in _PATH_PARAMETER.findall(path):
        if other == parameter:
            continue
        if "{" + other + "}" not in producer_path:
            return None  # the producer's call does not know it
        parameters[other] = f"$request.path.{other}"
    return parameters


def _success_responses(operation: dict, components: dict, pointer: str) -> list[dict]:
    """The operation's 2xx responses whose JSON body has a value at `pointer`."""
    found = []
    for status, response in operation.get("responses", {}).items():
        if not status.startswith("2"):
            continue
        schema = response.get("content", {}).get("application/json", {}).get("schema")
        if schema is not None and _schema_has_pointer(schema, pointer.strip("/").split("/"), components):
            found.append(response)
    return found


def _schema_has_pointer(schema: dict, steps: list[str], components: dict) -> bool:
    while "$ref" in schema:
        schema = components.get(schema["$ref"].rsplit("/", 1)[-1], {})
    if not steps:
        return True
    for option in schema.get("allOf", []) + schema.get("oneOf", []) + schema.get("anyOf", []):
        if _schema_has_pointer(option, steps, components):
            return True
    step, rest = steps[0], steps[1:]
    if step.isdigit():
        return "items" in schema and _schema_has_pointer(schema["items"], rest, components)
    prop = schema.get("properties", {}).get(step)
    return prop is not None and _schema_has_pointer(prop, rest, components)


def nullable_references(result, generator, request, public):
    """drf-spectacular postprocessing hook. A nullable nested object comes out as `{"allOf": [ref], "nullable": true}`,
    and OpenAPI 3.0.3 lets `nullable` act only beside a `type`: strict validators and generated clients then refuse
    the null we answer. Say it as spectacular says nullable enums: one of the object or null."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    rewritten = False

    def visit(node):
        nonlocal rewritten
        if isinstance(node, list):
            for item in node:
                visit(item)
            return
        if not isinstance(node, dict):
            return
        options = node.get("allOf")
        if node.get("nullable") and isinstance(options, list) and len(options) == 1 and "$ref" in options[0]:
            node["oneOf"] = [node.pop("allOf")[0], {"$ref": "#/components/schemas/NullEnum"}]
            rewritten = True
        for value in node.values():
            visit(value)

    visit(result.get("paths", {}))
    visit(schemas)
    if rewritten:
        schemas.setdefault("NullEnum", {"enum": [None]})
    return result
