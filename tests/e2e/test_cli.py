"""The `modelpool` CLI as a subprocess: check, schema, keygen, and run's refusals."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import time
from pathlib import Path

import pytest
import yaml
from e2e_daemon import EXAMPLE, REPO, closed_port, offline_example, run_cli, start_daemon
from jsonschema import Draft202012Validator

pytestmark = pytest.mark.e2e

# `file:line key.path: message`, the shape of every config error.
ISSUE = re.compile(r"^(?P<file>\S+):(?P<line>\d+) (?P<path>\S+): (?P<message>.+)$")

MOCK_ONLY = """\
version: 1
providers:
  mock:
    type: mock
models:
  m1:
    provider: mock
  m2:
    provider: mock
"""

BROKEN = (
    MOCK_ONLY
    + """\
pools:
  a:
    members: [m1, m3]
    failover: [b]
  b:
    members: [m2]
    failover: [lcoal]
"""
)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def issues_of(stderr: str) -> list[re.Match[str]]:
    return [m for line in stderr.splitlines() if (m := ISSUE.match(line))]


def test_check_prints_the_routing_table_of_the_example() -> None:
    result = run_cli("check", "examples/pools.yaml")

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert "examples/pools.yaml (valid)" in out
    assert "pools:" in out
    assert "default: strategy priority" in out
    # The failover order inside `default`: the local model first, then the mock.
    assert out.index("1. llama3") < out.index("2. mock-small")
    assert "embed: strategy round_robin" in out
    assert "local: ollama http://127.0.0.1:11434" in out


def test_check_shows_the_flattened_failover_chain(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "chain.yaml",
        MOCK_ONLY
        + """\
pools:
  primary:
    members: [m1]
    failover: [backup]
  backup:
    members: [m2]
    failover: [last]
  last:
    members: [m1]
