"""Strict YAML loading that remembers the line of every key and value.

Errors anywhere later in the pipeline name a key path such as
``pools.smart.failover[1]``; :class:`Document` maps such paths back to the line
they came from so that every message reads ``pools.yaml:42 pools.smart...``.
"""

from __future__ import annotations

import re
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
            name = part if part.isprintable() else repr(part)  # one line, whatever the key
            out += f".{name}" if out else name
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
        raise ConfigError([_syntax_issue(exc, file, text)]) from None
    if node is None:
        return Document(file, None, {})
    builder = _Builder(file, text, node)
    try:
        data = builder.build(node, ())
    except _TooLarge as exc:
        message = "aliases expand this document past any real config's size (an alias bomb?)"
        raise ConfigError([ConfigIssue(file, exc.line, "", message)]) from None
    if builder.issues:
        raise ConfigError(sorted(builder.issues, key=lambda issue: issue.line or 0))
    return Document(file, data, builder.lines)


_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


def _line_count(text: str) -> int:
    """Lines in ``text`` as YAML counts them (its line breaks), at least 1."""
    breaks = len(_LINE_BREAK.findall(text))
    ends_with_break = bool(text) and text[-1] in "\n\r\x85\u2028\u2029"
    return max(1, breaks + (0 if ends_with_break else 1))


def _syntax_issue(exc: yaml.YAMLError, file: str, text: str) -> ConfigIssue:
    mark = getattr(exc, "problem_mark", None)
    position = getattr(exc, "position", None)  # a ReaderError (a forbidden character) has no mark
    if mark is not None:
        # At the end of the text libyaml's mark sits on the line after the last one.
        line: int | None = min(mark.line + 1, _line_count(text))
    elif isinstance(position, int):  # libyaml counts UTF-8 bytes
        before = text.encode("utf-8", "surrogatepass")[:position].decode("utf-8", "ignore")
        line = min(len(_LINE_BREAK.findall(before)) + 1, _line_count(text))
    else:
        line = None
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    message = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    return ConfigIssue(file, line, "", message)


