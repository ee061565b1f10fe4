import os
import subprocess
import sys

from cryptography.fernet import Fernet

PRODUCTION = {
    "DJANGO_ENV": "production",
    "SECRET_KEY": "k" * 20 + "Z9x!q@w#e$r%t^y&u*i(o)p_a+s-d=f" + "m" * 10,
    "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
    "ALLOWED_HOSTS": "api.algoterm.example",
    "DATABASE_URL": "sqlite:////tmp/algoterm-deploy-check.sqlite3",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "RAZORPAY_KEY_ID": "rzp_live_example",
    "RAZORPAY_KEY_SECRET": "a-live-key-secret",
    "RAZORPAY_WEBHOOK_SECRET": "a-webhook-secret",
}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in PRODUCTION and k != "DEBUG"}
    environment.update(env)
    return subprocess.run([sys.executable, "manage.py", *args], env=environment, capture_output=True, text=True)


def test_production_settings_pass_check_deploy_without_warnings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_refuses_unsafe_settings():
    cases = {
        "DEBUG": {"DEBUG": "1"},
        "SECRET_KEY": {"SECRET_KEY": ""},
        "ENCRYPTION_KEYS": {"ENCRYPTION_KEYS": ""},
        "ALLOWED_HOSTS": {"ALLOWED_HOSTS": "*"},
        "RAZORPAY_KEY_SECRET": {"RAZORPAY_KEY_SECRET": ""},  # unset: the simulator's demo secret
        "RAZORPAY_WEBHOOK_SECRET": {"RAZORPAY_WEBHOOK_SECRET": ""},
    }
    for problem, override in cases.items():
        env = {**PRODUCTION, **override}
        env = {k: v for k, v in env.items() if v != ""}
        result = manage("check", **env)
        assert result.returncode != 0, problem
        assert "Refusing to start in production" in result.stderr and problem in result.stderr, result.stderr
