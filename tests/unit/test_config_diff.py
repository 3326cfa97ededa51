"""What a reload reports as changed, and what it says only a restart can apply."""

from __future__ import annotations

from pathlib import Path

from configs import load

from modelpool.config.diff import diff_configs

SHARED = """\
shared_state:
  redis: redis://:hunter2@127.0.0.1:6379/0
  prefix: {prefix}
  on_failure: {mode}
"""


def test_a_changed_shared_state_section_needs_a_restart(tmp_path: Path) -> None:
    old = load(tmp_path, SHARED.format(prefix="a", mode="fail_open"))
    new = load(tmp_path, SHARED.format(prefix="b", mode="fail_closed"))
    diff = diff_configs(old, new)
    assert diff.restart_needed == ("shared_state.prefix", "shared_state.on_failure")
    assert diff.summary().endswith("needs restart: shared_state.prefix, shared_state.on_failure")
    assert "hunter2" not in diff.summary()


def test_turning_shared_state_on_or_off_needs_a_restart(tmp_path: Path) -> None:
    local = load(tmp_path)
    shared = load(tmp_path, SHARED.format(prefix="modelpool", mode="fail_open"))
    assert diff_configs(local, shared).restart_needed == ("shared_state.redis",)
    assert diff_configs(shared, local).restart_needed == ("shared_state.redis",)


def test_an_unchanged_shared_state_section_needs_nothing(tmp_path: Path) -> None:
    old = load(tmp_path, SHARED.format(prefix="a", mode="fail_open"))
    new = load(tmp_path, SHARED.format(prefix="a", mode="fail_open"))
    assert diff_configs(old, new).restart_needed == ()
