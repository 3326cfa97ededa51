"""Fuzzing the config loader: whatever a file holds, the verdict is a Config or a ConfigError.

``load_config`` runs at start, on every reload and in ``modelpool check``; an
exception of any other kind there is a traceback for the user and, on a
reload, a failed ``POST /admin/reload``. So for random YAML (built from
nested values, or raw text made of YAML's own punctuation) and for random
mutations of valid configs (a key deleted, renamed or duplicated, a value
replaced, junk inserted at a line, the file cut short), the loader must
either return a Config or raise ConfigError whose every issue renders as
``file[:line] path: message`` with a line inside the file.

Bounded and repeatable: ``derandomize=True`` draws the same examples on every
run, so CI sees what a developer saw.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelpool.config.judge import schema_text
from modelpool.config.load import load_config
from modelpool.config.spec import Config
from modelpool.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def schema_keys() -> list[str]:
    """Every key the config schema names, except ``sops_binary``, whose value the loader
    *runs*: a fuzzer must never name a real program there."""
    keys: set[str] = set()
    stack: list[Any] = [json.loads(schema_text())]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            keys.update(node.get("properties", {}))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return sorted(keys - {"sops_binary"})


KEYS = schema_keys()
SECTIONS = ("server", "secrets", "providers", "models", "pools", "breakers", "clients", "usage")

SCALARS: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            "10s",
            "250ms",
            "16MiB",
            "mock",
            "openai",
            "priority",
            "round_robin",
            "none",
            "chat",
            "127.0.0.1:0",
            "0.0.0.0:80",
            "${env:X}",
            "${secret:x}",
            "${bogus}",
            "http://127.0.0.1:1",
            "a" * 64,
            "sqlite:///",
            "redis://127.0.0.1:1/0",
        ]
    ),
)
NAMES = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))
VALUES: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(NAMES, inner, max_size=5),
    max_leaves=25,
)
DOCUMENTS: st.SearchStrategy[Any] = st.one_of(
    VALUES,
    st.fixed_dictionaries(
        {"version": st.sampled_from([1, 2, "1", None])},
        optional={section: VALUES for section in SECTIONS},
    ),
)

# Raw text built from YAML's own syntax, so the parser's error paths get exercised.
TOKENS = st.sampled_from(
    [
        "\n",
        "\n  ",
        "\n    ",
        " ",
        "\t",
        ": ",
        "- ",
        "? ",
        "{",
        "}",
        "[",
        "]",
        ", ",
        "&a ",
        "*a",
        "<<: ",
        "<<: *a",
        "!!str ",
        "!!int ",
        "!!float ",
        "!!binary ",
        "!!timestamp ",
        "!!set ",
        "!!omap ",
        "!!python/object:os.system ",
        "!custom ",
        "'",
        '"',
        "#",
        "|",
        ">",
        "%YAML 1.1\n",
        "---\n",
        "...\n",
        "version",
        "providers",
        "models",
        "pools",
        "members",
        "type",
        "mock",
        "1",
        "2001-02-03",
        "0x1F",
        "1e999",
        ".nan",
        "~",
        "yes",
        "\\u0000",
        "\x00",
        "\ufeff",
        "\u2028",
    ]
)
RAW_TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(TOKENS, st.text(max_size=3)), max_size=40).map("".join),
)

# Example and fixture configs to mutate: each is valid as written (checked below).
FIXTURE_CONFIGS = {
    "full": """\
version: 1
server:
  listen: 127.0.0.1:0
  max_body_bytes: 1MiB
  admin_token: fuzz-admin-token-0123
  grace_period: 5s
breakers:
  failure_threshold: 3
  failure_rate: {threshold: 0.5, window: 30s, min_requests: 10}
  cooldown: {initial: 1s, max: 1m}
