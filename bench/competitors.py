"""The rows of bench/compare.py besides modelpool: how each proxy is installed, configured, started.

Every launcher starts its proxy through ``env.procs`` (tracked and stopped by
PID), pinned to the proxy core, ``env.settings.starts`` times to time start-up
(from ``Popen`` to the first 200 answer to a chat completion), and keeps the
last process running. A launcher that cannot install or start its proxy raises
``Unavailable`` with the reason; compare.py reports that row as not run.

Third-party proxies are installed once into a cache directory
(``$MODELPOOL_BENCH_CACHE``, else ``$XDG_CACHE_HOME/modelpool-bench``, else
``~/.cache/modelpool-bench``), never into the project's venv:

* ``litellm/``: a venv of its own with ``pip install 'litellm[proxy]'``;
* ``portkey/``: ``npm install @portkey-ai/gateway``.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from procs import Proc, free_port
from run import CHAT_PATH, POOL, Env, ModelpoolLauncher, Target, chat_body

HERE = Path(__file__).resolve().parent
Say = Callable[[str], None]


class Unavailable(Exception):
    """This row cannot run here; the message says why."""


@dataclass
class Proxy(Target):
    """A target and the extra request headers it needs (Portkey routes by header)."""

    headers: dict[str, str] = field(default_factory=dict)


def cache_dir() -> Path:
    explicit = os.environ.get("MODELPOOL_BENCH_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelpool-bench"


# --- starting and timing ------------------------------------------------------------------


def post(port: int, headers: dict[str, str], timeout: float = 5.0) -> tuple[int, bytes]:
    """One POST of the non-streaming chat body: (status, body); (0, b"") when refused."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(
            "POST",
            CHAT_PATH,
            body=chat_body(POOL, False),
            headers={"Content-Type": "application/json", "Authorization": "Bearer bench"} | headers,
        )
        response = conn.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


def wait_served(
    proc: Proc, port: int, headers: dict[str, str], started: float, limit: float
) -> float:
    """Seconds from ``started`` (perf_counter) to the first 200 from ``proc`` on ``port``."""
    deadline = started + limit
    last = (0, b"")
    while time.perf_counter() < deadline:
        last = post(port, headers)
        if last[0] == 200:
            elapsed = time.perf_counter() - started
            if b"chat.completion" not in last[1]:
                raise Unavailable(f"answered 200 without a chat completion: {last[1][:200]!r}")
            return elapsed
        if not proc.alive():
            raise Unavailable(f"exited during start:\n{proc.log_tail(12)}")
        time.sleep(0.002 if last[0] == 0 else 0.05)
    status = f"last status {last[0]}: {last[1][:300]!r}" if last[0] else "never answered"
    raise Unavailable(f"served no 200 within {limit:g}s ({status}):\n{proc.log_tail(12)}")


def start_timed(
    env: Env,
    name: str,
    make_argv: Callable[[int], Sequence[str]],
    *,
    headers: dict[str, str] | None = None,
    environ: dict[str, str] | None = None,
    limit: float = 60.0,
) -> Proxy:
    """Start ``env.settings.starts`` times on a fresh port each; keep the last one running."""
    headers = headers or {}
    samples: list[float] = []
    starts = max(1, env.settings.starts)
    for attempt in range(starts):
        port = free_port()
        argv = [*env.cpus.prefix(env.cpus.proxy), *make_argv(port)]
        started = time.perf_counter()
        proc = env.procs.start(name, argv, env=environ)
        try:
            samples.append(wait_served(proc, port, headers, started, limit))
        except Unavailable:
            env.procs.stop(proc.popen)
            raise
        if attempt < starts - 1:
            env.procs.stop(proc.popen)
    return Proxy(name, port, proc, samples, headers)


# --- the rows -----------------------------------------------------------------------------


class DirectLauncher:
    name = "upstream direct"
    key = "direct"

    def launch(self, env: Env, say: Say) -> Proxy:
        return Proxy(self.name, env.upstream_port)


