"""/metrics stays bounded and clean however much junk arrives."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re

import pytest
from fake_upstream import FakeUpstream
from proxy_harness import StartDaemon, single_pool_config

KEY = "sk-client-good-0123456789"
SECRET = "sk-upstream-secret-abcdef"


def series(text: str) -> set[str]:
    return {line.split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


@pytest.mark.slow
async def test_ten_thousand_junk_requests_leave_the_series_count_bounded(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    config = single_pool_config(fake.base_url, api_key=SECRET)
    config["clients"] = {"good": {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}}
    daemon = await start_daemon(config)
    good = {"Authorization": f"Bearer {KEY}"}
    for _ in range(3):  # a little real traffic so every per-request family has series
        body = {"model": "p", "messages": [{"role": "user", "content": "hi"}]}
        async with daemon.http.post("/v1/chat/completions", json=body, headers=good) as r:
            assert r.status == 200
    before = series(await (await daemon.http.get("/metrics")).text())

    rng = random.Random(7)

    def junk(i: int) -> tuple[str, str, dict[str, str], dict[str, object]]:
        word = f"junk-{rng.getrandbits(64):x}"
        kind = i % 4
        if kind == 0:  # a path nobody serves
            return "POST", f"/v1/{word}", good, {"model": "p"}
        if kind == 1:  # a model nobody configured
            return "POST", "/v1/chat/completions", good, {"model": word, "messages": [{}]}
        if kind == 2:  # a client key nobody issued
            return "POST", "/v1/messages", {"x-api-key": word}, {"model": "p"}
        return "GET", f"/admin/{word}", good, {}

    semaphore = asyncio.Semaphore(64)

    async def send(i: int) -> None:
        method, path, headers, body = junk(i)
        async with semaphore, daemon.http.request(method, path, json=body, headers=headers) as r:
            assert r.status in (400, 401, 404, 405)

    await asyncio.gather(*(send(i) for i in range(10_000)))
    text = await (await daemon.http.get("/metrics")).text()
    after = series(text)

    # rejected requests by who and which pool, all "other" or config names: a handful of
    # series (each with its _created twin), not one per junk request
    assert len(after) <= len(before) + 6, sorted(after - before)
    assert "junk-" not in text
    assert KEY not in text
    assert SECRET not in text
    values = {value for labels in re.findall(r"\{([^}]*)\}", text)
              for value in re.findall(r'="([^"]*)"', labels)}  # fmt: skip
    assert not [value for value in values if value.startswith("/")]  # no path is a label
    assert {"other", "-"} <= values  # the unknown model and the missing one, by name
