"""kprune: retraining-free pruning of fine-tuned Transformer encoders (K-prune, ICLR 2024).

Names are imported on first use (PEP 562), so that ``import kprune.cli`` does not load torch: the
command line chooses the OpenMP wait policy (:mod:`kprune.threads`) before torch's runtime starts.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "LayerView": "adapters", "encoder_layers": "adapters",
    "KPruneConfig": "config",
    "ConfigError": "errors", "DataError": "errors", "DistributedError": "errors", "KPruneError": "errors",
    "NumericalError": "errors", "OutputDirError": "errors", "UnknownTaskError": "errors", "UnsupportedModelError": "errors",
    "head_flops": "flops", "model_flops": "flops", "neuron_flops": "flops",
    "load_pruned": "io", "save_pruned": "io", "export_model": "export",
    "UnitMasks": "masks", "apply_masks": "masks", "masked": "masks",
    "Knowledge": "measure", "mask_gradients": "measure", "measure_knowledge": "measure",
    "KPruner": "pruner", "PruneResult": "pruner", "prune": "pruner",
    "search_kept": "search",
    "LeastSquaresStats": "tuning", "SublayerTuner": "tuning", "refit_output_projection": "tuning",
    "tuner_for": "tuning", "refit_task_head": "head_refit",
}

__all__ = [
    "prune", "KPruner", "KPruneConfig", "PruneResult", "save_pruned", "load_pruned", "export_model", "KPruneError",
    "UnitMasks", "masked", "apply_masks", "Knowledge", "measure_knowledge", "mask_gradients", "search_kept",
    "encoder_layers", "LayerView", "head_flops", "neuron_flops", "model_flops",
    "SublayerTuner", "LeastSquaresStats", "tuner_for", "refit_output_projection", "refit_task_head",
    "ConfigError", "DataError", "DistributedError", "NumericalError", "OutputDirError", "UnknownTaskError",
    "UnsupportedModelError",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"kprune.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
