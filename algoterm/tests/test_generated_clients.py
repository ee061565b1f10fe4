"""A client generated from /api/schema just works: the schema is valid OpenAPI, a Python client
(openapi-python-client) generates every operation and parses every live response of a trader's day, and the
TypeScript types (openapi-typescript) accept those same responses."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.test import Client
from openapi_schema_validator import OAS30ReadValidator
from openapi_spec_validator import validate as validate_spec

from orders.tests.conftest import eager_tasks, instruments, publish_quote  # noqa: F401
from orders.tests.factories import EQUITY
from strategies.tests.conftest import day, nifty  # noqa: F401
from strategies.tests.factories import straddle_body
from strategies.tests.test_backtest_api import past_trading_days, store_spot_days

# The TypeScript toolchain a web or React Native client would use, installed outside the repository once per version.
OPENAPI_TYPESCRIPT = "openapi-typescript@7.13.0"
TYPESCRIPT = "typescript@5.9.3"
CLIENT_PACKAGE = "algoterm_client"


@pytest.fixture(scope="module")
def schema(django_db_blocker) -> dict:
    with django_db_blocker.unblock():
        response = Client().get("/api/schema", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


# --- the schema itself --------------------------------------------------------------------------------------------


def test_the_schema_is_valid_openapi(schema):
    validate_spec(schema)  # raises, naming the first error


def test_operation_ids_are_unique_verbs_a_client_developer_would_choose(schema):
    ids = {(method, path): operation["operationId"] for method, path, operation in operations(schema)}
    assert len(set(ids.values())) == len(ids)
    assert all(identifier.isidentifier() for identifier in ids.values()), ids
    assert not [i for i in ids.values() if i.endswith(("_retrieve", "_partial_update", "_destroy", "_create_create"))]
    expected = {
        ("POST", "/api/orders"): "orders_place",
        ("GET", "/api/orders"): "orders_list",
        ("GET", "/api/orders/{order_id}"): "orders_get",
        ("PATCH", "/api/orders/{order_id}"): "orders_modify",
        ("DELETE", "/api/orders/{order_id}"): "orders_cancel",
        ("GET", "/api/rms/config"): "rms_config_get",
        ("POST", "/api/rms/config"): "rms_config_update",
        ("POST", "/api/auth/login"): "auth_login",
        ("POST", "/api/auth/refresh"): "auth_refresh",
        ("PATCH", "/api/strategies/{strategy_id}"): "strategies_update",
        ("GET", "/api/strategies/{strategy_id}/backtests/{backtest_id}/chart.png"): "strategies_backtests_chart",
    }
    assert {key: ids[key] for key in expected} == expected


def test_patch_bodies_declare_no_defaults(schema):
    """A generated client fills in declared defaults: a rename must not also reset the product or re-entries."""
    for method, path, operation in operations(schema):
        if method != "PATCH" or "requestBody" not in operation:
            continue
        reference = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        component = schema["components"]["schemas"][reference.rsplit("/", 1)[1]]
        assert not component.get("required"), path
        defaults = {name for name, field in component["properties"].items() if "default" in field}
        assert not defaults, (path, defaults)


def test_the_error_model_and_the_response_headers_are_declared(schema):
    error = schema["components"]["schemas"]["Error"]["properties"]
    assert {"reason", "order_id", "order_ids", "available_expiries", "retry_after", "signal_id"} <= set(error)
    place = schema["paths"]["/api/orders"]["post"]["responses"]
    assert {"X-Request-ID", "Idempotent-Replayed"} <= set(place["201"]["headers"])
    for method, path, operation in operations(schema):
        for status, response in operation["responses"].items():
            assert "X-Request-ID" in response.get("headers", {}), (method, path, status)
            if status in ("429", "503"):
                assert "Retry-After" in response["headers"], (method, path, status)


# --- clients generated from it ------------------------------------------------------------------------------------


def generate_python_client(schema: dict, directory: Path):
    (directory / "openapi.json").write_text(json.dumps(schema))
    (directory / "config.yml").write_text(f"package_name_override: {CLIENT_PACKAGE}\npost_hooks: []\n")
    generator = Path(sys.executable).with_name("openapi-python-client")
    run = subprocess.run(
        [str(generator), "generate", "--path", "openapi.json", "--config", "config.yml", "--meta", "none"]
        + ["--output-path", CLIENT_PACKAGE],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for failure in ("will not be generated", "Unable to process schema", "Unable to parse"):
        assert failure not in run.stdout + run.stderr, run.stdout + run.stderr
    sys.path.insert(0, str(directory))
    try:
        return importlib.import_module(CLIENT_PACKAGE)
    finally:
        sys.path.remove(str(directory))


def forget_python_client() -> None:
    for name in [name for name in sys.modules if name == CLIENT_PACKAGE or name.startswith(f"{CLIENT_PACKAGE}.")]:
        del sys.modules[name]


class Flow:
    """Calls operations of the generated client and checks each live answer against the schema."""

    def __init__(self, package, schema: dict) -> None:
        self.package = package
        self.schema = schema
        self.by_id = {operation["operationId"]: (path, operation) for _, path, operation in operations(schema)}
        self.answers: list[tuple[str, str, int, object]] = []  # (operation id, path, status, JSON body)
        api = Path(package.__file__).parent / "api"
        self.modules = {
            module.stem: ".".join([CLIENT_PACKAGE, "api", *module.relative_to(api).with_suffix("").parts])
            for module in api.rglob("*.py")
        }

    def call(self, operation_id: str, *args, expect: int, **kwargs):
        path, operation = self.by_id[operation_id]
        module = importlib.import_module(self.modules[operation_id])
        response = module.sync_detailed(*args, **kwargs)
        body = json.loads(response.content) if response.content else None
        assert response.status_code == expect, (operation_id, response.status_code, body)
        declared = operation["responses"][str(expect)]
        if body is not None:
            self._check(declared["content"]["application/json"]["schema"], body, operation_id)
            self.answers.append((operation_id, path, expect, body))
        assert "X-Request-ID" in response.headers
        return response.parsed

    def _check(self, response_schema: dict, body, operation_id: str) -> None:
        validator = OAS30ReadValidator({**response_schema, "components": self.schema["components"]})
        problems = [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(body)]
        assert not problems, (operation_id, problems[:5])

    def model(self, name: str):
        return getattr(importlib.import_module(f"{CLIENT_PACKAGE}.models"), name)


@pytest.fixture(scope="module")
def generated(schema, tmp_path_factory):
    package = generate_python_client(schema, tmp_path_factory.mktemp("client"))
    yield package
    forget_python_client()


def test_the_python_client_has_every_operation(schema, generated):
    modules = {module.stem for module in (Path(generated.__file__).parent / "api").rglob("*.py")}
    missing = [
        operation["operationId"] for *_, operation in operations(schema) if operation["operationId"] not in modules
    ]
    assert not missing


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("market_open", "instruments", "nifty", "eager_tasks")
def test_a_generated_client_drives_a_traders_day(schema, generated, live_server, request, tmp_path):
    quote = request.getfixturevalue("publish_quote")
    flow = Flow(generated, schema)
    anonymous = generated.Client(base_url=live_server.url, raise_on_unexpected_status=True)

    plans = flow.call("subscriptions_plans_list", client=anonymous, expect=200)
    assert [plan.code for plan in plans.items][:1] == ["trial"]
    email = f"mobile-{uuid.uuid4().hex[:8]}@example.com"
    register = flow.model("RegisterInputRequest").from_dict(
        {"name": "Mobile Dev", "email": email, "phone": "9876543210", "password": "a long passphrase 42"}
    )
    flow.call("auth_register", client=anonymous, body=register, expect=201)
    login = flow.model("LoginInputRequest").from_dict({"email": email, "password": "a long passphrase 42"})
    session = flow.call("auth_login", client=anonymous, body=login, expect=200)
    refresh = flow.model("RefreshInputRequest").from_dict({"refresh": session.refresh})
    tokens = flow.call("auth_refresh", client=anonymous, body=refresh, expect=200)
    trader = generated.AuthenticatedClient(
        base_url=live_server.url, token=tokens.access, raise_on_unexpected_status=True
    )

    me = flow.call("users_me_get", client=trader, expect=200)
    assert me.status.value == "active"
    start_trial = flow.model("SubscriptionStartInputRequest").from_dict({"plan": "trial"})
    flow.call("subscriptions_start", client=trader, body=start_trial, expect=201)
    flow.call("subscriptions_history_list", client=trader, expect=200)

    connect = flow.model("ConnectInputRequest").from_dict(
        {"broker": "paper", "credentials": {"opening_balance": "1000000"}, "label": "Paper"}
    )
    account = flow.call("brokers_connect", client=trader, body=connect, expect=201).account
    flow.call("brokers_accounts_list", client=trader, expect=200)
    flow.call("brokers_funds_get", account.id, client=trader, expect=200)

    found = flow.call("instruments_list", client=trader, search="INFY", expect=200)
    assert EQUITY in {instrument.symbol for instrument in found.items}
    quote(EQUITY, "1500")
    flow.call("ltp_get", EQUITY, client=trader, expect=200)

    order = flow.model("OrderInputRequest").from_dict(
        {"account_id": account.id, "symbol": EQUITY, "side": "BUY", "quantity": 10, "order_type": "MARKET"}
        | {"product": "MIS"}
    )
    placed = flow.call("orders_place", client=trader, body=order, idempotency_key=uuid.uuid4().hex, expect=201)
    assert placed.status.value == "FILLED" and placed.events[0].from_status is None
    flow.call("orders_get", placed.id, client=trader, expect=200)
    flow.call("orders_list", client=trader, expect=200)
    flow.call("trades_list", client=trader, expect=200)
    flow.call("positions_list", client=trader, expect=200)
    flow.call("portfolio_get", client=trader, expect=200)
    missing = flow.call("orders_get", "ord_doesnotexist", client=trader, expect=404)
    assert missing.error_code.value == "NOT_FOUND"

    body = straddle_body(SimpleNamespace(pk=account.id), product="NRML", reentries=2)
    created = flow.call(
        "strategies_create", client=trader, body=flow.model("StrategyInputRequest").from_dict(body), expect=201
    )
    assert created.legs[0].target_unit is None and created.legs[0].stop_loss_unit.value == "percent"
    rename = flow.model("PatchedStrategyInputRequest").from_dict({"name": "Renamed"})
    assert rename.to_dict() == {"name": "Renamed"}
    renamed = flow.call("strategies_update", created.id, client=trader, body=rename, expect=200)
    assert (renamed.name, renamed.product.value, renamed.reentries) == ("Renamed", "NRML", 2)
    flow.call("strategies_list", client=trader, expect=200)
    flow.call("strategies_get", created.id, client=trader, expect=200)

    days = past_trading_days(2)
    store_spot_days(days)
    start = flow.model("StartInputRequest").from_dict(
        {"mode": "backtest", "start": days[0].isoformat(), "end": days[-1].isoformat(), "capital": 500000}
    )
    started = flow.call("strategies_start", created.id, client=trader, body=start, expect=202)
    backtest = flow.call("strategies_backtests_get", created.id, started.backtest.id, client=trader, expect=200)
    assert backtest.status.value == "succeeded", backtest.error
    assert isinstance(backtest.result.total_pnl, float) and backtest.result.equity_curve
    flow.call("strategies_backtests_list", created.id, client=trader, expect=200)
    flow.call("strategies_runs_list", created.id, client=trader, expect=200)
    flow.call("signals_list", client=trader, expect=200)

    flow.call("rms_config_get", client=trader, expect=200)
    flow.call("rms_status_get", client=trader, expect=200)
    flow.call("notifications_list", client=trader, expect=200)

    type_check_with_typescript(schema, flow.answers, tmp_path / "typescript")


# --- TypeScript -----------------------------------------------------------------------------------------------------


def typescript_tools() -> Path:
    """openapi-typescript and tsc, installed once per version into the user's cache (never into the repository)."""
    npm = shutil.which("npm")
    assert npm, "npm is needed to check the TypeScript types of the API"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    tools = cache / "algoterm-client-tools" / f"{OPENAPI_TYPESCRIPT}-{TYPESCRIPT}".replace("@", "-")
    if not (tools / "node_modules" / ".bin" / "tsc").exists():
        tools.mkdir(parents=True, exist_ok=True)
        install = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(tools), OPENAPI_TYPESCRIPT, TYPESCRIPT],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert install.returncode == 0, install.stdout + install.stderr
    return tools / "node_modules" / ".bin"


