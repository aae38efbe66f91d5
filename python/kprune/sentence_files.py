"""The sentence-transformers files of an embedding model's folder (mean pooling, normalisation).

A pruned embedding model is saved as a bare encoder plus these module files, so that
``SentenceTransformer(folder, trust_remote_code=True)`` rebuilds the same pipeline (encoder -> mean
pooling over real tokens -> L2 normalisation); the pruned shapes come from ``modeling_kprune.py``, which
sentence-transformers (like transformers) runs only when trusted. Files found in the input folder are
carried over verbatim (e.g. its ``max_seq_length``), after checking that it pools by the mean.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from kprune.errors import ConfigError

POOLING_FILE = "1_Pooling/config.json"
FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", POOLING_FILE)


def sentence_transformers_files(model: nn.Module) -> dict[str, dict | list]:
    """Default module files for an encoder whose embedding is the normalised mean of its last hidden states."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    pooling = {"word_embedding_dimension": int(model.config.hidden_size), "pooling_mode_cls_token": False,
               "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False}
    return {"modules.json": modules, POOLING_FILE: pooling,
            "sentence_bert_config.json": {"do_lower_case": False}}


def source_files(model_dir: str | os.PathLike) -> dict[str, str]:
    """The sentence-transformers files of an input folder (verbatim text), checked to use mean pooling.

    Raises:
        ConfigError: the folder's pooling is not the mean over tokens (kprune's embedding head).
    """
    folder = Path(model_dir)
    found = {name: (folder / name).read_text() for name in FILES if (folder / name).is_file()}
    if POOLING_FILE in found:
        pooling = json.loads(found[POOLING_FILE])
        modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode_") and v)
        if modes != ["pooling_mode_mean_tokens"]:
            raise ConfigError(f"{str(folder / POOLING_FILE)!r} pools by {modes}; task='embedding' prunes models "
                              "whose embedding is the mean over tokens (pooling_mode_mean_tokens only)")
    return found
