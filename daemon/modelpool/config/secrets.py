"""Secret values: the redacting wrapper, and decryption of sops files.

sops is run as an external process (``sops --decrypt``) so modelpool never
holds key material of its own: whatever sops is configured to use (age,
PGP, cloud KMS via its usual environment variables) works unchanged.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

REDACTED = "***"
"""What a secret shows instead of its value: in its repr, in logs, in JSON."""


class Secret:
    """A credential that never shows itself in reprs, logs or dumps.

    ``str`` and ``repr`` are redacted. JSON has no hook an object can implement:
    ``json.dumps`` and ``orjson.dumps`` refuse a Secret with a TypeError naming only
    its type, and with ``default=str`` (or ``default=redacted``, what the logs use)
    write it redacted. Pickling keeps the value, for the config gate's child process.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The plain value, for the one place that puts it on the wire."""
        return self._value

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible identity: rotating the key changes it."""
        return hashlib.sha256(self._value.encode()).hexdigest()[:12]

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def redacted(value: object) -> str:
    """``default=`` for the JSON encoders where a Secret may pass (the logs): a Secret
    as ``"***"``, any other object the encoder does not know as its ``str``."""
    return REDACTED if isinstance(value, Secret) else str(value)


class SopsError(Exception):
    """A sops file could not be decrypted; the message is safe to show."""


def decrypt_sops_file(path: Path, *, binary: str, timeout: float) -> dict[str, str]:
    """Decrypt ``path`` with sops and flatten it to ``{"a.b": "value"}``."""
    try:
        proc = subprocess.run(
            [binary, "--decrypt", "--output-type", "json", str(path)],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise SopsError(
            f"sops binary {binary!r} not found; install sops or set secrets.sops_binary"
        ) from None
    except OSError as exc:  # not executable, a directory, wrong architecture …
        raise SopsError(f"cannot run sops binary {binary!r}: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise SopsError(f"sops took longer than {timeout:g}s to decrypt {path.name}") from None
    if proc.returncode != 0:
        raise SopsError(_explain_failure(path, proc.stderr.decode("utf-8", "replace")))
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        raise SopsError(f"sops output for {path.name} is not a mapping") from None
    if not isinstance(data, dict):
        raise SopsError(f"{path.name} must hold a mapping of names to secrets")
    return dict(_flatten(data, ""))


def _explain_failure(path: Path, stderr: str) -> str:
    text = stderr.strip()
    lowered = text.lower()
    if not path.exists():
        return f"sops file {str(path)!r} does not exist"
    if "metadata not found" in lowered or "sops metadata" in lowered:
        return f"{path.name} is not a sops-encrypted file (no sops metadata)"
    if "failed to get the data key" in lowered or "no identity matched" in lowered:
        return (
            f"cannot decrypt {path.name}: no usable key (set SOPS_AGE_KEY_FILE, "
            "SOPS_AGE_KEY or your KMS credentials for the sops process)"
        )
    last = text.splitlines()[-1] if text else "no output"
    return f"sops failed to decrypt {path.name}: {last[:300]}"


def _flatten(data: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, str]]:
    for key, value in data.items():
        if key == "sops":
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}.")
        elif value is not None:
            yield name, value if isinstance(value, str) else json.dumps(value)
