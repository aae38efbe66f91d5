"""Fine-tune a pretrained encoder on a task, so that there is a fine-tuned model to prune.

K-prune needs a *fine-tuned* model; the one encoder installable offline (all-MiniLM-L6-v2) is not
fine-tuned for any task. :func:`finetune` trains one with a plain, reproducible recipe (AdamW, linear
warm-up and decay, length-bucketed shuffled batches), evaluates it on the dev split and saves it with
``save_pretrained`` plus a ``finetune.json`` record (settings and dev metrics). The output directory
appears atomically: a failed or interrupted run leaves nothing behind.

:func:`ensure_finetuned` is the cached form: it returns the output directory unchanged when its
``finetune.json`` records the same settings, and trains otherwise.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from kprune.errors import ConfigError, OutputDirError

logger = logging.getLogger(__name__)

RECORD_NAME = "finetune.json"
RECORD_VERSION = 1

# Learning rates that work for a small encoder (MiniLM-L6, BERT-base) in a few epochs.
DEFAULT_LEARNING_RATE = {"classification": 5e-5, "regression": 5e-5, "qa": 1e-4}

# Keys of an encoded feature that the Hugging Face models accept.
MODEL_INPUT_KEYS = ("input_ids", "token_type_ids", "attention_mask", "labels",
                    "start_positions", "end_positions")

# Batches are formed by sorting this many batches' worth of shuffled features by length.
BUCKET_BATCHES = 50


def default_learning_rate(kind: str) -> float:
    """The default peak learning rate for a task kind ("classification", "regression", "qa")."""
    if kind not in DEFAULT_LEARNING_RATE:
        raise ConfigError(f"unknown task kind {kind!r}; accepted: {sorted(DEFAULT_LEARNING_RATE)}")
    return DEFAULT_LEARNING_RATE[kind]


def finetune(model_dir: str | os.PathLike, task: str, data_path: str | os.PathLike,
             output_dir: str | os.PathLike, *, epochs: float = 3, learning_rate: float | None = None,
             batch_size: int = 32, max_length: int = 128, doc_stride: int = 128,
             max_train_examples: int | None = None, seed: int = 0, warmup_ratio: float = 0.1,
             weight_decay: float = 0.01, num_threads: int | None = None,
             eval_batch_size: int = 64, max_eval_examples: int | None = None) -> dict:
    """Fine-tune the encoder in ``model_dir`` on ``task`` and save it into ``output_dir``.

    ``data_path`` is what :func:`kprune.data.load_examples` accepts (a GLUE task folder, a SQuAD
    folder or file, ...). ``learning_rate=None`` picks :data:`DEFAULT_LEARNING_RATE` for the task's
    kind. ``epochs`` may be fractional (the last epoch is cut short). ``max_train_examples`` trains on
    a seeded random subset of the training examples. ``num_threads`` sets torch's intra-op threads
    for the duration of the call.

    Returns the record also written to ``output_dir/finetune.json``: ``settings``, ``dev_metrics``,
    ``train_loss`` (mean per epoch), sizes and seconds. If ``output_dir`` exists it must be an earlier
    fine-tuning output (it has a ``finetune.json``) or empty; it is replaced only when the new run
    has succeeded.
    """
    from kprune import data as kdata
    from kprune import evaluation as keval
    from kprune.tasks import get_task

    spec = get_task(task)
    settings = finetune_settings(model_dir, task, data_path, epochs=epochs,
                                 learning_rate=learning_rate, batch_size=batch_size,
                                 max_length=max_length, doc_stride=doc_stride,
                                 max_train_examples=max_train_examples, seed=seed,
                                 warmup_ratio=warmup_ratio, weight_decay=weight_decay,
                                 max_eval_examples=max_eval_examples)
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)

    with _num_threads(num_threads):
        _seed_everything(seed)
        tokenizer = _load_tokenizer(model_dir)
        model = _load_model(model_dir, spec)

        examples = kdata.load_examples(spec, data_path, split="train")
        if max_train_examples is not None and max_train_examples < len(examples):
            chosen = sorted(random.Random(seed).sample(range(len(examples)), max_train_examples))
            examples = [examples[i] for i in chosen]
        features = kdata.encode(spec, examples, tokenizer, max_length=max_length,
                                doc_stride=doc_stride)
        if not features:
            from kprune.errors import DataError
            raise DataError(f"no training features for task {spec.name!r} from {str(data_path)!r}")
        logger.info("fine-tuning %s on %s: %d examples, %d features, %s epochs, lr %g",
                    model_dir, spec.name, len(examples), len(features), epochs,
                    settings["learning_rate"])

        start = time.perf_counter()
        train_loss = train(model, features, pad_token_id=_pad_token_id(tokenizer),
                           regression=spec.kind == "regression", epochs=epochs,
                           learning_rate=settings["learning_rate"], batch_size=batch_size,
                           warmup_ratio=warmup_ratio, weight_decay=weight_decay, seed=seed,
                           desc=f"fine-tune {spec.name}")
        train_seconds = time.perf_counter() - start

        start = time.perf_counter()
        model.eval()
        dev_metrics = keval.evaluate(model, tokenizer, spec, data_path, split="dev",
                                     batch_size=eval_batch_size, max_length=max_length,
                                     doc_stride=doc_stride, max_examples=max_eval_examples)
        eval_seconds = time.perf_counter() - start
        logger.info("fine-tuned %s: dev %s", spec.name, dev_metrics)

        record = {
            "version": RECORD_VERSION,
            "settings": settings,
            "dev_metrics": {k: _plain(v) for k, v in dev_metrics.items()},
            "main_metric": spec.main_metric,
            "train_loss": train_loss,
            "num_train_examples": len(examples),
            "num_train_features": len(features),
            "train_seconds": round(train_seconds, 2),
            "eval_seconds": round(eval_seconds, 2),
            "num_threads": torch.get_num_threads(),
        }
        _save_atomically(model, tokenizer, record, output_dir)
    return record


def ensure_finetuned(model_dir: str | os.PathLike, task: str, data_path: str | os.PathLike,
                     output_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Return ``output_dir`` fine-tuned with these settings, training only when it is not yet.

    Takes the arguments of :func:`finetune`. The cache is valid when ``output_dir/finetune.json``
    records exactly the settings this call would use (paths, data file sizes, hyperparameters;
    ``num_threads`` does not count); otherwise the directory is retrained and replaced.
    """
    output_dir = Path(output_dir)
    settings_kwargs = {k: v for k, v in kwargs.items()
                       if k not in ("num_threads", "eval_batch_size")}
    wanted = finetune_settings(model_dir, task, data_path, **settings_kwargs)
    record = read_record(output_dir)
    if record is not None and record.get("settings") == wanted:
        logger.info("reusing fine-tuned %s in %s (dev %s)", task, output_dir,
                    record.get("dev_metrics"))
        return output_dir
    if record is not None:
        logger.info("settings of %s differ from the cached run: fine-tuning again", output_dir)
    finetune(model_dir, task, data_path, output_dir, **kwargs)
    return output_dir


