"""Hot reload triggers (SPEC §4): every way a config file really changes reaches the table.

Each test serves ``build_app(load_config(path), watch=True)`` — the real
watcher on real files in ``tmp_path`` — changes the file the way some tool
does (in-place write, rename over, ``sed -i``, a Kubernetes ``..data`` swap,
delete and recreate, a burst, a half-written file, an invalid edit, ``sops
set``…) and then asserts what a client sees: the new table serving, the
generation up by exactly one, or the old table still serving when the edit
was rejected. ``POST /admin/reload`` and the reload metrics are tested here
too (without the watcher, so the test decides when a reload happens).

Every wait is bounded by ``WAIT`` seconds; no test asserts a latency.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from fake_upstream import FakeUpstream
from reload_harness import (
    AGE_KEY,
    NEW_KEY,
    OLD_KEY,
    P_LINE,
    WAIT,
    ConfigMapVolume,
    Edit,
    Live,
    StartLive,
    apply_edit,
    config_text,
    delete_then_recreate,
    digest_of,
    encrypt,
    payloads,
    read_bytes,
    read_text,
    rename_over,
    sed_in_place,
    sops_set,
    sops_tail,
    vim_backup_rename,
    write_in_place,
)

from modelpool.app import build_app
from modelpool.config.load import load_config
from modelpool.config.spec import Config


@pytest.fixture
async def start_live() -> AsyncIterator[StartLive]:
    """Serve the config at a path, with the file watcher on unless ``watch=False``.

    ``loaded`` is the config as read earlier (default: read the file now).
    """
    cleanups: list[tuple[aiohttp.ClientSession, web.AppRunner]] = []

    async def start(path: Path, *, watch: bool = True, loaded: Config | None = None) -> Live:
        app = build_app(loaded or load_config(path), watch=watch)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        http = aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=WAIT))
        cleanups.append((http, runner))
        return Live(app, url, path, http)

    yield start
    for http, runner in reversed(cleanups):
        await http.close()
        await runner.cleanup()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The config's own folder (the watcher watches folders, so keep it to ourselves)."""
    path = tmp_path / "config"
    path.mkdir()
    return path


@pytest.fixture
def config(folder: Path, fake: FakeUpstream) -> Path:
    path = folder / "pools.yaml"
    write_in_place(path, config_text(fake.base_url))
    return path


@pytest.fixture
def sops_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon decrypts with the test age key, and with no other key of this machine."""
    for name in [n for n in os.environ if n.startswith("SOPS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(AGE_KEY))


async def assert_applied_once(live: Live, content: bytes, *sops: bytes) -> dict[str, Any]:
    """The watcher applied exactly one reload, of exactly these bytes."""
    status = await live.status()
    assert status["generation"] == 2, status["last_reload"]
    assert status["config"]["digest"] == digest_of(content, *sops)
    assert status["last_reload"]["result"] == "applied"
    assert status["last_reload"]["trigger"] == "watch"
    return status


# --------------------------------------------------------------------------- each way of saving


EDITS: dict[str, Edit] = {
    "in_place": write_in_place,
    "rename_over": rename_over,
    "vim_backup_rename": vim_backup_rename,
    "sed_i": sed_in_place,
    "delete_then_recreate": delete_then_recreate,
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
async def test_each_way_of_saving_a_file_is_picked_up(
    edit: Edit, config: Path, fake: FakeUpstream, start_live: StartLive
) -> None:
    live = await start_live(config)
    assert await live.chat("p") == (200, "a")

    new = config_text(fake.base_url, "b")
    await apply_edit(edit, config, new)

    await live.serving("p", "b")
    status = await assert_applied_once(live, new.encode())
    assert status["last_reload"]["summary"] == "pools ~p"
    assert await live.chat("keep") == (200, "a")


async def test_an_edit_made_before_the_watcher_started_is_not_missed(
    config: Path, fake: FakeUpstream, start_live: StartLive
) -> None:
    """The file changes after the daemon read it but before the watcher watches it.

    The daemon reads its config, then binds, then starts watching: an edit in
    between sends no event to anyone. The watcher's idle check (the bytes are
    compared after each quiet second) applies it anyway.
    """
    loaded = load_config(config)
    new = config_text(fake.base_url, "b")
    write_in_place(config, new)

    live = await start_live(config, loaded=loaded)
    await live.serving("p", "b")
    await assert_applied_once(live, new.encode())


async def test_an_edit_that_sends_no_event_is_applied_by_the_idle_check(
    config: Path, tmp_path: Path, fake: FakeUpstream, start_live: StartLive
) -> None:
    """Written through a hard link in another folder, an edit notifies only that folder
    (inotify reports a write where the writer opened the file). Bind mounts and a kernel
    queue overflow lose events the same way; the idle check still finds the new bytes."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = elsewhere / "pools.yaml"
    os.link(config, link)  # before the start: a new link is itself an event (IN_ATTRIB)
    live = await start_live(config)
    await asyncio.sleep(0.2)
    new = config_text(fake.base_url, "b")
    write_in_place(link, new)

    await live.serving("p", "b")
    await assert_applied_once(live, new.encode())