class NginxLauncher:
    """Debian's nginx as a plain reverse proxy: one worker, keep-alive upstream, no buffering."""

    name = "nginx (reverse proxy)"
    key = "nginx"

    def launch(self, env: Env, say: Say) -> Proxy:
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
        )
        if nginx is None:
            raise Unavailable("nginx is not installed (apt-get install nginx-light)")
        template = (HERE / "nginx" / "reverse-proxy.conf").read_text()

        def argv(port: int) -> list[str]:
            config = env.workdir / "nginx.conf"
            config.write_text(
                template.format(workdir=env.workdir, port=port, upstream_port=env.upstream_port)
            )
            return [
                nginx,
                *("-p", str(env.workdir), "-c", str(config)),
                *("-e", str(env.workdir / "nginx-error.log")),
                *("-g", "daemon off;"),
            ]

        return start_timed(env, "nginx", argv, limit=15)


class PassthroughLauncher:
    """bench/passthrough.py: aiohttp in and out on uvloop, no parsing — our stack's ceiling."""

    name = "aiohttp passthrough"
    key = "passthrough"

    def launch(self, env: Env, say: Say) -> Proxy:
        upstream = f"http://127.0.0.1:{env.upstream_port}"

        def argv(port: int) -> list[str]:
            script = str(HERE / "passthrough.py")
            return [sys.executable, script, "--port", str(port), "--upstream", upstream]

        return start_timed(env, "passthrough", argv, limit=30)


class ModelpoolRow:
    """``modelpool run`` as bench/run.py starts it: one pool → one openai_compatible model."""

    name = "modelpool"
    key = "modelpool"

    def __init__(self, executable: Path) -> None:
        self._launcher = ModelpoolLauncher(executable)

    def launch(self, env: Env, say: Say) -> Proxy:
        try:
            target = self._launcher.launch(env)
        except RuntimeError as exc:
            raise Unavailable(str(exc)) from None
        return Proxy(self.name, target.port, target.proc, target.start_s)


LITELLM_CONFIG = """\
model_list:
  - model_name: {pool}
    litellm_params:
      model: openai/bench-upstream
      api_base: http://127.0.0.1:{upstream}/v1
      api_key: sk-bench-dummy
litellm_settings:
  telemetry: false
general_settings:
  master_key: {master_key}
"""


