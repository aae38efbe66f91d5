"""kprune: retraining-free pruning of fine-tuned Transformer encoders (K-prune, ICLR 2024)."""
from kprune.config import KPruneConfig
from kprune.errors import (ConfigError, DataError, KPruneError, NumericalError, OutputDirError,
                           UnknownTaskError, UnsupportedModelError)
from kprune.export import export_model
from kprune.io import load_pruned, save_pruned
from kprune.pruner import KPruner, PruneResult, prune

__version__ = "0.1.0"
__all__ = [
    "prune", "KPruner", "KPruneConfig", "PruneResult", "save_pruned", "load_pruned", "export_model", "KPruneError",
    "ConfigError", "DataError", "NumericalError", "OutputDirError", "UnknownTaskError", "UnsupportedModelError",
]
