"""A real sops round trip: encrypted file → `sops --decrypt` → ${secret:...} → provider key.

Uses the real `sops` binary and the committed test-only age key
(tests/fixtures/age/key.txt). Also checks the promise of SPEC §7: secret
values never show in reprs or in `modelpool check` output.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import orjson
import pytest

from modelpool.cli import main
from modelpool.config.load import load_config
from modelpool.config.secrets import Secret, redacted
from modelpool.describe import config_json, redact
from modelpool.errors import ConfigError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SECRETS_FILE = FIXTURES / "secrets.enc.yaml"

# The plain-text content of tests/fixtures/secrets.enc.yaml (see tests/fixtures/age/README.md).
OPENAI_KEY = "sk-test-fixture-openai-4f9c2a7e"
ANTHROPIC_KEY = "sk-ant-test-fixture-b81d03c6"
ADMIN_TOKEN = "test-fixture-admin-token-5e6f7a8b"
ALL_SECRETS = (OPENAI_KEY, ANTHROPIC_KEY, ADMIN_TOKEN)

CONFIG = """\
    version: 1
    server:
      admin_token: ${secret:anthropic.admin.token}
    secrets:
      sops_files: [secrets.enc.yaml]
    providers:
      openai:
        type: openai
        base_url: https://api.openai.com/v1
        api_key: ${secret:openai_api_key}
      anthropic:
        type: anthropic
        base_url: https://api.anthropic.com
        api_version: "2023-06-01"
        api_key: ${secret:anthropic.api_key}
        headers: {X-Upstream-Port: "${secret:port}"}
    models:
      gpt-4o: {provider: openai}
      claude-sonnet-4: {provider: anthropic, upstream_model: claude-sonnet-4-20250514}
    pools:
      smart: {members: [gpt-4o, claude-sonnet-4]}
    usage:
      store: redis://:${secret:anthropic.admin.token}@127.0.0.1:6379/0
    """


@pytest.fixture
def config_path(tmp_path: Path, age_key: Path) -> Path:
    """CONFIG next to a copy of the encrypted fixture, referenced by a relative path."""
    (tmp_path / "secrets.enc.yaml").write_bytes(SECRETS_FILE.read_bytes())
    path = tmp_path / "pools.yaml"
    path.write_text(textwrap.dedent(CONFIG), "utf-8")
    return path


def _revealed(secret: Secret | None) -> str:
    assert secret is not None
    return secret.reveal()


def test_secret_reaches_the_provider_key(config_path: Path) -> None:
    config = load_config(config_path, env={})
    assert _revealed(config.providers["openai"].api_key) == OPENAI_KEY
    assert _revealed(config.providers["anthropic"].api_key) == ANTHROPIC_KEY


def test_nested_keys_flatten_with_dots_and_scalars_become_strings(config_path: Path) -> None:
    config = load_config(config_path, env={})
    assert _revealed(config.server.admin_token) == ADMIN_TOKEN  # anthropic.admin.token
    header = config.providers["anthropic"].headers["X-Upstream-Port"]
    assert isinstance(header, Secret)
    assert header.reveal() == "8443"  # `port: 8443` in the encrypted file


def test_the_sops_file_is_part_of_the_config(config_path: Path) -> None:
    """Reload watches every file the config came from, so rotating a key reloads."""
    config = load_config(config_path, env={})
    assert config.files == (
        str(config_path.resolve()),
        str(config_path.parent / "secrets.enc.yaml"),
    )
    before = config.digest
    (config_path.parent / "secrets.enc.yaml").write_bytes(SECRETS_FILE.read_bytes() + b"\n")
    assert load_config(config_path, env={}).digest != before


def test_secrets_never_show_in_reprs(config_path: Path) -> None:
    config = load_config(config_path, env={})
    key = config.providers["openai"].api_key
    assert key is not None
    assert repr(key) == str(key) == "Secret('***')"
    assert f"{key}" == "Secret('***')"
    typed = repr(config.providers) + repr(config.server)  # api keys, headers, admin token
    for value in ALL_SECRETS:
        assert value not in typed


def test_secrets_never_show_in_json(config_path: Path) -> None:
    """JSON has no hook an object implements: plain encoders refuse a Secret naming only
    its type; with ``default=str`` (or the logs' ``redacted``) it is written redacted;
    the typed specs (dataclasses orjson walks itself) and /admin/config's form hold no
    value either."""
    config = load_config(config_path, env={})
    key = config.providers["openai"].api_key
    for dumps in (json.dumps, orjson.dumps):
        with pytest.raises(TypeError, match="Secret") as refused:
            dumps({"auth": [key]})
        assert OPENAI_KEY not in str(refused.value)
    assert json.dumps(key, default=str) == orjson.dumps(key, default=str).decode()
    assert json.dumps(key, default=str) == "\"Secret('***')\""
    assert json.dumps([key], default=redacted) == orjson.dumps([key], default=redacted).decode()
    assert orjson.dumps({"auth": key}, default=redacted) == b'{"auth":"***"}'
    typed = [config.providers["anthropic"], config.server]  # api key, header, admin token
    dumped = [
        orjson.dumps(typed, default=str).decode(),
        orjson.dumps(typed, default=redacted).decode(),
        json.dumps(typed, default=str),
        json.dumps(config_json(config)),
        orjson.dumps(config_json(config)).decode(),
    ]
    assert '"api_key":"***"' in dumped[1]
    for text in dumped:
        for value in ALL_SECRETS:
            assert value not in text


def test_every_secret_is_listed_for_redaction(config_path: Path) -> None:
    """A secret inside a plain string (the Redis URL) stays plain for its one user,
    so outputs scrub every value in ``config.secrets``; that must catch them all."""
    config = load_config(config_path, env={})
    assert {s.reveal() for s in config.secrets} >= set(ALL_SECRETS)
    scrubbed = redact(repr(config), config)
    assert "redis://:***@127.0.0.1:6379/0" in scrubbed
    for value in ALL_SECRETS:
        assert value not in scrubbed


def test_check_output_never_contains_secrets(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(config_path)]) == 0
    out, err = capsys.readouterr()
    assert "smart" in out
    assert "key ***" in out
    assert "usage: redis://:***@127.0.0.1:6379/0" in out
    for value in ALL_SECRETS:
        assert value not in out + err


def test_check_errors_never_contain_secrets(
    tmp_path: Path, age_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A secret substituted into a value the schema rejects is masked in the message."""
    path = tmp_path / "pools.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            secrets: {{sops_files: ["{SECRETS_FILE}"]}}
            providers:
              openai: {{type: openai, base_url: "${{secret:openai_api_key}}"}}
            models:
              gpt-4o: {{provider: openai}}
            pools:
              smart: {{members: [gpt-4o]}}
            """
        ),
        "utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert [(i.line, i.path) for i in caught.value.issues] == [(4, "providers.openai.base_url")]
    assert caught.value.issues[0].message.startswith("invalid value '***': ")
    assert main(["check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "providers.openai.base_url: invalid value '***'" in err
    assert OPENAI_KEY not in out + err
