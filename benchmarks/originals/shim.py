"""Run-time replacements that let GPU-only research code run unmodified on CPU with local data.

Every replacement is listed in benchmarks/RESULTS.md ("How the originals were run"). Nothing here
changes what the code computes: devices become the CPU, dataset and metric downloads read local files,
and the GPU-only solvers become CPU solvers of the same algorithm.

This module imports only the standard library at import time, so its units are testable without
torch's GPU build, ``datasets`` or SciPy; each ``install_*`` imports what it patches.
"""
from __future__ import annotations

import collections
import json
import math
import os
import re
import string
import sys
import types
from pathlib import Path

# HF ``glue`` dataset columns per task (the text fields, then "label" and "idx").
GLUE_COLUMNS = {
    "cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"), "stsb": ("sentence1", "sentence2"), "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2"),
}
# The split names ``datasets`` gives GLUE and SQuAD, and the local file each is read from.
SPLIT_FILES = {"train": "train.jsonl", "validation": "validation.jsonl"}


# ------------------------------------------------------------------------------------------------
# Devices: every CUDA placement becomes the CPU
# ------------------------------------------------------------------------------------------------

def is_cuda(device) -> bool:
    """True for a CUDA device spec: "cuda", "cuda:1", torch.device("cuda"), or a CUDA ordinal int."""
    if device is None or isinstance(device, bool):
        return False
    if isinstance(device, int):
        return True            # .to(0) / .cuda(0) name a CUDA ordinal
    return str(device).split(":")[0] == "cuda"


