import contextlib
import copy

import torch

from conftest import model_outputs, padded_batch, random_samples, tiny_model
from kprune.adapters import EncoderAdapter
from kprune.surgery import HeadlessAttention, prune_heads, prune_neurons


@contextlib.contextmanager
def masked(model, head_masks, neuron_masks):
    """Multiply the input of every output projection by a 0/1 mask (the masked model)."""
    adapter = EncoderAdapter(model)
    handles = []
    try:
        for layer, (hm, nm) in enumerate(zip(head_masks, neuron_masks)):
            view = adapter.layer(layer)
            dims = hm.repeat_interleave(view.head_size)
            handles.append(view.attn_out.register_forward_pre_hook(lambda m, args, d=dims: (args[0] * d,)))
            handles.append(view.ffn_out.register_forward_pre_hook(lambda m, args, n=nm: (args[0] * n,)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def test_pruned_model_equals_masked_model(family_head):
    family, head = family_head
    model = tiny_model(family, head, layers=3)
    adapter = EncoderAdapter(model)
    g = torch.Generator().manual_seed(1)
    head_masks = [(torch.rand(4, generator=g) > 0.5).float() for _ in range(3)]
    neuron_masks = [(torch.rand(40, generator=g) > 0.5).float() for _ in range(3)]
    head_masks[1].zero_()            # a layer with no heads left
    neuron_masks[2].zero_()          # a layer with no neurons left
    head_masks[2].fill_(1.0)         # and one untouched
    ids, mask = padded_batch(random_samples(5, seed=3), pad_id=model.config.pad_token_id or 0)
    with masked(model, head_masks, neuron_masks):
        expected = model_outputs(model, ids, mask)
    pruned = copy.deepcopy(model)
    pruned_adapter = EncoderAdapter(pruned)
    for layer in range(3):
        prune_heads(pruned_adapter, layer, torch.nonzero(head_masks[layer]).flatten())
        prune_neurons(pruned_adapter, layer, torch.nonzero(neuron_masks[layer]).flatten())
    heads, neurons = pruned_adapter.units_kept()
    assert heads == [int(m.sum()) for m in head_masks]
    assert neurons == [int(m.sum()) for m in neuron_masks]
    assert isinstance(pruned_adapter.get_in_layer(1, adapter.arch.headless_target), HeadlessAttention)
    torch.testing.assert_close(model_outputs(pruned, ids, mask), expected, atol=1e-5, rtol=1e-4)
    # the input model is untouched
    assert adapter.units_kept() == ([4, 4, 4], [40, 40, 40])


def test_pruning_twice_composes():
    model = tiny_model("bert", "classification")
    adapter = EncoderAdapter(model)
    prune_heads(adapter, 0, [0, 2, 3])
    prune_heads(adapter, 0, [1])            # index into the remaining heads: original head 2
    prune_neurons(adapter, 0, range(10))
    prune_neurons(adapter, 0, [])
    assert adapter.units_kept() == ([1, 4], [0, 40])
