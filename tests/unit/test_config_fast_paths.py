"""The loader's shortcuts for large configs give the verdicts the plain way would.

Three shortcuts keep a 2,000-model config's load fast (bench/compile.py):
string scalars skip PyYAML's constructor, the schema's ``$ref``s are inlined
once, and after substitution only the entries that held a ``${…}`` are
validated again. Each is checked here against the slow, obvious way.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from modelpool.config.gate import InlineGate
from modelpool.config.judge import schema_text
from modelpool.config.schema import _validator, validate_schema
from modelpool.config.source import Document, parse_yaml

TRICKY_YAML = """\
plain: text
quoted: "0x1F"
single: '010'
number: 010
hex: 0x1F
float: 1.5e3
flag: yes
nothing: ~
tagged: !!str 5
date: 2024-01-02
multi: |
  line one
  line two
folded: >-
  one
  two
anchor: &shared {a: 1, b: [x, "y"]}
alias: *shared
merged:
  <<: *shared
  c: 3
list: [1, "2", three, 4.0, null, true]
"""


def test_string_shortcut_parses_exactly_like_safe_load() -> None:
    assert parse_yaml(TRICKY_YAML, "f.yaml").data == yaml.safe_load(TRICKY_YAML)


def errors_of(validator: Draft202012Validator, data: Any) -> list[tuple[str, str]]:
    return sorted(
        (json.dumps(list(e.absolute_path)), e.message) for e in validator.iter_errors(data)
    )


def base() -> dict[str, Any]:
    return {
        "version": 1,
        "providers": {"p": {"type": "openai", "base_url": "https://x.example/v1"}},
        "models": {"m": {"provider": "p"}},
        "pools": {"pool": {"members": ["m"]}},
    }


def broken(**sections: Any) -> dict[str, Any]:
    data = base()
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


INVALID = [
    broken(pools={"pool": {"members": ["m", {"model": "m", "weight": 0}], "strategy": "fast"}}),
    broken(pools={"pool": {"members": [], "timeouts": {"total": "soon"}}}),
    broken(models={"m": {"provider": "p", "limits": {"rpm": -1}, "capabilities": ["chat", 1]}}),
    broken(providers={"p": {"type": "mock", "base_url": "ftp://x", "mock": {"latency": "x"}}}),
    broken(
        providers={"p": {"type": "azure_openai", "base_url": "https://x", "max_connections": 0}}
    ),
    broken(server={"listen": "nowhere", "max_body_bytes": "lots"}, extra=1),
    broken(models={"bad name!": {"provider": "p", "price": {"input_per_mtok": "free"}}}),
    broken(breakers={"cooldown": {"initial": 5}}, clients={"c": {"key_sha256": "short"}}),
]


@pytest.mark.parametrize("data", INVALID, ids=range(len(INVALID)))
def test_inlined_schema_finds_the_same_errors_as_the_shipped_one(data: dict[str, Any]) -> None:
    shipped = Draft202012Validator(json.loads(schema_text()))
    found = errors_of(_validator(), data)
    assert found, "the example should be invalid"
    assert found == errors_of(shipped, data)


def test_revalidating_only_substituted_entries_gives_the_full_verdict() -> None:
    text = textwrap.dedent(
        """\
        version: 1
        server:
          listen: nowhere
        providers:
          p:
            type: openai
            base_url: https://x.example/v1
            max_connections: "8"
          q: {type: mock}
        models:
          m: {provider: p, capabilities: [chat, talk]}
          n: {provider: q}
        pools:
          pool:
            members: ["bad name!", {model: n, weight: "heavy"}]
          other: {members: [n]}
        """
    )
    doc = parse_yaml(text, "pools.yaml")
    substituted = [
        ("server", "listen"),
        ("providers", "p", "max_connections"),
        ("models", "m", "capabilities", 1),
        ("pools", "pool", "members", 0),
        ("pools", "pool", "members", 1, "weight"),
    ]
    full = [str(issue) for issue in validate_schema(doc, InlineGate())]
    assert len(full) == 5
    assert [str(issue) for issue in validate_schema(doc, InlineGate(), within=substituted)] == full
    assert validate_schema(doc, InlineGate(), within=[]) == []
    assert validate_schema(doc, InlineGate(), within=[("pools", "other", "members", 0)]) == []


def test_a_path_outside_the_schema_means_validating_everything() -> None:
    doc = Document("f.yaml", {**base(), "pools": {}})
    assert [i.path for i in validate_schema(doc, InlineGate(), within=[("nonsense",)])] == ["pools"]
