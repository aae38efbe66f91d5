import pytest
import torch
import transformers

from conftest import model_outputs, padded_batch, random_samples, tiny_model
from kprune.adapters import ARCHITECTURES, EncoderAdapter
from kprune.errors import UnsupportedModelError
from kprune.sublayers import forward_logits


def test_functional_forward_equals_transformers(family_head):
    family, head = family_head
    model = tiny_model(family, head)
    ids, mask = padded_batch(random_samples(6))
    reference = model_outputs(model, ids, mask)
    with torch.no_grad():
        mine = forward_logits(EncoderAdapter(model), ids, None, mask.bool())
    if head == "qa":
        mine = mine * mask[..., None]
    torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-4)


def test_unsupported_model_type_is_refused_by_name():
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, num_labels=2)
    model = transformers.GPT2ForSequenceClassification(config)
    with pytest.raises(UnsupportedModelError, match="'gpt2'.*bert.*distilbert"):
        EncoderAdapter(model)


def test_unsupported_head_is_refused_by_name():
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=20)
    with pytest.raises(UnsupportedModelError, match="BertForMaskedLM.*ForSequenceClassification"):
        EncoderAdapter(transformers.BertForMaskedLM(config))


def test_every_family_is_in_the_table():
    assert {"bert", "roberta", "xlm-roberta", "distilbert", "electra"} <= set(ARCHITECTURES)


@pytest.mark.parametrize("name,config", [
    ("deberta", lambda: transformers.DebertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=20, num_labels=2)),
])
def test_encoders_not_yet_supported_are_refused_by_name(name, config):
    model = transformers.AutoModelForSequenceClassification.from_config(config())
    with pytest.raises(UnsupportedModelError, match=f"'{name}'.*supported model types:.*mpnet"):
        EncoderAdapter(model)
