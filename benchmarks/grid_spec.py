"""The benchmark grid's definition, shared by run_grid.py (runs it) and report.py (renders it):
tasks, methods, reductions, seeds, the cell keys, the order cells run in and the command that runs them."""
from __future__ import annotations

TASK_ORDER = ["stsb", "mrpc", "sst2", "squad", "qqp"]
METHODS = {
    # name: (description, kind, options)
    "kprune": "K-prune (paper defaults: λ_pred 1, λ_rep 2.5e-4, μ 64, T 2; KPMS + KPWT)",
    "kwon": "Kwon et al. 2022: Fisher mask search + mask rearrangement + least-squares mask tuning",
    "kprune-no-tuning": "K-prune without weight tuning (KPWT off)",
    "kprune-pred-only": "K-prune with predictive knowledge only (λ_rep = 0)",
    "kprune-rep-only": "K-prune with representational knowledge only (λ_pred = 0)",
    "magnitude": "magnitude baseline: largest-weight heads and neurons, same fraction of each, no data",
    # candidate improvements (issue 11): the paper's recipe plus one switch each
    "kprune-damping-search": "K-prune, KPWT damping per sublayer chosen by 2-fold held-out error (damping_search)",
    "kprune-ridge-original": "K-prune, KPWT ridge towards the kept units' own weights, damping (or no re-fit) by held-out error",
    "kprune-head-refit": "K-prune, then the head's output layer re-fitted to the teacher's outputs (head_refit)",
    "kprune-ridge-original-head-refit": "K-prune with the ridge-original KPWT and the head re-fit (both candidates together)",
    "kprune-sample-fisher": "K-prune with per-sample Fisher gradients (gradient_groups='sample')",
    "kprune-bf16-2x": "K-prune measuring in bfloat16 on a sample of twice the tokens (measure_dtype='bfloat16')",
    # issue 15's bf16 decision: the same sample as `kprune`, measured in bfloat16
    "kprune-bf16": "K-prune measuring in bfloat16 on the same sample (measure_dtype='bfloat16')",
    "kprune-default": "K-prune with this version's defaults, KPruneConfig(), measuring in float32 (the paper's recipe is `kprune`)",
    "kprune-default-bf16": "K-prune with this version's defaults, measuring in bfloat16 (measure_dtype='bfloat16')",
}
# KPruneConfig settings of every K-prune method, on top of the paper's recipe (KPruneConfig.paper) ...
KPRUNE_CONFIGS = {
    "kprune": {},
    "kprune-no-tuning": {"weight_tuning": False},
    "kprune-pred-only": {"use_rep": False},
    "kprune-rep-only": {"use_pred": False},
    "kprune-damping-search": {"damping_search": True},
    "kprune-ridge-original": {"damping_search": True, "ridge_prior": "original"},
    "kprune-head-refit": {"head_refit": True},
    "kprune-ridge-original-head-refit": {"damping_search": True, "ridge_prior": "original", "head_refit": True},
    "kprune-sample-fisher": {"gradient_groups": "sample"},
    "kprune-bf16-2x": {"measure_dtype": "bfloat16"},
    "kprune-bf16": {"measure_dtype": "bfloat16"},
}
# ... or on top of this version's defaults (KPruneConfig())
# the precision pinned: measure_dtype="auto" (the default) would pick it by the machine's CPU
DEFAULT_CONFIGS = {"kprune-default": {"measure_dtype": "float32"}, "kprune-default-bf16": {"measure_dtype": "bfloat16"}}
TOKEN_FACTOR = {"kprune-bf16-2x": 2}   # methods drawing a larger sample than --num-tokens
CANDIDATE_METHODS = ["kprune-damping-search", "kprune-ridge-original", "kprune-head-refit",
                     "kprune-ridge-original-head-refit", "kprune-sample-fisher", "kprune-bf16-2x"]
CANDIDATE_REDUCTIONS = [0.6, 0.7, 0.8]
CANDIDATE_SEEDS = [0, 1, 2]
# --study bf16: float32 against bfloat16 measurement, same samples; each bf16 method with its float32 base.
# The paper's recipe was studied first (issue 15); the study now runs this version's defaults.
BF16_PAIRS = {"kprune-bf16": "kprune", "kprune-default-bf16": "kprune-default"}
BF16_METHODS = ["kprune-default", "kprune-default-bf16"]
BF16_REDUCTIONS = [0.5, 0.8]
MAIN_METHODS = ["kprune", "kwon"]
OTHER_METHODS = ["kprune-no-tuning", "kprune-pred-only", "kprune-rep-only", "magnitude"]
REDUCTIONS = [0.4, 0.5, 0.6, 0.7, 0.8]
FIRST_REDUCTIONS = [0.5, 0.7, 0.8]
SEEDED_REDUCTIONS = [0.5, 0.8]
EXTRA_SEEDS = [1, 2]
LATENCY_SHAPES = [(32, 128), (1, 128)]


def scale(task: str, value: float) -> float:
    """A cell's metric on a 0..100 scale (SQuAD's exact match and F1 already are)."""
    return value if task in ("squad", "squad_v2") else 100 * value


def cell_key(task: str, method: str, reduction: float, seed: int) -> str:
    return f"{task}/{method}/{reduction:.2f}/{seed}"


def planned_cells(tasks: list[str], methods: list[str], reductions: list[float], seeds: list[int],
                  every_seed: bool = False) -> list[tuple]:
    """All requested cells, in the order that gives the headline comparison first. The seeds after the
    first run at 50% and 80% only, or at every reduction with ``every_seed``."""
    tasks = [t for t in TASK_ORDER if t in tasks] + [t for t in tasks if t not in TASK_ORDER]
    main = [m for m in methods if m in MAIN_METHODS]
    other = [m for m in methods if m not in MAIN_METHODS]
    first = [r for r in reductions if any(abs(r - f) < 1e-9 for f in FIRST_REDUCTIONS)]
    rest = [r for r in reductions if r not in first]
    order: list[tuple] = []

    def add(ms, rs, ss):
        for s in ss:
            for r in rs:
                for t in tasks:
                    for m in ms:
                        cell = (t, m, r, s)
                        if cell not in order:
                            order.append(cell)

    base = [s for s in seeds if s == seeds[0]]
    add(main, first, base)
    add(other, first, base)
    add(main + other, rest, base)
    extra = [s for s in seeds if s != seeds[0]]
    seeded = reductions if every_seed else [r for r in reductions if any(abs(r - f) < 1e-9 for f in SEEDED_REDUCTIONS)]
    add(main, seeded, extra)
    add(other, seeded, extra)
    return order


def canonical_command(num_tokens: int, threads: int) -> str:
    command = "python benchmarks/run_grid.py"
    if num_tokens != 100_000:
        command += f" --num-tokens {num_tokens}"
    if threads != 1:
        command += f" --threads {threads}"
    return command
