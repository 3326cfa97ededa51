"""Hot reload in the real `modelpool run` process: SIGHUP, the file watcher, the JSON log.

Each test runs the daemon on a config in its own folder (mock provider, no
network), changes the file, and reads the outcome where an operator would:
``GET /admin/status``, a request's ``x-modelpool-model``, and the one JSON
line the reload logged. Every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from e2e_daemon import Daemon, DaemonFactory

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
AGE_KEY = REPO / "tests" / "fixtures" / "age" / "key.txt"
SECRETS_FILE = REPO / "tests" / "fixtures" / "secrets.enc.yaml"
SOPS = Path(sys.executable).parent / "sops"

WAIT = 3.0
"""The longest a test waits for a reload to show (generous: it is not a timing assertion)."""

P_LINE = 9
"""The line of pool ``p`` in ``config_text``."""


def config_text(member: str = "a", more: str = "") -> str:
    return (
        "version: 1\n"
        "providers:\n"
        "  mock: {type: mock}\n"
        "models:\n"
        "  a: {provider: mock}\n"
        "  b: {provider: mock}\n"
        "  c: {provider: mock}\n"
        "pools:\n"
        f"  p: {{members: [{member}]}}\n"
        "  keep: {members: [a]}\n"
        f"{more}"
    )


def rename_over(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


def request(daemon: Daemon, method: str, path: str, body: Any = None) -> http.client.HTTPResponse:
    url = urlsplit(daemon.url)
    assert url.hostname is not None
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    payload = json.dumps(body) if body is not None else None
    conn.request(method, path, payload, {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def status(daemon: Daemon) -> dict[str, Any]:
    url = urlsplit(daemon.url)
    assert url.hostname is not None
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request("GET", "/admin/status")
        response = conn.getresponse()
        assert response.status == 200
        body: dict[str, Any] = json.loads(response.read())
        return body
    finally:
        conn.close()


def served_by(daemon: Daemon, pool: str) -> str | None:
    body = {"model": pool, "messages": [{"role": "user", "content": "hi"}]}
    response = request(daemon, "POST", "/v1/chat/completions", body)
    return response.getheader("x-modelpool-model") if response.status == 200 else None


def wait_until(check: Callable[[], bool], what: str, daemon: Daemon) -> float:
    """Poll ``check`` for up to WAIT seconds; return how long it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > WAIT:
            raise AssertionError(f"{what}: not within {WAIT}s\n{daemon.output()}")
        time.sleep(0.01)
    return time.monotonic() - started


def reload_lines(daemon: Daemon) -> list[dict[str, Any]]:
    """The log lines of reloads: applied (info) and rejected (error)."""
    return [e for e in daemon.log_lines() if e.get("logger") == "modelpool.reload"]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    folder = tmp_path / "config"
    folder.mkdir()
    path = folder / "pools.yaml"
    path.write_text(config_text())
    return path


