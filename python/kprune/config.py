"""Settings of a pruning run. Defaults are the paper's recipe plus the improvements the candidate study
adopted (``damping_search``, ``ridge_prior="original"`` and ``head_refit``, benchmarks/RESULTS.md "Beyond the
paper"); :meth:`KPruneConfig.paper` is the paper's exactly."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from kprune.errors import ConfigError
from kprune.precision import resolve_measure_dtype

TASK_KINDS = ("classification", "regression", "qa", "embedding")
GRADIENT_GROUPS = ("batch", "sample")
MEASURE_DTYPES = ("float32", "bfloat16", "auto")
RIDGE_PRIORS = ("zero", "original")


@dataclass
class KPruneConfig:
    lambda_pred: float = 1.0          # weight of predictive knowledge
    lambda_rep: float = 2.5e-4        # weight of representational knowledge
    mu: float | None = None           # head score multiplier; None: 64 (the paper), 2 x head size for task "embedding"
    temperature: float = 2.0          # T of the distillation loss
    embedding_scale: float = 20.0     # task "embedding": distance of the embeddings at similarity-logit scale (knowledge.embedding_distance)
    damping: float = 1e-4             # least-squares damping, relative to mean(diag(A^T A))
    batch_size: int = 32              # samples per logical batch of the batch-mean gradients (and per compute batch)
    gradient_groups: str = "batch"    # "batch": paper's batch-mean gradients over a seeded random partition; "sample": per-sample Fisher
    seed: int = 0                     # seed of that random partition
    compute_batch_size: int | None = None   # samples per compute batch (length-sorted); None: batch_size
    compute_batch_tokens: int | None = 512   # and at most this many padded tokens in one (memory); None: no cap
    weight_tuning: bool = True        # KPWT; False for the ablation
    recompute: bool = True            # backward one sublayer at a time (memory nearly flat in depth); False: one graph
    saved_mb: float = 256.0           # with recompute: MB of one batch's inner activations kept so their backward recomputes nothing
    measure_dtype: str = "auto"       # bf16 autocast where the device computes bf16 natively, float32 elsewhere (kprune.precision); or "float32" / "bfloat16"
    use_pred: bool = True             # ablations: predictive / representational knowledge only
    use_rep: bool = True
    damping_search: bool = True       # KPWT damping per sublayer by 2-fold held-out error (kprune.heldout); the paper: False
    ridge_prior: str = "original"     # KPWT ridge pulls towards the kept units' "original" weights, or "zero" (the paper)
    head_refit: bool = True           # last re-fit of the task head's output layer to the teacher (kprune.head_refit); the paper: False
    device: str = "cpu"
    progress: bool = True             # tqdm bars

    def validate(self) -> "KPruneConfig":
        for name in ("lambda_pred", "lambda_rep", "mu", "temperature", "damping", "embedding_scale"):
            value = getattr(self, name)
            if name == "mu" and value is None:
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name}={value!r} must be a finite number >= 0")
        if isinstance(self.saved_mb, bool) or not isinstance(self.saved_mb, (int, float)) \
                or not math.isfinite(self.saved_mb) or self.saved_mb < 0:
            raise ConfigError(f"saved_mb={self.saved_mb!r} must be a finite number of megabytes >= 0")
        if self.temperature <= 0:
            raise ConfigError(f"temperature={self.temperature!r} must be > 0")
        if self.embedding_scale <= 0:
            raise ConfigError(f"embedding_scale={self.embedding_scale!r} must be > 0")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size!r} must be an integer >= 1")
        if self.compute_batch_size is not None and (not isinstance(self.compute_batch_size, int)
                                                    or self.compute_batch_size < 1):
            raise ConfigError(f"compute_batch_size={self.compute_batch_size!r} must be None or an integer >= 1")
        if self.compute_batch_tokens is not None and (not isinstance(self.compute_batch_tokens, int)
                                                      or isinstance(self.compute_batch_tokens, bool)
                                                      or self.compute_batch_tokens < 1):
            raise ConfigError(f"compute_batch_tokens={self.compute_batch_tokens!r} must be None or an integer >= 1")
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed={self.seed!r} must be an integer")
        if self.gradient_groups not in GRADIENT_GROUPS:
            raise ConfigError(f"gradient_groups={self.gradient_groups!r}; accepted: {', '.join(GRADIENT_GROUPS)}")
        if self.measure_dtype not in MEASURE_DTYPES:
            raise ConfigError(f"measure_dtype={self.measure_dtype!r}; accepted: {', '.join(MEASURE_DTYPES)}")
        if not isinstance(self.damping_search, bool):
            raise ConfigError(f"damping_search={self.damping_search!r} must be True or False")
        if self.ridge_prior not in RIDGE_PRIORS:
            raise ConfigError(f"ridge_prior={self.ridge_prior!r}; accepted: {', '.join(RIDGE_PRIORS)}")
        if not (self.use_pred or self.use_rep):
            raise ConfigError("use_pred and use_rep are both False: at least one kind of knowledge is needed")
        return self

    @classmethod
    def paper(cls, **overrides) -> "KPruneConfig":
        """The paper's recipe (:data:`PAPER_RECIPE`), whatever the defaults become; ``overrides`` set the rest
        (device, seed, batching, progress) or deliberately change the recipe."""
        return cls(**{**PAPER_RECIPE, **overrides})

    @classmethod
    def recipe(cls, name: str, **overrides) -> "KPruneConfig":
        """``"default"``: this version's defaults; ``"paper"``: :meth:`paper`."""
        if name not in RECIPES:
            raise ConfigError(f"recipe={name!r}; accepted: {', '.join(RECIPES)}")
        return cls.paper(**overrides) if name == "paper" else cls(**overrides)

    def for_task(self, task: str, head_size: int) -> "KPruneConfig":
        """The settings with the task- and device-dependent defaults resolved (``mu=None``,
        ``measure_dtype="auto"``). A sentence-embedding model's heads weigh μ = 2·head size (the paper's 64
        at MiniLM's head size 32, 128 for a base model's 64); the other tasks keep the paper's μ = 64."""
        mu = (2.0 * head_size if task == "embedding" else 64.0) if self.mu is None else self.mu
        return replace(self, mu=mu, measure_dtype=resolve_measure_dtype(self.measure_dtype, self.device))

    @property
    def compute_batch(self) -> int:
        return self.compute_batch_size or self.batch_size

    def to_dict(self) -> dict:
        return asdict(self)


