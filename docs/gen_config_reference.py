"""Generate docs/config.md from schemas/pools.schema.json.

The schema is the single source of truth for every key; this page is derived
from it, and a test fails when the two drift apart. Run:

    .venv/bin/python docs/gen_config_reference.py > docs/config.md
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schemas" / "pools.schema.json"

HEADER = """# Config reference

Generated from `schemas/pools.schema.json` by `docs/gen_config_reference.py`;
do not edit by hand. Every key below is checked: an unknown key anywhere is an
error with a did-you-mean suggestion, and `modelpool check FILE` reports every
problem with its file, line and key path.

- Durations: `250ms`, `10s`, `5m`, `1h`, or a number of seconds.
- Sizes: `512KiB`, `16MiB`, or a number of bytes.
- Any string may contain `${env:NAME}` or `${secret:NAME}` (from `secrets.sops_files`).
- `NAME` in a path stands for a name you choose (letters, digits, `. _ : / @ + -`).
"""


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target = node["$ref"].removeprefix("#/$defs/")
        merged = {**schema["$defs"][target], **{k: v for k, v in node.items() if k != "$ref"}}
        node = merged
    return node


NAMED_TYPES = {"duration", "positiveDuration", "size", "name", "usd", "positiveInt"}


def type_of(schema: dict[str, Any], node: dict[str, Any]) -> str:
    target = node.get("$ref", "").removeprefix("#/$defs/")
    if target in NAMED_TYPES:
        named = {
            "usd": "number (USD)",
            "positiveInt": "integer ≥ 1",
            "positiveDuration": "duration > 0",
        }
        return named.get(target, target)
    node = resolve(schema, node)
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if "const" in node:
        return f"`{node['const']}`"
    if "oneOf" in node:
        return " or ".join(sorted({type_of(schema, option) for option in node["oneOf"]}))
    kind = node.get("type", "any")
    if kind == "array":
        return f"list of {type_of(schema, node.get('items', {}))}"
    if kind == "object" and "properties" not in node:
        return "mapping"
    return str(kind)


def rows(
    schema: dict[str, Any], node: dict[str, Any], path: str
) -> Iterator[tuple[str, str, str, bool]]:
    node = resolve(schema, node)
    required = set(node.get("required", ()))
    for key, child in node.get("properties", {}).items():
        child_path = f"{path}.{key}" if path else key
        resolved = resolve(schema, child)
        yield child_path, type_of(schema, child), resolved.get("description", ""), key in required
        yield from _children(schema, resolved, child_path)


def _children(
    schema: dict[str, Any], node: dict[str, Any], path: str
) -> Iterator[tuple[str, str, str, bool]]:
    if "properties" in node:
        yield from rows(schema, node, path)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and extra:
        yield from _children(schema, resolve(schema, extra), f"{path}.NAME")
    items = node.get("items")
    if isinstance(items, dict):
        item = resolve(schema, items)
        for option in item.get("oneOf", [item]):
            yield from _children(schema, resolve(schema, option), f"{path}[]")


def render(schema: dict[str, Any]) -> str:
    lines = [HEADER, "| key | type | required | meaning |", "|---|---|---|---|"]
    for path, kind, description, required in rows(schema, schema, ""):
        lines.append(f"| `{path}` | {kind} | {'yes' if required else ''} | {description} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.stdout.write(render(json.loads(SCHEMA.read_text())))


if __name__ == "__main__":
    main()
