"""``${env:NAME}`` and ``${secret:NAME}`` substitution in string values."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelpool.config.source import Document, Path
from modelpool.errors import ConfigIssue

_REFERENCE = re.compile(r"\$\{([A-Za-z_]+):([^}]*)\}")


@dataclass
class Interpolation:
    """The substituted data, plus where secrets went, for redaction."""

    data: Any
    issues: list[ConfigIssue] = field(default_factory=list)
    secret_paths: set[Path] = field(default_factory=set)
    referencing: set[Path] = field(default_factory=set)
    """Every value that held a ``${…}``: what the schema must judge again."""


def interpolate(
    doc: Document,
    env: Mapping[str, str],
    secrets: Mapping[str, str],
    *,
    secrets_complete: bool = True,
) -> Interpolation:
    """Substitute every reference in ``doc``; a missing one is an issue at its key.

    When a sops file failed to decrypt (``secrets_complete`` false), a missing
    secret is a consequence already reported, not a problem of its own.
    """
    substitution = _Substitution(doc, env, secrets, secrets_complete)
    substitution.result.data = substitution.walk(doc.data, ())
    return substitution.result


class _Substitution:
    def __init__(
        self, doc: Document, env: Mapping[str, str], secrets: Mapping[str, str], complete: bool
    ) -> None:
        self.doc = doc
        self.env = env
        self.secrets = secrets
        self.complete = complete
        self.result = Interpolation(data=None)

    def walk(self, value: Any, path: Path) -> Any:
        if isinstance(value, dict):
            return {k: self.walk(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.walk(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            self.result.referencing.add(path)
            return _REFERENCE.sub(lambda m: self.resolve(m[1], m[2], path), value)
        return value

    def resolve(self, kind: str, name: str, path: Path) -> str:
        if kind == "env":
            if name in self.env:
                return self.env[name]
            self.report(path, f"environment variable {name!r} is not set")
        elif kind == "secret":
            self.result.secret_paths.add(path)
            if name in self.secrets:
                return self.secrets[name]
            if self.complete:
                self.report(path, _unknown_secret(name, self.secrets))
        else:
            self.report(
                path, f"unknown reference ${{{kind}:…}}: use ${{env:NAME}} or ${{secret:NAME}}"
            )
        return ""

    def report(self, path: Path, message: str) -> None:
        self.result.issues.append(self.doc.issue(path, message))


def _unknown_secret(name: str, secrets: Mapping[str, str]) -> str:
    if not secrets:
        return f"unknown secret {name!r}: no secrets are loaded (see secrets.sops_files)"
    close = difflib.get_close_matches(name, list(secrets), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(secrets))})"
    return f"unknown secret {name!r}{hint}"
