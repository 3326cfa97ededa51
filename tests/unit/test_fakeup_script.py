"""Fault specs and scripts of `modelpool fake-upstream`: parsing, counts, cycles, paths, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelpool.fakeup.cursor import Cursor
from modelpool.fakeup.script import (
    HANG_MAX,
    OK,
    Fault,
    FaultScriptError,
    Script,
    build_script,
    describe_script,
    load_script,
    parse_spec,
    script_from,
    script_from_args,
    step_from,
)

CHAT = "/v1/chat/completions"
EMBED = "/v1/embeddings"


def play(script: Script, *paths: str) -> list[str]:
    """The fault kind each request gets, in order."""
    cursor = Cursor(script)
    return [cursor.next_fault(path)[0].kind for path in paths]


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("ok", OK),
        ("latency=2s", Fault("latency", latency=2.0)),
        ("status=503", Fault("status", status=503)),
        (
            "status=429,retry_after=2,retry_after_ms=1500",
            Fault("status", status=429, retry_after="2", retry_after_ms=1500),
        ),
        ("status=500,message=boom,latency=250ms", Fault("status", 0.25, 500, message="boom")),
        ("reset", Fault("reset")),
        ("hang", Fault("hang", max=HANG_MAX)),
        ("hang=5s", Fault("hang", max=5.0)),
        ("drip=200ms", Fault("drip", drip=0.2)),
        ("drip=1s,ping=100ms", Fault("drip", drip=1.0, ping=0.1)),
        ("truncate", Fault("truncate", chunks=1)),
        ("truncate=3,drip=10ms", Fault("truncate", drip=0.01, chunks=3)),
        ("stall=2,ping=1s,max=10s", Fault("stall", ping=1.0, chunks=2, max=10.0)),
        ("error_in_stream,message=overloaded", Fault("error_in_stream", message="overloaded")),
        ("invalid_json", Fault("invalid_json")),
        (" status = 502 ", Fault("status", status=502)),
    ],
)
def test_specs_parse_to_faults(spec: str, fault: Fault) -> None:
    assert step_from(spec) == (fault, None, None)


def test_count_suffix_and_path_option() -> None:
    assert step_from("status=500*3") == (Fault("status", status=500), 3, None)
    assert parse_spec("status=429,retry_after=2*3") == {
        "status": "429",
        "retry_after": "2",
        "count": "3",
    }
    assert step_from(f"reset,path={EMBED}*2") == (Fault("reset"), 2, EMBED)


def test_mapping_steps_match_spec_strings() -> None:
    mapping: dict[str, Any] = {"status": 429, "retry_after": 2, "count": 3, "path": CHAT}
    assert step_from(mapping) == step_from(f"status=429,retry_after=2,path={CHAT}*3")
    assert step_from({"reset": True}) == step_from({"reset": None}) == step_from("reset")
    assert step_from({"hang": "1s"}) == step_from("hang=1s")


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("", "empty option"),
        ("explode", "no fault named"),
        ("status", "status needs a value"),
        ("status=abc", "a whole number"),
        ("status=999", "not within 100..599"),
        ("status=503,status=500", "given twice"),
        ("status=503,reset", "one fault per step"),
        ("reset=yes", "reset takes no value"),
        ("latency=soon", "not a duration"),
        ("latency", "latency needs a value"),
        ("reset,retry_after=2", "retry_after does not apply to reset"),
        ("ok,drip=1s", "drip does not apply to ok"),
        ("status=503*0", "count: 0 is not within"),
        ("status=503*x", "count: a whole number"),
        ("reset,path=v1/chat", "an absolute request path"),
        ("truncate=-1", "truncate: -1 is not within"),
        ("drip=1s,ping=x", "ping: not a duration"),
        ("truncate=2,ping=1s", "ping needs drip"),
        ("hang=100h", "longer than"),
    ],
)
def test_bad_specs_say_why(spec: str, complaint: str) -> None:
    with pytest.raises(FaultScriptError, match=complaint):
        step_from(spec)


def test_bad_values_in_mappings() -> None:
    with pytest.raises(FaultScriptError, match="status needs a value"):
        step_from({"status": True})
    with pytest.raises(FaultScriptError, match="1 is not within"):
        step_from({"status": 1})
    with pytest.raises(FaultScriptError, match="a whole number"):
        step_from({"status": 5.5})
    with pytest.raises(FaultScriptError, match="a duration"):
        step_from({"latency": False})
    with pytest.raises(FaultScriptError, match="retry_after: a value"):
        step_from({"status": 429, "retry_after": [1]})


def test_a_step_without_count_lasts_one_request_unless_it_is_the_last() -> None:
    script = build_script(["status=503*2", "reset", "ok"], loop=False)
    assert [s.count for s in script.steps] == [2, 1, None]
    kinds = play(script, *[CHAT] * 6)
    assert kinds == ["status", "status", "reset", "ok", "ok", "ok"]


def test_a_lone_fault_fails_every_request() -> None:
    assert play(build_script(["status=503"], loop=False), *[CHAT] * 4) == ["status"] * 4


def test_after_the_last_counted_step_everything_is_ok() -> None:
    script = build_script(["status=500*2"], loop=False)
    assert play(script, *[CHAT] * 4) == ["status", "status", "ok", "ok"]


def test_loop_cycles_and_gives_every_step_a_count() -> None:
    script = build_script(["status=503", "ok*2"], loop=True)
    assert [s.count for s in script.steps] == [1, 2]
    assert play(script, *[CHAT] * 7) == ["status", "ok", "ok"] * 2 + ["status"]


def test_a_path_step_is_only_used_up_by_its_path() -> None:
    script = build_script([f"status=500,path={EMBED}*2", "reset"], loop=False)
    kinds = play(script, CHAT, EMBED, CHAT, EMBED, CHAT)
    assert kinds == ["ok", "status", "ok", "status", "reset"]


def test_cursor_counts_per_step_and_clears() -> None:
    cursor = Cursor(build_script(["status=500*2", "ok"], loop=False))
    assert [cursor.next_fault(CHAT)[1] for _ in range(4)] == [0, 0, 1, 1]
    assert cursor.served == [2, 2]
    cursor.clear_counters()
    assert cursor.served == [0, 0]
    assert cursor.position == 1


def test_empty_scripts_answer_ok_even_when_looping() -> None:
    assert play(Script(), CHAT) == ["ok"]
    assert play(Script(loop=True), CHAT, CHAT) == ["ok", "ok"]


@pytest.mark.parametrize(
    "raw",
    [
        "status=503*2",
        ["status=503*2", "ok"],
        {"steps": ["status=503*2", "ok"]},
        {"status": 503, "count": 2},
    ],
)
def test_script_shapes(raw: Any) -> None:
    assert play(script_from(raw), *[CHAT] * 3) == ["status", "status", "ok"]


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        (42, "not int"),
        ({"steps": "ok"}, "needs `steps"),
        ({"steps": [], "loop": "yes"}, "needs `steps"),
        ({"steps": [], "cycle": True}, "unknown script key 'cycle'"),
        (["ok", 3], "step 2: a spec string or a mapping"),
        (["ok", "status=1"], "step 2: status: 1 is not within"),
        ([{1: 2}], "option names must be strings"),
    ],
)
def test_bad_scripts_say_where(raw: Any, complaint: str) -> None:
    with pytest.raises(FaultScriptError, match=complaint):
        script_from(raw)


def test_described_scripts_read_back_to_the_same_script() -> None:
    script = build_script(
        [
            "status=429,retry_after=2,retry_after_ms=10,message=slow down*3",
            f"hang=2s,latency=10ms,path={CHAT}",
            "stall=2,ping=1s,max=5s,drip=20ms",
            "drip=1s,ping=250ms",
            "truncate=0",
            "latency=1.5s",
            "error_in_stream",
        ],
        loop=True,
    )
    assert script_from(describe_script(script)) == script


def _ms() -> st.SearchStrategy[str]:
    return st.integers(1, 5000).map(lambda n: f"{n}ms")


_SPECS = st.one_of(
    st.just("ok"),
    st.just("reset"),
    st.just("invalid_json"),
    _ms().map(lambda d: f"latency={d}"),
    st.tuples(st.integers(100, 599), st.integers(0, 60)).map(
        lambda t: f"status={t[0]},retry_after={t[1]}"
    ),
    _ms().map(lambda d: f"hang={d}"),
    st.tuples(_ms(), _ms()).map(lambda t: f"drip={t[0]},ping={t[1]}"),
    st.tuples(st.integers(0, 9), _ms()).map(lambda t: f"truncate={t[0]},drip={t[1]}"),
    st.tuples(st.integers(0, 9), _ms()).map(lambda t: f"stall={t[0]},max={t[1]}"),
    st.just("error_in_stream,message=overloaded"),
)


def _joined(parts: tuple[str, str, str, str]) -> str:
    """One step's spec; a latency fault takes no second latency option."""
    spec, latency, path, count = parts
    return spec + ("" if spec.startswith("latency") else latency) + path + count


