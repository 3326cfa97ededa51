"""Log lines: JSON or text, structured fields kept, the request id on every line."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator

import orjson
import pytest

from modelpool import logs
from modelpool.config.secrets import Secret
from modelpool.logs import REQUEST_ID, batched_record, flush_logs, setup_logging


class Captured:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def getvalue(self) -> str:
        return self._capsys.readouterr().out


@pytest.fixture
def captured(capsys: pytest.CaptureFixture[str]) -> Iterator[Captured]:
    """setup_logging writes to sys.stdout as it is when called: pytest's capture here."""
    root = logging.getLogger()
    handlers, level, batched = root.handlers[:], root.level, logs.BATCHED
    yield Captured(capsys)
    root.handlers[:] = handlers
    root.setLevel(level)
    logs.BATCHED = batched  # the daemon's batched access writer, set by setup_logging


def test_json_lines_carry_fields_and_the_current_request_id(captured: Captured) -> None:
    setup_logging("json", "info")
    token = REQUEST_ID.set("abc123")
    try:
        logging.getLogger("modelpool.test").info("served", extra={"pool": "p", "n": 3})
    finally:
        REQUEST_ID.reset(token)
    logging.getLogger("modelpool.test").info("outside")
    first, second = (orjson.loads(line) for line in captured.getvalue().splitlines())
    assert first["msg"] == "served"
    assert (first["pool"], first["n"], first["request_id"]) == ("p", 3, "abc123")
    assert first["ts"].endswith("Z")
    assert "request_id" not in second


def test_text_lines_keep_the_fields_too(captured: Captured) -> None:
    setup_logging("text", "debug")
    token = REQUEST_ID.set("r1")
    try:
        logging.getLogger("modelpool.test").warning(
            "slow", extra={"model": "m", "why": "two words", "ms": 12.5}
        )
    finally:
        REQUEST_ID.reset(token)
    [line] = captured.getvalue().splitlines()
    assert " WARNING modelpool.test: slow " in line
    assert 'model=m why="two words" ms=12.5 request_id=r1' in line


def test_exceptions_are_one_json_object(captured: Captured) -> None:
    setup_logging("json", "info")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("modelpool.test").exception("failed")
    [line] = captured.getvalue().splitlines()
    assert "ValueError: boom" in orjson.loads(line)["exc"]


async def test_access_lines_are_written_in_batches(captured: Captured) -> None:
    setup_logging("json", "info")
    access = logging.getLogger("modelpool.access")
    for i in range(3):
        batched_record(access, "access", {"n": i, "request_id": f"r{i}"})
    assert captured.getvalue() == ""  # held for up to 0.1 s: one write, not three
    await asyncio.sleep(0.15)
    lines = [orjson.loads(line) for line in captured.getvalue().splitlines()]
    assert [(line["n"], line["request_id"]) for line in lines] == [(0, "r0"), (1, "r1"), (2, "r2")]
    assert {line["logger"] for line in lines} == {"modelpool.access"}


CANARY = "sk-canary-logs-0123456789"


@dataclasses.dataclass
class Holder:
    key: Secret


def secret_fields() -> dict[str, object]:
    """A Secret as a field, inside a dict, a list and a dataclass (orjson walks those)."""
    key = Secret(CANARY)
    return {"key": key, "headers": {"authorization": key}, "keys": [key], "holder": Holder(key)}


def test_a_secret_in_extra_is_redacted_in_json_lines(captured: Captured) -> None:
    setup_logging("json", "info")
    logging.getLogger("modelpool.test").info("configured %s", Secret(CANARY), extra=secret_fields())
    batched_record(logging.getLogger("modelpool.access"), "access", secret_fields())
    flush_logs()
    output = captured.getvalue()
    assert CANARY not in output
    for line in output.splitlines():
        entry = orjson.loads(line)
        assert entry["key"] == "***"
        assert entry["headers"] == {"authorization": "***"}
        assert entry["keys"] == ["***"]
        assert entry["holder"] == {"key": "***"}
    assert orjson.loads(output.splitlines()[0])["msg"] == "configured Secret('***')"


def test_a_secret_in_extra_is_redacted_in_text_lines(captured: Captured) -> None:
    setup_logging("text", "info")
    logging.getLogger("modelpool.test").info("configured", extra=secret_fields())
    batched_record(logging.getLogger("modelpool.access"), "access", secret_fields())
    flush_logs()
    output = captured.getvalue()
    assert CANARY not in output
    lines = output.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert (  # values with quotes are quoted themselves, as any other value
            r'key=*** headers="{\"authorization\":\"***\"}" keys="[\"***\"]"'
            r' holder="{\"key\":\"***\"}"'
        ) in line