async def test_configmap_symlink_swap_is_picked_up_every_time(
    folder: Path, fake: FakeUpstream, start_live: StartLive
) -> None:
    """Kubernetes: pools.yaml → ..data/pools.yaml, ..data → ..<ts>/, swapped by one rename."""
    volume = ConfigMapVolume(folder)
    volume.publish({"pools.yaml": config_text(fake.base_url).encode()})
    config = folder / "pools.yaml"
    live = await start_live(config)

    second = config_text(fake.base_url, "b").encode()
    volume.publish({"pools.yaml": second})
    await live.serving("p", "b")
    await assert_applied_once(live, second)
    assert len(payloads(folder)) == 1, "the old payload folder is gone"

    # The folder the first target lived in is gone: the watcher must still see the next swap.
    third = config_text(fake.base_url, "a", pools="  late: {members: [b]}\n").encode()
    volume.publish({"pools.yaml": third})
    await live.serving("late", "b")
    status = await live.status()
    assert status["generation"] == 3
    assert status["config"]["digest"] == digest_of(third)


# --------------------------------------------------------------------------- bursts and halves


async def test_a_burst_of_writes_ends_on_the_last_content(
    config: Path, fake: FakeUpstream, start_live: StartLive
) -> None:
    live = await start_live(config)
    contents = [
        config_text(fake.base_url, "ab"[i % 2], pools=f"  burst{i}: {{members: [a]}}\n")
        for i in range(5)
    ]
    for content in contents:  # five whole files within ~100 ms
        write_in_place(config, content)
        await asyncio.sleep(0.02)

    await live.serving("burst4", "a")
    status = await live.status()
    assert status["config"]["digest"] == digest_of(contents[-1].encode())
    assert 2 <= status["generation"] <= 1 + len(contents)
    assert await live.chat("p") == (200, "a")
    assert (await live.chat("burst3"))[0] == 404


HALF_PAUSE = 0.09
"""How long the half sits alone on disk. Safe by construction — the writer and the
watcher's timers share one event loop, the watcher hands over a batch >= 50 ms after its
first event, then hashes, waits 50 ms and hashes again — so a write within 100 ms of the
first changes the hash. Without that second look the half would be loaded (checked by
running this test with settle=0: it fails most runs)."""


