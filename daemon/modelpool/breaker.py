"""The circuit breaker of one model: a pure state machine on an injected clock.

::

    CLOSED ──(N consecutive failures, or failure rate ≥ threshold over the
    │          window with ≥ min_requests, or a 429/529 with Retry-After)──▶ OPEN
    OPEN ──(cooldown over: the next allow() admits one trial)──▶ HALF_OPEN
    HALF_OPEN ──trial succeeds──▶ CLOSED
    HALF_OPEN ──trial fails──▶ OPEN, for a cooldown that doubled

Cooldowns grow by ``multiplier`` per consecutive trip, up to ``max``; a
failure while open only ever pushes the deadline later (max of the two). A
``Retry-After`` from the upstream opens the breaker for exactly that long.
The policy is passed in on every call rather than stored, so a reload that
changes thresholds applies at once while the learned state carries over.
"""

from __future__ import annotations

import enum

from modelpool.clock import Clock
from modelpool.config.spec import BreakerPolicy


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    __slots__ = (
        "_clock",
        "_outcomes",
        "consecutive_failures",
        "open_until",
        "opened_at",
        "rate_limited",
        "reason",
        "state",
        "transitions",
        "trial_in_flight",
        "trips",
    )

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._outcomes = OutcomeWindow()
        self.state = State.CLOSED
        self.consecutive_failures = 0
        self.trips = 0
        """Consecutive trips without a success in between: the cooldown's exponent."""
        self.opened_at: float | None = None
        self.open_until = 0.0
        self.reason = ""
        self.rate_limited = False
        """Open only because the upstream asked for a pause (Retry-After), not from failures."""
        self.trial_in_flight = False
        self.transitions = 0

    # ------------------------------------------------------------------ asking

    def available(self) -> bool:
        """Could a request be admitted now? Never changes state (balancers ask freely)."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            return self._clock.now() >= self.open_until
        return not self.trial_in_flight

    def allow(self) -> bool:
        """Admit one request, if the breaker lets it through; a half-open breaker admits one."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            if self._clock.now() < self.open_until:
                return False
            self._move(State.HALF_OPEN)
        if self.trial_in_flight:
            return False
        self.trial_in_flight = True
        return True

    def retry_in(self) -> float:
        """Seconds until this breaker would admit a request (0 when it would now)."""
        if self.state is State.OPEN:
            return max(0.0, self.open_until - self._clock.now())
        return 0.0

    # ------------------------------------------------------------------ telling

    def succeeded(self, policy: BreakerPolicy) -> None:
        self.trial_in_flight = False
        self.consecutive_failures = 0
        self._record(policy, ok=True)
        if self.state is not State.CLOSED:
            self.trips = 0
            self.reason = ""
            self.rate_limited = False
            self._outcomes.clear()
            self._move(State.CLOSED)

    def failed(
        self, policy: BreakerPolicy, reason: str, *, retry_after: float | None = None
    ) -> None:
        """A model-scoped failure (never a request-scoped 400/413/422).

        While open (requests admitted before it opened, still failing) the
        deadline only moves later, by the current cooldown: concurrency must
        not count as repeated trips. A failed half-open trial is a new trip.
        """
        now = self._clock.now()
        self.trial_in_flight = False
        self.consecutive_failures += 1
        self._record(policy, ok=False)
        if retry_after is not None and retry_after > 0:
            self._open(
                reason, now + min(retry_after, policy.cooldown_max), trip=False, cooling=True
            )
        elif self.state is State.OPEN:
            self._open(reason, now + self._cooldown(policy, self.trips), trip=False)
        elif self.state is State.HALF_OPEN or self._tripped(policy):
            self._open(reason, now + self._cooldown(policy, self.trips + 1), trip=True)

    def cool(self, reason: str, seconds: float) -> None:
        """Pause for ``seconds`` because the upstream asked someone else (another
        sidecar) to: no failure is counted, and a later pause is never shortened."""
        if seconds > 0 and self.retry_in() < seconds:
            self._open(reason, self._clock.now() + seconds, trip=False, cooling=True)

    def abandoned(self) -> None:
        """The request ended without a verdict (the client left): free the trial slot."""
        self.trial_in_flight = False

    # ------------------------------------------------------------------ inside

    def _tripped(self, policy: BreakerPolicy) -> bool:
        if self.consecutive_failures >= policy.failure_threshold:
            return True
        outcomes = self._outcomes  # current: _record ran just before
        total = outcomes.succeeded + outcomes.failed
        if total < policy.rate_min_requests:
            return False
        return outcomes.failed / total >= policy.rate_threshold

    def _record(self, policy: BreakerPolicy, *, ok: bool) -> None:
        self._outcomes.add(self._clock.now(), policy.rate_window, ok=ok)

    @staticmethod
    def _cooldown(policy: BreakerPolicy, trip: int) -> float:
        cooldown = policy.cooldown_initial * policy.cooldown_multiplier ** max(0, trip - 1)
        return float(min(cooldown, policy.cooldown_max))

    def _open(self, reason: str, until: float, *, trip: bool, cooling: bool = False) -> None:
        if trip:
            self.trips += 1
        self.rate_limited = cooling and (self.rate_limited or self.state is not State.OPEN)
        self.reason = reason
        self.open_until = max(self.open_until, until) if self.state is State.OPEN else until
        if self.state is not State.OPEN:
            self.opened_at = self._clock.now()
            self._move(State.OPEN)

    def _move(self, state: State) -> None:
        self.state = state
        self.transitions += 1


class OutcomeWindow:
    """Successes and failures over the last ``window`` seconds, counted in ``SLOTS``
    time buckets: memory and the cost of an update stay the same at 1 or 10,000
    requests a second. An outcome leaves the window between ``window - window/SLOTS``
    and ``window`` seconds after it happened."""

    SLOTS = 20
    __slots__ = ("_failed", "_last", "_succeeded", "_width", "failed", "succeeded")

    def __init__(self) -> None:
        self._width = 0.0
        self._last = 0
        self._succeeded = [0] * self.SLOTS
        self._failed = [0] * self.SLOTS
        self.succeeded = 0
        self.failed = 0

    def add(self, now: float, window: float, *, ok: bool) -> None:
        width = window / self.SLOTS
        if width != self._width:  # first use, or a reload changed the window
            self.clear()
            self._width = width
            self._last = int(now // width)
        index = int(now // width)
        self._expire(index)
        slot = index % self.SLOTS
        if ok:
            self._succeeded[slot] += 1
            self.succeeded += 1
        else:
            self._failed[slot] += 1
            self.failed += 1

    def _expire(self, index: int) -> None:
        """Empty the buckets the window moved past since the last outcome."""
        for passed in range(self._last + 1, min(index, self._last + self.SLOTS) + 1):
            slot = passed % self.SLOTS
            self.succeeded -= self._succeeded[slot]
            self.failed -= self._failed[slot]
            self._succeeded[slot] = self._failed[slot] = 0
        self._last = max(self._last, index)

    def clear(self) -> None:
        self._succeeded = [0] * self.SLOTS
        self._failed = [0] * self.SLOTS
        self.succeeded = self.failed = 0