providers:
  up:
    type: openai
    base_url: http://127.0.0.1:9/v1
    api_key: sk-fuzz-not-a-key
    headers: {x-team: fuzz}
    timeouts: {connect: 1s, first_byte: 5s, idle: 5s, total: 30s}
    max_connections: 8
    health: {interval: 30s, probe: models}
  claude:
    type: anthropic
    base_url: http://127.0.0.1:9
    api_key: sk-ant-fuzz
    api_version: "2023-06-01"
  fake:
    type: mock
    mock: {latency: 5ms, chunk_delay: 1ms, failure_rate: 0.1, seed: 7}
models:
  a:
    provider: up
    upstream_model: up-a
    capabilities: [chat, tools, stream]
    context_window: 8192
    max_output_tokens: 1024
    price: {input_per_mtok: 1.5, output_per_mtok: 2}
    limits: {rpm: 60, tpm: 10000, max_concurrency: 4, default_max_tokens: 256}
    breaker: {failure_threshold: 2}
  b: {provider: claude, capabilities: [chat, stream]}
  c: {provider: fake}
pools:
  smart:
    strategy: weighted
    members: [{model: a, weight: 3}, {model: b, weight: 1}]
    retry: {attempts: 3, backoff: {initial: 100ms, max: 2s}}
    queue: {max_waiting: 10, timeout: 2s}
    limits: {rpm: 100}
    failover: [cheap]
    budget: {usd_per_day: 5}
  cheap:
    strategy: priority
    members: [{model: c, priority: 1}, b]
clients:
  agent:
    key_sha256: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    pools: [smart, cheap]
    limits: {rpm: 10}
    budget: {usd_per_month: 50, tokens_per_day: 100000, status: 402}
usage:
  store: none
""",
    "minimal": """\
version: 1
providers:
  mock: {type: mock}
models:
  small: {provider: mock}
pools:
  default: {members: [small]}
""",
    "anchors": """\
version: 1
providers:
  one:
    type: openai_compatible
    base_url: "http://127.0.0.1:9/v1"
    timeouts: &timeouts {connect: 1s, total: 10s}
  two: {type: ollama, base_url: "http://127.0.0.1:9", timeouts: *timeouts}
models:
  m1: &model {provider: one, capabilities: [chat, embeddings]}
  m2:
    <<: *model
    provider: two
pools:
  p: {strategy: least_latency, members: [m1, m2]}
  q: {members: [m2], failover: [p]}
""",
}


def example_configs() -> dict[str, str]:
    """The shipped examples, with sops taken out (decrypting is a subprocess per example,
    and needs a key): each ``${secret:NAME}`` becomes a plain value."""
    production = (ROOT / "examples" / "production.yaml").read_text("utf-8")
    production = re.sub(r"\$\{secret:[^}]*\}", "sk-fuzz-not-a-key", production)
    production = re.sub(r"(?m)^secrets:\n(?:[ #].*\n|\n)*", "", production)
    return {
        "examples/pools.yaml": (ROOT / "examples" / "pools.yaml").read_text("utf-8"),
        "examples/production.yaml": production,
        **FIXTURE_CONFIGS,
    }


CONFIGS = example_configs()


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file, rewritten by every example (a module fixture: hypothesis reruns the test)."""
    return tmp_path_factory.mktemp("fuzz") / "pools.yaml"


def verdict(path: Path, text: str) -> Config | ConfigError:
    """Load ``text`` from ``path``; anything but a Config or a ConfigError fails the test."""
    path.write_text(text, "utf-8")
    try:
        return load_config(path, env={})
    except ConfigError as exc:
        assert_renders(exc, str(path), text)
        return exc


