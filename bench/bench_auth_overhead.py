"""What authentication costs per request: GET /api/users/me (JWT check, user row, revocation lookup)
against GET /api/version (the same middleware and rendering, no authentication), in one process.

Runs on a throw-away SQLite database unless DATABASE_URL is set."""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.quick import sized  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "algoterm.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")
# A load test would spend the plan's requests-per-minute budget in a second and measure 429s instead.
os.environ["BILLING_PLAN_THROTTLE"] = "false"
if "DATABASE_URL" not in os.environ:
    os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp()}/bench.sqlite3"

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from rest_framework_simplejwt.tokens import AccessToken  # noqa: E402

from accounts.models import User  # noqa: E402

REQUESTS = sized(2000, 100)


def timed(client: Client, path: str, **headers) -> list[float]:
    samples = []
    for _ in range(REQUESTS):
        started = time.perf_counter()
        response = client.get(path, **headers)
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200, response.content
    return samples


def main() -> None:
    call_command("migrate", verbosity=0)
    user = User.objects.filter(email="bench@example.com").first() or User.objects.create_user(
        "bench@example.com", "Bench-Password-2026", name="Bench", phone="+919800000099"
    )
    auth = {"HTTP_AUTHORIZATION": f"Bearer {AccessToken.for_user(user)}"}
    client = Client()
    timed(client, "/api/version")  # warm-up
    public = timed(client, "/api/version")
    private = timed(client, "/api/users/me", **auth)

    def row(name: str, samples: list[float]) -> str:
        mean_us = statistics.fmean(samples) * 1e6
        p99_us = sorted(samples)[int(len(samples) * 0.99)] * 1e6
        return f"| {name:<34} | {mean_us:9.0f} | {p99_us:9.0f} | {1 / statistics.fmean(samples):8.0f} |"

    ratio = statistics.fmean(private) / statistics.fmean(public)
    print(f"\nauth overhead, {REQUESTS} sequential requests each, {django.db.connection.vendor}")
    print("| request                            |  mean µs  |  p99 µs   |  req/s   |")
    print("|------------------------------------|-----------|-----------|----------|")
    print(row("GET /api/version (no auth)", public))
    print(row("GET /api/users/me (JWT, user, unread)", private))
    print(f"ratio authenticated / public: {ratio:.2f}x")


if __name__ == "__main__":
    main()
