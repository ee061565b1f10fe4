"""Schema-driven fuzzing: Schemathesis generates requests from `/api/schema` and sends them to the distributed stack
(`manage.py serve` on PostgreSQL and Redis, seeded with the demo trader, admin and paper broker account). Every
answer must be a documented status, match its documented schema and never be a server error (5xx).

The stateful phase follows the schema's OpenAPI links, so ids created by one call (an order, a strategy, a
backtest, a notification) flow into the next (read, modify, cancel, start, delete).

Passes, in order (a later pass may break what an earlier one needs, never the reverse):
  trader       every operation but the session-ending ones, as the demo trader (admin routes answer 403)
  admin        the admin routes (users, logs, payments, config, system), as the demo admin (no stateful phase:
               their links lead only to the session-ending calls)
  destructive  logout, broker account deletion and user updates as the trader; user deactivation as the admin
               (with the reads that link to them, so the stateful phase reaches real ids)

Talks only to 127.0.0.1. Uses a PostgreSQL database of its own (FUZZ_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/algoterm_bench_fuzz: dropped, created and migrated by the run, dropped at the
end) and a Redis server of its own on a free port. Runs with the market open (MARKET_ALWAYS_OPEN), the plans'
request throttle off and the login and sign-up limits raised, so the fuzzer meets the API's own checks instead of
its rate limits (429 stays a documented answer everywhere).

    .venv/bin/python bench/fuzz.py                  # 50 examples per operation and phase
    .venv/bin/python bench/fuzz.py --quick          # 5 examples per operation and phase: CI's run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.drill import PrivateRedis, demo_stack_served, free_port, login  # noqa: E402

os.environ.setdefault("FUZZ_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/algoterm_bench_fuzz")
START_SECONDS = 120
SEED = 20261206
TRADER = ("trader@example.com", "Trader@Demo2026")
ADMIN = ("admin@example.com", "Admin@Demo2026")
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "response_schema_conformance",
    "content_type_conformance",
)
ADMIN_PATHS = r"^/api/(admin/|config|system/|metrics|health/components)"
# Calls that end the caller's session or take away what later calls need: run last, in their own pass.
SESSION_ENDING = {
    ("POST", "/api/auth/logout"),
    ("DELETE", "/api/brokers/{account_id}"),
    ("PATCH", "/api/users/{user_id}"),
    ("POST", "/api/admin/users/{user_id}/deactivate"),
}


@dataclass
class FuzzPass:
    name: str
    user: tuple[str, str]
    filters: list[str]
    phases: str = "examples,coverage,fuzzing,stateful"
    results: dict = field(default_factory=dict)


def fuzz_passes() -> list[FuzzPass]:
    ending = [f"--exclude-name={method} {path}" for method, path in sorted(SESSION_ENDING)]
    # with the reads whose answers link to them, so the stateful phase reaches the caller's own user and account
    trader_ending = [
        *(f"--include-name={method} {path}" for method, path in sorted(SESSION_ENDING) if "admin" not in path),
        "--include-name=GET /api/users/me",
        "--include-name=GET /api/brokers/accounts",
    ]
    return [
        FuzzPass("trader", TRADER, [f"--exclude-path-regex={ADMIN_PATHS}", *ending]),
        # The admin routes' links lead only to the session-ending ones: no stateful phase until the last pass.
        FuzzPass("admin", ADMIN, [f"--include-path-regex={ADMIN_PATHS}", *ending], phases="examples,coverage,fuzzing"),
        FuzzPass("destructive (trader)", TRADER, trader_ending),
        FuzzPass(
            "destructive (admin)",
            ADMIN,
            ["--include-name=POST /api/admin/users/{user_id}/deactivate", "--include-name=GET /api/admin/users"],
        ),
    ]


def stack_environment(redis_url: str) -> dict[str, str]:
    simulator_ports = {
        f"{name.upper()}_SIMULATOR_PORT": str(free_port()) for name in ("kite", "dhan", "fyers", "razorpay")
    }
    return {
        **os.environ,
        "DATABASE_URL": os.environ["FUZZ_DATABASE_URL"],
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": "fuzz",
        "DJANGO_ENV": "development",
        "DJANGO_SETTINGS_MODULE": "algoterm.settings",
        # Broker and payment simulators on free ports of this run, so broker connects and subscriptions answer.
        "BROKER_SIMULATORS": "true",
        **simulator_ports,
        "MARKET_FEED": "simulated",
        "MARKET_ALWAYS_OPEN": "true",
        # A fuzzer sends hundreds of requests a minute: throttles and lockouts would turn every answer into a 429.
        "BILLING_PLAN_THROTTLE": "false",
        "REGISTER_THROTTLE_RATE": "100000/hour",
        "LOGIN_THROTTLE_RATE": "100000/minute",
        "REFRESH_THROTTLE_RATE": "100000/minute",
        "STRATEGY_WEBHOOK_THROTTLE_RATE": "100000/minute",
        "BROKER_POSTBACK_THROTTLE_RATE": "100000/minute",
        "BILLING_WEBHOOK_THROTTLE_RATE": "100000/minute",
        "LOGIN_FAILURE_LIMIT": "100000",
        "LOGIN_FAILURE_IP_LIMIT": "100000",
        "LOGIN_FAILURE_EMAIL_LIMIT": "100000",
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
        "PYTHONUNBUFFERED": "1",
    }


def schemathesis_config(directory: Path, user: tuple[str, str]) -> Path:
    """Log in as `user` and log in again whenever an answer is 401 (a token expired or a session was ended)."""
    email, password = user
    path = directory / "schemathesis.toml"
    path.write_text(
        f"""