async def test_a_half_written_file_is_never_applied(
    config: Path, tmp_path: Path, fake: FakeUpstream, start_live: StartLive
) -> None:
    """The first half alone is valid YAML *and* a valid config — without pool ``keep``.

    A client asking for ``keep`` all along must never get a 404: the watcher
    waits until the bytes settle, so the half is never loaded.
    """
    live = await start_live(config)
    new = config_text(fake.base_url, "b")
    cut = new.index("  keep:")
    first, second = new[:cut], new[cut:]
    probe = tmp_path / "probe.yaml"  # outside the watched folder
    write_in_place(probe, first)
    assert load_config(probe).pools.keys() == {"p"}

    statuses: list[int] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            statuses.append((await live.chat("keep"))[0])

    polling = asyncio.create_task(client())
    await asyncio.sleep(0.1)
    with config.open("w") as file:
        file.write(first)
        file.flush()
        # A slow writer: the half sits on disk longer than the watcher's event batching
        # (50 ms steps) but less than that plus the 50 ms the bytes must stay unchanged.
        await asyncio.sleep(HALF_PAUSE)
        file.write(second)
    await live.serving("p", "b")
    await asyncio.sleep(0.1)
    stop.set()
    await polling

    assert 404 not in statuses
    assert set(statuses) == {200}
    await assert_applied_once(live, new.encode())


@pytest.mark.parametrize("pause", [0.005, 0.3], ids=["quick", "slow"])
async def test_an_invalid_edit_then_a_valid_one_ends_on_the_valid_one(
    pause: float, config: Path, fake: FakeUpstream, start_live: StartLive
) -> None:
    live = await start_live(config)
    write_in_place(config, config_text(fake.base_url, "b").replace("members: [b]", "members: [b"))
    await asyncio.sleep(pause)
    new = config_text(fake.base_url, "b")
    write_in_place(config, new)

    await live.serving("p", "b")
    await assert_applied_once(live, new.encode())


# --------------------------------------------------------------------------- rejected edits


async def test_an_invalid_edit_is_rejected_and_the_old_table_keeps_serving(
    config: Path, fake: FakeUpstream, start_live: StartLive
) -> None:
    live = await start_live(config)
    before = await live.status()
    rename_over(config, config_text(fake.base_url, "zzz"))

    status = await live.status_where(lambda s: s["last_reload"]["result"] == "rejected")
    assert status["last_reload"]["errors"] == [
        f"{config}:{P_LINE} pools.p.members[0]: unknown model 'zzz'"
    ]
    assert status["last_reload"]["trigger"] == "watch"
    assert status["last_reload"]["generation"] == 1
    assert status["generation"] == 1
    assert status["config"] == before["config"]
    for _ in range(3):
        assert await live.chat("p") == (200, "a")
    metrics = await live.metrics()
    assert metrics['modelpool_config_reloads_total{result="rejected"}'] == 1
    assert metrics['modelpool_config_reloads_total{result="applied"}'] == 0
    assert metrics["modelpool_config_generation"] == 1

    # Fixing the typo applies the fix: generation 2, not 3 (the rejection was not applied).
    new = config_text(fake.base_url, "b")
    rename_over(config, new)
    await live.serving("p", "b")
    await assert_applied_once(live, new.encode())


async def test_an_unparsable_edit_is_rejected_with_its_line(
    config: Path, fake: FakeUpstream, start_live: StartLive
) -> None:
    live = await start_live(config)
    write_in_place(config, config_text(fake.base_url, "b").replace("members: [b]}", "members: [b}"))

    status = await live.status_where(lambda s: s["last_reload"]["result"] == "rejected")
    [error] = status["last_reload"]["errors"]
    assert error.startswith(f"{config}:{P_LINE}")
    assert await live.chat("p") == (200, "a")


# --------------------------------------------------------------------------- identical bytes


def touch(path: Path, text: str) -> None:
    os.utime(path)


IDENTICAL: dict[str, Edit] = {
    "touch": touch,
    "rewrite_same_bytes": write_in_place,
    "rename_same_bytes_over": rename_over,
}


