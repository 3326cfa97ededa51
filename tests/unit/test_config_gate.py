"""The schema gate in a child process: same verdicts as in-process, never a hang or a wrong one.

The daemon validates each load through a short-lived child so that
jsonschema-rs is never mapped into the long-lived process. A child that is
missing, dies or stalls may only cost speed: its gate then says "not valid"
and jsonschema gives the verdict.
"""

from __future__ import annotations

import io
import pickle
import struct
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelpool.config import gate
from modelpool.config.gate import child_gate, inline_gate
from modelpool.config.judge import serve
from modelpool.config.load import load_config
from modelpool.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "examples" / "pools.yaml").read_text())
INVALID = {**EXAMPLE, "pools": {"p": {"members": [], "strategy": "fastest"}}}

CONFIG = """\
version: 1
providers:
  up: {type: openai_compatible, base_url: "${env:BASE_URL}"}
models:
  a: {provider: up}
pools:
  p: {members: [a]}
"""


def frame(document: Any) -> bytes:
    payload = pickle.dumps(document)
    return struct.pack(">Q", len(payload)) + payload


def test_a_child_gives_the_same_verdicts_as_this_process() -> None:
    documents = [EXAMPLE, INVALID, {"version": 1, "api_version": date(2023, 6, 1)}, {1: "x"}]
    with child_gate() as child, inline_gate() as inline:
        verdicts = [child.passes(d) for d in documents]
        assert verdicts == [inline.passes(d) for d in documents]
    assert verdicts == [True, False, False, False]


def test_a_config_loads_the_same_through_a_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pools.yaml"
    path.write_text(CONFIG)
    monkeypatch.setenv("BASE_URL", "http://127.0.0.1:9/v1")
    assert load_config(path, gate=child_gate) == load_config(path)

    monkeypatch.setenv("BASE_URL", "ftp://127.0.0.1/v1")  # invalid once substituted: 2nd check
    errors = [str(load_config_error(path, factory)) for factory in (child_gate, inline_gate)]
    assert errors[0] == errors[1]
    assert "providers.up.base_url" in errors[0]


def load_config_error(path: Path, factory: gate.GateFactory) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path, gate=factory)
    return caught.value


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("/nonexistent/python",), id="cannot-start"),
        pytest.param((None,), id="no-executable"),  # sys.executable can be None
        pytest.param((sys.executable, "-c", "pass"), id="exits-at-once"),
        pytest.param((sys.executable, "-c", "import sys; sys.stdout.write('?')"), id="garbage"),
    ],
)
def test_a_broken_child_leaves_the_verdict_to_jsonschema(
    command: tuple[str, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(gate, "CHILD", command)
    with child_gate() as child:
        assert not child.passes(EXAMPLE)
        assert not child.passes(EXAMPLE)  # given up on: no second attempt, no hang
    assert "validating with jsonschema" in caplog.text
    path = tmp_path / "pools.yaml"
    path.write_text(CONFIG)
    monkeypatch.setenv("BASE_URL", "http://127.0.0.1:9/v1")
    assert load_config(path, gate=child_gate) == load_config(path)


def test_a_stalled_child_is_killed_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gate, "CHILD", (sys.executable, "-c", "import time; time.sleep(60)"))
    monkeypatch.setattr(gate, "ANSWER_TIMEOUT", 0.3)
    started = time.monotonic()
    with child_gate() as child:
        assert not child.passes(EXAMPLE)
    assert time.monotonic() - started < 10


def test_the_child_is_gone_once_the_load_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Any] = []
    popen = gate.subprocess.Popen

    def spy(*args: Any, **kwargs: Any) -> Any:
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(gate.subprocess, "Popen", spy)
    with child_gate() as child:
        assert child.passes(EXAMPLE)
    [proc] = started
    assert proc.returncode is not None, "stopped and reaped: no zombie"


def test_serve_answers_each_framed_document_until_the_input_ends() -> None:
    answers = io.BytesIO()
    serve(io.BytesIO(frame(EXAMPLE) + frame(INVALID) + frame(EXAMPLE)[:-3]), answers)
    assert answers.getvalue() == b"10"  # the truncated third frame ends the loop unanswered
