"""Starting data-parallel runs: joining the group torchrun describes, or spawning local workers.

``torchrun --nproc-per-node N -m kprune prune ...`` sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT
for each process; :func:`init_from_env` joins that group. ``kprune prune --workers N`` calls
:func:`launch_workers`, which spawns N processes on this machine with the same environment (a free
port on 127.0.0.1) and an equal share of the threads, so both paths then run the same code.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kprune.errors import ConfigError, KPruneError

ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
GRACE_SECONDS = 30.0   # after one worker fails, how long the others get to stop on their own


def env_world_size() -> int:
    """The world size torchrun (or :func:`launch_workers`) gave this process; 1 outside one."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError as error:
        raise ConfigError(f"WORLD_SIZE={value!r} must be an integer") from error


def backend_for(device: str | torch.device) -> str:
    """NCCL for CUDA tensors, gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_env(device: str | torch.device = "cpu"):
    """Join the process group the environment describes (torchrun's variables); None for one process."""
    if env_world_size() <= 1:
        return None
    if not dist.is_initialized():
        missing = [key for key in ("RANK", "MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
        if missing:
            raise ConfigError(f"WORLD_SIZE is {env_world_size()} but {', '.join(missing)} is not set; "
                              "start the ranks with torchrun or kprune prune --workers N")
        dist.init_process_group(backend_for(device))
    return dist.group.WORLD


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(index: int, count: int, port: int, threads: int, target, args) -> None:
    os.environ.update(RANK=str(index), LOCAL_RANK=str(index), WORLD_SIZE=str(count), LOCAL_WORLD_SIZE=str(count),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads))
    torch.set_num_threads(threads)
    code = 1
    try:
        code = target(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(code)


def launch_workers(count: int, target, *args, threads: int | None = None) -> int:
    """Run ``target(*args)`` in ``count`` spawned processes on this machine, each with WORLD_SIZE/RANK set
    (``target`` calls :func:`init_from_env`) and ``threads`` each (default: this process's threads // count,
    at least 1).

    Returns 0 if every worker returned 0, else the lowest rank's non-zero exit code. Workers that
    outlive a failed one by more than a grace period are terminated."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"--workers {count!r} must be an integer >= 1")
    if env_world_size() > 1:
        raise ConfigError("--workers was given inside a torchrun world; use one of them, not both")
    threads = threads or max(1, torch.get_num_threads() // count)
    port = free_port()
    context = mp.get_context("spawn")
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)   # inherited by the workers before torch starts its pools
    try:
        workers = [context.Process(target=_worker, args=(i, count, port, threads, target, args), daemon=False)
                   for i in range(count)]
        for worker in workers:
            worker.start()
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous
    failed_at = None
    while any(worker.is_alive() for worker in workers):
        if failed_at is None and any(worker.exitcode not in (None, 0) for worker in workers):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > GRACE_SECONDS:
            for worker in workers:
                if worker.is_alive():
                    logging.getLogger(__name__).warning("terminating worker %d (pid %d) after another failed",
                                                        workers.index(worker), worker.pid)
                    worker.terminate()
        time.sleep(0.05)
    for worker in workers:
        worker.join()
    code = next((worker.exitcode for worker in workers if worker.exitcode != 0), 0)
    return code if code >= 0 else 1   # killed by a signal


def cli_worker(command, args) -> int:
    """A CLI command in one worker: kprune errors print once (rank 0's; every rank raises the same)."""
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return command(args)
    except KPruneError as error:
        if rank() == 0 or not dist.is_initialized():
            print(f"kprune: error: {error}", file=sys.stderr)
        return 2
