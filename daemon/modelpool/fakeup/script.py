"""Fault scripts: what the fake upstream does to each request, in order (no sockets).

A script is an ordered list of steps; each step applies one :class:`Fault` to
the next ``count`` requests (optionally only requests to one ``path``; requests
to other paths are answered normally and do not use the step up). After the
last step the fake answers ``ok`` for ever, or starts over when ``loop`` is set.

A step is written either as a compact spec string or as a mapping with the
same keys, so ``"status=429,retry_after=2*3"`` and
``{"status": 429, "retry_after": 2, "count": 3}`` are one step. A step without
a count lasts one request, except the last step of a script that does not
loop, which lasts for ever (so ``--fault status=503`` alone fails everything).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from modelpool.config.units import format_duration, parse_duration

Kind = Literal[
    "ok",
    "latency",
    "status",
    "reset",
    "hang",
    "drip",
    "truncate",
    "error_in_stream",
    "invalid_json",
    "stall",
]
KINDS: tuple[Kind, ...] = get_args(Kind)

HANG_MAX = 300.0
"""The longest a hang or a stall lasts before the fake closes the connection itself."""

_MODIFIERS: tuple[Kind, ...] = ("drip", "latency")
"""Kinds that are also options of other kinds: ``truncate=3,drip=100ms`` is a truncate."""

_STEP_KEYS = frozenset({"count", "path"})
_OPTIONS: Mapping[Kind, frozenset[str]] = {
    "ok": frozenset(),
    "latency": frozenset(),
    "status": frozenset({"retry_after", "retry_after_ms", "message"}),
    "reset": frozenset(),
    "hang": frozenset(),
    "drip": frozenset({"ping"}),
    "truncate": frozenset({"drip", "ping"}),
    "error_in_stream": frozenset({"message"}),
    "invalid_json": frozenset(),
    "stall": frozenset({"drip", "ping", "max"}),
}
"""Options each kind takes besides its own key, ``latency``, ``count`` and ``path``."""

_COUNT_SUFFIX = re.compile(r"^(?P<body>.*)\*(?P<count>[^*]*)$")


class FaultScriptError(ValueError):
    """A fault spec or script that cannot be understood; the message says where and why."""


@dataclass(frozen=True)
class Fault:
    """One misbehaviour. Fields a kind does not use keep their defaults."""

    kind: Kind = "ok"
    latency: float = 0.0
    """Seconds to wait before anything is sent (every kind)."""
    status: int = 200
    retry_after: str | None = None
    retry_after_ms: int | None = None
    message: str | None = None
    drip: float = 0.0
    """Seconds between two pieces of the answer."""
    ping: float = 0.0
    """While waiting in a stream, send an SSE ``: ping`` comment this often."""
    chunks: int = 1
    """How many pieces a truncate or stall sends first."""
    max: float = HANG_MAX


OK = Fault()


@dataclass(frozen=True)
class Step:
    fault: Fault
    count: int | None
    """Requests this step applies to; None means every request from here on."""
    path: str | None = None


@dataclass(frozen=True)
class Script:
    steps: tuple[Step, ...] = ()
    loop: bool = False


# --------------------------------------------------------------------------- parsing


def parse_spec(spec: str) -> dict[str, str | None]:
    """Split a compact spec: ``"status=429,retry_after=2*3"`` → status, retry_after, count."""
    raw: dict[str, str | None] = {}
    body = spec.strip()
    suffix = _COUNT_SUFFIX.match(body)
    if suffix:
        body, raw["count"] = suffix["body"], suffix["count"]
    for part in body.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not key:
            raise FaultScriptError(f"{spec!r}: empty option (write e.g. status=503,retry_after=2)")
        if key in raw:
            raise FaultScriptError(f"{spec!r}: {key} given twice")
        raw[key] = value.strip() if sep else None
    return raw


def step_from(raw: str | Mapping[str, Any]) -> tuple[Fault, int | None, str | None]:
    """A spec string or mapping → (fault, explicit count or None, path or None)."""
    options = parse_spec(raw) if isinstance(raw, str) else dict(raw)
    unknown = [k for k in options if not isinstance(k, str)]
    if unknown:
        raise FaultScriptError(f"option names must be strings, got {unknown[0]!r}")
    kind = _kind_of(options)
    _check_options(kind, options)
    count = _maybe(options.get("count"), _count)
    path = _maybe(options.get("path"), _path)
    return _fault_from(kind, options), count, path


def script_from(raw: Any) -> Script:
    """A script from JSON/YAML data: a list of steps, ``{steps: [...], loop: bool}`` or a step."""
    if isinstance(raw, Mapping) and ("steps" in raw or "loop" in raw):
        extra = sorted(set(raw) - {"steps", "loop"})
        if extra:
            raise FaultScriptError(f"unknown script key {extra[0]!r} (a script has steps and loop)")
        loop, steps = raw.get("loop", False), raw.get("steps", [])
        if not isinstance(loop, bool) or not isinstance(steps, list):
            raise FaultScriptError("a script needs `steps: [...]` and an optional `loop: true`")
        return build_script(steps, loop=loop)
    if isinstance(raw, str | Mapping):
        return build_script([raw], loop=False)
    if isinstance(raw, list):
        return build_script(raw, loop=False)
    raise FaultScriptError(f"a script is a list of steps or a mapping, not {type(raw).__name__}")


def build_script(raw_steps: Sequence[str | Mapping[str, Any]], *, loop: bool) -> Script:
    """Steps in order; a count left out means 1, or for ever on the last step of a one-shot."""
    steps: list[Step] = []
    for index, raw in enumerate(raw_steps):
        if not isinstance(raw, str | Mapping):
            raise FaultScriptError(f"step {index + 1}: a spec string or a mapping, not {raw!r}")
        try:
            fault, count, path = step_from(raw)
        except FaultScriptError as exc:
            raise FaultScriptError(f"step {index + 1}: {exc}") from None
        last = index == len(raw_steps) - 1
        steps.append(Step(fault, count if count is not None else (None if last else 1), path))
    script = Script(tuple(steps))
    return looping(script) if loop else script


def looping(script: Script) -> Script:
    """``script`` set to start over after its last step (so every step gets a count)."""
    steps = tuple(replace(s, count=1) if s.count is None else s for s in script.steps)
    return Script(steps, loop=True)


def _kind_of(options: Mapping[str, Any]) -> Kind:
    primary = [k for k in KINDS if k in options and k not in _MODIFIERS]
    if len(primary) > 1:
        raise FaultScriptError(f"one fault per step, got {' and '.join(primary)}")
    if primary:
        return primary[0]
    for modifier in _MODIFIERS:
        if modifier in options:
            return modifier
    raise FaultScriptError(f"no fault named; one of: {', '.join(KINDS)}")


def _check_options(kind: Kind, options: Mapping[str, Any]) -> None:
    allowed = _OPTIONS[kind] | _STEP_KEYS | {kind, "latency"}
    for key in options:
        if key not in allowed:
            takes = ", ".join(sorted(_OPTIONS[kind] | {"latency"})) or "nothing"
            raise FaultScriptError(f"{key} does not apply to {kind} (it takes {takes})")


def _fault_from(kind: Kind, options: Mapping[str, Any]) -> Fault:
    fields: dict[str, Any] = {"kind": kind}
    fields.update(_KIND_VALUE[kind](options.get(kind)))
    for key, convert, name in _OPTION_FIELDS:
        if key in options and key != kind:
            fields[name] = _convert(key, options[key], convert)
    if fields.get("ping") and not fields.get("drip") and kind != "stall":
        raise FaultScriptError("ping needs drip (pings are sent while waiting between pieces)")
    return Fault(**fields)


def _convert(key: str, value: Any, convert: Callable[[Any], Any]) -> Any:
    try:
        return convert(value)
    except (TypeError, ValueError) as exc:
        raise FaultScriptError(f"{key}: {exc}") from None


def _maybe(value: Any, convert: Callable[[Any], Any]) -> Any:
    return None if value is None else convert(value)


# --------------------------------------------------------------------------- values


def _duration(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"a duration such as 200ms or 2s, not {value!r}")
    seconds = parse_duration(value)
    if seconds > HANG_MAX * 10:
        raise ValueError(f"{value!r} is longer than {format_duration(HANG_MAX * 10)}")
    return seconds


def _integer(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"a whole number, not {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"a whole number, not {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{number} is not within {low}..{high}")
    return number


def _count(value: Any) -> int:
    try:
        return _integer(value, 1, 10**9)
    except ValueError as exc:
        raise FaultScriptError(f"count: {exc}") from None


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise FaultScriptError(
            f"path: an absolute request path such as /v1/embeddings, not {value!r}"
        )
    return value


def _text(value: Any) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"a value, not {value!r}")
    return str(value)


def _absent(value: Any) -> bool:
    """No value given: ``reset`` in a spec, ``reset:`` or ``reset: true`` in YAML (not 1)."""
    return value is None or value is True or (isinstance(value, str) and not value)


def _flag(kind: str) -> Callable[[Any], dict[str, Any]]:
    def convert(value: Any) -> dict[str, Any]:
        if not _absent(value):
            raise FaultScriptError(f"{kind} takes no value, got {value!r}")
        return {}

    return convert


def _optional(
    kind: str, name: str, convert: Callable[[Any], Any]
) -> Callable[[Any], dict[str, Any]]:
    """A kind whose value may be left out: ``hang`` or ``hang=10s``, ``stall`` or ``stall=3``."""

    def read(value: Any) -> dict[str, Any]:
        if _absent(value):
            return {}
        return {name: _convert(kind, value, convert)}

    return read


def _required(
    kind: str, name: str, convert: Callable[[Any], Any]
) -> Callable[[Any], dict[str, Any]]:
    def read(value: Any) -> dict[str, Any]:
        if _absent(value):
            raise FaultScriptError(f"{kind} needs a value, e.g. {_EXAMPLES[kind]}")
        return {name: _convert(kind, value, convert)}

    return read


_EXAMPLES = {"latency": "latency=2s", "status": "status=503", "drip": "drip=200ms"}


def _status(value: Any) -> int:
    return _integer(value, 100, 599)


def _chunks(value: Any) -> int:
    return _integer(value, 0, 10**6)


_KIND_VALUE: Mapping[Kind, Callable[[Any], dict[str, Any]]] = {
    "ok": _flag("ok"),
    "latency": _required("latency", "latency", _duration),
    "status": _required("status", "status", _status),
    "reset": _flag("reset"),
    "hang": _optional("hang", "max", _duration),
    "drip": _required("drip", "drip", _duration),
    "truncate": _optional("truncate", "chunks", _chunks),
    "error_in_stream": _flag("error_in_stream"),
    "invalid_json": _flag("invalid_json"),
    "stall": _optional("stall", "chunks", _chunks),
}

_OPTION_FIELDS: tuple[tuple[str, Callable[[Any], Any], str], ...] = (
    ("latency", _duration, "latency"),
    ("drip", _duration, "drip"),
    ("ping", _duration, "ping"),
    ("max", _duration, "max"),
    ("retry_after", _text, "retry_after"),
    ("retry_after_ms", lambda v: _integer(v, 0, 10**9), "retry_after_ms"),
    ("message", _text, "message"),
)


# --------------------------------------------------------------------------- describing


def describe_step(step: Step) -> dict[str, Any]:
    """The mapping form of a step, which :func:`step_from` reads back to the same step."""
    described = describe_fault(step.fault)
    if step.count is not None:
        described["count"] = step.count
    if step.path is not None:
        described["path"] = step.path
    return described


def describe_fault(fault: Fault) -> dict[str, Any]:
    own_field = _OWN_FIELD.get(fault.kind)
    described: dict[str, Any] = {
        fault.kind: _shown(getattr(fault, own_field) if own_field else True)
    }
    for key, _, name in _OPTION_FIELDS:
        value = getattr(fault, name)
        if name != own_field and value != getattr(OK, name):
            described[key] = _shown(value)
    return described


def _shown(value: Any) -> Any:
    return format_duration(value) if isinstance(value, float) else value


_OWN_FIELD: Mapping[Kind, str] = {
    "latency": "latency",
    "status": "status",
    "hang": "max",
    "drip": "drip",
    "truncate": "chunks",
    "stall": "chunks",
}
"""The Fault field a kind's own value sets: ``hang=10s`` is max, ``truncate=3`` is chunks."""


def describe_script(script: Script) -> dict[str, Any]:
    return {"loop": script.loop, "steps": [describe_step(s) for s in script.steps]}


# --------------------------------------------------------------------------- files


def load_script(path: str | Path) -> Script:
    """A script from a YAML or JSON file (JSON is YAML)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise FaultScriptError(f"{path}: {exc}") from None
    try:
        return script_from(raw)
    except FaultScriptError as exc:
        raise FaultScriptError(f"{path}: {exc}") from None


def script_from_args(path: str | None, specs: Sequence[str], *, loop: bool) -> Script:
    """The command line's script: ``--script FILE`` or the ``--fault`` specs, ``--loop`` on top."""
    script = load_script(path) if path else build_script(specs, loop=loop)
    return looping(script) if loop else script