# Every setting that changes which units are kept or the weights written, at the paper's values
# (Park et al., ICLR 2024); tests/test_candidates.py checks that a new KPruneConfig field is either here
# or one of RECIPE_FREE.
# embedding_scale: the paper has no embedding task; kprune's extension of it (knowledge.embedding_distance).
PAPER_RECIPE = dict(lambda_pred=1.0, lambda_rep=2.5e-4, mu=64.0, temperature=2.0, damping=1e-4, batch_size=32,
                    gradient_groups="batch", weight_tuning=True, measure_dtype="float32", use_pred=True,
                    use_rep=True, damping_search=False, ridge_prior="zero", head_refit=False,
                    embedding_scale=20.0)
RECIPE_FREE = ("seed", "compute_batch_size", "compute_batch_tokens", "recompute", "saved_mb", "device", "progress")
RECIPES = ("default", "paper")


def check_reduction(flops_reduction: float) -> float:
    if isinstance(flops_reduction, bool) or not isinstance(flops_reduction, (int, float)) \
            or not math.isfinite(flops_reduction) or not 0.0 < flops_reduction < 1.0:
        raise ConfigError(f"flops_reduction={flops_reduction!r} must be a number strictly between 0 and 1 "
                          "(e.g. 0.5 removes half of the encoder's FLOPs)")
    return float(flops_reduction)


def check_task_kind(task: str) -> str:
    if task not in TASK_KINDS:
        raise ConfigError(f"task={task!r} is not a task kind; accepted: {', '.join(TASK_KINDS)}")
    return task
