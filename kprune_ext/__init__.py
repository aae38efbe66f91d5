"""kprune's compiled core: ops in ``kprune_ext.ops``, pure-PyTorch references in ``kprune_ext.reference``."""
from kprune_ext import ops, reference  # noqa: F401

EXTENSION_LOADED = False
