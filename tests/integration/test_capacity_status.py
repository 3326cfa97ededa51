"""Capacity is visible: limit headroom, queue depth and in-flight in /admin/status and /metrics."""

from __future__ import annotations

from fake_upstream import CHAT, FakeUpstream
from proxy_harness import StartDaemon, chat, single_pool_config


async def test_status_and_metrics_show_headroom_queue_and_in_flight(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    config = single_pool_config(fake.base_url)
    config["models"]["m"]["limits"] = {"rpm": 10, "tpm": 100000}
    config["pools"]["p"]["limits"] = {"max_concurrency": 5}
    daemon = await start_daemon(config)
    async with daemon.http.post(CHAT, json=chat(max_tokens=100)) as response:
        assert response.status == 200
    await daemon.settled()

    status = await (await daemon.http.get("/admin/status")).json()
    model = status["models"]["m"]
    assert model["limits"]["rpm"]["limit"] == 10
    assert 9 <= model["limits"]["rpm"]["headroom"] < 10
    assert model["limits"]["tpm"]["headroom"] > 99000  # settled with the answer's usage
    assert status["pools"]["p"] == {
        "queue_depth": 0,
        "limits": {"concurrency": {"limit": 5, "headroom": 5.0}},
    }

    metrics = await (await daemon.http.get("/metrics")).text()
    assert 'modelpool_queue_depth{pool="p"} 0.0' in metrics
    assert 'modelpool_in_flight{model="m"} 0.0' in metrics
    assert 'modelpool_limit_headroom{kind="concurrency",level="pool",name="p"} 5.0' in metrics
    assert 'modelpool_limit_headroom{kind="rpm",level="model",name="m"}' in metrics
