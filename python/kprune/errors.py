"""Typed errors: each names the offending value and what is accepted."""
from __future__ import annotations


class KPruneError(Exception):
    """Base class of every error kprune raises on purpose."""


class ConfigError(KPruneError, ValueError):
    """A setting is out of range (e.g. a FLOPs reduction outside (0, 1))."""


class UnsupportedModelError(KPruneError, TypeError):
    """The model's architecture or head is not one kprune can prune."""


class UnknownTaskError(KPruneError, ValueError):
    """The task name is not one kprune knows."""


class DataError(KPruneError, ValueError):
    """Input data is missing, empty, malformed or does not fit the task or the model's head."""


class NumericalError(KPruneError, RuntimeError):
    """A model produced non-finite values, or a solve could not be made to succeed."""


class OutputDirError(KPruneError, OSError):
    """The output path cannot be written (a directory exists and is not empty, a file exists, or the
    path is of the wrong kind)."""


class DistributedError(KPruneError, RuntimeError):
    """Ranks of a data-parallel run disagree (different model or sample), or one of them failed."""
