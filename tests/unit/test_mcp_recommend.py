"""recommend_model's choice: capable, fitting, breaker-closed members; ranked by preference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelpool.config.spec import Price
from modelpool.mcp.recommend import (
    MemberFacts,
    Need,
    Option,
    Preference,
    recommend,
    spread,
)
from modelpool.mcp.server import CAPABILITIES, TOOLS

CHAT = frozenset({"chat", "stream"})
TOOLING = frozenset({"chat", "stream", "tools"})


def member(
    model: str,
    *,
    input_price: float | None = 1.0,
    output_price: float = 2.0,
    capabilities: frozenset[str] = CHAT,
    window: int | None = 100_000,
    available: bool = True,
    latency: float | None = None,
    weight: float = 1.0,
    priority: int = 0,
    retry_in: float = 0.0,
) -> MemberFacts:
    price = None if input_price is None else Price(input_price, output_price)
    return MemberFacts(
        model, capabilities, window, price, available, latency, weight, priority, retry_in
    )


def need(
    prompt: int = 1000,
    preference: Preference = "cost",
    capabilities: frozenset[str] = frozenset({"chat"}),
    output: int = 100,
) -> Need:
    return Need(capabilities, prompt, output, preference)


def pool(name: str, *members: MemberFacts, strategy: str = "round_robin") -> Option:
    return Option(name, strategy, members)


def test_cost_picks_the_cheapest_pool_for_the_size_and_says_so() -> None:
    options = [
        pool("smart", member("big", input_price=3.0, output_price=15.0)),
        pool("cheap", member("small", input_price=0.1, output_price=0.4)),
    ]
    answer = recommend(options, need(prompt=10_000, output=1000))
    assert (answer.pool, answer.model) == ("cheap", "small")
    # 10k * 0.1 + 1k * 0.4 per million = 0.0014 USD
    assert answer.ranked[0].cost == pytest.approx(0.0014)
    assert answer.reason.startswith("cheapest for 10000 prompt + 1000 output tokens: ≈$0.001400")
    assert "next: smart" in answer.reason


def test_the_price_table_decides_by_size_output_heavy_vs_input_heavy() -> None:
    input_cheap = pool("input-cheap", member("a", input_price=0.1, output_price=10.0))
    output_cheap = pool("output-cheap", member("b", input_price=2.0, output_price=0.5))
    options = [input_cheap, output_cheap]
    assert recommend(options, need(prompt=100_000, output=10)).pool == "input-cheap"
    assert recommend(options, need(prompt=10, output=10_000)).pool == "output-cheap"


def test_members_without_the_capabilities_do_not_count() -> None:
    options = [
        pool("cheap", member("small", input_price=0.1)),
        pool("tools", member("big", input_price=3.0, capabilities=TOOLING)),
    ]
    answer = recommend(options, need(capabilities=frozenset({"chat", "tools"})))
    assert answer.pool == "tools"
    assert answer.rejected == {"cheap": "no member has every capability asked for (chat, tools)"}


def test_a_prompt_larger_than_the_context_window_skips_the_member() -> None:
    options = [
        pool("cheap", member("small", input_price=0.1, window=8000)),
        pool("long", member("big", input_price=3.0, window=200_000)),
    ]
    assert recommend(options, need(prompt=8000)).pool == "cheap"  # exactly fits
    answer = recommend(options, need(prompt=8001))
    assert answer.pool == "long"
    assert "8001-token prompt exceeds" in answer.rejected["cheap"]
    assert "largest: 8000" in answer.rejected["cheap"]


def test_an_unknown_context_window_may_fit() -> None:
    answer = recommend([pool("p", member("m", window=None))], need(prompt=10_000_000))
    assert answer.pool == "p"


def test_an_open_breaker_takes_a_member_out_and_its_pool_with_it_when_alone() -> None:
    options = [
        pool("cheap", member("small", input_price=0.1, available=False, retry_in=12.34)),
        pool("smart", member("big", input_price=3.0)),
    ]
    answer = recommend(options, need())
    assert answer.pool == "smart"
    assert answer.rejected["cheap"] == (
        "every capable member's breaker is open (small admits a trial in 12.3s)"
    )


def test_within_a_pool_the_open_member_is_skipped_and_the_next_serves() -> None:
    option = pool(
        "cheap",
        member("flaky", input_price=0.01, available=False),
        member("steady", input_price=0.5),
        strategy="priority",
    )
    answer = recommend([option], need())
    assert (answer.pool, answer.model) == ("cheap", "steady")
    assert answer.ranked[0].members == ("steady",)


def test_latency_picks_the_lowest_observed_ewma() -> None:
    options = [
        pool("cheap", member("small", input_price=0.1, latency=0.9)),
        pool("fast", member("big", input_price=3.0, latency=0.12)),
        pool("new", member("unseen", input_price=0.1, latency=None)),
    ]
    answer = recommend(options, need(preference="latency"))
    assert answer.pool == "fast"
    assert answer.reason.startswith("lowest observed latency: 0.120s to first byte")
    assert [c.pool for c in answer.ranked] == ["fast", "cheap", "new"]  # unobserved last


def test_latency_with_nothing_observed_falls_back_to_cost_and_says_why() -> None:
    options = [
        pool("smart", member("big", input_price=3.0)),
        pool("cheap", member("small", input_price=0.1)),
    ]
    answer = recommend(options, need(preference="latency"))
    assert answer.pool == "cheap"
    assert answer.reason.startswith("no latency observed yet for any pool; cheapest for")


def test_balanced_weighs_cost_and_latency_relative_to_the_worst() -> None:
    options = [
        # cost 1.0 (worst) and latency 0.1 → (1 + 0.1) / 2 = 0.55
        pool("pricey-fast", member("a", input_price=10.0, output_price=0, latency=0.1)),
        # cost 0.5 and latency 1.0 (worst) → (0.5 + 1) / 2 = 0.75
        pool("cheap-slow", member("b", input_price=5.0, output_price=0, latency=1.0)),
        # cost 0.2, latency 0.3 → 0.25: best on neither, best balanced
        pool("middle", member("c", input_price=2.0, output_price=0, latency=0.3)),
    ]
    answer = recommend(options, need(preference="balanced"))
    assert [c.pool for c in answer.ranked] == ["middle", "pricey-fast", "cheap-slow"]
    assert answer.ranked[0].score == pytest.approx(0.25)
    assert answer.reason.startswith("best balance of cost and latency")


def test_balanced_counts_unknown_figures_as_the_worst() -> None:
    options = [
        pool("unpriced", member("a", input_price=None, latency=0.1)),
        pool("priced", member("b", input_price=1.0, latency=0.2)),
    ]
    # unpriced: (1 + 0.5) / 2 = 0.75; priced: (1 + 1) / 2 = 1.0
    assert recommend(options, need(preference="balanced")).pool == "unpriced"
    # but on cost alone an unpriced pool ranks last
    assert recommend(options, need(preference="cost")).pool == "priced"


def test_free_models_are_the_cheapest_without_dividing_by_zero() -> None:
    options = [
        pool("local", member("llama", input_price=0.0, output_price=0.0, latency=0.5)),
        pool("free-too", member("other", input_price=0.0, output_price=0.0, latency=0.2)),
    ]
    assert recommend(options, need(preference="balanced")).pool == "free-too"
    assert recommend(options, need(preference="cost")).pool == "free-too"  # tie → latency


def test_ties_break_by_name_so_the_answer_is_stable() -> None:
    options = [pool(name, member(f"m-{name}")) for name in ("zeta", "alpha", "mid")]
    assert recommend(options, need()).pool == "alpha"


def test_nothing_can_serve_answers_none_with_every_reason() -> None:
    options = [pool("cheap", member("small", available=False))]
    answer = recommend(options, need())
    assert (answer.pool, answer.model) == (None, None)
    assert answer.reason == "no pool you may use can take this request now"
    assert set(answer.rejected) == {"cheap"}
    assert recommend([], need()).reason.endswith("(you may use no pool)")


def test_the_pools_strategy_decides_which_members_cost_counts() -> None:
    cheap, dear = member("cheap", input_price=0.1), member("dear", input_price=10.0)
    costs = {
        strategy: recommend([pool("p", dear, cheap, strategy=strategy)], need()).ranked[0].cost
        for strategy in ("lowest_cost", "round_robin", "priority")
    }
    one_cheap = 1000 * 0.1 / 1e6 + 100 * 2.0 / 1e6
    one_dear = 1000 * 10.0 / 1e6 + 100 * 2.0 / 1e6
    assert costs["lowest_cost"] == pytest.approx(one_cheap)  # always the cheapest
    assert costs["round_robin"] == pytest.approx((one_cheap + one_dear) / 2)  # either
    assert costs["priority"] == pytest.approx((one_cheap + one_dear) / 2)  # one tier of two


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("weighted", {"a": 0.75, "b": 0.25, "c": 0.0}),
        ("priority", {"a": 0.5, "b": 0.5, "c": 0.0}),
        ("least_latency", {"a": 0.0, "b": 1.0, "c": 0.0}),
        ("lowest_cost", {"a": 0.0, "b": 0.0, "c": 1.0}),
        ("least_in_flight", {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}),
    ],
)
def test_spread_follows_the_strategy(strategy: str, expected: dict[str, float]) -> None:
    members = [
        member("a", weight=3, priority=0, latency=0.5, input_price=2.0),
        member("b", weight=1, priority=0, latency=0.1, input_price=3.0),
        member("c", weight=0.0000001, priority=1, latency=None, input_price=0.5),
    ]
    shares = spread(strategy, members, need())
    assert shares == pytest.approx(expected, abs=1e-6)


def test_least_latency_with_nothing_observed_spreads_evenly() -> None:
    members = [member("a"), member("b")]
    assert spread("least_latency", members, need()) == {"a": 0.5, "b": 0.5}


def test_a_pool_of_several_names_its_likeliest_member_first() -> None:
    option = pool(
        "p",
        member("light", weight=1),
        member("heavy", weight=9),
        strategy="weighted",
    )
    answer = recommend([option], need())
    assert answer.model == "heavy"
    assert answer.ranked[0].members == ("heavy", "light")


def test_as_json_is_what_the_tool_returns() -> None:
    answer = recommend([pool("cheap", member("small", input_price=0.1))], need())
    data = answer.as_json()
    assert data["pool"] == "cheap"
    assert data["model"] == "small"
    assert data["estimated_cost_usd"] == pytest.approx(0.0003)
    assert data["candidates"] == [
        {
            "pool": "cheap",
            "members": ["small"],
            "estimated_cost_usd": data["estimated_cost_usd"],
            "latency_ewma_s": None,
        }
    ]
    json.dumps(data)  # plain JSON


def test_the_tool_knows_every_capability_the_config_schema_knows() -> None:
    schema_path = Path(__file__).parents[2] / "schemas" / "pools.schema.json"
    schema = json.loads(schema_path.read_text())
    assert set(CAPABILITIES) == set(schema["$defs"]["capability"]["enum"])
    properties = TOOLS["recommend_model"].definition.input_schema["properties"]
    assert properties["capabilities"]["items"]["enum"] == list(CAPABILITIES)
    assert properties["preference"]["enum"] == ["cost", "latency", "balanced"]