class LiteLLMLauncher:
    """LiteLLM proxy: 1 uvicorn worker, no database, telemetry off.

    It refuses to start without a strong master key, so the config has a random
    one and every request of this row sends it (a compare with the configured
    key: no database is involved).
    """

    name = "LiteLLM proxy"
    key = "litellm"

    def __init__(self, install_timeout: float) -> None:
        self._install_timeout = install_timeout

    def install(self, env: Env, say: Say) -> Path:
        home = cache_dir() / "litellm"
        exe = home / "bin" / "litellm"
        marker = home / ".bench-installed"
        if exe.exists() and marker.exists():
            return exe
        say(f"installing LiteLLM into {home} (once; up to {self._install_timeout:.0f} s)")
        python = shutil.which("python3") or sys.executable
        try:
            env.procs.run("venv", [python, "-m", "venv", "--clear", str(home)], timeout=120)
            pip = [str(home / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
            env.procs.run("pip", [*pip, "litellm[proxy]"], timeout=self._install_timeout)
        except RuntimeError as exc:
            raise Unavailable(
                f"pip install 'litellm[proxy]' failed: {_last_lines(str(exc))}"
            ) from None
        if not exe.exists():
            raise Unavailable(f"pip install 'litellm[proxy]' left no {exe}")
        marker.write_text("ok\n")
        return exe

    def launch(self, env: Env, say: Say) -> Proxy:
        exe = self.install(env, say)
        config = env.workdir / "litellm.yaml"
        master_key = "sk-bench-" + secrets.token_hex(32)
        config.write_text(
            LITELLM_CONFIG.format(pool=POOL, upstream=env.upstream_port, master_key=master_key)
        )
        headers = {"Authorization": f"Bearer {master_key}"}
        environ = os.environ | {
            # No network here: use the model price map shipped in the package, and send nothing.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
            "LITELLM_MODE": "PRODUCTION",  # no .env loading
            "PYTHONUNBUFFERED": "1",
        }
        environ.pop("DATABASE_URL", None)
        environ.pop("LITELLM_MASTER_KEY", None)

        def argv(port: int) -> list[str]:
            return [
                str(exe),
                *("--config", str(config)),
                *("--host", "127.0.0.1", "--port", str(port)),
                *("--num_workers", "1"),
                "--telemetry",
                "False",
            ]

        return start_timed(env, "litellm", argv, headers=headers, environ=environ, limit=120)


# @hono/node-server listens on every interface and the gateway offers no host option:
# this preload makes a listen() without a host bind to loopback only.
NODE_LOOPBACK_PRELOAD = """\
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && (args.length === 1 || typeof args[1] !== "string")) {
    if (args.length > 1 && args[1] === undefined) args.splice(1, 1);
    args.splice(1, 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};
"""


# The gateway's newest release with @hono/node-server pinned below 1.14: from 1.14 on, a
# Response built from a fetch() answer keeps that answer's immutable headers, and the
# gateway's header update then fails every stream with "TypeError: immutable" (the
# gateway's issues #1389 and #1550). 1.13.8 is the last release without that change.
PORTKEY_PACKAGE_JSON = """\
{
  "private": true,
  "dependencies": {"@portkey-ai/gateway": "*"},
  "overrides": {"@hono/node-server": "1.13.8"}
}
"""


class PortkeyLauncher:
    """Portkey's open-source gateway on node, routed to the upstream by its request headers."""

    name = "Portkey gateway"
    key = "portkey"

    def __init__(self, install_timeout: float) -> None:
        self._install_timeout = install_timeout

    def install(self, env: Env, say: Say) -> tuple[str, Path]:
        node = shutil.which("node")
        npm = shutil.which("npm")
        if node is None or npm is None:
            raise Unavailable("node and npm are not installed (apt-get install nodejs npm)")
        home = cache_dir() / "portkey"
        server = home / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
        marker = home / ".bench-installed"
        installed = marker.read_text() if marker.exists() else ""
        if not server.exists() or installed != PORTKEY_PACKAGE_JSON:
            say(f"installing @portkey-ai/gateway into {home} (once)")
            home.mkdir(parents=True, exist_ok=True)
            (home / "package.json").write_text(PORTKEY_PACKAGE_JSON)
            argv = [npm, "install", "--prefix", str(home), "--no-audit", "--no-fund"]
            try:
                env.procs.run("npm", argv, timeout=self._install_timeout)
            except RuntimeError as exc:
                raise Unavailable(
                    f"npm install @portkey-ai/gateway failed: {_last_lines(str(exc))}"
                ) from None
            if not server.exists():
                raise Unavailable(f"npm install @portkey-ai/gateway left no {server}")
            marker.write_text(PORTKEY_PACKAGE_JSON)
        return node, server

    def launch(self, env: Env, say: Say) -> Proxy:
        node, server = self.install(env, say)
        preload = env.workdir / "loopback-only.cjs"
        preload.write_text(NODE_LOOPBACK_PRELOAD)
        headers = {
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": f"http://127.0.0.1:{env.upstream_port}/v1",
        }
        environ = os.environ | {"NODE_ENV": "production"}

        def argv(port: int) -> list[str]:
            return [node, "--require", str(preload), str(server), f"--port={port}", "--headless"]

        return start_timed(env, "portkey", argv, headers=headers, environ=environ, limit=60)


def _last_lines(text: str, lines: int = 6) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-lines:] if line.strip())


def describe_versions(env: Env, keys: set[str]) -> dict[str, str]:
    """Versions of the third-party rows in ``keys``, for the report (best effort)."""
    versions: dict[str, str] = {}
    litellm_py = cache_dir() / "litellm" / "bin" / "python"
    if "litellm" in keys and litellm_py.exists():
        try:
            out = env.procs.run(
                "litellm-version",
                [
                    str(litellm_py),
                    "-c",
                    "import importlib.metadata as m; print(m.version('litellm'))",
                ],
                timeout=30,
            )
            versions["litellm"] = out.strip()
        except RuntimeError:
            pass
    package = cache_dir() / "portkey" / "node_modules" / "@portkey-ai" / "gateway" / "package.json"
    if "portkey" in keys and package.exists():
        versions["@portkey-ai/gateway"] = json.loads(package.read_text()).get("version", "?")
    return versions
