"""Typed entry points of the kprune ops. The compiled versions (torch.ops.kprune.*) replace these
once the extension is built; until then every call goes to ``kprune_ext.reference``."""
from __future__ import annotations

from kprune_ext import reference

accumulate_importance = reference.accumulate_importance
gram_accumulate = reference.gram_accumulate
solve_damped = reference.solve_damped
masked_ffn = reference.masked_ffn
masked_attention_output = reference.masked_attention_output
