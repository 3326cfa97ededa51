"""`modelpool fake-upstream` as users run it: a scripted sequence over plain HTTP, then SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from e2e_daemon import REPO, START_TIMEOUT, STOP_TIMEOUT, modelpool_command, run_cli

pytestmark = pytest.mark.e2e

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def log_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def wait_for_url(process: subprocess.Popen[bytes], stdout: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        for entry in log_lines(stdout) if stdout.read_text().endswith("\n") else []:
            if entry["msg"] == "listening":
                url: str = entry["url"]
                return url
        time.sleep(0.02)
    process.kill()  # by PID: only the process this test started
    raise AssertionError(f"fake-upstream did not log 'listening'\n{stdout.read_text()}")


def post(url: str, body: Any) -> tuple[int, Any]:
    """The status and JSON body of one POST (an error status is an answer here, not a failure)."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_scripted_sequence_then_sigterm(tmp_path: Path) -> None:
    stdout, stderr = tmp_path / "fake.stdout", tmp_path / "fake.stderr"
    args = ["fake-upstream", "--listen", "127.0.0.1:0", "--fault", "status=503*2", "--fault", "ok"]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            modelpool_command(*args), stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO
        )
    try:
        url = wait_for_url(process, stdout)
        answers = [post(f"{url}/v1/chat/completions", CHAT) for _ in range(4)]
        with urllib.request.urlopen(f"{url}/_stats", timeout=5) as response:
            stats = json.loads(response.read())
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=STOP_TIMEOUT)
    assert [status for status, _ in answers] == [503, 503, 200, 200]
    assert answers[0][1]["error"]["type"] == "server_error"
    assert answers[2][1]["usage"]["total_tokens"] > 0
    assert stats["requests"] == {"/v1/chat/completions": {"status": 2, "ok": 2}}
    assert code == 0, stderr.read_text()
    messages = [entry["msg"] for entry in log_lines(stdout)]
    assert messages[0] == "listening"
    assert messages[-1] == "stopping"
    assert messages.count("request") == 4


def test_a_bad_fault_spec_is_refused() -> None:
    result = run_cli("fake-upstream", "--fault", "status=5000", timeout=10)
    assert result.returncode == 1
    assert "status: 5000 is not within 100..599" in result.stderr
