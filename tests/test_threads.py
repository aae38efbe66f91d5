"""Thread count and OpenMP wait policy from the free cores (kprune.threads)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kprune import threads
from kprune.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("cores, busy, expected", [
    (2, None, 2), (2, 0.0, 2), (2, 0.4, 2), (2, 1.0, 1), (2, 1.4, 1), (2, 3.0, 1), (4, 0.6, 3), (4, 1.6, 2),
    (8, 2.2, 6),
])
def test_threads_fit_the_free_cores(cores, busy, expected):
    assert threads.threads_for(cores, busy) == expected


def test_busy_machine_gets_passive_waits_and_fewer_threads():
    plan = threads.plan_threads(env={}, cores=2, busy=1.8)
    assert (plan.threads, plan.wait_policy, plan.spincount, plan.source) == (1, "passive", None, "auto")
    quiet = threads.plan_threads(env={}, cores=2, busy=0.1)
    assert (quiet.threads, quiet.wait_policy, quiet.spincount) == (2, None, threads.QUIET_SPINCOUNT)
    assert "1.8" in plan.describe() and "OMP_WAIT_POLICY=passive" in plan.describe()


def test_knobs_fix_the_count_and_a_users_policy_is_kept():
    assert threads.plan_threads(3, env={"KPRUNE_THREADS": "2"}, cores=4, busy=0.0).threads == 3
    plan = threads.plan_threads(env={"KPRUNE_THREADS": "2", "OMP_NUM_THREADS": "1"}, cores=4, busy=0.0)
    assert (plan.threads, plan.source) == (2, "KPRUNE_THREADS")
    assert threads.plan_threads(env={"OMP_NUM_THREADS": "1"}, cores=4).source == "OMP_NUM_THREADS"
    kept = threads.plan_threads(env={"OMP_WAIT_POLICY": "active"}, cores=2, busy=1.5)
    assert kept.wait_policy is None and kept.spincount is None
    env = {}
    threads.apply_environment(threads.plan_threads(env={}, cores=2, busy=1.5), env)
    assert env == {"OMP_WAIT_POLICY": "passive"}


@pytest.mark.parametrize("requested, env, message", [
    (0, {}, "threads=0"), (None, {"KPRUNE_THREADS": "many"}, "KPRUNE_THREADS='many'"),
    (None, {"KPRUNE_THREADS": "-1"}, "KPRUNE_THREADS='-1'"),
])
def test_bad_thread_counts_are_errors(requested, env, message):
    with pytest.raises(ConfigError, match=message):
        threads.plan_threads(requested, env=env, cores=2, busy=0.0)


def write_stat(path: Path, busy: int, idle: int, cpus: int = 2) -> None:
    # user nice system idle iowait irq softirq steal
    lines = [f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0"] + [f"cpu{i} 0 0 0 0 0 0 0 0 0 0" for i in range(cpus)]
    path.write_text("\n".join(lines) + "\nintr 0\n")


def test_busy_meter_subtracts_this_process(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    clock = iter([100.0, 101.0])
    own = iter([10.0, 10.5])
    monkeypatch.setattr(threads.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(threads, "_own_cpu_seconds", lambda: next(own))
    write_stat(stat, busy=1000, idle=1000)
    meter = threads.BusyMeter(str(stat))
    write_stat(stat, busy=1150, idle=1050)      # 150 of 200 jiffies busy on 2 CPUs: 1.5 cores
    assert meter.busy() == pytest.approx(1.5 - 0.5)   # minus this process's 0.5 core
    assert threads.BusyMeter(str(tmp_path / "absent")).busy() is None


def test_governor_follows_the_load(monkeypatch):
    applied = []
    monkeypatch.setattr(threads, "apply_threads", applied.append)
    governor = threads.ThreadGovernor(threads.ThreadPlan(2, 2, 0.0, "auto"), min_interval=0.0)
    loads = iter([1.2, 1.3, 0.1])
    governor.meter = type("Meter", (), {"busy": lambda self: next(loads)})()
    governor.install()
    try:
        threads.poll()
        threads.poll()
        threads.poll()
    finally:
        governor.uninstall()
    assert applied == [1, 2]
    fixed = threads.ThreadGovernor(threads.ThreadPlan(2, 2, None, "--threads"), min_interval=0.0)
    assert fixed.update() == 2


def test_cli_sets_the_wait_policy_before_torch_loads():
    code = ("import os, sys, argparse\n"
            "from kprune import cli\n"
            "assert 'torch' not in sys.modules\n"
            "cli._start_threads(argparse.Namespace(threads=None))\n"
            "import torch\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'), torch.get_num_threads())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "KPRUNE_THREADS", "OMP_WAIT_POLICY",
                                                             "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "python"), str(REPO)])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    policy, spincount, count = done.stdout.split()
    assert (policy == "passive") != (spincount == threads.QUIET_SPINCOUNT)
    assert 1 <= int(count) <= threads.usable_cores() and "threads:" in done.stderr
