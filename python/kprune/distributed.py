"""Data parallel over torch.distributed: each rank holds a shard of the sample, and statistics are summed.

Every statistic K-prune accumulates is a sum over samples (importance sums per unit and gradient
group, Σa², the Gram matrix, the cross term, Σ‖target‖² and the token count), so ranks that each
measure their own shard and then all-reduce those sums as sums hold exactly what one process holds
(up to the order of float additions); the mask search and the solve then run on identical inputs on
every rank. Teacher outputs and hidden-state caches stay with their samples, on their rank.

:class:`Collective` is the small surface the pruner needs (world size, rank, all-reduce of a list of
tensors, broadcast, a guard that stops every rank with the same error); for one process (no group)
every call is a no-op.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import time
from collections import defaultdict
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from kprune import errors
from kprune.errors import ConfigError, DistributedError, KPruneError
from kprune.samples import Batch, make_batches

SAMPLED_ELEMENTS = 1 << 16   # per parameter, in the cheap parameter checksum


class Collective:
    """The ranks of ``group`` (an initialised torch.distributed process group), or one process (None)."""

    def __init__(self, group=None):
        if group is not None and not (dist.is_available() and dist.is_initialized()):
            raise ConfigError("process_group was given but torch.distributed is not initialised; call "
                              "torch.distributed.init_process_group first (torchrun sets up its environment)")
        self.group = group
        self.world_size = dist.get_world_size(group) if group is not None else 1
        self.rank = dist.get_rank(group) if group is not None else 0
        self.bytes = 0               # bytes this rank has all-reduced or broadcast (statistics and weights)
        self.seconds = 0.0           # time in those collectives
        self.wait_seconds = 0.0      # time in the guards' agreement (it absorbs ranks waiting for each other)
        self._guarding = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def _device(self) -> torch.device:
        if self.group is not None and dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _collective_allowed(self) -> None:
        if self._guarding:   # a collective inside a guard would pair with another rank's agreement
            raise RuntimeError("kprune internal error: a collective was called inside Collective.guard")

    def all_reduce(self, tensors: list[torch.Tensor]) -> None:
        """Sum every tensor across ranks, in place: one collective per (dtype, device), results identical on all ranks."""
        if not self.distributed:
            return
        self._collective_allowed()
        started = time.perf_counter()
        buckets: dict[tuple, list[torch.Tensor]] = defaultdict(list)
        for tensor in tensors:
            if tensor.numel():
                buckets[(tensor.dtype, tensor.device)].append(tensor)
        for bucket in buckets.values():
            flat = torch.cat([t.reshape(-1) for t in bucket])
            dist.all_reduce(flat, group=self.group)
            offset = 0
            for tensor in bucket:
                tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
                offset += tensor.numel()
            self.bytes += flat.numel() * flat.element_size()
        self.seconds += time.perf_counter() - started

    def broadcast(self, tensor: torch.Tensor, source: int = 0) -> None:
        """Overwrite ``tensor`` on every rank with rank ``source``'s (group rank)."""
        if not self.distributed or tensor.numel() == 0:
            return
        self._collective_allowed()
        started = time.perf_counter()
        dist.broadcast(tensor, group=self.group, group_src=source)
        self.bytes += tensor.numel() * tensor.element_size()
        self.seconds += time.perf_counter() - started

    def barrier(self) -> None:
        if self.distributed:
            self._collective_allowed()
            dist.barrier(group=self.group)

    def gather_objects(self, value) -> list:
        """Every rank's ``value`` (picklable), in rank order."""
        if not self.distributed:
            return [value]
        self._collective_allowed()
        out = [None] * self.world_size
        dist.all_gather_object(out, value, group=self.group)
        return out

    @contextmanager
    def guard(self, what: str):
        """Run local work (no collectives inside); if it raises on any rank, every rank raises the same error.

        The error keeps the failing rank's type when it is a kprune error (else :class:`DistributedError`)
        and names the rank and ``what`` was being done. One process: the work runs unguarded."""
        if not self.distributed:
            yield
            return
        failure = None
        self._guarding = True
        try:
            yield
        except Exception as error:   # noqa: BLE001 - re-raised on every rank below
            failure = error
        finally:
            self._guarding = False
        self._agree(what, failure)

    def _agree(self, what: str, failure: Exception | None) -> None:
        started = time.perf_counter()
        flag = torch.tensor([0 if failure is None else 1], dtype=torch.int32, device=self._device)
        dist.all_reduce(flag, group=self.group)
        self.wait_seconds += time.perf_counter() - started
        if int(flag) == 0:
            return
        reports = self.gather_objects(None if failure is None else (type(failure).__name__, str(failure)))
        rank = next(r for r, report in enumerate(reports) if report is not None)
        name, message = reports[rank]
        cls = getattr(errors, name, None)
        if not (isinstance(cls, type) and issubclass(cls, KPruneError)):
            cls, message = DistributedError, f"{name}: {message}"
        raise cls(f"rank {rank} of {self.world_size} failed while {what}: {message}") from failure

    def check_same_inputs(self, model: nn.Module, samples: list[dict[str, torch.Tensor]], settings: dict) -> None:
        """Before any work: every rank must hold the same model, sample and settings (else DistributedError
        on every rank, naming what differs)."""
        if not self.distributed:
            return
        mine = dict(model_fingerprint(model), sample=_digest(_sample_bytes(samples)),
                    settings=_digest(json.dumps(settings, sort_keys=True, default=str).encode()))
        every = self.gather_objects(mine)
        for rank, theirs in enumerate(every):
            differ = [key for key in mine if theirs[key] != every[0][key]]
            if differ:
                raise DistributedError(f"rank {rank}'s {', '.join(differ)} differ from rank 0's; every rank must "
                                       "prune the same model on the same sample with the same settings")

    def summary(self, bytes_per_step: list[int]) -> dict:
        """The report's record of the ranks and their communication."""
        return {"world_size": self.world_size,
                "communication": {"bytes_per_step": bytes_per_step, "bytes": self.bytes,
                                  "seconds": round(self.seconds, 3), "wait_seconds": round(self.wait_seconds, 3)}}


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()


