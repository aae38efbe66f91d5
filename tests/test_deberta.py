"""DeBERTa-v2/v3 specifics, on variants of the layout beyond the v3-like one in the shared per-family tests
(tests/conftest.py FAMILIES): separate pos_key_proj / pos_query_proj (sliced with the heads), one position
term only, unbucketed clamped positions, absolute positions, token types, an embedding projection, no
relative attention; every head (classification, regression, QA, bare encoder). The reference is always
transformers' own module run unpruned, with the pruned units masked by hooks."""
import copy

import pytest
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

import kprune
from conftest import padded_batch, random_samples
from fixtures_data import cli_prune_evaluate_info, make_bert_tokenizer
from kprune.adapters import EncoderAdapter, mean_pool_normalise
from kprune.errors import UnsupportedModelError
from kprune.sublayers import forward_logits
from kprune.surgery import HeadlessAttention, prune_heads, prune_neurons
from test_remote_code import run_child

SHAPE = dict(vocab_size=60, hidden_size=32, num_attention_heads=4, intermediate_size=40, max_position_embeddings=72,
             initializer_range=0.2)
VARIANTS = {
    "v3": dict(relative_attention=True, position_buckets=16, norm_rel_ebd="layer_norm", share_att_key=True,
               pos_att_type="p2c|c2p", position_biased_input=False, type_vocab_size=0),
    # v2-like: own position projections, positions clamped at +-6 (no buckets), absolute positions and types
    "separate": dict(relative_attention=True, max_relative_positions=6, share_att_key=False, pos_att_type="c2p|p2c",
                     position_biased_input=True, type_vocab_size=2, embedding_size=16),
    "c2p-separate": dict(relative_attention=True, position_buckets=16, share_att_key=False, pos_att_type="c2p",
                         norm_rel_ebd="layer_norm", position_biased_input=False),
    "p2c-shared": dict(relative_attention=True, position_buckets=16, share_att_key=True, pos_att_type="p2c",
                       position_biased_input=False),
    "absolute": dict(relative_attention=False, position_biased_input=True, type_vocab_size=2),
}
HEADS = ("classification", "regression", "qa", "embedding")
CLASSES = {"classification": transformers.DebertaV2ForSequenceClassification,
           "regression": transformers.DebertaV2ForSequenceClassification,
           "qa": transformers.DebertaV2ForQuestionAnswering, "embedding": transformers.DebertaV2Model}


def deberta(variant, head, layers=3, seed=0):
    torch.manual_seed(seed)
    labels = {"classification": 3, "regression": 1, "qa": 2, "embedding": 2}[head]
    config = transformers.DebertaV2Config(num_hidden_layers=layers, num_labels=labels, **SHAPE, **VARIANTS[variant])
    if head == "regression":
        config.problem_type = "regression"
    return CLASSES[head](config).eval()