def test_sighup_applies_what_the_watcher_could_not(
    tmp_path: Path, daemon_factory: DaemonFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KMS outage: the watcher's reload fails to decrypt, and it does not retry the same
    bytes (not even on its idle checks); once sops works again, SIGHUP applies the edit."""
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(AGE_KEY))
    outage = tmp_path / "outage"
    sops = tmp_path / "bin" / "sops"
    sops.parent.mkdir()
    sops.write_text(
        f'#!/bin/sh\n[ -e "{outage}" ] && {{ echo "kms: service unavailable" >&2; exit 1; }}\n'
        f'exec "{SOPS}" "$@"\n'
    )
    sops.chmod(0o755)
    folder = tmp_path / "config"
    folder.mkdir()
    shutil.copy(SECRETS_FILE, folder / "secrets.enc.yaml")
    tail = f"secrets:\n  sops_files: [secrets.enc.yaml]\n  sops_binary: {sops}\n"
    config = folder / "pools.yaml"
    config.write_text(config_text("a", tail))
    daemon = daemon_factory(config)
    assert served_by(daemon, "p") == "a"

    outage.touch()
    rename_over(config, config_text("b", tail))
    wait_until(
        lambda: status(daemon)["last_reload"]["result"] == "rejected", "the rejection", daemon
    )
    [error] = status(daemon)["last_reload"]["errors"]
    assert error.startswith(f"{config}:{P_LINE + 3} secrets.sops_files[0]: ")
    assert "kms: service unavailable" in error

    outage.unlink()
    time.sleep(1.2)  # past the watcher's idle check (every quiet 1 s): it must not retry
    assert status(daemon)["generation"] == 1
    daemon.process.send_signal(signal.SIGHUP)
    wait_until(lambda: status(daemon)["generation"] == 2, "generation 2 after SIGHUP", daemon)

    shown = status(daemon)
    assert shown["last_reload"]["result"] == "applied"
    assert shown["last_reload"]["trigger"] == "sighup"
    assert served_by(daemon, "p") == "b"
    rejected, applied = reload_lines(daemon)
    assert (rejected["level"], rejected["trigger"]) == ("error", "watch")
    assert applied["level"] == "info"
    assert applied["msg"] == "config reloaded: generation 2; pools ~p"
    assert applied["trigger"] == "sighup"
    assert applied["generation"] == 2
    assert applied["duration_ms"] >= 0


def test_the_watcher_applies_an_edit_without_sighup(
    config: Path, daemon_factory: DaemonFactory
) -> None:
    daemon = daemon_factory(config)
    assert served_by(daemon, "p") == "a"

    rename_over(config, config_text("b"))
    took = wait_until(lambda: served_by(daemon, "p") == "b", "the edit served", daemon)
    assert took < WAIT  # typically ~0.1-0.2 s; see the report for measured numbers

    shown = status(daemon)
    assert shown["generation"] == 2
    assert shown["last_reload"]["trigger"] == "watch"
    [line] = reload_lines(daemon)
    assert line["msg"] == "config reloaded: generation 2; pools ~p"
    assert line["trigger"] == "watch"


def test_the_daemon_validates_in_a_child_and_never_maps_the_schema_library(
    config: Path, daemon_factory: DaemonFactory
) -> None:
    """jsonschema-rs (~15 MB the daemon would keep for life) runs in a child per load."""
    daemon = daemon_factory(config)
    rename_over(config, config_text("b"))
    wait_until(lambda: served_by(daemon, "p") == "b", "the edit served", daemon)
    rename_over(config, config_text("b", "  bad: {members: [a], strategy: fastest}\n"))
    wait_until(
        lambda: status(daemon)["last_reload"]["result"] == "rejected", "the rejection", daemon
    )

    pid = daemon.process.pid
    assert "jsonschema_rs" not in Path(f"/proc/{pid}/maps").read_text()
    children = [
        child
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]
    assert children == [], "each load's child is gone once the load ends"


def test_a_rejected_reload_logs_the_error_and_sighup_retries_it(
    config: Path, daemon_factory: DaemonFactory
) -> None:
    daemon = daemon_factory(config)
    rename_over(config, config_text("zzz"))
    wait_until(
        lambda: status(daemon)["last_reload"]["result"] == "rejected", "the rejection", daemon
    )
    error = f"{config}:{P_LINE} pools.p.members[0]: unknown model 'zzz'"
    shown = status(daemon)
    assert shown["generation"] == 1
    assert shown["last_reload"]["errors"] == [error]
    assert served_by(daemon, "p") == "a", "the old table keeps serving"

    # The watcher does not retry bytes it already rejected; SIGHUP does (a fixed key, say).
    daemon.process.send_signal(signal.SIGHUP)
    wait_until(
        lambda: status(daemon)["last_reload"]["trigger"] == "sighup", "the SIGHUP retry", daemon
    )
    lines = reload_lines(daemon)
    assert [(e["level"], e["trigger"]) for e in lines] == [("error", "watch"), ("error", "sighup")]
    for entry in lines:
        assert entry["msg"] == f"config reload rejected; generation 1 keeps serving: {error}"
        assert entry["errors"] == [error]

    # Fixing the file is picked up by the watcher: generation 2, not 3 or 4.
    rename_over(config, config_text("b"))
    wait_until(lambda: served_by(daemon, "p") == "b", "the fix served", daemon)
    assert status(daemon)["generation"] == 2
    assert reload_lines(daemon)[-1]["msg"] == "config reloaded: generation 2; pools ~p"


def test_sighup_with_nothing_changed_logs_nothing(
    config: Path, daemon_factory: DaemonFactory
) -> None:
    daemon = daemon_factory(config)
    before = status(daemon)
    daemon.process.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    after = status(daemon)
    assert after["generation"] == 1
    assert after["last_reload"] == before["last_reload"]
    assert reload_lines(daemon) == []
    assert daemon.process.poll() is None, "SIGHUP must not stop the daemon"


def test_a_daemon_run_on_every_address_refuses_a_reload_without_clients(
    config: Path, daemon_factory: DaemonFactory
) -> None:
    """`modelpool run --listen 0.0.0.0:…` with keys, then a file without `clients:`: the
    reload is rejected (keys stay required), however loopback the file's own `listen` is.
    The port is ephemeral and every request needs a key for the whole test."""
    key_hash = "e2" * 32
    keyed = config_text(more=f"clients:\n  a: {{key_sha256: '{key_hash}'}}\n")
    rename_over(config, keyed)
    daemon = daemon_factory(config, "--listen", "0.0.0.0:0")
    assert urlsplit(daemon.url).hostname == "0.0.0.0"
    daemon.url = daemon.url.replace("0.0.0.0", "127.0.0.1", 1)
    assert request(daemon, "POST", "/v1/chat/completions", {"model": "p"}).status == 401

    rename_over(config, config_text(more="server: {listen: '127.0.0.1:8787'}\n"))
    wait_until(
        lambda: status(daemon)["last_reload"]["result"] == "rejected", "the rejection", daemon
    )
    [error] = status(daemon)["last_reload"]["errors"]
    assert error == (
        f"{config} clients: refusing to remove every client while listening on non-loopback"
        " '0.0.0.0': the daemon would run open; restart it on a loopback address to run"
        " without keys"
    )
    assert status(daemon)["generation"] == 1
    assert served_by(daemon, "p") is None  # 401: the keyed table keeps serving
