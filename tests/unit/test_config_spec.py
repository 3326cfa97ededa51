"""What a valid config compiles to: defaults applied, paths resolved, values typed."""

from __future__ import annotations

from pathlib import Path

import pytest
from configs import load


@pytest.mark.parametrize(
    ("store", "expected"),
    [
        ("sqlite:///var/lib/modelpool/usage.db", "sqlite:///var/lib/modelpool/usage.db"),
        ("sqlite:////var/lib/modelpool/usage.db", "sqlite:///var/lib/modelpool/usage.db"),
        ("state/usage.db", "sqlite://{base}/state/usage.db"),
        ("/srv/usage.db", "sqlite:///srv/usage.db"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_usage_store_paths(tmp_path: Path, store: str, expected: str) -> None:
    config = load(tmp_path, f"usage: {{store: '{store}'}}\n")
    assert config.usage.store == expected.format(base=tmp_path.resolve())


def test_default_store_sits_beside_the_config(tmp_path: Path) -> None:
    assert load(tmp_path).usage.store == f"sqlite://{tmp_path.resolve()}/usage.db"


def test_defaults_are_applied(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8787)
    assert config.server.max_body_bytes == 16 * 1024 * 1024
    assert config.models["m1"].upstream_model == "m1"
    assert config.models["m1"].capabilities == {"chat", "completions", "stream"}
    pool = config.pools["p"]
    assert (pool.strategy, pool.retry.attempts, pool.failover) == ("round_robin", 3, ())
    assert config.providers["mock"].timeouts.connect == 5.0


def test_durations_sizes_and_overrides_are_typed(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        server: {listen: "[::1]:9000", max_body_bytes: 1MiB}
        breakers: {cooldown: {initial: 2s, max: 1m}}
        """,
    )
    assert (config.server.host, config.server.port) == ("::1", 9000)
    assert config.server.max_body_bytes == 1024 * 1024
    assert config.models["m1"].breaker.cooldown_initial == 2.0
    assert config.models["m1"].breaker.cooldown_max == 60.0
