"""Progress of a pruning run: one bar over the 2L steps, weighted by what each step is expected to
cost, that moves with every batch; and a second bar over the batches of the pass under way.

Step k's knowledge pass runs the 2L - k sublayers >= k (forward, and from k = 1 backward too, about
twice a forward), so later steps are cheaper and a bar counting steps would overestimate the time
left; its tuning pass runs one sublayer of the student and of the teacher.
"""
from __future__ import annotations

from tqdm.auto import tqdm

from kprune import threads

#: Cost of a backward pass through a sublayer, in forward passes (the recomputing backward re-runs
#: the part below the output projection).
BACKWARD_COST = 2.0
#: Cost of a step's tuning pass and cache advance, in sublayer forward passes.
TUNE_COST = 3.0


def step_costs(num_sublayers: int, with_grad: bool = True) -> list[tuple[float, float]]:
    """(knowledge pass, tuning pass) cost of each step, in sublayer forward passes over the sample.
    ``with_grad``: the knowledge passes from step 1 on run backward (predictive knowledge)."""
    costs = []
    for k in range(num_sublayers):
        per_sublayer = 1.0 + (BACKWARD_COST if with_grad and k > 0 else 0.0)
        costs.append((per_sublayer * (num_sublayers - k), TUNE_COST))
    return costs


class RunProgress:
    """The two bars of a run (no-ops when ``enabled`` is False)."""

    def __init__(self, costs: list[tuple[float, float]], enabled: bool = True, desc: str = "K-prune"):
        self.costs = costs
        self.enabled = enabled and bool(costs)
        self.step = 0
        self._step_done = 0.0
        self._per_batch = 0.0
        if not self.enabled:
            return
        self.outer = tqdm(total=sum(a + b for a, b in costs), desc=desc, position=0, smoothing=0.1,
                          bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
        self.inner = tqdm(total=0, desc="", position=1, leave=False, unit="batch")

    def start(self, step: int) -> None:
        """Step ``step`` begins."""
        self.step, self._step_done = step, 0.0
        if self.enabled:
            self.outer.set_postfix_str(f"sublayer {step + 1}/{len(self.costs)}")

    def phase(self, name: str, batches: int) -> None:
        """A pass over ``batches`` batches begins: ``"knowledge"`` or ``"tuning"``."""
        if not self.enabled:
            return
        weight = self.costs[self.step][0 if name == "knowledge" else 1]
        self._per_batch = weight / max(1, batches)
        self.inner.reset(total=batches)
        self.inner.set_description_str(f"  {name}")

    def tick(self) -> None:
        """One batch of the current pass is done (also the moment to re-check the machine's load)."""
        threads.poll()
        if not self.enabled:
            return
        self.inner.update()
        self._advance(self._per_batch)

    def finish(self, summary: str) -> None:
        """The step is done; ``summary`` says what it kept."""
        if not self.enabled:
            return
        self._advance(sum(self.costs[self.step]) - self._step_done)
        self.outer.set_postfix_str(f"sublayer {self.step + 1}/{len(self.costs)}: {summary}")

    def _advance(self, amount: float) -> None:
        amount = max(0.0, min(amount, sum(self.costs[self.step]) - self._step_done,
                              self.outer.total - self.outer.n))
        self._step_done += amount
        self.outer.update(amount)

    def close(self) -> None:
        if self.enabled:
            self.inner.close()
            self.outer.close()