def _sample_bytes(samples: list[dict[str, torch.Tensor]]) -> bytes:
    return b"".join(_tensor_bytes(s[key]) + key.encode() for s in samples for key in sorted(s))


def model_fingerprint(model: nn.Module) -> dict[str, str]:
    """Digests of the model's configuration, parameter names/shapes/dtypes and a cheap parameter checksum
    (up to 65,536 evenly strided elements of each parameter, bit-exact)."""
    config = getattr(model, "config", None)
    config = {} if config is None else {key: value for key, value in config.to_dict().items()
                                        if not key.startswith("_") and key != "transformers_version"}
    params = list(model.named_parameters())
    shapes = repr([(name, tuple(p.shape), str(p.dtype)) for name, p in params]).encode()
    values = hashlib.blake2b(digest_size=16)
    for _, p in params:
        flat = p.detach().reshape(-1)
        values.update(_tensor_bytes(flat[::max(1, flat.numel() // SAMPLED_ELEMENTS)]))
    return {"model configuration": _digest(json.dumps(config, sort_keys=True, default=str).encode()),
            "parameter shapes": _digest(shapes), "parameter values": values.hexdigest()}


def shard_by_tokens(lengths: list[int], world_size: int, rank: int) -> list[int]:
    """Indices (ascending) of ``rank``'s samples: longest first, each onto the rank with the fewest tokens
    so far (ties: the lower rank). Deterministic, so every rank computes every rank's share alike."""
    loads = [(0, r) for r in range(world_size)]
    mine = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        load, owner = heapq.heappop(loads)
        heapq.heappush(loads, (load + lengths[index], owner))
        if owner == rank:
            mine.append(index)
    return sorted(mine)


def local_batches(samples: list[dict[str, torch.Tensor]], collective: Collective, batch_size: int,
                  pad_token_id: int, device, max_tokens: int | None = None) -> list[Batch]:
    """This rank's length-sorted batches, with ``sample_index`` into the global sample list."""
    if not collective.distributed:
        return make_batches(samples, batch_size, pad_token_id, device, max_tokens)
    mine = shard_by_tokens([s["input_ids"].numel() for s in samples], collective.world_size, collective.rank)
    batches = make_batches([samples[i] for i in mine], batch_size, pad_token_id, device, max_tokens)
    index = torch.tensor(mine, dtype=torch.long)
    for batch in batches:
        batch.sample_index = index[batch.sample_index]
    return batches
