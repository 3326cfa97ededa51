"""Headless Chromium driven over the DevTools protocol, with nothing but aiohttp.

Debian's ``chromium`` is started with ``--remote-debugging-port=0``; it writes
the port it chose to ``DevToolsActivePort`` in its profile folder, ``/json/list``
names the page's websocket, and every command is one JSON message on that
websocket (``{"id", "method", "params"}`` → ``{"id", "result"}``), events
arriving in between. No browser-automation package is needed, on the Python
side or on npm.

Every console error, uncaught exception and browser log entry of level
``error`` (a failed resource load, a CSP violation) is collected in
:attr:`Browser.errors`. The browser is stopped by its own PID.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

CHROMIUM = "/usr/bin/chromium"
INSTALL_HINT = "sudo apt-get install -y chromium   # Debian's headless-capable Chromium"
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # needed as root (CI containers); the pages are our own
    "--disable-gpu",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
)
START_TIMEOUT = 15.0
COMMAND_TIMEOUT = 10.0


def chromium_binary() -> str:
    """The Chromium binary, or a test failure saying how to install it (never a skip)."""
    found = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if found is None:
        pytest.fail(
            f"Chromium is needed for the browser tests and is not installed: {INSTALL_HINT}"
        )
    return found


class Browser:
    """A DevTools connection to one page of a running Chromium."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._http = http
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.errors: list[str] = []
        self.challenges = 0
        """HTTP authentication challenges the browser met (each answered by ``login``)."""
        self._credentials: dict[str, str] | None = None
        self._answers: set[asyncio.Task[Any]] = set()
        self._reader = asyncio.create_task(self._read())

    # ------------------------------------------------------------------ protocol

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run one DevTools command and return its result (raising on a protocol error)."""
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self._ws.send_json({"id": ident, "method": method, "params": params})
        async with asyncio.timeout(COMMAND_TIMEOUT):
            return await future

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = message.json()
            future = self._pending.pop(data["id"], None) if "id" in data else None
            if future is not None and not future.done():
                if "error" in data:
                    future.set_exception(RuntimeError(f"DevTools: {data['error']}"))
                else:
                    future.set_result(data.get("result", {}))
            elif "method" in data:
                self._event(data["method"], data.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the browser closed the DevTools connection"))

    async def login(self, username: str, password: str) -> None:
        """Answer every HTTP authentication challenge (a ``WWW-Authenticate`` 401) as a
        person would in the browser's own dialog, with these credentials."""
        self._credentials = {"response": "ProvideCredentials", "username": username,
                             "password": password}  # fmt: skip
        await self.send("Fetch.enable", handleAuthRequests=True, patterns=[{"urlPattern": "*"}])

    def _answer(self, method: str, **params: Any) -> None:
        task = asyncio.create_task(self.send(method, **params))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Fetch.requestPaused":  # intercepted only to see challenges: let it go
            self._answer("Fetch.continueRequest", requestId=params["requestId"])
        elif method == "Fetch.authRequired":
            self.challenges += 1
            self._answer(
                "Fetch.continueWithAuth",
                requestId=params["requestId"],
                authChallengeResponse=self._credentials or {"response": "CancelAuth"},
            )
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            texts = [str(arg.get("value", arg.get("description", ""))) for arg in params["args"]]
            self.errors.append("console: " + " ".join(texts))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            thrown = details.get("exception", {}).get("description", details.get("text", ""))
            self.errors.append(f"exception: {thrown}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            self.errors.append(
                f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}"
            )

    # ------------------------------------------------------------------ page helpers

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable values)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, within: float, what: str = "") -> Any:
        """Poll ``expression`` until it is truthy; its value. Fails after ``within`` seconds."""
        deadline = time.monotonic() + within
        value = None
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"not within {within}s: {what or expression} (last value {value!r})")

    async def navigate(self, url: str) -> None:
        """Open ``url`` and wait until its document (scripts included) has loaded."""
        await self.send("Page.navigate", url=url)
        path = json.dumps(urlsplit(url).path)
        loaded = f"location.pathname === {path} && document.readyState === 'complete'"
        await self.wait_for(loaded, 10.0, f"{url} loaded")

    async def viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=mobile,
        )

    async def screenshot(self, path: Path) -> Path:
        """The whole page (not only the viewport) as a PNG."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = await self.send(
            "Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True
        )
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))
        return path

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._http.close()


@dataclass(frozen=True)
class Chromium:
    """A running Chromium and its profile folder (where it says which port DevTools took)."""

    process: subprocess.Popen[bytes]
    profile: Path


def start_chromium(profile: Path, width: int = 1280, height: int = 900) -> Chromium:
    """Chromium with a fresh profile in ``profile`` (its output in ``chromium.log`` beside it)."""
    binary = chromium_binary()
    profile.mkdir(parents=True, exist_ok=True)
    with (profile.parent / "chromium.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "about:blank"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    return Chromium(process, profile)


def stop_chromium(browser: Chromium) -> None:
    """Stop the browser by its PID (only the process this test started), killing it if slow."""
    process = browser.process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextlib.asynccontextmanager
async def connected(
    chromium: Chromium, width: int = 1280, height: int = 900
) -> AsyncIterator[Browser]:
    """A DevTools connection to the first page of ``chromium``, closed afterwards."""
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=COMMAND_TIMEOUT))
    try:
        port = await _devtools_port(chromium.profile, chromium.process)
        async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t["type"] == "page")
        ws = await http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
    except BaseException:
        await http.close()
        raise
    browser = Browser(http, ws)
    try:
        for domain in ("Page", "Runtime", "Log"):
            await browser.send(f"{domain}.enable")
        await browser.viewport(width, height)
        yield browser
    finally:
        await browser.close()


async def _devtools_port(profile: Path, process: subprocess.Popen[bytes]) -> int:
    """The port Chromium chose, from the file it writes once DevTools listens."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(_read_if_there, marker)
        first = text.split("\n", 1)[0].strip()
        if first.isdigit():
            return int(first)
        if process.poll() is not None:
            log = await asyncio.to_thread(_read_if_there, profile.parent / "chromium.log")
            raise AssertionError(f"chromium exited with {process.returncode}:\n{log}")
        await asyncio.sleep(0.05)
    raise AssertionError(f"chromium did not open its DevTools port within {START_TIMEOUT}s")


def _read_if_there(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