def inputs(seed, count=5):
    ids, mask = padded_batch(random_samples(count, seed=seed, max_len=20))
    types = (torch.arange(ids.shape[1]) >= ids.shape[1] // 2).long().expand_as(ids).contiguous() * mask
    return ids, mask, types


def outputs(model, ids, mask, types):
    """Task outputs as one tensor: logits, QA logits with padding zeroed, or the pooled embedding."""
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    if hasattr(out, "start_logits"):
        return torch.stack([out.start_logits, out.end_logits], -1) * mask[..., None]
    return out.logits if hasattr(out, "logits") else mean_pool_normalise(out.last_hidden_state, mask)


def hook_masks(model, head_masks, neuron_masks):
    """The masked model: forward pre-hooks multiply each output projection's input by its 0/1 mask."""
    adapter, handles = EncoderAdapter(model), []
    for l, (hm, nm) in enumerate(zip(head_masks, neuron_masks)):
        view = adapter.layer(l)
        dims = hm.repeat_interleave(view.head_size)
        handles.append(view.attn_out.register_forward_pre_hook(lambda m, a, d=dims: (a[0] * d,)))
        handles.append(view.ffn_out.register_forward_pre_hook(lambda m, a, n=nm: (a[0] * n,)))
    return handles


def uneven(model):
    """Layer 0 keeps heads 1 and 3, layer 1 none, layer 2 all; neurons: some, some, none."""
    adapter = EncoderAdapter(model)
    for layer, (heads, neurons) in enumerate((([1, 3], [2, 5, 6, 11, 17, 30, 39]), ([], range(1, 40, 3)),
                                              (range(4), []))):
        prune_heads(adapter, layer, heads)
        prune_neurons(adapter, layer, neurons)
    return model


CASES = [(v, h) for v in VARIANTS for h in HEADS]


@pytest.mark.parametrize("variant,head", CASES)
def test_pruned_model_equals_masked_model_and_the_functional_forward(variant, head):
    model = deberta(variant, head)
    ids, mask, types = inputs(seed=3)
    # kprune's functional forward (used while pruning) computes what transformers computes
    full = outputs(model, ids, mask, types)
    with torch.no_grad():
        functional = forward_logits(EncoderAdapter(model), ids, types, mask.bool())
    if head == "qa":
        functional = functional * mask[..., None]
    torch.testing.assert_close(functional, full, atol=1e-5, rtol=1e-4)
    head_masks = [torch.tensor([0.0, 1, 0, 1]), torch.zeros(4), torch.ones(4)]
    neuron_masks = [torch.zeros(40).index_fill_(0, torch.tensor([2, 5, 6, 11, 17, 30, 39]), 1.0),
                    torch.zeros(40).index_fill_(0, torch.arange(1, 40, 3), 1.0), torch.zeros(40)]
    handles = hook_masks(model, head_masks, neuron_masks)
    expected = outputs(model, ids, mask, types)
    for h in handles:
        h.remove()
    pruned = uneven(copy.deepcopy(model))
    adapter = EncoderAdapter(pruned)
    assert adapter.units_kept() == ([2, 0, 4], [7, 13, 0])
    layers = adapter.layers
    assert isinstance(layers[1].attention.self, HeadlessAttention)
    for name in ("pos_key_proj", "pos_query_proj"):   # the layer's own position projections follow its heads
        if hasattr(model.base_model.encoder.layer[0].attention.self, name):
            assert [getattr(layer.attention.self, name).out_features for layer in layers] == [16, 0, 32]
    torch.testing.assert_close(outputs(pruned, ids, mask, types), expected, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        functional = forward_logits(adapter, ids, types, mask.bool())
    if head == "qa":
        functional = functional * mask[..., None]
    torch.testing.assert_close(functional, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_masked_run_equals_apply_masks(variant):
    model = deberta(variant, "classification", seed=1)
    ids, mask, types = inputs(seed=2)
    masks = kprune.UnitMasks.ones(model)
    g = torch.Generator().manual_seed(4)
    for values in masks.heads + masks.neurons:
        values.copy_((torch.rand(values.shape, generator=g) < 0.6) * (0.5 + torch.rand(values.shape, generator=g)))
    masks.heads[0].zero_()
    with kprune.masked(model, masks):
        got = outputs(model, ids, mask, types)
    handles = hook_masks(model, masks.heads, masks.neurons)
    want = outputs(model, ids, mask, types)
    for h in handles:
        h.remove()
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    pruned = kprune.apply_masks(model, masks)
    torch.testing.assert_close(outputs(pruned, ids, mask, types), got, atol=2e-5, rtol=1e-4)
    assert EncoderAdapter(pruned).units_kept()[0] == masks.counts()[0]


@pytest.mark.parametrize("variant", VARIANTS)
def test_flops_model_matches_counted_multiply_adds(variant):
    """Counted at batch 1: the heads' projections of the whole position table (2 x span rows, through both
    query and key projections when they are shared) plus every token's c2p / p2c scores against them."""
    # no parameter needs gradients (torch's module tracker fails on a raw position table that does)
    model = uneven(deberta(variant, "classification", seed=2)).requires_grad_(False)
    adapter = EncoderAdapter(model)
    seq = 13
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=torch.randint(2, 60, (1, seq), generator=torch.Generator().manual_seed(0)))
    counts = counter.get_flop_counts()
    names = {id(module): name for name, module in model.named_modules()}
    heads, neurons = adapter.units_kept()
    rows = {"v3": 32, "separate": 12, "c2p-separate": 32, "p2c-shared": 32}.get(variant)
    assert adapter.relative == (None if rows is None else kprune.flops.RelativeTerms(
        rows * (2 if VARIANTS[variant]["share_att_key"] else len(VARIANTS[variant]["pos_att_type"].split("|"))),
        rows * len(VARIANTS[variant]["pos_att_type"].split("|"))))
    for l, layer in enumerate(adapter.layers):
        counted = sum(counts.get(f"{type(model).__name__}.{names[id(layer)]}", {}).values())
        expected = kprune.model_flops([heads[l]], [neurons[l]], seq, 32, 8, adapter.relative)
        assert counted == pytest.approx(expected, rel=1e-12), (l, variant)


@pytest.mark.parametrize("variant", ["separate", "c2p-separate"])
def test_save_load_and_transformers_alone_reproduce_outputs(variant, tmp_path):
    jobs, feeds, expected = [], {}, {}
    for head in ("classification", "qa", "embedding"):
        model = uneven(deberta(variant, head, seed=5))
        out = kprune.save_pruned(model, tmp_path / head)
        loaded = kprune.load_pruned(out)
        assert type(loaded) is type(model)
        ids, mask, types = inputs(seed=6)
        want = outputs(model, ids, mask, types)
        assert torch.equal(outputs(loaded, ids, mask, types), want)
        if head != "embedding":    # the child loads a task head through its Auto class
            auto = "AutoModelForQuestionAnswering" if head == "qa" else "AutoModelForSequenceClassification"
            jobs.append({"name": head, "dir": str(out), "auto_class": auto})
            feeds[head] = (ids, mask)
            expected[head] = outputs(model, ids, mask, None)
    results = run_child(tmp_path, jobs, feeds)
    assert results["blocked"] == ["kprune", "kprune_ext"] and results["leaked"] == []
    for head, want in expected.items():
        assert results["models"][head]["task_mro"][0].startswith("KPruneDebertaV2For")
        torch.testing.assert_close(results["models"][head]["task"], want, atol=1e-5, rtol=0, msg=head)


@pytest.mark.parametrize("task,head", [("classification", "classification"), ("regression", "regression"),
                                       ("qa", "qa"), ("embedding", "embedding")])
def test_prune_meets_the_budget_on_every_head(task, head):
    model = deberta("separate", head, layers=2, seed=7)
    result = kprune.prune(model, random_samples(16, seed=2, types=True), task, 0.5,
                          kprune.KPruneConfig(progress=False, batch_size=4))
    report = result.report
    assert report["flops_after"] <= 0.5 * report["flops_before"] * (1 + 1e-9)
    heads, neurons = EncoderAdapter(result.model).units_kept()
    assert (heads, neurons) == (report["heads_kept"], report["neurons_kept"])
    ids, mask, types = inputs(seed=8)
    assert torch.isfinite(outputs(result.model, ids, mask, types)).all()


@pytest.mark.parametrize("field,value,message", [
    ("conv_kernel_size", 3, "conv_kernel_size=3 .*not supported"),
    ("attention_head_size", 4, "attention_head_size=4 is not supported"),
])
def test_variants_not_supported_are_refused_by_name(field, value, message):
    config = transformers.DebertaV2Config(num_hidden_layers=1, num_labels=2, **SHAPE, **VARIANTS["v3"])
    setattr(config, field, value)
    with pytest.raises(UnsupportedModelError, match=message):
        EncoderAdapter(transformers.DebertaV2ForSequenceClassification(config))


def test_cli_prunes_evaluates_and_describes_deberta(tmp_path, capsys):
    tokenizer = make_bert_tokenizer(tmp_path / "tok")
    config = transformers.DebertaV2Config(num_hidden_layers=2, **dict(SHAPE, vocab_size=len(tokenizer)),
                                          **VARIANTS["v3"])
    torch.manual_seed(0)
    transformers.DebertaV2ForSequenceClassification(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    info = cli_prune_evaluate_info(tmp_path, capsys, tmp_path / "model", ("--seq-len", "10"))
    assert info["architecture"] == "deberta-v2" and info["flops_reduction"] > 0.3
    relative = kprune.flops.RelativeTerms(2 * 32, 2 * 32)    # shared keys: query and key project 32 rows each
    assert info["encoder_flops"] == pytest.approx(kprune.model_flops(info["heads_kept"], info["neurons_kept"], 10,
                                                                     32, 8, relative))


def test_onnx_export_matches_pytorch_at_dynamic_shapes(tmp_path):
    """The v3 layout is exported in tests/test_export.py; here own position projections and token types."""
    ort = pytest.importorskip("onnxruntime")
    model = uneven(deberta("separate", "classification", seed=9))
    output = kprune.export_model(model, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    for count, seed in ((3, 1), (1, 2)):      # lengths up to 20: beyond the clamp at 6 and the exact buckets
        ids, mask, types = inputs(seed=seed, count=count)
        got = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                       "token_type_ids": types.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(got), outputs(model, ids, mask, types), atol=1e-4, rtol=0)
