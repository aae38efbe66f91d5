"""Export of (pruned) models to ONNX, with dynamic batch and sequence axes.

The graph is captured with ``torch.export`` (``torch.onnx.export(dynamo=True)``). The older
TorchScript tracer still ships with torch 2.13, but it bakes the example input's attention mask
into the graph of transformers 5 models, so its output ignores padding; the ``torch.export``
path does not. Attention is exported in its plain form (MatMul, Add, Softmax, MatMul), which
onnxruntime runs faster on CPU than the exported ``scaled_dot_product_attention``. Pruned layers
(fewer heads, a :class:`~kprune.surgery.HeadlessAttention`, no FFN neurons) are ordinary modules to it.
By default the graph is then rewritten (exactly) so that onnxruntime's CPU optimiser does not put its
slow fused SkipLayerNormalization kernel in and adds the biases inside the GEMMs: see
:mod:`kprune.onnx_layout`.

The ONNX file takes ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` for every family
but DistilBERT and ModernBERT), all int64 ``[batch, sequence]``, and gives ``logits`` (``[batch, labels]``) or,
for question answering, ``start_logits`` and ``end_logits`` (``[batch, sequence]``). The weights
are stored inside the file, which is written to a temporary file beside the target and moved into
place at the end.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from kprune.adapters import architecture_of, head_kind_of
from kprune.errors import ConfigError, DataError, OutputDirError, UnsupportedModelError

FORMATS = ("onnx",)
MIN_OPSET, MAX_OPSET = 18, 23     # the exporter's own operator implementations start at 18
DEFAULT_OPSET = 20
_PROTOBUF_LIMIT = 2 ** 31 - 2 ** 24   # an ONNX file with embedded weights must stay under 2 GiB


def input_names(model: nn.Module) -> list[str]:
    """Inputs of the exported graph: DistilBERT and ModernBERT have no token types."""
    names = ["input_ids", "attention_mask"]
    return names + ["token_type_ids"] if architecture_of(model).token_types else names


def output_names(model: nn.Module) -> list[str]:
    """Task logits; a bare encoder (e.g. a sentence-embedding model) gives its last hidden states."""
    kind = head_kind_of(model)
    if kind == "embedding":
        return ["last_hidden_state"]
    return ["start_logits", "end_logits"] if kind == "qa" else ["logits"]


class _Outputs(nn.Module):
    """The model with positional tensor inputs and a tuple of plain tensors out."""

    def __init__(self, model: nn.Module, outputs: list[str]):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        result = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **extra)
        return tuple(getattr(result, name) for name in self.outputs)


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is not supported; supported formats: {', '.join(FORMATS)}")
    return fmt


def check_opset(opset: int | None) -> int:
    if opset is None:
        return DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"ONNX opset {opset!r} is not supported; use an integer from {MIN_OPSET} to {MAX_OPSET}")
    return opset


def check_output_file(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Fail early, before any work, if ``path`` cannot receive the exported file."""
    path = Path(path)
    if path.is_dir():
        raise OutputDirError(f"output path {str(path)!r} is a directory; expected a file name such as model.onnx")
    if path.exists() and not overwrite:
        raise OutputDirError(f"output file {str(path)!r} exists; choose a new name or pass overwrite=True")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputDirError(f"cannot write {str(path)!r}: {str(path.parent)!r} is not a directory")
    return path


def _example_inputs(model: nn.Module, names: list[str]) -> tuple[torch.Tensor, ...]:
    device = next(model.parameters()).device
    vocab = int(getattr(model.config, "vocab_size", 2))
    ids = (torch.arange(2 * 8, device=device).reshape(2, 8) * 7 + 3) % vocab
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0                       # padding in the example, so nothing assumes a full mask
    types = torch.zeros_like(ids)
    return tuple({"input_ids": ids, "attention_mask": mask, "token_type_ids": types}[name] for name in names)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs and warns about things unrelated to these models (e.g. torchvision ops)."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def _eager_attention(model: nn.Module):
    """Export the plain attention graph (MatMul, Add, Softmax, MatMul): onnxruntime runs it faster on
    CPU than the exported scaled_dot_product_attention, whose NaN guards add full-size Where ops."""
    previous = getattr(model.config, "_attn_implementation", None)
    switch = previous not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(previous)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_onnx(model: nn.Module, target: Path, opset: int, optimize: bool) -> None:
    import onnx

    names, outputs = input_names(model), output_names(model)
    wrapped = _Outputs(model, outputs)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with _quiet_exporter(), _eager_attention(model):
        program = torch.onnx.export(wrapped, _example_inputs(model, names), dynamo=True, opset_version=opset,
                                    input_names=names, output_names=outputs, verbose=False,
                                    dynamic_shapes=tuple({0: batch, 1: sequence} for _ in names))
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        os.chmod(temp, 0o666 & ~_umask())   # mkstemp makes it private; give it a new file's usual mode
        program.save(temp, external_data=False)
        if optimize:
            from kprune.onnx_layout import rewrite_for_cpu

            graph = onnx.load(temp)
            rewrite_for_cpu(graph)
            onnx.save(graph, temp)
        onnx.checker.check_model(temp)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        raise


def export_model(model: nn.Module | str | os.PathLike, output: str | os.PathLike, fmt: str = "onnx",
                 opset: int | None = None, overwrite: bool = False, optimize: bool = True) -> Path:
    """Export ``model`` (a model object, or a folder read with :func:`kprune.load_pruned`) to ``output``.

    ``fmt`` is ``"onnx"``; ``opset`` the ONNX operator set (18..23, default 20). An existing
    ``output`` is refused unless ``overwrite``. ``optimize`` (default) rewrites the graph for
    onnxruntime on CPU (:func:`kprune.onnx_layout.rewrite_for_cpu`, same outputs); ``False`` keeps the
    exporter's graph. Returns the path written.
    """
    check_format(fmt)
    opset = check_opset(opset)
    target = check_output_file(output, overwrite)
    if not isinstance(model, nn.Module):
        from kprune.io import load_pruned

        if not Path(model).is_dir():
            raise DataError(f"model folder {str(model)!r} is not a directory; expected a folder written by "
                            "kprune.save_pruned or a Hugging Face model folder")
        model = load_pruned(model)
    architecture_of(model), head_kind_of(model)  # UnsupportedModelError for other families and heads
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    if size >= _PROTOBUF_LIMIT:
        raise UnsupportedModelError(f"model weights take {size / 2**30:.2f} GiB; an ONNX file with embedded "
                                    "weights must stay under 2 GiB")
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _write_onnx(model, target, opset, bool(optimize))
    finally:
        model.train(training)
    return target
