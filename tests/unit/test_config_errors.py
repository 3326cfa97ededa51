"""Every kind of config mistake gives `file:line key.path: message`, all of them at once.

Each test writes a small config into a temporary folder (the working directory
during the test, so messages read ``pools.yaml:12 ...`` as users see them) and
asserts the complete list of issues: the line, the key path and the wording
are what `modelpool check` prints and what users act on.
"""

from __future__ import annotations

import stat
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from modelpool.cli import main
from modelpool.config.load import load_config
from modelpool.errors import ConfigError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SECRETS_FILE = FIXTURES / "secrets.enc.yaml"
OTHER_AGE_KEY = FIXTURES / "age" / "other-key.txt"
KEY_A = "a" * 64


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def write_config(directory: Path, text: str, name: str = "pools.yaml") -> str:
    """Write ``text`` (dedented: its first line is line 1) and return the name to load."""
    (directory / name).write_text(textwrap.dedent(text), "utf-8")
    return name


def errors(directory: Path, text: str, env: Mapping[str, str] | None = None) -> list[str]:
    """The issues `load_config` raises for ``text``, rendered as users read them."""
    name = write_config(directory, text)
    with pytest.raises(ConfigError) as caught:
        load_config(name, env=env or {})
    return [str(issue) for issue in caught.value.issues]


def test_valid_config_loads(tmp_path: Path) -> None:
    """The positive control: the shape most tests below break in one place."""
    name = write_config(
        tmp_path,
        """\
        version: 1
        providers:
          mock: {type: mock}
        models:
          small: {provider: mock}
        pools:
          default: {members: [small]}
        """,
    )
    config = load_config(name, env={})
    assert list(config.pools) == ["default"]
    assert config.pools["default"].members[0].model == "small"


# --------------------------------------------------------------------------- YAML


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          mock:
            type: mock
           base_url: http://x
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:5: YAML syntax error: did not find expected key (while parsing a block mapping)"
    ]


def test_tab_indentation_is_a_syntax_error(tmp_path: Path) -> None:
    text = "version: 1\nproviders:\n  mock:\n\ttype: mock\n"
    assert errors(tmp_path, text) == [
        "pools.yaml:4: YAML syntax error: found character that cannot start any token"
        " (while scanning for the next token)"
    ]


def test_duplicate_yaml_keys_are_errors_not_silently_overwritten(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          mock: {type: mock}
          mock: {type: mock}
        models:
          small: {provider: mock}
        pools:
          default:
            strategy: priority
            members: [small]
            strategy: weighted
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:4 providers.mock: duplicate key",
        "pools.yaml:11 pools.default.strategy: duplicate key",
    ]


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- a list\n", "just a string\n"])
def test_config_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    assert errors(tmp_path, text) == ["pools.yaml:1: the config must be a YAML mapping"]


def test_missing_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("nope.yaml", env={})
    assert [str(i) for i in caught.value.issues] == [
        "nope.yaml: cannot read config: No such file or directory"
    ]


# --------------------------------------------------------------------------- schema


def test_wrong_type(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          mock: {type: mock, max_connections: many}
        models:
          small:
            provider: mock
            limits: {rpm: "10"}
        pools:
          default: {members: small}
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:3 providers.mock.max_connections: expected an integer, got the string 'many'",
        "pools.yaml:7 models.small.limits.rpm: expected an integer, got the string '10'",
        "pools.yaml:9 pools.default.members: expected a list, got the string 'small'",
    ]


