"""Log lines: JSON or text, structured fields kept, the request id on every line."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest

from modelpool.logs import REQUEST_ID, setup_logging


class Captured:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def getvalue(self) -> str:
        return self._capsys.readouterr().out


@pytest.fixture
def captured(capsys: pytest.CaptureFixture[str]) -> Iterator[Captured]:
    """setup_logging writes to sys.stdout as it is when called: pytest's capture here."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield Captured(capsys)
    root.handlers[:] = handlers
    root.setLevel(level)


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
