"""The breaker state machine: examples, then hypothesis-driven invariants."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from modelpool.breaker import Breaker, OutcomeWindow, State
from modelpool.clock import FakeClock
from modelpool.config.spec import BreakerPolicy

POLICY = BreakerPolicy(
    failure_threshold=3,
    rate_threshold=0.5,
    rate_window=30.0,
    rate_min_requests=10,
    cooldown_initial=10.0,
    cooldown_max=80.0,
    cooldown_multiplier=2.0,
)


def breaker() -> tuple[Breaker, FakeClock]:
    clock = FakeClock()
    return Breaker(clock), clock


def test_opens_after_consecutive_failures_and_admits_nothing_while_open() -> None:
    b, clock = breaker()
    for _ in range(2):
        b.failed(POLICY, "HTTP 503")
        assert b.state is State.CLOSED
    b.failed(POLICY, "HTTP 503")
    assert b.state is State.OPEN
    assert b.reason == "HTTP 503"
    clock.advance(9.9)
    assert not b.allow()
    assert not b.available()
    assert abs(b.retry_in() - 0.1) < 1e-9


def test_half_open_admits_exactly_one_trial_then_closes_on_success() -> None:
    b, clock = breaker()
    for _ in range(3):
        b.failed(POLICY, "reset")
    clock.advance(10)
    assert b.available()
    assert b.allow()
    assert b.state is State.HALF_OPEN
    assert not b.allow()
    assert not b.available()
    b.succeeded(POLICY)
    assert b.state is State.CLOSED
    assert b.allow()
    assert b.trips == 0


def test_cooldown_doubles_per_failed_trial_up_to_the_max() -> None:
    b, clock = breaker()
    for _ in range(3):
        b.failed(POLICY, "503")
    cooldowns = []
    for _ in range(5):
        cooldowns.append(b.open_until - clock.now())
        clock.advance(b.open_until - clock.now())
        assert b.allow()
        b.failed(POLICY, "503")
    assert cooldowns == [10, 20, 40, 80, 80]


def test_failures_while_open_extend_but_never_shorten_the_deadline() -> None:
    b, clock = breaker()
    for _ in range(3):
        b.failed(POLICY, "503")
    deadline = b.open_until
    clock.advance(5)
    b.failed(POLICY, "late failure of a request admitted before the trip")
    assert b.open_until == deadline + 5
    assert b.trips == 1, "concurrent failures are not extra trips"


def test_retry_after_cools_for_exactly_that_long_capped_at_max() -> None:
    b, clock = breaker()
    b.failed(POLICY, "HTTP 429", retry_after=7)
    assert b.state is State.OPEN
    assert b.open_until == clock.now() + 7
    b2, clock2 = breaker()
    b2.failed(POLICY, "HTTP 529", retry_after=3600)
    assert b2.open_until == clock2.now() + POLICY.cooldown_max


def test_failure_rate_over_the_window_opens_with_enough_volume() -> None:
    b, clock = breaker()
    for i in range(10):  # alternate: never 3 in a row, but 50% failures over 10 requests
        if i % 2:
            b.failed(POLICY, "503")
        else:
            b.succeeded(POLICY)
        clock.advance(1)
    assert b.state is State.OPEN


def test_old_outcomes_leave_the_window() -> None:
    b, clock = breaker()
    for _ in range(9):
        b.succeeded(POLICY)
    for _ in range(2):
        b.failed(POLICY, "503")
        b.succeeded(POLICY)
    clock.advance(31)  # everything above is now outside the 30s window
    for _ in range(2):
        b.failed(POLICY, "503")
        b.succeeded(POLICY)
    assert b.state is State.CLOSED


def test_the_window_counts_every_outcome_in_constant_memory() -> None:
    """100,000 outcomes in 10 s (10,000 rps) are all counted, in the same 20 buckets."""
    window = OutcomeWindow()
    for i in range(100_000):
        window.add(i / 10_000, 30.0, ok=i % 4 != 0)
    assert (window.succeeded, window.failed) == (75_000, 25_000)
    assert len(window._succeeded) == len(window._failed) == OutcomeWindow.SLOTS


def test_outcomes_leave_the_window_bucket_by_bucket() -> None:
    window = OutcomeWindow()  # 30 s in 20 buckets of 1.5 s
    window.add(0.0, 30.0, ok=False)
    window.add(15.0, 30.0, ok=False)
    window.add(28.0, 30.0, ok=True)  # the first failure is still inside
    assert (window.succeeded, window.failed) == (1, 2)
    window.add(30.0, 30.0, ok=True)  # 30 s after the first: gone; the second stays
    assert (window.succeeded, window.failed) == (2, 1)
    window.add(500.0, 30.0, ok=True)  # a long silence empties every bucket
    assert (window.succeeded, window.failed) == (1, 0)


def test_a_reload_that_changes_the_window_starts_counting_afresh() -> None:
    window = OutcomeWindow()
    for _ in range(5):
        window.add(1.0, 30.0, ok=False)
    window.add(2.0, 60.0, ok=True)
    assert (window.succeeded, window.failed) == (1, 0)


def test_abandoned_trial_frees_the_slot() -> None:
    b, clock = breaker()
    for _ in range(3):
        b.failed(POLICY, "503")
    clock.advance(10)
    assert b.allow()
    b.abandoned()
    assert b.allow()


class BreakerMachine(RuleBasedStateMachine):
    """Random sequences of time, admissions and verdicts keep the invariants."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.breaker = Breaker(self.clock)
        self.admitted = 0  # requests admitted and not yet judged
        self.last_deadline = 0.0

    @rule(seconds=st.floats(min_value=0, max_value=100))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def admit(self) -> None:
        was_open = self.breaker.state is State.OPEN and self.clock.now() < self.breaker.open_until
        half_busy = self.breaker.state is State.HALF_OPEN and self.breaker.trial_in_flight
        allowed = self.breaker.allow()
        if was_open or half_busy:
            assert not allowed
        if allowed:
            self.admitted += 1

    @precondition(lambda self: self.admitted > 0)
    @rule(retry_after=st.none() | st.floats(min_value=0.1, max_value=1000))
    def fail(self, retry_after: float | None) -> None:
        self.admitted -= 1
        before = (self.breaker.state, self.breaker.open_until)
        self.breaker.failed(POLICY, "boom", retry_after=retry_after)
        if before[0] is State.OPEN:
            assert self.breaker.open_until >= before[1]

    @precondition(lambda self: self.admitted > 0)
    @rule()
    def succeed(self) -> None:
        self.admitted -= 1
        was_half_open = self.breaker.state is State.HALF_OPEN
        self.breaker.succeeded(POLICY)
        if was_half_open:
            assert self.breaker.state is State.CLOSED

    @invariant()
    def deadline_is_bounded_by_the_max_cooldown(self) -> None:
        if self.breaker.state is State.OPEN:
            assert self.breaker.open_until - self.clock.now() <= POLICY.cooldown_max + 1e-6

    @invariant()
    def half_open_means_at_most_one_trial(self) -> None:
        if self.breaker.state is not State.HALF_OPEN:
            return
        assert self.breaker.available() == (not self.breaker.trial_in_flight)


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
