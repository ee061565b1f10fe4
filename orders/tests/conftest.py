import pytest

from orders.tests.factories import paper_account, standard_instruments


@pytest.fixture
def instruments(db):
    standard_instruments()


@pytest.fixture
def eager_tasks():
    """Follow-up tasks (exits, OCO, reconciliation) run inline where they are enqueued, after commit: the same
    task code a worker runs, without a worker process."""
    from algoterm.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


@pytest.fixture
def paper(trader, instruments):
    return paper_account(trader)


@pytest.fixture
def market(publish_quote):
    """Publish a quote (resting paper orders it crosses fill)."""
    return publish_quote


@pytest.fixture
def publish_quote(db):
    from brokers.prices import quote_at, quote_publish

    def publish(symbol: str, price, depth: int = 1000) -> int:
        return quote_publish(quote_at(symbol, price, depth=depth))

    return publish