class _Builder:
    """Turns a composed node tree into plain Python data plus a line map.

    Whatever the text holds, the outcome is data or issues, never another
    exception: PyYAML's constructors raise ValueError, KeyError and the like
    for malformed tagged scalars (``!!int 0x``, ``!!bool maybe``, a plain
    ``2024-02-30`` resolved as a date), an anchor may contain itself, and a
    few nested aliases can expand exponentially ("billion laughs"), and nesting
    can go deeper than Python's stack.
    """

    def __init__(self, file: str, text: str, root: yaml.Node) -> None:
        self.file = file
        self.lines: dict[Path, int] = {}
        self.issues: list[ConfigIssue] = []
        self._scalars = yaml.SafeLoader(text)  # constructs scalars by their resolved tag
        self._open: set[int] = set()  # the collections being built, to catch `&a [*a]`
        self._merged: dict[int, int] = {}  # per mapping node: how many pairs came from `<<`
        self._budget = _EXPANSION * _count_nodes(root) + _SLACK

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        self._budget -= 1
        if self._budget < 0:
            raise _TooLarge(node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            return self._value(node, path)
        if id(node) in self._open:
            self._issue(node, path, "an alias refers to a collection that contains it")
            return None
        if len(path) >= _MAX_DEPTH:  # building recurses: Python's stack ends near 500 levels
            self._issue(node, path, f"nested more than {_MAX_DEPTH} levels deep")
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        finally:
            self._open.discard(id(node))

    def _issue(self, node: yaml.Node, path: Path, message: str) -> None:
        line = node.start_mark.line + 1
        self.issues.append(ConfigIssue(self.file, line, format_path(path), message))

    def _value(self, node: yaml.ScalarNode, path: Path) -> Any:
        try:
            return self._scalar(node)
        except _UNREADABLE as exc:
            self._issue(node, path, _unreadable(node, exc))
            return None

    def _scalar(self, node: yaml.Node) -> Any:
        # Most values are strings, whose value is the text itself: a shortcut
        # past SafeConstructor that keeps a large config's load fast.
        if node.tag == _STR and isinstance(node, yaml.ScalarNode):
            return node.value
        return self._scalars.construct_object(node, deep=True)

    def _key(self, node: yaml.Node, path: Path) -> str | None:
        try:
            key = self._scalar(node)
        except _UNREADABLE as exc:
            self._issue(node, path, f"unreadable key: {_unreadable(node, exc)}")
            return None
        return key if isinstance(key, str) else str(key)

    def _merge(self, node: yaml.MappingNode, path: Path) -> int:
        """Resolve merge keys (``<<``) in place, once per node; the number of pairs they
        brought, which PyYAML puts first. A node reached again through an alias is
        already flattened, so the count is remembered."""
        if id(node) in self._merged:
            return self._merged[id(node)]
        explicit = sum(1 for key, _ in node.value if key.tag != _MERGE)
        try:
            self._scalars.flatten_mapping(node)
            merged = len(node.value) - explicit
        except yaml.YAMLError as exc:
            self._issue(node, path, f"invalid merge (<<): {_problem(exc)}")
            node.value = [(key, value) for key, value in node.value if key.tag != _MERGE]
            merged = 0
        self._merged[id(node)] = merged
        return merged

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        """Keys written twice are an issue; a key written over a merged one overrides it
        (YAML's merge semantics, as ``yaml.safe_load`` reads it)."""
        merged = self._merge(node, path)
        chosen: dict[str, int] = {}
        for index, (key_node, _) in enumerate(node.value):
            key = self._key(key_node, path)
            if key is None:
                continue
            if index >= merged and chosen.get(key, -1) >= merged:
                self._issue(key_node, (*path, key), "duplicate key")
                continue
            chosen[key] = index
        out: dict[str, Any] = {}
        for key, index in chosen.items():
            key_node, value_node = node.value[index]
            child = (*path, key)
            self.lines[child] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, child)
        return out


_MERGE = "tag:yaml.org,2002:merge"

_UNREADABLE = (yaml.YAMLError, ValueError, LookupError, AttributeError, TypeError)
"""What PyYAML's constructors raise for a scalar they cannot read: ``!!int 0x``
(ValueError), ``!!bool maybe`` (KeyError), ``!!int`` with no value (IndexError),
``!!timestamp soon`` (AttributeError), ``!custom x`` (ConstructorError)."""

_MAX_DEPTH = 100
"""Far deeper than any config (the schema's own depth is under 10)."""

_EXPANSION = 100
_SLACK = 100_000
"""A document may build at most ``_EXPANSION`` values per node it writes (plus
``_SLACK``): aliases reused that much are an alias bomb, not a config."""


class _TooLarge(Exception):
    """Raised out of the builder when aliases expand past the budget."""

    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


def _count_nodes(root: yaml.Node) -> int:
    """Distinct nodes in the composed graph (aliases are shared nodes, cycles possible)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in node.value for part in pair)
    return len(seen)


def _problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message without the ``in "<unicode string>", line …`` lines it appends."""
    problem = getattr(exc, "problem", None)
    return str(problem) if problem else str(exc).splitlines()[0]


def _unreadable(node: yaml.Node, exc: BaseException) -> str:
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    reason = ""
    if isinstance(exc, yaml.YAMLError):
        reason = _problem(exc)
        if "could not determine a constructor" in reason:
            return f"unsupported YAML tag {tag!r}"
    elif isinstance(exc, ValueError):  # says what is wrong: "month must be in 1..12"
        reason = str(exc)
    value = node.value if isinstance(node, yaml.ScalarNode) else "…"
    because = f" ({reason})" if reason else ""
    return f"cannot read {value!r} as {tag}{because}; quote it if it is text"
