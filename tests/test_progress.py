"""The run's progress: an outer bar weighted by each step's cost that moves with every batch."""
import pytest

from conftest import random_samples, tiny_model
from kprune import KPruneConfig, KPruner
from kprune.progress import BACKWARD_COST, TUNE_COST, RunProgress, step_costs


def test_later_steps_cost_less():
    costs = step_costs(6)
    assert costs[0] == (6.0, TUNE_COST)                      # forward only: the student is the teacher
    assert costs[1] == ((1 + BACKWARD_COST) * 5, TUNE_COST)  # five sublayers forward and backward
    knowledge = [c[0] for c in costs[1:]]
    assert knowledge == sorted(knowledge, reverse=True) and knowledge[-1] == 1 + BACKWARD_COST
    assert [c[0] for c in step_costs(4, with_grad=False)] == [4.0, 3.0, 2.0, 1.0]


def test_bar_moves_with_every_batch_and_ends_full(monkeypatch):
    model = tiny_model("bert", "classification", layers=2)
    pruner = KPruner(model, random_samples(20), "classification", 0.5, KPruneConfig(batch_size=4))
    batches = len(pruner.batches)
    seen = []
    original = RunProgress.tick

    def tick(self):
        original(self)
        seen.append((self.step, self.outer.n))
    monkeypatch.setattr(RunProgress, "tick", tick)
    done = []
    for result in pruner.steps():
        done.append(pruner.progress.outer.n)
    costs = step_costs(4)
    # a knowledge and a tuning pass per step, one tick per batch
    assert len(seen) == 4 * 2 * batches
    assert [n for _, n in seen] == sorted(n for _, n in seen)                  # never goes back
    first = [n for step, n in seen if step == 0]
    assert first[batches - 1] == pytest.approx(costs[0][0])                    # knowledge pass of step 0
    assert done == pytest.approx([sum(a + b for a, b in costs[:k + 1]) for k in range(4)])


def test_disabled_progress_is_silent(capsys):
    model = tiny_model("bert", "classification", layers=1)
    KPruner(model, random_samples(8), "classification", 0.5, KPruneConfig(progress=False)).run()
    assert capsys.readouterr().err == ""