def read_record(output_dir: str | os.PathLike) -> dict | None:
    """The ``finetune.json`` record of a fine-tuning output, or None if there is none readable."""
    path = Path(output_dir) / RECORD_NAME
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def finetune_settings(model_dir: str | os.PathLike, task: str, data_path: str | os.PathLike, *,
                      epochs: float = 3, learning_rate: float | None = None, batch_size: int = 32,
                      max_length: int = 128, doc_stride: int = 128,
                      max_train_examples: int | None = None, seed: int = 0,
                      warmup_ratio: float = 0.1, weight_decay: float = 0.01,
                      max_eval_examples: int | None = None) -> dict:
    """The settings that determine a fine-tuning result, as stored in ``finetune.json``."""
    from kprune.tasks import get_task

    spec = get_task(task)
    if not epochs > 0:
        raise ConfigError(f"epochs must be > 0, got {epochs!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
    if not 0 <= warmup_ratio < 1:
        raise ConfigError(f"warmup_ratio must be in [0, 1), got {warmup_ratio!r}")
    if max_train_examples is not None and max_train_examples < 1:
        raise ConfigError(f"max_train_examples must be >= 1 or None, got {max_train_examples!r}")
    if learning_rate is None:
        learning_rate = default_learning_rate(spec.kind)
    if not learning_rate > 0:
        raise ConfigError(f"learning_rate must be > 0, got {learning_rate!r}")
    return {
        "model_dir": str(Path(model_dir).resolve()),
        "model_fingerprint": _fingerprint(model_dir),
        "task": spec.name,
        "data_path": str(Path(data_path).resolve()),
        "data_fingerprint": _fingerprint(data_path),
        "epochs": epochs,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "max_length": max_length,
        "doc_stride": doc_stride,
        "max_train_examples": max_train_examples,
        "seed": seed,
        "warmup_ratio": warmup_ratio,
        "weight_decay": weight_decay,
        "max_eval_examples": max_eval_examples,
    }


def train(model: torch.nn.Module, features: list[dict], *, pad_token_id: int,
          regression: bool = False, epochs: float = 3, learning_rate: float = 5e-5,
          batch_size: int = 32, warmup_ratio: float = 0.1, weight_decay: float = 0.01,
          seed: int = 0, desc: str = "fine-tune") -> list[float]:
    """Train ``model`` in place on encoded ``features``; return the mean loss of each epoch.

    AdamW (no weight decay on biases and LayerNorm weights), gradients clipped to norm 1, linear
    warm-up over ``warmup_ratio`` of the steps then linear decay to zero; batches of similar length,
    shuffled with ``seed``.
    """
    from kprune import data as kdata

    lengths = [int(f["input_ids"].shape[-1]) for f in features]
    steps_per_epoch = math.ceil(len(features) / batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * epochs))
    warmup_steps = int(warmup_ratio * total_steps)

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
         else decay).append(param)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=learning_rate)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    epoch_losses: list[float] = []
    step = 0
    with tqdm(total=total_steps, desc=desc, unit="step", mininterval=5.0) as bar:
        for _ in range(math.ceil(epochs)):
            loss_sum, loss_count = 0.0, 0
            for batch_indices in length_bucketed_batches(lengths, batch_size, generator):
                if step >= total_steps:
                    break
                batch = kdata.collate([features[i] for i in batch_indices], pad_token_id)
                inputs = {k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}
                if regression and "labels" in inputs:
                    inputs["labels"] = inputs["labels"].float()
                loss = model(**inputs).loss
                if not torch.isfinite(loss):
                    from kprune.errors import NumericalError
                    raise NumericalError(f"non-finite training loss {loss.item()} at step {step}; "
                                         f"try a lower learning_rate than {learning_rate}")
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                loss_sum += loss.item() * len(batch_indices)
                loss_count += len(batch_indices)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / loss_count:.4f}", refresh=False)
            if loss_count:
                epoch_losses.append(round(loss_sum / loss_count, 6))
    model.eval()
    return epoch_losses