@pytest.mark.parametrize("edit", IDENTICAL.values(), ids=IDENTICAL.keys())
async def test_identical_bytes_do_not_reload(
    edit: Edit, config: Path, fake: FakeUpstream, start_live: StartLive
) -> None:
    live = await start_live(config)
    before = await live.status()
    await apply_edit(edit, config, read_text(config))
    await asyncio.sleep(0.4)  # several watcher steps and settle periods

    status = await live.status()
    assert status["generation"] == 1
    assert status["last_reload"] == before["last_reload"]
    assert status["config"]["loaded_at"] == before["config"]["loaded_at"]

    # The watcher is still alive: a real change after that is generation 2, not 3.
    new = config_text(fake.base_url, "b")
    write_in_place(config, new)
    await live.serving("p", "b")
    await assert_applied_once(live, new.encode())


# --------------------------------------------------------------------------- sops files


Rotate = Callable[[Path, Path], Awaitable[None]]


async def rotate_with_sops_set(secrets: Path, scratch: Path) -> None:
    await asyncio.to_thread(sops_set, secrets, "openai_api_key", NEW_KEY)


async def rotate_by_reencrypting(secrets: Path, scratch: Path) -> None:
    content = await asyncio.to_thread(encrypt, {"openai_api_key": NEW_KEY}, scratch)
    rename_over(secrets, content.decode())


@pytest.mark.parametrize(
    "rotate", [rotate_with_sops_set, rotate_by_reencrypting], ids=["sops_set", "reencrypt"]
)
@pytest.mark.usefixtures("sops_key")
async def test_editing_the_sops_file_rotates_the_key(
    rotate: Rotate, folder: Path, tmp_path: Path, fake: FakeUpstream, start_live: StartLive
) -> None:
    """Three clients keep asking while the key rotates: every request that started after
    the swap carries the new key (matched by a tag in its body), and none fails."""
    secrets = folder / "secrets.enc.yaml"
    secrets.write_bytes(encrypt({"openai_api_key": OLD_KEY}, tmp_path))
    config = folder / "pools.yaml"
    write_in_place(
        config, config_text(fake.base_url, api_key="${secret:openai_api_key}", tail=sops_tail())
    )
    live = await start_live(config)
    assert await live.chat("p") == (200, "a")
    assert fake.requests[-1].headers["Authorization"] == f"Bearer {OLD_KEY}"

    stop = asyncio.Event()
    started: dict[str, float] = {}  # request tag → wall time its client sent it
    statuses: list[int] = []

    async def client(name: str) -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            tag = f"{name}-{n}"
            started[tag] = time.time()
            statuses.append((await live.chat("p", content=tag))[0])

    clients = [asyncio.create_task(client(f"c{i}")) for i in range(3)]
    await rotate(secrets, tmp_path)
    swapped = await live.status_where(lambda s: s["generation"] == 2)
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*clients)

    assert set(statuses) == {200}
    keys = {
        r.json["messages"][0]["content"]: r.headers["Authorization"].removeprefix("Bearer ")
        for r in fake.requests[1:]
    }
    assert keys.keys() == started.keys()
    assert set(keys.values()) == {OLD_KEY, NEW_KEY}
    swap_done = swapped["last_reload"]["at"]
    late = [tag for tag, at in started.items() if at > swap_done]
    assert late, "no request started after the swap"
    assert {keys[tag] for tag in late} == {NEW_KEY}, "a request after the swap had the old key"
    status = await live.status()
    assert status["config"]["digest"] == digest_of(read_bytes(config), read_bytes(secrets))
    assert status["last_reload"]["summary"] == "models ~a ~b; providers ~up"
    assert status["last_reload"]["trigger"] == "watch"


