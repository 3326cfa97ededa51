"""Every shipped example passes `modelpool check`, exactly as a user would run it."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelpool.cli import main
from modelpool.config.load import load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
CONFIGS = [path for path in EXAMPLES if not path.name.endswith(".enc.yaml")]
SCHEMA_LINE = "# yaml-language-server: $schema=../schemas/pools.schema.json"


def test_the_examples_are_there() -> None:
    names = {path.name for path in CONFIGS}
    assert {"pools.yaml", "production.yaml"} <= names


@pytest.mark.usefixtures("age_key")
@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_example_passes_check(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"config: {path} (valid)" in out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_example_starts_with_the_schema_line(path: Path) -> None:
    assert path.read_text("utf-8").splitlines()[0] == SCHEMA_LINE
    assert (path.parent / "../schemas/pools.schema.json").resolve().is_file()


@pytest.mark.usefixtures("age_key")
def test_production_example_takes_its_keys_from_sops() -> None:
    config = load_config(ROOT / "examples" / "production.yaml", env={})
    keys = {name: p.api_key.reveal() for name, p in config.providers.items() if p.api_key}
    assert keys == {
        "openai": "sk-example-not-a-real-key",
        "anthropic": "sk-ant-example-not-a-real-key",
    }
    assert str(ROOT / "examples" / "secrets.enc.yaml") in config.files
    assert {p.strategy for p in config.pools.values()} >= {"weighted", "priority"}
    assert config.pools["claude"].failover == ("smart", "fast")


@pytest.mark.usefixtures("sops_env")
def test_production_example_without_the_key_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(ROOT / "examples" / "production.yaml")]) == 1
    err = capsys.readouterr().err
    assert "secrets.sops_files[0]: cannot decrypt secrets.enc.yaml: no usable key" in err


def test_offline_example_needs_no_keys_and_no_network(capsys: pytest.CaptureFixture[str]) -> None:
    """examples/pools.yaml: local Ollama first, the built-in mock as the fallback."""
    config = load_config(ROOT / "examples" / "pools.yaml", env={})
    assert not config.secrets
    default = config.pools["default"]
    first, *rest = (config.models[m.model] for m in default.members)
    assert config.providers[first.provider].type == "ollama"
    assert any(config.providers[m.provider].type == "mock" for m in rest)
