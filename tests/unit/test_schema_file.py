"""`modelpool schema` prints the shipped schema: valid draft 2020-12, and the one editors use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from modelpool.cli import main
from modelpool.config.units import DURATION_PATTERN, POSITIVE_DURATION_PATTERN, SIZE_PATTERN

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "schemas" / "pools.schema.json"


def _printed_schema(capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["schema"]) == 0
    return capsys.readouterr().out


def test_schema_command_prints_the_repository_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert _printed_schema(capsys) == SCHEMA_FILE.read_text("utf-8")


def test_schema_is_valid_draft_2020_12(capsys: pytest.CaptureFixture[str]) -> None:
    schema = json.loads(_printed_schema(capsys))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("example", ["pools.yaml", "production.yaml"])
def test_examples_pass_the_bare_schema(example: str) -> None:
    """Editors validate with the schema alone (no modelpool): the examples must pass there too."""
    schema = json.loads(SCHEMA_FILE.read_text("utf-8"))
    data = yaml.safe_load((ROOT / "examples" / example).read_text("utf-8"))
    assert [e.message for e in Draft202012Validator(schema).iter_errors(data)] == []


def test_schema_units_match_the_parsers() -> None:
    """The schema's duration and size grammar is the one config/units.py parses."""
    defs = json.loads(SCHEMA_FILE.read_text("utf-8"))["$defs"]
    assert defs["duration"]["oneOf"][1]["pattern"] == DURATION_PATTERN
    assert defs["positiveDuration"]["oneOf"][1]["pattern"] == POSITIVE_DURATION_PATTERN
    assert defs["size"]["oneOf"][1]["pattern"] == SIZE_PATTERN
