"""Turning user-provided samples into length-sorted, padded batches."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from kprune.errors import DataError


@dataclass
class Batch:
    input_ids: torch.Tensor               # [batch, seq] long, right-padded
    token_type_ids: torch.Tensor | None   # [batch, seq] long
    key_mask: torch.Tensor                # [batch, seq] bool, True on real tokens
    lengths: torch.Tensor                 # [batch] long
    sample_index: torch.Tensor | None = None   # [batch] long: each row's index in the sample list
    _real_index: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def real_rows(self, t: torch.Tensor) -> torch.Tensor:
        """t[key_mask] for t: [batch, seq, ...]: the real tokens' rows, by index (several times faster
        on the CPU than boolean indexing, which finds the positions anew on every call)."""
        if self._real_index is None or self._real_index.device != t.device:
            self._real_index = self.key_mask.reshape(-1).nonzero().squeeze(1).to(t.device)
        return t.reshape(-1, *t.shape[2:]).index_select(0, self._real_index)

    def token_offsets(self) -> torch.Tensor:
        """Offsets of each sample's tokens among the batch's real tokens: [batch + 1]."""
        return torch.cat([self.lengths.new_zeros(1), torch.cumsum(self.lengths, 0)])


def _as_1d(value, name: str, index: int) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if tensor.dim() == 2 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 1:
        raise DataError(f"sample {index}: {name} must be a 1-D sequence of token ids, got shape {tuple(tensor.shape)}")
    return tensor.long()


def normalise_samples(samples, vocab_size: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Accept a list of dicts (input_ids, optional token_type_ids / attention_mask) or a padded batch
    mapping (e.g. a tokenizer's BatchEncoding); return unpadded per-sample dicts."""
    if isinstance(samples, Mapping):
        if "input_ids" not in samples:
            raise DataError("samples mapping has no 'input_ids'; expected a tokenizer output or a list of dicts")
        ids = torch.as_tensor(samples["input_ids"])
        if ids.dim() != 2:
            raise DataError(f"samples['input_ids'] must be 2-D [samples, seq], got shape {tuple(ids.shape)}")
        samples = [{key: torch.as_tensor(value)[i] for key, value in samples.items()
                    if key in ("input_ids", "token_type_ids", "attention_mask")} for i in range(ids.shape[0])]
    if not isinstance(samples, Sequence) or isinstance(samples, (str, bytes)):
        raise DataError(f"samples must be a list of dicts with 'input_ids', got {type(samples).__name__}")
    if len(samples) == 0:
        raise DataError("samples is empty: pruning needs unlabelled samples of the task's training data")
    out = []
    for i, sample in enumerate(samples):
        if not isinstance(sample, Mapping) or "input_ids" not in sample:
            raise DataError(f"sample {i} must be a dict with 'input_ids', got {type(sample).__name__}")
        ids = _as_1d(sample["input_ids"], "input_ids", i)
        types = sample.get("token_type_ids")
        types = None if types is None else _as_1d(types, "token_type_ids", i)
        if sample.get("attention_mask") is not None:
            keep = _as_1d(sample["attention_mask"], "attention_mask", i).bool()
            if keep.shape != ids.shape:
                raise DataError(f"sample {i}: attention_mask shape {tuple(keep.shape)} != input_ids shape {tuple(ids.shape)}")
            ids = ids[keep]
            types = None if types is None else types[keep]
        if ids.numel() == 0:
            raise DataError(f"sample {i} has no tokens")
        if types is not None and types.shape != ids.shape:
            raise DataError(f"sample {i}: token_type_ids shape {tuple(types.shape)} != input_ids shape {tuple(ids.shape)}")
        if vocab_size is not None and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            raise DataError(f"sample {i}: token id {int(ids.max()) if int(ids.max()) >= vocab_size else int(ids.min())} "
                            f"is outside the model's vocabulary [0, {vocab_size})")
        entry = {"input_ids": ids}
        if types is not None:
            entry["token_type_ids"] = types
        out.append(entry)
    return out


def batch_slices(lengths: list[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Sample indices of each compute batch: stable-sorted by length, then cut greedily so that a batch
    holds at most ``batch_size`` samples and at most ``max_tokens`` padded tokens (rows x longest row;
    a sample longer than that gets a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    slices: list[list[int]] = []
    for i in order:
        current = slices[-1] if slices else None
        if current is None or len(current) == batch_size or \
                (max_tokens is not None and (len(current) + 1) * lengths[i] > max_tokens):
            slices.append([i])
        else:
            current.append(i)
    return slices


def make_batches(samples: list[dict[str, torch.Tensor]], batch_size: int, pad_token_id: int = 0,
                 device: str | torch.device = "cpu", max_tokens: int | None = None) -> list[Batch]:
    """Group samples of similar length (:func:`batch_slices`) into right-padded batches."""
    with_types = all("token_type_ids" in s for s in samples)
    batches = []
    for indices in batch_slices([s["input_ids"].numel() for s in samples], batch_size, max_tokens):
        chunk = [samples[i] for i in indices]
        lengths = torch.tensor([s["input_ids"].numel() for s in chunk])
        seq = int(lengths.max())
        ids = torch.full((len(chunk), seq), pad_token_id, dtype=torch.long)
        types = torch.zeros((len(chunk), seq), dtype=torch.long) if with_types else None
        for row, sample in enumerate(chunk):
            n = sample["input_ids"].numel()
            ids[row, :n] = sample["input_ids"]
            if types is not None:
                types[row, :n] = sample["token_type_ids"]
        key_mask = torch.arange(seq)[None, :] < lengths[:, None]
        batches.append(Batch(ids.to(device), None if types is None else types.to(device), key_mask.to(device), lengths,
                             torch.tensor(indices, dtype=torch.long)))
    return batches


@dataclass
class GradientGroups:
    """The paper's logical batches: a seeded random partition of the sample into groups of ``batch_size``,
    independent of how compute batches are cut. ``of_sample[i]`` is sample i's group."""

    of_sample: torch.Tensor    # [samples] long
    sizes: torch.Tensor        # [groups] long

    @classmethod
    def random(cls, num_samples: int, batch_size: int, seed: int) -> "GradientGroups":
        order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
        of_sample = torch.empty(num_samples, dtype=torch.long)
        of_sample[order] = torch.arange(num_samples) // batch_size
        return cls(of_sample, torch.bincount(of_sample))

    @property
    def count(self) -> int:
        return int(self.sizes.numel())

    def of_rows(self, batch: Batch) -> torch.Tensor:
        """Group of each row (sample) of a compute batch: [batch] long."""
        return self.of_sample[batch.sample_index]

    def weights(self, batch: Batch) -> torch.Tensor:
        """Per-row loss weights 1 / |group|: summed, they give each logical batch's mean loss."""
        return 1.0 / self.sizes[self.of_rows(batch)].double()