def length_bucketed_batches(lengths: list[int], batch_size: int,
                            generator: torch.Generator) -> Iterator[list[int]]:
    """Yield one epoch of batches (lists of indices) of similar lengths, in a shuffled order.

    The indices are shuffled, cut into chunks of ``BUCKET_BATCHES`` batches, each chunk sorted by
    length and cut into batches, and the batches of all chunks shuffled again. Deterministic given
    the generator's state.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    chunk = batch_size * BUCKET_BATCHES
    batches = []
    for begin in range(0, len(order), chunk):
        part = sorted(order[begin:begin + chunk], key=lambda i: lengths[i])
        batches.extend(part[j:j + batch_size] for j in range(0, len(part), batch_size))
    for b in torch.randperm(len(batches), generator=generator).tolist():
        yield batches[b]


# ---------------------------------------------------------------------------------------------
# helpers

def _load_tokenizer(model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(model_dir))


def _load_model(model_dir, spec):
    """Load the encoder with a freshly initialised head for the task, without the usual warning."""
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification
    from transformers import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        if spec.kind == "qa":
            model = AutoModelForQuestionAnswering.from_pretrained(str(model_dir))
        elif spec.kind == "regression":
            model = AutoModelForSequenceClassification.from_pretrained(
                str(model_dir), num_labels=1, problem_type="regression")
        else:
            names = spec.label_names or tuple(f"LABEL_{i}" for i in range(spec.num_labels))
            model = AutoModelForSequenceClassification.from_pretrained(
                str(model_dir), num_labels=spec.num_labels,
                problem_type="single_label_classification",
                id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    finally:
        hf_logging.set_verbosity(verbosity)
    return model


def _pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


@contextlib.contextmanager
def _num_threads(num_threads: int | None):
    if num_threads is None:
        yield
        return
    if num_threads < 1:
        raise ConfigError(f"num_threads must be >= 1 or None, got {num_threads!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fingerprint(path: str | os.PathLike) -> dict[str, int]:
    """Sizes of a file, or of the files directly inside a folder: cheap evidence it is unchanged."""
    path = Path(path)
    if path.is_file():
        return {path.name: path.stat().st_size}
    if path.is_dir():
        return {p.name: p.stat().st_size for p in sorted(path.iterdir())
                if p.is_file() and not p.name.startswith(".")}
    return {}


def _plain(value):
    if isinstance(value, torch.Tensor):
        value = value.item()
    if hasattr(value, "item") and not isinstance(value, (int, float)):
        value = value.item()
    return value


def _check_output_dir(output_dir: Path) -> None:
    if output_dir.exists():
        if not output_dir.is_dir():
            raise OutputDirError(f"output_dir {str(output_dir)!r} exists and is not a directory")
        if any(output_dir.iterdir()) and not (output_dir / RECORD_NAME).is_file():
            raise OutputDirError(f"output_dir {str(output_dir)!r} is not empty and holds no "
                                 f"{RECORD_NAME}; give an empty or new directory")


def _save_atomically(model, tokenizer, record: dict, output_dir: Path) -> None:
    """Write everything into a temporary folder beside ``output_dir``, then move it into place."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the result is an ordinary folder
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        with open(staging / RECORD_NAME, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, sort_keys=True)
            f.write("\n")
        if output_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            os.replace(output_dir, old / "previous")
            try:
                os.replace(staging, output_dir)
            except BaseException:
                os.replace(old / "previous", output_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("saved fine-tuned model to %s", output_dir)
