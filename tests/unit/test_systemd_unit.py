"""systemd/modelpool.service: the settings SPEC §8 requires, and a unit systemd accepts.

The settings are read with a small line parser (configparser would fold the
repeated and empty keys systemd allows). Whether systemd itself accepts the
file is asked of ``systemd-analyze verify`` where it is installed, on a copy
whose ExecStart points at this venv's ``modelpool`` (verify insists the
binary exists). Where it is not (minimal CI images), the same test checks the
file with :func:`_lint` instead: every key is one this unit is known to use
correctly, executables are absolute, time spans parse. No test is skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "modelpool.service"

Unit = dict[str, dict[str, list[str]]]

REQUIRED = {
    "Service": {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": "/usr/local/bin/modelpool run /etc/modelpool/pools.yaml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "WatchdogSec": "30s",
        "Restart": "on-failure",
        "RestartSec": "2s",
        "KillSignal": "SIGTERM",
        "DynamicUser": "yes",
        "StateDirectory": "modelpool",
        "ConfigurationDirectory": "modelpool",
        "LoadCredential": "age-key:/etc/modelpool/age.key",
        "Environment": "SOPS_AGE_KEY_FILE=%d/age-key",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallFilter": "@system-service",
        "SystemCallArchitectures": "native",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "RemoveIPC": "yes",
        "UMask": "0077",
        "MemoryMax": "1G",
        "TasksMax": "256",
        "LimitNOFILE": "65536",
    },
    "Install": {"WantedBy": "multi-user.target"},
}

KNOWN_KEYS = {
    "Unit": {"Description", "Documentation", "Wants", "After", "Requires", "Before"},
    "Service": set(REQUIRED["Service"])
    | {
        "TimeoutStopSec",
        "RuntimeDirectory",
        "WorkingDirectory",
        "ProtectProc",
        "SystemCallErrorNumber",
    },
    "Install": {"WantedBy"},
}
TIME_SPAN = re.compile(r"(\d+(\.\d+)?(us|ms|s|sec|m|min|h)?\s*)+|infinity")
TIME_KEYS = ("WatchdogSec", "RestartSec", "TimeoutStopSec")


def _parse(text: str) -> Unit:
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"line {number} is not KEY=VALUE: {raw!r}"
        assert section is not None, f"line {number} comes before any [section]"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def _last(unit: Unit, section: str, key: str) -> str:
    return unit[section][key][-1]


def _lint(unit: Unit) -> list[str]:
    """What systemd would warn about in this unit, for machines without systemd-analyze."""
    problems = [f"unknown section [{name}]" for name in unit if name not in KNOWN_KEYS]
    for name, keys in unit.items():
        unknown = set(keys) - KNOWN_KEYS.get(name, set())
        problems += [f"unknown key {key} in [{name}]" for key in sorted(unknown)]
    service = unit.get("Service", {})
    for key in ("ExecStart", "ExecReload"):
        problems += [f"{key} is not absolute: {v}" for v in service.get(key, []) if v[:1] != "/"]
    for key in TIME_KEYS:
        problems += [f"{key}={v} is no time span" for v in service.get(key, []) if not _span(v)]
    return problems


def _span(value: str) -> bool:
    return TIME_SPAN.fullmatch(value) is not None


@pytest.fixture(scope="module")
def unit() -> Unit:
    return _parse(UNIT.read_text())


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [(s, k, v) for s, keys in REQUIRED.items() for k, v in keys.items()],
)
def test_required_setting(unit: Unit, section: str, key: str, value: str) -> None:
    assert _last(unit, section, key) == value


def test_systemd_outwaits_the_drain_grace_period(unit: Unit) -> None:
    stop_timeout = _last(unit, "Service", "TimeoutStopSec")
    assert stop_timeout.endswith("s")
    assert int(stop_timeout.removesuffix("s")) > 30, "server.grace_period defaults to 30s"


def test_no_setting_is_given_twice(unit: Unit) -> None:
    repeated = [k for keys in unit.values() for k, values in keys.items() if len(values) > 1]
    assert repeated == []


def test_the_unit_passes_the_pure_python_lint(unit: Unit) -> None:
    assert _lint(unit) == []


def test_the_lint_catches_what_it_should() -> None:
    broken = _parse(
        "[Service]\nExecStart=modelpool run\nWatchdogSec=soon\nBogus=1\n[Timer]\nOnBoot=1\n"
    )
    assert sorted(_lint(broken)) == [
        "ExecStart is not absolute: modelpool run",
        "WatchdogSec=soon is no time span",
        "unknown key Bogus in [Service]",
        "unknown key OnBoot in [Timer]",
        "unknown section [Timer]",
    ]


def test_systemd_accepts_the_unit(unit: Unit, tmp_path: Path) -> None:
    """``systemd-analyze verify`` when installed; otherwise :func:`_lint` (see the docstring)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        assert _lint(unit) == []
        return
    assert _verify(analyze, tmp_path) == []


def test_verify_reports_unknown_settings(tmp_path: Path) -> None:
    """The verify test would notice a typo: systemd-analyze exits 0 but warns (or the lint does)."""
    analyze = shutil.which("systemd-analyze")
    typo = UNIT.read_text().replace("ProtectClock=", "ProtectClocks=")
    if analyze is None:
        assert "unknown key ProtectClocks in [Service]" in _lint(_parse(typo))
        return
    problems = _verify(analyze, tmp_path, typo)
    assert any("ProtectClocks" in line for line in problems), problems


def _verify(analyze: str, folder: Path, text: str | None = None) -> list[str]:
    """The lines systemd-analyze verify prints about a copy of the unit."""
    script = Path(sys.executable).parent / "modelpool"
    assert script.exists(), "the test venv has no modelpool script: pip install -e '.[test]'"
    copy = folder / "modelpool.service"
    source = UNIT.read_text() if text is None else text
    copy.write_text(source.replace("/usr/local/bin/modelpool", str(script)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).splitlines()
    problems = [line for line in output if "modelpool" in line]
    if result.returncode != 0:
        problems.append(f"systemd-analyze exited {result.returncode}: {output}")
    return problems
