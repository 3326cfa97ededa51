"""Raw HTTP against the real daemon: bad input gets a JSON error and breaks nothing.

Uses the standard library's http.client so that one keep-alive connection
can carry a bad request and then a good one.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from e2e_daemon import Daemon

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"
GOOD_CHAT = json.dumps({"model": "default", "messages": [{"role": "user", "content": "ok?"}]})


@pytest.fixture
def connection(daemon: Daemon) -> Iterator[http.client.HTTPConnection]:
    url = urlsplit(daemon.url)
    assert url.hostname == "127.0.0.1"
    assert url.port is not None
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: str | bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on ``conn``; the body is read fully so the connection can be reused."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=body, headers=sent)
    response = conn.getresponse()
    data = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def openai_error(headers: dict[str, str], data: bytes) -> dict[str, Any]:
    """The `error` object of an OpenAI-style error body (and check it is one)."""
    assert headers["content-type"].startswith("application/json")
    body = json.loads(data)
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert isinstance(error["message"], str)
    assert error["message"]
    assert "Traceback" not in error["message"]
    return error


def assert_chat_served(conn: http.client.HTTPConnection) -> None:
    status, headers, data = request(conn, "POST", CHAT, GOOD_CHAT)
    assert status == 200, data
    assert headers["x-modelpool-model"] == "mock-small"
    assert json.loads(data)["choices"][0]["message"]["content"].endswith("You said: ok?")


def test_malformed_json_is_400_and_the_connection_keeps_serving(
    connection: http.client.HTTPConnection,
) -> None:
    status, headers, data = request(connection, "POST", CHAT, '{"model": "default", "mess')

    assert status == 400
    error = openai_error(headers, data)
    assert error["type"] == "invalid_request_error"
    assert "not valid JSON" in error["message"]
    assert_chat_served(connection)  # same keep-alive connection


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty"),
        (b"[1, 2]", "JSON object"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "'model'"),
        (b'{"model": "default", "messages": []}', "messages"),
        (b'{"model": "default", "messages": [{"role": "user"}], "stream": "yes"}', "stream"),
        (b"\xff\xfe not utf-8", "JSON"),
    ],
    ids=["empty", "array", "no-model", "no-messages", "stream-not-bool", "not-utf8"],
)
def test_bad_bodies_are_400_openai_errors(
    connection: http.client.HTTPConnection, body: bytes, fragment: str
) -> None:
    status, headers, data = request(connection, "POST", CHAT, body)

    assert status == 400, data
    assert fragment in openai_error(headers, data)["message"]
    assert_chat_served(connection)


def test_streaming_embeddings_are_refused(connection: http.client.HTTPConnection) -> None:
    body = json.dumps({"model": "embed", "input": "x", "stream": True})
    status, headers, data = request(connection, "POST", "/v1/embeddings", body)

    assert status == 400
    assert openai_error(headers, data)["param"] == "stream"


def test_unknown_route_and_wrong_method_are_json_errors(
    connection: http.client.HTTPConnection,
) -> None:
    status, headers, data = request(connection, "GET", "/v1/nothing-here")
    assert status == 404
    openai_error(headers, data)

    status, headers, data = request(connection, "GET", CHAT)
    assert status == 405
    assert headers["allow"] == "POST"
    openai_error(headers, data)
    assert_chat_served(connection)


def test_oversized_header_is_refused_and_the_daemon_keeps_serving(daemon: Daemon) -> None:
    url = urlsplit(daemon.url)
    assert url.hostname is not None
    huge = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        status, headers, data = request(huge, "POST", CHAT, GOOD_CHAT, {"X-Huge": "a" * 20 * 1024})
    finally:
        huge.close()
    assert (status, headers["content-type"]) == (431, "application/json")
    body = json.loads(data)  # read by both SDKs: Anthropic's envelope, OpenAI's error fields
    assert body["type"] == "error"
    assert body["error"]["code"] == "request_header_too_large"

    fresh = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        assert_chat_served(fresh)
    finally:
        fresh.close()


def test_health_and_readiness(connection: http.client.HTTPConnection) -> None:
    status, _, data = request(connection, "GET", "/healthz")
    assert status == 200
    assert json.loads(data) == {"status": "ok"}

    status, _, data = request(connection, "GET", "/readyz")
    assert status == 200
    assert json.loads(data)["ready"] is True


def test_raw_stream_is_server_sent_events_ending_in_done(
    connection: http.client.HTTPConnection,
) -> None:
    body = json.dumps(
        {"model": "default", "messages": [{"role": "user", "content": "sse"}], "stream": True}
    )
    status, headers, data = request(connection, "POST", CHAT, body)

    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-modelpool-model"] == "mock-small"
    events = [e for e in data.decode().split("\n\n") if e]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.endswith("You said: sse")
    assert_chat_served(connection)
