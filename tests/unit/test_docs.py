"""The config reference is generated from the schema and must not drift from it."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> dict[str, Any]:
    return runpy.run_path(str(ROOT / "docs" / "gen_config_reference.py"))


def test_config_reference_is_up_to_date() -> None:
    generator = _generator()
    schema = json.loads((ROOT / "schemas" / "pools.schema.json").read_text())
    expected = generator["render"](schema)
    assert (ROOT / "docs" / "config.md").read_text() == expected, (
        "docs/config.md is stale: run `python docs/gen_config_reference.py > docs/config.md`"
    )


def test_every_schema_key_is_documented() -> None:
    text = (ROOT / "docs" / "config.md").read_text()
    for key in (
        "server.listen",
        "providers.NAME.timeouts.first_byte",
        "pools.NAME.failover",
        "pools.NAME.members[].weight",
        "clients.NAME.key_sha256",
        "usage.store",
        "breakers.cooldown.max",
        "models.NAME.price.input_per_mtok",
    ):
        assert f"`{key}`" in text
