"""Running the original implementations (the K-prune paper's code, Kwon et al.'s code) unmodified on CPU.

Their code is never part of this repository: ``benchmarks/run_originals.py`` takes the path of a local
checkout of each, and ``launch.py`` runs it in its own virtual environment with the run-time
replacements of ``shim.py`` (device calls to CPU, local data, CPU solvers with the same maths).
"""