def test_bad_enum_suggests_the_closest_value(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          oai: {type: openia, base_url: https://api.openai.com/v1}
        models:
          small: {provider: oai}
        pools:
          default:
            strategy: wieghted
            members: [small]
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:3 providers.oai.type: 'openia' is not one of openai, openai_compatible,"
        " ollama, anthropic, azure_openai, mock (did you mean 'openai'?)",
        "pools.yaml:8 pools.default.strategy: 'wieghted' is not one of round_robin, weighted,"
        " priority, least_in_flight, least_latency, lowest_cost (did you mean 'weighted'?)",
    ]


def test_bad_duration_and_size(tmp_path: Path) -> None:
    text = """\
        version: 1
        server:
          max_body_bytes: 16 megs
        providers:
          mock:
            type: mock
            timeouts: {connect: 5 sec}
        models:
          small: {provider: mock}
        pools:
          default:
            members: [small]
            retry: {backoff: {initial: 10 s}}
        """
    duration = "expected a duration: 250ms, 10s, 5m, 1h, or a number of seconds."
    assert errors(tmp_path, text) == [
        "pools.yaml:3 server.max_body_bytes: invalid value '16 megs':"
        " expected a size: 512KiB, 16MiB, or a number of bytes.",
        f"pools.yaml:7 providers.mock.timeouts.connect: invalid value '5 sec': {duration}",
        f"pools.yaml:13 pools.default.retry.backoff.initial: invalid value '10 s': {duration}",
    ]


def test_unknown_top_level_key_suggests_or_lists_known_keys(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          mock: {type: mock}
        models:
          small: {provider: mock}
        pools:
          default: {members: [small]}
        breaker: {failure_threshold: 3}
        colour: red
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:8 breaker: unknown key 'breaker' (did you mean 'breakers'?)",
        "pools.yaml:9 colour: unknown key 'colour' (known keys: breakers, clients, models,"
        " pools, providers, secrets, server, shared_state, usage, version)",
    ]


def test_unknown_key_in_provider(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          oai:
            type: openai
            base_url: https://api.openai.com/v1
            apikey: ${env:OPENAI_API_KEY}
        models:
          small: {provider: oai}
        pools:
          default: {members: [small]}
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:6 providers.oai.apikey: unknown key 'apikey' (did you mean 'api_key'?)"
    ]


def test_unknown_key_in_pool_member(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          mock: {type: mock}
        models:
          small: {provider: mock}
          big: {provider: mock}
        pools:
          default:
            strategy: weighted
            members:
              - {model: small, weight: 3}
              - {model: big, wieght: 1}
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:12 pools.default.members[1].wieght: unknown key 'wieght'"
        " (did you mean 'weight'?)"
    ]


def test_unknown_key_in_nested_timeouts(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          mock:
            type: mock
            timeouts:
              connect: 1s
              frist_byte: 2s
        models:
          small: {provider: mock}
        pools:
          default:
            members: [small]
            timeouts: {totl: 30s}
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:7 providers.mock.timeouts.frist_byte: unknown key 'frist_byte'"
        " (did you mean 'first_byte'?)",
        "pools.yaml:13 pools.default.timeouts.totl: unknown key 'totl' (did you mean 'total'?)",
    ]


def test_missing_required_keys(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          mock: {type: mock}
          oai: {type: openai}
        models:
          small:
            upstream_model: small-v2
          priced:
            provider: mock
            price: {input_per_mtok: 1.0}
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:1: missing required key 'pools'",
        "pools.yaml:4 providers.oai: missing required key 'base_url'",
        "pools.yaml:6 models.small: missing required key 'provider'",
        "pools.yaml:10 models.priced.price: missing required key 'output_per_mtok'",
    ]


def test_pool_member_of_wrong_shape(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          mock: {type: mock}
        models:
          small: {provider: mock}
        pools:
          default:
            members:
              - 5
              - {weight: 2}
              - {model: small, weight: 0}
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:9 pools.default.members[0]: expected a string or a mapping, got the number 5",
        "pools.yaml:10 pools.default.members[1]: missing required key 'model'",
        "pools.yaml:11 pools.default.members[2].weight:"
        " 0 is less than or equal to the minimum of 0",
    ]


def test_invalid_names_point_at_the_name(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          mock: {type: mock}
        models:
          small: {provider: mock}
        pools:
          default: {members: [small]}
          my pool: {members: [small]}
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:8 pools.my pool: invalid name 'my pool':"
        " Letters, digits and . _ : / @ + -, starting with a letter or digit."
    ]


def test_version_and_provider_specific_rules(tmp_path: Path) -> None:
    text = """\
        version: 2
        providers:
          oai:
            type: openai
            base_url: https://api.openai.com/v1
            mock: {latency: 1s}
          azure:
            type: azure_openai
            base_url: https://example.openai.azure.com
        models:
          small: {provider: oai}
        pools:
          default: {members: [small]}
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:1 version: must be 1, got 2",
        "pools.yaml:6 providers.oai.mock: `mock` settings apply only to providers of type: mock",
        "pools.yaml:7 providers.azure: missing required key 'api_version'",
    ]


def test_an_anthropic_model_cannot_declare_what_the_messages_api_lacks(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          claude: {type: anthropic, base_url: https://api.anthropic.com}
        models:
          sonnet:
            provider: claude
            capabilities: [chat, embeddings, stream, completions]
          implied: {provider: claude}
        pools:
          default: {members: [sonnet, implied]}
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:7 models.sonnet.capabilities[1]: an anthropic model cannot serve embeddings"
        " (the Messages API has no counterpart); remove it",
        "pools.yaml:7 models.sonnet.capabilities[3]: an anthropic model cannot serve completions"
        " (the Messages API has no counterpart); remove it",
    ]


# --------------------------------------------------------------------------- ${env:...}


def test_missing_env_var(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          oai:
            type: openai
            base_url: https://api.openai.com/v1
            api_key: ${env:OPENAI_API_KEY}
            headers:
              OpenAI-Organization: "org-${env:OPENAI_ORG}"
        models:
          small: {provider: oai}
        pools:
          default: {members: [small]}
        """
    assert errors(tmp_path, text, env={"OPENAI_ORG": "acme"}) == [
        "pools.yaml:6 providers.oai.api_key: environment variable 'OPENAI_API_KEY' is not set"
    ]


def test_env_var_values_are_substituted(tmp_path: Path) -> None:
    name = write_config(
        tmp_path,
        """\
        version: 1
        server:
          listen: ${env:LISTEN}
        providers:
          local:
            type: ollama
            base_url: ${env:OLLAMA_URL}
            api_key: ${env:KEY}
            headers: {X-Team: "team-${env:TEAM}"}
        models:
          llama: {provider: local}
        pools:
          default: {members: [llama]}
        """,
    )
    env = {
        "LISTEN": "127.0.0.1:9100",
        "OLLAMA_URL": "http://10.0.0.5:11434",
        "KEY": "k-123456",
        "TEAM": "blue",
    }
    config = load_config(name, env=env)
    assert (config.server.host, config.server.port) == ("127.0.0.1", 9100)
    provider = config.providers["local"]
    assert provider.base_url == "http://10.0.0.5:11434"
    assert provider.api_key is not None
    assert provider.api_key.reveal() == "k-123456"
    header = provider.headers["X-Team"]
    assert not isinstance(header, str)
    assert header.reveal() == "team-blue"


def test_env_values_are_checked_against_the_schema_after_substitution(tmp_path: Path) -> None:
    text = """\
        version: 1
        server:
          listen: ${env:LISTEN}
        providers:
          local: {type: ollama, base_url: "${env:OLLAMA_URL}"}
        models:
          llama: {provider: local}
        pools:
          default: {members: [llama]}
        """
    assert errors(tmp_path, text, env={"LISTEN": "nowhere", "OLLAMA_URL": "ftp://x"}) == [
        "pools.yaml:3 server.listen: invalid value 'nowhere': host:port to serve on;"
        " [::1]:port for IPv6. Default 127.0.0.1:8787. A non-loopback host needs `clients`.",
        "pools.yaml:5 providers.local.base_url: invalid value 'ftp://x': What the provider's own"
        " SDK takes: https://api.openai.com/v1, https://api.anthropic.com,"
        " http://127.0.0.1:11434 for Ollama.",
    ]
    # Unset, they are reported once, as unset, not also as invalid values.
    assert errors(tmp_path, text) == [
        "pools.yaml:3 server.listen: environment variable 'LISTEN' is not set",
        "pools.yaml:5 providers.local.base_url: environment variable 'OLLAMA_URL' is not set",
    ]


def test_unknown_reference_kind(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          oai:
            type: openai
            base_url: https://api.openai.com/v1
            api_key: ${file:/run/secrets/openai}
        models:
          small: {provider: oai}
        pools:
          default: {members: [small]}
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:6 providers.oai.api_key: unknown reference ${file:…}:"
        " use ${env:NAME} or ${secret:NAME}"
    ]


# --------------------------------------------------------------------------- ${secret:...} and sops


def _sops_config(sops_lines: str, api_key: str = "${secret:openai_api_key}") -> str:
    """A config whose secrets section (lines 2-3, or more) is ``sops_lines``."""
    return (
        "version: 1\n"
        "secrets:\n"
        f"{textwrap.indent(textwrap.dedent(sops_lines), '  ')}"
        "providers:\n"
        "  oai:\n"
        "    type: openai\n"
        "    base_url: https://api.openai.com/v1\n"
        f"    api_key: {api_key}\n"
        "models:\n"
        "  small: {provider: oai}\n"
        "pools:\n"
        "  default: {members: [small]}\n"
    )


def test_missing_secret_without_sops_files(tmp_path: Path) -> None:
    text = _sops_config("timeout: 5s\n")
    assert errors(tmp_path, text) == [
        "pools.yaml:8 providers.oai.api_key: unknown secret 'openai_api_key':"
        " no secrets are loaded (see secrets.sops_files)"
    ]


@pytest.mark.usefixtures("age_key")
def test_missing_secret_suggests_a_loaded_name(tmp_path: Path) -> None:
    text = _sops_config(f"sops_files: [{SECRETS_FILE}]\n", api_key="${secret:openai_api_kye}")
    assert errors(tmp_path, text) == [
        "pools.yaml:8 providers.oai.api_key: unknown secret 'openai_api_kye'"
        " (did you mean 'openai_api_key'?)"
    ]


@pytest.mark.usefixtures("age_key")
def test_missing_secret_lists_loaded_names_when_nothing_is_close(tmp_path: Path) -> None:
    text = _sops_config(f"sops_files: [{SECRETS_FILE}]\n", api_key="${secret:groq}")
    assert errors(tmp_path, text) == [
        "pools.yaml:8 providers.oai.api_key: unknown secret 'groq' (known: anthropic.admin.token,"
        " anthropic.api_key, openai_api_key, port)"
    ]


@pytest.mark.usefixtures("sops_env")
def test_sops_binary_missing(tmp_path: Path) -> None:
    text = _sops_config(f"sops_binary: /nonexistent/sops\nsops_files: [{SECRETS_FILE}]\n")
    assert errors(tmp_path, text) == [
        "pools.yaml:4 secrets.sops_files[0]: sops binary '/nonexistent/sops' not found;"
        " install sops or set secrets.sops_binary",
    ]


@pytest.mark.usefixtures("sops_env")
def test_sops_binary_not_executable(tmp_path: Path) -> None:
    (tmp_path / "sops").write_text("not a program\n")
    text = _sops_config(f"sops_binary: {tmp_path / 'sops'}\nsops_files: [{SECRETS_FILE}]\n")
    assert errors(tmp_path, text)[0] == (
        f"pools.yaml:4 secrets.sops_files[0]: cannot run sops binary '{tmp_path / 'sops'}':"
        " Permission denied"
    )


@pytest.mark.usefixtures("age_key")
def test_sops_file_not_encrypted(tmp_path: Path) -> None:
    (tmp_path / "plain.yaml").write_text("openai_api_key: sk-in-the-clear\n")
    text = _sops_config("sops_files: [plain.yaml]\n")
    assert errors(tmp_path, text)[0] == (
        "pools.yaml:3 secrets.sops_files[0]: plain.yaml is not a sops-encrypted file"
        " (no sops metadata)"
    )


@pytest.mark.usefixtures("sops_env")
def test_sops_key_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(OTHER_AGE_KEY))
    text = _sops_config(f"sops_files: [{SECRETS_FILE}]\n")
    assert errors(tmp_path, text)[0] == (
        "pools.yaml:3 secrets.sops_files[0]: cannot decrypt secrets.enc.yaml: no usable key"
        " (set SOPS_AGE_KEY_FILE, SOPS_AGE_KEY or your KMS credentials for the sops process)"
    )


