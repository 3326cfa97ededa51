"""The dashboard in a real browser: headless Chromium against the real `modelpool run`.

Two fake upstreams (threaded_fakes) serve pool ``main`` round robin, the
built-in mock serves its failover pool ``backup``; a client with a daily
budget sends a little traffic. The page is opened once; the daemon asks the
browser for the admin token (HTTP Basic), answered as a person would in the
browser's dialog, and the browser then sends it with every poll by itself. The
page must load without a console error, show every pool and member of the
config, then — with no reload of the page — show the breaker of the member
whose upstream starts failing as open within a few seconds, and a config
reload (generation, the new pool, the diff).
Screenshots (laptop and phone widths) are the test's artifacts, kept in
``test-artifacts/`` at the repository's top (or ``$MODELPOOL_ARTIFACTS``) after
the run; with ``MODELPOOL_UPDATE_SCREENSHOT=1`` the laptop one is also copied
to docs/dashboard.png for the README.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from e2e_daemon import REPO, DaemonFactory
from fake_upstream import CHAT, Reply
from headless import Browser, Chromium, connected, start_chromium, stop_chromium
from threaded_fakes import ThreadedFakes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLIENT_KEY = "sk-dashboard-e2e-client-0123456789"
UPSTREAM_KEY = "sk-dashboard-e2e-upstream-0123456789"
ADMIN_TOKEN = "dashboard-e2e-admin-token-0123456789"
POOLS = {"main": ["steady", "flaky"], "backup": ["mock-small"]}
PRICE = {"input_per_mtok": 3.0, "output_per_mtok": 15.0}
OPEN_WITHIN = 6.0
"""Seconds from the breaker opening to the page showing it (the page polls every 2 s)."""


def dashboard_config(steady_url: str, flaky_url: str) -> dict[str, Any]:
    fast = {"connect": "1s", "first_byte": "2s", "idle": "2s", "total": "5s"}
    chat = ["chat", "stream"]
    return {
        "version": 1,
        "server": {"admin_token": ADMIN_TOKEN},
        "providers": {
            "upstream-a": {"type": "openai", "base_url": steady_url, "api_key": UPSTREAM_KEY,
                           "timeouts": fast},
            "upstream-b": {"type": "openai", "base_url": flaky_url, "api_key": UPSTREAM_KEY,
                           "timeouts": fast},
            "mock": {"type": "mock", "mock": {"latency": "5ms"}},
        },
        "models": {
            "steady": {"provider": "upstream-a", "upstream_model": "up-steady",
                       "capabilities": chat, "price": PRICE},
            "flaky": {"provider": "upstream-b", "upstream_model": "up-flaky",
                      "capabilities": chat, "price": PRICE},
            "mock-small": {"provider": "mock", "capabilities": chat,
                           "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.4}},
        },
        "breakers": {"failure_threshold": 2, "cooldown": {"initial": "60s", "max": "120s"}},
        "pools": {
            "main": {"strategy": "round_robin", "members": POOLS["main"],
                     "retry": {"attempts": 3}, "failover": ["backup"]},
            "backup": {"members": POOLS["backup"]},
        },
        "clients": {
            "agent-a": {"key_sha256": hashlib.sha256(CLIENT_KEY.encode()).hexdigest(),
                        "pools": ["main", "backup"], "budget": {"usd_per_day": 0.002}},
        },
    }  # fmt: skip


@pytest.fixture
def fakes() -> Iterator[ThreadedFakes]:
    started = ThreadedFakes(2)
    try:
        yield started
    finally:
        started.close()


def artifacts() -> Path:
    """Where this run's screenshots are kept for people to look at afterwards."""
    where = Path(os.environ.get("MODELPOOL_ARTIFACTS") or REPO / "test-artifacts")
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    """A running headless Chromium, stopped by its PID afterwards."""
    browser = start_chromium(tmp_path / "chromium-profile")
    try:
        yield browser
    finally:
        stop_chromium(browser)


def pool_names(page: Browser) -> Any:
    return page.evaluate("[...document.querySelectorAll('[data-pool]')].map(e => e.dataset.pool)")


def breaker(pool: str, model: str) -> str:
    return (
        f'document.querySelector(\'[data-pool="{pool}"] tr[data-model="{model}"] .breaker\')'
        "?.dataset.state"
    )


