import pytest
import torch

from conftest import tiny_model
from latency import compare_latency, measure_latency  # examples/latency.py


class Counting(torch.nn.Module):
    """Wraps a model and records the order of its forward calls."""

    def __init__(self, model, name, log):
        super().__init__()
        self.model, self.name, self.log, self.config = model, name, log, model.config

    def forward(self, **inputs):
        self.log.append((self.name, tuple(inputs["input_ids"].shape)))
        return self.model(**inputs)


def test_models_run_interleaved_on_the_same_batch_and_keep_their_mode():
    log = []
    a = Counting(tiny_model("bert", "classification"), "a", log)
    b = Counting(tiny_model("bert", "classification", seed=1), "b", log)
    a.eval()
    b.train()
    times = compare_latency({"a": a, "b": b}, batch_size=3, seq_len=7, repeats=4, warmup=2)
    assert set(times) == {"a", "b"} and all(t > 0 for t in times.values())
    assert log[:4] == [("a", (3, 7))] * 2 + [("b", (3, 7))] * 2           # warm-up
    assert log[4:] == [("a", (3, 7)), ("b", (3, 7))] * 4                   # then in turn
    assert not a.training and b.training


def test_single_model_latency_and_bad_arguments():
    model = tiny_model("distilbert", "qa")
    assert measure_latency(model, batch_size=2, seq_len=5, repeats=2, warmup=0) > 0
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, repeats=0)