def assert_renders(exc: ConfigError, file: str, text: str) -> None:
    """Every issue reads ``file[:line] path: message``, its line inside the file."""
    assert exc.issues, "a ConfigError with no issue explains nothing"
    # Lines as YAML counts them: its own line breaks, a last line without one included.
    breaks = len(LINE_BREAK.findall(text))
    last_line = max(1, breaks + (0 if text[-1:] in ("\n", "\r", "\x85", "\u2028", "\u2029") else 1))
    for issue in exc.issues:
        assert issue.file == file
        assert isinstance(issue.message, str)
        assert issue.message.strip(), f"empty message: {issue!r}"
        assert "Traceback" not in issue.message
        assert "\n" not in issue.message, f"a message over several lines: {issue.message!r}"
        assert isinstance(issue.path, str)
        where = file
        if issue.line is not None:
            assert 1 <= issue.line <= last_line, f"line {issue.line} outside the file: {issue}"
            where = f"{file}:{issue.line}"
        expected = f"{where} {issue.path}: " if issue.path else f"{where}: "
        assert str(issue) == expected + issue.message


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_seed_config_is_valid(name: str, config_file: Path) -> None:
    """The positive control: mutations start from configs that load."""
    assert isinstance(verdict(config_file, CONFIGS[name]), Config)


@FUZZ
@given(document=DOCUMENTS)
def test_random_yaml_documents(document: Any, config_file: Path) -> None:
    verdict(config_file, yaml.safe_dump(document, allow_unicode=True, sort_keys=False))


@FUZZ
@given(text=RAW_TEXT)
def test_random_text(text: str, config_file: Path) -> None:
    verdict(config_file, text)


# --------------------------------------------------------------------- mutations

Path_ = tuple[str | int, ...]