async def traffic(url: str, count: int) -> list[int]:
    """``count`` chat requests to pool ``main`` (every third one streamed); their statuses."""
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    statuses = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for i in range(count):
            body = {"model": "main", "messages": [{"role": "user", "content": f"hello {i}"}]}
            if i % 3 == 2:
                body["stream"] = True
            async with http.post(f"{url}/v1/chat/completions", json=body, headers=headers) as r:
                await r.read()
                statuses.append(r.status)
    return statuses


async def test_the_dashboard_shows_pools_members_and_a_breaker_opening_live(
    tmp_path: Path, daemon_factory: DaemonFactory, fakes: ThreadedFakes, chromium: Chromium
) -> None:
    steady, flaky = (fake.base_url for fake in fakes.fakes)
    config = tmp_path / "pools.yaml"
    config.write_text(yaml.safe_dump(dashboard_config(steady, flaky), sort_keys=False))
    daemon = daemon_factory(config)
    fakes.script(0, CHAT, Reply(delay=0.12))
    fakes.script(1, CHAT, Reply(delay=0.3))
    assert await traffic(daemon.url, 6) == [200] * 6

    async with connected(chromium) as page:
        await page.login("ops", ADMIN_TOKEN)  # what a person types in the browser's dialog
        await page.navigate(f"{daemon.url}/admin/dashboard")
        await page.wait_for("document.querySelectorAll('tr[data-model]').length >= 3", 5.0)
        assert sorted(await pool_names(page)) == sorted(POOLS)
        for pool, members in POOLS.items():
            for model in members:
                assert await page.evaluate(breaker(pool, model)) == "closed", (pool, model)
        assert "$" in await page.evaluate(
            'document.querySelector(\'[data-client="agent-a"] [data-field="today"]\').textContent'
        )
        assert await page.evaluate("!!document.querySelector('[data-budget=\"usd/day\"]')")
        await page.evaluate("window.stillTheSamePage = true")

        fakes.script(1, CHAT, Reply.error(500, "upstream exploded"))
        assert await traffic(daemon.url, 6) == [200] * 6  # retried on the steady member
        opened = time.monotonic()
        await page.wait_for(f"{breaker('main', 'flaky')} === 'open'", OPEN_WITHIN, "flaky open")
        shown_after = time.monotonic() - opened
        assert await page.evaluate("window.stillTheSamePage === true"), "the page was reloaded"
        assert await page.evaluate(breaker("main", "steady")) == "closed"
        reason = await page.evaluate(
            "document.querySelector('tr[data-model=\"flaky\"] .breaker + .sub').textContent"
        )
        assert "trial in" in reason
        assert "HTTP 500" in reason

        # A reload (the file watcher) shows up live too: generation, new pool, diff.
        changed = dashboard_config(steady, flaky)
        changed["pools"]["batch"] = {"members": ["mock-small"]}
        config.write_text(yaml.safe_dump(changed, sort_keys=False))
        await page.wait_for("!!document.querySelector('[data-pool=\"batch\"]')", 6.0, "reload")
        assert await page.evaluate("document.getElementById('generation').textContent") == (
            "generation 2"
        )
        assert "+batch" in await page.evaluate("document.getElementById('reload').textContent")
        assert await page.evaluate("window.stillTheSamePage === true"), "the page was reloaded"

        html = await page.evaluate("document.documentElement.outerHTML")
        for secret in (UPSTREAM_KEY, CLIENT_KEY, ADMIN_TOKEN, steady, flaky):
            assert secret not in html

        shots = artifacts()
        laptop = await page.screenshot(shots / "dashboard.png")
        await page.viewport(390, 844, mobile=True)
        await asyncio.sleep(2.2)  # the next poll redraws the charts at phone width
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"the page is {overflow}px wider than a phone"
        await page.screenshot(shots / "dashboard-phone.png")
        assert page.errors == []

        # The browser asked once, for the page; every poll since carried the token itself.
        assert page.challenges == 1
    print(f"\nbreaker shown open {shown_after:.2f}s after the failing traffic; shots in {shots}")
    if os.environ.get("MODELPOOL_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(laptop, REPO / "docs" / "dashboard.png")