[cache]
enabled = false

[generation]
database = "none"

[auth.dynamic.openapi.bearerAuth]
path = "/api/auth/login"
payload = {{ email = "{email}", password = "{password}" }}
extract_selector = "/access"
"""
    )
    return path


def run_pass(fuzz: FuzzPass, *, base: str, env: dict, args, report_dir: Path) -> int:
    work = Path(tempfile.mkdtemp(prefix="fuzz-", dir=report_dir))
    config = schemathesis_config(work, fuzz.user)
    report = work / "report.json"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{base}/api/schema?format=json",
        f"--url={base}",
        f"--checks={','.join(CHECKS)}",
        f"--phases={fuzz.phases}",
        f"--max-examples={args.max_examples}",
        f"--seed={SEED}",
        "--generation-deterministic",
        f"--workers={args.workers}",
        "--request-timeout=30",
        "--continue-on-failure",
        "--suppress-health-check=all",
        "--report=json,junit",
        f"--report-json-path={report}",
        f"--report-junit-path={work / 'junit.xml'}",
        "--no-color",
        *fuzz.filters,
    ]
    print(f"\n=== pass: {fuzz.name} ===\n{' '.join(command)}", flush=True)
    try:
        completed = subprocess.run(command, cwd=work, env=env, check=False, timeout=args.pass_timeout)
    except subprocess.TimeoutExpired:
        print(f"the {fuzz.name} pass overran its {args.pass_timeout} s budget", flush=True)
        return 1
    if report.exists():
        fuzz.results = json.loads(report.read_text())
    return completed.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer examples per operation: CI's run")
    parser.add_argument("--max-examples", type=int, default=0)
    # One worker by default: with two, Hypothesis parses source files in two threads at once, and CPython 3.11's ast
    # module then fails now and then with "SystemError: AST constructor recursion depth mismatch" (python/cpython
    # gh-106905), an error of the fuzzer's, not of the API.
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--only", default="", help="run only the passes whose name starts with this")
    parser.add_argument("--pass-timeout", type=int, default=1200, help="seconds a pass may take before it fails")
    parser.add_argument("--log", default="", help="write the stack's output to this file (default: discarded)")
    parser.add_argument("--reports", default="", help="keep Schemathesis' reports in this directory")
    args = parser.parse_args()
    args.max_examples = args.max_examples or (5 if args.quick else 50)

    redis = PrivateRedis(free_port())
    redis.start()
    env = stack_environment(redis.url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    report_dir = Path(args.reports) if args.reports else Path(tempfile.mkdtemp(prefix="fuzz-reports-"))
    report_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    codes = []
    passes = [p for p in fuzz_passes() if p.name.startswith(args.only)]
    try:
        with demo_stack_served(
            env=env, port=port, database_variable="FUZZ_DATABASE_URL", log_path=args.log, start_seconds=START_SECONDS
        ):
            login(base, *TRADER)
            for fuzz in passes:
                codes.append(run_pass(fuzz, base=base, env=env, args=args, report_dir=report_dir))
    finally:
        redis.close()
        if not args.reports:
            shutil.rmtree(report_dir, ignore_errors=True)
    print_table(passes)
    print(f"whole fuzz run: {time.monotonic() - started:.0f} s")
    ok = bool(codes) and all(code == 0 for code in codes) and all(p.results for p in passes)
    print("verdict: " + ("PASS (0 server errors, 0 undocumented statuses, 0 schema violations)" if ok else "FAIL"))
    return 0 if ok else 1


# Schemathesis' failure codes: ST101/ST102 a 5xx, ST103 an undocumented status, ST107/ST108 a header or body outside
# its schema, ST104-ST106 a wrong or missing Content-Type.
FAILURE_COLUMNS = (
    ("5xx", ("ST101", "ST102")),
    ("undocumented status", ("ST103",)),
    ("schema violations", ("ST107", "ST108")),
    ("content type", ("ST104", "ST105", "ST106")),
)


def print_table(passes: list[FuzzPass]) -> None:
    header = ["pass", "operations", "test cases", *(name for name, _ in FAILURE_COLUMNS), "other", "errors"]
    rows = []
    for fuzz in passes:
        report = fuzz.results
        if not report:
            rows.append([fuzz.name, "-", "-", *("-" for _ in FAILURE_COLUMNS), "-", "no report"])
            continue
        counts = {failure["code"]: failure["count"] for failure in report.get("failures", [])}
        known = {code for _, codes in FAILURE_COLUMNS for code in codes}
        rows.append(
            [
                fuzz.name,
                str(report["operations"]["tested"]),
                str(report["test_cases"]["generated"]),
                *(str(sum(counts.get(code, 0) for code in codes)) for _, codes in FAILURE_COLUMNS),
                str(sum(count for code, count in counts.items() if code not in known)),
                str(len(report.get("errors", []))),
            ]
        )
    total = sum(int(row[2]) for row in rows if row[2].isdigit())
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print(f"\nSchema-driven fuzzing: {total} generated test cases")
    for row in [header, ["-" * width for width in widths], *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    sys.exit(main())