def type_check_with_typescript(schema: dict, answers, directory: Path) -> None:
    """Each live answer, as a typed constant: tsc refuses a missing or unknown field, a wrong type or enum value."""
    bin_dir = typescript_tools()
    directory.mkdir()
    (directory / "openapi.json").write_text(json.dumps(schema))
    generate = subprocess.run(
        [str(bin_dir / "openapi-typescript"), "openapi.json", "--output", "api.d.ts"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert generate.returncode == 0, generate.stdout + generate.stderr
    lines = ['import type { components, paths } from "./api";', ""]
    for number, (operation_id, path, status, body) in enumerate(answers):
        method = next(m for m, p, o in operations(schema) if o["operationId"] == operation_id).lower()
        declared = f'paths["{path}"]["{method}"]["responses"][{status}]["content"]["application/json"]'
        lines.append(f"// {operation_id}")
        lines.append(f"export const answer{number}: {declared} = {json.dumps(body)};")
    lines += [
        "",
        'export const side: components["schemas"]["SideEnum"] = "BUY";',
        "// @ts-expect-error: not a side",
        'export const wrongSide: components["schemas"]["SideEnum"] = "HOLD";',
        'export const noTarget: components["schemas"]["LegOutput"]["target_unit"] = null;',
        'export const reason = (error: components["schemas"]["Error"]): string | undefined => error.reason;',
        'type Patch = paths["/api/strategies/{strategy_id}"]["patch"]["requestBody"];',
        'export const rename: NonNullable<Patch>["content"]["application/json"] = { name: "Renamed" };',
    ]
    (directory / "flow.ts").write_text("\n".join(lines) + "\n")
    check = subprocess.run(
        [str(bin_dir / "tsc"), "--noEmit", "--strict", "--target", "es2022", "--module", "es2022", "flow.ts"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stdout[:5000] + check.stderr[:2000]
