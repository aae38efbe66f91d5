"""The FLOPs model (DESIGN.md) against the multiply-adds torch counts in each encoder layer's forward
(one sequence; for DeBERTa the heads' projections of the position table and their c2p/p2c scores too)."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import FAMILIES, tiny_model
from kprune import model_flops
from kprune.adapters import EncoderAdapter
from kprune.surgery import prune_heads, prune_neurons


@pytest.mark.parametrize("family", FAMILIES)
def test_flops_model_matches_counted_multiply_adds(family):
    model = tiny_model(family, "classification", layers=3, seed=2)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")     # attention as matmuls, which the counter sees
    adapter = EncoderAdapter(model)
    prune_heads(adapter, 0, [1, 3])
    prune_neurons(adapter, 0, [2, 5, 6, 11, 17, 30, 39])
    prune_heads(adapter, 1, [])
    prune_neurons(adapter, 1, range(1, 40, 3))
    prune_neurons(adapter, 2, [])
    seq = 13
    ids = torch.randint(2, 60, (1, seq), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids)
    counts = counter.get_flop_counts()
    layers = adapter.layers
    names = {id(module): name for name, module in model.named_modules()}
    heads, neurons = adapter.units_kept()
    assert heads == [2, 0, 4] and neurons == [7, 13, 0]
    for l, layer in enumerate(layers):
        key = f"{type(model).__name__}.{names[id(layer)]}"
        counted = sum(counts.get(key, {}).values())
        expected = model_flops([heads[l]], [neurons[l]], seq, adapter.hidden_size, adapter.head_size,
                               adapter.relative, gated=adapter.arch.gated_ffn)
        assert counted == pytest.approx(expected, rel=1e-12), (l, counts.get(key))
