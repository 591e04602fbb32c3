"""The Client against servers that are not (quite) blender-fast: proxies, other servers, odd headers.
A stub HTTP server on loopback answers what each case needs; no model is loaded."""
from __future__ import annotations

import email.utils
import http.server
import json
import threading
import time

import pytest

from blender_fast.serve.client import Client, ServerError, parse_retry_after


class _Stub(http.server.BaseHTTPRequestHandler):
    answers: list = []  # (status, headers, body bytes), popped per request; the last one repeats

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, headers, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


JSON = {"Content-Type": "application/json"}


def test_retry_after_in_both_http_forms_clamped():
    assert parse_retry_after("3", 30) == 3.0
    assert parse_retry_after("-5", 30) == 0.0          # negative: no wait, never "sleep length must be non-negative"
    assert parse_retry_after("100000", 30) == 30.0     # clamped to the client's maximum
    date = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 <= parse_retry_after(date, 30) <= 10.0
    assert parse_retry_after(email.utils.formatdate(time.time() - 60, usegmt=True), 30) == 0.0  # in the past
    assert parse_retry_after("Wed, 99 Foo 2015 07:28:00 GMT", 30) is None  # unreadable: the caller's default
    assert parse_retry_after(None, 30) is None and parse_retry_after("nan", 30) is None


@pytest.mark.parametrize("retry_after", ["date", "-3", "garbage"])
def test_429_with_any_retry_after_is_retried_then_answered(stub, retry_after):
    server, url = stub
    value = email.utils.formatdate(time.time() + 0.2, usegmt=True) if retry_after == "date" else retry_after
    _Stub.answers = [(429, {"Retry-After": value, **JSON}, b'{"detail": "queue full"}'),
                     (200, JSON, json.dumps([{"logit": 1.5}]).encode())]
    client = Client(url, max_retry_wait=1.0)
    assert client.compare(["q"], ["a"], ["b"]).tolist() == [1.5]
    assert client.retries == 1


@pytest.mark.parametrize("status, headers, body, what", [
    (200, {"Content-Type": "text/html"}, b"<html><body>Welcome to nginx!</body></html>", "Welcome to nginx"),
    (200, JSON, b"[1, 2, 3]", "[1, 2, 3]"),                       # a list, but not of result objects
    (200, JSON, b'{"ranks": [1, 2]}', "ranks"),                   # an object where a list belongs
    (200, JSON, b"{not json", "invalid JSON"),
    (200, JSON, b'[{"something": "else"}]', "without the fields ranks"),
])
def test_an_answer_that_is_not_blender_fasts_is_a_server_error_naming_the_url(stub, status, headers, body, what):
    server, url = stub
    _Stub.answers = [(status, headers, body)]
    with pytest.raises(ServerError) as err:
        Client(url).rank(["q"], [["a", "b"]])
    assert url + "/v1/rank" in str(err.value) and what in str(err.value) and err.value.status == status


@pytest.mark.parametrize("body, detail", [
    (b'["a", "list"]', '["a", "list"]'),                          # a JSON list as the error body
    (b"<html>502 Bad Gateway</html>", "<html>502 Bad Gateway</html>"),
    (b'{"message": "cohere-style"}', "cohere-style"),
])
def test_an_error_answer_of_any_shape_is_a_server_error(stub, body, detail):
    server, url = stub
    _Stub.answers = [(502, JSON, body)]
    with pytest.raises(ServerError) as err:
        Client(url).rank(["q"], [["a", "b"]])
    assert err.value.status == 502 and err.value.detail == detail and err.value.url == url + "/v1/rank"


def test_health_and_ready_against_a_foreign_server_say_no(stub):
    server, url = stub
    _Stub.answers = [(200, JSON, b"[]")]
    client = Client(url)
    assert client.health() is False and client.ready() is False
