"""The brokers' SDKs run on patched libraries, not on the stale releases they pin.

kiteconnect, dhanhq and fyers-apiv3 are installed without their declared dependencies (requirements-sdk.txt,
`pip install --no-deps`); requirements.txt pins what they really import. These tests hold that line in the
environment the Makefile builds: the libraries the SDKs talk to the network with are at releases that fix their
published advisories, what the SDKs only declared (boto3, pandas, the PyPI `asyncio`) is not installed, and every
SDK module our code uses still imports, in a fresh interpreter, without pulling those in.
"""

import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, requires, version

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

# The first release of each that fixes every published advisory we know of (README, "Dependencies").
PATCHED_MINIMUMS = {
    "requests": "2.33.0",  # CVE-2024-35195, CVE-2024-47081, CVE-2026-25645
    "urllib3": "2.7.0",  # CVE-2026-44431, CVE-2026-44432
    "aiohttp": "3.14.3",  # CVE-2024-30251 ... CVE-2026-69244: fyers' pin, 3.9.3, has over twenty
    "autobahn": "20.12.3",  # CVE-2020-35678 (kiteconnect pins 19.11.2)
    "Twisted": "26.4.0",  # CVE-2026-42304
    # CVE-2024-6345, CVE-2025-47273, CVE-2026-23949, CVE-2026-24049 (fyers pins 68.0.0). CVE-2026-59890 (sdist
    # building) is fixed only in 83.0.0, which no longer has the pkg_resources that Fyers' sockets import: the README
    # lists that exception, and the import test below fails should setuptools move past it.
    "setuptools": "80.10.2",
    "idna": "3.15",  # CVE-2026-45409
    "cryptography": "50.0.0",  # CVE-2026-69247
}

# Declared by an SDK, imported by nothing we run: never installed.
NEVER_INSTALLED = ("boto3", "botocore", "s3transfer", "aws-xray-sdk", "pandas", "asyncio")

# Every SDK entry point our code (adapters, feeds, billing) uses, as `module: names`.
SDK_MODULES_WE_USE = {
    "kiteconnect": ["KiteConnect", "KiteTicker", "exceptions"],
    "dhanhq": ["dhanhq", "DhanContext", "DhanHTTP", "OrderUpdate"],
    "dhanhq.marketfeed": ["MarketFeed"],
    "fyers_apiv3.fyersModel": ["FyersModel", "SessionModel"],
    "fyers_apiv3.FyersWebsocket.data_ws": ["FyersDataSocket", "SymbolConversion"],
    "fyers_apiv3.FyersWebsocket.order_ws": ["FyersOrderSocket"],
    "razorpay": ["Client"],
    "razorpay.errors": ["BadRequestError", "ServerError", "SignatureVerificationError"],
}

SDK_DISTRIBUTIONS = ("kiteconnect", "dhanhq", "fyers-apiv3", "razorpay")


def installed(distribution: str) -> Version | None:
    try:
        return Version(version(distribution))
    except PackageNotFoundError:
        return None


@pytest.mark.parametrize("distribution", sorted(PATCHED_MINIMUMS))
def test_the_libraries_the_sdks_use_are_at_patched_releases(distribution):
    found = installed(distribution)
    assert found is not None, f"{distribution} is not installed"
    assert found >= Version(PATCHED_MINIMUMS[distribution]), (
        f"{distribution} {found} is below {PATCHED_MINIMUMS[distribution]}, the first release without its advisories"
    )


@pytest.mark.parametrize("distribution", NEVER_INSTALLED)
def test_what_only_the_sdks_declared_is_not_installed(distribution):
    assert installed(distribution) is None, f"{distribution} {installed(distribution)} is installed"


@pytest.mark.parametrize("distribution", SDK_DISTRIBUTIONS)
def test_the_brokers_own_sdks_are_installed(distribution):
    assert installed(distribution) is not None, f"{distribution} is missing: `make` installs requirements-sdk.txt"


def test_the_sdks_own_stale_pins_are_not_what_is_installed():
    """Installed with their declared dependencies, the SDKs would bring the vulnerable releases back."""
    minimums = {name.lower(): Version(release) for name, release in PATCHED_MINIMUMS.items()}
    overridden = set()
    for sdk in ("kiteconnect", "fyers-apiv3"):
        for line in requires(sdk) or []:
            requirement = Requirement(line)
            pins = [Version(spec.version) for spec in requirement.specifier if spec.operator == "=="]
            if requirement.marker is not None or not pins or requirement.name.lower() not in minimums:
                continue
            assert all(pin < minimums[requirement.name.lower()] for pin in pins), f"{sdk} now pins {requirement}"
            assert installed(requirement.name) not in requirement.specifier
            overridden.add(requirement.name.lower())
    assert overridden == {"requests", "aiohttp", "setuptools", "autobahn"}


def test_the_sdk_modules_we_use_import_in_a_fresh_interpreter_without_pandas_or_boto3():
    script = (
        "import importlib, json, sys\n"
        f"wanted = {SDK_MODULES_WE_USE!r}\n"
        "missing = [f'{m}.{n}' for m, names in wanted.items() for n in names"
        " if not hasattr(importlib.import_module(m), n)]\n"
        "heavy = sorted({n.split('.')[0] for n in sys.modules} & {'pandas', 'boto3', 'botocore', 'aws_xray_sdk'})\n"
        "print(json.dumps({'missing': missing, 'heavy': heavy}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"missing": [], "heavy": []}


def test_the_one_sdk_call_that_needs_a_library_we_left_out_fails_loudly():
    """dhanhq's security-list download (which we never call: our instrument masters are our own) needs pandas;
    without it the call raises ImportError instead of quietly answering None."""
    script = (
        "from dhanhq import Security\n"
        "try:\n"
        "    Security.fetch_security_list(mode='compact', filename='/nonexistent/list.csv')\n"
        "except ImportError as error:\n"
        "    print(type(error).__name__, error.name)\n"
    )
    # Were pandas ever installed, the download must still not leave this machine: a proxy that refuses at once.
    env = {"PATH": "", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "ModuleNotFoundError pandas"