@pytest.mark.usefixtures("sops_key")
async def test_configmap_swap_of_a_sops_file_rotates_the_key(
    folder: Path, tmp_path: Path, fake: FakeUpstream, start_live: StartLive
) -> None:
    """Both files in one Kubernetes volume; only the secrets file changes in the swap."""
    text = config_text(fake.base_url, api_key="${secret:openai_api_key}", tail=sops_tail())
    volume = ConfigMapVolume(folder)
    old = encrypt({"openai_api_key": OLD_KEY}, tmp_path)
    volume.publish({"pools.yaml": text.encode(), "secrets.enc.yaml": old})
    live = await start_live(folder / "pools.yaml")

    new = encrypt({"openai_api_key": NEW_KEY}, tmp_path)
    volume.publish({"pools.yaml": text.encode(), "secrets.enc.yaml": new})
    await live.status_where(lambda s: s["generation"] == 2)
    await assert_applied_once(live, text.encode(), new)
    assert await live.chat("p") == (200, "a")
    assert fake.requests[-1].headers["Authorization"] == f"Bearer {NEW_KEY}"


@pytest.mark.usefixtures("sops_key")
async def test_a_newly_referenced_sops_file_is_watched_from_then_on(
    folder: Path, tmp_path: Path, fake: FakeUpstream, start_live: StartLive
) -> None:
    config = folder / "pools.yaml"
    write_in_place(config, config_text(fake.base_url, api_key=OLD_KEY))
    live = await start_live(config)

    # The config starts using a sops file that lives in another folder.
    vault = tmp_path / "vault"
    vault.mkdir()
    secrets = vault / "secrets.enc.yaml"
    secrets.write_bytes(encrypt({"openai_api_key": OLD_KEY}, tmp_path))
    tail = sops_tail(str(secrets))
    rename_over(config, config_text(fake.base_url, api_key="${secret:openai_api_key}", tail=tail))
    await live.status_where(lambda s: s["generation"] == 2)

    await asyncio.to_thread(sops_set, secrets, "openai_api_key", NEW_KEY)
    await live.status_where(lambda s: s["generation"] == 3)
    assert await live.chat("p") == (200, "a")
    assert fake.requests[-1].headers["Authorization"] == f"Bearer {NEW_KEY}"


# --------------------------------------------------------------------------- POST /admin/reload


ADMIN_EDIT = """\
version: 1
providers:
  up:
    type: openai
    base_url: {url}
    api_key: sk-test-reload-0123456789
    timeouts: {{connect: 1s, first_byte: 2s, idle: 2s, total: 10s}}
models:
  a: {{provider: up, upstream_model: up-a, capabilities: [chat]}}
  b: {{provider: up, upstream_model: up-b2, capabilities: [chat]}}
  c: {{provider: up, upstream_model: up-c, capabilities: [chat]}}
pools:
  p: {{members: [b]}}
  fresh: {{members: [c]}}
"""
"""From config_text: pool ``keep`` removed, ``fresh`` added, ``p`` changed; model ``c``
added, ``b`` changed (its upstream model)."""


async def test_admin_reload_applies_and_answers_with_the_diff(
    config: Path, fake: FakeUpstream, start_live: StartLive
) -> None:
    live = await start_live(config, watch=False)
    write_in_place(config, ADMIN_EDIT.format(url=fake.base_url))

    status, outcome = await live.reload()
    assert status == 200
    assert outcome["result"] == "applied"
    assert outcome["trigger"] == "admin"
    assert outcome["generation"] == 2
    assert outcome["errors"] == []
    assert outcome["summary"] == "pools +fresh -keep ~p; models +c ~b"
    assert outcome["diff"]["pools"] == {"added": ["fresh"], "removed": ["keep"], "changed": ["p"]}
    assert outcome["diff"]["models"] == {"added": ["c"], "removed": [], "changed": ["b"]}
    assert outcome["digest"] == digest_of(read_bytes(config))

    assert await live.chat("p") == (200, "b")
    assert fake.requests[-1].json["model"] == "up-b2"
    assert await live.chat("fresh") == (200, "c")
    assert (await live.chat("keep"))[0] == 404
    assert (await live.status())["last_reload"] == outcome