@pytest.mark.usefixtures("age_key")
def test_sops_file_missing(tmp_path: Path) -> None:
    text = _sops_config("sops_files: [secrets.enc.yaml, gone.enc.yaml]\n")
    (tmp_path / "secrets.enc.yaml").write_bytes(SECRETS_FILE.read_bytes())
    assert errors(tmp_path, text) == [
        f"pools.yaml:3 secrets.sops_files[1]: sops file '{tmp_path.resolve() / 'gone.enc.yaml'}'"
        " does not exist"
    ]


@pytest.mark.usefixtures("sops_env")
def test_sops_timeout(tmp_path: Path) -> None:
    slow = tmp_path / "slow-sops"
    slow.write_text("#!/bin/sh\nexec sleep 5\n")
    slow.chmod(slow.stat().st_mode | stat.S_IXUSR)
    text = _sops_config(f"sops_binary: {slow}\ntimeout: 100ms\nsops_files: [{SECRETS_FILE}]\n")
    assert errors(tmp_path, text)[0] == (
        "pools.yaml:5 secrets.sops_files[0]: sops took longer than 0.1s to decrypt secrets.enc.yaml"
    )


# --------------------------------------------------------------------------- references


def test_model_names_unknown_provider(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          openai: {type: openai, base_url: https://api.openai.com/v1}
        models:
          gpt-4o: {provider: opneai}
          local: {provider: ollama}
        pools:
          default: {members: [gpt-4o, local]}
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:5 models.gpt-4o.provider: unknown provider 'opneai' (did you mean 'openai'?)",
        "pools.yaml:6 models.local.provider: unknown provider 'ollama'",
    ]


def test_pool_member_names_unknown_model(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          mock: {type: mock}
        models:
          gpt-4o: {provider: mock}
        pools:
          smart:
            members:
              - gpt4o
              - {model: cheap}
          cheap: {members: [gpt-4o]}
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:9 pools.smart.members[0]: unknown model 'gpt4o' (did you mean 'gpt-4o'?)",
        "pools.yaml:10 pools.smart.members[1]: unknown model 'cheap'"
        " (members name models, not pools)",
    ]


def test_failover_names_unknown_pool(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          mock: {type: mock}
        models:
          m: {provider: mock}
        pools:
          local: {members: [m]}
          cheap: {members: [m]}
          smart:
            members: [m]
            failover: [cheap, lcoal]
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:11 pools.smart.failover[1]: unknown pool 'lcoal' (did you mean 'local'?)"
    ]


def test_client_names_unknown_pool(tmp_path: Path) -> None:
    text = f"""\
        version: 1
        providers:
          mock: {{type: mock}}
        models:
          m: {{provider: mock}}
        pools:
          cheap: {{members: [m]}}
        clients:
          agent-a:
            key_sha256: "{KEY_A}"
            pools: [cheap, m, cheep]
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:11 clients.agent-a.pools[2]: unknown pool 'cheep' (did you mean 'cheap'?)"
    ]


def test_failover_cycle_of_two(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          mock: {type: mock}
        models:
          m: {provider: mock}
        pools:
          a:
            members: [m]
            failover: [b]
          b:
            members: [m]
            failover: [a]
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:12 pools.b.failover[0]: failover cycle: a → b → a"
    ]


def test_failover_cycle_of_three_is_reported_once(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          mock: {type: mock}
        models:
          m: {provider: mock}
        pools:
          a: {members: [m], failover: [b]}
          b: {members: [m], failover: [c]}
          c: {members: [m], failover: [d, a]}
          d: {members: [m]}
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:9 pools.c.failover[1]: failover cycle: a → b → c → a"
    ]


def test_failover_to_itself(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          mock: {type: mock}
        models:
          m: {provider: mock}
        pools:
          a: {members: [m], failover: [a]}
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:7 pools.a.failover[0]: pool 'a' fails over to itself"
    ]


def test_diamond_failover_is_not_a_cycle(tmp_path: Path) -> None:
    name = write_config(
        tmp_path,
        """\
        version: 1
        providers:
          mock: {type: mock}
        models:
          m: {provider: mock}
        pools:
          a: {members: [m], failover: [b, c]}
          b: {members: [m], failover: [d]}
          c: {members: [m], failover: [d]}
          d: {members: [m]}
        """,
    )
    assert load_config(name, env={}).pools["a"].failover == ("b", "c")


# --------------------------------------------------------------------------- duplicates


def test_duplicate_pool_member(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          mock: {type: mock}
        models:
          m: {provider: mock}
          n: {provider: mock}
        pools:
          p:
            strategy: weighted
            members:
              - {model: m, weight: 2}
              - n
              - {model: m, weight: 1}
        """
    assert errors(tmp_path, text) == ["pools.yaml:13 pools.p.members[2]: duplicate member 'm'"]


def test_name_is_both_a_pool_and_a_model(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          mock: {type: mock}
        models:
          gpt-4o: {provider: mock}
        pools:
          gpt-4o: {members: [gpt-4o]}
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:7 pools.gpt-4o: 'gpt-4o' is both a pool and a model;"
        " a request's `model` must name exactly one"
    ]


def test_two_clients_with_the_same_key(tmp_path: Path) -> None:
    text = f"""\
        version: 1
        providers:
          mock: {{type: mock}}
        models:
          m: {{provider: mock}}
        pools:
          p: {{members: [m]}}
        clients:
          agent-a: {{key_sha256: "{KEY_A}"}}
          agent-b: {{key_sha256: "{KEY_A}"}}
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:10 clients.agent-b.key_sha256: same key as client 'agent-a'"
    ]


# --------------------------------------------------------------------------- consistency


def _listen_config(listen: str, clients: str = "") -> str:
    return (
        "version: 1\n"
        "server:\n"
        f"  listen: '{listen}'\n"
        "providers:\n"
        "  mock: {type: mock}\n"
        "models:\n"
        "  m: {provider: mock}\n"
        "pools:\n"
        "  p: {members: [m]}\n"
        f"{clients}"
    )


def test_non_loopback_listen_without_clients_is_refused(tmp_path: Path) -> None:
    assert errors(tmp_path, _listen_config("0.0.0.0:8787")) == [
        "pools.yaml:3 server.listen: refusing to listen on non-loopback '0.0.0.0'"
        " without `clients` (keys) configured"
    ]


@pytest.mark.parametrize(
    ("listen", "clients"),
    [
        ("127.0.0.1:8787", ""),
        ("localhost:8787", ""),
        ("[::1]:8787", ""),
        ("0.0.0.0:8787", f"clients:\n  agent-a: {{key_sha256: '{KEY_A}'}}\n"),
    ],
)
def test_loopback_or_keyed_listen_is_accepted(tmp_path: Path, listen: str, clients: str) -> None:
    name = write_config(tmp_path, _listen_config(listen, clients))
    assert load_config(name, env={}).server.port == 8787


def _admin_config(admin_listen: str, token: str = "") -> str:
    return _listen_config("127.0.0.1:8787").replace(
        "server:\n", f"server:\n  admin_listen: '{admin_listen}'\n{token}", 1
    )


@pytest.mark.parametrize(
    ("admin_listen", "host"),
    [
        ("0.0.0.0:9100", "0.0.0.0"),
        ("[::]:9100", "::"),
        ("192.168.1.20:9100", "192.168.1.20"),
        ("admin.example.com:9100", "admin.example.com"),
    ],
)
def test_non_loopback_admin_listen_without_admin_token_is_refused(
    tmp_path: Path, admin_listen: str, host: str
) -> None:
    """Line 3 is `admin_listen`; the proxy's own listen (line 4) is loopback and fine."""
    assert errors(tmp_path, _admin_config(admin_listen)) == [
        f"pools.yaml:3 server.admin_listen: refusing to serve admin endpoints on"
        f" non-loopback {host!r} without admin_token"
    ]


def test_the_admin_listen_refusal_is_reported_with_other_errors(tmp_path: Path) -> None:
    text = _admin_config("0.0.0.0:9100").replace("127.0.0.1:8787", "0.0.0.0:8787")
    assert errors(tmp_path, text) == [
        "pools.yaml:3 server.admin_listen: refusing to serve admin endpoints on"
        " non-loopback '0.0.0.0' without admin_token",
        "pools.yaml:4 server.listen: refusing to listen on non-loopback '0.0.0.0'"
        " without `clients` (keys) configured",
    ]


@pytest.mark.parametrize(
    ("admin_listen", "token"),
    [
        ("127.0.0.1:9100", ""),
        ("localhost:9100", ""),
        ("[::1]:9100", ""),
        ("unix:/run/modelpool/admin.sock", ""),
        ("0.0.0.0:9100", "  admin_token: ${env:ADMIN_TOKEN}\n"),
    ],
)
def test_loopback_unix_or_token_guarded_admin_listen_is_accepted(
    tmp_path: Path, admin_listen: str, token: str
) -> None:
    name = write_config(tmp_path, _admin_config(admin_listen, token))
    config = load_config(name, env={"ADMIN_TOKEN": "t" * 32})
    assert config.server.admin_listen == admin_listen
    assert (config.server.admin_token is not None) == bool(token)


def test_timeout_longer_than_total(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          mock:
            type: mock
            timeouts: {first_byte: 2m, total: 60s}
        models:
          m: {provider: mock}
        pools:
          p:
            members: [m]
            timeouts:
              idle: 30s
              total: 10s
            retry: {backoff: {initial: 10s, max: 5s}}
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:5 providers.mock.timeouts.first_byte:"
        " first_byte (2m) is longer than total (60s)",
        "pools.yaml:12 pools.p.timeouts.idle: idle (30s) is longer than total (10s)",
        "pools.yaml:14 pools.p.retry.backoff.initial: initial (10s) is longer than max (5s)",
    ]


def test_default_max_tokens_above_tpm(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          mock: {type: mock}
        models:
          m:
            provider: mock
            context_window: 8192
            max_output_tokens: 16384
            limits:
              tpm: 1000
              default_max_tokens: 4096
        pools:
          p: {members: [m]}
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:8 models.m.max_output_tokens: max_output_tokens (16384) exceeds"
        " context_window (8192)",
        "pools.yaml:11 models.m.limits.default_max_tokens: default_max_tokens (4096) exceeds"
        " tpm (1000): no request could be admitted",
    ]


def _usage_config(usage: str, budget: str = "") -> str:
    return (
        "version: 1\n"
        "providers:\n"
        "  mock: {type: mock}\n"
        "models:\n"
        "  m: {provider: mock}\n"
        "pools:\n"
        f"  p: {{members: [m]{budget}}}\n"
        "usage:\n"
        f"{usage}"
    )


@pytest.mark.parametrize("zero", ["0s", "0ms", "0.0s", 0])
def test_a_zero_flush_interval_is_refused(tmp_path: Path, zero: str | int) -> None:
    """The flusher would spin: sleep 0, flush nothing, again."""
    assert errors(tmp_path, _usage_config(f"  flush_interval: {zero}\n")) == [
        f"pools.yaml:9 usage.flush_interval: invalid value {zero!r}: expected a duration above"
        " zero: 250ms, 10s, 5m, 1h, or a number of seconds."
    ]


@pytest.mark.parametrize(
    ("retention", "budget", "error"),
    [
        ("720h", ", budget: {usd_per_month: 100}",
         "retention (720h) is shorter than the period of pools.p.budget.usd_per_month: that spend"
         " would be forgotten at a restart; keep at least 744h (31 days)"),
        ("86399", ", budget: {usd_per_day: 5, tokens_per_month: 9}",
         "retention (86399) is shorter than the period of pools.p.budget.tokens_per_month: that"
         " spend would be forgotten at a restart; keep at least 744h (31 days)"),
        ("23h", ", budget: {tokens_per_day: 1000}",
         "retention (23h) is shorter than the period of pools.p.budget.tokens_per_day: that spend"
         " would be forgotten at a restart; keep at least 24h (one day)"),
    ],
)  # fmt: skip
def test_retention_shorter_than_a_budget_period_is_refused(
    tmp_path: Path, retention: str, budget: str, error: str
) -> None:
    """Meters restart from the history the store kept: a shorter one hands spend back."""
    text = _usage_config(f"  retention: {retention}\n", budget)
    assert errors(tmp_path, text) == [f"pools.yaml:9 usage.retention: {error}"]


def test_a_clients_monthly_budget_needs_a_month_of_history(tmp_path: Path) -> None:
    clients = f"clients:\n  a: {{key_sha256: '{KEY_A}', budget: {{usd_per_month: 10}}}}\n"
    text = _usage_config("  retention: 720h\n") + clients
    assert errors(tmp_path, text) == [
        "pools.yaml:9 usage.retention: retention (720h) is shorter than the period of"
        " clients.a.budget.usd_per_month: that spend would be forgotten at a restart;"
        " keep at least 744h (31 days)"
    ]


@pytest.mark.parametrize(
    ("retention", "budget"),
    [
        ("744h", ", budget: {usd_per_month: 100}"),
        ("24h", ", budget: {usd_per_day: 5}"),
        ("1h", ""),  # no budget: history is only for reports
    ],
)
def test_retention_covering_every_budget_period_is_accepted(
    tmp_path: Path, retention: str, budget: str
) -> None:
    name = write_config(tmp_path, _usage_config(f"  retention: {retention}\n", budget))
    assert load_config(name, env={}).usage.retention > 0


# --------------------------------------------------------------------------- all at once


def test_all_errors_are_reported_together_in_file_order(tmp_path: Path) -> None:
    text = """\
        version: 1
        providers:
          oai:
            type: openai
            base_url: https://api.openai.com/v1
            api_key: ${env:OPENAI_API_KEY}
        models:
          gpt-4o: {provider: oai}
        pools:
          smart:
            members: [gpt-4o, gpt-4o-mini]
            failover: [cheap]
          cheap:
            members: [gpt-4o]
            failover: [smart]
        """
    assert errors(tmp_path, text) == [
        "pools.yaml:6 providers.oai.api_key: environment variable 'OPENAI_API_KEY' is not set",
        "pools.yaml:11 pools.smart.members[1]: unknown model 'gpt-4o-mini'"
        " (did you mean 'gpt-4o'?)",
        "pools.yaml:15 pools.cheap.failover[0]: failover cycle: smart → cheap → smart",
    ]


def test_check_prints_every_error_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = write_config(
        tmp_path,
        """\
        version: 1
        providers:
          mock: {type: mock, timeouts: {conect: 1s}}
        models:
          m: {provider: mock, limits: {rpm: 0}}
        pools:
          p: {members: [m], strategy: fastest}
        """,
    )
    assert main(["check", name]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "pools.yaml:3 providers.mock.timeouts.conect: unknown key 'conect'"
        " (did you mean 'connect'?)",
        "pools.yaml:5 models.m.limits.rpm: 0 is less than the minimum of 1",
        "pools.yaml:7 pools.p.strategy: 'fastest' is not one of round_robin, weighted, priority,"
        " least_in_flight, least_latency, lowest_cost",
        "pools.yaml: invalid (3 errors)",
    ]