_STEPS = st.tuples(
    _SPECS,
    st.sampled_from(["", ",latency=5ms"]),
    st.sampled_from(["", f",path={EMBED}"]),
    st.sampled_from(["", "*1", "*7"]),
).map(_joined)


@given(st.lists(_STEPS, max_size=6), st.booleans())
def test_any_script_survives_being_described(specs: list[str], loop: bool) -> None:
    script = build_script(specs, loop=loop)
    assert script_from(describe_script(script)) == script


@given(st.lists(st.tuples(_SPECS, st.integers(1, 4)), min_size=1, max_size=5))
def test_a_one_shot_script_serves_each_step_exactly_its_count(steps: list[tuple[str, int]]) -> None:
    script = build_script([f"{spec}*{count}" for spec, count in steps], loop=False)
    cursor = Cursor(script)
    total = sum(count for _, count in steps)
    chosen = [cursor.next_fault(CHAT)[1] for _ in range(total + 2)]
    assert chosen[:total] == [i for i, (_, count) in enumerate(steps) for _ in range(count)]
    assert chosen[total:] == [None, None]
    assert cursor.served == [count for _, count in steps]


def test_yaml_files_and_command_line_arguments(tmp_path: Path) -> None:
    path = tmp_path / "drill.yaml"
    path.write_text("steps:\n  - status=503*2\n  - {reset: true}\n")
    from_file = load_script(path)
    assert play(from_file, *[CHAT] * 4) == ["status", "status", "reset", "reset"]
    looped = script_from_args(str(path), [], loop=True)
    assert play(looped, *[CHAT] * 4) == ["status", "status", "reset", "status"]
    from_flags = script_from_args(None, ["status=503*2", "ok"], loop=False)
    assert play(from_flags, *[CHAT] * 3) == ["status", "status", "ok"]


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("- status=2000\n")
    with pytest.raises(FaultScriptError, match=r"broken\.yaml: step 1: status"):
        load_script(broken)
    with pytest.raises(FaultScriptError, match=r"missing\.yaml"):
        load_script(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("steps: [unclosed\n")
    with pytest.raises(FaultScriptError, match=r"bad\.yaml"):
        load_script(tmp_path / "bad.yaml")