""",
    )
    result = run_cli("check", str(config))

    assert result.returncode == 0, result.stderr
    assert "failover: primary → backup → last" in result.stdout
    assert "failover: backup → last" in result.stdout


def test_check_reports_every_error_with_file_line_and_path(tmp_path: Path) -> None:
    config = write(tmp_path, "broken.yaml", BROKEN)
    result = run_cli("check", str(config))

    assert result.returncode == 1
    assert result.stdout == ""
    found = {(m["file"], int(m["line"]), m["path"]): m["message"] for m in issues_of(result.stderr)}
    assert found == {
        (str(config), 12, "pools.a.members[1]"): "unknown model 'm3'",
        (str(config), 16, "pools.b.failover[0]"): "unknown pool 'lcoal'",
    }
    assert f"{config}: invalid (2 errors)" in result.stderr


def test_check_suggests_the_key_that_was_meant(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "typo.yaml",
        MOCK_ONLY + "pools:\n  p:\n    stratgy: priority\n    members: [m1]\n",
    )
    result = run_cli("check", str(config))

    assert result.returncode == 1
    [issue] = issues_of(result.stderr)
    assert (int(issue["line"]), issue["path"]) == (12, "pools.p.stratgy")
    assert "did you mean 'strategy'" in issue["message"]


def test_run_refuses_an_invalid_config_quickly_with_the_same_errors(tmp_path: Path) -> None:
    config = write(tmp_path, "broken.yaml", BROKEN)
    started = time.monotonic()
    result = run_cli("run", str(config), "--listen", "127.0.0.1:0", timeout=10)
    elapsed = time.monotonic() - started

    assert result.returncode == 1
    assert elapsed < 5
    assert "listening" not in result.stdout
    checked = run_cli("check", str(config))
    assert [m.group(0) for m in issues_of(result.stderr)] == [
        m.group(0) for m in issues_of(checked.stderr)
    ]
    assert len(issues_of(result.stderr)) == 2


def test_run_reports_a_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = run_cli("run", str(missing), timeout=10)

    assert result.returncode == 1
    assert str(missing) in result.stderr
    assert "cannot read" in result.stderr


def test_run_refuses_a_non_loopback_listen_without_clients(tmp_path: Path) -> None:
    example = EXAMPLE.read_text()
    assert "listen: 127.0.0.1:8787" in example
    config = write(
        tmp_path,
        "open.yaml",
        example.replace("listen: 127.0.0.1:8787", f"listen: 0.0.0.0:{closed_port()}"),
    )
    result = run_cli("run", str(config), timeout=10)

    assert result.returncode == 1
    assert "listening" not in result.stdout
    [issue] = issues_of(result.stderr)
    assert issue["path"] == "server.listen"
    assert "non-loopback" in issue["message"]


def test_run_refuses_a_non_loopback_listen_override_without_clients() -> None:
    result = run_cli("run", str(EXAMPLE), "--listen", "0.0.0.0:0", timeout=10)

    assert result.returncode == 1
    assert "listening" not in result.stdout
    assert "non-loopback" in result.stderr


def test_schema_is_valid_json_schema_that_accepts_the_example() -> None:
    result = run_cli("schema")

    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    Draft202012Validator.check_schema(schema)
    assert schema == json.loads((REPO / "schemas" / "pools.schema.json").read_text())
    validator = Draft202012Validator(schema)
    assert list(validator.iter_errors(yaml.safe_load(EXAMPLE.read_text()))) == []
    assert not validator.is_valid({"version": 1, "providerz": {}})


def test_keygen_prints_a_key_and_its_sha256(tmp_path: Path) -> None:
    first, second = run_cli("keygen"), run_cli("keygen")

    keys = []
    for result in (first, second):
        assert result.returncode == 0, result.stderr
        fields = dict(line.split(":", 1) for line in result.stdout.splitlines())
        key, digest = fields["key"].strip(), fields["key_sha256"].strip()
        assert len(key) >= 32
        assert re.fullmatch(r"[0-9a-f]{64}", digest)
        assert hashlib.sha256(key.encode()).hexdigest() == digest
        keys.append((key, digest))
    assert keys[0] != keys[1]

    # The printed hash is what `clients:` takes, and clients allow a public listen address.
    config = write(
        tmp_path,
        "clients.yaml",
        MOCK_ONLY.replace("version: 1\n", "version: 1\nserver: {listen: 0.0.0.0:8080}\n")
        + f"pools:\n  p:\n    members: [m1]\nclients:\n  agent:\n"
        f'    key_sha256: "{keys[0][1]}"\n    pools: [p]\n',
    )
    checked = run_cli("check", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "clients:\n  agent: pools p" in checked.stdout


def test_run_answers_healthz_about_a_second_after_start_with_no_network(tmp_path: Path) -> None:
    """No network needed: the offline example (its Ollama on a closed port, the mock after
    it) serves /healthz soon after the process starts. Bounded generously (3 s) for a
    loaded CI machine; bench/run.py measures the real number (about 0.5 s)."""
    config = offline_example(tmp_path)
    began = time.monotonic()
    daemon = start_daemon(config, tmp_path / "log")
    try:
        host = daemon.url.removeprefix("http://")
        while True:
            try:
                connection = http.client.HTTPConnection(host, timeout=1)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() - began < 3.0, "no /healthz within 3 s of starting"
            time.sleep(0.01)
    finally:
        assert daemon.stop() == 0


# One human line: `2025-01-31T12:00:00.123Z LEVEL logger: message key=value ...`.
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: \S"
)


def test_run_with_log_format_text_writes_human_lines(tmp_path: Path) -> None:
    """`--log-format text` overrides the JSON default for every logger, the batched
    access log included, from start to stop; no line is JSON."""
    daemon = start_daemon(offline_example(tmp_path), tmp_path / "log", "--log-format", "text")
    try:
        connection = http.client.HTTPConnection(daemon.url.removeprefix("http://"), timeout=10)
        body = json.dumps({"model": "default", "messages": [{"role": "user", "content": "hi"}]})
        connection.request(
            "POST", "/v1/chat/completions", body, {"content-type": "application/json"}
        )
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        request_id = response.headers["x-request-id"]
    finally:
        code = daemon.stop()  # SIGTERM to this daemon's PID
    assert code == 0, daemon.output()
    lines = daemon.stdout_path.read_text().splitlines()
    for line in lines:
        assert TEXT_LINE.match(line), f"not a text log line: {line!r}\n{daemon.output()}"
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
    assert any(f" INFO modelpool: listening url={daemon.url} " in line for line in lines)
    [access] = [line for line in lines if " INFO modelpool.access: access " in line]
    assert "method=POST path=/v1/chat/completions status=200 " in access
    assert access.endswith(f" request_id={request_id}")
    assert any(line.endswith(" INFO modelpool: stopping") for line in lines)
