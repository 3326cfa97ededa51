"""The daemon as a user runs it: the shipped example, and stopping it by signal.

The first test runs examples/pools.yaml exactly as shipped, as the README's
first command does. It is the one e2e test that depends on the machine: it
needs nothing listening on Ollama's port 11434, as on a fresh machine or in
CI. Everything else uses configs whose upstreams are closed ports or mocks.
"""

from __future__ import annotations

import signal
import socket
import time
from urllib.parse import urlsplit

import openai
import pytest
from e2e_daemon import EXAMPLE, DaemonFactory, finish

pytestmark = pytest.mark.e2e


def ollama_is_listening() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", 11434)) == 0


def refuses_connections(url: str, within: float) -> bool:
    """Whether new connections to ``url`` get refused before ``within`` seconds pass."""
    address = urlsplit(url)
    assert address.hostname is not None
    assert address.port is not None
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            socket.create_connection((address.hostname, address.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.02)
    return False


def test_shipped_example_fails_over_to_mock_and_stops_on_sigint(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory(EXAMPLE)
    with openai.OpenAI(base_url=daemon.v1, api_key="unused", max_retries=0, timeout=10) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model="default", messages=[{"role": "user", "content": "hello"}]
        )
        embedding = sdk.embeddings.create(model="embed", input="hello")

    assert not ollama_is_listening(), "a real Ollama on 127.0.0.1:11434 hides the failover"
    assert raw.headers["x-modelpool-pool"] == "default"
    assert raw.headers["x-modelpool-model"] == "mock-small"
    assert raw.headers["x-modelpool-attempts"] == "2"
    assert raw.parse().choices[0].message.content == (
        "This is a mock reply from mock-small. You said: hello"
    )
    assert len(embedding.data[0].embedding) == 8
    [listening] = [line for line in daemon.log_lines() if line["msg"] == "listening"]
    assert listening["config"] == str(EXAMPLE)

    finish(daemon, signal.SIGINT)
