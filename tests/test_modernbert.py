"""ModernBERT specifics: local (sliding-window) attention with rotary positions, biases present or absent,
CLS or mean pooling, the pre-norm least-squares target, the bare encoder as an embedding model, variants
refused by name, and the CLI (its tokenizer's token_type_ids are dropped). Masked equivalence, round trips
(also trust_remote_code), FLOPs, export and the mask API are covered for every family (tests/conftest.py
FAMILIES) by the shared tests."""
import copy
import json

import pytest
import torch
import transformers

import kprune
from conftest import model_outputs, padded_batch, random_samples, tiny_config
from fixtures_data import cli_prune_evaluate_info, make_bert_tokenizer, write_tsv
from kprune.adapters import EncoderAdapter
from kprune.cli import main
from kprune.errors import UnsupportedModelError
from kprune.sublayers import forward_logits

BIASES = dict(attention_bias=True, mlp_bias=True, norm_bias=True, classifier_bias=True)


def modernbert(head="classification", layers=3, seed=0, **options):
    """A tiny ModernBERT (layers: global, local, global) with config ``options``; head 'embedding': the bare encoder."""
    config = tiny_config("modernbert", "classification" if head == "embedding" else head, layers)
    for name, value in options.items():
        setattr(config, name, value)
    if head == "regression":
        config.problem_type = "regression"
    torch.manual_seed(seed)
    cls = {"embedding": transformers.ModernBertModel, "qa": transformers.ModernBertForQuestionAnswering}.get(
        head, transformers.ModernBertForSequenceClassification)
    return cls(config).eval()


def functional(model, ids, mask):
    with torch.no_grad():
        out = forward_logits(EncoderAdapter(model), ids, None, mask.bool())
    return out * mask[..., None] if out.dim() == 3 else out


def long_batch(count=6, seed=3):
    return padded_batch(random_samples(count, seed=seed, min_len=9, max_len=24))


