"""Playing a script: which step answers the next request, and how many each step served."""

from __future__ import annotations

from dataclasses import dataclass, field

from modelpool.fakeup.script import OK, Fault, Script


@dataclass
class Cursor:
    """Where a script is: which step comes next, and how many requests each step served."""

    script: Script = field(default_factory=Script)
    position: int = field(default=0, init=False)
    used: int = field(default=0, init=False)
    """Requests the current step has served so far."""
    served: list[int] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.served = [0] * len(self.script.steps)

    def next_fault(self, path: str) -> tuple[Fault, int | None]:
        """The fault for one request to ``path``, and the index of the step that chose it."""
        steps = self.script.steps
        if self.position >= len(steps) and self.script.loop and steps:
            self.position, self.used = 0, 0
        if self.position >= len(steps):
            return OK, None
        index, step = self.position, steps[self.position]
        if step.path is not None and step.path != path:
            return OK, None
        self.used += 1
        self.served[index] += 1
        if step.count is not None and self.used >= step.count:
            self.position, self.used = self.position + 1, 0
        return step.fault, index

    def clear_counters(self) -> None:
        self.served = [0] * len(self.script.steps)
