"""serve's start-up banner: the demo logins are printed for a laptop's demo, never by a production server."""

from io import StringIO

from algoterm.management.commands.serve import Command
from algoterm.sandbox.demo import DEMO_USERS


def banner() -> str:
    output = StringIO()
    Command(stdout=output)._print_banner("127.0.0.1", 8000)
    return output.getvalue()


def test_the_banner_prints_the_demo_logins_outside_production(settings):
    settings.IS_PRODUCTION = False
    text = banner()
    assert "Demo logins:" in text
    assert all(user["password"] in text for user in DEMO_USERS)


def test_a_production_server_never_prints_the_demo_passwords(settings):
    settings.IS_PRODUCTION = True
    text = banner()
    assert "Demo logins:" not in text
    assert not any(user["password"] in text for user in DEMO_USERS)
    assert "/api/health" in text
