"""Saving and reloading pruned models: weights + per-layer shapes, rebuilt on load.

The output folder holds ``model.safetensors``, ``config.json`` (the model's config plus a
``kprune`` block of per-layer kept heads and neurons, and an ``auto_map``), ``modeling_kprune.py``
(a verbatim copy of :mod:`kprune.remote_modeling`, so that transformers alone rebuilds the model with
``trust_remote_code=True``), the tokenizer if one is given, and any extra files (e.g. ``report.json``).
It is written into a temporary folder beside the target and moved into place at the
end, so a failure never leaves a half-written output.
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import transformers
from kprune import remote_modeling
from kprune.adapters import EncoderAdapter, architecture_of, head_kind_of
from kprune.errors import DataError, OutputDirError
from kprune.sentence_files import sentence_transformers_files

KPRUNE_KEY = "kprune"
FORMAT_VERSION = 1
MODELING_FILE = "modeling_kprune.py"
TASK_CLASSES = {"classification": "ForSequenceClassification", "qa": "ForQuestionAnswering"}  # by head kind


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Fail early, before any work, if ``path`` cannot receive a pruned model."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"output path {str(path)!r} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputDirError(f"output directory {str(path)!r} exists and is not empty; "
                             "choose a new directory or pass overwrite=True")
    return path


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().contiguous().cpu()
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if tensor.numel() and key in seen:  # shared storage: safetensors wants separate copies
            tensor = tensor.clone()
        seen.add(key)
        tensors[name] = tensor
    return tensors


def kprune_block(model: nn.Module) -> dict:
    adapter = EncoderAdapter(model)
    heads, neurons = adapter.units_kept()
    block = {"format_version": FORMAT_VERSION, "heads_kept": heads, "neurons_kept": neurons,
             "original_heads": adapter.original_heads, "original_neurons": adapter.original_neurons}
    bias_heads = remote_modeling.position_heads(model)
    if bias_heads is not None:   # the original heads each layer kept of a shared position bias (MPNet)
        block["position_heads"] = bias_heads
    return block


def auto_map(model: nn.Module) -> dict[str, str]:
    """The config's ``auto_map``: ``AutoModel`` (the bare encoder) and the task's Auto class, to the
    classes of ``modeling_kprune.py`` that rebuild the pruned shapes."""
    prefix = MODELING_FILE.removesuffix(".py") + "." + remote_modeling.CLASS_PREFIX
    prefix += remote_modeling.LAYOUTS[architecture_of(model).family].stem
    kind = head_kind_of(model)
    if kind == "embedding":     # a bare encoder: AutoModel is its class
        return {"AutoModel": prefix + "Model"}
    return {"AutoModel": prefix + "Model", "AutoModel" + TASK_CLASSES[kind]: prefix + TASK_CLASSES[kind]}


def _ordinary_modes(folder: Path) -> None:
    """mkdtemp makes the staging folder private (0700): give the output the modes any new folder and
    file would get under the user's umask (0755 / 0644 with the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def save_pruned(model: nn.Module, output_dir: str | os.PathLike, tokenizer=None, extra_files: dict | None = None,
                overwrite: bool = False) -> Path:
    """Write the pruned model (and tokenizer, extra files) to ``output_dir``, whole or not at all."""
    target = check_output_dir(output_dir, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file(_state_dict(model), str(staging / "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config[KPRUNE_KEY] = kprune_block(model)
        config["auto_map"] = auto_map(model)
        shutil.copyfile(remote_modeling.__file__, staging / MODELING_FILE)
        # the class actually saved: a source config may name another (e.g. BertModel for an encoder given a
        # classification head, or *ForMaskedLM for a sentence-embedding encoder)
        config["architectures"] = [type(model).__name__.removeprefix(remote_modeling.CLASS_PREFIX)]
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging))
        files = dict(sentence_transformers_files(model) if head_kind_of(model) == "embedding" else {})
        for name, content in dict(files, **(extra_files or {})).items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            data = content if isinstance(content, (str, bytes)) else json.dumps(content, indent=2) + "\n"
            mode = "wb" if isinstance(data, bytes) else "w"
            with open(staging / name, mode) as handle:
                handle.write(data)
        _ordinary_modes(staging)
        if target.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, backup / "old")
            os.replace(staging, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def load_pruned(model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned` (or any unpruned Hugging Face folder)."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise DataError(f"{str(model_dir)!r} is not a model folder: it has no config.json")
    raw = json.loads(config_path.read_text())
    block = raw.pop(KPRUNE_KEY, None)
    if block is None:  # an unpruned checkpoint
        config = transformers.AutoConfig.from_pretrained(str(model_dir))
        cls = getattr(transformers, (config.architectures or [""])[0], None)
        if cls is None:
            raise DataError(f"{str(config_path)!r} names no known architecture: {config.architectures!r}")
        return cls.from_pretrained(str(model_dir)).to(device).eval()
    config = transformers.AutoConfig.for_model(**raw)
    names = config.architectures or []
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        raise DataError(f"{str(config_path)!r} names no known architecture: {names!r}")
    weights = load_file(str(model_dir / "model.safetensors"))
    # an encoder taken from e.g. a *ForMaskedLM has no pooler: build it without one
    no_pooler = "add_pooling_layer" in inspect.signature(cls.__init__).parameters and \
        not any(key.startswith("pooler.") for key in weights)
    model = cls(config, add_pooling_layer=False) if no_pooler else cls(config)
    try:
        remote_modeling.shrink(model, block["heads_kept"], block["neurons_kept"], block.get("position_heads"))
    except (KeyError, ValueError) as exc:
        raise DataError(f"{str(config_path)!r}: the kprune block does not fit {names[0]}: {exc}") from exc
    result = model.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise DataError(f"{str(model_dir)!r}: model.safetensors does not match config.json "
                        f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})")
    return model.to(device).eval()
