"""Limit gates and leases: exact admission, refunds once, state kept while the number is."""

from __future__ import annotations

from modelpool.clock import FakeClock
from modelpool.config.spec import Limits
from modelpool.limits import InFlight, Lease, LimitState, RequestRate, TokenRate, blocking, take_all


async def test_rpm_admits_a_burst_of_rpm_then_refuses_with_a_wait() -> None:
    gate = RequestRate(5)
    for _ in range(5):
        assert gate.can_take(1)
        await gate.take(1)
    assert not gate.can_take(1)
    assert gate.retry_in(1) == 12.0
    assert gate.headroom() < 1


async def test_tpm_refuses_within_one_request_of_the_limit() -> None:
    clock = FakeClock()
    gate = TokenRate(1000, clock)
    admitted = 0
    while gate.can_take(300):
        await gate.take(300)
        admitted += 1
    assert admitted == 3  # 900 reserved; a 4th (1,200) would pass the limit
    assert 0 < gate.retry_in(300) <= 60 * 300 / 1000


async def test_tpm_settles_with_actual_usage_and_leaks_over_time() -> None:
    clock = FakeClock()
    gate = TokenRate(1000, clock)
    for _ in range(3):
        await gate.take(300)
    gate.give(300, 50)  # the answer used 50 of the 300 reserved
    assert gate.headroom() == 350
    gate.give(300, 500)  # used more than reserved: charged
    assert gate.headroom() == 150
    clock.advance(6)  # 1000 tpm leaks 100 tokens in 6 s
    assert gate.headroom() == 250


async def test_a_request_larger_than_the_whole_tpm_passes_an_empty_bucket_alone() -> None:
    gate = TokenRate(100, FakeClock())
    assert gate.can_take(500)
    await gate.take(500)
    assert not gate.can_take(1)


async def test_concurrency_is_a_ceiling_and_frees_on_give() -> None:
    gate = InFlight(2)
    await gate.take(1)
    await gate.take(1)
    assert not gate.can_take(1)
    gate.give(1, 0)
    assert gate.can_take(1)


async def test_a_lease_gives_back_exactly_once() -> None:
    clock = FakeClock()
    gates = LimitState(clock).gates(Limits(tpm=1000, max_concurrency=3))
    lease = Lease()
    await take_all(gates, 400, lease)
    lease.release(100)
    lease.release(100)
    tokens, concurrency = gates
    assert tokens.headroom() == 900
    assert concurrency.headroom() == 3


async def test_blocking_names_the_longest_wait() -> None:
    gates = LimitState(FakeClock()).gates(Limits(rpm=1, tpm=10))
    assert blocking(gates, 8) is None
    await take_all(gates, 8, Lease())
    refusal = blocking(gates, 8)
    assert refusal is not None
    assert (refusal.kind, refusal.retry_in) == ("rpm", 60.0)  # tpm would need only 36 s


def test_gates_survive_while_their_number_stays_and_are_rebuilt_when_it_changes() -> None:
    state = LimitState(FakeClock())
    rpm, tpm = state.gates(Limits(rpm=10, tpm=100))
    again = state.gates(Limits(rpm=10, tpm=200, max_concurrency=2))
    assert again[0] is rpm
    assert again[1] is not tpm
    assert [g.kind for g in again] == ["rpm", "tpm", "concurrency"]
    assert state.gates(Limits()) == ()
