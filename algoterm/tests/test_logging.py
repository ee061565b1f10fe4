import io
import json
import logging

from algoterm import request_context
from algoterm.logging import JsonFormatter, RedactSecretsFilter, RequestContextFilter

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjoidXNyXzEifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def capture(message, *args, **extra) -> dict:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestContextFilter())
    handler.addFilter(RedactSecretsFilter())
    logger = logging.getLogger("algoterm.test-capture")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    logger.info(message, *args, extra=extra)
    return json.loads(stream.getvalue())


def test_records_carry_request_and_user_ids():
    request_context.bind(request_id="req-1", user_id="usr_abc")
    try:
        record = capture("placed order")
    finally:
        request_context.clear()
    assert record["request_id"] == "req-1"
    assert record["user_id"] == "usr_abc"
    assert record["level"] == "INFO" and record["message"] == "placed order"


def test_secrets_never_reach_the_log():
    record = capture(
        "login for %s with password=%s and header Bearer %s",
        "a@example.com",
        "hunter2",
        JWT,
        password="hunter2",
        payload={"api_key": "k-123", "nested": {"access_token": "t-456"}, "symbol": "NSE:INFY"},
        url="/ws/events?token=abc.def.ghi&x=1",
    )
    text = json.dumps(record)
    for secret in ("hunter2", JWT, "k-123", "t-456", "abc.def.ghi"):
        assert secret not in text
    assert record["payload"]["symbol"] == "NSE:INFY"
    assert "a@example.com" in record["message"]


def test_objects_logged_as_extras_are_scrubbed_by_their_text():
    class Request:
        def __str__(self) -> str:
            return "<ASGIRequest: GET '/ws/events?token=abc.def.ghi'>"

    record = capture("request failed", request=Request(), status_code=500)
    assert "abc.def.ghi" not in json.dumps(record) and record["status_code"] == 500