def test_local_layers_attend_within_the_window():
    model = modernbert("qa", layers=2)
    assert model.config.layer_types == ["full_attention", "sliding_attention"] and model.config.sliding_window == 3
    ids, mask = long_batch()
    local = model_outputs(model, ids, mask)
    torch.testing.assert_close(functional(model, ids, mask), local, atol=1e-5, rtol=1e-4)
    wide = copy.deepcopy(model)
    wide.config.local_attention = 100           # every key inside the window: a global layer
    wide_out = model_outputs(wide, ids, mask)
    assert not torch.allclose(wide_out, local, atol=1e-3)   # the window changes the outputs of these lengths
    torch.testing.assert_close(functional(wide, ids, mask), wide_out, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("options", [dict(BIASES, classifier_pooling="mean"), dict(classifier_pooling="mean"),
                                     dict(BIASES, rope_parameters={
                                         "full_attention": {"rope_type": "default", "rope_theta": 500.0},
                                         "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}})],
                         ids=["biases-mean", "mean", "biases-theta"])
def test_variants_prune_and_reload_exactly(options, tmp_path):
    model = modernbert("classification", seed=1, **options)
    layers = EncoderAdapter(model).layers
    linears = [m for layer in layers for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    norms = [m for layer in layers for m in layer.modules() if isinstance(m, torch.nn.LayerNorm)]
    with_bias = "attention_bias" in options
    assert all((m.bias is not None) == with_bias for m in linears + norms)
    ids, mask = long_batch(seed=4)
    torch.testing.assert_close(functional(model, ids, mask), model_outputs(model, ids, mask), atol=1e-5, rtol=1e-4)
    # masked run (the model's own forward under the compiled ops) == physically pruned model
    g = torch.Generator().manual_seed(2)
    masks = kprune.UnitMasks.from_kept(model, [[0, 2], [], [1, 2, 3]],
                                       [torch.nonzero(torch.rand(40, generator=g) > 0.5).flatten().tolist(),
                                        list(range(0, 40, 3)), []])
    with kprune.masked(model, masks):
        expected = model_outputs(model, ids, mask)
    pruned = kprune.apply_masks(model, masks)
    torch.testing.assert_close(model_outputs(pruned, ids, mask), expected, atol=1e-5, rtol=1e-4)
    # K-prune end to end; absent biases stay absent; the saved folder reloads exactly
    result = kprune.prune(model, random_samples(16, seed=5, max_len=24), "classification", 0.5,
                          kprune.KPruneConfig(progress=False, batch_size=4))
    assert result.report["flops_reduction"] >= 0.5 - 1e-9
    pruned_linears = [m for layer in EncoderAdapter(result.model).layers for m in layer.modules()
                      if isinstance(m, torch.nn.Linear)]
    assert all((m.bias is not None) == with_bias for m in pruned_linears)
    loaded = kprune.load_pruned(kprune.save_pruned(result.model, tmp_path / "out"))
    assert torch.equal(model_outputs(loaded, ids, mask), model_outputs(result.model, ids, mask))


@pytest.mark.parametrize("options", [{}, BIASES], ids=["no-bias", "bias"])
def test_weight_tuning_target_of_a_pre_norm_layer(options):
    """Refitting an unpruned student towards itself recovers every output projection: the target Y - X - b is
    exactly the sublayer's output A·Wᵀ (Y the residual stream after the sublayer, X before it, A read from LN(X))."""
    teacher = modernbert("regression", layers=2, seed=2, **options)
    student = copy.deepcopy(teacher)
    tuner = kprune.tuner_for(student, teacher, random_samples(12, seed=6, max_len=24))
    adapter = EncoderAdapter(student)
    for k in range(4):
        view = adapter.layer(k // 2)
        out_proj = view.attn_out if k % 2 == 0 else view.ffn_out
        original = out_proj.weight.detach().clone()
        with torch.no_grad():
            out_proj.weight.mul_(0.3)        # so that the solution cannot be the untouched weight by accident
        tuner.refit(k, damping=1e-9)
        torch.testing.assert_close(out_proj.weight.detach(), original, atol=2e-4, rtol=1e-3)
        tuner.advance(k)


def test_bare_encoder_prunes_as_an_embedding_model(tmp_path):
    model = modernbert("embedding", seed=3)
    ids, mask = long_batch(seed=7)
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    weights = mask[..., None].float()
    want = torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)
    torch.testing.assert_close(functional(model, ids, mask), want, atol=1e-5, rtol=1e-4)
    result = kprune.prune(model, random_samples(16, seed=8, max_len=24), "embedding", 0.5,
                          kprune.KPruneConfig(progress=False, batch_size=4))
    assert result.report["flops_reduction"] >= 0.5 - 1e-9
    folder = kprune.save_pruned(result.model, tmp_path / "emb")
    loaded = kprune.load_pruned(folder)
    assert type(loaded) is transformers.ModernBertModel
    with torch.no_grad():
        again = loaded(input_ids=ids, attention_mask=mask).last_hidden_state
        before = result.model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(again, before)


def test_unsupported_variants_are_refused_by_name():
    model = modernbert("classification", layers=2)
    model.config.layer_types = ["full_attention", "chunked_attention"]
    with pytest.raises(UnsupportedModelError, match="'chunked_attention'.*full_attention, sliding_attention"):
        EncoderAdapter(model)
    model = modernbert("classification", layers=2)
    model.config.__dict__["classifier_pooling"] = "max"
    with pytest.raises(UnsupportedModelError, match="classifier_pooling='max'.*cls, mean"):
        EncoderAdapter(model)
    with pytest.raises(UnsupportedModelError, match="ModernBertForMaskedLM"):
        EncoderAdapter(transformers.ModernBertForMaskedLM(tiny_config("modernbert", "classification")))


def test_cli_prunes_evaluates_and_describes_modernbert(tmp_path, capsys):
    tokenizer = make_bert_tokenizer(tmp_path / "tok")
    assert "token_type_ids" in tokenizer("a b")    # given by the tokenizer, not taken by ModernBERT
    config = tiny_config("modernbert", "classification")
    config.vocab_size, config.num_labels = len(tokenizer), 2
    config.pad_token_id, config.cls_token_id, config.sep_token_id = (tokenizer.pad_token_id, tokenizer.cls_token_id,
                                                                     tokenizer.sep_token_id)
    torch.manual_seed(0)
    transformers.ModernBertForSequenceClassification(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    info = cli_prune_evaluate_info(tmp_path, capsys, tmp_path / "model", ("--seq-len", "32"))
    assert info["architecture"] == "modernbert" and info["flops_reduction"] > 0.3
    # a gated neuron costs 6·s·d (value row, gate row, output column)
    d, s = 32, 32
    assert info["encoder_flops_unpruned"] == pytest.approx(
        2 * (4 * (6 * s * d * 8 + 4 * s * s * 8 + 2 * s * 8 * d) + 40 * 6 * s * d))


def test_cli_prunes_the_encoder_of_a_masked_lm_folder_as_an_embedding_model(tmp_path, capsys):
    from test_embedding import sts_rows

    tokenizer = make_bert_tokenizer(tmp_path / "tok")
    config = tiny_config("modernbert", "classification")
    config.vocab_size, config.pad_token_id = len(tokenizer), tokenizer.pad_token_id
    torch.manual_seed(1)
    transformers.ModernBertForMaskedLM(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    write_tsv(tmp_path / "STS-B" / "train.tsv", sts_rows(40, seed=1))
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(tmp_path / "model"), "--task", "embedding", "--data", str(tmp_path / "STS-B"),
                 "--flops-reduction", "0.4", "--output", str(out), "--num-tokens", "300", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["flops_reduction"] >= 0.4 - 1e-9
    loaded = kprune.load_pruned(out)
    assert type(loaded) is transformers.ModernBertModel
    assert EncoderAdapter(loaded).units_kept() != ([4, 4], [40, 40])