def paths_of(data: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every key and list index in ``data``, parents before children."""
    found: list[Path_] = []
    children: Any = (
        data.items()
        if isinstance(data, dict)
        else enumerate(data)
        if isinstance(data, list)
        else ()
    )
    for key, value in children:
        found.append((*prefix, key))
        found.extend(paths_of(value, (*prefix, key)))
    return found


def parent_of(data: Any, path: Path_) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data


def delete(data: Any, path: Path_, draw: st.DrawFn) -> None:
    del parent_of(data, path)[path[-1]]


def replace(data: Any, path: Path_, draw: st.DrawFn) -> None:
    parent_of(data, path)[path[-1]] = draw(VALUES)


def rename(data: Any, path: Path_, draw: st.DrawFn) -> None:
    parent = parent_of(data, path)
    if isinstance(parent, dict):
        parent[draw(NAMES)] = parent.pop(path[-1])


def graft(data: Any, path: Path_, draw: st.DrawFn) -> None:
    """A known key with a random value added beside ``path``."""
    parent = parent_of(data, path)
    if isinstance(parent, dict):
        parent[draw(st.sampled_from(KEYS))] = draw(VALUES)
    else:
        parent.append(draw(VALUES))


Structural = Callable[[Any, Path_, st.DrawFn], None]
STRUCTURAL: tuple[Structural, ...] = (delete, replace, rename, graft)


def duplicate_line(text: str, draw: st.DrawFn) -> str:
    """A line repeated right after itself: a duplicate key at the same indent."""
    lines = text.splitlines(keepends=True)
    i = draw(st.integers(0, len(lines) - 1))
    return "".join([*lines[: i + 1], lines[i], *lines[i + 1 :]])


def delete_line(text: str, draw: st.DrawFn) -> str:
    lines = text.splitlines(keepends=True)
    i = draw(st.integers(0, len(lines) - 1))
    return "".join([*lines[:i], *lines[i + 1 :]])


def insert_junk(text: str, draw: st.DrawFn) -> str:
    lines = text.splitlines(keepends=True)
    i = draw(st.integers(0, len(lines)))
    junk = draw(RAW_TEXT)
    return "".join([*lines[:i], junk + "\n", *lines[i:]])


def truncate(text: str, draw: st.DrawFn) -> str:
    return text[: draw(st.integers(0, len(text)))]


RAW_VALUES = st.sampled_from(
    [
        "2023-06-01",
        "2024-02-30",
        "2001-12-14t21:59:43.10-05:00",
        "!!binary aGVsbG8=",
        "!!timestamp soon",
        "!!int 0x",
        "!!bool maybe",
        "!!float",
        "!!set {a, b}",
        "!!omap [a: 1]",
        "!custom x",
        "&x [*x]",
        "{<<: 5}",
        "*nowhere",
        "0o17",
        "1_000",
        ".inf",
        "-.nan",
        "~",
        "[",
        "'",
    ]
)


def retype_value(text: str, draw: st.DrawFn) -> str:
    """A value written as raw YAML that a dump would have quoted (a date, a tag, an alias)."""
    lines = text.splitlines(keepends=True)
    keyed = [i for i, line in enumerate(lines) if ": " in line]
    if not keyed:
        return text
    i = draw(st.sampled_from(keyed))
    key = lines[i].split(": ", 1)[0]
    lines[i] = f"{key}: {draw(RAW_VALUES)}\n"
    return "".join(lines)


Textual = Callable[[str, st.DrawFn], str]
TEXTUAL: tuple[Textual, ...] = (duplicate_line, delete_line, insert_junk, truncate, retype_value)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A seed config after one to three mutations, structural or textual."""
    text = CONFIGS[draw(st.sampled_from(sorted(CONFIGS)))]
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            text = draw(st.sampled_from(TEXTUAL))(text, draw) if text else text
            continue
        data = _plain_data(text)
        paths = paths_of(data)
        if not paths:
            continue
        path = draw(st.sampled_from(paths))
        draw(st.sampled_from(STRUCTURAL))(data, path, draw)
        text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    return text


def _plain_data(text: str) -> Any:
    """``text`` as data to mutate, or None when it is not plain, finite data.

    PyYAML itself raises more than YAMLError on odd scalars (a ``2024-02-30``),
    and an anchor containing itself loads as a recursive list.
    """
    try:
        data = yaml.safe_load(text)
        json.dumps(data, default=str)
    except (yaml.YAMLError, ValueError, LookupError, AttributeError, TypeError, RecursionError):
        return None
    return data


@FUZZ
@given(text=mutated())
def test_mutated_configs(text: str, config_file: Path) -> None:
    verdict(config_file, text)


# --------------------------------------------------------------------- what the fuzzing found

VALID = """\
version: 1
providers:
  p: {type: anthropic, base_url: "http://127.0.0.1:9", api_version: "2023-06-01"}
models:
  m: {provider: p}
pools:
  x: {members: [m]}
"""


REGRESSIONS = [
    # jsonschema-rs raised ValueError("Unsupported type: 'date'") on YAML dates
    pytest.param(
        VALID.replace('"2023-06-01"', "2023-06-01"),
        ":3 providers.p.api_version: expected a string, got the date 2023-06-01 "
        "(quote it to make it a string)",
        id="unquoted-date",
    ),
    pytest.param(
        VALID.replace("{provider: p}", "{provider: p, description: !!binary aGk=}"),
        ":5 models.m.description: expected a string, got binary data (!!binary)",
        id="binary",
    ),
    # PyYAML's constructors raised ValueError, KeyError, IndexError, AttributeError
    pytest.param(
        "a: 2024-02-30\n",
        ":1 a: cannot read '2024-02-30' as !!timestamp (day is out of range",
        id="impossible-date",
    ),
    pytest.param("a: !!int 0x\n", ":1 a: cannot read '0x' as !!int (invalid literal", id="int"),
    pytest.param("a: !!bool maybe\n", ":1 a: cannot read 'maybe' as !!bool; quote it", id="bool"),
    pytest.param("a: !!int\n", ":1 a: cannot read '' as !!int; quote it", id="empty-int"),
    pytest.param("a: !!timestamp soon\n", ":1 a: cannot read 'soon' as !!timestamp", id="time"),
    # ...and ConstructorError escaped from keys and merges
    pytest.param("!x a: 1\n", ":1: unreadable key: unsupported YAML tag '!x'", id="key-tag"),
    pytest.param("a: {<<: 5}\n", ":1 a: invalid merge (<<): expected a mapping", id="merge"),
    # RecursionError: an anchor containing itself
    pytest.param("a: &x [*x]\n", ":1 a[0]: an alias refers to a collection", id="recursive"),
    # RecursionError: nesting between ~500 levels and libyaml's own limit of 1,000
    pytest.param("a: " + "[" * 600 + "]" * 600, ":1 a[0][0]", id="deep-list"),
    pytest.param("a: " + "{a: " * 600 + "1" + "}" * 600, ":1 a.a.a", id="deep-mapping"),
    # a syntax error at the end of the text named the line after the last one
    pytest.param("a: [", ":1: YAML syntax error: did not find expected node", id="eof"),
    pytest.param("a: 1\n\x08\n", ":2: YAML syntax error: unacceptable character", id="control"),
    # a key with a line break split the message over two lines
    pytest.param('"\\n": 1\n', ":1 '\\n': unknown key '\\n'", id="newline-key"),
]


@pytest.mark.parametrize(("text", "expected"), REGRESSIONS)
def test_regression(text: str, expected: str, config_file: Path) -> None:
    found = verdict(config_file, text)
    assert isinstance(found, ConfigError)
    rendered = [str(issue).removeprefix(str(config_file)) for issue in found.issues]
    assert any(line.startswith(expected) for line in rendered), rendered


def test_an_explicit_key_overrides_a_merged_one_as_yaml_says(config_file: Path) -> None:
    """``<<: *defaults`` then the same key again was reported as a duplicate key."""
    text = """\
version: 1
providers:
  p: {type: mock}
models:
  base: &base {provider: p, context_window: 1000, capabilities: [chat]}
  big:
    <<: *base
    context_window: 9000
pools:
  x: {members: [base, big]}
"""
    config = verdict(config_file, text)
    assert isinstance(config, Config), config
    assert config.models["big"].context_window == 9000
    assert config.models["big"].capabilities == frozenset({"chat"})
    assert yaml.safe_load(text)["models"]["big"]["context_window"] == 9000


def test_an_alias_bomb_is_refused_quickly(config_file: Path) -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        above = chr(ord("a") + i - 1)
        levels.append(
            f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} [{', '.join(['*' + above] * 10)}]"
        )
    found = verdict(config_file, "\n".join(levels) + "\n")  # 10^9 values once expanded
    assert isinstance(found, ConfigError)
    assert "alias bomb" in str(found)


