import pytest
from django.test import Client

from marketdata.instruments import instruments_load_demo

pytestmark = pytest.mark.django_db


def test_instrument_and_candle_pages_render_and_search(admin_user):
    instruments_load_demo()
    console = Client()
    console.force_login(admin_user)
    page = console.get("/admin/marketdata/instrument/", {"q": "NIFTY", "instrument_type__exact": "INDEX"})
    assert page.status_code == 200 and "NSE:NIFTY 50" in page.content.decode()
    assert console.get("/admin/marketdata/candle/").status_code == 200
    assert console.get("/admin/marketdata/instrument/add/").status_code == 403
