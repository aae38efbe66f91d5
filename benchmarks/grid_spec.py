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
}
MAIN_METHODS = ["kprune", "kwon"]
OTHER_METHODS = ["kprune-no-tuning", "kprune-pred-only", "kprune-rep-only", "magnitude"]
REDUCTIONS = [0.4, 0.5, 0.6, 0.7, 0.8]
FIRST_REDUCTIONS = [0.5, 0.7, 0.8]
SEEDED_REDUCTIONS = [0.5, 0.8]
EXTRA_SEEDS = [1, 2]
LATENCY_SHAPES = [(32, 128), (1, 128)]


def cell_key(task: str, method: str, reduction: float, seed: int) -> str:
    return f"{task}/{method}/{reduction:.2f}/{seed}"


def planned_cells(tasks: list[str], methods: list[str], reductions: list[float], seeds: list[int]) -> list[tuple]:
    """All requested cells, in the order that gives the headline comparison first."""
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
    seeded = [r for r in reductions if any(abs(r - f) < 1e-9 for f in SEEDED_REDUCTIONS)]
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