def pools_config(failovers: dict[int, list[int]], count: int) -> str:
    lines = ["version: 1", "providers: {p: {type: mock}}", "models: {m: {provider: p}}", "pools:"]
    for i in range(count):
        targets = ", ".join(f"p{j}" for j in failovers.get(i, []))
        lines.append(f"  p{i}: {{members: [m], failover: [{targets}]}}")
    return "\n".join(lines) + "\n"


def test_a_long_failover_chain_loads(config_file: Path) -> None:
    """The cycle check recursed once per pool: RecursionError past ~1,000 chained pools."""
    text = pools_config({i: [i + 1] for i in range(1499)}, 1500)
    assert isinstance(verdict(config_file, text), Config)


def test_a_web_of_failovers_is_checked_in_linear_time(config_file: Path) -> None:
    """The cycle check walked every path: 2^28 of them here, each pool failing over to
    every later one; and a cycle closing the web is still found, once."""
    web = {i: list(range(i + 1, 30)) for i in range(30)}
    assert isinstance(verdict(config_file, pools_config(web, 30)), Config)
    web[29] = [0]
    found = verdict(config_file, pools_config(web, 30))
    assert isinstance(found, ConfigError)
    assert [issue.path for issue in found.issues] == ["pools.p29.failover[0]"]
