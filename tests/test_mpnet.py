"""MPNet specifics: the relative attention bias is one table for all heads, computed once by the encoder
and passed to every layer, so a pruned layer must add its kept heads' slices; the CLI runs on MPNet with
a tokenizer that gives token_type_ids (dropped: MPNet takes none). Masked equivalence, round trips and
FLOPs are covered for every family (tests/conftest.py FAMILIES) by the shared tests."""
import copy
import json
import pickle

import torch
import transformers

import kprune
from conftest import model_outputs, padded_batch, random_samples, tiny_config, tiny_model
from fixtures_data import cli_prune_evaluate_info, make_bert_tokenizer
from kprune.adapters import EncoderAdapter
from kprune.sublayers import forward_logits
from kprune.surgery import prune_heads


def test_pruned_layers_take_their_kept_heads_slices_of_the_shared_bias():
    model = tiny_model("mpnet", "regression", layers=2, seed=5)
    adapter = EncoderAdapter(model)
    prune_heads(adapter, 0, [1, 3])
    prune_heads(adapter, 0, [1])          # composes: original head 3
    prune_heads(adapter, 1, [0, 2])
    attn = [layer.attention.attn for layer in model.mpnet.encoder.layer]
    assert [list(a.bias_heads) for a in attn] == [[3], [0, 2]]
    # reference: the layer's own computation with the full bias, written out for the kept heads
    x = torch.randn(2, 7, 32)
    full = model.mpnet.encoder.compute_position_bias(x)
    a = attn[0]
    q, k, v = (proj(x).view(2, 7, 1, 8).transpose(1, 2) for proj in (a.q, a.k, a.v))
    scores = q @ k.transpose(-1, -2) / 8 ** 0.5 + full[:, [3]]
    want = a.o((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, 8))
    with torch.no_grad():
        torch.testing.assert_close(a(x, None, full)[0], want, atol=1e-6, rtol=1e-5)
    # kprune's functional forward (used while pruning) adds the same slices as transformers' forward
    ids, mask = padded_batch(random_samples(4, seed=3), pad_id=1)
    with torch.no_grad():
        functional = forward_logits(adapter, ids, None, mask.bool())
    torch.testing.assert_close(functional, model_outputs(model, ids, mask), atol=1e-5, rtol=1e-4)
    # the pruned module survives copies and pickling
    ids, mask = padded_batch(random_samples(3, seed=1), pad_id=1)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(model_outputs(other, ids, mask), model_outputs(model, ids, mask))


def test_kprune_block_records_the_heads_of_the_shared_bias(tmp_path):
    model = tiny_model("mpnet", "classification", layers=2, seed=6)
    pruned = kprune.prune(model, random_samples(16, seed=2), "classification", 0.6,
                          kprune.KPruneConfig(progress=False, batch_size=4)).model
    block = json.loads((kprune.save_pruned(pruned, tmp_path / "o") / "config.json").read_text())["kprune"]
    attn = [layer.attention.attn for layer in pruned.mpnet.encoder.layer]
    assert block["position_heads"] == [list(a.bias_heads) if hasattr(a, "bias_heads") else [] for a in attn]
    assert list(kprune.load_pruned(tmp_path / "o").mpnet.encoder.layer[1].attention.attn.bias_heads) == \
        block["position_heads"][1]


def test_cli_prunes_evaluates_and_describes_mpnet(tmp_path, capsys):
    tokenizer = make_bert_tokenizer(tmp_path / "tok")
    config = tiny_config("mpnet", "classification")
    config.vocab_size, config.num_labels = len(tokenizer), 2
    torch.manual_seed(0)
    transformers.MPNetForSequenceClassification(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    assert "token_type_ids" in tokenizer("a b")
    info = cli_prune_evaluate_info(tmp_path, capsys, tmp_path / "model")
    assert info["architecture"] == "mpnet" and info["flops_reduction"] > 0.3
