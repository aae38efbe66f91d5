"""kprune: retraining-free pruning of fine-tuned Transformer encoders (K-prune, ICLR 2024)."""
from kprune.adapters import LayerView, encoder_layers
from kprune.config import KPruneConfig
from kprune.errors import (ConfigError, DataError, DistributedError, KPruneError, NumericalError, OutputDirError,
                           UnknownTaskError, UnsupportedModelError)
from kprune.flops import head_flops, model_flops, neuron_flops
from kprune.export import export_model
from kprune.io import load_pruned, save_pruned
from kprune.masks import UnitMasks, apply_masks, masked
from kprune.measure import Knowledge, mask_gradients, measure_knowledge
from kprune.pruner import KPruner, PruneResult, prune
from kprune.search import search_kept
from kprune.tuning import LeastSquaresStats, SublayerTuner, refit_output_projection, tuner_for

__version__ = "0.1.0"
__all__ = [
    "prune", "KPruner", "KPruneConfig", "PruneResult", "save_pruned", "load_pruned", "export_model", "KPruneError",
    "UnitMasks", "masked", "apply_masks", "Knowledge", "measure_knowledge", "mask_gradients", "search_kept",
    "encoder_layers", "LayerView", "head_flops", "neuron_flops", "model_flops",
    "SublayerTuner", "LeastSquaresStats", "tuner_for", "refit_output_projection",
    "ConfigError", "DataError", "DistributedError", "NumericalError", "OutputDirError", "UnknownTaskError",
    "UnsupportedModelError",
]
