"""Threads for a run, chosen from the cores other processes leave free.

On a shared machine OpenMP's default is costly: each thread spins while it waits for the others, so
processes steal cycles from each other, and a parallel region waits for siblings the kernel has
descheduled. :func:`plan_threads` picks a thread count from the cores free at start and a wait policy
(``passive`` when other processes keep cores busy, a short spin otherwise); :func:`apply_environment`
puts the policy into the environment, which libgomp reads once when it is loaded, so it must run
before ``torch`` is imported; :func:`apply_threads` sizes torch's pool; :class:`ThreadGovernor`
re-measures between steps of a run and resizes the pool when the load changes.

Knobs: ``--threads N`` / ``KPRUNE_THREADS=N`` fix the count; ``OMP_NUM_THREADS`` is respected as a
fixed count too; an ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` already set is left alone.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from kprune.errors import ConfigError

logger = logging.getLogger(__name__)

#: Spin iterations before a waiting OpenMP thread sleeps when the machine is quiet (libgomp's default
#: is 300,000; this is tens of microseconds, enough between back-to-back kernels).
QUIET_SPINCOUNT = "10000"
#: Other processes using less than this many cores leave the machine "quiet".
QUIET_MARGIN = 0.5
#: Seconds of /proc/stat sampling at start.
START_SAMPLE_SECONDS = 0.3


@dataclass(frozen=True)
class ThreadPlan:
    """What a run uses: ``threads`` for torch, the OpenMP ``wait_policy`` / ``spincount`` to set (None:
    leave as is), from ``cores`` usable, ``busy`` cores used by other processes, and ``source`` (``auto``,
    ``--threads``, ``KPRUNE_THREADS`` or ``OMP_NUM_THREADS``)."""

    threads: int
    cores: int
    busy: float | None
    source: str
    wait_policy: str | None = None
    spincount: str | None = None

    def describe(self) -> str:
        load = "load not measured" if self.busy is None else f"other processes busy on {self.busy:.1f} of them"
        policy = f"OMP_WAIT_POLICY={self.wait_policy}" if self.wait_policy else \
            f"GOMP_SPINCOUNT={self.spincount}" if self.spincount else "OpenMP wait policy as set"
        return f"threads: {self.threads} ({self.source}; {self.cores} cores, {load}; {policy})"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _read_proc_stat(path: str = "/proc/stat") -> tuple[float, float, int] | None:
    """(busy jiffies, total jiffies, CPUs) of the whole machine, or None off Linux."""
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    fields = [float(v) for v in lines[0].split()[1:]]
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)   # idle + iowait
    total = sum(fields[:8])                                       # guest time is already in user
    return total - idle, total, max(1, cpus)


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class BusyMeter:
    """Cores kept busy by *other* processes between two readings: the machine's busy time from
    /proc/stat minus this process's own CPU time."""

    def __init__(self, stat_path: str = "/proc/stat"):
        self.stat_path = stat_path
        self._last = self._read()

    def _read(self):
        stat = _read_proc_stat(self.stat_path)
        return None if stat is None else (stat, _own_cpu_seconds(), time.monotonic())

    def busy(self) -> float | None:
        """Other processes' busy cores since the last call (None when /proc/stat is unreadable)."""
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None:
            return None
        (busy1, total1, cpus), own1, t1 = now
        (busy0, total0, _), own0, t0 = last
        if total1 <= total0 or t1 <= t0:
            return None
        machine_busy = (busy1 - busy0) / (total1 - total0) * cpus
        own = (own1 - own0) / (t1 - t0)
        return max(0.0, machine_busy - own)


def _fixed_count(threads: int | None, env) -> tuple[int, str] | None:
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads={threads!r} must be a positive integer number of threads")
        return threads, "--threads"
    for name in ("KPRUNE_THREADS", "OMP_NUM_THREADS"):
        value = env.get(name, "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer number of threads")
            return int(value), name
    return None


def threads_for(cores: int, busy: float | None) -> int:
    """Threads that fit the cores left free by ``busy`` other cores: all of them when the machine is
    quiet, else the free cores rounded to nearest, at least 1."""
    if busy is None or busy < QUIET_MARGIN:
        return cores
    return max(1, min(cores, int(cores - busy + 0.5)))


def plan_threads(threads: int | None = None, env=None, cores: int | None = None,
                 busy: float | None = None) -> ThreadPlan:
    """Choose threads and wait policy. ``threads`` (the ``--threads`` value) or ``KPRUNE_THREADS`` /
    ``OMP_NUM_THREADS`` in ``env`` fix the count; else it follows ``busy`` (cores other processes use;
    measured over a short interval when None). A wait policy already in ``env`` is kept.

    Raises:
        ConfigError: a thread count that is not a positive integer.
    """
    env = os.environ if env is None else env
    cores = usable_cores() if cores is None else cores
    fixed = _fixed_count(threads, env)
    if busy is None and fixed is None:
        meter = BusyMeter()
        time.sleep(START_SAMPLE_SECONDS)
        busy = meter.busy()
    threads, source = fixed if fixed is not None else (threads_for(cores, busy), "auto")
    contended = (busy is not None and busy >= QUIET_MARGIN) or threads < cores
    policy = spincount = None
    if not env.get("OMP_WAIT_POLICY") and not env.get("GOMP_SPINCOUNT"):
        if contended:
            policy = "passive"
        else:
            spincount = QUIET_SPINCOUNT
    return ThreadPlan(threads, cores, busy, source, policy, spincount)


def apply_environment(plan: ThreadPlan, env=None) -> None:
    """Put the plan's OpenMP wait policy into ``env`` (default ``os.environ``); effective only before
    torch (and so libgomp) is loaded."""
    env = os.environ if env is None else env
    if plan.wait_policy:
        env["OMP_WAIT_POLICY"] = plan.wait_policy
    if plan.spincount:
        env["GOMP_SPINCOUNT"] = plan.spincount


def apply_threads(threads: int) -> None:
    """Size torch's intra-op pool (OpenMP and MKL)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


_active: "ThreadGovernor | None" = None


def poll() -> None:
    """Let the installed :class:`ThreadGovernor` (if any) re-check the load; cheap, call it often
    from the thread that runs torch (the pruner calls it after every batch)."""
    if _active is not None:
        _active.update()


class ThreadGovernor:
    """During a run, re-measure the other processes' load and resize torch's pool to the cores they
    leave free (only for an automatic plan; at most every ``min_interval`` seconds). :meth:`install`
    makes :func:`poll` drive it."""

    def __init__(self, plan: ThreadPlan, min_interval: float = 5.0):
        self.plan = plan
        self.threads = plan.threads
        self.min_interval = min_interval
        self.meter = BusyMeter()
        self._since = time.monotonic()

    def install(self) -> "ThreadGovernor":
        global _active
        _active = self
        return self

    def uninstall(self) -> None:
        global _active
        if _active is self:
            _active = None

    def update(self) -> int:
        """Re-check the load; returns the thread count now in use."""
        if self.plan.source != "auto" or time.monotonic() - self._since < self.min_interval:
            return self.threads
        self._since = time.monotonic()
        busy = self.meter.busy()
        if busy is None:
            return self.threads
        wanted = threads_for(self.plan.cores, busy)
        if wanted != self.threads:
            logger.info("threads: %d -> %d (other processes busy on %.1f of %d cores)", self.threads, wanted,
                        busy, self.plan.cores)
            self.threads = wanted
            apply_threads(wanted)
        return self.threads
