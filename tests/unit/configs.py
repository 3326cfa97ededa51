"""The smallest valid config, and loading it with a few lines added, for config tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

from modelpool.config.load import load_config
from modelpool.config.spec import Config

BASE = """\
version: 1
providers:
  mock: {type: mock}
models:
  m1: {provider: mock}
pools:
  p: {members: [m1]}
"""


def load(tmp_path: Path, extra: str = "") -> Config:
    """BASE plus ``extra`` (dedented YAML), written to tmp_path and loaded for real."""
    path = tmp_path / "pools.yaml"
    path.write_text(BASE + textwrap.dedent(extra))
    return load_config(path, env={})
