"""The compiled schema gate and jsonschema must give the same verdict on every document.

The gate alone settles valid configs, so a document it accepts but jsonschema
rejects would slip through unexplained; hypothesis mutates real configs to
look for one.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from modelpool.config.judge import judge
from modelpool.config.schema import _validator

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [
    yaml.safe_load(p.read_text())
    for p in sorted((ROOT / "examples").glob("*.yaml"))
    if not p.name.endswith(".enc.yaml")
]

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "10s", "250ms", "5 m", "16MiB", "round_robin", "x y", "${env:X}", "mock"]),
    st.lists(st.sampled_from(["chat", "nope", "m1"]), max_size=3),
    st.dictionaries(st.sampled_from(["model", "weight", "typo"]), st.integers(0, 3), max_size=2),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


def _agree(document: Any) -> None:
    slow_valid = not any(True for _ in _validator().iter_errors(document))
    assert judge(document) == slow_valid


def test_examples_are_valid_for_both() -> None:
    for example in EXAMPLES:
        assert judge(example)
        _agree(example)


@settings(max_examples=300, deadline=None)
@given(
    example=st.sampled_from(EXAMPLES),
    pick=st.integers(min_value=0),
    action=st.sampled_from(["replace", "delete", "add"]),
    value=VALUES,
)
def test_mutated_configs_get_the_same_verdict(
    example: Any, pick: int, action: str, value: Any
) -> None:
    document = copy.deepcopy(example)
    paths = [p for p in _paths(document) if p]
    path = paths[pick % len(paths)]
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif isinstance(parent, dict):
        parent[f"{last}_extra"] = value
    else:
        parent.append(value)
    _agree(document)