async def test_admin_reload_of_unchanged_bytes_changes_nothing(
    config: Path, start_live: StartLive
) -> None:
    live = await start_live(config, watch=False)
    before = await live.status()
    write_in_place(config, read_text(config))  # rewritten, same bytes

    status, outcome = await live.reload()
    assert status == 200
    assert outcome["result"] == "unchanged"
    assert outcome["generation"] == 1
    assert outcome["digest"] == before["config"]["digest"]
    after = await live.status()
    assert after["generation"] == 1
    assert after["last_reload"] == before["last_reload"]  # "unchanged" is not a reload
    assert after["config"] == before["config"]


async def test_admin_reload_rejects_with_every_error_and_keeps_serving(
    config: Path, fake: FakeUpstream, start_live: StartLive
) -> None:
    live = await start_live(config, watch=False)
    text = config_text(fake.base_url, "zzz").replace("keep: {members: [a]}", "keep: {members: [y]}")
    write_in_place(config, text)

    status, outcome = await live.reload()
    assert status == 422
    assert outcome["result"] == "rejected"
    assert outcome["generation"] == 1
    assert len(outcome["errors"]) == 2
    assert outcome["errors"][0] == f"{config}:{P_LINE} pools.p.members[0]: unknown model 'zzz'"
    assert outcome["errors"][1] == f"{config}:{P_LINE + 1} pools.keep.members[0]: unknown model 'y'"

    assert await live.chat("p") == (200, "a")
    assert await live.chat("keep") == (200, "a")
    shown = await live.status()
    assert shown["generation"] == 1
    assert shown["last_reload"] == outcome


async def test_reload_metrics_follow_each_outcome(
    config: Path, fake: FakeUpstream, start_live: StartLive
) -> None:
    live = await start_live(config, watch=False)
    applied = 'modelpool_config_reloads_total{result="applied"}'
    rejected = 'modelpool_config_reloads_total{result="rejected"}'
    success = "modelpool_config_last_reload_success_timestamp_seconds"

    start = await live.metrics()
    assert (start[applied], start[rejected], start["modelpool_config_generation"]) == (0, 0, 1)
    assert start[success] == (await live.status())["config"]["loaded_at"]

    write_in_place(config, config_text(fake.base_url, "b"))
    assert (await live.reload())[0] == 200
    one = await live.metrics()
    assert (one[applied], one[rejected], one["modelpool_config_generation"]) == (1, 0, 2)
    assert one[success] > start[success]
    assert one[success] == (await live.status())["config"]["loaded_at"]

    write_in_place(config, config_text(fake.base_url, "zzz"))
    assert (await live.reload())[0] == 422
    two = await live.metrics()
    assert (two[applied], two[rejected], two["modelpool_config_generation"]) == (1, 1, 2)
    assert two[success] == one[success], "a rejection is not a success"

    assert (await live.reload())[0] == 422  # same broken bytes, asked again: counted again
    write_in_place(config, config_text(fake.base_url, "b"))
    assert (await live.reload())[1]["result"] == "unchanged"
    three = await live.metrics()
    assert (three[applied], three[rejected], three["modelpool_config_generation"]) == (1, 2, 2)
    assert three[success] == one[success]

    write_in_place(config, config_text(fake.base_url, "a"))
    assert (await live.reload())[1]["result"] == "applied"
    four = await live.metrics()
    assert (four[applied], four[rejected], four["modelpool_config_generation"]) == (2, 2, 3)
    assert four[success] > three[success]


async def test_reload_triggers_are_serialized(
    config: Path, fake: FakeUpstream, start_live: StartLive
) -> None:
    """Ten concurrent POSTs of one edit: one applies it, the rest find it unchanged."""
    live = await start_live(config, watch=True)
    write_in_place(config, config_text(fake.base_url, "b"))
    outcomes = await asyncio.gather(*(live.reload() for _ in range(10)))
    results = sorted(outcome["result"] for _, outcome in outcomes)
    assert results.count("applied") <= 1
    await live.serving("p", "b")
    assert await live.generation() == 2
    assert {outcome["generation"] for _, outcome in outcomes} == {2}
