"""server.admin_listen: admin endpoints on their own listener (TCP or a unix socket),
the proxy on `listen`, each refusing the other's paths."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path

import pytest
from e2e_daemon import DaemonFactory, offline_example

pytestmark = pytest.mark.e2e


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self._path)


def status(connection: http.client.HTTPConnection, method: str, path: str) -> int:
    body = json.dumps({"model": "mock-small", "messages": [{"role": "user", "content": "x"}]})
    connection.request(method, path, body=body if method == "POST" else None)
    response = connection.getresponse()
    response.read()
    return response.status


def admin_url(daemon_log: list[dict[str, str]]) -> str:
    [line] = [line for line in daemon_log if line["msg"] == "admin listening"]
    return line["url"]


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_admin_endpoints_live_only_on_the_admin_listener(
    daemon_factory: DaemonFactory, tmp_path: Path, kind: str
) -> None:
    config = offline_example(tmp_path)
    where = f"unix:{tmp_path / 'admin.sock'}" if kind == "unix" else "127.0.0.1:0"
    config.write_text(
        config.read_text().replace("server:\n", f"server:\n  admin_listen: '{where}'\n", 1)
    )
    daemon = daemon_factory(config)
    main = http.client.HTTPConnection(daemon.url.removeprefix("http://"), timeout=5)
    url = admin_url(daemon.log_lines())
    if kind == "unix":
        admin: http.client.HTTPConnection = UnixConnection(url.removeprefix("unix:"))
    else:
        admin = http.client.HTTPConnection(url.removeprefix("http://"), timeout=5)

    assert status(main, "POST", "/v1/chat/completions") == 200
    assert status(main, "GET", "/admin/status") == 404
    assert status(main, "GET", "/metrics") == 404
    assert status(main, "GET", "/healthz") == 200
    assert status(admin, "GET", "/admin/status") == 200  # a unix peer counts as local
    assert status(admin, "GET", "/metrics") == 200
    assert status(admin, "POST", "/v1/chat/completions") == 404