def cpu_args(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``Tensor.to`` / ``Module.to`` arguments with CUDA devices replaced by "cpu" (dtypes untouched)."""
    args = tuple("cpu" if (not _is_dtype(a) and is_cuda(a)) else a for a in args)
    if "device" in kwargs and is_cuda(kwargs["device"]):
        kwargs = {**kwargs, "device": "cpu"}
    return args, kwargs


def _is_dtype(value) -> bool:
    return type(value).__name__ == "dtype"


def install_device_shim() -> None:
    """``.cuda()`` returns the tensor/module itself; ``.to("cuda")`` goes to the CPU; pinning is skipped."""
    import torch
    from torch import nn

    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    tensor_to, module_to = torch.Tensor.to, nn.Module.to

    def to_tensor(self, *args, **kwargs):
        args, kwargs = cpu_args(args, kwargs)
        kwargs.pop("non_blocking", None)
        return tensor_to(self, *args, **kwargs)

    def to_module(self, *args, **kwargs):
        args, kwargs = cpu_args(args, kwargs)
        return module_to(self, *args, **kwargs)

    torch.Tensor.to = to_tensor
    nn.Module.to = to_module
    torch.Tensor.pin_memory = lambda self, *a, **k: self


# ------------------------------------------------------------------------------------------------
# Solvers: CuPy's LSMR -> SciPy's LSMR; CUDA's least squares (QR, "gels") on the CPU
# ------------------------------------------------------------------------------------------------

def make_cupy_modules(lsmr) -> dict[str, types.ModuleType]:
    """Stand-ins for ``cupy`` and ``cupyx.scipy.sparse.linalg``: arrays stay NumPy arrays and ``lsmr``
    is ``lsmr`` (SciPy's, the algorithm CuPy ports), its solution in the input's dtype as CuPy returns it."""
    import numpy as np

    cupy = types.ModuleType("cupy")
    cupy.asarray = np.asarray
    cupy.asnumpy = np.asarray

    def lsmr_same_dtype(A, b, *args, **kwargs):
        result = lsmr(A, b, *args, **kwargs)
        return (np.asarray(result[0]).astype(np.result_type(A, b), copy=False),) + tuple(result[1:])

    linalg = types.ModuleType("cupyx.scipy.sparse.linalg")
    linalg.lsmr = lsmr_same_dtype
    cupyx = types.ModuleType("cupyx")
    scipy_ = types.ModuleType("cupyx.scipy")
    sparse = types.ModuleType("cupyx.scipy.sparse")
    cupyx.scipy, scipy_.sparse, sparse.linalg = scipy_, sparse, linalg
    return {"cupy": cupy, "cupyx": cupyx, "cupyx.scipy": scipy_, "cupyx.scipy.sparse": sparse,
            "cupyx.scipy.sparse.linalg": linalg}


def install_cupy_shim() -> None:
    from scipy.sparse.linalg import lsmr
    sys.modules.update(make_cupy_modules(lsmr))


def install_lstsq_shim() -> None:
    """``torch.linalg.lstsq`` without a driver uses "gels" (QR), the only driver CUDA has; the CPU's
    default would be "gelsy" (pivoted QR)."""
    import torch
    lstsq = torch.linalg.lstsq

    def lstsq_gels(A, B, rcond=None, *, driver=None):
        return lstsq(A, B, rcond=rcond, driver=driver or "gels")

    torch.linalg.lstsq = lstsq_gels


# ------------------------------------------------------------------------------------------------
# Data: ``datasets.load_dataset("glue", task)`` / ``("squad")`` read local JSON-lines files
# ------------------------------------------------------------------------------------------------

def glue_record(task: str, texts, label, idx: int) -> dict:
    """One row of the HF ``glue`` dataset of ``task`` from an example's texts and label."""
    if task not in GLUE_COLUMNS:
        raise ValueError(f"task {task!r} is not a GLUE task; known: {', '.join(GLUE_COLUMNS)}")
    first, second = GLUE_COLUMNS[task]
    texts = list(texts)
    if len(texts) != (1 if second is None else 2):
        raise ValueError(f"task {task!r} takes {1 if second is None else 2} texts, got {len(texts)}")
    row = {first: texts[0]}
    if second is not None:
        row[second] = texts[1]
    row["label"] = float(label) if task == "stsb" else int(label)
    row["idx"] = int(idx)
    return row


def squad_record(qid, question: str, context: str, answers: list[dict]) -> dict:
    """One row of the HF ``squad`` dataset from a question, its context and its gold answers
    (``[{"text", "answer_start"}]``, character offsets into the context)."""
    answers = list(answers or [])
    return {"id": str(qid), "title": "", "context": context, "question": question,
            "answers": {"text": [a["text"] for a in answers], "answer_start": [int(a["answer_start"]) for a in answers]}}


def write_split(rows, path: Path) -> None:
    """Write rows as JSON lines, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def read_split(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def local_dataset_dir(data_dir: Path, name: str, config: str | None) -> Path:
    """Folder of the local copy of ``load_dataset(name, config)``: <data_dir>/<config or name>."""
    if name == "glue" and config in GLUE_COLUMNS:
        return Path(data_dir) / config
    if name in ("squad", "squad_v2") and config is None:
        return Path(data_dir) / name
    raise ValueError(f"load_dataset({name!r}, {config!r}) has no local copy (offline run); "
                     f"known: ('glue', <{'|'.join(GLUE_COLUMNS)}>), ('squad',), ('squad_v2',)")


def install_data_shim(data_dir: Path) -> None:
    import datasets

    def load_dataset(path, name=None, *args, **kwargs):
        folder = local_dataset_dir(data_dir, path, name)
        return datasets.DatasetDict({split: datasets.Dataset.from_list(read_split(folder / file))
                                     for split, file in SPLIT_FILES.items() if (folder / file).is_file()})

    datasets.load_dataset = load_dataset
    datasets.load_metric = load_metric


# ------------------------------------------------------------------------------------------------
# Metrics: ``datasets.load_metric("glue", task)`` / ``("squad")`` computed locally (same definitions)
# ------------------------------------------------------------------------------------------------

class GlueMetric:
    """add_batch / compute with the GLUE metric keys: accuracy, f1, pearson, spearmanr, matthews_correlation."""

    def __init__(self, task: str):
        self.task = task
        self.predictions: list[float] = []
        self.references: list[float] = []

    def add_batch(self, predictions, references) -> None:
        self.predictions += [float(p) for p in _flat(predictions)]
        self.references += [float(r) for r in _flat(references)]

    def compute(self) -> dict[str, float]:
        p, r = self.predictions, self.references
        if self.task == "stsb":
            return {"pearson": _pearson(p, r), "spearmanr": _pearson(_ranks(p), _ranks(r))}
        accuracy = sum(a == b for a, b in zip(p, r)) / len(p)
        if self.task == "cola":
            return {"matthews_correlation": _matthews(p, r)}
        if self.task in ("mrpc", "qqp"):
            return {"accuracy": accuracy, "f1": _f1(p, r)}
        return {"accuracy": accuracy}


class SquadMetric:
    """``load_metric("squad")``: compute(predictions=[{id, prediction_text}], references=[{id, answers}])
    gives exact_match and f1 in percent, with the official SQuAD v1.1 script's definitions (answers
    normalised: lower case, no punctuation, no articles a/an/the, single spaces; the best over the gold
    answers; F1 over the tokens they share)."""

    def compute(self, predictions, references) -> dict[str, float]:
        predicted = {p["id"]: p["prediction_text"] for p in predictions}
        exact = f1 = 0.0
        for reference in references:
            gold = reference["answers"]["text"]
            prediction = predicted.get(reference["id"], "")
            exact += max(float(_normalize_answer(prediction) == _normalize_answer(g)) for g in gold)
            f1 += max(_token_f1(prediction, g) for g in gold)
        return {"exact_match": 100.0 * exact / len(references), "f1": 100.0 * f1 / len(references)}


def load_metric(path, config_name=None, *args, **kwargs):
    if path == "squad" and config_name is None:
        return SquadMetric()
    if path != "glue" or config_name not in GLUE_COLUMNS:
        raise ValueError(f"load_metric({path!r}, {config_name!r}) has no local equivalent; "
                         f"known: ('glue', task), ('squad',)")
    return GlueMetric(config_name)


def _normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(prediction: str, gold: str) -> float:
    predicted, expected = _normalize_answer(prediction).split(), _normalize_answer(gold).split()
    same = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def _flat(values) -> list:
    if hasattr(values, "reshape"):
        values = values.reshape(-1).tolist()
    return list(values)


def _pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def _ranks(x: list[float]) -> list[float]:
    """Ranks with ties given their mean rank (as scipy.stats.rankdata)."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _f1(p: list[float], r: list[float]) -> float:
    tp = sum(a == 1 and b == 1 for a, b in zip(p, r))
    fp = sum(a == 1 and b != 1 for a, b in zip(p, r))
    fn = sum(a != 1 and b == 1 for a, b in zip(p, r))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def _matthews(p: list[float], r: list[float]) -> float:
    tp = sum(a == 1 and b == 1 for a, b in zip(p, r))
    tn = sum(a != 1 and b != 1 for a, b in zip(p, r))
    fp = sum(a == 1 and b != 1 for a, b in zip(p, r))
    fn = sum(a != 1 and b == 1 for a, b in zip(p, r))
    den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / den if den else 0.0


# ------------------------------------------------------------------------------------------------
# Peak memory of a window of the run (the same harness as run_grid.py uses for kprune)
# ------------------------------------------------------------------------------------------------

def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (VmHWM); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def install_all(data_dir: Path) -> None:
    """Every replacement at once (what launch.py does before running their entry point)."""
    install_device_shim()
    install_cupy_shim()
    install_lstsq_shim()
    install_data_shim(data_dir)
