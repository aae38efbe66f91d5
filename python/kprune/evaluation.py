"""Run a (pruned or unpruned) model over task data and score it.

:func:`predict_logits` batches features of similar length together (padding is wasted work) under
``torch.inference_mode``; :func:`evaluate` goes from a data path to the task's metrics;
:func:`postprocess_qa` turns start/end logits of document windows into one answer text per question.
"""
from __future__ import annotations

import inspect
import logging
import os
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from .data import Example, collate, encode, load_examples
from .errors import ConfigError, DataError
from .metrics import compute_metrics, squad_scores
from .tasks import TaskSpec, get_task

__all__ = ["predict_logits", "evaluate", "postprocess_qa"]

logger = logging.getLogger(__name__)

#: QA post-processing defaults (as in the BERT/Hugging Face SQuAD scripts).
N_BEST = 20
MAX_ANSWER_TOKENS = 30
NULL_SCORE_THRESHOLD = 0.0


def _model_device(model: torch.nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def _accepts(model: torch.nn.Module, name: str) -> bool:
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return True
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _split_outputs(outputs: Any, width: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, None) for a classification/regression head, (start_logits, end_logits) for QA."""
    def get(name):
        if isinstance(outputs, dict):
            return outputs.get(name)
        return getattr(outputs, name, None)

    start, end = get("start_logits"), get("end_logits")
    if start is not None and end is not None:
        return start, end
    logits = get("logits")
    if logits is not None:
        return logits, None
    if isinstance(outputs, (tuple, list)) and outputs:
        first = outputs[0]
        if len(outputs) >= 2 and torch.is_tensor(outputs[1]) and first.dim() == 2 \
                and first.shape == outputs[1].shape and first.shape[1] == width:
            return first, outputs[1]
        return first, None
    if torch.is_tensor(outputs):
        return outputs, None
    raise DataError(f"cannot read logits from model output of type {type(outputs).__name__}")


def predict_logits(model: torch.nn.Module, features: Sequence[dict], batch_size: int = 64,
                   pad_token_id: int = 0):
    """The model's outputs for ``features``, in the order of ``features``.

    Features are sorted by length and batched (``collate``), so that padding is minimal; the model runs
    in eval mode (restored afterwards) under ``torch.inference_mode`` on its own device.

    Returns:
        A classification/regression head: ``logits``, float32 tensor ``[N, num_labels]`` on the CPU.
        A QA head: ``(start_logits, end_logits)``, two float32 tensors ``[N, longest feature]``; the
        positions past a feature's own length hold ``-inf``.
    """
    if not features:
        raise DataError("no features to run the model on")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    lengths = [int(f["input_ids"].numel()) for f in features]
    order = sorted(range(len(features)), key=lambda i: lengths[i])
    width = max(lengths)
    device = _model_device(model)
    pass_types = _accepts(model, "token_type_ids")
    first_result: torch.Tensor | None = None
    second_result: torch.Tensor | None = None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for begin in tqdm(range(0, len(order), batch_size), desc="predict", unit="batch",
                              leave=False, disable=None):
                indices = order[begin:begin + batch_size]
                batch = collate([features[i] for i in indices], pad_token_id=pad_token_id)
                inputs = {"input_ids": batch["input_ids"].to(device),
                          "attention_mask": batch["attention_mask"].to(device)}
                if pass_types and "token_type_ids" in batch:
                    inputs["token_type_ids"] = batch["token_type_ids"].to(device)
                first, second = _split_outputs(model(**inputs), batch["input_ids"].shape[1])
                first = first.float().cpu()
                rows = torch.tensor(indices, dtype=torch.long)
                if second is None:
                    if first.dim() == 1:
                        first = first[:, None]
                    if first_result is None:
                        first_result = torch.empty((len(features), first.shape[-1]), dtype=torch.float32)
                    first_result[rows] = first
                else:
                    second = second.float().cpu()
                    if first_result is None:
                        first_result = torch.full((len(features), width), float("-inf"))
                        second_result = torch.full((len(features), width), float("-inf"))
                    columns = first.shape[1]
                    first_result[rows, :columns] = first
                    second_result[rows, :columns] = second
                    # positions past each feature's own length stay -inf
                    for index in indices:
                        first_result[index, lengths[index]:] = float("-inf")
                        second_result[index, lengths[index]:] = float("-inf")
    finally:
        model.train(was_training)
    if second_result is None:
        return first_result
    return first_result, second_result


def postprocess_qa(examples: Sequence[Example], features: Sequence[dict], start_logits: torch.Tensor,
                   end_logits: torch.Tensor, version_2: bool, n_best: int = N_BEST,
                   max_answer_tokens: int = MAX_ANSWER_TOKENS,
                   null_score_threshold: float = NULL_SCORE_THRESHOLD) -> dict[str, str]:
    """One answer text per question id from the logits of its document windows.

    Per window, the ``n_best`` highest start and end logits among context tokens are paired; a span is
    valid when start <= end and it has at most ``max_answer_tokens`` tokens; its score is the sum of the
    two logits. The best valid span over all windows of a question is its answer (the text between the
    span's character offsets). SQuAD v2: the null score is the smallest start+end logit of the CLS token
    (index 0) over the question's windows; the prediction is the empty string (no answer) when the null
    score exceeds the best span score by more than ``null_score_threshold``.
    """
    best: dict[int, tuple[float, str]] = {}
    null: dict[int, float] = {}
    for f, feature in enumerate(features):
        index = feature["example_index"]
        length = int(feature["input_ids"].numel())
        starts, ends = start_logits[f, :length].double(), end_logits[f, :length].double()
        null_score = float(starts[0] + ends[0])
        null[index] = min(null.get(index, null_score), null_score)
        offsets = feature["offset_mapping"]
        in_context = torch.tensor([o is not None for o in offsets[:length]], dtype=torch.bool)
        count = int(in_context.sum())
        if count == 0:
            continue
        k = min(n_best, count)
        top_starts = torch.topk(starts.masked_fill(~in_context, float("-inf")), k).indices
        top_ends = torch.topk(ends.masked_fill(~in_context, float("-inf")), k).indices
        scores = starts[top_starts][:, None] + ends[top_ends][None, :]
        span = top_ends[None, :] - top_starts[:, None]
        valid = (span >= 0) & (span < max_answer_tokens)
        if not bool(valid.any()):
            continue
        scores = scores.masked_fill(~valid, float("-inf"))
        flat = int(torch.argmax(scores))
        i, j = divmod(flat, k)
        score = float(scores[i, j])
        if index not in best or score > best[index][0]:
            start_token, end_token = int(top_starts[i]), int(top_ends[j])
            context = examples[index].context
            text = context[offsets[start_token][0]:offsets[end_token][1]]
            best[index] = (score, text)
    predictions: dict[str, str] = {}
    for index, example in enumerate(examples):
        qid = str(example.id if example.id is not None else index)
        if index not in best:
            predictions[qid] = ""
            continue
        score, text = best[index]
        if version_2 and null.get(index, float("-inf")) - score > null_score_threshold:
            predictions[qid] = ""
        else:
            predictions[qid] = text
    return predictions


def _model_label_order(model: torch.nn.Module, spec: TaskSpec) -> torch.Tensor | None:
    """Map the model's class ids to the task's when its ``id2label`` names the task's classes."""
    config = getattr(model, "config", None)
    id2label = getattr(config, "id2label", None)
    if not spec.label_names or not id2label or len(id2label) != spec.num_labels:
        return None
    try:
        names = {int(k): str(v).strip().lower() for k, v in id2label.items()}
    except (TypeError, ValueError):
        return None
    if sorted(names.values()) != sorted(spec.label_names) or sorted(names) != list(range(spec.num_labels)):
        return None
    mapping = torch.tensor([spec.label_names.index(names[i]) for i in range(spec.num_labels)])
    if torch.equal(mapping, torch.arange(spec.num_labels)):
        return None
    logger.info("model's classes %s reordered to the task's %s", [names[i] for i in range(spec.num_labels)],
                list(spec.label_names))
    return mapping


def evaluate(model: torch.nn.Module, tokenizer, task: str, path: str | os.PathLike, split: str = "dev",
             batch_size: int = 64, max_length: int | None = None, doc_stride: int | None = None,
             max_examples: int | None = None) -> dict[str, float]:
    """Score ``model`` on ``split`` of the task data at ``path`` (see :func:`kprune.data.load_examples`).

    Classification: argmax of the logits (reordered to the task's classes when the model's ``id2label``
    names them); regression: the raw score; both against the labels, with
    :func:`kprune.metrics.compute_metrics` (0..1 scale). QA: :func:`postprocess_qa` then
    :func:`kprune.metrics.squad_scores` (0..100). ``max_examples`` keeps the first N examples.

    Returns:
        The task's metrics plus ``"num_examples"``.

    Raises:
        DataError: unlabelled data, or a model head that does not fit the task.
    """
    spec = get_task(task)
    examples = load_examples(spec, path, split)
    if max_examples is not None:
        if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
            raise ConfigError(f"max_examples must be a positive integer or None, got {max_examples!r}")
        examples = examples[:max_examples]
    pad_token_id = getattr(tokenizer, "pad_token_id", None)
    pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
    features = encode(spec, examples, tokenizer, max_length=max_length, doc_stride=doc_stride)
    if spec.kind == "qa":
        if any(not e.answers and not e.is_impossible for e in examples):
            raise DataError(f"{os.fspath(path)!r} (split {split!r}) has questions without gold answers: "
                            f"cannot evaluate on unlabelled data")
        output = predict_logits(model, features, batch_size=batch_size, pad_token_id=pad_token_id)
        if not isinstance(output, tuple):
            raise DataError(f"task {spec.name!r} needs a question-answering model (start/end logits); the "
                            f"model gives logits of shape {tuple(output.shape)}")
        start_logits, end_logits = output
        predictions = postprocess_qa(examples, features, start_logits, end_logits,
                                     version_2=spec.name == "squad_v2")
        results = dict(squad_scores(predictions, examples, version_2=spec.name == "squad_v2"))
        results.pop("total", None)
    else:
        unlabelled = sum(e.label is None for e in examples)
        if unlabelled:
            raise DataError(f"{unlabelled} of {len(examples)} examples of {os.fspath(path)!r} (split "
                            f"{split!r}) have no label: cannot evaluate on unlabelled (test) data")
        output = predict_logits(model, features, batch_size=batch_size, pad_token_id=pad_token_id)
        if isinstance(output, tuple):
            raise DataError(f"task {spec.name!r} needs a sequence classification model; this one gives "
                            f"start/end logits (question answering)")
        expected = 1 if spec.kind == "regression" else spec.num_labels
        if output.shape[1] != expected:
            raise DataError(f"the model has {output.shape[1]} outputs but task {spec.name!r} needs "
                            f"{expected} ({spec.kind})")
        references = torch.tensor([e.label for e in examples],
                                  dtype=torch.float64 if spec.kind == "regression" else torch.long)
        if spec.kind == "regression":
            predictions = output[:, 0]
        else:
            predictions = output.argmax(dim=-1)
            mapping = _model_label_order(model, spec)
            if mapping is not None:
                predictions = mapping[predictions]
        results = compute_metrics(spec, predictions, references)
    results["num_examples"] = len(examples)
    logger.info("%s %s: %s", spec.name, split, results)
    return results
