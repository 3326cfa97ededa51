"""Strict YAML loading that remembers the line of every key and value.

Errors anywhere later in the pipeline name a key path such as
``pools.smart.failover[1]``; :class:`Document` maps such paths back to the line
they came from so that every message reads ``pools.yaml:42 pools.smart...``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from modelpool.errors import ConfigError, ConfigIssue

Path = tuple[str | int, ...]

_STR = "tag:yaml.org,2002:str"

try:  # the C loader composes ~10x faster; both keep marks
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - libyaml missing
    _Loader = yaml.SafeLoader


def format_path(path: Path) -> str:
    """Render a key path the way users write it: ``pools.smart.members[0].model``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass(frozen=True)
class Document:
    """A parsed YAML file: its data and the line (1-based) of every path."""

    file: str
    data: Any
    lines: Mapping[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int | None:
        """The line of ``path``, or of its closest ancestor that has one."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def issue(self, path: Path, message: str) -> ConfigIssue:
        return ConfigIssue(self.file, self.line_of(path), format_path(path), message)


def parse_yaml(text: str, file: str) -> Document:
    """Parse one YAML document; duplicate keys and syntax errors raise ConfigError."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError([_syntax_issue(exc, file)]) from None
    if node is None:
        return Document(file, None, {})
    builder = _Builder(file, text)
    data = builder.build(node, ())
    if builder.issues:
        raise ConfigError(builder.issues)
    return Document(file, data, builder.lines)


def _syntax_issue(exc: yaml.YAMLError, file: str) -> ConfigIssue:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    return ConfigIssue(file, line, "", message)


class _Builder:
    """Turns a composed node tree into plain Python data plus a line map."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.lines: dict[Path, int] = {}
        self.issues: list[ConfigIssue] = []
        self._scalars = yaml.SafeLoader(text)  # constructs scalars by their resolved tag

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        try:
            return self._scalar(node)
        except yaml.YAMLError as exc:
            line = node.start_mark.line + 1
            self.issues.append(ConfigIssue(self.file, line, format_path(path), str(exc)))
            return None

    def _scalar(self, node: yaml.Node) -> Any:
        # Most values are strings, whose value is the text itself: a shortcut
        # past SafeConstructor that keeps a large config's load fast.
        if node.tag == _STR and isinstance(node, yaml.ScalarNode):
            return node.value
        return self._scalars.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        self._scalars.flatten_mapping(node)  # resolves YAML merge keys (<<)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._scalar(key_node)
            key = key if isinstance(key, str) else str(key)
            child = (*path, key)
            line = key_node.start_mark.line + 1
            if key in out:
                where = format_path(child)
                self.issues.append(ConfigIssue(self.file, line, where, "duplicate key"))
                continue
            self.lines[child] = line
            out[key] = self.build(value_node, child)
        return out
