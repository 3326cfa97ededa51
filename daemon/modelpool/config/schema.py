"""JSON Schema validation with messages a person can act on.

jsonschema's raw messages are written for schema authors; here each error is
rewritten to name the offending key, suggest the closest known key for typos,
and point at the line it came from.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import date
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when an error needs explaining: ~5 MB a valid config never pays
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

from modelpool.config.gate import Gate
from modelpool.config.judge import schema_text
from modelpool.config.source import Document, Path
from modelpool.errors import ConfigIssue


@cache
def _validator() -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    schema = json.loads(schema_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(_inline_refs(schema))


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The same schema with each ``#/$defs/…`` reference replaced by what it names.

    jsonschema resolves a ``$ref`` on every visit, about half its time on a
    large config; done once here instead, validation is twice as fast. A
    reference with sibling keywords becomes ``allOf: [target]`` beside them, so
    an error still carries the schema it came from (and its description). A
    recursive reference would stay a ``$ref``, resolved against ``$defs``.
    """
    defs = schema.get("$defs", {})

    def resolve(node: Any, seen: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [resolve(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and ref not in seen:
            target = resolve(defs[ref.removeprefix("#/$defs/")], seen | {ref})
            rest = {k: resolve(v, seen) for k, v in node.items() if k != "$ref"}
            if not rest:
                return target
            return {**rest, "allOf": [target, *rest.get("allOf", [])]}
        return {k: resolve(v, seen) for k, v in node.items()}

    return {k: v if k == "$defs" else resolve(v, frozenset()) for k, v in schema.items()}


def validate_schema(
    doc: Document,
    gate: Gate,
    *,
    defer_references: bool = False,
    within: Iterable[Path] | None = None,
) -> list[ConfigIssue]:
    """Every schema violation in ``doc``, in file order.

    ``gate`` settles a valid document alone; only one it does not pass is
    explained by jsonschema.

    With ``defer_references``, a string holding ``${env:…}`` or ``${secret:…}`` is
    not judged yet (except under ``secrets:``, which is read before substitution):
    the loader validates again once the reference is substituted.

    With ``within``, only the parts of ``doc`` holding those paths are validated,
    each on its own: a named entry of a collection (one provider, model, pool or
    client) or a whole top-level section. That is how the loader re-checks the
    substituted values without validating a large config twice; the schema has
    no rule spanning two entries, so the verdict is the same.
    """
    if within is not None:
        within = list(within)
        if not within:  # nothing was substituted: nothing to judge again
            return []
    if gate.passes(doc.data):  # the whole passes, so does every part of it
        return []
    issues: list[ConfigIssue] = []
    for prefix, error in _errors(doc.data, within):
        if defer_references and _is_reference(error, prefix):
            continue
        for path, message in _explain(error, prefix):
            issues.append(doc.issue(path, message))
    issues.sort(key=lambda i: (i.line or 0, i.path))
    return issues


def _errors(data: Any, within: Iterable[Path] | None) -> Iterator[tuple[Path, ValidationError]]:
    """Schema errors, each with the path of the part it was found in."""
    validator = _validator()
    units = None if within is None else _units(validator.schema, data, within)
    if units is None:
        for error in validator.iter_errors(data):
            yield (), error
        return
    for unit, (schema, instance) in units.items():
        for error in validator.evolve(schema=schema).iter_errors(instance):
            yield unit, error


def _units(schema: Any, data: Any, paths: Iterable[Path]) -> dict[Path, tuple[Any, Any]] | None:
    """The parts holding ``paths``, each with its schema: None when the whole must be checked."""
    properties = schema.get("properties", {}) if isinstance(schema, Mapping) else {}
    if not isinstance(data, dict):
        return None
    units: dict[Path, tuple[Any, Any]] = {}
    for path in paths:
        top = path[0] if path else None
        if not isinstance(top, str) or top not in properties or top not in data:
            return None
        section, entries = data[top], properties[top].get("additionalProperties")
        if len(path) > 1 and isinstance(entries, dict) and isinstance(section, dict):
            units[(top, path[1])] = (entries, section[path[1]])
        else:
            units[(top,)] = (properties[top], section)
    return {unit: part for unit, part in units.items() if unit[:1] == unit or unit[:1] not in units}


def _is_reference(error: ValidationError, prefix: Path) -> bool:
    value = error.instance
    in_secrets = (*prefix, *error.absolute_path)[:1] == ("secrets",)
    return isinstance(value, str) and "${" in value and not in_secrets


def _explain(error: ValidationError, prefix: Path = ()) -> Iterator[tuple[Path, str]]:
    """What is wrong, at which path; ``prefix`` is where the validated part sits in the file."""
    path: Path = (*prefix, *error.absolute_path)
    kind = error.validator
    if kind == "additionalProperties":
        yield from _unknown_keys(error, path)
    elif kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        yield path, f"missing required key '{missing}'"
    elif kind in ("oneOf", "anyOf"):
        yield from _one_of(error, path, prefix)
    elif kind == "enum":
        yield path, _enum(error)
    elif kind == "const":
        yield path, f"must be {error.validator_value!r}, got {error.instance!r}"
    elif kind == "type":
        expected = _type_name(error.validator_value)
        yield path, f"expected {expected}, got {_type_of(error.instance)}"
    elif kind == "not" and isinstance(error.instance, dict) and "mock" in error.instance:
        yield (*path, "mock"), "`mock` settings apply only to providers of type: mock"
    elif "propertyNames" in error.schema_path:  # a bad name: point at the key itself
        yield (*path, str(error.instance)), f"invalid name {error.instance!r}: {_name_rule()}"
    elif kind == "pattern":
        yield path, _described(error)
    else:
        yield path, error.message


def _schema_of(error: ValidationError) -> dict[str, Any]:
    return dict(error.schema) if isinstance(error.schema, Mapping) else {}


def _values_of(error: ValidationError) -> list[Any]:
    value = error.validator_value
    return list(value) if isinstance(value, list | tuple) else []


def _unknown_keys(error: ValidationError, path: Path) -> Iterator[tuple[Path, str]]:
    known = sorted(_schema_of(error).get("properties", {}))
    instance = error.instance if isinstance(error.instance, dict) else {}
    extra = [key for key in instance if key not in known]
    for key in extra:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
        shown = f"'{key}'" if key.isprintable() else repr(key)
        yield (*path, key), f"unknown key {shown}{hint}"


def _enum(error: ValidationError) -> str:
    options = [str(v) for v in _values_of(error)]
    close = difflib.get_close_matches(str(error.instance), options, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{error.instance!r} is not one of {', '.join(options)}{hint}"


def _one_of(error: ValidationError, path: Path, prefix: Path) -> Iterator[tuple[Path, str]]:
    """Explain the alternative the value was meant for, not whichever is listed first."""
    description = _schema_of(error).get("description")
    if description:
        expected = f"{description[0].lower()}{description[1:]}"
        yield path, f"invalid value {error.instance!r}: expected {expected}"
        return
    alternatives = list(error.context or ())
    # An alternative that rejects the value's very type is not the one the user meant.
    meant = [e for e in alternatives if e.validator != "type" or e.relative_path]
    if meant:
        for sub in meant:
            yield from _explain(sub, prefix)
        return
    expected = " or ".join(_type_name(e.validator_value) for e in alternatives)
    yield path, f"expected {expected or 'another value'}, got {_type_of(error.instance)}"


def _described(error: ValidationError) -> str:
    description = _schema_of(error).get("description")
    if description:
        return f"invalid value {error.instance!r}: {description}"
    return error.message


def _name_rule() -> str:
    schema = _validator().schema
    return str(schema["$defs"]["name"]["description"]) if isinstance(schema, Mapping) else ""


_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "nothing",
}


def _type_name(expected: object) -> str:
    if isinstance(expected, list):
        return " or ".join(_TYPE_NAMES.get(str(t), str(t)) for t in expected)
    return _TYPE_NAMES.get(str(expected), str(expected))


def _type_of(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, date):  # YAML reads an unquoted 2023-06-01 as a date
        return f"the date {value.isoformat()} (quote it to make it a string)"
    if isinstance(value, bytes):
        return "binary data (!!binary)"
    if not isinstance(value, str):
        return f"a YAML {type(value).__name__}"
    return f"the string {value!r}"
